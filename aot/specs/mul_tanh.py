"""mul_tanh (CUDA C++): y = tanh(a * b), forward and backward."""
from __future__ import annotations

from .core import Op, Param
from .elementwise import (DTYPES_WITH_FP64, WHOLE_VECTORS, WHOLE_VECTORS_OR_ONE_ROW, colsum_grid, ew_grid,
                          vector_scalar_pair)

# ---------------------------------------------------------------------------------
# mul_tanh: a (M, N) rows with a row stride; b the same, or (N,) broadcast (stride_b = 0).
#
# The forward and the backward for b of a's shape (da and db) are flat elementwise loops
# (ew_loop); the backward for a broadcast b (G > 0) walks rows per column block (colsum_loop),
# writes da and the column sums of db into db (G == 1), or fp32 (fp64 for fp64) sums per row
# group into db_partial (G, N).
# ---------------------------------------------------------------------------------

_FWD_PARAMS = (
    Param("a", "ptr"), Param("b", "ptr"), Param("y", "ptr"),
    Param("stride_a", "i64"), Param("stride_b", "i64"), Param("M", "i64"), Param("N", "i64"),
)
_BWD_PARAMS = (
    Param("dy", "ptr"), Param("a", "ptr"), Param("b", "ptr"), Param("da", "ptr"), Param("db", "ptr"),
    Param("db_partial", "ptr", "fp32"),
    Param("stride_dy", "i64"), Param("stride_a", "i64"), Param("stride_b", "i64"),
    Param("M", "i64"), Param("N", "i64"), Param("G", "i32"),
)


def _variants(direction: str):
    out = []
    for dtype in DTYPES_WITH_FP64:
        if direction == "fwd":
            out += vector_scalar_pair("mul_tanh_fwd", "mul_tanh_fwd", dtype, ("a", "b", "y"),
                                      ("stride_a", "stride_b"), lambda v: ew_grid("M * N", v), WHOLE_VECTORS_OR_ONE_ROW)
            continue
        # G == 0: b of a's shape, da and db (flat); G > 0: broadcast b, column sums of db
        out += vector_scalar_pair("mul_tanh_bwd", "mul_tanh_bwd", dtype, ("dy", "a", "b", "da", "db"),
                                  ("stride_dy", "stride_a", "stride_b"), lambda v: ew_grid("M * N", v),
                                  WHOLE_VECTORS_OR_ONE_ROW, "G == 0")
        out += vector_scalar_pair("mul_tanh_bwd", "mul_tanh_bwd_cols", dtype, ("dy", "a", "b", "da"),
                                  ("stride_dy", "stride_a"),
                                  colsum_grid, WHOLE_VECTORS, "G > 0")
    return tuple(out)


NEEDS = ("reduce",)   # families a partial build adds: the broadcast backward's column sums finish with reduce_finish

OPS = (
    Op("mul_tanh_fwd", "cuda", "kernels/cuda/mul_tanh.cu", _FWD_PARAMS, _variants("fwd"),
       dtypes=DTYPES_WITH_FP64, doc="y = tanh(a * b); b (M, N) or (N,) with stride_b = 0"),
    Op("mul_tanh_bwd", "cuda", "kernels/cuda/mul_tanh.cu", _BWD_PARAMS, _variants("bwd"),
       dtypes=DTYPES_WITH_FP64,
       doc="da = dy (1 - t^2) b, db = dy (1 - t^2) a, t = tanh(a b); G == 1: db as column sums; "
           "G > 1: those sums per row group, (G, N) fp32 (fp64 for fp64)"),
)
