"""The spec table: every kernel variant fusedaot ships, and the rule that selects it.

The build (aot/build.py), the generated C dispatch, manifest.json, the tests and
`python -m fusedaot` all read this table; nothing about a kernel is written twice.

This module imports nothing beyond the standard library, so that the tests can
enumerate the table on a machine without Triton.

An `Op` is one exported C function, `fusedaot_<op>(stream, device, dtype, <params>)`.
Each `Variant` is one compiled kernel; the generated dispatch tries the variants of
an op in table order and launches the first whose `when` condition (a C expression
over the op's parameters) holds.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

ARCHES = ("sm80", "sm89", "sm90", "ptx")
# Triton target for each library; the PTX library carries compute_80 PTX that the
# driver JIT-compiles for GPUs newer than sm90.
ARCH_CC = {"sm80": 80, "sm89": 89, "sm90": 90, "ptx": 80}

# dtype codes of the C ABI (the Python layer maps torch dtypes onto them).
DTYPES = {"fp32": 0, "fp16": 1, "bf16": 2}
ELEM_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2}
CUDA_TYPE = {"fp32": "float", "fp16": "half_t", "bf16": "bf16_t"}

C_TYPES = {"ptr": "void*", "i32": "int32_t", "i64": "int64_t", "f32": "float"}
TRITON_SCALAR = {"i32": "i32", "i64": "i64", "f32": "fp32"}


@dataclass(frozen=True)
class Param:
    """One argument of an op's C function after (stream, device, dtype).

    ctype: ptr | i32 | i64 | f32.  elem: for pointers, the element type: "T" is the
    variant's dtype, anything else ("fp32") is fixed.
    """

    name: str
    ctype: str
    elem: str = "T"


@dataclass(frozen=True)
class Variant:
    name: str                      # unique, names the generated file: rms_norm_fwd_bf16_b4096_w8_a16
    dtype: str                     # fp16 | bf16 | fp32
    kernel: str                    # Triton function name or CUDA C++ symbol
    when: str                      # C condition on the op's params that selects this variant
    grid: tuple[str, str, str]     # C expressions; `dev->sms` is the device's SM count
    constexprs: dict = field(default_factory=dict)
    num_warps: int = 4             # Triton only
    num_stages: int = 1            # Triton only
    block: tuple[str, str, str] | None = None   # CUDA C++ only: threads per block
    shared: int = 0                # CUDA C++ only: dynamic shared memory bytes
    aligned: tuple[str, ...] = ()  # params that must be 16-byte aligned (pointers) or
                                   # multiples of 16 bytes (row strides, widths) for this variant
    unaligned: bool = False        # the fallback for calls that fail the `aligned` test: the
                                   # test is negated in `when` and no alignment is assumed
    arches: tuple[str, ...] = ARCHES


@dataclass(frozen=True)
class Op:
    name: str
    lang: str                      # triton | cuda
    source: str                    # path from the repository root
    params: tuple[Param, ...]
    variants: tuple[Variant, ...]
    arches: tuple[str, ...] = ARCHES
    doc: str = ""

    def param(self, name: str) -> Param:
        return next(p for p in self.params if p.name == name)


def alignment_condition(op: Op, v: Variant) -> str:
    """The C test that a call meets `v.aligned`: pointers 16-byte aligned, integers
    (strides, widths in elements) a multiple of 16 bytes' worth of elements.  For an
    `unaligned` variant, the negation."""
    terms = []
    for name in v.aligned:
        p = op.param(name)
        if p.ctype == "ptr":
            terms.append(f"FA_ALIGNED16({name})")
        else:
            terms.append(f"({name} % {16 // ELEM_BYTES[v.dtype]} == 0)")
    test = " && ".join(terms) or "1"
    return f"!({test})" if v.unaligned else test


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


# ---------------------------------------------------------------------------------
# rms_norm (Triton): y = x * rsqrt(mean(x^2) + eps) * w, rows of x strided.
#
# Single-block variants hold a [ROWS, BLOCK_N] tile in registers; BLOCK_N is the next
# power of two >= N.  Rows wider than the largest single block use the looped variant,
# which reads the row twice (the second read mostly hits L2).
# ---------------------------------------------------------------------------------

# (BLOCK_N, ROWS per program, num_warps): the heuristic for arches without a tuning table.
# Keep the tile at >= 4K elements so that a program has enough loads in flight, and 8-32
# elements per thread so that the row stays in registers without spilling.
RMS_NORM_BLOCKS = (
    (16, 128, 4),
    (64, 64, 4),
    (256, 16, 4),
    (1024, 4, 4),
    (2048, 2, 4),
    (4096, 1, 8),
    (8192, 1, 8),
    (16384, 1, 16),
    (32768, 1, 16),
)
RMS_NORM_LOOP = (8192, 16)   # chunk width and warps of the looped variant

TUNING_DIR = Path(__file__).resolve().parent / "tuning"


def tuning(arch: str) -> dict:
    """The arch's tuning table (aot/tuning/<arch>.json, written by `python -m aot.tune`), or {}."""
    path = TUNING_DIR / f"{arch}.json"
    return json.loads(path.read_text()) if path.exists() else {}


