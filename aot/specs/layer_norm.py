"""layer_norm (Triton; the forward of aligned 16-bit rows 2049-65536 wide in CUDA C++): forward
(+ ReLU), fused backward, the wide-row backward pair, and the dweight/dbias reduction."""
from __future__ import annotations

import itertools

from .core import (ARCHES, DTYPES, ELEM_BYTES, Op, Param, Variant, block_entries, held_row_forms, loop_entry,
                   merge_arches, tuning)
from .rms_norm import RMS_NORM_BLOCKS

# ---------------------------------------------------------------------------------
# layer_norm (Triton): y = act((x - mean) * rstd * w + b), rows of x strided.
#
# Single-block variants hold a [ROWS, BLOCK_N] tile in registers; BLOCK_N is the next power of
# two >= N.  Wider rows take the looped variant (two passes over x in the forward, the second
# mostly from L2).  The fused backward covers every width (looped beyond the widest single
# block, with dw/db accumulated in the program's own partial row); the Python layer sends rows
# wider than LAYER_NORM_SPLIT_ABOVE to the two-kernel backward instead (bwd_stats, then bwd_dx
# over a 2-D grid), which keeps dw/db in registers and reads the partial sums once.
# ---------------------------------------------------------------------------------

# (BLOCK_N, ROWS per program, num_warps): the heuristic for arches without a tuning table
# (sm80, sm89).  The memory pattern is rms_norm's, so is the rule (see RMS_NORM_BLOCKS): its
# table up to 16384.
LAYER_NORM_BLOCKS = tuple(b for b in RMS_NORM_BLOCKS if b[0] <= 16384)
LAYER_NORM_LOOP = (8192, 16)        # chunk width and warps of the looped variants
# python/fusedaot/ops/layer_norm.py: wider rows use bwd_stats + bwd_dx, so the fused backward's
# single blocks stop here (its looped form still serves any width to callers of the C ABI).
# Measured on an H100 (docs/results/layer_norm_bwd_split_h100.jsonl), forward + backward: at
# 8192 wide the fused backward wins (bf16 187 us against 255 at 4096 rows, fp32 277 against
# 404); from 10240 wide the pair does (bf16 2048 x 12288: 198 us against 245-252, 2048 x
# 16384: 229 against 295-298; fp32 2048 x 12288: 332 against 442).
LAYER_NORM_SPLIT_ABOVE = 8192
# The pair's configs, every arch (measured on an H100 through Triton's JIT with M and G not
# specialised, as in the AOT images; docs/results/layer_norm_sweep_h100.jsonl).  bwd_stats:
# (widest M or None, chunk width, warps), one program a row.  From 1024 rows, 2048-wide chunks
# on 8 warps came within 4% of each aligned shape's best and were the best for unaligned fp32
# (8192 on 16 warps: up to 1.9x slower at 10240-16384).  Few rows want the wider programs:
# 8192 on 16 warps is the best at 512 x 65536 and keeps 1-16 rows of 65536 at 33-44 us, where
# 2048 on 8 takes 42-54 (docs/results/norm_loop_unroll_ab_h100.jsonl).  The 2-byte accesses of
# unaligned 16-bit rows want 1024-wide chunks (1.3-1.9x faster at 12289 and 65537, 512 rows
# included).  bwd_dx: columns per program, rows per step, warps, one config for all (Python
# sizes the grid's row groups from it): within 3% of the best aligned and 11% unaligned (1024 x
# 4 rows: 4x slower unaligned).
LAYER_NORM_STATS = ((512, 8192, 16), (None, 2048, 8))
LAYER_NORM_STATS_U16 = ((None, 1024, 8),)
LAYER_NORM_DX = (512, 2, 8)
LAYER_NORM_DW = (32, 64, 4)         # dw: columns per program, partial rows per step, warps
# The forward of 16-bit rows wider than LAYER_NORM_CUDA_ABOVE, 16-byte aligned, from
# LAYER_NORM_CUDA_ROWS rows, in CUDA C++ (kernels/cuda/layer_norm.cu): one block a row, held on
# chip from its first load to its last store, so x is read once and its two statistics take one
# reduction.  Against the Triton forms through ctypes on an H100 (bf16, % of copy, docs/benchmarks.md,
# "LayerNorm's rows held in CUDA C++ from 2049 wide" and "LayerNorm's wide rows in CUDA C++"):
# 16384 x 3072 92.1% against 80.5%, 16384 x 6144 96.2% against 74.7%, 16384 x 16384 98.7% against
# 91.3%, 4096 x 6144 82.5% against 63.8%, 4096 x 65536 85.8% against 79.1%, 16384 x 65536 91.2%
# against 80.3%; 2048 wide and narrower rows keep Triton (16384 x 2048: 91.7% against 87.4%), as
# do fewer rows (1024 x 4096: 54.4% against 51.6%; 1024 x 32768: 75.8% against 71-72%) and fp32 x.
LAYER_NORM_CUDA_ABOVE = 2048
LAYER_NORM_CUDA_ROWS = 2048
LAYER_NORM_CUDA_THREADS = 512   # kernels/cuda/layer_norm.cu's LAYER_NORM_THREADS
# Rows up to 16384 wide: (form, widest N, vectors a thread in registers), a block of
# 32 * ceil(N / (8 * 32 * vectors)) threads a row, several rows an SM; the form's "_wb" entry
# point, for weight and bias without ReLU (flags & 11 == 3), fixes the flags at compile time.
LAYER_NORM_CUDA_ROW = ("r4", 16384, 4)
# Wider rows: (form, widest N, vectors a thread in shared memory) on LAYER_NORM_CUDA_THREADS
# threads, as many vectors a thread in registers.
LAYER_NORM_CUDA = (("n32768", 32768, 4), ("n65536", 65536, 8))
_CUDA_FWD = f"M >= {LAYER_NORM_CUDA_ROWS} && N > {LAYER_NORM_CUDA_ABOVE} && N <= {LAYER_NORM_CUDA[-1][1]}"


