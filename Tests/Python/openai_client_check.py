#!/usr/bin/env python3
"""Drives a running `conclave serve` with the official openai client (and prometheus_client for /metrics when the
server has it). Usage: openai_client_check.py BASE_URL [--concurrency 8]. Exits 1 naming the first failure."""
import argparse, concurrent.futures, json, sys, time, urllib.request

import openai
from server_wait import fail, wait_for_health

ap = argparse.ArgumentParser()
ap.add_argument("base")
ap.add_argument("--concurrency", type=int, default=8)
ap.add_argument("--wait", type=float, default=300, help="seconds to wait for /health")
args = ap.parse_args()
root = args.base.rstrip("/")


wait_for_health(root, args.wait)

client = openai.OpenAI(base_url=root + "/v1", api_key="none", timeout=300, max_retries=0)

models = client.models.list()
ids = [m.id for m in models.data]
if len(ids) != 1:
    fail(f"models.list() gave {ids}")
model = ids[0]

messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Tell me about caches."}]
full = client.chat.completions.create(model=model, messages=messages, max_tokens=16, seed=3, temperature=0.7)
text = full.choices[0].message.content
if full.choices[0].finish_reason not in ("stop", "length") or full.usage.completion_tokens < 1:
    fail(f"chat.completions.create: {full}")

streamed, finish, usage = "", None, None
for chunk in client.chat.completions.create(model=model, messages=messages, max_tokens=16, seed=3, temperature=0.7, stream=True,
                                            stream_options={"include_usage": True}):
    if chunk.usage is not None:
        usage = chunk.usage
    for c in chunk.choices:
        streamed += c.delta.content or ""
        finish = c.finish_reason or finish
if streamed != text:
    fail(f"streamed chat text {streamed!r} differs from the non-streamed {text!r} (same seed)")
if finish != full.choices[0].finish_reason or usage is None or usage.completion_tokens != full.usage.completion_tokens:
    fail(f"stream finish {finish} usage {usage} against {full.choices[0].finish_reason} {full.usage}")
# The same conversation again starts from the first one's KV (the prefix cache): all of its prompt but the last token.
if full.usage.prompt_tokens_details is None or usage.prompt_tokens_details is None \
        or usage.prompt_tokens_details.cached_tokens != usage.prompt_tokens - 1:
    fail(f"cached_tokens of a repeated conversation: {usage}")

# Log-probabilities (computed on the last stage, carried back over the wire in a cluster).
lp = client.chat.completions.create(model=model, messages=messages, max_tokens=4, temperature=0, logprobs=True, top_logprobs=2)
entries = lp.choices[0].logprobs.content
if len(entries) != lp.usage.completion_tokens or any(len(e.top_logprobs) != 2 or e.logprob > 0 for e in entries):
    fail(f"logprobs: {lp.choices[0].logprobs}")
if any(abs(e.top_logprobs[0].logprob - e.logprob) > 1e-4 for e in entries):
    fail("greedy tokens are not the most likely ones of their top_logprobs")

comp = client.completions.create(model=model, prompt="Once upon a time", max_tokens=8, temperature=0)
if comp.choices[0].finish_reason != "length" or comp.usage.completion_tokens != 8:
    fail(f"completions.create: {comp}")

# The Responses API: the same answer as chat for the same conversation and seed, streamed as the same text, a
# conversation continued by previous_response_id, function tools and call items in the input.
resp = client.responses.create(model=model, instructions="Be brief.", input="Tell me about caches.", max_output_tokens=16,
                               temperature=0.7, extra_body={"seed": 3})
if resp.status not in ("completed", "incomplete") or resp.output_text != text or resp.usage.output_tokens != full.usage.completion_tokens:
    fail(f"responses.create gave {resp.output_text!r} ({resp.status}, {resp.usage}); chat gave {text!r}")
deltas, completed = "", None
for event in client.responses.create(model=model, instructions="Be brief.", input="Tell me about caches.", max_output_tokens=16,
                                     temperature=0.7, extra_body={"seed": 3}, stream=True):
    if event.type == "response.output_text.delta":
        deltas += event.delta
    elif event.type in ("response.completed", "response.incomplete"):
        completed = event.response
if deltas != text or completed is None or completed.output_text != text:
    fail(f"streamed responses text {deltas!r} / {completed and completed.output_text!r} differs from {text!r}")
follow = client.responses.create(model=model, previous_response_id=resp.id, input="And more?", max_output_tokens=4, temperature=0)
if follow.usage.input_tokens <= resp.usage.input_tokens:
    fail(f"previous_response_id did not carry the conversation: {follow.usage.input_tokens} <= {resp.usage.input_tokens} input tokens")
tool = {"type": "function", "name": "get_weather", "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
called = client.responses.create(model=model, tools=[tool], max_output_tokens=4, temperature=0, input=[
    {"role": "user", "content": "Weather in Paris?"},
    {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": "{\"city\": \"Paris\"}"},
    {"type": "function_call_output", "call_id": "call_1", "output": "sunny"}])
if called.status not in ("completed", "incomplete") or not called.output:
    fail(f"responses with function call items: {called}")
try:
    client.responses.create(model=model, previous_response_id="resp_nope", input="x", max_output_tokens=4)
    fail("an unknown previous_response_id was accepted")
except openai.BadRequestError as e:
    if "previous_response_id" not in str(e):
        fail(f"the 400 does not name the field: {e}")

try:
    client.chat.completions.create(model=model, messages=[], max_tokens=4)
    fail("an empty messages list was accepted")
except openai.BadRequestError as e:
    if "messages" not in str(e):
        fail(f"the 400 does not name the field: {e}")


def one_stream(i):
    n, reason = 0, None
    for chunk in client.chat.completions.create(model=model, messages=[{"role": "user", "content": f"Story number {i}"}],
                                                max_tokens=12, seed=i, stream=True):
        for c in chunk.choices:
            if c.delta.content:
                n += 1
            reason = c.finish_reason or reason
    return reason


with concurrent.futures.ThreadPoolExecutor(args.concurrency) as pool:
    reasons = list(pool.map(one_stream, range(args.concurrency)))
if any(r not in ("stop", "length") for r in reasons):
    fail(f"concurrent streams ended with {reasons}")

# /metrics, when the server exports it: it must parse, and the counters must have moved.
try:
    with urllib.request.urlopen(root + "/metrics", timeout=30) as r:
        text = r.read().decode()
except urllib.error.HTTPError as e:
    text = None if e.code == 404 else fail(f"/metrics answered {e.code}")
if text is not None:
    from prometheus_client.parser import text_string_to_metric_families
    families = {f.name: f for f in text_string_to_metric_families(text)}
    if not families:
        fail("/metrics has no metric families")
print(json.dumps({"ok": True, "model": model, "concurrent_streams": len(reasons)}))
