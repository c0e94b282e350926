// Package tokenizer reproduces Hugging Face `tokenizers` (the Rust library
// behind transformers' fast tokenizers) for tokenizer.json files: the same
// ids from Encode and the same strings from Decode, byte for byte. It is
// checked against HF tokenizers 0.23.2 goldens for Llama 3, Qwen 3 and a
// Llama 2 style SentencePiece BPE, plus variants of them (see *_test.go and
// testdata/gen_*.py).
//
// Encode follows HF's pipeline: added tokens are cut out of the raw text
// first (leftmost-longest, with lstrip/rstrip/single_word; normalized ones
// after normalization), each remaining stretch is normalized on its own,
// pre-tokenized, and BPE-encoded word by word; the post-processor runs only
// with addSpecialTokens.
//
// Supported components (anything else is an error at load, never ignored):
//   - model: BPE (merges as "a b" strings or ["a","b"] pairs, byte_fallback,
//     unk_token with fuse_unk, ignore_merges, continuing_subword_prefix,
//     end_of_word_suffix; dropout must be null or 0)
//   - normalizers: Sequence, NFC, NFD, NFKC, NFKD, Lowercase, Strip,
//     Prepend, Replace (string or regex)
//   - pre-tokenizers: Sequence, Split (string or regex, every behaviour,
//     invert), ByteLevel (with or without the GPT-2 regex), Metaspace
//   - post-processors: TemplateProcessing (single), BertProcessing,
//     RobertaProcessing, ByteLevel, Sequence
//   - decoders: Sequence, ByteLevel, ByteFallback, Fuse, Strip, Replace,
//     Metaspace, and none (tokens joined by spaces, as HF does)
//
// Regexes run on github.com/dlclark/regexp2 (HF uses Oniguruma; both
// support the look-ahead the Llama 3 / Qwen patterns need). Those two
// patterns, by far the most common, are matched by a hand-written scanner
// that is tested and fuzzed against regexp2. Character classes use Go's
// Unicode tables (15.0); HF may classify characters added in later Unicode
// versions differently.
//
// Deliberate differences from HF: Decode returns an error for unknown ids
// (HF drops them); Encode rejects invalid UTF-8 (HF only ever gets valid
// strings); the "truncation" and "padding" settings of tokenizer.json are
// ignored, as transformers does (it resets them on every call) - the server
// enforces its own length limits.
package tokenizer
