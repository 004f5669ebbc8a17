"""rope (Triton, kernels/triton/rope.py; CUDA C++, kernels/cuda/rope.cu): rotary embedding of q and k in
one launch, fwd and bwd."""
from __future__ import annotations

from .core import DTYPES, Op, Param, Variant

# ---------------------------------------------------------------------------------
# One program rotates HEADS heads of one token (q's heads, then k's) through a tile of
# [HEADS, BLOCK_N] pairs; heads whose pairs exceed BLOCK_N take several steps.  The
# backward is the same kernel with backward=1 (the rotation by -theta).
#
# The layout (half-split or interleaved) is a constexpr: one C function per layout.
#
# (largest N = rotary_dim/2, BLOCK_N, HEADS, num_warps): 16 pairs a thread (one 16-byte
# access of each half per 8 pairs in 16-bit dtypes) on one warp, two for head_dim 256.  Timed
# through Triton's JIT on an H100 (2026-11-26, bf16, 16384 tokens x 32/8 heads;
# docs/results/rope_tile_sweep_h100.jsonl; HEADS 1-32 x 1-8 warps): at head_dim 64, 16 heads on
# 1 warp 82.9% of copy against 62.5% on 2 warps; at 128, 8 heads on 1 warp 86.7% (2 warps
# 85.6%; 88.2% at 64/8 heads); at 256, 8 heads on 2 warps 92.1% against 87.2% for 4.  Small
# programs win: many share an SM and each finishes its heads without a block-wide wait.
# head_dim <= 32 keeps the same 512 pairs a warp, not timed.  sm80/sm89 (not measured) use the
# same table.
# ---------------------------------------------------------------------------------
# The last column caps the 16-bit aligned variants' registers a thread (maxnreg, below).
ROPE_BLOCKS = (
    (16, 16, 32, 1, None),   # head_dim <= 32 (not timed; capped at 72 it would spill 24-32 bytes)
    (32, 32, 16, 1, 72),     # head_dim <= 64
    (64, 64, 8, 1, 72),      # head_dim <= 128 (80, 96, 112, 128)
    (None, 128, 8, 2, 72),   # wider: head_dim 256 in one step, wider heads in several
)
ROPE_UNALIGNED = (64, 8, 2)   # BLOCK_N, HEADS, num_warps for layouts without 16-byte alignment
# maxnreg: 16-bit aligned variants take at most 72 registers a thread.  Uncapped the
# one-warp tiles took 80-87, 24 blocks an SM; capped, every block slot of the SM fills.  The
# same tiles through the JIT with caps 56-72 (docs/results/rope_maxnreg_h100.jsonl, bf16,
# 16384 tokens x 32/8 heads): head_dim 128 86.7 -> 93.5% of copy (64/8 heads 88.0 -> 94.5%),
# 64 82.7 -> 85.4%, 256 92.0 -> 95.1%, 2048 tokens x 128 74.3 -> 77.9%; 72 was best at every
# shape, 64 and 56 gained less.  fp32 (not timed) stays uncapped.

_ROPE_PARAMS = (
    Param("q", "ptr"), Param("k", "ptr"), Param("cos", "ptr"), Param("sin", "ptr"),
    Param("pos", "ptr", "i64"), Param("q_out", "ptr"), Param("k_out", "ptr"),
    Param("stride_qb", "i64"), Param("stride_qs", "i64"), Param("stride_qh", "i64"),
    Param("stride_kb", "i64"), Param("stride_ks", "i64"), Param("stride_kh", "i64"),
    Param("stride_oqb", "i64"), Param("stride_oqs", "i64"), Param("stride_oqh", "i64"),
    Param("stride_okb", "i64"), Param("stride_oks", "i64"), Param("stride_okh", "i64"),
    Param("stride_cb", "i64"), Param("stride_cs", "i64"), Param("stride_pb", "i64"),
    Param("M", "i32"), Param("S", "i32"), Param("Hq", "i32"), Param("Hk", "i32"),
    Param("N", "i32"), Param("D", "i32"), Param("P", "i32"),
    Param("flags", "i32"),   # 1: positions given, 2: half tables (rotary_dim/2 columns), 4: backward
)
_ALIGNED = ("q", "k", "cos", "sin", "q_out", "k_out",
            "stride_qb", "stride_qs", "stride_qh", "stride_kb", "stride_ks", "stride_kh",
            "stride_oqb", "stride_oqs", "stride_oqh", "stride_okb", "stride_oks", "stride_okh",
            "stride_cb", "stride_cs", "N", "D")


