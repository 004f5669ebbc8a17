"""rms_norm (Triton; wide 16-bit rows' forward in CUDA C++): forward, backward and the dweight reduction."""
from __future__ import annotations

import itertools

from .core import (ARCHES, DTYPES, ELEM_BYTES, Op, Param, Variant, block_entries, held_row_forms, loop_entry,
                   merge_arches, tuning)

# ---------------------------------------------------------------------------------
# rms_norm (Triton): y = x * rsqrt(mean(x^2) + eps) * w, rows of x strided.
#
# Single-block variants hold a [ROWS, BLOCK_N] tile in registers; BLOCK_N is the next
# power of two >= N.  Rows wider than the largest single block use the looped variant,
# which reads the row twice (the second read mostly hits L2).
# ---------------------------------------------------------------------------------

# (BLOCK_N, ROWS per program, num_warps): the heuristic for arches without a tuning table.
# Keep the tile at >= 4K elements so that a program has enough loads in flight, and 8-32
# elements per thread so that the row stays in registers without spilling.
RMS_NORM_BLOCKS = (
    (16, 128, 4),
    (64, 64, 4),
    (256, 16, 4),
    (1024, 4, 4),
    (2048, 2, 4),
    (4096, 1, 8),
    (8192, 1, 8),
    (16384, 1, 16),
    (32768, 1, 16),
)
RMS_NORM_LOOP = (8192, 16)   # chunk width and warps of the looped variant
# The forward of 16-bit rows wider than RMS_NORM_CUDA_ABOVE, 16-byte aligned, from
# RMS_NORM_CUDA_ROWS rows, in CUDA C++ (kernels/cuda/rms_norm.cu): one block of 512 threads a row
# held on chip (4 vectors a thread in registers, 12 in shared memory), so x is read once where the
# Triton loop reads it twice.  RMS_NORM_CUDA: (form, widest N, vectors a thread in shared
# memory), as LAYER_NORM_CUDA; each form has an entry point with a weight and one without
# (`_nw`), the weight's presence fixed at compile time (optional at run time, the form spilled).
# Through ctypes on an H100 (bf16, with a weight, % of copy, docs/benchmarks.md, "LayerNorm's
# wide rows in CUDA C++"): 1024 x 65536 89.5% against 86.2%, 4096 x 65536 97.7% against 95.3%,
# 16384 x 65536 99.9% against 98.5%, 4096 x 49152 96.8% against 93.1%; level at 256 rows.
RMS_NORM_CUDA_ABOVE, RMS_NORM_CUDA_ROWS = 32768, 1024
RMS_NORM_CUDA = (("n65536", 65536, 12),)
RMS_NORM_CUDA_THREADS = 512   # kernels/cuda/rms_norm.cu's RMS_NORM_THREADS
_CUDA_FWD = f"M >= {RMS_NORM_CUDA_ROWS} && N > {RMS_NORM_CUDA_ABOVE} && N <= {RMS_NORM_CUDA[-1][1]}"

def rms_norm_configs(arch: str, direction: str, dtype: str, fused: bool = False, aligned: bool = True):
    """[(BLOCK_N, ROWS, num_warps, num_stages, looped, widest N or None, unroll)] for one arch:
    tuned where measured, else heuristic.  A tuning entry is [ROWS, num_warps] or [ROWS,
    num_warps, num_stages]; "loop_above" is the widest single block worth using (the looped
    form is faster beyond), whose entry "loop" may add its chunk width and unroll factor
    (core.loop_entry).  fused (fused_add_rms_norm): "loop_fused", in the same form, replaces
    "loop" where the table has it: that form moves twice the bytes per chunk (x and r in, s
    out, then s back from L2), and a wider chunk keeps more of them in flight.  "loop_wide",
    in the same form, takes aligned rows wider than "loop_wide_above" (plain rms_norm only):
    unrolled chunks put a whole row's loads in flight, which the 16-bit accesses of unaligned
    rows cannot afford in registers."""
    table = tuning(arch).get(f"rms_norm_{direction}", {}).get(str(ELEM_BYTES[dtype]), {})
    out = block_entries(table, RMS_NORM_BLOCKS, table.get("loop_above", RMS_NORM_BLOCKS[-1][0]))
    key = "loop_fused" if fused and "loop_fused" in table else "loop"
    wide = "loop_wide" in table and aligned and not fused
    chunk, rows, warps, stages, unroll = loop_entry(table.get(key, (1, RMS_NORM_LOOP[1])), RMS_NORM_LOOP[0])
    out.append((chunk, rows, warps, stages, True, table["loop_wide_above"] if wide else None, unroll))
    if wide:
        chunk, rows, warps, stages, unroll = loop_entry(table["loop_wide"], RMS_NORM_LOOP[0])
        out.append((chunk, rows, warps, stages, True, None, unroll))
    return out


