"""The official anthropic client against a running `conclave serve`: messages.create, messages.stream, count_tokens,
a conversation with tool_use / tool_result blocks, Anthropic-shaped errors. Prints {"ok": true} when all hold.
Sampling settings go through extra_body: the 2.x client has no temperature argument; the server reads it."""
import json
import sys

import anthropic

base, key = sys.argv[1], sys.argv[2]
client = anthropic.Anthropic(base_url=base, api_key=key, max_retries=0, timeout=300)
# The shipped model tells stories, not chats: it is given the start of its answer (a final assistant turn is continued).
turns = [{"role": "user", "content": "Tell me a story"}, {"role": "assistant", "content": "Once upon a time"}]

m = client.messages.create(model="any-model-name", max_tokens=16, system="Be brief.", extra_body={"temperature": 0}, messages=turns)
assert m.type == "message" and m.role == "assistant", m
assert m.content and m.content[-1].type == "text", m
assert m.stop_reason == "max_tokens" and m.usage.output_tokens == 16 and m.usage.input_tokens > 0, m

with client.messages.stream(model="any-model-name", max_tokens=16, system="Be brief.", extra_body={"temperature": 0}, messages=turns) as s:
    streamed = "".join(s.text_stream)
    final = s.get_final_message()
assert streamed.strip() == m.content[-1].text.strip(), (streamed, m.content[-1].text)
assert final.stop_reason == "max_tokens" and final.usage.output_tokens == 16, final

# Asked again, the prompt comes from the prefix cache: Anthropic counts those tokens as cache reads.
again = client.messages.create(model="any-model-name", max_tokens=16, system="Be brief.", extra_body={"temperature": 0}, messages=turns)
assert again.content[-1].text == m.content[-1].text, (again, m)
assert again.usage.cache_read_input_tokens > 0 and again.usage.input_tokens + again.usage.cache_read_input_tokens == m.usage.input_tokens, again.usage

n = client.messages.count_tokens(model="any-model-name", system="Be brief.", messages=turns)
assert n.input_tokens == m.usage.input_tokens, (n, m.usage)

tools = [{"name": "get_weather", "description": "The weather in a city",
          "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]
history = [
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": [{"type": "text", "text": "Let me look."},
                                      {"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {"city": "Paris"}}]},
    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_01", "content": "sunny, 21 C"}]},
]
t = client.messages.create(model="any-model-name", max_tokens=4, tools=tools, tool_choice={"type": "auto"}, messages=history)
assert t.stop_reason in ("max_tokens", "end_turn", "tool_use"), t
assert client.messages.count_tokens(model="x", tools=tools, messages=history).input_tokens > n.input_tokens

try:
    client.messages.create(model="x", max_tokens=0, messages=turns)
    raise AssertionError("max_tokens 0 was accepted")
except anthropic.BadRequestError as e:
    assert "max_tokens" in str(e) and e.body["error"]["type"] == "invalid_request_error", e.body

try:
    anthropic.Anthropic(base_url=base, api_key="wrong", max_retries=0).messages.create(model="x", max_tokens=4, messages=turns)
    raise AssertionError("a wrong key was accepted")
except anthropic.AuthenticationError:
    pass

print(json.dumps({"ok": True, "text": m.content[-1].text, "input_tokens": m.usage.input_tokens}))
