"""Tune the kernels' launch configs on a real GPU and write the arch's tuning table.

    python -m aot.tune --out aot/tuning/sm90.json [--quick]

Updates rms_norm's entries in an existing table and keeps everything else in it.

Needs a GPU, torch and Triton (the same Triton version the build pins: the JIT compiles
exactly what the AOT build will).  For each row-width bucket of each tunable op it times
every candidate (ROWS, num_warps, num_stages) at a bandwidth-bound size and keeps the fastest.  The
build reads the table through aot/specs/; arches without a table use its heuristics.
"""
from __future__ import annotations

import argparse
import datetime
import functools
import inspect
import itertools
import json
import statistics
from pathlib import Path

from . import specs

CANDIDATE_WARPS = (2, 4, 8, 16, 32)
TORCH_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}   # the spec table's names
ELEMENTS = 1 << 26   # M * N of each timing: 128 MiB of bf16, far beyond L2


def _time_us(fn, reps: int = 15, batch: int = 8) -> float:
    """Median over `reps` of the mean time of `batch` back-to-back launches: the batch keeps
    the GPU busy while Triton's launcher runs on the host, so its overhead is not timed."""
    import torch
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(batch):
            fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) * 1e3 / batch)
    return statistics.median(times)


def _candidates(block: int, looped: bool, stages=(1,)):
    """(ROWS, num_warps) pairs with a tile of 1K-16K elements (one row when wider) and
    8-32 values of it per thread (at least one 16-byte access, no spills)."""
    rows_options = [1] if looped else [r for r in (1, 2, 4, 8, 16, 32, 64, 128, 256)
                                       if 1024 <= r * block <= 16384 or (r == 1 and block > 16384)]
    for rows in rows_options:
        for warps in CANDIDATE_WARPS:
            if 8 <= rows * block / (32 * warps) <= 32:
                for s in stages:
                    yield rows, warps, s


def _best(direction: str, dtype, n: int, block: int, looped: bool, candidates) -> tuple | None:
    """(us, ROWS, num_warps, num_stages, LEAN) of the fastest candidate at row width n."""
    import torch
    import triton

    from .compile import _triton_module

    # M and G unspecialised, as in the AOT images (the JIT would assume M % 16 == 0 where it is)
    fn = getattr(_triton_module("kernels/triton/rms_norm.py"), f"_rms_norm_{direction}").fn
    kernel = triton.jit(do_not_specialize=[a for a in ("M", "G") if a in inspect.signature(fn).parameters])(fn)
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    m = max(1, ELEMENTS // n)
    x = torch.randn(m, n, device="cuda", dtype=dtype)
    w = torch.randn(n, device="cuda", dtype=dtype)
    out = torch.empty_like(x)
    dy = torch.randn_like(x)
    g = _backward_programs()(m, n, sms)
    part = torch.empty(g, n, device="cuda", dtype=torch.float32)
    best = None
    # the backward's single block has a LEAN form for rows whose strides are all equal (these are)
    for (rows, warps, stages), lean in itertools.product(candidates, (False, True) if direction == "bwd" and not looped else (False,)):
        consts = dict(BLOCK_N=block, ROWS=rows, HAS_W=True, LOOPED=looped, num_warps=warps, num_stages=stages)
        if direction == "fwd":
            def run():
                kernel[(triton.cdiv(m, rows),)](x, out, w, n, n, m, n, 1e-6, None, None, 0, 0,
                                                HAS_RES=False, UNROLL=None, **consts)
        else:
            def run():
                kernel[(g,)](dy, x, w, out, part, w, n, n, n, m, n, 1e-6, g, None, 0, HAS_DRES=False,
                             LEAN=lean, **consts)
        try:
            us = _time_us(run)
        except Exception as e:  # a config the compiler rejects (e.g. out of resources)
            print(f"  {direction} {dtype} N {n} block {block} {rows}/{warps}/{stages}: failed: {e}")
            continue
        gbps = (2 if direction == "fwd" else 3) * x.numel() * x.element_size() / us / 1e3  # x, y [, dy]
        print(f"  {direction} {str(dtype):14s} N {n:6d} {'loop' if looped else 'block'} {block:6d} rows {rows:3d} "
              f"warps {warps:2d} stages {stages}{' lean' if lean else ''}: {us:8.1f} us {gbps:7.0f} GB/s", flush=True)
        if best is None or us < best[0]:
            best = (us, rows, warps, stages, lean)
    return best


@functools.lru_cache(maxsize=None)
def _backward_programs():
    """The backward's program count as the op launches it: python/fusedaot/ops/rms_norm.py's
    _programs, from this source tree (the package need not be installed)."""
    import sys
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "python"))
    from fusedaot.ops.rms_norm import _programs
    return _programs


def tune_rms_norm(direction: str, name: str, quick: bool) -> dict:
    """{str(BLOCK_N): [ROWS, warps, stages], "loop": [...], "loop_above": BLOCK_N}, and for the
    backward "lean": the BLOCK_Ns whose fastest form is the LEAN one (equal row strides)."""
    import torch

    dtype = getattr(torch, TORCH_DTYPES[name])
    # the backward loops over rows: let Triton's pipeliner try to prefetch the next rows
    stages = (1,) if direction == "fwd" else (1, 3)
    table, single = {}, {}
    blocks = [b for b, _, _ in specs.rms_norm.RMS_NORM_BLOCKS]
    for block in blocks[-3:] if quick else blocks:
        best = _best(direction, dtype, block, block, False, _candidates(block, False, stages))
        if best:
            single[block] = best
            table[str(block)] = list(best[1:4])
    if direction == "bwd":
        table["lean"] = {name: sorted(b for b, v in single.items() if v[4])}
    chunk = specs.rms_norm.RMS_NORM_LOOP[0]
    loop = _best(direction, dtype, 4 * chunk, chunk, True, _candidates(chunk, True, stages))
    table["loop"] = list(loop[1:4])
    # Wide single blocks can lose to the looped form (registers run out): find the crossover.
    for block in [b for b in sorted(single) if b >= chunk]:
        looped = _best(direction, dtype, block, chunk, True, [tuple(loop[1:4])])
        if looped and looped[0] < single[block][0]:
            table["loop_above"] = max([b for b in single if b < block], default=chunk)
            break
    print(f"{direction} {dtype}: {table}", flush=True)
    return table


def main(argv=None):
    import torch
    import triton

    ap = argparse.ArgumentParser(prog="python -m aot.tune", description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--quick", action="store_true", help="only the widest buckets")
    args = ap.parse_args(argv)
    major, minor = torch.cuda.get_device_capability()
    result = {"arch": f"sm{major}{minor}", "card": torch.cuda.get_device_name(),
              "date": datetime.date.today().isoformat(), "triton": triton.__version__,
              "torch": torch.__version__}
    # Only rms_norm's entries change: the table's other keys (other ops, notes, the looped forms'
    # extra entries such as loop_fused and loop_wide) are kept as they are.
    table = json.loads(args.out.read_text()) if args.out.exists() else {}
    table.update(result)
    for direction in ("fwd", "bwd"):
        entries = table.setdefault(f"rms_norm_{direction}", {})
        for name in ("bf16", "fp32"):   # one table per element size
            entries.setdefault(str(specs.ELEM_BYTES[name]), {}).update(tune_rms_norm(direction, name, args.quick))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(table, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
