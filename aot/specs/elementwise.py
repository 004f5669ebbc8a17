"""Spec helpers shared by the elementwise CUDA C++ families (add_relu, mul_tanh, reduce): the
vectorised / scalar variant pair and the grid of kernels/cuda/elementwise.cuh's ew_loop.

Not an op family itself (it is not in FAMILIES); the families import it.
"""
from __future__ import annotations

from .core import DTYPES, ELEM_BYTES, Variant

THREADS = 256                       # EW_THREADS
DTYPES_WITH_FP64 = ("bf16", "fp16", "fp32", "fp64")


def vec_of(dtype: str) -> int:
    """Elements in one 16-byte access."""
    return 16 // ELEM_BYTES[dtype]


def ew_grid(elements: str, vec: int) -> tuple[str, str, str]:
    """ew_loop's grid: a thread for every vector, within CUDA's limit on blocks; the kernel's
    grid-stride loop covers whatever that limit leaves, so any grid is correct."""
    return (f"fa_min(fa_cdiv({elements}, {vec * THREADS}), 2147483647)", "1", "1")


def colsum_cols(vec: int) -> int:
    """Columns of one colsum_loop block: COLSUM_LANES(VEC) threads of `vec` columns each
    (kernels/cuda/elementwise.cuh)."""
    return (8 if vec > 1 else 16) * vec


def colsum_grid(vec: int) -> tuple[str, str, str]:
    """colsum_loop's grid: a block for every colsum_cols(vec) columns and each of G row groups."""
    return (f"fa_cdiv(N, {colsum_cols(vec)})", "G", "1")


def alignment_test(pointers, integers, vec: int) -> str:
    """The C test that pointers are 16-byte aligned and integers multiples of `vec`."""
    return " && ".join([f"FA_ALIGNED16({p})" for p in pointers] + [f"({i} % {vec} == 0)" for i in integers])


# What the vector variant needs of N beyond the alignment of pointers and strides.
WHOLE_VECTORS = "(N % {vec} == 0)"                     # every row a whole number of vectors
WHOLE_VECTORS_OR_ONE_ROW = "(N % {vec} == 0 || M == 1)"  # ... or one flat row with a scalar tail
ANY_WIDTH = ""                                          # the kernel takes row tails one by one


def vector_scalar_pair(op: str, kernel: str, dtype: str, pointers, strides, grid, width: str,
                       extra_when: str = "", threads: int = THREADS) -> tuple[Variant, Variant]:
    """The 16-byte variant of `kernel` for `dtype` and its one-element fallback, with disjoint
    conditions covering every call: the vector variant needs the pointers 16-byte aligned, the
    strides multiples of 16 bytes and N as `width` says (one of the constants above).
    extra_when: a further condition of both (e.g. the G that selects a kernel shape).
    grid(vec) -> the grid; threads: the block."""
    vec = vec_of(dtype)
    width = width.format(vec=vec)
    vector_test = " && ".join(t for t in (alignment_test(pointers, strides, vec), width) if t)
    base = f"dtype == {DTYPES[dtype]}" + (f" && {extra_when}" if extra_when else "")
    suffix = kernel[len(op):]  # e.g. "" or "_cols" after the op's name
    vector = Variant(name=f"{op}_{dtype}{suffix}_v{vec}", dtype=dtype, kernel=f"{kernel}_{dtype}_v{vec}",
                     when=" && ".join(t for t in (base, width) if t), grid=grid(vec),
                     block=(str(threads), "1", "1"), aligned=tuple(pointers) + tuple(strides))
    scalar = Variant(name=f"{op}_{dtype}{suffix}_v1", dtype=dtype, kernel=f"{kernel}_{dtype}_v1",
                     when=f"{base} && !({vector_test})", grid=grid(1), block=(str(threads), "1", "1"))
    return vector, scalar
