#!/usr/bin/env python3
"""loraplex demo training pipeline (issue 7): tokenizer, base model, 4 LoRA adapters, router.

    python3 tools/train/train.py --corpus .train/corpus --out .train/out          # GPU run
    python3 tools/train/train.py --corpus .train/corpus --out /tmp/smoke --smoke  # CPU smoke test

Pure PyTorch (works with torch 1.13 .. 2.x); `tokenizers` trains the BPE when importable (the
smoke mode falls back to a byte-level tokenizer without it); when `transformers` / `peft` import,
the exported folders are reloaded with them and their logits are checked against ours.
"""
import argparse, json, math, os, struct, sys, time, random, shutil

import torch
import torch.nn as nn
import torch.nn.functional as F

DOMAINS = ["go", "python", "c", "english"]
SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|im_start|>", "<|im_end|>"]
PROJS = [("self_attn", "q_proj"), ("self_attn", "k_proj"), ("self_attn", "v_proj"), ("self_attn", "o_proj"),
         ("mlp", "gate_proj"), ("mlp", "up_proj"), ("mlp", "down_proj")]
CHAT_TEMPLATE = '{% if tools %}{{ \'<|im_start|>system\\n\' }}{% if messages[0][\'role\'] == \'system\' %}{{ messages[0][\'content\'] + \'\\n\\n\' }}{% endif %}{{ \'# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n\' }}{{ \'You are provided with function signatures within <tools></tools> XML tags:\\n<tools>\' }}{% for tool in tools %}{{ \'\\n\' + (tool | tojson) }}{% endfor %}{{ \'\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n\' }}{{ \'<tool_call>\\n{"name": <function-name>, "arguments": <args-json-object>}\\n</tool_call><|im_end|>\\n\' }}{% endif %}{% for message in messages %}{% if tools and loop.first and message[\'role\'] == \'system\' %}{% elif message[\'role\'] == \'assistant\' and message[\'tool_calls\'] %}{{ \'<|im_start|>assistant\' }}{% if message[\'content\'] %}{{ \'\\n\' + message[\'content\'] }}{% endif %}{% for call in message[\'tool_calls\'] %}{{ \'\\n<tool_call>\\n{"name": "\' + call[\'function\'][\'name\'] + \'", "arguments": \' }}{% if call[\'function\'][\'arguments\'] is string %}{{ call[\'function\'][\'arguments\'] }}{% else %}{{ call[\'function\'][\'arguments\'] | tojson }}{% endif %}{{ \'}\\n</tool_call>\' }}{% endfor %}{{ \'<|im_end|>\\n\' }}{% elif message[\'role\'] == \'tool\' %}{{ \'<|im_start|>user\\n<tool_response>\\n\' + message[\'content\'] + \'\\n</tool_response><|im_end|>\\n\' }}{% else %}{{ \'<|im_start|>\' + message[\'role\'] + \'\\n\' + message[\'content\'] + \'<|im_end|>\' + \'\\n\' }}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ \'<|im_start|>assistant\\n\' }}{% endif %}'  # demo/demo.go ChatTemplate (ChatML with Hermes tools)

T0 = time.time()
LOG = None


def log(*a):
    s = "[%7.1fs] " % (time.time() - T0) + " ".join(str(x) for x in a)
    print(s, flush=True)
    if LOG:
        LOG.write(s + "\n"); LOG.flush()


# ---------------------------------------------------------------- safetensors (self-written)
_DT = {torch.float32: ("F32", 4), torch.bfloat16: ("BF16", 2), torch.float16: ("F16", 2)}


def st_save(path, tensors, metadata=None):
    import numpy as np
    header, blobs, off = {}, [], 0
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        code, size = _DT[t.dtype]
        if t.dtype == torch.bfloat16:
            b = t.view(torch.int16).numpy().astype("<i2").tobytes()
        else:
            b = t.numpy().astype("<f4" if code == "F32" else "<f2").tobytes()
        header[name] = {"dtype": code, "shape": list(t.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b); off += len(b)
    header["__metadata__"] = dict(metadata or {"format": "pt"})
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h))); f.write(h)
        for b in blobs:
            f.write(b)


def st_load(path):
    import numpy as np
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n)); data = f.read()
    out = {}
    for name, m in header.items():
        if name == "__metadata__":
            continue
        a, b = m["data_offsets"]
        buf = data[a:b]
        if m["dtype"] == "BF16":
            t = torch.from_numpy(np.frombuffer(buf, dtype="<i2").copy()).view(torch.bfloat16)
        elif m["dtype"] == "F32":
            t = torch.from_numpy(np.frombuffer(buf, dtype="<f4").copy())
        elif m["dtype"] == "F16":
            t = torch.from_numpy(np.frombuffer(buf, dtype="<f2").copy())
        else:
            raise ValueError(m["dtype"])
        out[name] = t.reshape(m["shape"])
    return out


# ---------------------------------------------------------------- tokenizer
class ByteTok:
    """Smoke-mode fallback: byte-level BPE with no merges (ids: 4 specials, then 256 bytes)."""

    def __init__(self):
        bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
        cs = bs[:]
        n = 0
        for b in range(256):
            if b not in bs:
                bs.append(b); cs.append(256 + n); n += 1
        self.b2u = {b: chr(c) for b, c in zip(bs, cs)}
        self.vocab_size = len(SPECIALS) + 256

    def encode(self, text):
        return [len(SPECIALS) + b for b in text.encode("utf-8")]

    def encode_batch(self, texts):
        return [self.encode(t) for t in texts]

    def decode(self, ids):
        return bytes(i - len(SPECIALS) for i in ids if i >= len(SPECIALS)).decode("utf-8", "replace")

    def to_json(self):
        vocab = {s: i for i, s in enumerate(SPECIALS)}
        for b in range(256):
            vocab[self.b2u[b]] = len(SPECIALS) + b
        return tokenizer_json_skeleton(vocab, [])


