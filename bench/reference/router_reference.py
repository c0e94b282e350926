#!/usr/bin/env python3
"""PyTorch reference of the router (mixture of LoRA experts) equations over the fixture models.

For each fixture model (testdata/models/<model>, made by tools/fixtures/gen_models.py) and each
case below, this script writes a small deterministic router bundle

    testdata/routers/<model>/<case>/router.json
    testdata/routers/<model>/<case>/gates.safetensors

whose experts are the model's fixture PEFT adapters (a_qv, b_all_rslora, c_patterns, d_regex),
then runs the base model (transformers, float32, eager attention) with a forward hook on every
routed nn.Linear that applies ARCHITECTURE.md "Router" to that linear's own input x:

    l = W_g x;  I = top-k rows of l (ties: lower index);  w = softmax(l[I] / T)
    null rows of I dropped, remaining weights renormalised to sum 1 (all null: no delta)
    y += sum_{j in I, real} w_j * s_j * B_j (A_j x)      (s_j the adapter's own PEFT scale)

An expert without a LoRA on that linear adds nothing (its weight is not redistributed); a linear
without a gate gets no delta. The greedy tokens and per-step logits are written to

    testdata/routers/<model>/expected.json.gz

in the format of testdata/models/<model>/expected.json.gz: {"transformers_version", ...,
"cases": [{"adapter": <case name = bundle folder>, "prompt", "steps": [{"logits", "token",
"margin"}]}]}; each case also carries "router" (the bundle folder, relative to testdata/routers)
and "route_margin", the smallest gap seen between the k-th and (k+1)-th gate logit (a routing
decision that close to a tie may legitimately flip between implementations).

Run on the GPU machine (same environment as gen_models.py; CPU is enough):
    python3 bench/reference/router_reference.py [model ...]      (default: every fixture model)
"""
import gzip, json, math, os, re, shutil, sys

import torch
import transformers
import peft
from peft import PeftModel
from safetensors.torch import save_file

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tools", "fixtures"))
import gen_models as gm  # noqa: E402  (PROMPTS, STEPS, greedy, load_base: the fixtures' own)

