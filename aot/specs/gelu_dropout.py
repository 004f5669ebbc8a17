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
                # about two trips of 256 threads a block, at most 32 blocks an SM (grid-stride loop)
                grid=(f"fa_min(fa_cdiv(n, {vec * 2 * THREADS}), dev->sms * 32)", "1", "1"),
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