def layer_norm_configs(arch: str, direction: str, dtype: str, aligned: bool = True):
    """[(BLOCK_N, ROWS, num_warps, num_stages, looped, widest N or None, unroll)] for one arch,
    narrowest rows first: tuned where measured (aot/tuning/<arch>.json, key
    layer_norm_<direction>), else the heuristic above.  Table entries: "<BLOCK_N>": [ROWS,
    num_warps(, num_stages)] for single blocks; "loop_above": the widest single block worth
    using; "loop": the looped form beyond, [ROWS, num_warps(, num_stages(, chunk))]
    (core.loop_entry; LAYER_NORM_LOOP's chunk unless given; no unroll factor: unrolling the
    looped forward gained nothing, docs/results/norm_loop_unroll_everywhere_ab_h100.jsonl); and optionally
    "loop_mid": [ROWS, num_warps, num_stages, chunk, widest N], a looped form with a smaller
    chunk for the rows between, where more programs per SM hide the latency of each row's two
    reductions while the rows they hold still fit in L2 for the second pass; "loop_wide", in
    "loop"'s form plus an unroll factor of the forward's second pass, for rows wider than
    "loop_wide_above".  The table is keyed by element size ("2", "4"); a dtype's own entry
    ("bf16") adds or replaces keys of its size's (bf16 and fp16 differ at 65536-wide rows).
    "loop_wide" serves aligned rows only.  An "unaligned" entry, where present, serves the
    unaligned variants instead: its keys replace those above and "loop_mid" is dropped (16-bit
    accesses of unaligned rows favour other tiles than the aligned variants' vectors)."""
    tables = tuning(arch).get(f"layer_norm_{direction}", {})
    table = dict(tables.get(str(ELEM_BYTES[dtype]), {}))
    table.update(tables.get(dtype, {}))
    unaligned = table.pop("unaligned", None)
    if unaligned and not aligned:
        table.pop("loop_mid", None)
        table.update(unaligned)
    widest = table.get("loop_above", LAYER_NORM_BLOCKS[-1][0])
    if direction == "bwd":
        widest = min(widest, LAYER_NORM_SPLIT_ABOVE)
    out = block_entries(table, LAYER_NORM_BLOCKS, widest)
    if "loop_mid" in table:
        rows, warps, stages, chunk, upto = table["loop_mid"]
        out.append((chunk, rows, warps, stages, True, upto, None))
    wide = "loop_wide" in table and aligned   # unrolled 16-bit accesses of unaligned rows would not fit
    loops = [("loop", table["loop_wide_above"]), ("loop_wide", None)] if wide else [("loop", None)]
    for key, upper in loops:
        chunk, rows, warps, stages, unroll = loop_entry(table.get(key, (1, LAYER_NORM_LOOP[1])), LAYER_NORM_LOOP[0])
        if unroll and (direction != "fwd" or key != "loop_wide"):
            raise ValueError(f"{arch} layer_norm_{direction}: only the forward's \"loop_wide\" entry may unroll "
                             f"(unrolling the other looped forms gained nothing); drop the unroll factor {unroll}")
        out.append((chunk, rows, warps, stages, True, upper, unroll))
    return out


