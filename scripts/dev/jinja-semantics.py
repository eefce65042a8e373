#!/usr/bin/env python3
"""Writes Tests/Fixtures/chat-templates/semantics.jsonl: small templates rendered by Python's jinja2 set up as
transformers sets it up, one case per line ({"template", "vars", "expected"} or {"template", "vars", "error": true}).
The Swift renderer's tests replay them. Re-run after adding a probe: python3 scripts/dev/jinja-semantics.py"""
import json, os, sys
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2 import exceptions

def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

def raise_exception(m):
    raise exceptions.TemplateError(m)

env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
env.filters["tojson"] = tojson
env.globals["raise_exception"] = raise_exception

V = {"messages": [{"role": "system", "content": " Be brief. "}, {"role": "user", "content": "Hi\n there"}],
     "d": {"b": 1, "a": [1, 2.5, None, True, "x"], "items": "shadow"}, "s": "  Hello, World  ", "n": 7, "f": 2.5, "e": []}
probes = [
    # whitespace control
    "a\n  {% if true %}\n  b\n  {% endif %}\nc",
    "a  {%- if true -%}  b  {%- endif -%}  c",
    "x\n    {{ 'y' }}\n    z",
    "  {% if true %}lead{% endif %}",
    "a\n  {%+ if true %}b{% endif %}",
    "{# c #}\n  {# d #}\nafter",
    "a {#- c -#} b",
    "line1\n{% for i in [1,2] %}\n  item {{ i }}\n{% endfor %}\nend",
    "{% for i in [1,2] -%}\n {{ i }} \n{%- endfor %}",
    "{{- 'a' -}}\n\n{{- 'b' }}\n",
    "  {%- set x = 1 %}\n  {{ x }}",
    "{% raw %}{{ not rendered }}{% endraw %}",
    # scoping
    "{% set x = 0 %}{% for i in range(3) %}{% set x = x + 1 %}{{ x }}{% endfor %}{{ x }}",
    "{% set ns = namespace(c=0) %}{% for i in range(3) %}{% set ns.c = ns.c + i %}{% endfor %}{{ ns.c }}",
    "{% if true %}{% set y = 'in-if' %}{% endif %}{{ y }}",
    "{% macro m(a, b='B') %}[{{ a }}{{ b }}]{% endmacro %}{{ m(1) }}{{ m(1, 2) }}{{ m(b=3, a=4) }}",
    "{% macro f(n) %}{% if n > 0 %}{{ n }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(3) }}",
    "{% for x in [1,2,3,4] %}{% if x == 2 %}{% continue %}{% endif %}{% if x == 4 %}{% break %}{% endif %}{{ x }}{% endfor %}",
    "{% for x in [] %}a{% else %}empty{% endfor %}",
    "{% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %}",
    "{% for x in [3,1,2] if x > 1 %}{{ loop.index }}/{{ loop.length }}:{{ x }}{{ ',' if not loop.last }}{% endfor %}",
    "{% for x in 'abc' %}{{ loop.revindex0 }}{{ loop.cycle('-', '+') }}{% endfor %}",
    "{% set a, b = [1, 2] %}{{ b }}{{ a }}",
    "{% set t %}block {{ n }}{% endset %}[{{ t }}]",
    # expressions and printing
    "{{ [1, 'a', none, true, 1.5, {'k': [2]}] }}|{{ d.missing }}|{{ 7 / 2 }}|{{ 7 // 2 }}|{{ -7 // 2 }}|{{ -7 % 3 }}|{{ 'x' ~ 1 }}",
    "{{ 2 ** 10 }} {{ 1 + 2 * 3 }} {{ (1 + 2) * 3 }} {{ 'ab' * 3 }} {{ [1] + [2] }} {{ 10 / 4 }} {{ 1.0 }} {{ 3.0 * 2 }}",
    "{{ 'a' if false }}|{{ 'a' if false else 'b' }}|{{ none or 'x' }}|{{ 0 and 1 }}|{{ not 0 }}|{{ e or [] }}",
    "{{ 'x' in 'xyz' }} {{ 2 in [1, 2] }} {{ 'b' in d }} {{ 'z' not in d }} {{ 1 == 1.0 }} {{ true == 1 }} {{ 'a' < 'b' }} {{ [1, 2] < [1, 3] }}",
    "{{ d['a'][1] }} {{ d.a[-1] }} {{ d['a'][10] }} {{ s[2:7] }} {{ s[::-1] }} {{ d.a[1:] }} {{ d.a[:-2] }} {{ 'abcdef'[1:5:2] }}",
    "{{ d['items'] }}",
    "{{ \"it's\" }} {{ ['it\\'s', 'say \"hi\"', 'both \\' \"'] }}",
    "{{ 'tab\\there' }} {{ ['a\\nb'] }} {{ '\\u00e9' }}",
    # string methods
    "{{ s.strip() }}|{{ s.lstrip() }}|{{ s.rstrip() }}|{{ 'xxhixx'.strip('x') }}|{{ s.split() }}|{{ 'a,b,,c'.split(',') }}|{{ 'a,b,c'.split(',', 1) }}",
    "{{ 'a b  c'.split(' ') }} {{ 'a,b,c'.rsplit(',', 1) }} {{ s.upper() }} {{ s.lower() }} {{ 'hello world'.title() }} {{ 'hELLO'.capitalize() }}",
    "{{ 'abc'.startswith('ab') }} {{ 'abc'.endswith(('x', 'c')) }} {{ 'aXbX'.replace('X', '-') }} {{ 'aXbX'.replace('X', '-', 1) }} {{ 'abcb'.find('b') }} {{ 'abcb'.rfind('b') }} {{ 'abcb'.count('b') }}",
    "{{ '-'.join(['a', 'b']) }} {{ 'x\\ny\\n'.splitlines() }} {{ '123'.isdigit() }} {{ 'pre-x'.removeprefix('pre-') }}",
    # filters
    "{{ s | trim }}|{{ s | length }}|{{ d | length }}|{{ d.a | first }}|{{ d.a | last }}|{{ [3, 1, 2] | sort }}|{{ ['b', 'A', 'c'] | sort }}|{{ [1, 2] | reverse | list }}",
    "{{ d | tojson }}|{{ d.a | tojson(indent=2) }}|{{ {'z': 1, 'a': {'b': []}} | tojson(sort_keys=true) }}|{{ 'é\"\\n' | tojson }}|{{ {} | tojson(indent=2) }}",
    "{{ {'k': 'v'} | tojson(separators=(',', ':')) }}|{{ 'é' | tojson(ensure_ascii=true) }}|{{ [1.5, 2.0, -0.0, 1e20, 1e-7] | tojson }}",
    "{{ messages | selectattr('role', 'equalto', 'user') | list | length }}|{{ messages | map(attribute='role') | join(', ') }}|{{ messages | rejectattr('role', 'eq', 'user') | map(attribute='role') | list }}",
    "{{ [1, 2, 3, 4] | select('odd') | list }} {{ [1, 2, 3, 4] | reject('even') | list }} {{ [0, 1, '', 'a'] | select | list }} {{ ['a', 'b', 'a'] | unique | list }}",
    "{{ d.missing | default('dflt') }} {{ '' | default('dflt', true) }} {{ none | default('x') }} {{ d.missing | length }} {{ d.missing | trim }}",
    "{{ [1, 2, 3] | sum }} {{ [3, 1, 2] | max }} {{ [3, 1, 2] | min }} {{ '42' | int + 1 }} {{ '2.5' | float }} {{ -3 | abs }} {{ 2.567 | round(2) }} {{ 7 | string + 'x' }}",
    "{{ 'hello world' | capitalize }} {{ 'hello world' | title }} {{ 'a<b>&' | e }} {{ 'one\\ntwo' | indent(2) }} {{ 'a b c' | wordcount }} {% for k, v in d | dictsort %}{{ k }}:{{ v }} {% endfor %}",
    "{% for k, v in d | items %}{{ k }}={{ v }},{% endfor %} {{ 'abc' | list }} {{ d | list }} {{ 'a-b' | replace('-', '+') }} {{ 'AbC' | lower }} {{ 'AbC' | upper }}",
    # tests
    "{{ x is defined }} {{ n is defined }} {{ none is none }} {{ s is string }} {{ n is number }} {{ f is float }} {{ n is integer }} {{ true is boolean }} {{ d is mapping }}",
    "{{ d.a is iterable }} {{ s is iterable }} {{ n is iterable }} {{ d is sequence }} {{ n is odd }} {{ n is even }} {{ 9 is divisibleby 3 }} {{ 'x' is in 'xyz' }} {{ n is not none }}",
    "{{ true is true }} {{ 1 is true }} {{ range is callable }} {{ 'abc' is lower }} {{ n is eq 7 }} {{ n is ne 7 }} {{ n is gt 3 }} {{ n is lt 3 }} {{ n is ge 7 }} {{ n is le 6 }}",
    "{{ d.missing is not defined and d.missing is undefined }} {{ not d.missing is defined }} {{ d.a[0] is sameas 1 }}",
    # refusals and errors
    "{{ raise_exception('no system role') }}",
    "{{ d.missing.deeper }}",
    "{{ undefined_name + 'x' }}",
    "{{ [].append(1) }}",
    "{% set x = [] %}{{ x.append(1) }}",
    "{{ 1 / 0 }}",
    "{{ 'a' < 1 }}",
    "{% for x in 5 %}{% endfor %}",
    "{{ n | nosuchfilter }}",
    "{{ n is nosuchtest }}",
    "{% include 'x.html' %}",
    "{% if true %}unclosed",
    "{{ 'open",
    "{{ {'a': {'b': 1}} }}|{{ [{'x': [1]}] }}|{{ ({'k': 'v'}) | tojson }}",
    "trailing newline is dropped\n",
    "two trailing newlines\n\n",
    "{% endif %}",
]
out = []
for t in probes:
    try:
        out.append({"template": t, "vars": V, "expected": env.from_string(t).render(**V)})
    except Exception as ex:
        out.append({"template": t, "vars": V, "error": True, "error_type": type(ex).__name__, "error_message": str(ex)})
path = os.path.join(os.path.dirname(__file__), "../../Tests/Fixtures/chat-templates/semantics.jsonl")
with open(path, "w") as f:
    for o in out:
        f.write(json.dumps(o, ensure_ascii=False) + "\n")
print(f"{len(out)} cases, {sum(1 for o in out if 'error' in o)} errors -> {os.path.normpath(path)}")
