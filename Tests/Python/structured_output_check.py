#!/usr/bin/env python3
"""Structured output and forced tool calls against a running `conclave serve`, with the official openai and
anthropic clients; every answer is validated by the jsonschema package. Usage: structured_output_check.py BASE_URL.
Prints one JSON line {"ok": true, ...}; exits 1 naming the first failure.

The served model is a tiny story model: it writes JSON only because the grammar lets it write nothing else, so the
schemas bound their strings and arrays (a model that never closes a string would otherwise run to max_tokens)."""
import json, sys, time, urllib.request

import anthropic
import jsonschema
import openai
from server_wait import fail, wait_for_health

root = sys.argv[1].rstrip("/")


wait_for_health(root, 300)

client = openai.OpenAI(base_url=root + "/v1", api_key="none", timeout=600, max_retries=0)
model = client.models.list().data[0].id

S = lambda n: {"type": "string", "maxLength": n}
SCHEMAS = [
    {"type": "object", "properties": {"name": S(12), "age": {"type": "integer"}}, "required": ["name", "age"]},
    {"type": "object", "properties": {"color": {"enum": ["red", "green", "blue"]}}, "required": ["color"]},
    {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 100}, "minItems": 1, "maxItems": 5},
    {"type": "object", "properties": {"ok": {"type": "boolean"}, "note": {"type": ["string", "null"], "maxLength": 8}}, "required": ["ok", "note"]},
    {"type": "object", "properties": {"point": {"type": "object", "properties": {"x": {"type": "number"}, "y": {"type": "number"}},
                                                "required": ["x", "y"], "additionalProperties": False}}, "required": ["point"]},
    {"anyOf": [{"type": "integer"}, {"type": "object", "properties": {"word": S(6)}, "required": ["word"]}]},
    {"$defs": {"item": {"type": "object", "properties": {"id": {"type": "integer", "minimum": 1}, "label": S(6)}, "required": ["id", "label"]}},
     "type": "object", "properties": {"items": {"type": "array", "items": {"$ref": "#/$defs/item"}, "maxItems": 3}}, "required": ["items"]},
    {"type": "object", "properties": {"kind": {"const": "event"}, "day": {"type": "string", "format": "date"}}, "required": ["kind", "day"]},
    {"type": "object", "properties": {"tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "minItems": 2, "maxItems": 4}}, "required": ["tags"]},
    {"type": "object", "properties": {"a": S(4), "b": S(4), "c": S(4)}, "required": ["b"]},
    {"type": "string", "minLength": 2, "maxLength": 10},
    {"type": "object", "properties": {"score": {"type": "number", "minimum": 0}, "rank": {"type": "integer", "minimum": 1, "maximum": 10}},
     "required": ["score", "rank"]},
    {"type": "object", "properties": {"matrix": {"type": "array", "items": {"type": "array", "items": {"type": "integer"}, "maxItems": 2}, "maxItems": 2}},
     "required": ["matrix"]},
    {"oneOf": [{"type": "null"}, {"type": "boolean"}]},
    {"type": "object", "properties": {"user": {"type": "object", "properties": {"name": S(8), "email": S(12)}, "required": ["name"]},
                                      "active": {"type": "boolean"}}, "required": ["user", "active"]},
    {"type": "array", "prefixItems": [{"type": "integer"}, S(5), {"type": "boolean"}], "items": False},
    {"type": "object", "properties": {"id": {"type": "string", "format": "uuid"}}, "required": ["id"]},
    {"type": "object", "properties": {"status": {"enum": ["ok", "error", None]}, "code": {"type": "integer", "minimum": 100, "maximum": 599}},
     "required": ["status", "code"]},
    {"$defs": {"node": {"type": "object", "properties": {"v": {"type": "integer", "minimum": 0, "maximum": 9},
                                                          "next": {"anyOf": [{"type": "null"}, {"$ref": "#/$defs/node"}]}}, "required": ["v", "next"]}},
     "$ref": "#/$defs/node"},
    {"type": "object", "properties": {"when": {"type": "string", "format": "date-time"}, "count": {"type": "integer", "minimum": 0}},
     "required": ["when", "count"]},
]

checked = 0
for i, schema in enumerate(SCHEMAS):
    r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": f"Answer {i} as JSON."}], max_tokens=600,
                                       seed=i, temperature=0.8,
                                       response_format={"type": "json_schema", "json_schema": {"name": f"s{i}", "schema": schema}})
    choice = r.choices[0]
    if choice.finish_reason != "stop":
        fail(f"schema {i}: finish_reason {choice.finish_reason} ({r.usage.completion_tokens} tokens): {choice.message.content!r}")
    try:
        value = json.loads(choice.message.content)
        jsonschema.validate(value, schema)
    except Exception as e:
        fail(f"schema {i} {json.dumps(schema)}: {choice.message.content!r} does not validate: {e}")
    checked += 1

