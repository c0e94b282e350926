#!/usr/bin/env python3
"""Summarises raw `go test -bench` output of cpu/bench_test.go (bench/run.sh) as a Markdown table.

Usage: bench/summarize.py ROOFLINE_GBPS FILE...
ROOFLINE_GBPS is the copy bandwidth (read + written bytes / s) the ratios are taken against; the
weight bytes a step streams are 200,146,944 (all layer matrices + the tied lm_head, BF16).
"""
import re
import statistics
import sys

WBYTES = 200_146_944

def parse(files):
    runs = {}
    for f in files:
        for line in open(f):
            if not line.startswith("Benchmark"):
                continue
            parts = line.split()
            name = re.sub(r"-\d+$", "", parts[0])
            vals = {}
            it = parts[2:]
            for v, unit in zip(it[0::2], it[1::2]):
                vals[unit] = float(v)
            runs.setdefault(name, []).append(vals)
    return runs

def main():
    bw = float(sys.argv[1]) * 1e9
    runs = parse(sys.argv[2:])
    print("| benchmark | samples | tokens/s median (mean of sample) | best step tokens/s | best step ms | roofline ratio of best step | CPU ms/step (median) | allocs/op |")
    print("|---|---|---|---|---|---|---|---|")
    for name, rs in runs.items():
        if "tokens/s" not in rs[0] and "best_tokens/s" not in rs[0]:
            continue
        batch = 512 if "Prefill" in name else int(re.search(r"batch=(\d+)", name).group(1))
        best = max(r["best_tokens/s"] for r in rs)
        step = batch / best
        med = statistics.median(r.get("tokens/s", float("nan")) for r in rs)
        meds = "-" if med != med else f"{med:.1f}"
        cpu = statistics.median(r["cpu_util"] * r["ns/op"] / 1e6 for r in rs)
        allocs = statistics.median(r.get("allocs/op", 0) for r in rs)
        print(f"| {name} | {len(rs)} | {meds} | {best:.1f} | {step*1e3:.1f} | {WBYTES/step/bw:.2f} | {cpu:.1f} | {allocs:.0f} |")

main()
