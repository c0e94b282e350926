#!/usr/bin/env python3
"""HF `tokenizers` goldens for variants of the test tokenizers that exercise
components the three real files do not use (Metaspace, Lowercase, NFKC/NFD,
Strip, regex Replace, Split behaviours and invert, GPT-2 ByteLevel regex,
TemplateProcessing/Bert post-processors, no decoder, unk without fusing...).
    python3 tokenizer/testdata/gen_variants.py OUTDIR   (needs `tokenizers`)
Writes OUTDIR/variants.json.gz; copy it to tokenizer/testdata/.
Each variant = base tokenizer + "patch" (top-level keys; "model.x" patches a
model field), applied the same way by the Go test.
"""
import gzip, json, os, random, sys

from tokenizers import Tokenizer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.argv, OUT = sys.argv[:1] + ["/dev/null"], sys.argv[1]
import gen_extra  # noqa: E402  (POOLS, EDGE, rand_text)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOKDIR = os.path.join(ROOT, "testdata", "tokenizers")

MS = "\u2581"
BL = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}
VARIANTS = [
    ("llama2_metaspace_first", "llama2", {
        "normalizer": None,
        "pre_tokenizer": {"type": "Metaspace", "replacement": MS, "prepend_scheme": "first", "split": False},
        "decoder": {"type": "Metaspace", "replacement": MS, "prepend_scheme": "first", "split": False}}),
    ("llama2_metaspace_always_split", "llama2", {
        "normalizer": None,
        "pre_tokenizer": {"type": "Metaspace", "replacement": MS, "prepend_scheme": "always", "split": True},
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Metaspace", "replacement": MS, "prepend_scheme": "always", "split": True},
            {"type": "ByteFallback"}, {"type": "Fuse"}]}}),
    ("llama2_metaspace_never_strip", "llama2", {
        "normalizer": None,
        "pre_tokenizer": {"type": "Metaspace", "replacement": MS, "prepend_scheme": "never", "split": True},
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "ByteFallback"}, {"type": "Metaspace", "replacement": MS, "prepend_scheme": "never", "split": True},
            {"type": "Fuse"}, {"type": "Strip", "content": " ", "start": 0, "stop": 2}]}}),
    ("llama2_unk_nofuse_bert", "llama2", {
        "model.byte_fallback": False, "model.fuse_unk": False,
        "post_processor": {"type": "BertProcessing", "sep": ["</s>", 2], "cls": ["<s>", 1]},
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": MS}, "content": " "}, {"type": "Strip", "content": " ", "start": 1, "stop": 1}]}}),
    ("llama2_unk_fuse_nodecoder", "llama2", {
        "model.byte_fallback": False, "decoder": None, "post_processor": None}),
    ("qwen3_lower_nfkc_gpt2", "qwen3", {
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "NFKC"}, {"type": "Lowercase"}, {"type": "Strip", "strip_left": True, "strip_right": True}]},
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "post_processor": {"type": "TemplateProcessing",
                           "single": [{"SpecialToken": {"id": "<|im_start|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                                      {"SpecialToken": {"id": "<|im_end|>", "type_id": 0}}],
                           "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
                           "special_tokens": {"<|im_start|>": {"id": "<|im_start|>", "ids": [151644], "tokens": ["<|im_start|>"]},
                                              "<|im_end|>": {"id": "<|im_end|>", "ids": [151645], "tokens": ["<|im_end|>"]}}}}),
    ("qwen3_split_behaviors", "qwen3", {
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"String": " "}, "behavior": "MergedWithPrevious", "invert": False},
            {"type": "Split", "pattern": {"Regex": "\\d"}, "behavior": "Contiguous", "invert": False},
            {"type": "Split", "pattern": {"String": "e"}, "behavior": "MergedWithNext", "invert": False},
            {"type": "Split", "pattern": {"Regex": "[,.!]"}, "behavior": "Removed", "invert": False},
            BL]}}),
    ("qwen3_split_invert", "qwen3", {
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": "\\s+"}, "behavior": "Isolated", "invert": True},
            {"type": "Split", "pattern": {"Regex": "[aeiou]+"}, "behavior": "MergedWithNext", "invert": True},
            {"type": "Split", "pattern": {"String": "l"}, "behavior": "Removed", "invert": True},
            BL]}}),
    ("qwen3_nfd_replace_strip", "qwen3", {
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "NFD"}, {"type": "Replace", "pattern": {"Regex": "\\s+"}, "content": " "},
            {"type": "Prepend", "prepend": "_"}]},
        "decoder": {"type": "Sequence", "decoders": [
            BL, {"type": "Replace", "pattern": {"String": "_"}, "content": "~~"}, {"type": "Strip", "content": "~", "start": 1, "stop": 3}]}}),
    ("llama3_nodecoder_nopost", "llama3", {"decoder": None, "post_processor": None}),
]


def apply_patch(doc, patch):
    doc = json.loads(json.dumps(doc))
    for k, v in patch.items():
        if k.startswith("model."):
            doc["model"][k[6:]] = v
        else:
            doc[k] = v
    return doc


def main():
    bases = {n: json.load(gzip.open(os.path.join(TOKDIR, n, "tokenizer.json.gz"), "rt", encoding="utf-8"))
             for n in ("llama2", "llama3", "qwen3")}
    out = {"tokenizers_version": __import__("tokenizers").__version__, "variants": []}
    for name, base, patch in VARIANTS:
        rng = random.Random(name)
        tok = Tokenizer.from_str(json.dumps(apply_patch(bases[base], patch)))
        texts = [gen_extra.rand_text(rng) for _ in range(250)] + gen_extra.EDGE
        enc = [{"text": t, "ids_special": tok.encode(t, add_special_tokens=True).ids,
                "ids_plain": tok.encode(t, add_special_tokens=False).ids} for t in texts]
        vocab = tok.get_vocab()
        pool = [i for s, i in vocab.items() if s.startswith("<") or len(s) <= 2 or MS in s or "_" in s or "~" in s]
        dec = []
        for _ in range(250):
            ids = [rng.choice(pool) if rng.random() < 0.7 else rng.randrange(tok.get_vocab_size())
                   for _ in range(rng.randint(1, 10))]
            dec.append({"ids": ids, "decoded": tok.decode(ids, skip_special_tokens=False),
                        "decoded_skip": tok.decode(ids, skip_special_tokens=True)})
        out["variants"].append({"name": name, "base": base, "patch": patch, "encode": enc, "decode": dec})
        print(name, file=sys.stderr)
    with gzip.open(os.path.join(OUT, "variants.json.gz"), "wt", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False)


if __name__ == "__main__":
    main()