# json_object: any object (its strings are unbounded, so this model may run to max_tokens inside one; an answer
# that stopped parses as an object); streaming gives the same text.
for seed in range(4, 10):
    obj = dict(model=model, messages=[{"role": "user", "content": "An object."}], max_tokens=200, seed=seed, temperature=1.0,
               response_format={"type": "json_object"})
    c = client.chat.completions.create(**obj).choices[0]
    whole = c.message.content
    if not whole.startswith("{") or (c.finish_reason == "stop" and not isinstance(json.loads(whole), dict)):
        fail(f"json_object gave {whole!r} ({c.finish_reason})")
streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(**obj, stream=True) if c.choices)
if streamed != whole:
    fail(f"json_object streamed {streamed!r} differs from {whole!r}")

# Forced tool calls: required and named, streaming and not; the arguments validate against the parameters.
weather = {"type": "object", "properties": {"city": S(12), "unit": {"enum": ["c", "f"]}}, "required": ["city", "unit"]}
clock = {"type": "object", "properties": {"zone": S(8)}, "required": ["zone"]}
tools = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city", "parameters": weather}},
         {"type": "function", "function": {"name": "get_time", "description": "Time in a zone", "parameters": clock}}]
params = {"get_weather": weather, "get_time": clock}
calls_seen = 0
for choice, names in [("required", {"get_weather", "get_time"}), ({"type": "function", "function": {"name": "get_time"}}, {"get_time"})]:
    for stream in (False, True):
        kw = dict(model=model, messages=[{"role": "user", "content": "Weather in Paris?"}], max_tokens=300, seed=11, temperature=0.7,
                  tools=tools, tool_choice=choice, parallel_tool_calls=False)
        if stream:
            calls, finish, fragments = {}, None, 0
            for chunk in client.chat.completions.create(**kw, stream=True):
                for c in chunk.choices:
                    finish = c.finish_reason or finish
                    for d in c.delta.tool_calls or []:
                        entry = calls.setdefault(d.index, {"name": "", "arguments": ""})
                        if d.function and d.function.name:
                            entry["name"] += d.function.name
                        if d.function and d.function.arguments:
                            entry["arguments"] += d.function.arguments
                            fragments += 1
            got = [(c["name"], c["arguments"]) for _, c in sorted(calls.items())]
            # The call streams as it is written, not in one piece at the end.
            if fragments < 2:
                fail(f"tool_choice {choice}: the arguments came in {fragments} fragment(s)")
        else:
            m = client.chat.completions.create(**kw).choices[0]
            finish = m.finish_reason
            got = [(c.function.name, c.function.arguments) for c in m.message.tool_calls or []]
        if finish != "tool_calls" or len(got) != 1:
            fail(f"tool_choice {choice} stream={stream}: finish {finish}, calls {got}")
        name, arguments = got[0]
        if name not in names:
            fail(f"tool_choice {choice}: called {name}")
        try:
            jsonschema.validate(json.loads(arguments), params[name])
        except Exception as e:
            fail(f"tool_choice {choice}: arguments {arguments!r} do not validate: {e}")
        calls_seen += 1

# Responses: text.format json_schema, and a forced function call.
point = {"type": "object", "properties": {"x": {"type": "integer"}, "y": {"type": "integer"}}, "required": ["x", "y"]}
resp = client.responses.create(model=model, input="A point.", max_output_tokens=200, temperature=0,
                               text={"format": {"type": "json_schema", "name": "point", "schema": point}})
jsonschema.validate(json.loads(resp.output_text), point)
fc = client.responses.create(model=model, input="Time in Tokyo?", max_output_tokens=200, temperature=0, parallel_tool_calls=False,
                             tools=[{"type": "function", "name": "get_time", "parameters": clock}], tool_choice="required")
items = [o for o in fc.output if o.type == "function_call"]
if len(items) != 1 or items[0].name != "get_time":
    fail(f"responses forced call: {fc.output}")
