// Command server runs loraplex: one base model, its LoRA adapters and routers (mixtures of LoRA
// experts), and the OpenAI-style HTTP API. Without --model it serves the built-in trained
// demo (a small model, four adapters and a router; see package demo).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return
		}
		fmt.Fprintln(os.Stderr, "loraplex:", err)
		os.Exit(1)
	}
}