_FLAGS = Param("flags", "i32")   # 1 weight, 2 bias, 4 weight/bias stored in fp32, 8 ReLU
_FWD_PARAMS = (
    Param("x", "ptr"), Param("y", "ptr"), Param("w", "ptr"), Param("b", "ptr"),
    Param("stride_x", "i64"), Param("stride_y", "i64"),
    Param("M", "i32"), Param("N", "i32"), Param("eps", "f32"), _FLAGS,
)
_BWD_PARAMS = (
    Param("dy", "ptr"), Param("x", "ptr"), Param("w", "ptr"), Param("b", "ptr"), Param("dx", "ptr"),
    Param("dwb_partial", "ptr", "fp32"), Param("dw", "ptr"), Param("db", "ptr"),
    Param("stride_dy", "i64"), Param("stride_x", "i64"), Param("stride_dx", "i64"),
    Param("M", "i32"), Param("N", "i32"), Param("eps", "f32"), _FLAGS, Param("G", "i32"),
)
_STATS_PARAMS = (
    Param("dy", "ptr"), Param("x", "ptr"), Param("w", "ptr"), Param("b", "ptr"),
    Param("stats", "ptr", "fp32"), Param("stride_dy", "i64"), Param("stride_x", "i64"),
    Param("M", "i32"), Param("N", "i32"), Param("eps", "f32"), _FLAGS,
)
_DX_PARAMS = (
    Param("dy", "ptr"), Param("x", "ptr"), Param("w", "ptr"), Param("b", "ptr"),
    Param("stats", "ptr", "fp32"), Param("dx", "ptr"),
    Param("dwb_partial", "ptr", "fp32"), Param("dw", "ptr"), Param("db", "ptr"),
    Param("stride_dy", "i64"), Param("stride_x", "i64"), Param("stride_dx", "i64"),
    Param("M", "i32"), Param("N", "i32"), _FLAGS, Param("G", "i32"),
)
_DW_PARAMS = (Param("dwb_partial", "ptr", "fp32"), Param("dw", "ptr"), Param("db", "ptr"),
              Param("G", "i32"), Param("N", "i32"), _FLAGS)

_DTYPES = ("bf16", "fp16", "fp32")


def _pointers(op_params) -> tuple[str, ...]:
    return tuple(p.name for p in op_params if p.ctype == "ptr")


def _strides(op_params) -> tuple[str, ...]:
    return tuple(p.name for p in op_params if p.name.startswith("stride_"))


