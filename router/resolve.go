package router

import (
	"fmt"

	"github.com/loraplex/loraplex/model"
)

// Routing resolves the bundle for the forward pass: uploaded gates (Upload must have run on the
// backend the adapters live on) plus the expert adapters, indexed like Experts() (every expert
// resolved; the engine leases them for as long as a sequence runs routed). The result is checked
// against cfg. It shares the adapters' tensors: it is valid while those adapters stay resident.
func (b *Bundle) Routing(name string, cfg *model.Config, experts []*model.Adapter) (*model.Routing, error) {
	if len(experts) != len(b.experts) {
		return nil, fmt.Errorf("router %s: %d adapters for %d experts", name, len(experts), len(b.experts))
	}
	for i, a := range experts {
		if a == nil {
			return nil, fmt.Errorf("router %s: expert %q is not resolved", name, b.experts[i])
		}
		if len(a.Modules) != len(b.layers) {
			return nil, fmt.Errorf("router %s: expert %q has %d layers, the model %d", name, b.experts[i], len(a.Modules), len(b.layers))
		}
	}
	rt := &model.Routing{Name: name, Experts: b.experts, Layers: make([][model.NumProj]*model.RoutedProj, len(b.layers)),
		TraceProj: make([]model.Proj, len(b.layers))}
	for l := range b.layers {
		ly := &b.layers[l]
		rt.TraceProj[l] = -1
		ids := make([]int32, len(ly.Index))
		for j, gi := range ly.Index {
			ids[j] = int32(gi)
		}
		for p := model.Proj(0); p < model.NumProj; p++ {
			g := ly.Gates[p]
			if g == nil {
				continue
			}
			if g.T.Rows == 0 {
				return nil, fmt.Errorf("router %s: gate %s is not uploaded", name, g.Name)
			}
			if rt.TraceProj[l] < 0 {
				rt.TraceProj[l] = p
			}
			rt.Layers[l][p] = &model.RoutedProj{Gate: g.T, Source: g, TopK: ly.TopK, Temperature: ly.Temperature, Nulls: ly.Nulls,
				Experts: ly.Modules(l, p, experts, nil), IDs: ids}
		}
	}
	if err := rt.Check(cfg); err != nil {
		return nil, err
	}
	return rt, nil
}
