"""bias_gelu (CUDA C++): forward and backward."""
from __future__ import annotations

from .core import DTYPES, ELEM_BYTES, Op, Param, Variant
from .elementwise import colsum_grid

# ---------------------------------------------------------------------------------
# bias_gelu (CUDA C++): y = gelu(x + bias), bias broadcast over rows.
#
# A forward block covers 256 threads x VEC columns and a few rows; the backward is
# elementwise.cuh's colsum_loop (dbias whole when G == 1, else per row group into
# dbias_partial).  The aligned variants move 16 bytes per access (VEC = 16 / sizeof(T)), the
# others one element.
# ---------------------------------------------------------------------------------

BIAS_GELU_THREADS = 256
# Rows a forward block takes, (exact, tanh): kernels/cuda/bias_gelu.cu's FWD_ROWS, which
# tests/test_specs.py checks against this.  The kernel is right for any grid; these only size it.
BIAS_GELU_FWD_ROWS = (4, 2)

_BG_FWD_PARAMS = (
    Param("x", "ptr"), Param("bias", "ptr"), Param("y", "ptr"),
    Param("stride_x", "i64"), Param("M", "i64"), Param("N", "i64"), Param("approximate", "i32"),
)
_BG_BWD_PARAMS = (
    Param("dy", "ptr"), Param("x", "ptr"), Param("bias", "ptr"), Param("dx", "ptr"), Param("dbias", "ptr"),
    Param("dbias_partial", "ptr", "fp32"),
    Param("stride_dy", "i64"), Param("stride_x", "i64"),
    Param("M", "i64"), Param("N", "i64"), Param("approximate", "i32"), Param("G", "i32"),
)


def _bias_gelu_variants(direction: str) -> tuple[Variant, ...]:
    ptrs = ("x", "bias", "y") if direction == "fwd" else ("dy", "x", "bias", "dx")
    strides = ("stride_x",) if direction == "fwd" else ("stride_dy", "stride_x")
    out = []
    for dtype in ("bf16", "fp16", "fp32"):
        for vec in (16 // ELEM_BYTES[dtype], 1):  # 16-byte accesses when aligned, else scalar
            cols = BIAS_GELU_THREADS * vec
            # Forward: a block per BIAS_GELU_FWD_ROWS rows, up to grid.y's limit.
            exact, tanh = BIAS_GELU_FWD_ROWS
            rows_fwd = f"fa_min(fa_cdiv(M, {exact} - {exact - tanh} * (approximate != 0)), 65535)"
            out.append(Variant(
                name=f"bias_gelu_{direction}_{dtype}_v{vec}",
                dtype=dtype,
                kernel=f"bias_gelu_{direction}_{dtype}_v{vec}",
                when=f"dtype == {DTYPES[dtype]}",
                grid=(f"fa_cdiv(N, {cols})", rows_fwd, "1") if direction == "fwd" else colsum_grid(vec),
                block=(str(BIAS_GELU_THREADS), "1", "1"),
                aligned=ptrs + strides + ("N",),
                unaligned=vec == 1,
            ))
    return tuple(out)


NEEDS = ("reduce",)   # families a partial build adds: the backward's column sums finish with reduce_finish

OPS = (
    Op("bias_gelu_fwd", "cuda", "kernels/cuda/bias_gelu.cu", _BG_FWD_PARAMS,
       _bias_gelu_variants("fwd"), doc="y = gelu(x + bias)"),
    Op("bias_gelu_bwd", "cuda", "kernels/cuda/bias_gelu.cu", _BG_BWD_PARAMS,
       _bias_gelu_variants("bwd"), doc="dx, and dbias (G == 1) or per-row-group partial dbias (G, N) fp32"),
)