def rms_norm_configs(arch: str, direction: str, dtype: str):
    """[(BLOCK_N, ROWS, num_warps, num_stages, looped)] for one arch: tuned where measured,
    else heuristic.  A tuning entry is [ROWS, num_warps] or [ROWS, num_warps, num_stages];
    "loop_above" is the widest single block worth using (the looped form is faster beyond)."""
    table = tuning(arch).get(f"rms_norm_{direction}", {}).get(str(ELEM_BYTES[dtype]), {})

    def entry(key, default):
        rows, warps, *stages = table.get(key, default)
        return rows, warps, (stages[0] if stages else 1)

    widest = table.get("loop_above", RMS_NORM_BLOCKS[-1][0])  # wider rows take the looped form
    out = [(block, *entry(str(block), (rows, warps)), False) for block, rows, warps in RMS_NORM_BLOCKS
           if block <= widest]
    out.append((RMS_NORM_LOOP[0], *entry("loop", (1, RMS_NORM_LOOP[1])), True))
    return out


_RMS_FWD_PARAMS = (
    Param("x", "ptr"), Param("y", "ptr"), Param("w", "ptr"),
    Param("stride_x", "i64"), Param("stride_y", "i64"),
    Param("M", "i32"), Param("N", "i32"), Param("eps", "f32"),
)
_RMS_BWD_PARAMS = (
    Param("dy", "ptr"), Param("x", "ptr"), Param("w", "ptr"), Param("dx", "ptr"),
    Param("dw_partial", "ptr", "fp32"), Param("dw", "ptr"),
    Param("stride_dy", "i64"), Param("stride_x", "i64"), Param("stride_dx", "i64"),
    Param("M", "i32"), Param("N", "i32"), Param("eps", "f32"), Param("G", "i32"),
)


_RMS_DW_PARAMS = (Param("dw_partial", "ptr", "fp32"), Param("dw", "ptr"), Param("G", "i32"), Param("N", "i32"))
RMS_NORM_DW = (32, 64, 4)   # columns per program, partial rows per step, warps


def _rms_norm_dw_variants() -> tuple[Variant, ...]:
    block_n, block_g, warps = RMS_NORM_DW
    return tuple(Variant(
        name=f"rms_norm_dw_{dtype}_b{block_n}_g{block_g}_w{warps}",
        dtype=dtype,
        kernel="_rms_norm_dw",
        when=f"dtype == {DTYPES[dtype]}",
        grid=(f"fa_cdiv(N, {block_n})", "1", "1"),
        constexprs=dict(BLOCK_N=block_n, BLOCK_G=block_g),
        num_warps=warps,
    ) for dtype in ("bf16", "fp16", "fp32"))


def _merge_arches(variants):
    """One Variant per name, valid on every arch that produced it (same config)."""
    merged = {}
    for v in variants:
        old = merged.get(v.name)
        merged[v.name] = v if old is None else replace(old, arches=old.arches + v.arches)
    return tuple(merged.values())


