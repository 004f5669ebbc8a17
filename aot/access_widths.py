"""Report how wide each aligned Triton variant's global memory accesses are.

    python -m aot.access_widths [--ops rope,rms_norm_rope_fwd] [--dtype bf16] [--cache DIR]

No GPU needed: compiles (or takes from the cache) each aligned variant's PTX and counts its
16-byte (`.v4`) global accesses against one-element ones (16-bit for fp16/bf16, 32-bit for
fp32).  An aligned variant whose main loop still accesses one element at a time is missing a
divisibility hint: usually an integer that bounds a column mask (a width, a count of pairs)
is not in the variant's aligned list (docs/design.md, "Alignment").  Some one-element
accesses are expected: stores done once per program (dweight rows) and rarely taken paths
(rope's pass-through columns).  Exit status 0; the table is for reading.
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path

from . import specs
from .compile import compile_triton

SCALAR = {"bf16": r"[bu]16", "fp16": r"[bu]16", "fp32": r"[buf]32"}


def widths(ptx: str, dtype: str) -> tuple[int, int]:
    """(one-element accesses, 16-byte accesses) among the PTX's global loads and stores."""
    one = len(re.findall(r"\b(?:ld|st)\.global(?:\.(?!v[24]\b)\w+)*\." + SCALAR[dtype] + r"\s", ptx))
    wide = len(re.findall(r"\b(?:ld|st)\.global(?:\.\w+)*\.v4\.", ptx))
    return one, wide


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m aot.access_widths", description=__doc__.splitlines()[0])
    ap.add_argument("--ops", default="", help="comma-separated op names (default: every Triton op)")
    ap.add_argument("--dtype", default="bf16", choices=sorted(SCALAR))
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "fusedaot-aot")
    args = ap.parse_args(argv)
    wanted = {o for o in args.ops.split(",") if o}
    unknown = wanted - {op.name for op in specs.OPS}
    if unknown:
        ap.error(f"unknown ops {sorted(unknown)}")
    print(f"{'variant':72s} {'1-elem':>6s} {'16-byte':>7s}")
    for op in specs.OPS:
        if op.lang != "triton" or (wanted and op.name not in wanted):
            continue
        for v in op.variants:
            if op.lang_of(v) != "triton" or v.dtype != args.dtype or v.unaligned or not v.aligned or "ptx" not in v.arches:
                continue
            image, _, _ = compile_triton(op, v, "ptx", args.cache)
            one, wide = widths(image.decode(errors="replace"), args.dtype)
            print(f"{v.name:72s} {one:6d} {wide:7d}{'   <- one-element accesses' if one else ''}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
