package serve

import (
	"errors"
	"fmt"

	"github.com/loraplex/loraplex/model"
)

// ErrKVCacheTooSmall marks a start-up whose KV cache cannot hold one sequence of the maximum
// model length: the server names the flags that change either side.
var ErrKVCacheTooSmall = errors.New("the KV cache cannot hold one sequence of max model length")

// ResolveMaxModelLen is the engine's maximum model length for a requested one (0: the model's
// own). Like vLLM it refuses a request longer than the model supports
// (model.Config.DerivedMaxLen: max_position_embeddings, stretched by linear or yarn RoPE
// scaling): positions past it are ones the model never saw. A config without a length gets 4096.
func ResolveMaxModelLen(cfg *model.Config, requested int) (int, error) {
	derived := cfg.DerivedMaxLen()
	switch {
	case requested > 0 && derived > 0 && requested > derived:
		return 0, fmt.Errorf("engine: max model length %d is greater than the model's %d (%s); lower --max-model-len", requested, derived, derivedFrom(cfg))
	case requested > 0:
		return requested, nil
	case derived > 0:
		return derived, nil
	}
	return 4096, nil
}

func derivedFrom(cfg *model.Config) string {
	switch cfg.Rope.Type {
	case "linear":
		return fmt.Sprintf("max_position_embeddings %d x linear rope factor %g", cfg.MaxPositions, cfg.Rope.Factor)
	case "yarn":
		return fmt.Sprintf("original_max_position_embeddings %d x yarn rope factor %g", cfg.Rope.OriginalMaxPositions, cfg.Rope.Factor)
	}
	return fmt.Sprintf("max_position_embeddings in config.json, rope type %s", cfg.Rope.Type)
}

// RunnerOptions are the runner's workspace sizes for engine options with MaxModelLen set
// (NewEngine's, and what a server reserves device memory for before it sizes the KV cache:
// model.Config.WorkspaceBytes). Zero MaxNumSeqs and MaxBatchedTokens take their defaults.
func RunnerOptions(opt Options) model.RunnerOptions {
	if opt.MaxNumSeqs <= 0 {
		opt.MaxNumSeqs = DefaultMaxNumSeqs
	}
	if opt.MaxBatchedTokens <= 0 {
		opt.MaxBatchedTokens = DefaultMaxBatchedTokens
	}
	return model.RunnerOptions{MaxTokens: opt.MaxBatchedTokens, MaxLogitRows: opt.MaxNumSeqs + maxScoreRows(opt), MaxContext: opt.MaxModelLen}
}