MODELS_DIR = os.path.join(ROOT, "testdata", "models")
OUT = os.path.join(ROOT, "testdata", "routers")
FORMAT = "loraplex.router/v1"
ADAPTERS = ["a_qv", "b_all_rslora", "c_patterns", "d_regex"]
PROJS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
BLOCK = {p: ("self_attn" if p in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp") for p in PROJS}
MODULE_RE = re.compile(r"(?:^|\.)layers\.(\d+)\.(self_attn|mlp)\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)$")

# Cases: router.json contents (format added), which projections get no gate (layer -> [proj]),
# the stored gate dtype. Fixture models have 2 layers.
CASES = [
    ("top2", dict(experts=ADAPTERS, top_k=2, temperature=1.0, null_experts=0), {}, "float32"),
    ("top1", dict(experts=["d_regex", "c_patterns", "b_all_rslora", "a_qv"], top_k=1), {}, "bfloat16"),
    ("layer_experts", dict(experts=ADAPTERS, top_k=2,
                           layers={"0": dict(experts=["d_regex", "a_qv", "b_all_rslora"]),
                                   "1": dict(experts=["c_patterns", "b_all_rslora"], top_k=1)}),
     {0: ["o_proj"], 1: ["up_proj", "k_proj"]}, "float32"),
    ("null_experts", dict(experts=ADAPTERS, top_k=2, null_experts=2,
                          layers={"1": dict(null_experts=1, top_k=3)}), {}, "float32"),
    ("layer_temperature", dict(experts=ADAPTERS, top_k=3, temperature=1.0,
                               layers={"0": dict(temperature=4.0), "1": dict(temperature=0.3, top_k=2)}),
     {}, "float32"),
]


def resolve(rc, layer):
    """The layer's (experts, k, T, nulls) after per-layer overrides."""
    o = rc.get("layers", {}).get(str(layer), {})
    return (o.get("experts", rc["experts"]), o.get("top_k", rc.get("top_k", 2)),
            float(o.get("temperature", rc.get("temperature", 1.0))), o.get("null_experts", rc.get("null_experts", 0)))


def lora_modules(mdir, cfg_layers):
    """{adapter: {(layer, proj): (A [r, in], B [out, r], scale)}} as peft itself loads them
    (rank/alpha patterns, rslora, layers_to_transform, regex targets all applied by peft)."""
    out = {}
    for name in ADAPTERS:
        pm = PeftModel.from_pretrained(gm.load_base(mdir), os.path.join(mdir, "adapters", name)).eval()
        mods = {}
        for mname, m in pm.named_modules():
            match = MODULE_RE.search(mname)
            if not match or not hasattr(m, "lora_A") or "default" not in m.lora_A:
                continue
            layer, proj = int(match.group(1)), match.group(3)
            assert 0 <= layer < cfg_layers
            A = m.lora_A["default"].weight.detach().float().clone()
            B = m.lora_B["default"].weight.detach().float().clone()
            mods[(layer, proj)] = (A, B, float(m.scaling["default"]))
        assert mods, f"{name}: no LoRA modules found"
        out[name] = mods
        del pm
    return out


def make_bundle(bdir, rc, skip, gate_dtype, linears, n_layers, gen):
    """Writes router.json and gates.safetensors; returns {(layer, proj): W_g float32 as stored}."""
    shutil.rmtree(bdir, ignore_errors=True)
    os.makedirs(bdir)
    with open(os.path.join(bdir, "router.json"), "w") as f:
        json.dump(dict(format=FORMAT, **rc), f, indent=2)
    tensors, gates = {}, {}
    for layer in range(n_layers):
        experts, _, _, nulls = resolve(rc, layer)
        for proj in PROJS:
            if proj in skip.get(layer, []):
                continue
            d_in = linears[(layer, proj)].in_features
            # Logits of O(3): decisive routing, no near-ties at random.
            w = 3.0 * torch.randn(len(experts) + nulls, d_in, generator=gen) / math.sqrt(d_in)
            stored = w.to(getattr(torch, gate_dtype)).contiguous()
            tensors[f"model.layers.{layer}.{BLOCK[proj]}.{proj}.moe_gate.weight"] = stored
            gates[(layer, proj)] = stored.float()
    save_file(tensors, os.path.join(bdir, "gates.safetensors"))
    return gates


class Router:
    """Forward hooks that add the routed expert deltas to each gated linear's output."""

    def __init__(self, rc, gates, loras, n_layers):
        self.rc, self.gates, self.loras, self.n_layers = rc, gates, loras, n_layers
        self.route_margin = math.inf

    def hook(self, layer, proj):
        experts, k, T, nulls = resolve(self.rc, layer)
        W_g = self.gates.get((layer, proj))
        n_real = len(experts)

        def fn(module, inputs, output):
            if W_g is None:
                return output  # no gate: no expert delta
            x = inputs[0].float()                                   # [..., d_in]
            logits = x @ W_g.t()                                    # [..., n_real + nulls]
            vals, idx = torch.sort(logits, dim=-1, descending=True, stable=True)  # ties: lower index first
            if k < logits.shape[-1]:
                self.route_margin = min(self.route_margin, float((vals[..., k - 1] - vals[..., k]).min()))
            vals, idx = vals[..., :k], idx[..., :k]
            w = torch.softmax(vals / T, dim=-1)                     # k = 1 gives 1
            real = idx < n_real
            w = torch.where(real, w, torch.zeros_like(w))
            s = w.sum(dim=-1, keepdim=True)
            w = torch.where(s > 0, w / torch.where(s > 0, s, torch.ones_like(s)), torch.zeros_like(w))
            y = output.float().clone()
            for j, name in enumerate(experts):
                coef = (w * (idx == j)).sum(dim=-1)                 # this token's weight for expert j
                m = self.loras[name].get((layer, proj))
                if m is None:
                    continue  # no LoRA here: adds nothing, weight not redistributed
                A, B, scale = m
                y = y + coef.unsqueeze(-1) * scale * ((x @ A.t()) @ B.t())
            return y.to(output.dtype)

        return fn


def linears_of(model):
    out = {}
    for mname, m in model.named_modules():
        match = MODULE_RE.search(mname)
        if match and isinstance(m, torch.nn.Linear):
            out[(int(match.group(1)), match.group(3))] = m
    return out


def run_model(mi, name):
    mdir = os.path.join(MODELS_DIR, name)
    base = gm.load_base(mdir)
    n_layers = base.config.num_hidden_layers
    linears = linears_of(base)
    assert len(linears) == 7 * n_layers, f"{name}: found {len(linears)} linears"
    loras = lora_modules(mdir, n_layers)
    rdir = os.path.join(OUT, name)
    os.makedirs(rdir, exist_ok=True)
    cases = []
    for ci, (cname, rc, skip, gdtype) in enumerate(CASES):
        gen = torch.Generator().manual_seed(9000 + 100 * mi + ci)
        gates = make_bundle(os.path.join(rdir, cname), rc, skip, gdtype, linears, n_layers, gen)
        model = gm.load_base(mdir)
        router = Router(rc, gates, loras, n_layers)
        handles = [m.register_forward_hook(router.hook(layer, proj))
                   for (layer, proj), m in linears_of(model).items()]
        for prompt in gm.PROMPTS:
            router.route_margin = math.inf
            steps = gm.greedy(model, prompt)
            cases.append({"adapter": cname, "router": f"{name}/{cname}", "prompt": prompt, "steps": steps,
                          "route_margin": router.route_margin if math.isfinite(router.route_margin) else None})
        for h in handles:
            h.remove()
        # The hooks must change the output: a case equal to the base model tests nothing.
        assert any(c["steps"][0]["logits"] != b["steps"][0]["logits"] for c, b in
                   zip(cases[-len(gm.PROMPTS):], [{"steps": gm.greedy(base, p)[:1]} for p in gm.PROMPTS])), cname
    with gzip.open(os.path.join(mdir, "expected.json.gz"), "rt") as f:
        stored = json.load(f).get("stored_dtype")  # the model's, as in its own expected.json.gz
    out = {"transformers_version": transformers.__version__, "peft_version": peft.__version__,
           "torch_version": torch.__version__, "stored_dtype": stored, "cases": cases}
    with gzip.open(os.path.join(rdir, "expected.json.gz"), "wt") as f:
        json.dump(out, f)
    rm = [c["route_margin"] for c in cases if c["route_margin"] is not None]
    print(f"{name}: {len(cases)} cases, min token margin "
          f"{min(s['margin'] for c in cases for s in c['steps']):.4f}, min route margin {min(rm):.2e}",
          file=sys.stderr)


def main():
    torch.manual_seed(0)
    names = sys.argv[1:] or [m[0] for m in gm.MODELS]
    for name in names:
        mi = [m[0] for m in gm.MODELS].index(name)
        run_model(mi, name)


if __name__ == "__main__":
    main()
