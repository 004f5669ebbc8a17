"""Sweep of reduce_cols' tile and split: reduce_sum_squared(x, 0) through the installed wheel with
(L, S) forced, against the pick of ops/reduce._cols_launch and torch.compile.

For each shape every L (16-byte lanes of a block across a row) in 2, 4, 8, 16 by every S (chunks
of the reduced dimension) in 1, 2, 3, 5, 9, 17, 33 that leaves each thread a trip of rows; every
form is timed twice, round robin, and the lower median kept. The rule in _cols_launch came from
this sweep (docs/benchmarks.md, "Reductions over a leading dimension: narrow tiles").
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness as H  # noqa: E402

SHAPES = [((4096, 4096), "bf16"), ((16384, 1024), "bf16"), ((1024, 16384), "bf16"), ((32768, 1024), "bf16"),
          ((2048, 2048), "bf16"), ((8192, 8192), "bf16"), ((2048, 11008), "bf16"), ((65536, 4096), "bf16"),
          ((8192, 1024), "bf16"), ((4096, 2048), "bf16"), ((512, 16384), "bf16"), ((16384, 4096), "bf16"),
          ((4096, 4096), "fp32"), ((4096, 4096), "fp16"), ((2048, 14336), "bf16")]
LANES = (2, 4, 8, 16)
SPLITS = (1, 2, 3, 5, 9, 17, 33)


def forms(r: int, n: int, vec: int, sms: int, rule) -> list[tuple[int, int]]:
    """The (L, S) pairs timed for an (r, n) x: each thread keeps at least one trip of 8 rows."""
    pick = rule(1, r, n, vec, sms)
    return sorted({(lanes, s) for lanes in LANES for s in SPLITS if s <= math.ceil(r / (128 // lanes * 8))} | {pick})


def sweep_shape(fa, red, r: int, n: int, dtype: torch.dtype, sms: int, l2_bytes: int) -> dict:
    rule = red._cols_launch
    vec = 16 // dtype.itemsize
    sets = H.input_sets(lambda: (torch.randn(r, n, device="cuda", dtype=dtype),), r * n * dtype.itemsize, 0, l2_bytes)
    ref = sets[0][0].double().square().sum(0)

    def forced(lanes: int, s: int):
        def f(x):
            red._cols_launch = lambda *a: (lanes, s)
            try:
                return fa.reduce_sum_squared(x, 0)
            finally:
                red._cols_launch = rule
        return f
    compiled = H.fresh_compile(lambda x: x.float().square().sum(0).to(x.dtype))
    if isinstance(compiled, str):
        raise RuntimeError(compiled)
    impls = {"compile": compiled, "rule": lambda x: fa.reduce_sum_squared(x, 0)}
    impls.update({f"L{lanes}_S{s}": forced(lanes, s) for lanes, s in forms(r, n, vec, sms, rule)})
    times = {}
    for name, f in impls.items():
        err = float(((f(*sets[0]).double() - ref).abs() / (ref.abs() + 1e-3)).max())
        if err > 2e-2:
            raise RuntimeError(f"{name} at {r}x{n}: relative error {err:.3g}")
        times[name] = math.inf
    for _ in range(2):
        for name, f in impls.items():
            times[name] = min(times[name], H.time_device(f, sets, warmup_ms=10, rep_ms=50))
    return {"shape": [r, n], "dtype": H.DTYPE_NAMES[dtype], "rule_pick": list(rule(1, r, n, vec, sms)),
            "us": {k: round(v, 2) for k, v in times.items()},
            "x_compile": {k: round(times["compile"] / v, 3) for k, v in times.items()}}


def main():
    p = H.arg_parser(__doc__.strip().splitlines()[0])
    args = p.parse_args()
    if not torch.cuda.is_available():
        sys.exit("sweep_reduce_cols: no CUDA device is visible; run it on a machine with a GPU")
    fa, about = H.import_fusedaot()
    if fa is None:
        sys.exit(f"sweep_reduce_cols: {about}")
    from fusedaot.ops import reduce as red
    header = H.device_header(fusedaot=about)
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    for (r, n), dt in SHAPES[:3] if args.quick else SHAPES:
        row = sweep_shape(fa, red, r, n, H.DTYPES[dt], sms, header["l2_bytes"])
        best = sorted(row["x_compile"].items(), key=lambda kv: -kv[1])[:5]
        print(f"{r}x{n} {dt}: rule {tuple(row['rule_pick'])} {row['x_compile']['rule']:.3f}x compile; best "
              + ", ".join(f"{k} {v:.3f}x" for k, v in best), flush=True)
        if args.out:
            with open(args.out, "a") as fh:
                fh.write(json.dumps({**row, "card": header["card"], "copy_gbps": header["copy_gbps"],
                                     "date": header["date"]}) + "\n")
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