def lean_blocks(arch: str, dtype: str) -> tuple[int, ...]:
    """The single-block widths (BLOCK_N) whose backward has a LEAN variant (kernels/triton/
    rms_norm.py) for aligned calls where every row stride equals x's: the tuning table's
    rms_norm_bwd "lean" for this dtype, none without a table.  Per dtype, not per element size:
    at 16384-wide rows on an H200 it made bf16 1.10-1.14x faster and fp16 1-3% slower."""
    table = tuning(arch).get("rms_norm_bwd", {}).get(str(ELEM_BYTES[dtype]), {})
    return tuple(table.get("lean", {}).get(dtype, ()))


_RMS_FWD_PARAMS = (
    Param("x", "ptr"), Param("y", "ptr"), Param("w", "ptr"),
    Param("stride_x", "i64"), Param("stride_y", "i64"),
    Param("M", "i32"), Param("N", "i32"), Param("eps", "f32"),
)
_RMS_BWD_PARAMS = (
    Param("dy", "ptr"), Param("x", "ptr"), Param("w", "ptr"), Param("dx", "ptr"),
    Param("dw_partial", "ptr", "fp32"), Param("dw", "ptr"),
    Param("stride_dy", "i64"), Param("stride_x", "i64"), Param("stride_dx", "i64"),
    Param("M", "i32"), Param("N", "i32"), Param("eps", "f32"), Param("G", "i32"),
)


# fused_add_rms_norm: s = x + r is written and normalized; its backward adds dres, the gradient
# that reached s directly, to dx.  The weight is required (w != 0 is not a condition).
_ADD_FWD_PARAMS = (
    Param("x", "ptr"), Param("r", "ptr"), Param("w", "ptr"), Param("y", "ptr"), Param("s", "ptr"),
    Param("stride_x", "i64"), Param("stride_r", "i64"), Param("stride_y", "i64"), Param("stride_s", "i64"),
    Param("M", "i32"), Param("N", "i32"), Param("eps", "f32"),
)
_ADD_BWD_PARAMS = _RMS_BWD_PARAMS[:6] + (Param("dres", "ptr"),) + _RMS_BWD_PARAMS[6:9] + (
    Param("stride_dres", "i64"),) + _RMS_BWD_PARAMS[9:]
# What the plain rms_norm variants pass for the residual arguments: nothing (constexpr).
_NO_RESIDUAL = {"fwd": dict(r=None, s=None, stride_r=0, stride_s=0, HAS_RES=False),
                "bwd": dict(dres=None, stride_dres=0, HAS_DRES=False)}
_RESIDUAL = {"fwd": dict(HAS_RES=True), "bwd": dict(HAS_DRES=True)}

# The backward of rows wider than WIDE_BYTES (python/fusedaot/ops/rms_norm.py picks it): row
# statistics, then a (row group x column chunk) grid; see kernels/triton/rms_norm.py.
WIDE_BYTES = 32768
RMS_NORM_WIDE = (8192, 16, 2048, 4)   # stats: columns per program, warps; dx/dw: the same
_STATS_PARAMS = (
    Param("dy", "ptr"), Param("x", "ptr"), Param("w", "ptr"), Param("stats", "ptr", "fp32"),
    Param("stride_dy", "i64"), Param("stride_x", "i64"), Param("M", "i32"), Param("N", "i32"), Param("eps", "f32"),
)
_WIDE_PARAMS = (
    Param("dy", "ptr"), Param("x", "ptr"), Param("w", "ptr"), Param("dx", "ptr"),
    Param("dw_partial", "ptr", "fp32"), Param("dw", "ptr"), Param("dres", "ptr"), Param("stats", "ptr", "fp32"),
    Param("stride_dy", "i64"), Param("stride_x", "i64"), Param("stride_dx", "i64"), Param("stride_dres", "i64"),
    Param("M", "i32"), Param("N", "i32"), Param("eps", "f32"), Param("G", "i32"),
)


