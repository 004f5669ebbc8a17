"""swiglu / geglu (Triton): forward and backward of act(gate) * up."""
from __future__ import annotations

from .core import ARCHES, DTYPES, Op, Param, Variant, merge_arches

# ---------------------------------------------------------------------------------
# out = act(gate) * up, elementwise over (M, N) rows; act = silu (swiglu_*) or gelu
# (geglu_*, approximate 0 = erf, 1 = tanh).  One kernel (_glu_fwd / _glu_bwd), the
# activation a constexpr.  The packed form [gate | up] (..., 2N) is the same call with
# up = gate + N and both row strides 2N (Python passes the pointers).
#
# A program owns a [ROWS, BLOCK_N] tile.  Narrow rows stack several rows per program;
# wider rows are split into BLOCK_N-column blocks, one row per program.
# ---------------------------------------------------------------------------------

# (widest N of the form or None for "any wider", BLOCK_N, ROWS, num_warps) per arch.
# Heuristic (sm80, sm89, ptx): a tile of 1K-2K elements and 8-16 per thread, i.e. one or
# two 16-byte accesses per thread and tensor (bf16/fp16), enough bytes in flight per SM
# to cover DRAM latency at 16 resident programs, no register pressure.  Wide rows use
# 1024-column blocks: for the FFN widths (11008 = 10.75 x 1024, 14336, 28672, and their
# tensor-parallel shards) at most one partly masked block per row.
SWIGLU_HEURISTIC = (
    (16, 16, 64, 4),
    (128, 128, 8, 4),
    (None, 1024, 1, 4),
)
# sm90: `benchmarks/bench_swiglu.py --modes tune` (Triton JIT, the same kernel) on an H200,
# 2026-11-26, 8192 x 14336 bf16: of nine wide-row tiles (BLOCK_N 256-4096, ROWS 1-4, 2-8 warps)
# the heuristic's (1024, 1, 4) was the fastest or within 0.3% of it for the silu and gelu-erf
# forwards and the silu backward; tiles of 4 elements per thread (512 x 4 warps, 1024 x 8 warps)
# lost up to 21% (gelu erf), 4096-column blocks 3-5%.  See docs/benchmarks.md.
SWIGLU_CONFIGS = {
    "sm90": SWIGLU_HEURISTIC,
}

ACTS = {"swiglu": ((None, "SILU", 0),),
        "geglu": (("approximate == 0", "GELU", 1), ("approximate == 1", "GELU_TANH", 2))}

_FWD_PARAMS = (
    Param("gate", "ptr"), Param("up", "ptr"), Param("out", "ptr"),
    Param("stride_gate", "i64"), Param("stride_up", "i64"), Param("M", "i64"), Param("N", "i64"),
)
_BWD_PARAMS = (
    Param("dy", "ptr"), Param("gate", "ptr"), Param("up", "ptr"), Param("dgate", "ptr"), Param("dup", "ptr"),
    Param("stride_dy", "i64"), Param("stride_gate", "i64"), Param("stride_up", "i64"),
    Param("stride_dx", "i64"), Param("M", "i64"), Param("N", "i64"),
)


def swiglu_configs(arch: str):
    return SWIGLU_CONFIGS.get(arch, SWIGLU_HEURISTIC)


def _variants(family: str, direction: str) -> tuple[Variant, ...]:
    """Conditions are disjoint: dtype x activation x width range x aligned or not."""
    params = _FWD_PARAMS if direction == "fwd" else _BWD_PARAMS
    aligned = tuple(p.name for p in params if p.ctype == "ptr" or p.name.startswith("stride_")) + ("N",)
    out = []
    for arch in ARCHES:
        for dtype in ("bf16", "fp16", "fp32"):
            for act_cond, act, act_code in ACTS[family]:
                lower = 0
                for widest, block_n, rows, warps in swiglu_configs(arch):
                    # the first range also takes N == 0 (an empty grid: no launch)
                    width = " && ".join(([f"N > {lower}"] if lower else []) + ([f"N <= {widest}"] if widest else []))
                    lower = widest
                    act_tag = "" if family == "swiglu" else ("_tanh" if act_code == 2 else "_erf")
                    for is_aligned in (True, False):
                        cond = [f"dtype == {DTYPES[dtype]}", width] + ([act_cond] if act_cond else [])
                        out.append(Variant(
                            name=f"{family}_{direction}_{dtype}{act_tag}_b{block_n}_r{rows}_w{warps}"
                                 f"{'_a16' if is_aligned else '_u'}",
                            dtype=dtype,
                            kernel=f"_glu_{direction}",
                            when=" && ".join(cond),
                            grid=(f"fa_cdiv(M, {rows}) * fa_cdiv(N, {block_n})", "1", "1"),
                            constexprs=dict(BLOCK_N=block_n, ROWS=rows, ACT=act_code),
                            num_warps=warps,
                            aligned=aligned,
                            unaligned=not is_aligned,
                            arches=(arch,),
                        ))
    return merge_arches(out)


OPS = (
    Op("swiglu_fwd", "triton", "kernels/triton/swiglu.py", _FWD_PARAMS, _variants("swiglu", "fwd"),
       doc="out = silu(gate) * up; out contiguous (M, N)"),
    Op("swiglu_bwd", "triton", "kernels/triton/swiglu.py", _BWD_PARAMS, _variants("swiglu", "bwd"),
       doc="dgate = dy * up * silu'(gate), dup = dy * silu(gate); dgate, dup rows stride_dx apart"),
    Op("geglu_fwd", "triton", "kernels/triton/swiglu.py", _FWD_PARAMS + (Param("approximate", "i32"),),
       _variants("geglu", "fwd"), doc="out = gelu(gate) * up (approximate: 0 erf, 1 tanh); out contiguous (M, N)"),
    Op("geglu_bwd", "triton", "kernels/triton/swiglu.py", _BWD_PARAMS + (Param("approximate", "i32"),),
       _variants("geglu", "bwd"),
       doc="dgate = dy * up * gelu'(gate), dup = dy * gelu(gate) (approximate: 0 erf, 1 tanh)"),
)
