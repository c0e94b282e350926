// Command lorapack compresses PEFT LoRA adapters into lorapack files (sparsified, entropy-coded
// factors; see adaptercache/codec), expands them back into PEFT folders, and inspects them.
//
//	lorapack compress PEFT_DIR OUT_FILE [--density K] [--codec dense|ternary|bitmap|rice|auto] [--global [--alpha A]]
//	lorapack decompress FILE OUT_DIR
//	lorapack inspect FILE
package main

import "os"

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }
