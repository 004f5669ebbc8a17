"""Turn the benchmarks' JSON lines into the compact markdown tables of docs/benchmarks.md.

    python benchmarks/report.py RESULTS.jsonl [...]

One table per (op, dtype): a row per shape with fusedaot's time, GB/s and % of the copy
bandwidth measured in the same run, each baseline's time and fusedaot's speed-up over it,
then the geometric mean of the speed-ups.  Host-time rows get their own table.
"""
from __future__ import annotations

import argparse
import collections
import json
import math

BASELINES = ("eager", "compile", "triton_jit")


def _load(paths):
    rows = []
    for p in paths:
        rows += [json.loads(line) for line in open(p) if line.strip()]
    return rows


def _geomean(xs):
    xs = [x for x in xs if x]
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else float("nan")


def device_tables(rows) -> str:
    groups = collections.defaultdict(lambda: collections.defaultdict(dict))
    runs = {}
    for r in rows:
        if r.get("mode") == "host" or "time_us" not in r:
            continue
        groups[(r["op"], r["dtype"])][tuple(r["shape"])][r["impl"]] = r
        runs[(r["op"], r["dtype"])] = (r["card"], r["driver"], r["torch"], r["date"][:10], r["copy_gbps"])
    out = []
    for (op, dtype), shapes in groups.items():
        base = [b for b in BASELINES if any(b in v for v in shapes.values())]
        card, driver, torch_v, date, copy = runs[(op, dtype)]
        byte_model = next(iter(shapes.values()))["fusedaot"].get("byte_model", "")
        out.append(f"#### {op}, {dtype}\n\n{card}, driver {driver}, torch {torch_v}, {date}; "
                   f"copy bandwidth {copy:.0f} GB/s. Bytes: {byte_model}.\n")
        out.append("| shape | fusedaot (us) | GB/s | % copy | " +
                   " | ".join(f"{b} (us) | vs {b}" for b in base) + " |")
        out.append("|---" * (4 + 2 * len(base)) + "|")
        ratios = collections.defaultdict(list)
        for shape, impls in shapes.items():
            f = impls.get("fusedaot")
            if not f:
                continue
            cells = ["x".join(map(str, shape)), f"{f['time_us']:.2f}", f"{f['gbps']:.0f}", f"{f['pct_copy']:.1f}"]
            for b in base:
                t = impls.get(b, {}).get("time_us")
                ratio = t / f["time_us"] if t else None
                ratios[b].append(ratio)
                cells += [f"{t:.2f}" if t else "n/a", f"{ratio:.2f}x" if ratio else "n/a"]
            out.append("| " + " | ".join(cells) + " |")
        out.append("\nGeometric mean of fusedaot's speed-up: " +
                   ", ".join(f"vs {b} {_geomean(ratios[b]):.3f}x (min {min(x for x in ratios[b] if x):.2f}x)"
                             for b in base if any(ratios[b])) + ".\n")
    return "\n".join(out)


def host_table(rows) -> str:
    host = [r for r in rows if r.get("mode") == "host"]
    if not host:
        return ""
    out = ["| op | shape | dtype | impl | host us/call | CUDA graph us/call |", "|---|---|---|---|---|---|"]
    for r in host:
        out.append(f"| {r['op']} | {'x'.join(map(str, r['shape']))} | {r['dtype']} | {r['impl']} | "
                   f"{r['time_us']:.2f} | {r.get('graph_us') or float('nan'):.2f} |")
    return "\n".join(out) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", nargs="+")
    rows = _load(ap.parse_args().results)
    print(device_tables(rows))
    print(host_table(rows))


if __name__ == "__main__":
    main()
