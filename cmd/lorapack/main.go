// Command lorapack compresses PEFT LoRA adapters into lorapack files (sparsified, entropy-coded
// factors; see package lorapack), expands them back into PEFT folders, and inspects them. It
// also imports MeteoRA and MoLA mixture-of-LoRA-experts checkpoints as one PEFT adapter per expert
// plus a loraplex.router/v1 bundle (see router/importer).
//
//	lorapack compress PEFT_DIR OUT_FILE [--density K] [--codec dense|ternary|bitmap|rice|auto] [--global [--alpha A]]
//	lorapack decompress FILE OUT_DIR
//	lorapack inspect FILE
//	lorapack import-meteora CHECKPOINT OUT_DIR [--tasks a,b,c|FILE] [--config FILE] [--alpha A] [--top-k K] [--temperature T] [--base NAME]
//	lorapack import-mola CHECKPOINT OUT_DIR --experts N[,N...] --top-k K[,K...] [--rank r] [--alpha A] [--config FILE] [--prefix P] [--base NAME]
package main

import "os"

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }
