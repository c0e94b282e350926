package main

import (
	"context"
	"fmt"
	"io"
	"time"
)

// ReplicaReport is how a multi-replica run spread its requests and what that cost in adapter
// loads, from the replicas' own counters (loraplex_adapter_cache_transfers_total, read before
// and after the run).
type ReplicaReport struct {
	Route             string           `json:"route"`
	DeviceLoads       float64          `json:"device_loads"` // host-to-device adapter uploads, all replicas
	DiskLoads         float64          `json:"disk_loads"`   // disk-to-host adapter loads, all replicas
	DeviceLoadsPerMin float64          `json:"device_loads_per_min"`
	DiskLoadsPerMin   float64          `json:"disk_loads_per_min"`
	PerReplica        []ReplicaSummary `json:"per_replica"`
}

// ReplicaSummary is one replica's share.
type ReplicaSummary struct {
	URL         string  `json:"url"`
	Requests    int     `json:"requests"`
	Adapters    int     `json:"distinct_adapters"` // distinct adapters sent there
	DeviceLoads float64 `json:"device_loads"`
	DiskLoads   float64 `json:"disk_loads"`
}

// runRouted replays plan over several replicas, each request sent where r picks. It scrapes
// every replica each interval while the run lasts (and once before it starts, so an Affine
// router's first picks see the replicas as they are).
func runRouted(ctx context.Context, clients []*Client, route string, r Router, interval time.Duration, plan []Planned,
	modelOf func(*Planned) string) (rs []Result, window, wall time.Duration, rep *ReplicaReport, err error) {
	before := make([]ReplicaState, len(clients))
	for i, c := range clients {
		if before[i], err = c.Scrape(ctx); err != nil {
			return nil, 0, 0, nil, err
		}
	}
	// Every route scrapes at the same interval, so on a shared machine the scrapes' cost (in
	// this process and in the replicas) is the same whichever route is measured; only Affine
	// reads them.
	observe := func(int, ReplicaState) {}
	if a, ok := r.(*Affine); ok {
		observe = a.Observe
	}
	for i, s := range before {
		observe(i, s)
	}
	wctx, stop := context.WithCancel(ctx)
	defer stop()
	go watch(wctx, clients, observe, interval)
	rs, window, wall = replay(ctx, plan, modelOf, func(ctx context.Context, model string, p *Planned) Result {
		i := r.Pick(model)
		defer r.Done(i)
		res := clients[i].Complete(ctx, model, p)
		res.Replica = i
		return res
	})
	rep = &ReplicaReport{Route: route}
	minutes := wall.Minutes()
	seen := make([]map[string]bool, len(clients))
	for i := range seen {
		seen[i] = map[string]bool{}
	}
	per := make([]ReplicaSummary, len(clients))
	for _, res := range rs {
		if res.Status == "not sent" {
			continue
		}
		per[res.Replica].Requests++
		seen[res.Replica][res.Model] = true
	}
	for i, c := range clients {
		after, err := c.Scrape(ctx)
		if err != nil {
			return rs, window, wall, nil, err
		}
		per[i].URL, per[i].Adapters = c.base, len(seen[i])
		per[i].DeviceLoads = after.DeviceLoads - before[i].DeviceLoads
		per[i].DiskLoads = after.DiskLoads - before[i].DiskLoads
		rep.DeviceLoads += per[i].DeviceLoads
		rep.DiskLoads += per[i].DiskLoads
	}
	rep.PerReplica = per
	if minutes > 0 {
		rep.DeviceLoadsPerMin, rep.DiskLoadsPerMin = rep.DeviceLoads/minutes, rep.DiskLoads/minutes
	}
	return rs, window, wall, rep, nil
}

func printReplicas(w io.Writer, r *ReplicaReport) {
	fmt.Fprintf(w, "%-22s %s\n", "route", r.Route)
	fmt.Fprintf(w, "%-22s %.0f device (%.1f/min), %.0f from disk (%.1f/min)\n", "adapter loads", r.DeviceLoads, r.DeviceLoadsPerMin, r.DiskLoads, r.DiskLoadsPerMin)
	for _, p := range r.PerReplica {
		fmt.Fprintf(w, "  %-20s %d requests, %d distinct models, %.0f device loads, %.0f disk loads\n", p.URL, p.Requests, p.Adapters, p.DeviceLoads, p.DiskLoads)
	}
}
