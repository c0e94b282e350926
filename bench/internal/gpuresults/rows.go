package gpuresults

import (
	"fmt"
	"sort"
	"strings"
)

// bestPrefill is the fastest kernel's point at n tokens.
func (r *Loraplex) bestPrefill(n int) (PrefillPoint, bool) {
	var best PrefillPoint
	ok := false
	for _, p := range r.Prefill {
		if p.Tokens == n && (!ok || p.Seconds < best.Seconds) {
			best, ok = p, true
		}
	}
	return best, ok
}

func (r *Loraplex) longContext(ctx int) (LongContextPoint, bool) {
	for _, p := range r.LongContext {
		if p.Context == ctx {
			return p, true
		}
	}
	return LongContextPoint{}, false
}

func (r *Loraplex) router(batch int) (RouterPoint, bool) {
	for _, p := range r.Router {
		if p.Batch == batch {
			return p, true
		}
	}
	return RouterPoint{}, false
}

// failed says why a stage has no figures: its error, or that it did not run, with run.sh's
// status of the whole bench/gpu process when that was not ok (cut off by its time limit, say).
func (r *Loraplex) failed(stage string) string {
	if e := r.Errors[stage]; e != "" {
		return "stage " + stage + " failed: " + e
	}
	if r.missing != "" {
		return r.missing + " (run.sh stage loraplex: " + r.runStatus + ")"
	}
	if _, ran := r.StageSeconds[stage]; !ran {
		if r.runStatus != "" {
			return "stage " + stage + " did not run (bench/gpu " + r.runStatus + ")"
		}
		return "stage " + stage + " did not run"
	}
	return "not measured"
}

// hfRun is bench/reference/hf_bench.py's JSON.
type hfRun struct {
	Batch1  float64 `json:"hf_batch1_tokens_per_s"`
	Batch64 float64 `json:"hf_batch64_tokens_per_s"`
	PEFT16  float64 `json:"peft_16_adapters_batch64_tokens_per_s"`
}

// coldloadRun is bench/coldload -json.
type coldloadRun struct {
	Device     string  `json:"device"`
	GoalMS     float64 `json:"goal_ms"`
	RooflineMS float64 `json:"roofline_ms"`
	Rows       []struct {
		Form     string  `json:"form"`
		Cache    string  `json:"cache"`
		TotalMS  float64 `json:"total_ms_median"`
		LoadMS   float64 `json:"disk_to_host_ms_median"`
		DigestMS float64 `json:"digest_ms_median"` // absent (0) before bench/coldload timed it
		UploadMS float64 `json:"host_to_device_ms_median"`
		// DigestBesideUpload: DigestMS is within UploadMS (the cache hashes beside the first
		// upload); false in results written before, where it is within LoadMS.
		DigestBesideUpload bool `json:"digest_beside_upload"`
	} `json:"rows"`
}

// prefixRun is bench/prefixcache -json.
type prefixRun struct {
	Device     string  `json:"device"`
	Prefix     int     `json:"prefix_tokens"`
	Suffix     int     `json:"suffix_tokens"`
	UncachedMS float64 `json:"uncached_ttft_ms_median"`
	CachedMS   float64 `json:"cached_ttft_ms_median"`
	Ratio      float64 `json:"ratio"`
}

func tps(v float64) string { return commas(v, 1) + " tok/s" }

// ABRows is the Issue of the A/B runs' rows: switches against the default, no goals.
const ABRows = 0

