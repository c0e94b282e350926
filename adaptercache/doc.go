// Package adaptercache owns LoRA adapters: loading them from disk (Hugging Face PEFT folders, or
// lorapack files in the compressed format of package lorapack) and caching them in tiers
// (disk -> host RAM -> device slots; Cache, which the engine's scheduler uses through tickets
// and leases).
//
// The PEFT loader (LoadPEFT) reproduces how peft decides which modules an adapter touches and with
// what rank and scale (target_modules, layers_to_transform, rank_pattern, alpha_pattern,
// use_rslora), and rejects every option that would change the math in a way loraplex does not
// implement, so that an adapter that loads computes what it computes under HF PEFT.
package adaptercache
