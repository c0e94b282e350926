package router

import (
	"encoding/binary"
	"fmt"
	"reflect"
	"sync"
	"unsafe"

	"github.com/loraplex/loraplex/model"
)

// routingKeys interns Routing.Key: routings of one bundle over the same expert adapters (the
// same *model.Adapter objects, whose weights stay where they were uploaded) and the same
// uploaded gates get one key, so a backend's recording of a routed step replays for the next
// request of that router. An entry holds the bundle and adapters it was made for, so their
// addresses in the map key cannot be reused by other objects while it exists; a re-uploaded
// adapter is a new object and gets a new key. Past maxRoutingKeys the map starts over (later
// routings get fresh keys; recordings of the old ones simply stop being used).
var routingKeys struct {
	mu sync.Mutex
	m  map[string]*routingKey
}

type routingKey struct {
	key     uint64
	bundle  *Bundle
	experts []*model.Adapter
	gates   []any // each gate's Tensor.Buf at interning (device addresses of the uploaded gates)
}

const maxRoutingKeys = 4096

// routingKeyFor returns the interned key of (b, experts) over b's gates as uploaded now.
func (b *Bundle) routingKeyFor(experts []*model.Adapter) uint64 {
	id := make([]byte, 0, 8*(len(experts)+1))
	id = binary.LittleEndian.AppendUint64(id, uint64(uintptr(unsafe.Pointer(b))))
	for _, a := range experts {
		id = binary.LittleEndian.AppendUint64(id, uint64(uintptr(unsafe.Pointer(a))))
	}
	gs := b.Gates()
	gates := make([]any, len(gs))
	for i, g := range gs {
		gates[i] = g.T.Buf
	}
	routingKeys.mu.Lock()
	defer routingKeys.mu.Unlock()
	if e := routingKeys.m[string(id)]; e != nil && sameBufs(e.gates, gates) {
		return e.key
	}
	if routingKeys.m == nil || len(routingKeys.m) >= maxRoutingKeys {
		routingKeys.m = map[string]*routingKey{}
	}
	e := &routingKey{key: model.NewRoutingKey(), bundle: b, experts: append([]*model.Adapter(nil), experts...), gates: gates}
	routingKeys.m[string(id)] = e
	return e.key
}

// sameBufs reports whether two lists of tensor storages are equal. Storages that are not
// comparable (a CPU backend's slices; CPU steps are never recorded) never are.
func sameBufs(a, b []any) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] == nil || reflect.TypeOf(a[i]) != reflect.TypeOf(b[i]) || !reflect.TypeOf(a[i]).Comparable() || a[i] != b[i] {
			return false
		}
	}
	return true
}

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
	rt.Key = b.routingKeyFor(experts)
	return rt, nil
}

// Modules collects, for projection p of layer ly, each expert's LoRA in the layer's expert order:
// dst[j] is the module of Experts[j] (nil where that adapter does not adapt p in this layer).
// adapters is indexed like Bundle.Experts() (the engine resolves those names to adapters);
// layer is the decoder layer index of ly.
func (ly *Layer) Modules(layer int, p model.Proj, adapters []*model.Adapter, dst []*model.LoRAWeights) []*model.LoRAWeights {
	dst = dst[:0]
	for _, gi := range ly.Index {
		var m *model.LoRAWeights
		if a := adapters[gi]; a != nil && layer < len(a.Modules) {
			m = a.Modules[layer][p]
		}
		dst = append(dst, m)
	}
	return dst
}
