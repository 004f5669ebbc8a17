"""ada_layer_norm (CUDA C++): forward and backward."""
from __future__ import annotations

from .core import DTYPES, ELEM_BYTES, Op, Param, Variant, held_row_forms

# ---------------------------------------------------------------------------------
# ada_layer_norm (CUDA C++): y = layer_norm(x) * (1 + scale) + shift, scale and shift per tensor,
# per sample or per token (kernels/cuda/ada_layer_norm.cu describes the layout).
#
# A block normalises one row at a time; each thread owns E = VEC * NPT elements of a tile.
# Resident variants hold the row in registers, blockDim.x = N / E rounded up to a warp (so E
# picks the block size); rows wider than the widest resident form are walked tile by tile, or,
# where they share scale and shift (16-bit x, aligned, up to 65536 wide), held whole (ADA_HELD).
# VEC is 16 bytes' worth of elements where pointers, strides and N allow, else 1.
# ---------------------------------------------------------------------------------

# (E elements per thread, most threads per block) of the forward's resident forms, narrowest
# rows first: 8 elements a thread up to 1024 columns, then 16 (a 6144-wide row is 384 threads),
# then 32, at most 512 threads.  Each resident row has every input in flight at once (x, scale
# and shift as stored), so blocks waiting on loads overlap blocks that reduce.
ADA_FWD_RESIDENT = ((8, 128), (16, 512), (32, 512))
# Rows that share scale and shift (per tensor, per sample) read them after the statistics, so
# registers hold only x: more elements a thread and fewer threads a row keep more rows in flight.
ADA_FWD_SHARED_RESIDENT = ((16, 128), (32, 256), (64, 256))
ADA_LOOP_THREADS = 512
# Shared scale and shift, 16-bit x, aligned, rows wider than the shared resident forms and at most
# 65536: a block of ADA_HELD_THREADS a row holds it on chip (kernels/cuda/held_row.cuh, as
# LayerNorm's wide forward), so x is read once where the loop read it twice.  (tag, widest N,
# vectors a thread in shared memory); a block a row, so the grid is M.
ADA_HELD = (("h32768", 32768, 4), ("h65536", 65536, 8))
ADA_HELD_THREADS = 512
_HELD_TAGS = {tag for tag, *_ in ADA_HELD}
ADA_UNALIGNED_FWD_RESIDENT = ((8, 512),)
# Backward: E = 16 resident up to 512 threads (x, dy and scale in registers, as stored; 16 a
# thread rather than 8 halves the per-thread overhead in registers, and registers decide how many
# rows are in flight).  Per row (R = 1) there is nothing to add up; otherwise each thread's column
# sums live in dynamic shared memory, 2 * E floats a thread, sized by the variant's block-size
# bucket (16, 32, 48 or 64 KiB).  With 16-bit x, the buckets up to 384 threads load each row's x
# and dy one row ahead (the kernel caps them at 80 registers: two blocks an SM): at 16384 tokens
# x 3072-6144 (bf16, per tensor, H100) forward + backward went from 67% to 71-72% of copy.
ADA_BWD_E = 16
ADA_BWD_BUCKETS = (128, 256, 384, 512)
# Wider rows are looped.  From ADA_BWD_LOOP_SMEM_FROM to ADA_BWD_LOOP_SMEM_COLS wide their column
# sums stay in shared memory (2 floats a column: 128 KiB, one block an SM) instead of a partial
# row in global memory that every row reads and writes.  Forward + backward, bf16, per tensor,
# 16384 tokens, H100: 16384 wide 34.8% -> 45.6% of copy, 12288 39.8% -> 44.2%, but 8200 42.8% ->
# 36.9% (one block an SM loses to several with the global row when the row is just past 8192).
ADA_BWD_LOOP_SMEM_FROM = 12288
ADA_BWD_LOOP_SMEM_COLS = 16384
ADA_MAX_ROW_BLOCKS = 1 << 20   # forward grid: blocks walk rows with this stride beyond

_FWD_PARAMS = (
    Param("x", "ptr"), Param("scale", "ptr"), Param("shift", "ptr"), Param("y", "ptr"),
    Param("stride_x", "i64"), Param("stride_sb", "i64"), Param("stride_ss", "i64"),
    Param("stride_hb", "i64"), Param("stride_hs", "i64"),
    Param("M", "i64"), Param("N", "i64"), Param("S", "i64"), Param("eps", "f32"), Param("flags", "i32"),
)
_BWD_PARAMS = (
    Param("dy", "ptr"), Param("x", "ptr"), Param("scale", "ptr"), Param("dx", "ptr"),
    Param("dscale", "ptr"), Param("dshift", "ptr"), Param("partial", "ptr", "fp32"),
    Param("stride_dy", "i64"), Param("stride_x", "i64"), Param("stride_sb", "i64"), Param("stride_ss", "i64"),
    Param("M", "i64"), Param("N", "i64"), Param("S", "i64"), Param("R", "i64"),
    Param("eps", "f32"), Param("flags", "i32"), Param("J", "i32"),
)


def _block(e: int) -> str:
    """Threads for a resident row: N / e rounded up to a whole warp."""
    return f"fa_max(32, fa_cdiv(fa_cdiv(N, {e}), 32) * 32)"