// rows lays out issue 15's goal table, then issue 14's GPU rows, then the A/B runs.
func rows(lp *Loraplex, hf hfRun, hasHF bool, cl coldloadRun, hasCL bool, pc prefixRun, hasPC bool, abs []Loraplex, lc llamaCpp) []Row {
	var out []Row
	add := func(r Row) { out = append(out, r) }

	// Prefill against the cuBLAS GEMM.
	for _, p := range []struct {
		n int
		g float64
	}{{2048, 0.60}, {8192, 0.55}} {
		pt, ok := lp.bestPrefill(p.n)
		note := ""
		if !ok {
			note = lp.failed("prefill")
		}
		add(row(15, fmt.Sprintf("prefill_%d_vs_gemm", p.n), fmt.Sprintf("prefill %s tokens, achieved FLOP/s ÷ cuBLAS bf16 GEMM", commas(float64(p.n), 0)),
			goal{">=", p.g}, pt.RatioToGEMM, ok,
			fmt.Sprintf("%.0f TFLOP/s (%.1f ms, %s attention)", pt.FLOPs/1e12, pt.Seconds*1e3, pt.Kernel),
			fmt.Sprintf("%.0f TFLOP/s", pt.FLOPs/pt.RatioToGEMM/1e12), note))
	}

	// Batch-1 decode against the roofline.
	b1, ok := lp.Batch1["tokens_per_s"]
	ctx := lp.Batch1["context"]
	if ctx == 0 {
		ctx = 128 // bench/gpu's -ctx when it measured nothing
	}
	add(row(15, "decode_b1_vs_roofline_ctx128", fmt.Sprintf("batch-1 decode ÷ HBM roofline (ctx %.0f)", ctx), goal{">=", 0.85},
		lp.Batch1["ratio"], ok, tps(b1), tps(lp.Batch1["roofline_tokens_per_s"])+fmt.Sprintf(" (copy %.0f GB/s)", lp.CopyBandwidth/1e9), noteIf(!ok, lp.failed("decode"))))
	for _, c := range []struct {
		ctx int
		g   goal
	}{{4096, goal{}}, {32768, goal{">=", 0.75}}} {
		p, ok := lp.longContext(c.ctx)
		add(row(15, fmt.Sprintf("decode_b1_vs_roofline_ctx%d", c.ctx), fmt.Sprintf("batch-1 decode at ctx %s ÷ roofline (weights + KV bytes)", commas(float64(c.ctx), 0)),
			c.g, p.Ratio, ok, tps(p.Tokens), tps(p.Roofline), noteIf(!ok, lp.failed("longctx"))))
	}

	// Adapters.
	if a := lp.Adapters; a != nil {
		add(row(15, "adapters16_vs_ceiling", "64 distinct rank-16 adapters, all 7 projections ÷ no adapters (batch 64) ÷ its byte-bound ceiling",
			goal{">=", 0.90}, a.RatioOfCeiling, true,
			fmt.Sprintf("%s = %.3f of no adapters", tps(a.Mixed), a.Ratio),
			fmt.Sprintf("%s; ceiling %.3f (%.1f GB of adapters beside %.1f GB)", tps(a.Base), a.Ceiling, a.AdapterBytes/1e9, a.BaseBytes/1e9), ""))
	} else {
		add(row(15, "adapters16_vs_ceiling", "64 distinct rank-16 adapters, all 7 projections ÷ no adapters (batch 64) ÷ its byte-bound ceiling",
			goal{">=", 0.90}, 0, false, "", "", lp.failed("adapters16")))
	}
	if a := lp.AdaptersQV; a != nil {
		add(row(15, "adapters8qv_vs_base", "64 distinct rank-8 q/v adapters ÷ no adapters (batch 64)", goal{">=", 0.95}, a.Ratio, true,
			tps(a.Mixed), fmt.Sprintf("%s (byte-bound ceiling %.3f)", tps(a.Base), a.Ceiling), ""))
	} else {
		add(row(15, "adapters8qv_vs_base", "64 distinct rank-8 q/v adapters ÷ no adapters (batch 64)", goal{">=", 0.95}, 0, false, "", "", lp.failed("adapters8qv")))
	}
	for _, c := range []struct {
		batch int
		g     float64
	}{{1, 0.85}, {64, 0.90}} {
		p, ok := lp.router(c.batch)
		single := tps(p.Single)
		if p.Ceiling > 0 {
			single += fmt.Sprintf(" (byte-bound ceiling %.3f: %.2f GB a routed step beside %.2f GB)", p.Ceiling, p.RoutedBytes/1e9, p.SingleBytes/1e9)
		}
		add(row(15, fmt.Sprintf("router28_top2_b%d", c.batch), fmt.Sprintf("routed top-2 of 28 experts ÷ single adapter, batch %d", c.batch),
			goal{">=", c.g}, p.Ratio, ok, tps(p.Routed), single, noteIf(!ok, lp.failed("router"))))
	}
	// What one adapter costs (no goal of its own; the router stage's baselines): a batch of
	// requests on one rank-8 adapter on all seven projections against the same batch without.
	for _, batch := range []int{1, 64} {
		p, ok := lp.router(batch)
		add(row(15, fmt.Sprintf("single_adapter_b%d_vs_base", batch), fmt.Sprintf("one rank-8 adapter, all 7 projections ÷ no adapters, batch %d", batch),
			goal{}, p.Single/p.Base, ok && p.Base > 0, tps(p.Single), tps(p.Base), noteIf(!ok, lp.failed("router"))))
	}

	// What one adapter costs a prompt's prefill (no goal of its own): LoRA's share of time to
	// first token, where the LoRA expands into SwiGLU and RoPE save the most.
	if a := lp.AdapterPrefill; a != nil {
		add(row(15, "prefill_2048_one_adapter_vs_base", "prefill 2,048 tokens, one rank-16 adapter on all 7 projections ÷ no adapter",
			goal{}, a.Ratio, a.Base > 0, tps(a.Adapter), tps(a.Base), ""))
	} else {
		add(row(15, "prefill_2048_one_adapter_vs_base", "prefill 2,048 tokens, one rank-16 adapter on all 7 projections ÷ no adapter",
			goal{}, 0, false, "", "", lp.failed("prefill")))
	}

	// Cold load.
	var warm, load, digest, upload float64
	okCL, beside := false, false
	for _, r := range cl.Rows {
		if r.Form == "lorapack" && r.Cache == "warm" {
			warm, load, digest, upload, okCL, beside = r.TotalMS, r.LoadMS, r.DigestMS, r.UploadMS, true, r.DigestBesideUpload
		}
	}
	ofLoad, ofUpload := "", ""
	switch {
	case beside:
		ofUpload = fmt.Sprintf(" with the digest beside it %.2f", digest)
	case digest > 0:
		ofLoad = fmt.Sprintf(" of which digest %.2f", digest)
	}
	clRow := row(15, "coldload_lorapack_warm_ms", "compressed adapter disk → ready on device, warm page cache (ms)", goal{"<", 10}, warm, okCL,
		fmt.Sprintf("%.2f ms (disk → host %.2f%s, host → device %.2f%s)", warm, load, ofLoad, upload, ofUpload), fmt.Sprintf("device-stage roofline %.2f ms", cl.RooflineMS),
		noteIf(!hasCL, "bench/coldload did not run"))
	clRow.Unit = "ms"
	add(clRow)

	// llama.cpp.
	tg, okTG := lc.tg()
	add(row(15, "decode_b1_vs_llamacpp", "batch-1 decode ÷ llama.cpp on the same GPU", goal{">=", 1.0}, b1/tg, ok && okTG,
		tps(b1), "llama.cpp "+tps(tg)+" (llama-bench tg128)", notes(noteIf(!ok, lp.failed("decode")), lc.why(okTG))))
	pp, okPP := lc.pp(2048)
	pf, okPF := lp.bestPrefill(2048)
	add(row(15, "prefill_2048_vs_llamacpp", "prefill 2,048 tokens ÷ llama.cpp pp2048 (flash attention on)", goal{">=", 1.0}, pf.TokensPerS/pp, okPF && okPP,
		tps(pf.TokensPerS), "llama.cpp "+tps(pp), notes(noteIf(!okPF, lp.failed("prefill")), lc.why(okPP))))
	s64, ok64 := lp.Sweep[64]
	bt, okBT := lc.batched(64)
	add(row(15, "decode_b64_vs_llamacpp", "decode batch 64 ÷ llama.cpp batched", goal{">=", 1.0}, s64/bt, ok64 && okBT,
		tps(s64), "llama.cpp "+tps(bt)+" (llama-batched-bench S_TG, B=64)", notes(noteIf(!ok64, lp.failed("decode")), lc.why(okBT))))

	// Deterministic mode: measured in this run, or by an A/B run with LORAPLEX_DETERMINISTIC=1.
	add(deterministicRow(lp, abs))

	// HF transformers.
	s1, ok1 := lp.Sweep[1]
	add(row(15, "decode_b1_vs_hf", "decode batch 1 ÷ HF transformers", goal{">=", 10}, s1/hf.Batch1, ok1 && hasHF && hf.Batch1 > 0,
		tps(s1), "HF "+tps(hf.Batch1), notes(noteIf(!ok1, lp.failed("decode")), noteIf(!hasHF, "bench/reference/hf_bench.py did not run"))))
	add(row(15, "decode_b64_vs_hf", "decode batch 64 ÷ HF transformers", goal{">=", 5}, s64/hf.Batch64, ok64 && hasHF && hf.Batch64 > 0,
		tps(s64), "HF "+tps(hf.Batch64), notes(noteIf(!ok64, lp.failed("decode")), noteIf(!hasHF, "bench/reference/hf_bench.py did not run"))))

	// Issue 14: prefix caching and long prompts.
	prefix := pc.Prefix
	if !hasPC {
		prefix = 2000 // what run.sh asks for
	}
	add(row(14, "prefix_ttft_cached_vs_uncached", fmt.Sprintf("TTFT with a %s-token cached prefix ÷ uncached", commas(float64(prefix), 0)), goal{"<=", 0.15}, pc.Ratio,
		hasPC && pc.UncachedMS > 0, fmt.Sprintf("%.1f ms", pc.CachedMS), fmt.Sprintf("%.1f ms uncached", pc.UncachedMS), noteIf(!hasPC, "bench/prefixcache did not run")))
	for _, n := range []int{2048, 8192, 32768} {
		p, ok := lp.bestPrefill(n)
		r := row(14, fmt.Sprintf("prefill_%d_ms", n), fmt.Sprintf("prefill time, %s-token prompt (one step)", commas(float64(n), 0)), goal{}, p.Seconds*1e3, ok,
			fmt.Sprintf("%.1f ms (%s attention)", p.Seconds*1e3, p.Kernel), tps(p.TokensPerS), noteIf(!ok, lp.failed("prefill")))
		r.Unit = "ms"
		add(r)
	}

	// A/B runs: each switch against this run's default.
	for _, ab := range abs {
		label := envLabel(ab.Env, lp.Env)
		for _, m := range []struct {
			id, what string
			a, b     float64
		}{
			{"decode_b1", "batch-1 decode", ab.Sweep[1], lp.Sweep[1]},
			{"decode_b64", "batch-64 decode", ab.Sweep[64], lp.Sweep[64]},
			{"decode_b1_ctx4096", "batch-1 decode at ctx 4,096", contextTokens(ab, 4096), contextTokens(*lp, 4096)},
			{"decode_b1_ctx32768", "batch-1 decode at ctx 32,768", contextTokens(ab, 32768), contextTokens(*lp, 32768)},
			{"adapters16_b64", "64 distinct rank-16 adapters", mixed(ab.Adapters), mixed(lp.Adapters)},
			{"adapters8qv_b64", "64 distinct rank-8 q/v adapters", mixed(ab.AdaptersQV), mixed(lp.AdaptersQV)},
			{"prefill_2048", "prefill 2,048 tokens", tokensPerS(ab, 2048), tokensPerS(*lp, 2048)},
			{"prefill_8192", "prefill 8,192 tokens", tokensPerS(ab, 8192), tokensPerS(*lp, 8192)},
			{"prefill_2048_one_adapter", "prefill 2,048 tokens on one rank-16 adapter", adapterPrefill(ab), adapterPrefill(*lp)},
			{"deterministic_b1", "deterministic mode, batch-1 decode", deterministicTokens(ab, 1), deterministicTokens(*lp, 1)},
			{"deterministic_b64", "deterministic mode, batch-64 decode", deterministicTokens(ab, 64), deterministicTokens(*lp, 64)},
			{"single_adapter_b1", "one rank-8 adapter, batch-1 decode", routerTokens(ab, 1, false), routerTokens(*lp, 1, false)},
			{"routed_b1", "routed top-2 of 28 experts, batch-1 decode", routerTokens(ab, 1, true), routerTokens(*lp, 1, true)},
			{"routed_b64", "routed top-2 of 28 experts, batch-64 decode", routerTokens(ab, 64, true), routerTokens(*lp, 64, true)},
		} {
			add(row(ABRows, "ab_"+ab.label+"_"+m.id, fmt.Sprintf("A/B %s: %s ÷ default", label, m.what), goal{}, m.a/m.b, m.a > 0 && m.b > 0,
				tps(m.a), tps(m.b), ""))
		}
		// Prefill attention alone (one layer's launch over the prompt's cache, timed by bench/gpu's
		// prefill stage), where a prefill attention switch shows undiluted by the GEMMs: the
		// default's time ÷ the A/B run's, so that above 1 is faster as in the rows above.
		for _, n := range []int{2048, 8192} {
			a, d := attnLayerMS(ab, n), attnLayerMS(*lp, n)
			add(row(ABRows, fmt.Sprintf("ab_%s_prefill_attention_%d", ab.label, n),
				fmt.Sprintf("A/B %s: prefill attention per layer, %s tokens, default time ÷ A/B time", label, commas(float64(n), 0)),
				goal{}, d/a, a > 0 && d > 0, fmt.Sprintf("%.3f ms", a), fmt.Sprintf("%.3f ms", d), ""))
		}
		// The adapter goals' own measure with the switch set: mixed ÷ no adapters over the
		// byte-bound ceiling, both sides measured in the A/B run (a LoRA switch moves only the
		// mixed side, and the A/B run's own base keeps the noise between runs out).
		for _, m := range []struct {
			id, what string
			a        *AdapterRatio
		}{
			{"adapters16_b64_of_ceiling", "64 distinct rank-16 adapters", ab.Adapters},
			{"adapters8qv_b64_of_ceiling", "64 distinct rank-8 q/v adapters", ab.AdaptersQV},
		} {
			// A run without the stage still gets the row, with no value, as every A/B row does.
			var ratio float64
			ceiling, mixed, base := "", "", ""
			if a := m.a; a != nil {
				ratio, mixed, base = a.RatioOfCeiling, tps(a.Mixed), tps(a.Base)
				ceiling = fmt.Sprintf(", of the byte-bound ceiling %.3f", a.Ceiling)
			}
			add(row(ABRows, "ab_"+ab.label+"_"+m.id, fmt.Sprintf("A/B %s: %s ÷ none%s, both in the A/B run", label, m.what, ceiling),
				goal{}, ratio, ratio > 0, mixed, base, ""))
		}
		// The prefix-cache TTFT with the switch set (bench/prefixcache in the A/B run's
		// environment): against the default run's cached TTFT, and the goal's own ratio, both
		// sides measured in the A/B run.
		if p := ab.prefix; p != nil {
			add(row(ABRows, "ab_"+ab.label+"_prefix_ttft_cached", fmt.Sprintf("A/B %s: TTFT with a %s-token cached prefix ÷ default", label, commas(float64(p.Prefix), 0)),
				goal{}, p.CachedMS/pc.CachedMS, hasPC && p.CachedMS > 0 && pc.CachedMS > 0, fmt.Sprintf("%.1f ms", p.CachedMS), fmt.Sprintf("%.1f ms", pc.CachedMS),
				noteIf(!hasPC, "bench/prefixcache did not run with the default")))
			add(row(ABRows, "ab_"+ab.label+"_prefix_ttft_cached_vs_uncached", fmt.Sprintf("A/B %s: TTFT with a %s-token cached prefix ÷ uncached, both in the A/B run", label, commas(float64(p.Prefix), 0)),
				goal{}, p.Ratio, p.UncachedMS > 0 && p.Ratio > 0, fmt.Sprintf("%.1f ms", p.CachedMS), fmt.Sprintf("%.1f ms uncached", p.UncachedMS), ""))
		}
		// The deterministic goal's ratio with the switch set: both sides measured in the A/B run
		// (a switch of deterministic mode's kernels, LORAPLEX_DETERMINISTIC_GEMM,
		// LORAPLEX_DETERMINISTIC_SMALL or LORAPLEX_DETERMINISTIC_WIDE, moves only one).
		if d := ab.Deterministic; d != nil && d.Available {
			for _, batch := range []int{1, 64} {
				add(row(ABRows, fmt.Sprintf("ab_%s_deterministic_vs_default_b%d", ab.label, batch),
					fmt.Sprintf("A/B %s: deterministic mode ÷ default, batch %d, both in the A/B run", label, batch), goal{},
					d.Ratio[batch], d.Ratio[batch] > 0, tps(d.On[batch]), tps(d.Default[batch]), ""))
			}
		}
	}
	return out
}

