"""reduce (CUDA C++): sum of squares and mean of absolute values over one dimension, forward and
backward."""
from __future__ import annotations

from .core import DTYPES, Op, Param, Variant
from .elementwise import ANY_WIDTH, DTYPES_WITH_FP64, THREADS, WHOLE_VECTORS, ew_grid, vec_of, vector_scalar_pair

# ---------------------------------------------------------------------------------
# x is viewed as (M, R, N) = (outer, reduced, inner); kind 0: sum of squares, 1: mean of |x|.
# The caller picks the launch shape (L, S, chunk) from the sizes and the SM count:
# - reduce_rows (N = 1): L lanes a row chunk, S chunks a row, M * S * L threads;
# - reduce_cols (N > 1): blocks of COLS_THREADS threads, L lanes of 16 bytes along N (L vectors,
#   or 16 L bytes of elements in the one-element variant) by the rest along R, one per (outer
#   index, column tile, chunk of R);
# with S > 1 they write fp32 (fp64 for fp64) partial sums (S, outputs), added by reduce_finish.
# The backward is a flat elementwise loop over dx.
# ---------------------------------------------------------------------------------

FINISH_COLS = 32  # FINISH_COLS in reduce.cu (tests/test_specs.py checks): outputs a reduce_finish block adds
COLS_THREADS = 128  # RED_COLS_THREADS in reduce.cu (tests/test_specs.py checks): a reduce_cols block

_ROWS_PARAMS = (
    Param("x", "ptr"), Param("out", "ptr"), Param("partial", "ptr", "fp32"),
    Param("stride_x", "i64"), Param("M", "i64"), Param("N", "i64"), Param("S", "i64"), Param("chunk", "i64"),
    Param("L", "i32"), Param("kind", "i32"),
)
_COLS_PARAMS = (
    Param("x", "ptr"), Param("out", "ptr"), Param("partial", "ptr", "fp32"),
    Param("stride_o", "i64"), Param("stride_r", "i64"), Param("M", "i64"), Param("R", "i64"), Param("N", "i64"),
    Param("S", "i64"), Param("chunk", "i64"), Param("L", "i32"), Param("kind", "i32"),
)
_FINISH_PARAMS = (
    Param("partial", "ptr", "fp32"), Param("out", "ptr"), Param("M", "i64"), Param("S", "i64"), Param("R", "i64"),
    Param("kind", "i32"),
)
_BWD_PARAMS = (
    Param("dy", "ptr"), Param("x", "ptr"), Param("dx", "ptr"),
    Param("stride_o", "i64"), Param("stride_r", "i64"), Param("stride_go", "i64"), Param("gcol", "i64"),
    Param("M", "i64"), Param("R", "i64"), Param("N", "i64"), Param("count", "i64"), Param("kind", "i32"),
)


def _rows():
    out = []
    for dtype in DTYPES_WITH_FP64:
        # chunks start at multiples of 16 bytes and the row tail is read one element at a time,
        # so N needs no alignment
        out += vector_scalar_pair("reduce_rows", "reduce_rows", dtype, ("x",), ("stride_x",),
                                  lambda v: ("fa_cdiv(M * S * L, 256)", "1", "1"), ANY_WIDTH)
    return tuple(out)


def _cols():
    out = []
    for dtype in DTYPES_WITH_FP64:
        # a block covers L 16-byte pieces of a row in either variant
        cols = f"L * {vec_of(dtype)}"
        out += vector_scalar_pair("reduce_cols", "reduce_cols", dtype, ("x",), ("stride_o", "stride_r"),
                                  lambda v: (f"M * fa_cdiv(N, {cols})", "S", "1"), WHOLE_VECTORS,
                                  threads=COLS_THREADS)
    return tuple(out)


# reduce_bwd_cols (kernels/cuda/reduce.cu): BWD_LANES threads across a row of x, a vector each, by
# THREADS / BWD_LANES rows; it takes dy following the inner dimension (gcol != 0) with at least
# BWD_LANES vectors a row, ew_loop's flat form every other call.
BWD_LANES = 32   # RED_BWD_LANES
GRID_LIMIT = 65535   # CUDA's grid y and z; the kernel loops past it


def _bwd():
    out = []
    for dtype in DTYPES_WITH_FP64:
        # dy's row stride is N (gcol = 1, covered by N % VEC) or a scalar per row (gcol = 0)
        cols = f"gcol != 0 && N >= {BWD_LANES * vec_of(dtype)}"
        out += vector_scalar_pair(
            "reduce_bwd", "reduce_bwd_cols", dtype, ("dy", "x", "dx"), ("stride_o", "stride_r"),
            lambda v: (f"fa_cdiv(N, {BWD_LANES * v})", f"fa_min(fa_cdiv(R, {THREADS // BWD_LANES}), {GRID_LIMIT})",
                       f"fa_min(M, {GRID_LIMIT})"), WHOLE_VECTORS, extra_when=cols)
        out += vector_scalar_pair("reduce_bwd", "reduce_bwd", dtype, ("dy", "x", "dx"),
                                  ("stride_o", "stride_r"), lambda v: ew_grid("M * R * N", v), WHOLE_VECTORS,
                                  extra_when=f"!({cols})")
    return tuple(out)


def _finish():
    return tuple(Variant(name=f"reduce_finish_{dtype}", dtype=dtype, kernel=f"reduce_finish_{dtype}",
                         when=f"dtype == {DTYPES[dtype]}", grid=(f"fa_cdiv(M, {FINISH_COLS})", "1", "1"),
                         block=(str(THREADS), "1", "1"))
                 for dtype in DTYPES_WITH_FP64)


OPS = (
    Op("reduce_rows", "cuda", "kernels/cuda/reduce.cu", _ROWS_PARAMS, _rows(), dtypes=DTYPES_WITH_FP64,
       doc="out[m] (S = 1) or partial[s, m] = sum over the chunk s of row m of x^2 (kind 0) or |x| (1)"),
    Op("reduce_cols", "cuda", "kernels/cuda/reduce.cu", _COLS_PARAMS, _cols(), dtypes=DTYPES_WITH_FP64,
       doc="out[m, n] (S = 1) or partial[s, m, n] = sum over the chunk s of r of x[m, r, n]^2 or |x[m, r, n]|"),
    Op("reduce_finish", "cuda", "kernels/cuda/reduce.cu", _FINISH_PARAMS, _finish(), dtypes=DTYPES_WITH_FP64,
       doc="out[j] = sum over s of partial[s, j] (divided by R for kind 1)"),
    Op("reduce_bwd", "cuda", "kernels/cuda/reduce.cu", _BWD_PARAMS, _bwd(), dtypes=DTYPES_WITH_FP64,
       doc="dx = 2 x dy (kind 0) or sign(x) dy / count (kind 1), dy[o * stride_go + c * gcol]"),
)