def tokenizer_json_skeleton(vocab, merges):
    return {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [{"id": i, "content": s, "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": False, "special": True} for i, s in enumerate(SPECIALS)],
        "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        "post_processor": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": vocab, "merges": merges},
    }


class HFTok:
    def __init__(self, tk):
        self.tk = tk
        self.vocab_size = tk.get_vocab_size()

    def encode(self, text):
        return self.tk.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts):
        return [e.ids for e in self.tk.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids):
        return self.tk.decode(ids, skip_special_tokens=False)


def train_tokenizer(files, vocab_size, smoke):
    try:
        from tokenizers import Tokenizer, models, pre_tokenizers, decoders, trainers
    except ImportError:
        if not smoke:
            raise
        log("tokenizers not importable: smoke mode uses the byte-level fallback tokenizer")
        return ByteTok(), ByteTok().to_json()
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tk.decoder = decoders.ByteLevel()
    tr = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=SPECIALS,
                             initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tk.train(files, tr)
    for i, s in enumerate(SPECIALS):
        assert tk.token_to_id(s) == i, (s, tk.token_to_id(s))
    return HFTok(tk), json.loads(tk.to_str())


# ---------------------------------------------------------------- model
class Cfg:
    def __init__(self, **kw):
        self.__dict__.update(kw)


class RMSNorm(nn.Module):
    def __init__(self, n, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n)); self.eps = eps

    def forward(self, x):
        dt = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dt)


class Routing:
    """Global adapter state for a forward: mode None (base), ("adapter", e) or ("router",)."""
    mode = None
    top_k = 2
    temperature = 1.0
    gate_logits = []  # filled in router mode: list of [B,T,E] tensors (for the gate loss)


class Lin(nn.Module):
    """Frozen base linear + optional LoRA experts (A [r,in], B [out,r]) + optional gate [E,in]."""

    def __init__(self, din, dout):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(dout, din))
        self.din, self.dout = din, dout
        self.A = {}  # expert index -> tensor [r, din]
        self.B = {}  # expert index -> tensor [dout, r]
        self.scale = {}
        self.gate = None  # tensor [E, din]

    def forward(self, x):
        y = F.linear(x, self.weight)
        m = Routing.mode
        if m is None:
            return y
        if m[0] == "adapter":
            e = m[1]
            if e in self.A:
                y = y + self.scale[e] * F.linear(F.linear(x, self.A[e].to(x.dtype)), self.B[e].to(x.dtype))
            return y
        # router: l = W_g x; I = topk(l); w = softmax(l[I]/T); y += sum_j w_j s_j B_j A_j x
        if self.gate is None:
            return y
        E = self.gate.shape[0]
        with torch.autocast(x.device.type, enabled=False):  # gate logits and top-k in fp32
            l = F.linear(x.float(), self.gate.float())  # [..., E]
        Routing.gate_logits.append(l)
        k = min(Routing.top_k, E)
        v, idx = torch.topk(l, k, dim=-1)
        w = torch.softmax(v / Routing.temperature, dim=-1)
        wd = torch.zeros_like(l).scatter(-1, idx, w)  # dense weights, zero off the top-k
        Aall = torch.cat([self.A[e] for e in range(E)], 0).to(x.dtype)          # [E*r, din]
        Ball = torch.cat([self.B[e] * self.scale[e] for e in range(E)], 1).to(x.dtype)  # [dout, E*r]
        xa = F.linear(x, Aall)
        r = self.A[0].shape[0]
        xa = (xa.view(*xa.shape[:-1], E, r) * wd.to(x.dtype).unsqueeze(-1)).reshape(xa.shape)
        return y + F.linear(xa, Ball)


def rope_cache(cfg, T, device):
    hd = cfg.head_dim
    inv = 1.0 / (cfg.rope_theta ** (torch.arange(0, hd, 2, dtype=torch.int64, device=device).float() / hd))
    t = torch.arange(T, device=device).float()
    fr = torch.outer(t, inv)
    emb = torch.cat([fr, fr], -1)
    return emb.cos(), emb.sin()


def rot_half(x):
    h = x.shape[-1] // 2
    return torch.cat([-x[..., h:], x[..., :h]], -1)


def sdpa(q, k, v):
    if hasattr(F, "scaled_dot_product_attention"):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    T = q.shape[-2]  # torch < 2.0 (local smoke tests)
    a = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    a = a.masked_fill(torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1), float("-inf"))
    return torch.softmax(a.float(), -1).to(q.dtype) @ v


