"""ada_layer_norm (CUDA C++): forward and backward."""
from __future__ import annotations

from .core import DTYPES, ELEM_BYTES, Op, Param, Variant

# ---------------------------------------------------------------------------------
# ada_layer_norm (CUDA C++): y = layer_norm(x) * (1 + scale) + shift, scale and shift per tensor,
# per sample or per token (kernels/cuda/ada_layer_norm.cu describes the layout).
#
# A block normalises one row at a time; each thread owns E = VEC * NPT elements of a tile.
# Resident variants hold the row in registers, blockDim.x = N / E rounded up to a warp (so E
# picks the block size); rows wider than the widest resident form are walked tile by tile.
# VEC is 16 bytes' worth of elements where pointers, strides and N allow, else 1.
# ---------------------------------------------------------------------------------

# (E elements per thread, most threads per block) of the resident forms, narrowest rows first.
# Forward: 8 elements a thread up to 1024 columns, then 16 (a 6144-wide row is 384 threads),
# then 32, at most 512 threads: each thread has 32-64 bytes of x in flight besides its scale
# and shift, and several blocks share an SM, so some wait on loads while others reduce.
# Backward: x, dy and the two column sums stay in registers, so E = 8 (under the 64 registers
# that 1024-thread launch bounds allow).
ADA_FWD_RESIDENT = ((8, 128), (16, 512), (32, 512))
ADA_BWD_RESIDENT = ((8, 1024),)
ADA_LOOP_THREADS = 512
ADA_UNALIGNED_RESIDENT = {"fwd": ((8, 512),), "bwd": ((8, 1024),)}
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
            resident = (ADA_FWD_RESIDENT if direction == "fwd" else ADA_BWD_RESIDENT) if vec > 1 \
                else ADA_UNALIGNED_RESIDENT[direction]
            forms, lower = [], 0
            for e, threads in resident:
                forms.append((f"e{e}", f"N > {lower} && N <= {e * threads}", _block(e)))
                lower = e * threads
            forms.append(("loop", f"N > {lower}", str(ADA_LOOP_THREADS)))
            for tag, width, block in forms:
                kernel = f"ada_layer_norm_{direction}_{name}_v{vec}_{tag}"
                out.append(Variant(
                    name=kernel, dtype=dtype, kernel=kernel,
                    when=f"dtype == {DTYPES[dtype]} && {params_test} && {width}",
                    grid=grid,
                    block=(block, "1", "1"),
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