def _resident_forms(resident, prefix: str = "e", loop: bool = True) -> list[tuple[str, str, str, int]]:
    """(tag, width test, block, shared bytes) of resident forms (E, most threads), then the loop."""
    forms, lower = [], 0
    for e, threads in resident:
        forms.append((f"{prefix}{e}", f"N > {lower} && N <= {e * threads}", _block(e), 0))
        lower = e * threads
    if loop:
        forms.append(("loop", f"N > {lower}", str(ADA_LOOP_THREADS), 0))
    return forms


_SHARED = "stride_ss == 0 && stride_hs == 0"


def _widest(resident) -> int:
    return resident[-1][0] * resident[-1][1]


def _fwd_forms(vec: int) -> list[tuple[str, str, str, int]]:
    """Shared-scale forms first (aligned only; for 16-bit x the held rows beyond them), then the
    general resident forms and the loop."""
    if vec == 1:
        return _resident_forms(ADA_UNALIGNED_FWD_RESIDENT)
    shared = [(tag, f"{_SHARED} && {width}", block, smem)
              for tag, width, block, smem in _resident_forms(ADA_FWD_SHARED_RESIDENT, "s", loop=False)]
    general = _resident_forms(ADA_FWD_RESIDENT)
    if vec != 8:
        return shared + general
    held = [(tag, f"{_SHARED} && {width}", block, smem)
            for tag, width, block, smem in held_row_forms(_widest(ADA_FWD_SHARED_RESIDENT), ADA_HELD, ADA_HELD_THREADS)]
    taken = f"{_SHARED} && N > {_widest(ADA_FWD_SHARED_RESIDENT)} && N <= {ADA_HELD[-1][1]}"
    general = [(tag, f"{width} && !({taken})" if tag == "loop" else width, block, smem)
               for tag, width, block, smem in general]
    return shared + held + general


def _bwd_forms() -> list[tuple[str, str, str, int]]:
    """Per-row forms (R == 1) and column-sum forms (R > 1), the latter per block-size bucket."""
    e, top = ADA_BWD_E, ADA_BWD_E * ADA_BWD_BUCKETS[-1]
    forms = [(f"row_e{e}", f"R == 1 && N <= {top}", _block(e), 0),
             ("row_loop", f"R == 1 && N > {top}", str(ADA_LOOP_THREADS), 0)]
    lower = 0
    for threads in ADA_BWD_BUCKETS:
        forms.append((f"sum_e{e}_t{threads}", f"R > 1 && N > {lower} && N <= {e * threads}", _block(e),
                      2 * e * threads * 4))
        lower = e * threads
    lo, cols = max(top + 1, ADA_BWD_LOOP_SMEM_FROM), ADA_BWD_LOOP_SMEM_COLS
    forms.append((f"sum_loop_c{cols}", f"R > 1 && N >= {lo} && N <= {cols}", str(ADA_LOOP_THREADS), 2 * cols * 4))
    forms.append(("sum_loop", f"R > 1 && N > {top} && (N < {lo} || N > {cols})", str(ADA_LOOP_THREADS), 0))
    return forms


def _variants(direction: str) -> tuple[Variant, ...]:
    params = _FWD_PARAMS if direction == "fwd" else _BWD_PARAMS
    aligned = tuple(p.name for p in params if p.ctype == "ptr" or p.name.startswith("stride_")) + ("N",)
    grid = (f"fa_min(M, {ADA_MAX_ROW_BLOCKS})", "1", "1") if direction == "fwd" else ("fa_cdiv(M, R)", "J", "1")
    out = []
    # (x dtype, kernel name part, flags test): 16-bit x with scale/shift like x or in fp32
    for dtype, name, params_test in (("bf16", "bf16", "(flags & 1) == 0"), ("bf16", "bf16_pf32", "(flags & 1)"),
                                     ("fp16", "fp16", "(flags & 1) == 0"), ("fp16", "fp16_pf32", "(flags & 1)"),
                                     ("fp32", "fp32", "1")):
        for vec in (16 // ELEM_BYTES[dtype], 1):
            if direction == "bwd":
                forms = _bwd_forms()
            else:
                forms = _fwd_forms(vec)
            for tag, width, block, shared in forms:
                kernel = f"ada_layer_norm_{direction}_{name}_v{vec}_{tag}"
                out.append(Variant(
                    name=kernel, dtype=dtype, kernel=kernel,
                    when=f"dtype == {DTYPES[dtype]} && {params_test} && {width}",
                    grid=("M", "1", "1") if tag in _HELD_TAGS else grid,
                    block=(block, "1", "1"),
                    shared=shared,
                    aligned=aligned,
                    unaligned=vec == 1,
                ))
    return tuple(out)


OPS = (
    Op("ada_layer_norm_fwd", "cuda", "kernels/cuda/ada_layer_norm.cu", _FWD_PARAMS, _variants("fwd"),
       doc="y = layer_norm(x) * (1 + scale) + shift; scale/shift rows per sample (stride_*b) and token "
           "(stride_*s), S tokens a sample; flags: 1 scale/shift stored in fp32"),
    Op("ada_layer_norm_bwd", "cuda", "kernels/cuda/ada_layer_norm.cu", _BWD_PARAMS, _variants("bwd"),
       doc="dx; dscale/dshift per row when R == 1, else partial sums (M / R, J, 2, N) fp32 over R-row groups"),
)
