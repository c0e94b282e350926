package chat

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
)

// engineVars is the context of the engine table tests.
const engineVars = `{"xs":[1,2,3], "d":{"b":1,"a":[1,2.5,null,true]}, "s":"  Hello World  ", "n":null, "t":true,
 "f":1.5, "u":"café 中文 😀", "msgs":[{"role":"user","content":"hi"},{"role":"assistant","content":"yo"}],
 "e":[], "big": 12345678901234567}`

// engineCases: template source, expected output, or (when want is empty) a
// substring of the expected error. Expected outputs were produced by Jinja2
// 3.1.6 configured as transformers configures it (trim_blocks,
// lstrip_blocks, loopcontrols, json.dumps tojson, strftime_now frozen at
// 2026-07-04 13:05:09), and copied here verbatim.
var engineCases = []struct{ src, want, wantErr string }{
	{`{% if t %}
  yes
{% endif %}
done`,
		`  yes
done`, ""},
	{`  {% if t %}
    a
  {% endif %}
b`,
		`    a
b`, ""},
	{`x  {% if t %}y{% endif %}  z`,
		`x  y  z`, ""},
	{`{{- s -}}|{{ s }}|
  {{- 'a' }}   {{ 'b' -}}   c`,
		`  Hello World  |  Hello World  |a   bc`, ""},
	{`  {%+ if t %}keep{% endif +%}
next`,
		`  keep
next`, ""},
	{`{# comment #}
a {#- c -#} b
  {# indented comment #}
c`,
		`ab
c`, ""},
	{`{% raw %}{{ not evaluated }}{% endraw %}
  {% raw -%}   x  {%- endraw %}`,
		`{{ not evaluated }}x`, ""},
	{`trailing newline removed`,
		`trailing newline removed`, ""},
	{`two trailing newlines kept one

`,
		`two trailing newlines kept one
`, ""},
	{`{% for x in xs %}
  {{ loop.index }}/{{ loop.index0 }}/{{ loop.revindex }}/{{ loop.revindex0 }}/{{ loop.first }}/{{ loop.last }}/{{ loop.length }}
{% endfor %}`,
		`  1/0/3/2/True/False/3
  2/1/2/1/False/False/3
  3/2/1/0/False/True/3
`, ""},
	{`{% for x in xs %}{{ loop.previtem }}-{{ loop.nextitem }}-{{ loop.cycle('a','b') }},{% endfor %}`,
		`-2-a,1-3-b,2--a,`, ""},
	{`{% for x in xs if x != 2 %}{{ x }}:{{ loop.index }} {% else %}none{% endfor %}|{% for x in e %}x{% else %}empty{% endfor %}`,
		`1:1 3:2 |empty`, ""},
	{`{% for x in xs %}{% if x == 2 %}{% continue %}{% endif %}{% if x == 3 %}{% break %}{% endif %}{{ x }}{% endfor %}`,
		`1`, ""},
	{`{% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %}{% for k in d %}{{ k }}{% endfor %}`,
		`b=1;a=[1, 2.5, None, True];ba`, ""},
	{`{% set ns = namespace(c=0, found=false) %}{% for x in xs %}{% set ns.c = ns.c + x %}{% if x == 2 %}{% set ns.found = true %}{% endif %}{% endfor %}{{ ns.c }} {{ ns.found }}`,
		`6 True`, ""},
	{`{% set y = 1 %}{% for x in xs %}{% set y = x %}{% endfor %}{{ y }}`,
		`1`, ""},
	{`{{ xs[::-1] }}{{ xs[1:] }}{{ xs[:-1] }}{{ xs[::2] }}{{ 'abcdef'[1:4] }}{{ 'abcdef'[-2:] }}{{ u[::-1] }}{{ u[5] }}{{ xs[-1] }}{{ xs[10] }}`,
		`[3, 2, 1][2, 3][1, 2][1, 3]bcdef😀 文中 éfac中3`, ""},
	{`{{ '  x  '.strip() }}|{{ 'xxhixx'.strip('x') }}|{{ '\n\nhi\n'.lstrip('\n') }}|{{ 'hi\n\n'.rstrip() }}|{{ 'a,b,,c'.split(',') }}|{{ ' a  b '.split() }}|{{ 'a b c'.split(' ', 1) }}|{{ 'a b c'.rsplit(' ', 1) }}`,
		`x|hi|hi
|hi|['a', 'b', '', 'c']|['a', 'b']|['a', 'b c']|['a b', 'c']`, ""},
	{`{{ 'hello'.startswith('he') }}{{ 'hello'.endswith('lo') }}{{ 'hello'.startswith(('x','h')) }}{{ 'Hello World'.upper() }}{{ 'Hello World'.lower() }}{{ 'hello wORLD'.title() }}{{ 'hello'.capitalize() }}{{ 'aaa'.replace('a','b',2) }}{{ 'hello'.find('l') }}{{ 'hello'.rfind('l') }}{{ 'hello'.count('l') }}{{ '-'.join(['a','b']) }}`,
		`TrueTrueTrueHELLO WORLDhello worldHello WorldHellobba232a-b`, ""},
	{`{{ '{} and {}'.format('a', 1) }}|{{ '{0}{1}{0}'.format('x','y') }}|{{ '{name}!'.format(name='bob') }}|{{ '%s-%d-%.2f' % ('a', 3, 1.5) }}|{{ '%s' % xs }}|{{ "%05d|%-4s|%x" | format(42, 'ab', 255) }}`,
		`a and 1|xyx|bob!|a-3-1.50|[1, 2, 3]|00042|ab  |ff`, ""},
	{`{{ s|trim }}|{{ s|length }}|{{ u|length }}|{{ xs|length }}|{{ d|length }}|{{ xs|first }}|{{ xs|last }}|{{ xs|join(', ') }}|{{ xs|sum }}|{{ xs|reverse|list }}|{{ 'abc'|reverse }}`,
		`Hello World|15|9|3|2|1|3|1, 2, 3|6|[3, 2, 1]|cba`, ""},
	{`{{ xs|tojson }}|{{ d|tojson }}|{{ d|tojson(indent=2) }}|{{ u|tojson }}|{{ u|tojson(ensure_ascii=true) }}|{{ d|tojson(separators=(',',':')) }}|{{ d|tojson(sort_keys=true) }}|{{ "a\"b\\c\n\t\u0001"|tojson }}|{{ 1.0|tojson }}|{{ [1e20, 0.1, -0.0]|tojson }}`,
		`[1, 2, 3]|{"b": 1, "a": [1, 2.5, null, true]}|{
  "b": 1,
  "a": [
    1,
    2.5,
    null,
    true
  ]
}|"café 中文 😀"|"caf\u00e9 \u4e2d\u6587 \ud83d\ude00"|{"b":1,"a":[1,2.5,null,true]}|{"a": [1, 2.5, null, true], "b": 1}|"a\"b\\c\n\t\u0001"|1.0|[1e+20, 0.1, -0.0]`, ""},
	{`{{ n|default('dflt') }}|{{ missing|default('dflt') }}|{{ ''|default('dflt', true) }}|{{ missing|d('x') }}|{{ missing }}|{{ n }}|{{ t }}|{{ f }}|{{ big }}|{{ 1e16 }}|{{ 0.00001 }}|{{ 1/3 }}|{{ 2.0*3 }}`,
		`None|dflt|dflt|x||None|True|1.5|12345678901234567|1e+16|1e-05|0.3333333333333333|6.0`, ""},
	{`{{ missing is defined }}{{ xs is defined }}{{ n is none }}{{ n is not none }}{{ s is string }}{{ xs is string }}{{ 1 is number }}{{ 1 is integer }}{{ 1.5 is float }}{{ d is mapping }}{{ xs is iterable }}{{ xs is sequence }}{{ t is true }}{{ t is false }}{{ 3 is odd }}{{ 4 is even }}{{ 9 is divisibleby 3 }}{{ 2 is in xs }}{{ t is boolean }}{{ 'ab' is lower }}{{ xs is mapping }}`,
		`FalseTrueTrueFalseTrueFalseTrueTrueTrueTrueTrueTrueTrueFalseTrueTrueTrueTrueTrueTrueFalse`, ""},
	{`{{ 1 + 2 * 3 }}|{{ (1 + 2) * 3 }}|{{ 7 // 2 }}|{{ -7 // 2 }}|{{ -7 % 3 }}|{{ 7 / 2 }}|{{ 2 ** 10 }}|{{ 2 ** 3 ** 2 }}|{{ 'a' ~ 1 ~ n }}|{{ 'ab' * 3 }}|{{ xs + [4] }}|{{ not t }}|{{ 1 < 2 < 3 }}|{{ 3 > 2 > 2 }}`,
		`7|9|3|-4|2|3.5|1024|64|a1None|ababab|[1, 2, 3, 4]|False|True|False`, ""},
	{`{{ 'b' in 'abc' }}{{ 'z' not in 'abc' }}{{ 2 in xs }}{{ 'a' in d }}{{ 1 == 1.0 }}{{ t == 1 }}{{ xs == [1,2,3] }}{{ 'a' if t else 'b' }}{{ 'a' if not t else 'b' }}|{{ 'a' if false }}|{{ n or 'x' }}{{ 0 and 'y' }}{{ t and 'z' }}`,
		`TrueTrueTrueTrueTrueTrueTrueab||x0z`, ""},
	{`{{ d }}|{{ msgs }}|{{ (1,) }}|{{ (1, 'a') }}|{{ [] }}|{{ {} }}|{{ "it's" }}|{{ ["it's", 'say "hi"', 'both \' "'] }}|{{ {'k': none, 2: false} }}`,
		`{'b': 1, 'a': [1, 2.5, None, True]}|[{'role': 'user', 'content': 'hi'}, {'role': 'assistant', 'content': 'yo'}]|(1,)|(1, 'a')|[]|{}|it's|["it's", 'say "hi"', 'both \' "']|{'k': None, 2: False}`, ""},
	{`{{ xs|map('string')|join('-') }}|{{ msgs|map(attribute='role')|list }}|{{ msgs|selectattr('role', 'equalto', 'user')|list|length }}|{{ msgs|rejectattr('role', 'equalto', 'user')|map(attribute='content')|first }}|{{ xs|select('odd')|list }}|{{ xs|reject('odd')|list }}|{{ [3,1,2]|sort }}|{{ ['b','A','c']|sort }}|{{ ['b','A','c']|sort(reverse=true) }}|{{ [1,2,1,3]|unique|list }}|{{ xs|max }}|{{ xs|min }}`,
		`1-2-3|['user', 'assistant']|1|yo|[1, 3]|[2]|[1, 2, 3]|['A', 'b', 'c']|['c', 'b', 'A']|[1, 2, 3]|3|1`, ""},
	{`{{ 'hello world'|title }}|{{ 'hello'|capitalize }}|{{ 'Hi'|upper }}{{ 'Hi'|lower }}|{{ 'a\nb\n\nc'|indent(2) }}|{{ 'a\nb'|indent(2, true) }}|{{ '3'|int + 1 }}|{{ '2.5'|float }}|{{ 'x'|int }}|{{ 2.567|round(2) }}|{{ 2.5|round }}|{{ 3|string ~ 'x' }}|{{ 'a b c'|wordcount }}|{{ 'aXbX'|replace('X', '-') }}|{{ -3|abs }}|{{ d|dictsort }}|{{ d|items|list }}`,
		`Hello World|Hello|HIhi|a
  b

  c|  a
  b|4|2.5|0|2.57|2.0|3x|3|a-b-|3|[('a', [1, 2.5, None, True]), ('b', 1)]|[('b', 1), ('a', [1, 2.5, None, True])]`, ""},
	{`{{ d.a }}|{{ d['b'] }}|{{ d.get('b') }}|{{ d.get('zz', 'def') }}|{{ d.keys()|list }}|{{ d.values()|list|length }}|{{ msgs[0].role }}|{{ msgs[0]['content'] }}|{{ msgs[1].missing is defined }}|{{ xs.0 }}`,
		`[1, 2.5, None, True]|1|1|def|['b', 'a']|2|user|hi|False|1`, ""},
	{`{% macro greet(name, greeting='Hello') %}{{ greeting }}, {{ name }}!{% endmacro %}{{ greet('Bob') }} {{ greet('Ann', greeting='Hi') }} {{ greet(name='Z') }}`,
		`Hello, Bob! Hi, Ann! Hello, Z!`, ""},
	{`{% macro rec(n) %}{% if n > 0 %}{{ n }}{{ rec(n - 1) }}{% endif %}{% endmacro %}{{ rec(5) }}`,
		`54321`, ""},
	{`{% set block %}
  inner {{ 1 + 1 }}
{% endset %}[{{ block }}]{% set a, b = 1, 2 %}{{ a }}{{ b }}{% set x = xs|length %}{{ x }}`,
		`[  inner 2
]123`, ""},
	{`{% filter upper %}shout {{ 'me' }}{% endfilter %}|{% with q = 5 %}{{ q }}{% endwith %}{{ q }}`,
		`SHOUT ME|5`, ""},
	{`{{ range(3)|list }}{{ range(1, 7, 2)|list }}{% for i in range(3) %}{{ i }}{% endfor %}{{ dict(a=1, b=2) }}{{ strftime_now('%d %b %Y') }}|{{ strftime_now('%Y-%m-%d %H:%M:%S %A %B %j %p %I') }}`,
		`[0, 1, 2][1, 3, 5]012{'a': 1, 'b': 2}04 Jul 2026|2026-07-04 13:05:09 Saturday July 185 PM 01`, ""},
	{`{{ raise_exception('Only user and assistant roles are supported!') }}`,
		"", "Only user and assistant roles are supported!"}, // Jinja2: TemplateError: Only user and assistant roles are supported!
	{`{{ 'a' + 1 }}`,
		"", "line 1: can only concatenate str (not \"int\") to str"}, // Jinja2: TypeError: can only concatenate str (not "int") to str
	{`{{ missing.attr }}`,
		"", "line 1: 'missing' is undefined"}, // Jinja2: UndefinedError: 'missing' is undefined
	{`{% for x in xs %}{{ x }}`,
		"", "line 1: unexpected end of template, expected 'else' or 'endfor'"}, // Jinja2: TemplateSyntaxError: Unexpected end of template. Jinja was looking for the following tags:
	{`{% if t %}x{% else %}y{% elif f %}z{% endif %}`,
		"", "line 1: unknown or unsupported tag 'elif'"}, // Jinja2: TemplateSyntaxError: Encountered unknown tag 'elif'. Jinja was looking for the following t
	{`line1
line2 {{ 1 + }}`,
		"", "line 2: unexpected '}}'"}, // Jinja2: TemplateSyntaxError: unexpected 'end of print statement'
	{`{% set xs2 = xs %}{{ xs2.append(4) }}`,
		"", "access to attribute 'append' of 'list' object is unsafe"}, // Jinja2: SecurityError: access to attribute 'append' of 'list' object is unsafe.
	{`{{ messages_undefined|length }}|{% for m in nothing %}x{% endfor %}|{{ nothing|tojson if nothing is defined else 'undef' }}`,
		`0||undef`, ""},
	{`{%- set date_string = date_string | default(strftime_now("%d %b %Y")) %}{{ date_string }}`,
		`04 Jul 2026`, ""},
	{`{{ "a" "b" 'c' }}|{{ 'tab\there' }}|{{ '\x41\u00e9\U0001F600\q' }}|{{ 1_000 }}|{{ 0.5e1 }}`,
		`abc|tab	here|Aé😀\q|1000|5.0`, ""},
	{`{% if t -%}
    stripped
{%- endif %}`,
		`stripped`, ""},
	{`{%- for m in msgs -%}
  <{{ m.role }}>
  {%- if m.content %} {{ m.content }}{% endif %}

{% endfor -%}
END`,
		`<user> hi
<assistant> yo
END`, ""},
	{`{{ 10 / 4 }}|{{ 10 // 4.0 }}|{{ -1.5 % 1 }}|{{ 1e300 * 1e10 }}|{{ 0.1 + 0.2 }}|{{ 100000000000000000000.0 }}|{{ 123456789.123 }}|{{ 1.5e-7 }}`,
		`2.5|2.0|0.5|inf|0.30000000000000004|1e+20|123456789.123|1.5e-07`, ""},
	{`{{ xs|batchx }}`,
		"", "line 1: no filter named 'batchx'"}, // Jinja2: TemplateAssertionError: No filter named 'batchx'.
	// Second batch: idioms seen in Llama 3.x, Mistral, Command R, DeepSeek and
	// Gemma templates, plus error behaviour.
	{`{%- set s = "line one\
 continued" %}{{ s }}|{{ "a\
b" }}`,
		`line one continued|ab`, ""},
	{`{% for k, v in d.items() if k != 'b' %}{{ k }}:{{ v|tojson }}{% endfor %}|{{ msgs[0].get('role') }}{{ msgs[0].get('nope') }}|{{ 'abcdefghijk'[-9:] }}|{{ (xs|tojson)[:-1] }}|{{ 5|string + 'x' }}`,
		`a:[1, 2.5, null, true]|userNone|cdefghijk|[1, 2, 3|5x`, ""},
	{`{% set outer = namespace(v=[]) %}{% for m in msgs %}{% set outer.v = outer.v + [m.role] %}{% endfor %}{{ outer.v }}|{{ 'user' not in outer.v }}|{{ not 'x' is defined }}|{{ not missing is defined }}`,
		`['user', 'assistant']|False|False|True`, ""},
	{`{% for m in msgs %}{% for x in msgs[loop.index0 + 1:] %}{{ x.role }}{% else %}-{% endfor %}{% endfor %}`,
		`assistant-`, ""},
	{`{% macro f(m) -%}
  [{{ m.role }}]
{%- endmacro %}
{% for m in msgs %}
  {{ f(m) }}
{% endfor %}`,
		`  [user]
  [assistant]
`, ""},
	{`{%- macro counter(items) %}
{%- set c = namespace(value=0) %}
{%- for i in items %}{% if i > 1 %}{{ c.value }}{% endif %}{% set c.value = c.value + 1 %}{% endfor %}
{%- endmacro %}
"{{ counter(xs) }}"`,
		`"12"`, ""},
	{`{% for m in msgs %}{% set outer_loop = loop %}{% for c in m.content %}{{ outer_loop.index }}{{ loop.index }}{{ c }} {% endfor %}{% endfor %}`,
		`11h 12i 21y 22o `, ""},
	{`{{ msgs|map(attribute='content')|map('upper')|join(',') }}|{{ msgs|selectattr('role', 'in', ['user', 'x'])|list|length }}|{{ xs|select('>', 1)|list }}|{{ xs|select('equalto', 2)|first }}|{{ [none, 1, '']|select|list }}|{{ msgs|map(attribute='nope', default='dflt')|list }}`,
		`HI,YO|1|[2, 3]|2|[1]|['dflt', 'dflt']`, ""},
	{`{{ xs|map('abs')|sum }}|{{ [1.5, 2]|sum }}|{{ msgs|sum(attribute='content', start='') if false else 'skip' }}|{{ [[1],[2]]|sum(start=[]) }}|{{ ['b', 'a']|max }}|{{ [{'n': 2}, {'n': 1}]|sort(attribute='n')|map(attribute='n')|list }}|{{ [{'n': 2}, {'n': 1}]|min(attribute='n') }}`,
		`6|3.5|skip|[1, 2]|b|[1, 2]|{'n': 1}`, ""},
	{`{{ 'The Quick-brown (fox) [x] <y>'|title }}|{{ "they're bill's"|title }}|{{ "they're bill's".title() }}|{{ 'aBC DeF'|capitalize }}|{{ 'x'|center(7) }}|{{ 'xy'|center(7) }}|{{ 'xy'|center(8) }}`,
		`The Quick-Brown (Fox) [X] <Y>|They're Bill's|They'Re Bill'S|Abc def|   x   |   xy  |   xy   `, ""},
	{`{{ 3.0|int }}|{{ '0x1A'|int(0, 16) }}|{{ '12'|int(base=8) }}|{{ ' 7 '|int }}|{{ 3|float }}|{{ 'nan'|float }}|{{ 1.23456|round(3) }}|{{ 1.5|round(0, 'floor') }}|{{ 1.2|round(0, 'ceil') }}|{{ 0.125|round(2) }}|{{ 5|round }}|{{ -2.5|round }}`,
		`3|26|10|7|3.0|nan|1.235|1.0|2.0|0.12|5|-2.0`, ""},
	{`{{ {'b': 2, 'a': 1}|dictsort }}|{{ {'b': 2, 'a': 1}|dictsort(by='value', reverse=true) }}|{{ {'B': 1, 'a': 2}|dictsort }}|{{ {'B': 1, 'a': 2}|dictsort(case_sensitive=true) }}`,
		`[('a', 1), ('b', 2)]|[('b', 2), ('a', 1)]|[('a', 2), ('B', 1)]|[('B', 1), ('a', 2)]`, ""},
	{`{{ 'a\r\nb\rc\nd'|indent(3, first=true, blank=true) }}|{{ ''|indent }}|{{ 'x\n'|indent(1) }}`,
		`   a
   b
   c
   d||x
`, ""},
	{`{{ '%(a)s-%(b)05.1f' % {'a': 'x', 'b': 2.25} }}|{{ '%r %s' % ('q', none) }}|{{ '%c%c' % (72, 'i') if false else '%c' % 72 }}|{{ '100%%' % () }}|{{ '%+d %e %g %G' % (5, 12345.678, 0.00001234, 1e20) }}|{{ '%8.3f|%-8d|' % (3.14159, 42) }}`,
		`x-002.2|'q' None|H|100%|+5 1.234568e+04 1.234e-05 1E+20|   3.142|42      |`, ""},
	{`{{ '{:>5}|{:<5}|{:^5}|{:05d}|{:.2f}'.format('a', 'b', 'c', 42, 3.14159) if false else '{:.2f} {!r}'.format(3.14159, 'x') }}|{{ '{{}} {0}'.format(1) }}`,
		`3.14 'x'|{} 1`, ""},
	{`{{ [1, 'a', none, true, 1.5, [2], {'k': 'v'}]|tojson(separators=(',', ':')) }}|{{ {1: 'a', none: 'b', true: 'c', 2.5: 'd'}|tojson }}|{{ {'z': 1, 'a': {'y': 1, 'b': 2}}|tojson(sort_keys=true, indent='\t') }}|{{ "é😀\u2028"|tojson(true) }}|{{ []|tojson(indent=2) }}|{{ {}|tojson(indent=2) }}|{{ [[]]|tojson(indent=0) }}`,
		`[1,"a",null,true,1.5,[2],{"k":"v"}]|{"1": "c", "null": "b", "2.5": "d"}|{
	"a": {
		"b": 2,
		"y": 1
	},
	"z": 1
}|"\u00e9\ud83d\ude00\u2028"|[]|{}|[
[]
]`, ""},
	{`{{ 'ab'.split('') if false else 'a b'.split(none) }}|{{ 'a,b,c'.split(',', 1) }}|{{ 'a,b,c'.rsplit(',', 1) }}|{{ '  a  b  '.rsplit(none, 1) }}|{{ 'a\nb\r\nc'.splitlines() }}|{{ 'a\nb'.splitlines(true) }}|{{ 'abc'.index('c') }}|{{ 'aXbXc'.replace('X', '') }}|{{ 'abc'.replace('', '-') }}`,
		`['a', 'b']|['a', 'b,c']|['a,b', 'c']|['  a', 'b']|['a', 'b', 'c']|['a\n', 'b']|2|abc|-a-b-c-`, ""},
	{`{{ 'Hello'.isalpha() }}{{ '123'.isdigit() }}{{ '  '.isspace() }}{{ 'ABC'.isupper() }}{{ 'abc'.islower() }}{{ 'a1'.isalnum() }}{{ ''.isdigit() }}|{{ 'prefix-x'.removeprefix('prefix-') }}|{{ 'x.py'.removesuffix('.py') }}|{{ 'hello'.startswith('l', 2) }}|{{ 'hello'.endswith('ell', 0, 4) }}|{{ 'AbC'.swapcase() }}`,
		`TrueTrueTrueTrueTrueTrueFalse|x|x|True|True|aBc`, ""},
	{`{{ xs[0:10:1] }}|{{ xs[-10:] }}|{{ xs[5:] }}|{{ xs[::-2] }}|{{ xs[2:0:-1] }}|{{ 'hello'[1:-1] }}|{{ 'hello'[-1:0:-1] }}|{{ (1, 2, 3)[1:] }}|{{ xs[none:none] }}|{{ 'abc'[10:] }}`,
		`[1, 2, 3]|[1, 2, 3]|[]|[3, 1]|[3, 2]|ell|olle|(2, 3)|[1, 2, 3]|`, ""},
	{`{% if xs %}T{% endif %}{% if e %}T{% else %}F{% endif %}{% if d %}T{% endif %}{% if '' %}T{% else %}F{% endif %}{% if 0.0 %}T{% else %}F{% endif %}{% if none %}T{% else %}F{% endif %}{% if missing %}T{% else %}F{% endif %}{% if {} %}T{% else %}F{% endif %}`,
		`TFTFFFFF`, ""},
	{`{% for x in 'ab' %}{{ x }}{% endfor %}{% for a, b in ['xy', 'zw'] %}{{ b }}{{ a }}{% endfor %}{% for a, b in [[1, 2]] %}{{ a + b }}{% endfor %}{% for x in none if false %}{% endfor %}`,
		"", "'NoneType' object is not iterable"}, // Jinja2: TypeError: 'NoneType' object is not iterable
	{`{% set a = 'x' %}{% set a = a ~ 'y' %}{{ a }}{% if true %}{% set a = 'in-if' %}{% endif %}{{ a }}{% for i in xs %}{% set a = 'in-for' %}{% endfor %}{{ a }}`,
		`xyin-ifin-if`, ""},
	{`{%- for m in msgs -%}
{{ loop.index }}{% if not loop.last %},{% endif %}
{%- endfor %}
{% for x in xs -%}
  <{{ x }}>
{%- endfor %}`,
		`1,2<1><2><3>`, ""},
	{`  {%- if true %}A{% endif -%}  
  {%- if true -%}  B  {%- endif %}  
  C {%+ if true %}D{% endif %}
{%- if true %}
    E
{% endif %}`,
		`AB  
  C D    E
`, ""},
	{`{% if true %}  {{ 'x' }}  {% endif %}
    {{ 'y' }}
{% if true %}
{% endif %}
end`,
		`  x      y
end`, ""},
	{`{{ 1 }}{# inline #}{{ 2 }}
{#- multi
   line
   comment -#}
{{ 3 }}
  {#+ keep +#}
z`,
		`123
  
z`, ""},
	{`{{ 'a' is sameas 'a' }}{{ none is sameas none }}{{ 1 is eq 1 }}{{ 1 is ne 2 }}{{ 1 is lt 2 }}{{ 2 is ge 2 }}{{ 3 is gt 2 }}{{ 'A' is upper }}{{ xs is callable }}{{ range is callable }}{{ 2.0 is integer }}{{ true is integer }}{{ true is number }}{{ none is string }}`,
		`TrueTrueTrueTrueTrueTrueTrueTrueFalseTrueFalseFalseTrueFalse`, ""},
	{`{{ (1, 2) == (1, 2) }}{{ [1, 2] == (1, 2) }}{{ {'a': 1} == {'a': 1} }}{{ [1, [2, 3]] < [1, [2, 4]] }}{{ 'a' < 'b' }}{{ 'B' < 'a' }}{{ 1 != 1.0 }}{{ 'é' > 'z' }}`,
		`TrueFalseTrueTrueTrueTrueFalseTrue`, ""},
	{`{{ 2 ** -1 }}|{{ 10 % 3.5 }}|{{ -0.0 }}|{{ 1e-5 * 10 }}|{{ 3 * 1.1 }}|{{ 9007199254740993 }}|{{ 0.1 * 3 }}|{{ 1.0e15 }}|{{ 123456789012345678.0 }}|{{ 5e-324 }}|{{ 1.7976931348623157e308 }}`,
		`0.5|3.0|-0.0|0.0001|3.3000000000000003|9007199254740993|0.30000000000000004|1000000000000000.0|1.2345678901234568e+17|5e-324|1.7976931348623157e+308`, ""},
	{`{% set x %}{% for i in xs %}{{ i }}{% endfor %}{% endset %}{{ x|length }}|{% set y | upper %}abc{% endset %}{{ y }}|{% filter trim %}   padded   {% endfilter %}|`,
		`3|ABC|padded|`, ""},
	{`{{ namespace(a=1).a }}{% set n = namespace({'k': 'v'}, z=2) %}{{ n.k }}{{ n.z }}{{ n.missing is defined }}|{{ dict(x=1, y=[2]) }}|{{ dict({'a': 1}, b=2) }}`,
		`1v2False|{'x': 1, 'y': [2]}|{'a': 1, 'b': 2}`, ""},
	{`{{ raise_exception('roles must alternate: ' ~ msgs|length) }}`,
		"", "roles must alternate: 2"}, // Jinja2: TemplateError: roles must alternate: 2
	{`{% for x in xs %}{% if x > 1 %}{{ raise_exception('bad ' ~ x) }}{% endif %}{% endfor %}`,
		"", "bad 2"}, // Jinja2: TemplateError: bad 2
	{`{{ xs.pop() }}`,
		"", "line 1: access to attribute 'pop' of 'list' object is unsafe"}, // Jinja2: SecurityError: access to attribute 'pop' of 'list' object is unsafe.
	{`{{ d.update({'a': 1}) }}`,
		"", "line 1: access to attribute 'update' of 'dict' object is unsafe"}, // Jinja2: SecurityError: access to attribute 'update' of 'dict' object is unsafe.
	{`{{ xs[1:2:0] }}`,
		"", "slice step cannot be zero"}, // Jinja2: ValueError: slice step cannot be zero
	{`{{ 1 // 0 }}`,
		"", "integer division or modulo by zero"}, // Jinja2: ZeroDivisionError: integer division or modulo by zero
	{`{{ xs|tojson(indent=2, bogus=1) }}`,
		"", "tojson() got an unexpected keyword argument 'bogus'"}, // Jinja2: TypeError: tojson() got an unexpected keyword argument 'bogus'
	{`{{ missing|tojson }}`,
		"", "Object of type Undefined is not JSON serializable"}, // Jinja2: TypeError: Object of type Undefined is not JSON serializable
	{`{{ 'a' < 1 }}`,
		"", "'<' not supported between instances of 'str' and 'int'"}, // Jinja2: TypeError: '<' not supported between instances of 'str' and 'int'
	{`{{ 'abc'.index('z') }}`,
		"", "substring not found"}, // Jinja2: ValueError: substring not found
	{`{% set a, b = [1] %}`,
		"", "not enough values to unpack (expected 2, got 1)"}, // Jinja2: ValueError: not enough values to unpack (expected 2, got 1)
	{`{% break %}`,
		"", "line 1: 'break' outside of a loop"}, // Jinja2: SyntaxError: 'break' outside loop (<template>, line 11)
	{`{% macro m() %}{% endmacro %}{{ m() }}{{ m(1) }}|{{ m }}`,
		"", "macro 'm' takes not more than 0 argument(s)"}, // Jinja2: TypeError: macro 'm' takes not more than 0 argument(s)
	{`{% for x in xs recursive %}{% endfor %}`,
		``, ""},
	{`{{ x is unknown_test }}`,
		"", "line 1: no test named 'unknown_test'"}, // Jinja2: TemplateAssertionError: No test named 'unknown_test'.
	{`{% include 'other.html' %}
`,
		"", "line 1: unknown or unsupported tag 'include'"}, // Jinja2: TypeError: no loader for this environment specified
	{`{% for x in [1, [2, [3, 4]], 5] recursive %}{% if x is iterable %}({{ loop(x) }}){% else %}{{ x }}@{{ loop.depth }}/{{ loop.depth0 }}/{{ loop.index }}{% endif %}{% endfor %}`,
		`1@1/0/1(2@2/1/1(3@3/2/14@3/2/2))5@1/0/3`, ""},
	{`{% macro v() %}{{ varargs }}{{ kwargs }}{% endmacro %}{{ v(1, 2, k=3) }}|{% macro w(a) %}{{ a }}{{ kwargs|tojson }}{% endmacro %}{{ w(1, z='q') }}`,
		`(1, 2){'k': 3}|1{"z": "q"}`, ""},
	{`{% macro m(a) %}{{ a }}{% endmacro %}{{ m(1, b=2) }}`,
		"", "line 1: macro 'm' takes no keyword argument 'b'"},
	{`{% for x in xs %}{{ loop.changed(x > 1) }}{% endfor %}|{{ xs|join }}|{{ msgs|join(',', attribute='role') }}|{{ 'a-b'|replace('-', '+') }}|{{ [3, 2, 1]|sort|first }}|{{ 'abc'|list }}|{{ d|list }}|{{ 1|default(2) }}
`,
		`TrueTrueFalse|123|user,assistant|a+b|1|['a', 'b', 'c']|['b', 'a']|1`, ""},
	// Full Unicode case mappings and str.format specs.
	{`{{ u.upper() }}|{{ 'ǅ'.lower() }}|{{ 'ß'.upper() }}|{{ 'İ'.lower()|length }}|{{ 'ΟΔΟΣ ΣΑΣ.'.lower() }}|{{ 'ﬁx ßtraße ǆemal'.title() }}|{{ 'ßa'.capitalize() }}|{{ 'straße'|upper }}|{{ 'ΣΑΣ'|lower }}|{{ 'ǅ'.isupper() }}{{ '123'.islower() }}{{ 'a1'.islower() }}{{ 'A1'.isupper() }}{{ 123 is lower }}{{ 'abc' is lower }}{{ 'ABC' is upper }}{{ 'Ab' is upper }}`,
		`CAFÉ 中文 😀|ǆ|SS|2|οδος σας.|Fix Sstraße ǅemal|Ssa|STRASSE|σας|FalseFalseTrueTrueFalseTrueTrueFalse`, ""},
	{`{{ '{:>5}|{:<5}|{:^5}|{:05d}|{:.2f}|{:*^9}|{:+d}|{:x}|{:,}|{:.1%}|{:e}|{:g}|{}|{:08.3f}|{:5}|{:<5d}|{!s:>4}'.format('a', 'b', 'c', 42, 3.14159, 'mid', 7, 255, 1234567, 0.256, 12345.678, 0.00001234, none, -3.14159, 42, 42, 'z') }}`,
		`    a|b    |  c  |00042|3.14|***mid***|+7|ff|1,234,567|25.6%|1.234568e+04|1.234e-05|None|-003.142|   42|42   |   z`, ""},
	{`{{ '{:.3}|{:.3}|{:10.2e}|{:<8.1f}|{:=+8d}|{:#x}|{:_}|{:,.2f}|{:.0f}|{:%}'.format(3.0, 3.14159, 1234.5, 2.25, 42, 255, 1000000, 1234567.891, 2.5, 0.5) }}`,
		`3.0|3.14|  1.23e+03|2.2     |+     42|0xff|1_000_000|1,234,567.89|2|50.000000%`, ""},
	{`{{ '{:d}'.format('x') }}
`,
		"", "line 1: Unknown format code 'd' for object of type 'str'"},
	{`{{ -xs|length }}`, "", "bad operand type for unary -: 'list'"}, // (-xs)|length in Jinja2 too
}