class Attn(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c
        hd = c.head_dim
        self.q_proj = Lin(c.hidden_size, c.num_attention_heads * hd)
        self.k_proj = Lin(c.hidden_size, c.num_key_value_heads * hd)
        self.v_proj = Lin(c.hidden_size, c.num_key_value_heads * hd)
        self.o_proj = Lin(c.num_attention_heads * hd, c.hidden_size)

    def forward(self, x, cos, sin):
        B, T, _ = x.shape
        c = self.c
        hd = c.head_dim
        q = self.q_proj(x).view(B, T, c.num_attention_heads, hd).transpose(1, 2)
        k = self.k_proj(x).view(B, T, c.num_key_value_heads, hd).transpose(1, 2)
        v = self.v_proj(x).view(B, T, c.num_key_value_heads, hd).transpose(1, 2)
        cs, sn = cos.to(q.dtype), sin.to(q.dtype)
        q = q * cs + rot_half(q) * sn
        k = k * cs + rot_half(k) * sn
        rep = c.num_attention_heads // c.num_key_value_heads
        if rep > 1:
            k = k.repeat_interleave(rep, dim=1); v = v.repeat_interleave(rep, dim=1)
        o = sdpa(q, k, v)
        return self.o_proj(o.transpose(1, 2).reshape(B, T, -1))


class MLP(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.gate_proj = Lin(c.hidden_size, c.intermediate_size)
        self.up_proj = Lin(c.hidden_size, c.intermediate_size)
        self.down_proj = Lin(c.intermediate_size, c.hidden_size)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.input_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.self_attn = Attn(c)
        self.post_attention_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.mlp = MLP(c)

    def forward(self, x, cos, sin):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
        return x + self.mlp(self.post_attention_layernorm(x))


class Inner(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.embed_tokens = nn.Embedding(c.vocab_size, c.hidden_size)
        self.layers = nn.ModuleList([Block(c) for _ in range(c.num_hidden_layers)])
        self.norm = RMSNorm(c.hidden_size, c.rms_norm_eps)


class Llama(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c
        self.model = Inner(c)
        self._rope = None
        std = 0.02
        for n, p in self.named_parameters():
            if n.endswith("layernorm.weight") or n.endswith("norm.weight"):
                continue
            nn.init.normal_(p, 0.0, std)
        # scaled init of residual output projections (GPT-2 style)
        for b in self.model.layers:
            nn.init.normal_(b.self_attn.o_proj.weight, 0.0, std / math.sqrt(2 * c.num_hidden_layers))
            nn.init.normal_(b.mlp.down_proj.weight, 0.0, std / math.sqrt(2 * c.num_hidden_layers))

    def lins(self):
        for L, b in enumerate(self.model.layers):
            for mod, proj in PROJS:
                yield L, mod, proj, getattr(getattr(b, mod), proj)

    def forward(self, ids):
        T = ids.shape[1]
        if self._rope is None or self._rope[0].shape[0] < T or self._rope[0].device != ids.device:
            self._rope = rope_cache(self.c, max(T, 256), ids.device)
        cos, sin = self._rope[0][:T], self._rope[1][:T]
        x = self.model.embed_tokens(ids)
        for b in self.model.layers:
            x = b(x, cos, sin)
        x = self.model.norm(x)
        return F.linear(x, self.model.embed_tokens.weight)  # tied lm_head


def lm_loss(logits, ids):
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), ids[:, 1:].reshape(-1))


# ---------------------------------------------------------------- data
class Data:
    def __init__(self, streams, seq, device, seed):
        self.s = {d: torch.tensor(v, dtype=torch.long, device=device) for d, v in streams.items()}
        self.seq, self.dev = seq, device
        self.g = torch.Generator(device="cpu"); self.g.manual_seed(seed)

    def _win(self, d, n, frac=1.0):
        s = self.s[d]
        hi = max(self.seq + 2, int(s.numel() * frac))  # frac < 1: only the stream's first part
        off = torch.randint(0, min(s.numel(), hi) - self.seq - 1, (n,), generator=self.g)
        idx = off.to(self.dev).unsqueeze(1) + torch.arange(self.seq, device=self.dev)
        return s[idx]

    def batch_domain(self, d, n):
        return self._win(d, n)

    def batch_mixed(self, n):
        """Equal share of each domain; returns ids [n,T], labels [n,T] (domain index per token)."""
        per = [n // len(DOMAINS) + (1 if i < n % len(DOMAINS) else 0) for i in range(len(DOMAINS))]
        ids = torch.cat([self._win(d, k) for d, k in zip(DOMAINS, per)], 0)
        lab = torch.cat([torch.full((k, self.seq), i, dtype=torch.long, device=self.dev) for i, k in enumerate(per)], 0)
        return ids, lab

    def batch_base(self, n, mix, frac):
        """The base model's diet: domain shares from mix (name -> weight), and for each domain
        only the first frac[d] of its stream, so the base knows prose well and code a little,
        leaving the adapters something to teach."""
        tot = sum(mix.values())
        per = [int(round(n * mix.get(d, 0) / tot)) for d in DOMAINS]
        per[DOMAINS.index(max(mix, key=mix.get))] += n - sum(per)
        return torch.cat([self._win(d, k, frac.get(d, 1.0)) for d, k in zip(DOMAINS, per) if k > 0], 0)

    def batch_router(self, n, frac_switch=0.5):
        """Single-domain windows plus sequences that switch domain at a random point."""
        ids, lab = self.batch_mixed(n)
        ns = int(n * frac_switch)
        if ns:
            perm = torch.randperm(n, generator=self.g)[:ns]
            other = torch.randint(0, len(DOMAINS), (ns,), generator=self.g)
            cut = torch.randint(self.seq // 4, 3 * self.seq // 4, (ns,), generator=self.g)
            for j in range(ns):
                i, d2, c = int(perm[j]), int(other[j]), int(cut[j])
                w = self._win(DOMAINS[d2], 1)[0]
                ids[i, c:] = w[: self.seq - c]
                lab[i, c:] = d2
        return ids, lab


# ---------------------------------------------------------------- training helpers
def cosine(step, total, warm, peak, floor=0.1):
    if step < warm:
        return peak * (step + 1) / warm
    p = min(1.0, (step - warm) / max(1, total - warm))
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * p)))


def make_opt(params, lr, wd, device):
    kw = dict(lr=lr, betas=(0.9, 0.95), weight_decay=wd)
    if device.type == "cuda":
        try:
            return torch.optim.AdamW(params, fused=True, **kw)
        except (TypeError, RuntimeError):
            pass
    return torch.optim.AdamW(params, **kw)


def autocast(device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    # LORAPLEX_CPU_AUTOCAST=1 exercises the bf16 autocast code paths in CPU smoke tests
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=os.environ.get("LORAPLEX_CPU_AUTOCAST") == "1")


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def run_loop(name, steps, step_fn, budget_s, device, calib=20, log_every=50):
    """Runs step_fn(step, total) for `steps` steps; steps == 0 means calibrate: time `calib`
    steps (after 3 warm-up steps) and fix the total so the loop takes about budget_s."""
    losses = []
    t0 = time.time()
    total = steps
    if total == 0:
        prov = 10 ** 9
        for s in range(3):
            losses.append(step_fn(s, prov, est=True))
        sync(device)
        t1 = time.time()
        for s in range(3, 3 + calib):
            losses.append(step_fn(s, prov, est=True))
        sync(device)
        per = (time.time() - t1) / calib
        total = max(3 + calib + 10, int((budget_s - (time.time() - t0)) / per) + 3 + calib)
        log(f"{name}: {per*1000:.1f} ms/step -> {total} steps (rerun with this count for identical weights)")
        start = 3 + calib
    else:
        start = 0
    for s in range(start, total):
        l = step_fn(s, total)
        losses.append(l)
        if s % log_every == 0 or s == total - 1:
            lv = float(l)
            log(f"{name} step {s}/{total} loss {lv:.4f}")
    sync(device)
    dt = time.time() - t0
    curve = [float(x) for x in losses]
    return total, dt, curve


# ---------------------------------------------------------------- export
def hf_config(c):
    return {
        "architectures": ["LlamaForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": 0,
        "eos_token_id": [1, 3],
        "head_dim": c.head_dim,
        "hidden_act": "silu",
        "hidden_size": c.hidden_size,
        "initializer_range": 0.02,
        "intermediate_size": c.intermediate_size,
        "max_position_embeddings": c.max_position_embeddings,
        "mlp_bias": False,
        "model_type": "llama",
        "num_attention_heads": c.num_attention_heads,
        "num_hidden_layers": c.num_hidden_layers,
        "num_key_value_heads": c.num_key_value_heads,
        "pretraining_tp": 1,
        "rms_norm_eps": c.rms_norm_eps,
        "rope_scaling": None,
        "rope_theta": c.rope_theta,
        "tie_word_embeddings": True,
        "torch_dtype": "bfloat16",
        "use_cache": True,
        "vocab_size": c.vocab_size,
    }


def save_base(model, d, tok_json, cfg):
    os.makedirs(d, exist_ok=True)
    sd = {k: v.to(torch.bfloat16) for k, v in model.state_dict().items()}
    st_save(os.path.join(d, "model.safetensors"), sd)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(hf_config(cfg), f, indent=2)
    with open(os.path.join(d, "generation_config.json"), "w") as f:
        json.dump({"bos_token_id": 0, "eos_token_id": [1, 3], "do_sample": True, "temperature": 0.8,
                   "top_p": 0.95, "max_length": cfg.max_position_embeddings}, f, indent=2)
    with open(os.path.join(d, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(tok_json, f, ensure_ascii=False)
    atd = {str(i): {"content": s, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
                    "special": True} for i, s in enumerate(SPECIALS)}
    with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
        json.dump({"added_tokens_decoder": atd, "bos_token": SPECIALS[0], "eos_token": SPECIALS[3],
                   "pad_token": SPECIALS[1], "unk_token": None, "add_bos_token": False, "add_eos_token": False,
                   "clean_up_tokenization_spaces": False, "model_max_length": cfg.max_position_embeddings,
                   "tokenizer_class": "PreTrainedTokenizerFast", "chat_template": CHAT_TEMPLATE}, f, indent=2)


def load_base_into(model, d):
    sd = st_load(os.path.join(d, "model.safetensors"))
    model.load_state_dict({k: v.float() for k, v in sd.items()})


def adapter_config(r, alpha):
    return {
        "alpha_pattern": {}, "auto_mapping": None, "base_model_name_or_path": "loraplex-demo-base",
        "bias": "none", "fan_in_fan_out": False, "inference_mode": True, "init_lora_weights": True,
        "layer_replication": None, "layers_pattern": None, "layers_to_transform": None, "loftq_config": {},
        "lora_alpha": alpha, "lora_bias": False, "lora_dropout": 0.0, "megatron_config": None,
        "megatron_core": "megatron.core", "modules_to_save": None, "peft_type": "LORA", "r": r,
        "rank_pattern": {}, "revision": None,
        "target_modules": sorted(p for _, p in PROJS),
        "task_type": "CAUSAL_LM", "use_dora": False, "use_rslora": False,
    }


def save_adapter(model, e, d, r, alpha):
    os.makedirs(d, exist_ok=True)
    t = {}
    for L, mod, proj, lin in model.lins():
        pre = f"base_model.model.model.layers.{L}.{mod}.{proj}"
        t[pre + ".lora_A.weight"] = lin.A[e].detach().to(torch.bfloat16)
        t[pre + ".lora_B.weight"] = lin.B[e].detach().to(torch.bfloat16)
    st_save(os.path.join(d, "adapter_model.safetensors"), t)
    with open(os.path.join(d, "adapter_config.json"), "w") as f:
        json.dump(adapter_config(r, alpha), f, indent=2, sort_keys=True)


def load_adapter_into(model, e, d, alpha, device):
    t = st_load(os.path.join(d, "adapter_model.safetensors"))
    for L, mod, proj, lin in model.lins():
        pre = f"base_model.model.model.layers.{L}.{mod}.{proj}"
        lin.A[e] = t[pre + ".lora_A.weight"].float().to(device)
        lin.B[e] = t[pre + ".lora_B.weight"].float().to(device)
        lin.scale[e] = alpha / lin.A[e].shape[0]


def save_router(model, d, top_k, temp):
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "router.json"), "w") as f:
        json.dump({"format": "loraplex.router/v1", "experts": DOMAINS, "top_k": top_k,
                   "temperature": temp, "null_experts": 0}, f, indent=2)
    t = {f"model.layers.{L}.{mod}.{proj}.moe_gate.weight": lin.gate.detach().float()
         for L, mod, proj, lin in model.lins()}
    st_save(os.path.join(d, "gates.safetensors"), t)


def load_router_into(model, d, device):
    t = st_load(os.path.join(d, "gates.safetensors"))
    for L, mod, proj, lin in model.lins():
        lin.gate = t[f"model.layers.{L}.{mod}.{proj}.moe_gate.weight"].float().to(device)


# ---------------------------------------------------------------- eval
@torch.no_grad()
def perplexity(model, ids, seq, device, bs=32):
    """Non-overlapping `seq`-token windows of ids; next-token NLL over positions 1..seq-1 of each
    window (no BOS). fp32 compute."""
    n = len(ids) // seq
    x = torch.tensor(ids[: n * seq], dtype=torch.long, device=device).view(n, seq)
    tot, cnt = 0.0, 0
    for i in range(0, n, bs):
        b = x[i:i + bs]
        Routing.gate_logits = []
        lg = model(b).float()
        tot += F.cross_entropy(lg[:, :-1].reshape(-1, lg.shape[-1]), b[:, 1:].reshape(-1), reduction="sum").item()
        cnt += b[:, 1:].numel()
    Routing.gate_logits = []
    return math.exp(tot / cnt), cnt


@torch.no_grad()
def gate_accuracy(model, ids, label, seq, device, bs=32):
    n = len(ids) // seq
    x = torch.tensor(ids[: n * seq], dtype=torch.long, device=device).view(n, seq)
    hit, cnt = 0, 0
    for i in range(0, n, bs):
        Routing.gate_logits = []
        model(x[i:i + bs])
        for l in Routing.gate_logits:
            hit += (l.argmax(-1) == label).sum().item(); cnt += l[..., 0].numel()
    Routing.gate_logits = []
    return hit / max(1, cnt)


PROMPTS = {"go": "package main\n\nimport (\n", "python": "import os\n\n\ndef ",
           "c": "#include <stdio.h>\n\nint main(", "english": "The system administrator "}


@torch.no_grad()
def sample(model, tok, prompt, n, device, seed):
    g = torch.Generator(device="cpu"); g.manual_seed(seed)
    ids = tok.encode(prompt)
    for _ in range(n):
        Routing.gate_logits = []
        lg = model(torch.tensor([ids[-255:]], device=device))[0, -1].float().cpu()
        v, i = torch.topk(lg, 20)
        ids.append(int(i[torch.multinomial(torch.softmax(v / 0.8, -1), 1, generator=g)]))
    Routing.gate_logits = []
    return tok.decode(ids)


# ---------------------------------------------------------------- HF / peft verification
def verify_hf(model, out, adapters_dir, device, alpha, report):
    try:
        import transformers
        from transformers import LlamaForCausalLM
    except Exception as ex:  # noqa
        log(f"transformers not importable ({type(ex).__name__}): HF verification SKIPPED")
        report["hf_verification"] = "skipped: transformers not importable"
        return
    g = torch.Generator(device="cpu"); g.manual_seed(1234)
    ids = torch.randint(4, model.c.vocab_size, (2, 64), generator=g).to(device)
    try:
        hf = LlamaForCausalLM.from_pretrained(os.path.join(out, "model"), dtype=torch.float32)
    except TypeError:
        hf = LlamaForCausalLM.from_pretrained(os.path.join(out, "model"), torch_dtype=torch.float32)
    hf = hf.to(device).eval()
    res = {"transformers": transformers.__version__}
    with torch.no_grad():
        Routing.mode = None
        ours = model(ids).float()
        theirs = hf(ids).logits.float()
    d = (ours - theirs).abs().max().item()
    res["base_max_abs_diff"] = d
    log(f"HF LlamaForCausalLM vs ours (fp32 compute, bf16 weights): max |dlogits| = {d:.2e}")
    assert d < 2e-2, f"HF logits differ: {d}"
    try:
        import peft
        from peft import PeftModel
    except Exception as ex:  # noqa
        log(f"peft not importable ({type(ex).__name__}): PEFT verification SKIPPED")
        res["peft"] = "skipped: peft not importable"
        report["hf_verification"] = res
        return
    res["peft"] = peft.__version__
    pm = None
    for e, dom in enumerate(DOMAINS):
        p = os.path.join(adapters_dir, dom)
        if pm is None:
            pm = PeftModel.from_pretrained(hf, p, adapter_name=dom)
        else:
            pm.load_adapter(p, adapter_name=dom)
        pm.set_adapter(dom)
        pm = pm.to(device).eval()
        with torch.no_grad():
            Routing.mode = ("adapter", e)
            ours = model(ids).float()
            Routing.mode = None
            theirs = pm(input_ids=ids).logits.float()
        d = (ours - theirs).abs().max().item()
        res[f"adapter_{dom}_max_abs_diff"] = d
        log(f"peft {dom} vs ours: max |dlogits| = {d:.2e}")
        assert d < 2e-2, f"peft logits differ for {dom}: {d}"
    report["hf_verification"] = res


# ---------------------------------------------------------------- main
def main():
    global LOG
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes and steps, CPU friendly")
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--hidden", type=int, default=320)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--inter", type=int, default=640)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--base-steps", type=int, default=0, help="0: as many as fit --base-seconds")
    ap.add_argument("--base-seconds", type=float, default=90)
    ap.add_argument("--base-lr", type=float, default=2e-3)
    ap.add_argument("--base-mix", default="english=0.55,go=0.15,python=0.15,c=0.15",
                    help="domain shares of the base model's training batches")
    ap.add_argument("--base-code-frac", type=float, default=0.1,
                    help="fraction of each code domain's stream the base model may see (the adapters see all)")
    ap.add_argument("--lora-steps", type=int, default=600)
    ap.add_argument("--lora-batch", type=int, default=64)
    ap.add_argument("--lora-lr", type=float, default=2e-3)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--alpha", type=int, default=16)
    ap.add_argument("--router-steps", type=int, default=300)
    ap.add_argument("--router-batch", type=int, default=64)
    ap.add_argument("--router-lr", type=float, default=5e-3)
    ap.add_argument("--gate-loss-weight", type=float, default=1.0)
    ap.add_argument("--top-k", type=int, default=2)
    ap.add_argument("--eval-bytes", type=int, default=36000, help="held-out text per domain written to eval/")
    ap.add_argument("--compile", action="store_true", help="torch.compile the base model for pre-training")
    args = ap.parse_args()
    if args.smoke:
        args.hidden, args.layers, args.heads, args.kv_heads, args.inter = 64, 2, 4, 2, 128
        args.seq, args.batch, args.lora_batch, args.router_batch = 64, 16, 8, 8
        args.base_steps = args.base_steps or 30
        args.lora_steps, args.router_steps = 15, 15
        args.vocab = min(args.vocab, 600)
        args.eval_bytes = 6000

    out = args.out
    for sub in ["model", "adapters", "router", "eval"]:
        shutil.rmtree(os.path.join(out, sub), ignore_errors=True)
    os.makedirs(os.path.join(out, "eval"), exist_ok=True)
    LOG = open(os.path.join(out, "train.log"), "w")
    random.seed(args.seed); torch.manual_seed(args.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    log(f"torch {torch.__version__} device {device}" + (f" ({torch.cuda.get_device_name()})" if device.type == "cuda" else ""))
    log("args", json.dumps(vars(args)))
    report = {"args": vars(args), "torch": torch.__version__, "device": str(device), "timings_s": {}, "losses": {}}
    timings = report["timings_s"]

    # ---- corpus
    t = time.time()
    train_text, eval_text = {}, {}
    for d in DOMAINS:
        with open(os.path.join(args.corpus, d, "train.txt"), encoding="utf-8") as f:
            train_text[d] = f.read()
        with open(os.path.join(args.corpus, d, "eval.txt"), encoding="utf-8") as f:
            ev = f.read()
        if len(ev.encode()) > args.eval_bytes:  # cut at a line boundary under the byte limit
            b = ev.encode()[: args.eval_bytes]
            ev = b[: b.rfind(b"\n") + 1].decode("utf-8", "ignore")
        eval_text[d] = ev
        with open(os.path.join(out, "eval", d + ".txt"), "w", encoding="utf-8") as f:
            f.write(ev)
    if args.smoke:
        for d in DOMAINS:
            train_text[d] = train_text[d][:200000]
    log("corpus chars:", {d: len(v) for d, v in train_text.items()})

    # ---- tokenizer (trained on the train splits only)
    tokfiles = [os.path.join(args.corpus, d, "train.txt") for d in DOMAINS]
    if args.smoke:
        os.makedirs(os.path.join(out, "tmp"), exist_ok=True)
        tokfiles = []
        for d in DOMAINS:
            p = os.path.join(out, "tmp", d + ".txt"); tokfiles.append(p)
            with open(p, "w", encoding="utf-8") as f:
                f.write(train_text[d])
    tok, tok_json = train_tokenizer(tokfiles, args.vocab, args.smoke)
    V = tok.vocab_size
    timings["tokenizer_train"] = time.time() - t
    log(f"tokenizer: vocab {V}")
    t = time.time()
    streams = {}
    for d in DOMAINS:
        lines = train_text[d].split("\n")
        chunks = ["\n".join(lines[i:i + 200]) + "\n" for i in range(0, len(lines), 200)]
        ids = []
        for c in tok.encode_batch(chunks):
            ids.extend(c)
        streams[d] = ids
    eval_ids = {d: tok.encode(eval_text[d]) for d in DOMAINS}
    timings["tokenize"] = time.time() - t
    report["tokens"] = {d: {"train": len(streams[d]), "eval": len(eval_ids[d]),
                            "train_bytes_per_token": len(train_text[d].encode()) / max(1, len(streams[d]))} for d in DOMAINS}
    log("tokens:", json.dumps(report["tokens"]))

    # ---- base model
    hd = args.hidden // args.heads
    cfg = Cfg(vocab_size=V, hidden_size=args.hidden, num_hidden_layers=args.layers, num_attention_heads=args.heads,
              num_key_value_heads=args.kv_heads, head_dim=hd, intermediate_size=args.inter, rms_norm_eps=1e-5,
              rope_theta=10000.0, max_position_embeddings=2048)
    torch.manual_seed(args.seed)
    model = Llama(cfg).to(device)
    nparam = sum(p.numel() for p in model.parameters())
    report["params"] = {"base": nparam}
    log(f"base model: {nparam/1e6:.2f} M params, config {json.dumps(hf_config(cfg))}")
    data = Data(streams, args.seq, device, args.seed)
    base_mix = {kv.split("=")[0]: float(kv.split("=")[1]) for kv in args.base_mix.split(",")}
    base_frac = {d: (1.0 if d == "english" else args.base_code_frac) for d in DOMAINS}
    report["base_diet"] = {"mix": base_mix, "stream_fraction": base_frac}
    fwd = model
    if args.compile and hasattr(torch, "compile") and device.type == "cuda":
        fwd = torch.compile(model)
    opt = make_opt([p for p in model.parameters() if p.dim() >= 2], args.base_lr, 0.1, device)
    opt.add_param_group({"params": [p for p in model.parameters() if p.dim() < 2], "weight_decay": 0.0})
    for g in opt.param_groups:
        g["lr"] = args.base_lr

    def base_step(s, total, est=False):
        lr = cosine(s, total if not est else 10 ** 9, 100 if not args.smoke else 5, args.base_lr)
        for g in opt.param_groups:
            g["lr"] = lr
        ids = data.batch_base(args.batch, base_mix, base_frac)
        with autocast(device):
            loss = lm_loss(fwd(ids), ids)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return loss.detach()

    Routing.mode = None
    t = time.time()
    n, dt, curve = run_loop("base", args.base_steps, base_step, args.base_seconds, device, log_every=100)
    timings["base_train"] = dt
    report["base_steps"] = n
    report["losses"]["base"] = curve[:: max(1, len(curve) // 200)] + [curve[-1]]
    log(f"base: {n} steps in {dt:.1f}s, final loss {curve[-1]:.4f}, "
        f"{n*args.batch*args.seq/dt/1e6:.2f} M tok/s")
    del opt
    save_base(model, os.path.join(out, "model"), tok_json, cfg)
    load_base_into(model, os.path.join(out, "model"))  # continue with the bf16-rounded weights
    for p in model.parameters():
        p.requires_grad_(False)

    # ---- adapters
    r, alpha = args.rank, args.alpha
    for e, dom in enumerate(DOMAINS):
        torch.manual_seed(args.seed + 100 + e)
        params = []
        for L, mod, proj, lin in model.lins():
            A = torch.empty(r, lin.din, device=device)
            nn.init.kaiming_uniform_(A, a=math.sqrt(5))
            B = torch.zeros(lin.dout, r, device=device)
            A.requires_grad_(True); B.requires_grad_(True)
            lin.A[e], lin.B[e], lin.scale[e] = A, B, alpha / r
            params += [A, B]
        opt = make_opt(params, args.lora_lr, 0.0, device)
        Routing.mode = ("adapter", e)

        def lora_step(s, total, est=False, dom=dom, opt=opt, params=params):
            for g in opt.param_groups:
                g["lr"] = cosine(s, total, 20 if not args.smoke else 2, args.lora_lr, floor=0.0)
            ids = data.batch_domain(dom, args.lora_batch)
            with autocast(device):
                loss = lm_loss(model(ids), ids)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            return loss.detach()

        n, dt, curve = run_loop(f"lora[{dom}]", args.lora_steps, lora_step, 0, device, log_every=100)
        timings[f"lora_{dom}"] = dt
        report["losses"][f"lora_{dom}"] = curve[:: max(1, len(curve) // 100)] + [curve[-1]]
        for p in params:
            p.requires_grad_(False)
        save_adapter(model, e, os.path.join(out, "adapters", dom), r, alpha)
        load_adapter_into(model, e, os.path.join(out, "adapters", dom), alpha, device)
        log(f"lora[{dom}]: {n} steps in {dt:.1f}s, final loss {curve[-1]:.4f}")
        del opt
    report["params"]["adapter"] = sum(lin.A[0].numel() + lin.B[0].numel() for _, _, _, lin in model.lins())

    # ---- router (MeteoRA gate loss + LM loss; base and adapters frozen)
    torch.manual_seed(args.seed + 200)
    gparams = []
    for L, mod, proj, lin in model.lins():
        g = torch.empty(len(DOMAINS), lin.din, device=device)
        nn.init.normal_(g, 0.0, 0.02)
        g.requires_grad_(True)
        lin.gate = g
        gparams.append(g)
    report["params"]["router_gates"] = sum(g.numel() for g in gparams)
    Routing.top_k, Routing.temperature = args.top_k, 1.0
    opt = make_opt(gparams, args.router_lr, 0.0, device)
    Routing.mode = ("router",)
    gl_curve = []

    def router_step(s, total, est=False):
        for g in opt.param_groups:
            g["lr"] = cosine(s, total, 20 if not args.smoke else 2, args.router_lr, floor=0.0)
        ids, lab = data.batch_router(args.router_batch)
        Routing.gate_logits = []
        with autocast(device):
            logits = model(ids)
            lml = lm_loss(logits, ids)
        gl = sum(F.cross_entropy(l.reshape(-1, l.shape[-1]).float(), lab.reshape(-1)) for l in Routing.gate_logits)
        gl = gl / len(Routing.gate_logits)
        Routing.gate_logits = []
        loss = lml + args.gate_loss_weight * gl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        gl_curve.append(gl.detach())
        return lml.detach()

    n, dt, curve = run_loop("router", args.router_steps, router_step, 0, device, log_every=50)
    timings["router_train"] = dt
    report["losses"]["router_lm"] = curve[:: max(1, len(curve) // 100)] + [curve[-1]]
    glc = [float(x) for x in gl_curve]
    report["losses"]["router_gate"] = glc[:: max(1, len(glc) // 100)] + [glc[-1]]
    log(f"router: {n} steps in {dt:.1f}s, final lm loss {curve[-1]:.4f} gate loss {glc[-1]:.4f}")
    for g in gparams:
        g.requires_grad_(False)
    save_router(model, os.path.join(out, "router"), args.top_k, 1.0)
    load_router_into(model, os.path.join(out, "router"), device)
    del opt

    # ---- eval (fp32 compute, bf16-rounded saved weights, F32 gates; no TF32)
    t = time.time()
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    model.eval()
    ppl = {"base": {}, "router": {}}
    for dom in DOMAINS:
        ppl[f"adapter_{dom}"] = {}
    toks = {}
    for dom in DOMAINS:
        Routing.mode = None
        ppl["base"][dom], toks[dom] = perplexity(model, eval_ids[dom], args.seq, device)
        for e, ad in enumerate(DOMAINS):
            Routing.mode = ("adapter", e)
            ppl[f"adapter_{ad}"][dom], _ = perplexity(model, eval_ids[dom], args.seq, device)
        Routing.mode = ("router",)
        ppl["router"][dom], _ = perplexity(model, eval_ids[dom], args.seq, device)
    Routing.mode = ("router",)
    acc = {dom: gate_accuracy(model, eval_ids[dom], e, args.seq, device) for e, dom in enumerate(DOMAINS)}
    timings["eval"] = time.time() - t
    report["perplexity"] = ppl
    report["eval_tokens_scored"] = toks
    report["router_gate_top1_accuracy"] = acc
    report["router_vs_matching_adapter"] = {d: ppl["router"][d] / ppl[f"adapter_{d}"][d] for d in DOMAINS}
    report["eval_protocol"] = (f"eval/<domain>.txt encoded whole with tokenizer.json (no special tokens); "
                               f"non-overlapping {args.seq}-token windows (the tail shorter than a window dropped); "
                               f"next-token NLL at positions 1..{args.seq-1} of each window, no BOS; fp32 compute with "
                               f"the saved bf16 weights; ppl = exp(mean NLL)")
    hdr = "%-16s" % "ppl" + "".join("%10s" % d for d in DOMAINS)
    log(hdr)
    for k in ["base"] + [f"adapter_{d}" for d in DOMAINS] + ["router"]:
        log("%-16s" % k + "".join("%10.3f" % ppl[k][d] for d in DOMAINS))
    log("router gate top-1 accuracy:", json.dumps({d: round(a, 4) for d, a in acc.items()}))

    # ---- samples (top-20, T 0.8, fixed seed): base, matching adapter, router
    samples = {}
    for e, dom in enumerate(DOMAINS):
        for name, mode in [("base", None), ("adapter", ("adapter", e)), ("router", ("router",))]:
            Routing.mode = mode
            samples.setdefault(dom, {})[name] = sample(model, tok, PROMPTS[dom], 80 if not args.smoke else 10,
                                                       device, args.seed)
            log(f"sample {dom}/{name}: {samples[dom][name]!r}")
    report["samples"] = samples
    Routing.mode = None

    # ---- HF / peft verification
    t = time.time()
    Routing.mode = None
    verify_failed = None
    try:
        verify_hf(model, out, os.path.join(out, "adapters"), device, alpha, report)
    except Exception as ex:  # noqa: record, write the report, then fail
        import traceback
        verify_failed = repr(ex)
        log("VERIFICATION FAILED:", traceback.format_exc())
        report["hf_verification_error"] = verify_failed
    finally:
        Routing.mode = None
    timings["verify"] = time.time() - t

    # ---- sizes
    sizes = {}
    for root, _, files in os.walk(out):
        for f in files:
            p = os.path.join(root, f)
            rel = os.path.relpath(p, out)
            if rel.split(os.sep)[0] in ("model", "adapters", "router", "eval"):
                sizes[rel] = os.path.getsize(p)
    bundle = sum(v for k, v in sizes.items() if k.split(os.sep)[0] in ("model", "adapters", "router"))
    report["file_sizes"] = dict(sorted(sizes.items()))
    report["model_adapters_router_total_bytes"] = bundle
    timings["total"] = time.time() - T0
    log(f"model + adapters + router on disk: {bundle/1e6:.2f} MB; total time {timings['total']:.1f}s")
    shutil.rmtree(os.path.join(out, "tmp"), ignore_errors=True)
    with open(os.path.join(out, "report.json"), "w") as f:
        json.dump(report, f, indent=1)
    if verify_failed:
        sys.exit(f"transformers/peft verification failed: {verify_failed}")
    if not args.smoke:
        assert bundle <= 20 * 1024 * 1024, f"bundle {bundle} bytes exceeds 20 MiB"


if __name__ == "__main__":
    main()