def _rms_norm_wide_variants(kind: str) -> tuple[Variant, ...]:
    """kind: stats | wide.  Conditions: dtype, weight or not, (wide) dres or not, aligned or not."""
    stats_block, stats_warps, block, warps = RMS_NORM_WIDE
    ptrs = ("dy", "x", "w") + (("dx", "dres") if kind == "wide" else ())
    strides = ("stride_dy", "stride_x") + (("stride_dx", "stride_dres") if kind == "wide" else ())
    out = []
    for dtype in ("bf16", "fp16", "fp32"):
        for has_w in (True, False):
            for has_dres in ((True, False) if kind == "wide" else (False,)):
                for aligned in (True, False):
                    cond = [f"dtype == {DTYPES[dtype]}", "w != 0" if has_w else "w == 0"]
                    consts = dict(BLOCK_N=stats_block if kind == "stats" else block, HAS_W=has_w)
                    if kind == "wide":
                        cond.append("dres != 0" if has_dres else "dres == 0")
                        consts.update(HAS_DRES=has_dres, STATS_N=stats_block)
                    out.append(Variant(
                        name=f"rms_norm_bwd_{kind}_{dtype}_b{consts['BLOCK_N']}"
                             f"{'' if has_w else '_nw'}{'_dres' if has_dres else ''}{'_a16' if aligned else '_u'}",
                        dtype=dtype,
                        kernel=f"_rms_norm_bwd_{kind}",
                        when=" && ".join(cond),
                        grid=(("M", f"fa_cdiv(N, {stats_block})", "1") if kind == "stats"
                              else ("G", f"fa_cdiv(N, {block})", "1")),
                        constexprs=consts,
                        num_warps=stats_warps if kind == "stats" else warps,
                        aligned=ptrs + strides + ("N",),
                        unaligned=not aligned,
                    ))
    return tuple(out)


_RMS_DW_PARAMS = (Param("dw_partial", "ptr", "fp32"), Param("dw", "ptr"), Param("G", "i32"), Param("N", "i32"))
RMS_NORM_DW = (32, 64, 4)   # columns per program, partial rows per step, warps


def _rms_norm_dw_variants() -> tuple[Variant, ...]:
    block_n, block_g, warps = RMS_NORM_DW
    return tuple(Variant(
        name=f"rms_norm_dw_{dtype}_b{block_n}_g{block_g}_w{warps}",
        dtype=dtype,
        kernel="_rms_norm_dw",
        when=f"dtype == {DTYPES[dtype]}",
        grid=(f"fa_cdiv(N, {block_n})", "1", "1"),
        constexprs=dict(BLOCK_N=block_n, BLOCK_G=block_g),
        num_warps=warps,
    ) for dtype in ("bf16", "fp16", "fp32"))


def _rms_norm_variants(direction: str, fused: bool = False) -> tuple[Variant, ...]:
    """The conditions of an op's variants are disjoint (width ranges, aligned or not, weight
    or not), so the dispatch order does not matter and each arch may have its own configs.
    fused: the fused_add_rms_norm op, the same kernel with its residual flag set."""
    ptrs = ("x", "y", "w") if direction == "fwd" else ("dy", "x", "w", "dx")
    strides = ("stride_x", "stride_y") if direction == "fwd" else ("stride_dy", "stride_x", "stride_dx")
    if fused:
        ptrs += ("r", "s") if direction == "fwd" else ("dres",)
        strides += ("stride_r", "stride_s") if direction == "fwd" else ("stride_dres",)
    op = ("fused_add_rms_norm_" if fused else "rms_norm_") + direction
    out = []
    for arch, dtype, aligned in itertools.product(ARCHES, ("bf16", "fp16", "fp32"), (True, False)):
        lower = 0
        leaner = lean_blocks(arch, dtype) if direction == "bwd" else ()
        for block, rows, warps, stages, looped, upper, unroll in rms_norm_configs(arch, direction, dtype, fused, aligned):
            width = f"N > {lower}" + ("" if upper is None else f" && N <= {upper}")
            tag = ((f"loop{block}" + (f"_n{lower + 1}_{upper}" if upper else "") if looped else f"b{block}")
                   + f"_r{rows}_w{warps}" + (f"_s{stages}" if stages > 1 else "") + (f"_unroll{unroll}" if unroll else ""))
            lower = upper
            # LEAN frees the registers that holding the weight and its dw sums take: without a
            # weight there is nothing to free, and one variant serves every stride.
            lean_options = (True, False) if not looped and aligned and block in leaner else (None,)
            for has_w in (True,) if fused else (True, False):
                for lean in lean_options if has_w else (None,):
                    cond = [f"dtype == {DTYPES[dtype]}", width]
                    if not fused:
                        cond.insert(1, "w != 0" if has_w else "w == 0")
                    if (direction == "fwd" and not fused and aligned and dtype != "fp32"
                            and (upper is None or upper > RMS_NORM_CUDA_ABOVE)):   # what the CUDA C++ form leaves
                        cond.append(f"!({_CUDA_FWD})")
                    if lean is not None:   # the LEAN variant takes calls whose row strides all equal x's
                        same = " && ".join(f"{s} == stride_x" for s in strides if s != "stride_x")
                        cond.append(same if lean else f"!({same})")
                    out.append(Variant(
                        name=f"{op}_{dtype}_{tag}{'' if lean is None else '_lean' if lean else '_strided'}{'' if has_w else '_nw'}{'_a16' if aligned else '_u'}",
                        dtype=dtype,
                        kernel=f"_rms_norm_{direction}",
                        when=" && ".join(cond),
                        grid=("fa_cdiv(M, %d)" % rows if direction == "fwd" else "G", "1", "1"),
                        constexprs=dict(BLOCK_N=block, ROWS=rows, HAS_W=has_w, LOOPED=looped,
                                        **(dict(UNROLL=unroll) if direction == "fwd" else dict(LEAN=bool(lean))),
                                        **(_RESIDUAL if fused else _NO_RESIDUAL)[direction]),
                        num_warps=warps,
                        num_stages=stages,
                        aligned=ptrs + strides + ("N",),
                        unaligned=not aligned,
                        arches=(arch,),
                    ))
    return merge_arches(out)


