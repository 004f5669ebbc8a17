"""rms_norm_rope (Triton, kernels/triton/rope.py): RMSNorm then RoPE in one pass, fwd, bwd, dweight."""
from __future__ import annotations

from .core import DTYPES, Op, Param, Variant

# ---------------------------------------------------------------------------------
# A program's tile is HEADS heads x BLOCK_D columns (BLOCK_D a power of two, held as two
# [HEADS, BLOCK_D/2] pair tiles).  Forward: one program per token (per_head: per token and
# chunk of HEADS heads); a group that fits one tile (D <= BLOCK_D, and per_head or
# H <= HEADS) is read once, any other in two passes.  Backward: G programs walk the tokens,
# two passes per group, dweight's terms added up in each program's own fp32 row.  The layout
# is a constexpr: one C function per layout and direction.
#
# (largest head_dim, BLOCK_D, HEADS, num_warps), head_dim in ranges: 4096-value tiles, 16
# values per thread with 8 warps, so that a 32 x 128 row (Llama's q) is one tile.  Wider heads
# take the last entry and its column loop.  Layouts without 16-byte alignment share one
# variant.  Measured on an H100 (docs/benchmarks.md) this is register-bound: 172 registers per
# thread in the forward (half layout), 255 in the backward, one program per SM, ~18% of copy
# bandwidth.  Smaller tiles (8 heads on 4 warps: 72 registers) are the next thing to time.
# sm80/sm89 (not measured) use the same table.
# ---------------------------------------------------------------------------------
RMS_NORM_ROPE_BLOCKS = (
    (64, 64, 64, 8),
    (128, 128, 32, 8),
    (None, 256, 16, 8),
)
RMS_NORM_ROPE_UNALIGNED = (128, 32, 8)
RMS_NORM_ROPE_DW = (32, 64, 4)   # columns per program, partial rows per step, warps

_FWD_PARAMS = (
    Param("x", "ptr"), Param("w", "ptr"), Param("cos", "ptr"), Param("sin", "ptr"),
    Param("pos", "ptr", "i64"), Param("y", "ptr"),
    Param("stride_xb", "i64"), Param("stride_xs", "i64"), Param("stride_yb", "i64"), Param("stride_ys", "i64"),
    Param("stride_wh", "i64"), Param("stride_cb", "i64"), Param("stride_cs", "i64"), Param("stride_pb", "i64"),
    Param("M", "i32"), Param("S", "i32"), Param("H", "i32"), Param("N", "i32"), Param("pairs", "i32"),
    Param("P", "i32"), Param("eps", "f32"), Param("per_head", "i32"),
    Param("flags", "i32"),   # 1: positions given, 2: half tables (rotary_dim/2 columns)
)
_BWD_PARAMS = (
    Param("dy", "ptr"), Param("x", "ptr"), Param("w", "ptr"), Param("cos", "ptr"), Param("sin", "ptr"),
    Param("pos", "ptr", "i64"), Param("dx", "ptr"), Param("dw_partial", "ptr", "fp32"),
    Param("stride_dyb", "i64"), Param("stride_dys", "i64"), Param("stride_xb", "i64"), Param("stride_xs", "i64"),
    Param("stride_dxb", "i64"), Param("stride_dxs", "i64"), Param("stride_wh", "i64"),
    Param("stride_cb", "i64"), Param("stride_cs", "i64"), Param("stride_pb", "i64"),
    Param("M", "i32"), Param("S", "i32"), Param("H", "i32"), Param("N", "i32"), Param("pairs", "i32"),
    Param("P", "i32"), Param("eps", "f32"), Param("per_head", "i32"), Param("flags", "i32"),
    Param("G", "i32"), Param("W", "i32"),
)
_DW_PARAMS = (Param("dw_partial", "ptr", "fp32"), Param("dw", "ptr"), Param("G", "i32"), Param("W", "i32"))
# pairs need not be aligned: with N (head_dim) and the row strides aligned, only the second
# half of the half layout may lose its 16-byte accesses (rotary_dim/2 not a multiple of 8).
_ALIGNED = {
    "fwd": ("x", "w", "cos", "sin", "y", "stride_xb", "stride_xs", "stride_yb", "stride_ys", "stride_wh",
            "stride_cb", "stride_cs", "N"),
    "bwd": ("dy", "x", "w", "cos", "sin", "dx", "stride_dyb", "stride_dys", "stride_xb", "stride_xs",
            "stride_dxb", "stride_dxs", "stride_wh", "stride_cb", "stride_cs", "N"),
}