def _variant(op: str, dtype: str, tag: str, when: list[str], params, aligned: bool, **kw) -> Variant:
    """The variant for calls whose pointers, strides and N are 16-byte aligned (vector
    accesses), or the unaligned fallback."""
    return Variant(name=f"{op}_{dtype}_{tag}{'_a16' if aligned else '_u'}", dtype=dtype,
                   when=" && ".join([f"dtype == {DTYPES[dtype]}", *when]),
                   aligned=_pointers(params) + _strides(params) + ("N",), unaligned=not aligned, **kw)


def _row_variants(direction: str) -> tuple[Variant, ...]:
    """fwd / bwd: width buckets per arch and alignment.  Conditions are disjoint (width ranges,
    aligned or not), so the dispatch order does not matter and each may have its own configs."""
    params = _FWD_PARAMS if direction == "fwd" else _BWD_PARAMS
    out = []
    for arch, dtype, aligned in itertools.product(ARCHES, _DTYPES, (True, False)):
        lower = 0
        for block, rows, warps, stages, looped, upper, unroll in layer_norm_configs(arch, direction, dtype, aligned):
            width = f"N > {lower}" + ("" if upper is None else f" && N <= {upper}")
            tag = ((f"loop{block}" + ("" if upper is None else f"_n{lower + 1}_{upper}")) if looped
                   else f"b{block}") + f"_r{rows}_w{warps}" + (f"_s{stages}" if stages > 1 else "") + \
                (f"_u{unroll}" if unroll else "")
            lower = upper
            if direction == "fwd" and aligned and dtype != "fp32":   # what the CUDA C++ forms leave
                if upper is None or upper > LAYER_NORM_CUDA_ABOVE:
                    width += f" && !({_CUDA_FWD})"
            out.append(_variant(
                f"layer_norm_{direction}", dtype, tag, [width], params, aligned,
                kernel=f"_layer_norm_{direction}",
                grid=("fa_cdiv(M, %d)" % rows if direction == "fwd" else "G", "1", "1"),
                constexprs=dict(BLOCK_N=block, ROWS=rows, LOOPED=looped,
                                **(dict(UNROLL=unroll) if direction == "fwd" else {})),
                num_warps=warps, num_stages=stages, arches=(arch,)))
    return merge_arches(out)


def _cuda_variants() -> tuple[Variant, ...]:
    """The forward of aligned 16-bit rows of 2049-65536 (LAYER_NORM_CUDA_ROW, LAYER_NORM_CUDA),
    weight and bias of x's dtype or fp32 (flags & 4), on every arch (sm80 and sm89, not measured,
    fit the same blocks: at most 64 KiB of shared memory a block, one such block an SM where an SM
    has less than 128 KiB)."""
    row_form, row_upper, row_vectors = LAYER_NORM_CUDA_ROW
    row_width = f"N > {LAYER_NORM_CUDA_ABOVE} && N <= {row_upper}"
    row_block = f"32 * fa_cdiv(N, {8 * 32 * row_vectors})"
    forms = [(f"{row_form}_wb", f"(flags & 11) == 3 && {row_width}", row_block, 0),
             (row_form, f"(flags & 11) != 3 && {row_width}", row_block, 0),
             *held_row_forms(row_upper, LAYER_NORM_CUDA, LAYER_NORM_CUDA_THREADS)]
    out = []
    for dtype, p32 in itertools.product(("bf16", "fp16"), (False, True)):
        name = f"layer_norm_fwd_{dtype}{'_pf32' if p32 else ''}"
        common = [f"(flags & 4) {'!=' if p32 else '=='} 0", f"M >= {LAYER_NORM_CUDA_ROWS}"]
        for form, width, block, shared in forms:
            out.append(_variant(
                "layer_norm_fwd", dtype, f"{'pf32_' if p32 else ''}{form}_cuda", common + [width], _FWD_PARAMS, True,
                kernel=f"{name}_{form}", grid=("M", "1", "1"), block=(block, "1", "1"), shared=shared,
                source="kernels/cuda/layer_norm.cu"))
    return tuple(out)


