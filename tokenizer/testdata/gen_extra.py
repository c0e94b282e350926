#!/usr/bin/env python3
"""Extra HF `tokenizers` goldens for the Go tokenizer tests: random and adversarial
texts, random id sequences for decoding, and added tokens with lstrip / rstrip /
single_word / normalized flags. Run where `tokenizers` is installed:
    python3 tokenizer/testdata/gen_extra.py OUTDIR
Writes OUTDIR/<name>.json.gz; copy them to tokenizer/testdata/extra/.
"""
import gzip, json, os, random, sys

from tokenizers import AddedToken, Tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOKDIR = os.path.join(ROOT, "testdata", "tokenizers")
OUT = sys.argv[1]

POOLS = [
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ",
    "0123456789", " ", "  ", "\t", "\n", "\r\n", "\u00a0", "\u3000", "\u2028", "\u200b", "\ufeff",
    ".,;:!?'\"()[]{}<>|/\\-_=+*&^%$#@~`", "'s", "'S", "'ll", "'LL", "'re", "'Ve", "'d", "'M",
    "é", "e\u0301", "n\u0303", "Å", "A\u030a", "ß", "ǅ", "İ", "ﬁ", "①", "½", "²",
    "中文", "日本語", "한국어", "ภาษาไทย", "العربية", "עברית", "Ελληνικά", "Русский", "हिन्दी",
    "😀", "👍🏽", "👨\u200d👩\u200d👧", "🇺🇸", "❤️", "𝔘𝔫𝔦", "𐍈", "\U0010fffd",
    "▁", "Ġ", "<0x41>", "<unk>", "<s>", "</s>", "<|begin_of_text|>", "<|eot_id|>",
    "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<tool_call>", "<|im_", "<s", "|>",
    " foo", "foo", "foobar", "barfoo", " bar ", "Hello", "hello", "HELLO",
]


# Fixed edge cases: case-folding in (?i:'s...), Unicode whitespace and
# letters/numbers whose class depends on the Unicode version of the regex
# engine (15.1 CJK Ext I, 16.0 scripts), combining marks, long runs.
EDGE = [
    "'\u017f 'ſ 'K 'İ 'Ｓ 'ＬＬ", "it'\u017f", "A'\u212a", "x\u0085y\u0085", "a\u180eb", "a\u2029b\u2028",
    "a\u000bb\u000cc\u001cd\u001fe", "x\U0002ebf0y", "x\U00010d50y", "x\U00016d43y", "x\U00011bc0y", "x\U0001e5d0y",
    "1\U00016d70 2", "x\U00031350y", "Ⅻ ½² ①⑩ 𝟘𝟙 ١٢٣ ۱۲۳ ߁", "̀a ̀ ̀̀x", "ǅǈ ᾈ ﬀ", "\u2066x\u2069",
    " " * 40 + "x", "\t" * 17 + "\n" * 3 + " " * 5, "a\r\r\n\n \r b", "!" * 50 + "\n\n",
    "<|begin_of_text|><|begin_of_text|>", "<s><s></s>", " <s> ", "<|im_start|><|im_end|>",
]


def rand_text(rng):
    n = rng.choice([0, 1, 2, 3, 5, 8, 13, 21, 34])
    return "".join(rng.choice(POOLS) for _ in range(n))


def cases_for(tok, rng, vocab_size):
    texts = [rand_text(rng) for _ in range(600)]
    long = "".join(rng.choice(POOLS) for _ in range(1500))
    texts += [long, long.replace("<", "("), "a" * 3000, " " * 500, "\n" * 300 + "x"] + EDGE
    enc = []
    for t in texts:
        enc.append({"text": t,
                    "ids_special": tok.encode(t, add_special_tokens=True).ids,
                    "ids_plain": tok.encode(t, add_special_tokens=False).ids})
    # Decoding of arbitrary id sequences: byte tokens that do not form valid
    # UTF-8, special tokens, leading spaces for Strip, and so on.
    vocab = tok.get_vocab()
    bytey = [i for s, i in vocab.items() if s.startswith("<0x") or len(s) == 1]
    special = [i for s, i in vocab.items() if s.startswith("<") and s.endswith(">")]
    dec = []
    for _ in range(600):
        n = rng.randint(1, 12)
        ids = []
        for _ in range(n):
            r = rng.random()
            pool = bytey if r < 0.5 else (special if r < 0.6 else None)
            ids.append(rng.choice(pool) if pool else rng.randrange(vocab_size))
        dec.append({"ids": ids, "decoded": tok.decode(ids, skip_special_tokens=False),
                    "decoded_skip": tok.decode(ids, skip_special_tokens=True)})
    return enc, dec


def main():
    os.makedirs(OUT, exist_ok=True)
    for name in sorted(os.listdir(TOKDIR)):
        path = os.path.join(TOKDIR, name, "tokenizer.json.gz")
        if not os.path.exists(path):
            continue
        src = gzip.open(path, "rt", encoding="utf-8").read()
        rng = random.Random(name)
        tok = Tokenizer.from_str(src)
        enc, dec = cases_for(tok, rng, tok.get_vocab_size())
        # Same tokenizer plus added tokens exercising every flag.
        tok2 = Tokenizer.from_str(src)
        tok2.add_tokens([
            AddedToken("foo", single_word=True),
            AddedToken("bar", lstrip=True, rstrip=True),
            AddedToken("Hello", normalized=True),
            AddedToken("HELLO", normalized=False),
            AddedToken(" baz", normalized=True),
        ])
        tok2.add_special_tokens([AddedToken("<|special_x|>", lstrip=True)])
        enc2, dec2 = cases_for(tok2, rng, tok2.get_vocab_size())
        out = {"tokenizers_version": __import__("tokenizers").__version__,
               "encode": enc, "decode": dec,
               "flags_added_tokens": json.loads(tok2.to_str())["added_tokens"],
               "flags_encode": enc2, "flags_decode": dec2}
        with gzip.open(os.path.join(OUT, name + ".json.gz"), "wt", encoding="utf-8") as f:
            json.dump(out, f, ensure_ascii=False)
        print(name, len(enc), len(dec), file=sys.stderr)


if __name__ == "__main__":
    main()