func mixed(a *AdapterRatio) float64 {
	if a == nil {
		return 0
	}
	return a.Mixed
}

// routerTokens is the router stage's routed (or single-adapter) throughput at batch (0 when not measured).
func routerTokens(r Loraplex, batch int, routed bool) float64 {
	p, _ := r.router(batch)
	if routed {
		return p.Routed
	}
	return p.Single
}

func contextTokens(r Loraplex, ctx int) float64 {
	p, _ := r.longContext(ctx)
	return p.Tokens
}

// deterministicTokens is decode throughput at batch under deterministic mode (0 when not measured).
func deterministicTokens(r Loraplex, batch int) float64 {
	if r.Deterministic == nil || !r.Deterministic.Available {
		return 0
	}
	return r.Deterministic.On[batch]
}

func tokensPerS(r Loraplex, n int) float64 {
	p, _ := r.bestPrefill(n)
	return p.TokensPerS
}

// adapterPrefill is the prefill throughput on one adapter (0 when not measured).
func adapterPrefill(r Loraplex) float64 {
	if r.AdapterPrefill == nil {
		return 0
	}
	return r.AdapterPrefill.Adapter
}

// attnLayerMS is one layer's prefill attention time at n tokens on the fastest prefill's kernel
// (0 when not measured).
func attnLayerMS(r Loraplex, n int) float64 {
	p, _ := r.bestPrefill(n)
	return p.AttnLayerMS
}