def _split_variants() -> tuple[tuple[Variant, ...], tuple[Variant, ...]]:
    """bwd_stats (one looped program per row) and bwd_dx (column blocks x row groups): any width."""
    dx_cols, dx_rows, dx_warps = LAYER_NORM_DX
    stats, dx = [], []
    for dtype, aligned in itertools.product(_DTYPES, (True, False)):
        by_rows = LAYER_NORM_STATS if aligned or ELEM_BYTES[dtype] == 4 else LAYER_NORM_STATS_U16
        lower = 0
        for upper, chunk, warps in by_rows:
            rows = [f"M > {lower}" + ("" if upper is None else f" && M <= {upper}")] if len(by_rows) > 1 else []
            stats.append(_variant("layer_norm_bwd_stats", dtype, f"loop{chunk}_r1_w{warps}", rows, _STATS_PARAMS, aligned,
                                  kernel="_layer_norm_bwd_stats", grid=("M", "1", "1"),
                                  constexprs=dict(BLOCK_N=chunk, ROWS=1), num_warps=warps))
            lower = upper
        dx.append(_variant("layer_norm_bwd_dx", dtype, f"b{dx_cols}_r{dx_rows}_w{dx_warps}", [], _DX_PARAMS, aligned,
                           kernel="_layer_norm_bwd_dx", grid=(f"fa_cdiv(N, {dx_cols})", "G", "1"),
                           constexprs=dict(BLOCK_N=dx_cols, ROWS=dx_rows), num_warps=dx_warps))
    return tuple(stats), tuple(dx)


def _dw_variants() -> tuple[Variant, ...]:
    """dtype is the weight's (fp32 weights of a 16-bit x included)."""
    block_n, block_g, warps = LAYER_NORM_DW
    return tuple(Variant(
        name=f"layer_norm_dw_{dtype}_b{block_n}_g{block_g}_w{warps}",
        dtype=dtype,
        kernel="_layer_norm_dw",
        when=f"dtype == {DTYPES[dtype]}",
        grid=(f"fa_cdiv(N, {block_n})", "2", "1"),
        constexprs=dict(BLOCK_N=block_n, BLOCK_G=block_g),
        num_warps=warps,
    ) for dtype in _DTYPES)


_STATS_VARIANTS, _DX_VARIANTS = _split_variants()
_SRC = "kernels/triton/layer_norm.py"

OPS = (
    Op("layer_norm_fwd", "triton", _SRC, _FWD_PARAMS, _row_variants("fwd") + _cuda_variants(),
       doc="y = act((x - mean) * rstd [* w] [+ b]); flags: 1 weight, 2 bias, 4 fp32 weight/bias, 8 ReLU"),
    Op("layer_norm_bwd", "triton", _SRC, _BWD_PARAMS, _row_variants("bwd"),
       doc="dx, and dw/db: per-program partial sums (G, 2N) fp32, or dw/db themselves when G == 1"),
    Op("layer_norm_bwd_stats", "triton", _SRC, _STATS_PARAMS, _STATS_VARIANTS,
       doc="wide-row backward, step 1: per-row (mean, rstd, mean(g), mean(g * x_hat)) into stats (M, 4) fp32"),
    Op("layer_norm_bwd_dx", "triton", _SRC, _DX_PARAMS, _DX_VARIANTS,
       doc="wide-row backward, step 2: dx and per-row-group partial dw/db (G, 2N) fp32 (or dw/db when G == 1)"),
    Op("layer_norm_dw", "triton", _SRC, _DW_PARAMS, _dw_variants(),
       doc="dw, db = sums of the partial rows' two halves, in the weight's dtype"),
)
