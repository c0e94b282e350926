package main

import (
	"flag"
	"fmt"
)

// usageText opens --help: what the server answers and a runnable example of each feature
// (README.md has the full reference). Flags follow.
const usageText = `loraplex serves one base model and many LoRA adapters and routers in one batch, with an
OpenAI-style HTTP API (vLLM's extensions), gRPC and Prometheus metrics.

Usage: server [flags]             (no --model: the built-in trained demo on http://127.0.0.1:8000)

Models: the base model answers to --served-model-name, by default the --model argument exactly as
given (vLLM's rule); adapters to their --adapter NAME, or to NAME for DIR/NAME or DIR/NAME.lorapack
in an --adapter-dir; routers to their --router NAME.
  curl -s localhost:8000/v1/models
  curl -s localhost:8000/v1/models/python          # one model's card; unknown: 404 model_not_found
  curl -s localhost:8000/version                   # {"version": ...}

Generation (completions and chat; logprobs, n, stream, stop, seed, vLLM's sampling fields):
  curl -s localhost:8000/v1/completions -H 'content-type: application/json' \
    -d '{"model":"python","prompt":"import os\n","max_tokens":16,"temperature":0}'
  curl -s localhost:8000/v1/chat/completions -H 'content-type: application/json' \
    -d '{"messages":[{"role":"user","content":"hi"}],"max_tokens":16}'

logit_bias (token id -> bias in [-100, 100] added before sampling; CPU backend):
  curl -s localhost:8000/v1/completions -H 'content-type: application/json' \
    -d '{"prompt":"import os\n","max_tokens":3,"temperature":0,"logit_bias":{"1115":-100}}'

Loglikelihoods (lm-eval-harness style): echo + logprobs + max_tokens 0 scores the prompt's tokens
(the first one's logprob is null) and generates nothing; vLLM's prompt_logprobs gives the same
values in vLLM's shape, on completions and chat:
  curl -s localhost:8000/v1/completions -H 'content-type: application/json' \
    -d '{"model":"python","prompt":"def f(x):\n    return x","echo":true,"logprobs":1,"max_tokens":0}'
  curl -s localhost:8000/v1/completions -H 'content-type: application/json' \
    -d '{"model":"python","prompt":"def f(x):","max_tokens":1,"prompt_logprobs":2}'

Tool calls (tools, tool_choice auto/none/required/a named function, parallel_tool_calls): the
model's output is parsed into tool_calls in its chat template's format (--tool-call-parser: hermes,
llama3_json, mistral); required and a named function force a call by constrained decoding. The
demo writes hermes calls; forced, the call is valid for the schema whatever the tiny model knows:
  curl -s localhost:8000/v1/chat/completions -H 'content-type: application/json' \
    -d '{"messages":[{"role":"user","content":"Weather in Paris?"}],"max_tokens":100,"tools":[{"type":"function","function":{"name":"get_weather","parameters":{"type":"object","properties":{"city":{"type":"string","maxLength":12}},"required":["city"]}}}],"tool_choice":{"type":"function","function":{"name":"get_weather"}}}'

Fields that would change the output but are not implemented (use_beam_search, bad_words,
allowed_token_ids, ...) are a 400 naming the field; unknown harmless fields are ignored.

Flags:
`

// setUsage makes fs's --help print usageText, then the flags.
func setUsage(fs *flag.FlagSet) {
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), usageText)
		fs.PrintDefaults()
	}
}