jsonschema.validate(json.loads(items[0].arguments), clock)
# Streamed: the call's arguments in deltas as they are written, adding up to the completed response's item.
deltas, done = [], None
for ev in client.responses.create(model=model, input="Time in Tokyo?", max_output_tokens=200, temperature=0, parallel_tool_calls=False,
                                  tools=[{"type": "function", "name": "get_time", "parameters": clock}], tool_choice="required", stream=True):
    if ev.type == "response.function_call_arguments.delta":
        deltas.append(ev.delta)
    elif ev.type == "response.completed":
        done = ev.response
calls_done = [o for o in (done.output if done else []) if o.type == "function_call"]
if len(deltas) < 2 or len(calls_done) != 1 or calls_done[0].arguments != "".join(deltas):
    fail(f"responses streamed call: {len(deltas)} deltas, output {done.output if done else None}")
jsonschema.validate(json.loads(calls_done[0].arguments), clock)

# Anthropic: a forced tool use, whole and streamed.
ac = anthropic.Anthropic(base_url=root, api_key="none", max_retries=0, timeout=600)
atools = [{"name": "get_weather", "description": "Weather in a city", "input_schema": weather}]
for stream in (False, True):
    kw = dict(model="x", max_tokens=300, tools=atools, tool_choice={"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True},
              messages=[{"role": "user", "content": "Weather in Paris?"}], extra_body={"seed": 3})
    if stream:
        with ac.messages.stream(**kw) as s:
            pieces = sum(1 for ev in s if ev.type == "content_block_delta" and ev.delta.type == "input_json_delta")
            msg = s.get_final_message()
        if pieces < 2:
            fail(f"anthropic streamed tool use came in {pieces} input_json_delta(s)")
    else:
        msg = ac.messages.create(**kw)
    uses = [b for b in msg.content if b.type == "tool_use"]
    if msg.stop_reason != "tool_use" or len(uses) != 1 or uses[0].name != "get_weather":
        fail(f"anthropic forced tool use (stream={stream}): {msg}")
    jsonschema.validate(uses[0].input, weather)

# Bad input: 400s naming the field, and the server goes on serving.
bad = [
    (dict(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "string", "pattern": "a+"}}}), "pattern"),
    (dict(tools=tools, tool_choice={"type": "function", "function": {"name": "nope"}}), "nope"),
    (dict(messages=[{"role": "user", "content": "x"}, {"role": "tool", "tool_call_id": "call_9", "content": "42"}]), "call_9"),
]
for extra, word in bad:
    kw = dict(model=model, messages=[{"role": "user", "content": "x"}], max_tokens=4)
    kw.update(extra)
    try:
        client.chat.completions.create(**kw)
        fail(f"{extra} was accepted")
    except openai.BadRequestError as e:
        if word not in str(e):
            fail(f"the 400 for {extra} does not say '{word}': {e}")
if client.chat.completions.create(model=model, messages=[{"role": "user", "content": "x"}], max_tokens=2).choices[0].finish_reason is None:
    fail("the server stopped serving after the 400s")

# /metrics: constrained requests by kind, and the tokens sampled under a grammar with their time (a cluster's come
# with the workers' heartbeats, so they may take a second to arrive).
from prometheus_client.parser import text_string_to_metric_families
deadline = time.time() + 30
while True:
    with urllib.request.urlopen(root + "/metrics", timeout=30) as r:
        samples = [s for f in text_string_to_metric_families(r.read().decode()) for s in f.samples]
    kinds = {s.labels.get("kind"): s.value for s in samples if s.name == "conclave_constrained_requests_total"}
    tokens = sum(s.value for s in samples if s.name in ("conclave_constrained_tokens_total", "conclave_worker_constrained_tokens_total"))
    seconds = sum(s.value for s in samples if s.name in ("conclave_grammar_seconds_total", "conclave_worker_grammar_seconds_total"))
    if tokens > 0 or time.time() > deadline:
        break
    time.sleep(0.5)
if kinds.get("json_schema", 0) < len(SCHEMAS) or kinds.get("tool_call", 0) < 4 or kinds.get("json_object", 0) < 1:
    fail(f"conclave_constrained_requests_total by kind: {kinds}")
if tokens <= 0 or seconds <= 0:
    fail(f"constrained tokens {tokens}, grammar seconds {seconds} in /metrics")

print(json.dumps({"ok": True, "schemas": checked, "forced_calls": calls_seen, "grammar_ms_per_token": round(1000 * seconds / tokens, 4)}))