def _rms_norm_variants(direction: str) -> tuple[Variant, ...]:
    """The conditions of an op's variants are disjoint (width ranges, aligned or not, weight
    or not), so the dispatch order does not matter and each arch may have its own configs."""
    ptrs = ("x", "y", "w") if direction == "fwd" else ("dy", "x", "w", "dx")
    strides = ("stride_x", "stride_y") if direction == "fwd" else ("stride_dy", "stride_x", "stride_dx")
    out = []
    for arch in ARCHES:
        for dtype in ("bf16", "fp16", "fp32"):
            lower = 0
            for block, rows, warps, stages, looped in rms_norm_configs(arch, direction, dtype):
                width = f"N > {lower}" if looped else f"N > {lower} && N <= {block}"
                lower = block
                tag = (f"loop{block}" if looped else f"b{block}") + f"_r{rows}_w{warps}" + (f"_s{stages}" if stages > 1 else "")
                for aligned in (True, False):
                    for has_w in (True, False):
                        cond = [f"dtype == {DTYPES[dtype]}", "w != 0" if has_w else "w == 0", width]
                        out.append(Variant(
                            name=f"rms_norm_{direction}_{dtype}_{tag}"
                                 f"{'' if has_w else '_nw'}{'_a16' if aligned else '_u'}",
                            dtype=dtype,
                            kernel=f"_rms_norm_{direction}",
                            when=" && ".join(cond),
                            grid=("fa_cdiv(M, %d)" % rows if direction == "fwd" else "G", "1", "1"),
                            constexprs=dict(BLOCK_N=block, ROWS=rows, HAS_W=has_w, LOOPED=looped),
                            num_warps=warps,
                            num_stages=stages,
                            aligned=ptrs + strides + ("N",),
                            unaligned=not aligned,
                            arches=(arch,),
                        ))
    return _merge_arches(out)


# ---------------------------------------------------------------------------------
# bias_gelu (CUDA C++): y = gelu(x + bias), bias broadcast over rows.
#
# A block covers 256 threads x VEC columns; threads loop over rows.  The aligned
# variants move 16 bytes per access (VEC = 16 / sizeof(T)), the others one element.
# ---------------------------------------------------------------------------------

BIAS_GELU_THREADS = 256

_BG_FWD_PARAMS = (
    Param("x", "ptr"), Param("bias", "ptr"), Param("y", "ptr"),
    Param("stride_x", "i64"), Param("M", "i64"), Param("N", "i64"), Param("approximate", "i32"),
)
_BG_BWD_PARAMS = (
    Param("dy", "ptr"), Param("x", "ptr"), Param("bias", "ptr"), Param("dx", "ptr"),
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
            # Forward: enough row groups to fill the device about 8 blocks deep.
            rows_fwd = f"fa_min(M, fa_max(1, 8 * dev->sms / fa_cdiv(N, {cols})))"
            out.append(Variant(
                name=f"bias_gelu_{direction}_{dtype}_v{vec}",
                dtype=dtype,
                kernel=f"bias_gelu_{direction}_{dtype}_v{vec}",
                when=f"dtype == {DTYPES[dtype]}",
                grid=(f"fa_cdiv(N, {cols})", rows_fwd if direction == "fwd" else "G", "1"),
                block=(str(BIAS_GELU_THREADS), "1", "1"),
                aligned=ptrs + strides + ("N",),
                unaligned=vec == 1,
            ))
    return tuple(out)


OPS: tuple[Op, ...] = (
    Op("rms_norm_fwd", "triton", "kernels/triton/rms_norm.py", _RMS_FWD_PARAMS,
       _rms_norm_variants("fwd"), doc="y = x * rsqrt(mean(x^2) + eps) [* w]"),
    Op("rms_norm_bwd", "triton", "kernels/triton/rms_norm.py", _RMS_BWD_PARAMS,
       _rms_norm_variants("bwd"), doc="dx, and dw: per-program partial sums (G, N) fp32, or dw itself when G == 1"),
    Op("rms_norm_dw", "triton", "kernels/triton/rms_norm.py", _RMS_DW_PARAMS,
       _rms_norm_dw_variants(), doc="dw = sum of the partial rows, in the weight's dtype"),
    Op("bias_gelu_fwd", "cuda", "kernels/cuda/bias_gelu.cu", _BG_FWD_PARAMS,
       _bias_gelu_variants("fwd"), doc="y = gelu(x + bias)"),
    Op("bias_gelu_bwd", "cuda", "kernels/cuda/bias_gelu.cu", _BG_BWD_PARAMS,
       _bias_gelu_variants("bwd"), doc="dx and per-row-group partial dbias (G, N) fp32"),
)


def enumerate_kernels(arches=ARCHES):
    """(op, variant, arch) for every image the build must produce."""
    for op in OPS:
        for v in op.variants:
            for arch in arches:
                if arch in op.arches and arch in v.arches:
                    yield op, v, arch