// envLabel names the switches an A/B run set that the default run did not.
func envLabel(ab, def map[string]string) string {
	var parts []string
	for k, v := range ab {
		if def[k] != v {
			parts = append(parts, k+"="+v)
		}
	}
	sort.Strings(parts)
	if len(parts) == 0 {
		return "(no switch differs)"
	}
	return strings.Join(parts, " ")
}

func deterministicRow(lp *Loraplex, abs []Loraplex) Row {
	const id, measure = "deterministic_vs_default_b64", "deterministic mode ÷ default, batch 64"
	g := goal{">=", 0.85}
	if d := lp.Deterministic; d != nil && d.Available {
		return row(15, id, measure, g, d.Ratio[64], d.Ratio[64] > 0, tps(d.On[64]), tps(d.Default[64]),
			fmt.Sprintf("batch 1: %.3f", d.Ratio[1]))
	}
	for _, ab := range abs {
		if ab.Env["LORAPLEX_DETERMINISTIC"] == "1" && ab.Deterministic != nil && ab.Deterministic.Available {
			d := ab.Deterministic
			return row(15, id, measure, g, d.Ratio[64], d.Ratio[64] > 0, tps(d.On[64]), tps(d.Default[64]),
				fmt.Sprintf("batch 1: %.3f (A/B run)", d.Ratio[1]))
		}
	}
	note := lp.failed("deterministic")
	if d := lp.Deterministic; d != nil && d.Note != "" {
		note = d.Note
	}
	for _, ab := range abs {
		if ab.Deterministic != nil && ab.Deterministic.Note != "" {
			note = ab.Deterministic.Note
		}
	}
	return row(15, id, measure, g, 0, false, "", "", note)
}

// notes joins the notes that are not empty.
func notes(n ...string) string {
	var out []string
	for _, s := range n {
		if s != "" {
			out = append(out, s)
		}
	}
	return strings.Join(out, "; ")
}

func noteIf(cond bool, s string) string {
	if cond {
		return s
	}
	return ""
}

// commas formats v with decimals and thousands separators (6763.7 -> "6,763.7"; whole
// numbers from 1,000 up lose their decimals, as the tables write them).
func commas(v float64, decimals int) string {
	if v >= 1000 {
		decimals = 0
	}
	s := fmt.Sprintf("%.*f", decimals, v)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	intPart, frac, _ := strings.Cut(s, ".")
	var b strings.Builder
	if neg {
		b.WriteByte('-')
	}
	for i, c := range intPart {
		if i > 0 && (len(intPart)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	if frac != "" {
		b.WriteString("." + frac)
	}
	return b.String()
}

// Commas is the table's number format (bench/readme shares it).
func Commas(v float64, decimals int) string { return commas(v, decimals) }
