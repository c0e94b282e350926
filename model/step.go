package model

import "fmt"

// CheckStep validates a step against a KV cache before any backend uses it: row metadata of
// equal lengths, slots, pages and logit rows in range, sequences inside the step. Backends call
// it from Prepare, so a bad step is an error rather than an out-of-bounds write.
func CheckStep(s *Step, kv KVSpec) error {
	n := len(s.Tokens)
	if len(s.Positions) != n || len(s.Slots) != n {
		return fmt.Errorf("step has %d tokens, %d positions, %d slots", n, len(s.Positions), len(s.Slots))
	}
	limit := int32(kv.Pages * kv.PageSize)
	for i, sl := range s.Slots {
		if sl < 0 || sl >= limit {
			return fmt.Errorf("row %d writes KV slot %d outside [0, %d)", i, sl, limit)
		}
	}
	for _, sq := range s.Seqs {
		if sq.Start < 0 || sq.N < 0 || sq.Start+sq.N > n || sq.Len > len(sq.Pages)*kv.PageSize {
			return fmt.Errorf("sequence rows [%d,+%d) len %d with %d pages do not fit the step", sq.Start, sq.N, sq.Len, len(sq.Pages))
		}
		for _, p := range sq.Pages {
			if p < 0 || int(p) >= kv.Pages {
				return fmt.Errorf("page %d outside the cache of %d pages", p, kv.Pages)
			}
		}
	}
	for _, r := range s.LogitRows {
		if r < 0 || int(r) >= n {
			return fmt.Errorf("logit row %d outside the step's %d rows", r, n)
		}
	}
	return nil
}
