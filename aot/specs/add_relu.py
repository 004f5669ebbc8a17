"""add_relu (CUDA C++): y = relu(a + b), forward and backward."""
from __future__ import annotations

from .core import Op, Param
from .elementwise import (DTYPES_WITH_FP64, WHOLE_VECTORS, WHOLE_VECTORS_OR_ONE_ROW, colsum_grid, ew_grid,
                          vector_scalar_pair)

# ---------------------------------------------------------------------------------
# add_relu: a (M, N) rows with a row stride; b the same, or (N,) broadcast (stride_b = 0).
#
# The forward and the backward for b of a's shape are flat elementwise loops (ew_loop);
# the backward for a broadcast b (G > 0) walks rows per column block (colsum_loop) and writes
# the column sums of da into db (G == 1), or fp32 (fp64 for fp64) sums per row group into
# db_partial (G, N).
# ---------------------------------------------------------------------------------

_FWD_PARAMS = (
    Param("a", "ptr"), Param("b", "ptr"), Param("y", "ptr"),
    Param("stride_a", "i64"), Param("stride_b", "i64"), Param("M", "i64"), Param("N", "i64"),
)
_BWD_PARAMS = (
    Param("dy", "ptr"), Param("y", "ptr"), Param("da", "ptr"), Param("db", "ptr"),
    Param("db_partial", "ptr", "fp32"),
    Param("stride_dy", "i64"), Param("stride_y", "i64"), Param("M", "i64"), Param("N", "i64"),
    Param("G", "i32"),
)

def _variants(direction: str):
    out = []
    for dtype in DTYPES_WITH_FP64:
        if direction == "fwd":
            out += vector_scalar_pair("add_relu_fwd", "add_relu_fwd", dtype, ("a", "b", "y"),
                                      ("stride_a", "stride_b"), lambda v: ew_grid("M * N", v), WHOLE_VECTORS_OR_ONE_ROW)
            continue
        # G == 0: b of a's shape, da only (flat); G > 0: broadcast b, column sums per row group
        out += vector_scalar_pair("add_relu_bwd", "add_relu_bwd", dtype, ("dy", "y", "da"),
                                  ("stride_dy", "stride_y"), lambda v: ew_grid("M * N", v), WHOLE_VECTORS_OR_ONE_ROW, "G == 0")
        out += vector_scalar_pair("add_relu_bwd", "add_relu_bwd_cols", dtype, ("dy", "y", "da"),
                                  ("stride_dy", "stride_y"),
                                  colsum_grid, WHOLE_VECTORS, "G > 0")
    return tuple(out)

NEEDS = ("reduce",)   # families a partial build adds: the broadcast backward's column sums finish with reduce_finish

OPS = (
    Op("add_relu_fwd", "cuda", "kernels/cuda/add_relu.cu", _FWD_PARAMS, _variants("fwd"),
       dtypes=DTYPES_WITH_FP64, doc="y = relu(a + b); b (M, N) or (N,) with stride_b = 0"),
    Op("add_relu_bwd", "cuda", "kernels/cuda/add_relu.cu", _BWD_PARAMS, _variants("bwd"),
       dtypes=DTYPES_WITH_FP64,
       doc="da = dy * [y > 0]; G == 1: also db, the column sums of da; G > 1: those sums per row "
           "group, (G, N) fp32 (fp64 for fp64)"),
)
