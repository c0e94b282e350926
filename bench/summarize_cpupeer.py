#!/usr/bin/env python3
"""Summarises interleaved bench/cpupeer runs of several loraplex builds as a Markdown table.

Usage: bench/summarize_cpupeer.py LABEL=FILE [LABEL=FILE ...]
Each FILE holds the raw output of one build's runs (any number of cpupeer invocations appended,
e.g. -reps 1 per round, the builds taking turns). Every "rep N loraplex TEST X tok/s" line is a
sample. Per test and build: the samples' median (min-max) and best, and the ratio of the
medians and of the bests to the first build's.
"""
import re
import statistics
import sys

LINE = re.compile(r"^rep \d+ loraplex\s+(\S+)\s+([\d.]+) tok/s")

def samples(path):
    out = {}
    for line in open(path):
        m = LINE.match(line)
        if m:
            out.setdefault(m.group(1), []).append(float(m.group(2)))
    return out

def main():
    builds = []
    for arg in sys.argv[1:]:
        label, path = arg.split("=", 1)
        builds.append((label, samples(path)))
    base_label, base = builds[0]
    print(f"| test | build | samples | tok/s median (min-max) | best | median ÷ {base_label} | best ÷ {base_label} |")
    print("|---|---|---|---|---|---|---|")
    for test in base:
        for label, s in builds:
            v = s.get(test, [])
            if not v:
                continue
            med, best = statistics.median(v), max(v)
            print(f"| {test} | {label} | {len(v)} | {med:.1f} ({min(v):.1f}-{max(v):.1f}) | {best:.1f} | "
                  f"{med / statistics.median(base[test]):.2f} | {best / max(base[test]):.2f} |")

main()