func engineContext(t testing.TB) map[string]any {
	var raw map[string]json.RawMessage
	if err := json.Unmarshal([]byte(engineVars), &raw); err != nil {
		t.Fatal(err)
	}
	extra := map[string]any{}
	for k, v := range raw {
		extra[k] = v
	}
	return extra
}

func renderSrc(t testing.TB, src string, extra map[string]any) (string, error) {
	tmpl, err := Parse(src)
	if err != nil {
		return "", err
	}
	tmpl.now = func() time.Time { return time.Date(2026, 7, 4, 13, 5, 9, 0, time.UTC) }
	return tmpl.Render(nil, Options{Extra: extra})
}

func TestEngine(t *testing.T) {
	extra := engineContext(t)
	for i, c := range engineCases {
		got, err := renderSrc(t, c.src, extra)
		if c.wantErr != "" {
			if err == nil {
				t.Errorf("case %d %q: want error containing %q, got output %q", i, c.src, c.wantErr, got)
			} else if !strings.Contains(err.Error(), c.wantErr) {
				t.Errorf("case %d %q: want error containing %q, got %v", i, c.src, c.wantErr, err)
			}
			continue
		}
		if err != nil {
			t.Errorf("case %d %q: %v", i, c.src, err)
			continue
		}
		if got != c.want {
			t.Errorf("case %d %q:\n%s", i, c.src, firstDiff(got, c.want))
		}
	}
}
