// Package codec encodes LoRA factor tensors (lora_A, lora_B) into small byte streams and decodes
// them back on the adapter load path, and defines the lorapack container that holds them.
//
// A stream is a 20-byte header (see Header) followed by a codec-specific payload:
//
//   - dense-bf16: every value rounded to bfloat16 (2 bytes each). Lossless for BF16 adapters.
//   - ternary2:   2 bits per value, {0, +1, -1} x scale, 4 values a byte.
//   - bitmap:     1 bit per value (kept or not), then 1 sign bit per kept value, x scale.
//   - rice:       the gaps between kept indices, Rice-coded with a parameter chosen from the
//     density, then 1 sign bit per kept value, x scale.
//   - q8, q4:     dense group-wise symmetric quantization: per group of G consecutive values
//     (G = 32 by default; 16, 64, 128 allowed) the group's largest |value| as bfloat16, then
//     int8 / int4 codes. 8 + 16/G and 4 + 16/G bits a value: q4 at G = 32 is 4.5 bits, 3.6x
//     smaller than bf16; q8 at G = 32 is 8.5 bits, 1.9x. See quant.go for the error bounds.
//   - rice-q8:    rice (positions and signs) plus an 8-bit magnitude per kept value, against
//     one scale per tensor (the largest kept |value|).
//
// The three sparse codecs hold the same information (which entries are kept, their signs, one
// scale per tensor), so they decode to identical values and differ only in size and decode
// work. Rice is the smallest at every density below ~90% (with k = 0 it degenerates to the bitmap
// minus its trailing zeros); bitmap and ternary2 are kept for their simpler, branch-light decode,
// which matters for a future GPU decode kernel. Smallest picks the smallest.
//
// Sparsification follows ComPEFT (Yadav et al., 2023; see docs/PAPERS.md): keep the
// entries whose |value| reaches the top-K threshold and replace each by sign x scale.
//   - Per tensor (our default): threshold and scale per tensor. The scale is the mean |value| of
//     the kept entries, the least-squares optimum for a fixed sign pattern (the reference's
//     "STC" variant, replace_factor -2), so no alpha_c has to be tuned; A and B have very
//     different magnitudes, which one global scale cannot fit.
//   - Global (exact ComPEFT): threshold and sigma over the concatenation of every A and B of the
//     adapter, scale alpha_c x sigma for all tensors. See Global.
//
// Magnitudes matter. On the trained demo adapters (demo/assets, bench/quality on the CPU engine,
// 8,192 held-out tokens per domain) the sign x scale codecs are catastrophic: at the default
// density 10% held-out perplexity rises by 2,650-5,000% on the c, go and python adapters, and
// still by 28-74% at 50%; keeping lora_A dense (CompressOptions.DenseA) leaves +16-26% at 50%.
// Only dense bf16 was lossless. q8, q4 and rice-q8 keep each value's magnitude. Measured the same
// way (2026-11-27): q8 (G = 32) changes perplexity by -0.15% to +0.02%, q4 (G = 32) by -1.0% to
// +1.4%, q4 (G = 64) by +0.2% to +1.5%; rice-q8 still costs +20-38% at density 50% and
// +310-600% at 25%: dropping values, not only flattening magnitudes, is what hurts these
// adapters, so the dense quantizers are the ones with a small cost.
//
// Decoders never panic and never allocate from header fields: they write into a caller-sized
// destination after checking every length, and reject non-canonical streams.
package lorapack