def _grid(direction: str, heads: int):
    if direction == "fwd":   # one program per token, and per chunk of heads when per_head
        return ("M", f"fa_max(1, per_head * fa_cdiv(H, {heads}))", "1")
    return ("G", "1", "1")


def _variants(direction: str, interleaved: bool) -> tuple[Variant, ...]:
    """Disjoint conditions: aligned calls by ranges of head_dim N, unaligned ones to one variant."""
    op = f"rms_norm_rope_{direction}" + ("_interleaved" if interleaved else "")
    configs = [(True, f"N > {lo}" + (f" && N <= {hi}" if hi else ""), rest)
               for lo, (hi, *rest) in zip((0,) + tuple(b[0] for b in RMS_NORM_ROPE_BLOCKS), RMS_NORM_ROPE_BLOCKS)]
    configs.append((False, "N > 0", RMS_NORM_ROPE_UNALIGNED))
    out = []
    for dtype in ("bf16", "fp16", "fp32"):
        for aligned, width, (block_d, heads, warps) in configs:
            out.append(Variant(
                name=f"{op}_{dtype}_d{block_d}_h{heads}_w{warps}{'_a16' if aligned else '_u'}",
                dtype=dtype,
                kernel=f"_rms_norm_rope_{direction}",
                when=f"dtype == {DTYPES[dtype]} && {width}",
                grid=_grid(direction, heads),
                constexprs=dict(BLOCK_D=block_d, HEADS=heads, INTERLEAVED=interleaved),
                num_warps=warps,
                aligned=_ALIGNED[direction],
                unaligned=not aligned,
            ))
    return tuple(out)


def _dw_variants() -> tuple[Variant, ...]:
    block_n, block_g, warps = RMS_NORM_ROPE_DW
    return tuple(Variant(
        name=f"rms_norm_rope_dw_{dtype}_b{block_n}_g{block_g}_w{warps}",
        dtype=dtype,
        kernel="_rms_norm_rope_dw",
        when=f"dtype == {DTYPES[dtype]}",
        grid=(f"fa_cdiv(W, {block_n})", "1", "1"),
        constexprs=dict(BLOCK_N=block_n, BLOCK_G=block_g),
        num_warps=warps,
    ) for dtype in ("bf16", "fp16", "fp32"))


_SRC = "kernels/triton/rope.py"
OPS = (
    Op("rms_norm_rope_fwd", "triton", _SRC, _FWD_PARAMS, _variants("fwd", False),
       doc="y = rope(rms_norm(x) * w), half-split layout; per_head: norm over each head"),
    Op("rms_norm_rope_fwd_interleaved", "triton", _SRC, _FWD_PARAMS, _variants("fwd", True),
       doc="y = rope(rms_norm(x) * w), interleaved layout; per_head: norm over each head"),
    Op("rms_norm_rope_bwd", "triton", _SRC, _BWD_PARAMS, _variants("bwd", False),
       doc="dx, and dw as per-program partial sums (G, W) fp32; half-split layout"),
    Op("rms_norm_rope_bwd_interleaved", "triton", _SRC, _BWD_PARAMS, _variants("bwd", True),
       doc="dx, and dw as per-program partial sums (G, W) fp32; interleaved layout"),
    Op("rms_norm_rope_dw", "triton", _SRC, _DW_PARAMS, _dw_variants(),
       doc="dw = sum of the partial rows, in the weight's dtype"),
)