def _cuda_variants() -> tuple[Variant, ...]:
    """The forward of wide aligned 16-bit rows (RMS_NORM_CUDA), with a weight and without, on
    every arch (sm80 and sm89, not measured, fit the same blocks: 96 KiB of shared memory a
    block, one an SM where it is short)."""
    out = []
    for dtype, has_w in itertools.product(("bf16", "fp16"), (True, False)):
        for form, width, block, shared in held_row_forms(RMS_NORM_CUDA_ABOVE, RMS_NORM_CUDA, RMS_NORM_CUDA_THREADS):
            kernel = f"rms_norm_fwd_{dtype}_{form}" + ("" if has_w else "_nw")
            out.append(Variant(
                name=f"{kernel}_cuda_a16",
                dtype=dtype,
                kernel=kernel,
                when=(f"dtype == {DTYPES[dtype]} && {'w != 0' if has_w else 'w == 0'} && "
                      f"M >= {RMS_NORM_CUDA_ROWS} && {width}"),
                grid=("M", "1", "1"),
                block=(block, "1", "1"),
                shared=shared,
                aligned=("x", "y") + (("w",) if has_w else ()) + ("stride_x", "stride_y", "N"),
                source="kernels/cuda/rms_norm.cu",
            ))
    return tuple(out)


OPS = (
    Op("rms_norm_fwd", "triton", "kernels/triton/rms_norm.py", _RMS_FWD_PARAMS,
       _rms_norm_variants("fwd") + _cuda_variants(), doc="y = x * rsqrt(mean(x^2) + eps) [* w]"),
    Op("rms_norm_bwd", "triton", "kernels/triton/rms_norm.py", _RMS_BWD_PARAMS,
       _rms_norm_variants("bwd"), doc="dx, and dw: per-program partial sums (G, N) fp32, or dw itself when G == 1"),
    Op("fused_add_rms_norm_fwd", "triton", "kernels/triton/rms_norm.py", _ADD_FWD_PARAMS,
       _rms_norm_variants("fwd", fused=True), doc="s = x + r; y = s * rsqrt(mean(s^2) + eps) * w"),
    Op("fused_add_rms_norm_bwd", "triton", "kernels/triton/rms_norm.py", _ADD_BWD_PARAMS,
       _rms_norm_variants("bwd", fused=True), doc="rms_norm_bwd over s, plus dres added to dx"),
    Op("rms_norm_bwd_stats", "triton", "kernels/triton/rms_norm.py", _STATS_PARAMS,
       _rms_norm_wide_variants("stats"), doc="wide rows: sum(x^2) and sum(x * w*dy) per 8192-column chunk, (M, cdiv(N, 8192), 2) fp32"),
    Op("rms_norm_bwd_wide", "triton", "kernels/triton/rms_norm.py", _WIDE_PARAMS,
       _rms_norm_wide_variants("wide"), doc="wide rows: dx [+ dres] and dw partial sums (G, N) fp32, or dw when G == 1"),
    Op("rms_norm_dw", "triton", "kernels/triton/rms_norm.py", _RMS_DW_PARAMS,
       _rms_norm_dw_variants(), doc="dw = sum of the partial rows, in the weight's dtype"),
)
