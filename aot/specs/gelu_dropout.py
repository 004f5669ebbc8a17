"""gelu_dropout (CUDA C++): y = dropout(gelu(x)), the mask from Philox4x32-10, forward and backward."""
from __future__ import annotations

from .core import DTYPES, ELEM_BYTES, Op, Param, Variant
from .elementwise import DTYPES_WITH_FP64, THREADS

# ---------------------------------------------------------------------------------
# gelu_dropout: x flat (n contiguous elements).  A thread takes chunks of VEC elements,
# VEC = 16 bytes' worth but at least 8 (one Philox call per 8 elements, 16 random bits each):
# one to four 16-byte accesses when the pointers are aligned, else 8 elements with one access
# each.  The last n % VEC elements go one by one.  rng: null, or an int64 pair (seed, counter)
# in device memory that replaces the seed and counter arguments.  dropout = 0: plain GELU.
# ---------------------------------------------------------------------------------

_RNG = (Param("rng", "ptr", "i64"), Param("n", "i64"), Param("seed", "i64"), Param("counter", "i64"),
        Param("threshold", "i64"), Param("scale_bits", "i64"), Param("dropout", "i32"))
_FWD_PARAMS = (Param("x", "ptr"), Param("y", "ptr")) + _RNG
_BWD_PARAMS = (Param("dy", "ptr"), Param("x", "ptr"), Param("dx", "ptr")) + _RNG


def chunks_per_trip(direction: str, dtype: str, vector: bool) -> int:
    """U in kernels/cuda/gelu_dropout.cu's gelu_dropout_map: the chunks a thread loads before its
    math.  The 16-bit forward with 16-byte accesses takes 4 (64 bytes of x in flight: through
    ctypes on an H100, bf16 with p = 0.1, 72.9% of copy at 16M elements and 92.0% at 256M, against
    66.5% and 90.7% with 2; docs/benchmarks.md, "gelu_dropout: four chunks a trip")."""
    if direction == "bwd" or ELEM_BYTES[dtype] > 2:
        return 1
    return 4 if vector else 2


def _variants(direction: str):
    pointers = ("x", "y") if direction == "fwd" else ("dy", "x", "dx")
    out = []
    for dtype in DTYPES_WITH_FP64:
        for vector in (True, False):
            vec = max(8, 16 // ELEM_BYTES[dtype])
            access = f"v{vec}" if vector else f"s{vec}"
            out.append(Variant(
                name=f"gelu_dropout_{direction}_{dtype}_{access}", dtype=dtype,
                kernel=f"gelu_dropout_{direction}_{dtype}_{access}", when=f"dtype == {DTYPES[dtype]}",
                # a thread for 2 chunks (one trip, or two of one chunk) or one trip of more, at
                # most 32 blocks of 256 threads an SM (grid-stride loop)
                grid=(f"fa_min(fa_cdiv(n, {vec * max(2, chunks_per_trip(direction, dtype, vector)) * THREADS}), "
                      "dev->sms * 32)", "1", "1"),
                block=(str(THREADS), "1", "1"), aligned=pointers, unaligned=not vector))
    return tuple(out)


OPS = (
    Op("gelu_dropout_fwd", "cuda", "kernels/cuda/gelu_dropout.cu", _FWD_PARAMS, _variants("fwd"),
       dtypes=DTYPES_WITH_FP64,
       doc=("y = gelu(x) * keep * scale; keep = 16-bit half e % 8 of "
            "Philox4x32-10(counter, e / 8; seed) >= threshold")),
    Op("gelu_dropout_bwd", "cuda", "kernels/cuda/gelu_dropout.cu", _BWD_PARAMS, _variants("bwd"),
       dtypes=DTYPES_WITH_FP64, doc="dx = dy * gelu'(x) * keep * scale, keep regenerated from (seed, counter)"),
)
