//go:build cuda

package main

import (
	"fmt"
	"math"
	"math/rand/v2"
	"time"

	"github.com/loraplex/loraplex/bench/internal/benchenv"
	"github.com/loraplex/loraplex/cuda"
	"github.com/loraplex/loraplex/model"
	"github.com/loraplex/loraplex/router"
)

// routerBench measures routed decode (issue 6): a router over n experts, rank 8 on all seven
// projections of every layer, top-2, every decode row routed, against the same batch on one
// rank-8 adapter and on the base model, all in this run. Variants show where the time goes:
// "gates only" routes with experts that have no LoRA (gate GEMM + top-k, no expert math), and
// "host top-k" reads the gate logits back and routes on the host (the reference path) instead
// of on the device.
func routerBench(b *cuda.Backend, cfg *model.Config, steps, ctx int) error {
	src := benchenv.NewRandomSource(cfg)
	w, err := model.UploadWeights(src, cfg, b)
	if err != nil {
		return err
	}
	src.Release()
	const maxBatch, pageSize = 64, 16
	newRunner := func(host bool) (*model.Runner, error) {
		return model.NewRunner(cfg, b, w, model.RunnerOptions{MaxTokens: maxBatch, MaxLogitRows: maxBatch, MaxContext: ctx + steps + 64,
			KV: model.KVSpec{Pages: maxBatch * ((ctx+steps+8)/pageSize + 2), PageSize: pageSize}, HostRouting: host})
	}
	dev, err := newRunner(false)
	if err != nil {
		return err
	}
	host, err := newRunner(true)
	if err != nil {
		return err
	}
	_, isDev := any(b).(model.DeviceRouter)
	fmt.Printf("device routing available: %v\n", isDev)
	decode := func(r *model.Runner, batch int, ad *model.Adapter) (float64, error) {
		s := decodeStep(batch, ctx, pageSize)
		ads := make([]*model.Adapter, batch)
		for i := range ads {
			ads[i] = ad
		}
		rows, results := make([]model.SampleRow, batch), make([]model.SampleResult, batch)
		for i := range rows {
			rows[i].Logprobs = -1
		}
		for i := 0; i < 3; i++ {
			if err := r.ForwardSample(s, ads, rows, results); err != nil {
				return 0, err
			}
		}
		start := time.Now()
		for i := 0; i < steps; i++ {
			if err := r.ForwardSample(s, ads, rows, results); err != nil {
				return 0, err
			}
		}
		return float64(batch*steps) / time.Since(start).Seconds(), nil
	}
	experts, err := randomAdapters(b, cfg, 28, 8, benchenv.AllProj())
	if err != nil {
		return err
	}
	rng := rand.New(rand.NewPCG(5, 6))
	for _, n := range []int{8, 28} {
		full, err := benchRouting(b, cfg, fmt.Sprintf("router%d", n), experts[:n], 2, rng, false)
		if err != nil {
			return err
		}
		gatesOnly, err := benchRouting(b, cfg, fmt.Sprintf("gates%d", n), experts[:n], 2, rng, true)
		if err != nil {
			return err
		}
		for _, batch := range []int{1, 16, 64} {
			base, err := decode(dev, batch, nil)
			if err != nil {
				return err
			}
			single, err := decode(dev, batch, experts[0])
			if err != nil {
				return err
			}
			b.SetGraphs(false)
			singleDirect, err := decode(dev, batch, experts[0])
			b.SetGraphs(true)
			if err != nil {
				return err
			}
			routed, err := decode(dev, batch, full)
			if err != nil {
				return err
			}
			gates, err := decode(dev, batch, gatesOnly)
			if err != nil {
				return err
			}
			hostRouted, err := decode(host, batch, full)
			if err != nil {
				return err
			}
			ms := func(tps float64) float64 { return float64(batch) / tps * 1e3 }
			fmt.Printf("experts %2d batch %2d: base %7.1f tok/s, single adapter %7.1f (%.1f without graphs), routed %7.1f = %.2f of single, %.2f of base; "+
				"step ms: base %.2f single %.2f routed %.2f (gates+top-k only %.2f, host top-k %.2f)\n",
				n, batch, base, single, singleDirect, routed, routed/single, routed/base, ms(base), ms(single), ms(routed), ms(gates), ms(hostRouted))
		}
	}
	return b.Err()
}

// benchRouting builds a Routing over experts with random gates on every projection. With
// noLoRA the experts carry no LoRA, so only the gates and top-k run.
func benchRouting(b *cuda.Backend, cfg *model.Config, name string, experts []*model.Adapter, k int, rng *rand.Rand, noLoRA bool) (*model.Adapter, error) {
	// A key lets the runner record routed steps as CUDA graphs (router.Bundle.Routing sets one
	// the same way for served routers).
	rt := &model.Routing{Name: name, Key: model.NewRoutingKey(), Layers: make([][model.NumProj]*model.RoutedProj, cfg.NumLayers), TraceProj: make([]model.Proj, cfg.NumLayers)}
	ids := make([]int32, len(experts))
	for i, e := range experts {
		rt.Experts = append(rt.Experts, e.Name)
		ids[i] = int32(i)
	}
	for l := range rt.Layers {
		rt.TraceProj[l] = model.ProjQ
		// The layer's gates go up as a served router's do (router.UploadGates: those of one
		// input width as one tensor), so the benchmark meets the layout the backend batches.
		gates := make([]*router.Gate, model.NumProj)
		for p := range gates {
			_, in := cfg.ProjShape(model.Proj(p))
			w := make([]float32, len(experts)*in)
			scale := 3 / math.Sqrt(float64(in))
			for i := range w {
				w[i] = float32(rng.NormFloat64() * scale)
			}
			gates[p] = &router.Gate{Name: "gate", Layer: l, Proj: model.Proj(p), Rows: len(experts), Cols: in, W: w}
		}
		if _, err := router.UploadGates(b, gates); err != nil {
			return nil, err
		}
		for p := model.Proj(0); p < model.NumProj; p++ {
			mods := make([]*model.LoRAWeights, len(experts))
			if !noLoRA {
				for j, e := range experts {
					mods[j] = e.Modules[l][p]
				}
			}
			rt.Layers[l][p] = &model.RoutedProj{Gate: gates[p].T, TopK: k, Temperature: 1, Experts: mods, IDs: ids}
		}
	}
	if err := rt.Check(cfg); err != nil {
		return nil, err
	}
	return &model.Adapter{Name: name, Routing: rt}, nil
}
