#!/usr/bin/env python3
"""Golden renderings with tool calls, tools and kwargs, by transformers itself.

Run where transformers is installed (the GPU machine), from the repo root:
    OUT=tokenizer/chat/testdata python3 tokenizer/chat/testdata/tool_golden.py
It complements tools/fixtures/chat_golden.py (plain conversations) with the
cases that exercise more of the templates: assistant tool calls (arguments as
objects and as JSON strings), tool results, reasoning_content, a tool schema
list, and enable_thinking. "error" holds the message of a raise_exception, or
"" for other template errors.
"""
import gzip, json, os, shutil, tempfile

import transformers
from transformers import AutoTokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
# The plain conversations of chat_golden.py, read from that file.
_golden_py = os.path.join(ROOT, "tools", "fixtures", "chat_golden.py")
_ns = {"__file__": _golden_py}
exec(open(_golden_py).read().split("def main")[0], _ns)
CONVERSATIONS = _ns["CONVERSATIONS"]

EXTRA_CONV = [
 [{"role":"system","content":"sys"},{"role":"user","content":"weather?"},
  {"role":"assistant","content":"","tool_calls":[{"id":"c1","type":"function","function":{"name":"get_weather","arguments":{"city":"Paris","days":3}}}]},
  {"role":"tool","content":"{\"temp\": 21.5}","tool_call_id":"c1"},
  {"role":"tool","content":"second","tool_call_id":"c2"},
  {"role":"assistant","content":"It is 21.5C."},{"role":"user","content":"thanks"}],
 [{"role":"user","content":"q"},{"role":"assistant","content":"answer","reasoning_content":"thinking hard"},{"role":"user","content":"<tool_response>x</tool_response>"}],
 [{"role":"user","content":"q"},{"role":"assistant","content":"a","tool_calls":[{"id":"c","type":"function","function":{"name":"f","arguments":"{\"x\": 1}"}},{"id":"d","type":"function","function":{"name":"g","arguments":{"é":[1,2.5,None,True]}}}]}],
]
TOOLS = [{"type":"function","function":{"name":"get_weather","description":"Get weather «now»","parameters":{"type":"object","properties":{"city":{"type":"string"},"days":{"type":"integer","maximum":10}},"required":["city"]}}}]


def main():
    out = []
    for name in ["llama3", "qwen3"]:
        d = os.path.join(ROOT, "testdata", "tokenizers", name)
        tmp = tempfile.mkdtemp()
        shutil.copy(os.path.join(d, "tokenizer_config.json"), tmp)
        with gzip.open(os.path.join(d, "tokenizer.json.gz"), "rb") as s, \
                open(os.path.join(tmp, "tokenizer.json"), "wb") as o:
            shutil.copyfileobj(s, o)
        tok = AutoTokenizer.from_pretrained(tmp)
        for msgs in CONVERSATIONS + EXTRA_CONV:
            for gen in (True, False):
                for kw in [{}, {"enable_thinking": False}, {"enable_thinking": True}]:
                    for tools in (None, TOOLS):
                        try:
                            r = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen,
                                                        tools=tools, **kw)
                            err = None
                        except Exception as e:
                            r, err = None, (str(e) if type(e).__name__ == "TemplateError" else "")
                        out.append({"name": name, "messages": msgs, "add_generation_prompt": gen, "kwargs": kw,
                                    "tools": tools, "rendered": r, "error": err})
        shutil.rmtree(tmp)
    res = {"transformers_version": transformers.__version__, "generator": "tokenizer/chat/testdata/tool_golden.py",
           "cases": out}
    with open(os.path.join(os.environ.get("OUT", "."), "tool_golden.json"), "w", encoding="utf-8") as f:
        json.dump(res, f, ensure_ascii=False, indent=0)
    print(len(out), "cases")


if __name__ == "__main__":
    main()
