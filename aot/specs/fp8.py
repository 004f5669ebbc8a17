"""fp8 (Triton): e4m3fn quantization with dynamic per-tensor or per-row scales, and
dequantization.  Kernels in kernels/triton/fp8.py.

The FP8 data is passed as bytes (u8 pointers), so these ops exist on every library:
sm89 and sm90 convert with the hardware's cvt.rn.satfinite (HW_CVT), sm80 and the
compute_80 PTX library (whose instruction set has no FP8 conversion) with an exact
integer emulation that gives the same bits.

Per-tensor quantization is two launches (fp8_amax, then fp8_quantize_tensor): the scale
depends on every element, so x is read twice.  Per-row quantization is one launch that
holds each row in registers (x read once) up to FP8_ROW_BLOCKS[-1] columns, and reads
wider rows twice (the second read mostly from L2).

Configs are heuristics for every arch (memory-bound kernels: 4-16K elements per program,
8-32 per thread, 16-byte accesses when aligned); they are not tuned per arch.
"""
from __future__ import annotations

from .core import DTYPES, Op, Param, Variant, merge_arches

HW_CVT_ARCHES = ("sm89", "sm90")          # cvt to e4m3 in hardware
EMULATED_ARCHES = ("sm80", "ptx")         # cvt emulated with integer arithmetic

# Element-wise tiles (amax, per-tensor quantization, dequantization): (widest N, ROWS, BLOCK_N, warps).
FP8_TILES = ((512, 32, 512, 8), (None, 4, 2048, 8))
# Per-row quantization, whole row in registers: (BLOCK_N, ROWS, warps); wider rows loop over
# FP8_ROW_LOOP = (chunk, warps).  Every power of two from 2048 up: a row in a block twice its
# width computes (div_rn, conversion) on as many masked lanes as live ones (4096-wide bf16 rows in
# 8192-wide blocks ran at 40% of copy on an H100, 8192-wide rows at 99%).
FP8_ROW_BLOCKS = ((512, 16, 8), (2048, 4, 8), (4096, 2, 8), (8192, 1, 8))
FP8_ROW_LOOP = (4096, 8)

_AMAX_PARAMS = (Param("x", "ptr"), Param("amax", "ptr", "i32"), Param("stride_x", "i64"),
                Param("M", "i32"), Param("N", "i32", "u8"))
_QT_PARAMS = (Param("x", "ptr"), Param("q", "ptr", "u8"), Param("scale", "ptr", "fp32"),
              Param("amax", "ptr", "i32"), Param("stride_x", "i64"), Param("stride_q", "i64", "u8"),
              Param("M", "i32"), Param("N", "i32", "u8"))
_QR_PARAMS = (Param("x", "ptr"), Param("q", "ptr", "u8"), Param("scale", "ptr", "fp32"),
              Param("stride_x", "i64"), Param("stride_q", "i64", "u8"), Param("M", "i32"), Param("N", "i32", "u8"))
_DQ_PARAMS = (Param("q", "ptr", "u8"), Param("scale", "ptr", "fp32"), Param("y", "ptr"),
              Param("stride_q", "i64", "u8"), Param("stride_y", "i64"), Param("stride_s", "i64"),
              Param("M", "i32"), Param("N", "i32", "u8"))


def _aligned_pair(aligned: tuple[str, ...]):
    """(tag, aligned, unaligned) of the variant for 16-byte-aligned calls (pointers 16-byte
    aligned; strides and N multiples of 16 bytes of what they count, 16 elements of FP8)
    and of its fallback for every other call."""
    return (("_a16", aligned, False), ("_u", aligned, True))


def _tiled(op: str, kernel: str, aligned: tuple[str, ...], arches_by_cvt) -> tuple[Variant, ...]:
    out = []
    for hw, arches in arches_by_cvt:
        for dtype in ("bf16", "fp16", "fp32"):
            lower = 0
            for widest, rows, block_n, warps in FP8_TILES:
                width = f"N > {lower}" + (f" && N <= {widest}" if widest else "")
                lower = widest
                for tag, names, unaligned in _aligned_pair(aligned):
                    constexprs = dict(ROWS=rows, BLOCK_N=block_n)
                    cvt = ""
                    if hw is not None:
                        constexprs["HW_CVT"] = hw
                        cvt = "_cvt" if hw else "_emu"
                    out.append(Variant(
                        name=f"{op}_{dtype}_r{rows}_b{block_n}_w{warps}{cvt}{tag}",
                        dtype=dtype, kernel=kernel,
                        when=f"dtype == {DTYPES[dtype]} && {width}",
                        grid=(f"fa_cdiv(M, {rows})", f"fa_cdiv(N, {block_n})", "1"),
                        constexprs=constexprs, num_warps=warps,
                        aligned=names, unaligned=unaligned, arches=arches))
    return merge_arches(out)


def _quantize_row_variants() -> tuple[Variant, ...]:
    out = []
    for hw, arches in ((True, HW_CVT_ARCHES), (False, EMULATED_ARCHES)):
        for dtype in ("bf16", "fp16", "fp32"):
            lower = 0
            configs = [(b, r, w, False) for b, r, w in FP8_ROW_BLOCKS] + [(FP8_ROW_LOOP[0], 1, FP8_ROW_LOOP[1], True)]
            for block, rows, warps, looped in configs:
                width = f"N > {lower}" if looped else f"N > {lower} && N <= {block}"
                lower = block
                for tag, names, unaligned in _aligned_pair(("x", "q", "stride_x", "stride_q", "N")):
                    out.append(Variant(
                        name=f"fp8_quantize_row_{dtype}_{'loop' if looped else 'b'}{block}_r{rows}_w{warps}"
                             f"{'_cvt' if hw else '_emu'}{tag}",
                        dtype=dtype, kernel="_fp8_quantize_row",
                        when=f"dtype == {DTYPES[dtype]} && {width}",
                        grid=(f"fa_cdiv(M, {rows})", "1", "1"),
                        constexprs=dict(ROWS=rows, BLOCK_N=block, LOOPED=looped, HW_CVT=hw),
                        num_warps=warps, aligned=names, unaligned=unaligned, arches=arches))
    return tuple(out)


_SRC = "kernels/triton/fp8.py"
_BOTH = ((True, HW_CVT_ARCHES), (False, EMULATED_ARCHES))
_ANY = ((None, HW_CVT_ARCHES + EMULATED_ARCHES),)

OPS = (
    Op("fp8_amax", "triton", _SRC, _AMAX_PARAMS,
       _tiled("fp8_amax", "_fp8_amax", ("x", "stride_x", "N"), _ANY),
       doc="amax = max |x| (fp32 bits, atomic max into a zeroed int32)"),
    Op("fp8_quantize_tensor", "triton", _SRC, _QT_PARAMS,
       _tiled("fp8_quantize_tensor", "_fp8_quantize_tensor", ("x", "q", "stride_x", "stride_q", "N"), _BOTH),
       doc="scale = max(amax / 448, 2^-126) (1 if amax == 0); q = e4m3(clamp(x / scale, +-448))"),
    Op("fp8_quantize_row", "triton", _SRC, _QR_PARAMS, _quantize_row_variants(),
       doc="per row: scale = max(amax / 448, 2^-126) (1 if amax == 0); q = e4m3(clamp(x / scale, +-448))"),
    Op("fp8_dequantize", "triton", _SRC, _DQ_PARAMS,
       _tiled("fp8_dequantize", "_fp8_dequantize", ("q", "y", "stride_q", "stride_y", "N"), _ANY),
       doc="y = q * scale[row * stride_s] (stride_s 0: per tensor, 1: per row)"),
)