def _variant(op: str, dtype: str, interleaved: bool, block_n: int, heads: int, warps: int, maxnreg, width: str,
             aligned: bool) -> Variant:
    maxnreg = maxnreg if aligned and dtype != "fp32" else None
    return Variant(
        name=f"{op}_{dtype}_n{block_n}_h{heads}_w{warps}{f'_r{maxnreg}' if maxnreg else ''}"
             f"{'_a16' if aligned else '_u'}",
        dtype=dtype,
        kernel="_rope",
        when=f"dtype == {DTYPES[dtype]} && {width}",
        # one program per (token, chunk of HEADS heads)
        grid=(f"M * fa_cdiv(Hq + Hk, {heads})", "1", "1"),
        constexprs=dict(BLOCK_N=block_n, HEADS=heads, INTERLEAVED=interleaved),
        num_warps=warps,
        maxnreg=maxnreg,
        aligned=_ALIGNED,
        unaligned=not aligned,
    )


# 16-bit, half-split, aligned, the op's D (head_dim, or 2R in place) 64, 128 or 256, with enough
# tokens: the CUDA C++ kernel kernels/cuda/rope.cu, one warp a block holding a token's chunk of
# heads (4 passes of D / 8 lanes a head), all loads in flight before the first rotation.  Against
# the Triton tiles (H100, bf16, 32/8 heads, docs/benchmarks.md, "RoPE in CUDA C++"): forward at
# 16384 tokens 90.8% of copy against 84.8% at head_dim 64, 95.8% against 92.6% at 128, 98.0%
# against 94.5% at 256; 1.02-1.10x at 128 and 2048 tokens.  At few tokens (1-128, us) the Triton
# tiles lead by 0.1-0.4 us up to 64 tokens at 64, 32 at 128 and 16 at 256 (e.g. 5.50 against
# 5.22 at 32 x 128), the CUDA kernel from twice those (5.76 against 6.02 at 64 x 128).
# {D: the kernel takes calls of more tokens than this}
ROPE_CUDA = {64: 64, 128: 32, 256: 16}
ROPE_CUDA_PASSES = 4   # head groups a warp (kernels/cuda/rope.cu: ROPE_PASSES)


def cuda_heads_a_warp(head_dim: int, passes: int) -> int:
    """Heads a warp of the CUDA C++ kernels (kernels/cuda/rope.cuh's layout) holds: a head's
    head_dim 16-bit values across head_dim / 8 lanes, 32 / (head_dim / 8) heads a pass."""
    return 32 * 8 // head_dim * passes


def _cuda_takes(d: int) -> str:
    """The calls the CUDA C++ variant of D = d takes."""
    return f"D == {d} && M > {ROPE_CUDA[d]}"


_CUDA = " || ".join(f"({_cuda_takes(d)})" for d in ROPE_CUDA)


def _cuda_variants(dtype: str) -> list[Variant]:
    return [Variant(
        name=f"rope_{dtype}_cuda_d{d}_a16",
        dtype=dtype,
        kernel=f"rope_{dtype}_d{d}",
        when=f"dtype == {DTYPES[dtype]} && {_cuda_takes(d)}",
        grid=(f"(int64_t)M * fa_cdiv(Hq + Hk, {cuda_heads_a_warp(d, ROPE_CUDA_PASSES)})", "1", "1"),
        block=("32", "1", "1"),
        aligned=_ALIGNED,
        source="kernels/cuda/rope.cu",
    ) for d in ROPE_CUDA]


def _rope_variants(op: str, interleaved: bool) -> tuple[Variant, ...]:
    """Disjoint conditions: aligned calls by ranges of N, every unaligned call to one fallback;
    the half-split layout's 16-bit calls that the CUDA C++ variants take left out of the rest."""
    out = []
    for dtype in ("bf16", "fp16", "fp32"):
        cuda = not interleaved and dtype != "fp32"
        if cuda:
            out += _cuda_variants(dtype)
        lower = 0
        for upper, block_n, heads, warps, maxnreg in ROPE_BLOCKS:
            width = f"N > {lower}" + (f" && N <= {upper}" if upper else "") + (f" && !({_CUDA})" if cuda else "")
            out.append(_variant(op, dtype, interleaved, block_n, heads, warps, maxnreg, width, True))
            lower = upper
        out.append(_variant(op, dtype, interleaved, *ROPE_UNALIGNED, None, "N > 0", False))
    return tuple(out)


# The layout is a constexpr of the kernel, so each layout is its own C function.
OPS = (
    Op("rope", "triton", "kernels/triton/rope.py", _ROPE_PARAMS, _rope_variants("rope", False),
       doc="rotary embedding of q and k, half-split layout (rotate_half); backward=1: by -theta"),
    Op("rope_interleaved", "triton", "kernels/triton/rope.py", _ROPE_PARAMS,
       _rope_variants("rope_interleaved", True),
       doc="rotary embedding of q and k, interleaved layout (pairs 2i, 2i+1); backward=1: by -theta"),
)
