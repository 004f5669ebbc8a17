"""fp8_gemm (Triton): c = (a @ b^T) * a_scale * b_scale (+ bias), a and b e4m3fn.
Kernel in kernels/triton/fp8_gemm.py; sm89 and sm90 libraries only (FP8 tensor cores).

Also the GEMM family's shared vocabulary (gemm_variants), used by gated_mlp and
attention_scores: per arch and shape class one tile config (BLOCK_M, BLOCK_N, BLOCK_K,
GROUP_M, num_warps, num_stages) for calls whose pointers are 16-byte aligned and whose
strides, K and N are multiples of 16 bytes, and one fallback config per dtype for every
other call (no alignment assumed: narrow loads, slow but right).  Classes whose configs
are equal share one variant.  N is in the aligned list although the output's row stride
already is: only then can the compiler see that the store's column mask changes at 16-byte
boundaries and store 16 bytes at a time.  Without it the epilogue stores one element per
instruction, which cost the 128x128 FP8 tile 30% of its time on an H100 (a stride of N
elements is what the launchers pass, so no call loses the aligned variant by it).

fast_accum (the C parameter behind fp8_gemm(..., use_fast_accum=True), as in
torch._scaled_mm): on sm90 each aligned config comes twice, a promoted variant
(ACC_PROMOTE 128: the wgmma partial sums are added into an fp32 accumulator every 128
elements of K, like cuBLAS without fast accumulation) for fast_accum == 0 and a "_fast"
variant (ACC_PROMOTE None: Triton's default, the tensor cores accumulate on their own) for
fast_accum != 0, with tiles of its own (no second accumulator takes registers).  The kernel
has no such argument: the flag only selects the variant (compile.triton_signature passes
the kernel's own arguments; every op parameter is in scope of the dispatch's conditions).
sm89 (Ada's mma.sync accumulates in fp32) and the unaligned fallbacks ignore it.

Shape classes (by M, the rows of a: tokens): "small" M <= 64 (decode: the weight's bytes
dominate, many narrow column tiles), "medium" M <= 1024, "large" beyond.
- sm90: python -m aot.tune_gemm (Triton's JIT on an H100/H200) writes aot/tuning/sm90.json's
  "fp8_gemm" (promoted) and "fp8_gemm_fast" entries; FP8_GEMM_SM90 / FP8_GEMM_SM90_FAST are
  used for classes the table lacks.  Promoted, the tuned large tile is 256x128x128 with 4
  stages (949 TFLOP/s geomean on an H200 against 880-918 for 128x128x128; 128x256 runs at
  half speed: its two accumulators, the fp32 one and the wgmma partial sums, spill).  The
  defaults here (128x128x128) are chosen from the SASS, not timed.  Fast defaults: large 128x256x128, GROUP_M 8, 8 warps,
  3 stages (193 registers, no spills), measured on an H200 (Triton 3.6) at 1288-1421 TFLOP/s
  at 4096^3, 8192^3 and 16384x8192x7168 against ~950 for the best promoted config; small and
  medium are the tuned promoted tiles without promotion, not timed.  wgmma needs BLOCK_M a
  multiple of 64 and 4 or 8 warps.
- sm90, rows as TMA_ROWS, bf16/fp16 output, aligned: three Splits below.  Promoted, any scales
  and bias: the CUDA C++ kernel kernels/cuda/fp8_gemm_sm90.cu (TMA copies, two consumer warp
  groups promoting their own wgmma chains): 1343-1389 TFLOP/s per-tensor (0.92-1.00x
  torch._scaled_mm), 1184-1362 per-row (0.90-1.05x _scaled_mm with per-row scales), on an H100.
  The same kernel takes the fast-accumulation calls with per-row scales or a bias (it
  promotes anyway, and ran level with or up to 6% faster than a Triton TMA kernel without
  promotion there); one scale per operand and no bias, _fp8_gemm_tma (warp-specialised, TMA
  copies, FP8_GEMM_SM90_TMA_FAST: 1334-1469, 2-6% faster than the promoted kernel).
- sm89 (Ada: mma.sync FP8, 99 KiB of shared memory per block): heuristics, not measured:
  128x128x64 tiles with 4 stages (64 KiB) for the large classes, 64x64x128 for decode.
"""
from __future__ import annotations

from dataclasses import replace
from typing import NamedTuple

from .core import DTYPES, Op, Param, TensorMap, Variant, merge_arches, tuning

SHAPE_CLASSES = {"small": "M <= 64", "medium": "M > 64 && M <= 1024", "large": "M > 1024"}
GEMM_DTYPES = ("bf16", "fp16", "fp32")   # output dtypes

# config: (BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, num_warps, num_stages, ACC_PROMOTE)
# ACC_PROMOTE (sm90): add the wgmma partial sums into the fp32 accumulator every 128
# elements of K, as cuBLAS does without "fast accumulation"; 0 never (Triton's default).
# Promotion needs a second accumulator in registers: 128x256 tiles spill (256x128 do not).
FP8_GEMM_SM90 = {"small": (64, 64, 256, 1, 4, 4, 128), "medium": (128, 128, 128, 8, 8, 4, 128),
                 "large": (128, 128, 128, 8, 8, 4, 128)}
FP8_GEMM_SM89 = {"small": (64, 64, 128, 1, 4, 4, 0), "medium": (128, 128, 64, 8, 8, 4, 0),
                 "large": (128, 128, 64, 8, 8, 4, 0)}
FP8_GEMM_FALLBACK = {"sm90": (64, 64, 64, 8, 4, 2, 64), "sm89": (64, 64, 64, 8, 4, 2, 0)}
# fast_accum != 0 on sm90: ACC_PROMOTE 0 (None for Triton), so no second accumulator.
FP8_GEMM_SM90_FAST = {"small": (64, 32, 256, 1, 4, 4, 0), "medium": (64, 128, 128, 8, 4, 4, 0),
                      "large": (128, 256, 128, 8, 8, 3, 0)}
FAST_FLAG = "fast_accum"   # the i32 op parameter that selects the fast variants
# Rows the TMA kernels take: every large call; medium ones from 257 rows when N and K are 8192
# or more (promoted, 5-35% faster than the medium pointer kernel at N = K = 8192 and M 320-512
# or 1024, level at 640-768, on an H100; docs/benchmarks.md); at N = K = 4096 the pointer
# kernel's 64-row tiles won up to M = 1024, and at M <= 256 a 256-row tile leaves half the SMs
# without one.
TMA_ROWS = "M > 1024 || (M > 256 && N >= 8192 && K >= 8192)"
TMA_DTYPES = ("bf16", "fp16")   # output dtypes of the TMA rows' kernels: _fp8_gemm_tma's fp32 tile of c
                                # (128 KiB) leaves no shared memory for 3 stages; the CUDA C++ kernel stores
                                # 16-bit pairs; fp32 calls keep the pointer kernels
# sm90, promoted, rows as TMA_ROWS, bf16/fp16 output, any scales and bias: the CUDA C++ kernel
# kernels/cuda/fp8_gemm_sm90.cu (TMA copies; two consumer warp groups, each adding its own
# wgmma chains into fp32 while the other's run; 128 x 256 tiles, 4 stages of 48 KiB, one block
# of 384 threads per SM).  The config names its tile (BLOCK_M, BLOCK_N size the grid); the
# kernel fixes it.  15-18% faster than the Triton kernels it replaced at 4096^3, 8192^3 and
# 16384x8192x7168, on an H100 (docs/benchmarks.md).
FP8_GEMM_SM90_CUDA = {"medium": (128, 256, 128, 8, 12, 4, 128), "large": (128, 256, 128, 8, 12, 4, 128)}
FP8_GEMM_SM90_CUDA_SHARED = 4 * (128 + 256) * 128 + 1024 + 64   # the stages, their alignment, the barriers
FP8_GEMM_SM90_CUDA_MAPS = (TensorMap("a", "K", "M", "stride_am", 128, 128),    # a's and b's boxes of a K step
                           TensorMap("b", "K", "N", "stride_bn", 128, 256))
# With fast_accum and one scale per operand, no bias: _fp8_gemm_tma, warp-specialised, one
# program per SM (4 warps asked for: Triton makes them two consumer warp groups of 128 rows
# each plus a producer group, 12 warps in all).  With per-row scales or a bias the CUDA C++
# kernel takes those calls too (Triton 3.6 miscompiled them warp-specialised; a Triton TMA
# kernel without warp specialisation ran level with the CUDA C++ one or up to 6% slower).
FP8_GEMM_SM90_TMA_FAST = {"medium": (256, 128, 128, 8, 4, 3, 0), "large": (256, 128, 128, 8, 4, 3, 0)}
_ONE_SCALE_NO_BIAS = "has_bias == 0 && stride_sa == 0 && stride_sb == 0"
TMA_WHEN = f"({TMA_ROWS}) && {_ONE_SCALE_NO_BIAS}"
TMA_ROWS_WHEN = f"({TMA_ROWS}) && !({_ONE_SCALE_NO_BIAS})"
FP8_GEMM_SCRATCH = 512          # bytes of scratch a program Triton asks for (3 TMA descriptors of 128 bytes)
PERSISTENT_GRID = "fa_min(dev->sms, fa_cdiv(M, BLOCK_M) * fa_cdiv(N, BLOCK_N))"


class Split(NamedTuple):
    """Aligned calls of some classes that take another kernel where `when` holds (gemm_variants'
    split_by_arch): configs / fast_configs, {class: config} for FAST_FLAG == 0 / != 0.
    whole: classes whose aligned calls of these dtypes the arch's splits take between them,
    every one (their own variants would never be picked, so none is built).
    source: a CUDA C++ kernel instead of a Triton one (`kernel`_<dtype> in that file, launched
    with `block` threads, `shared` bytes and the descriptors `tensor_maps`; the config only
    names the variant and sizes the grid)."""
    kernel: str
    grid: str
    when: str
    dtypes: tuple[str, ...]
    configs: dict
    fast_configs: dict
    whole: tuple[str, ...] = ()
    source: str | None = None
    block: tuple[str, str, str] | None = None
    shared: int = 0
    tensor_maps: tuple[TensorMap, ...] = ()


_PARAMS = (
    Param("a", "ptr", "fp8e4nv"), Param("b", "ptr", "fp8e4nv"), Param("c", "ptr"),
    Param("a_scale", "ptr", "fp32"), Param("b_scale", "ptr", "fp32"), Param("bias", "ptr"),
    Param("stride_am", "i64", "u8"), Param("stride_bn", "i64", "u8"), Param("stride_cm", "i64"),
    Param("stride_sa", "i64"), Param("stride_sb", "i64"),
    Param("M", "i32"), Param("N", "i32"), Param("K", "i32", "u8"), Param("has_bias", "i32"),
    Param(FAST_FLAG, "i32"),   # selects a variant only: the kernel takes no such argument
    # Triton's global scratch memory for the TMA variants (not a kernel argument of its own)
    Param("scratch", "ptr", "u8"), Param("scratch_bytes", "i64"),
)


def gemm_configs(arch: str, key: str, defaults: dict) -> dict:
    """class -> config tuple: the arch's tuning table entry `key` where it has one (a list
    per class, as aot/tune_gemm.py writes it), else `defaults`."""
    table = tuning(arch).get(key, {})
    return {cls: tuple(table.get(cls, cfg)) for cls, cfg in defaults.items()}


def config_tag(cfg) -> str:
    bm, bn, bk, gm, warps, stages = cfg[:6]
    tag = f"{bm}x{bn}x{bk}_g{gm}_w{warps}_s{stages}"
    return tag + (f"_p{cfg[6]}" if len(cfg) > 6 and cfg[6] else "")


def _constexprs(cfg, promote: bool) -> dict:
    bm, bn, bk, gm = cfg[:4]
    out = dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=gm)
    if promote:
        out["ACC_PROMOTE"] = (cfg[6] or None) if len(cfg) > 6 else None
    return out


def _aligned_variant(op, kernel, dtype, cfg, names, classes, grid, aligned, arch, promote, flag=None, fast=False,
                     tag=""):
    cond = " || ".join(f"({classes[c]})" for c in names)
    when = f"dtype == {DTYPES[dtype]} && ({cond})"
    if flag is not None:
        when += f" && {flag} {'!=' if fast else '=='} 0"
    return Variant(
        name=f"{op}_{dtype}_{'_'.join(names)}_{config_tag(cfg)}_a16" + ("_fast" if fast else "") + tag,
        dtype=dtype, kernel=kernel, when=when,
        grid=(grid.replace("BLOCK_M", str(cfg[0])).replace("BLOCK_N", str(cfg[1])), "1", "1"),
        constexprs=_constexprs(cfg, promote), num_warps=cfg[4], num_stages=cfg[5],
        aligned=aligned, arches=(arch,))


def _by_config(configs: dict) -> dict:
    """config -> the classes that use it, in the table's order."""
    by_cfg = {}
    for cls, cfg in configs.items():
        by_cfg.setdefault(tuple(cfg), []).append(cls)
    return by_cfg


def gemm_variants(op: str, kernel: str, dtypes, configs_by_arch: dict, fallback_by_arch: dict,
                  aligned: tuple[str, ...], grid: str, classes=SHAPE_CLASSES, promote=False,
                  fast_by_arch: dict | None = None, kernels_by_arch: dict | None = None,
                  split_by_arch: dict | None = None):
    """The variants of one GEMM op.  configs_by_arch: arch -> {class: config};
    fallback_by_arch: arch -> config; grid: a C expression of the tile sizes' names
    BLOCK_M and BLOCK_N (a 1-D grid).  fast_by_arch (fp8_gemm only): arch -> {class:
    config with ACC_PROMOTE 0}; on those arches the aligned variants of configs_by_arch
    match FAST_FLAG == 0 and these match FAST_FLAG != 0 (the op needs an i32 parameter
    FAST_FLAG); the fallback ignores the flag.  kernels_by_arch (gated_mlp's TMA kernel):
    arch -> {class: (kernel, grid)} for the aligned classes that take another kernel (named
    after the op's kernel, e.g. "_gated_mlp_tma": the rest, "_tma", tags the variant).
    split_by_arch (fp8_gemm's TMA kernels): arch -> Splits with disjoint `when`s; for a split's
    dtypes, the aligned calls of its classes where its `when` holds take its kernel (promoted
    or fast by FAST_FLAG), and the variants those classes had keep the calls no split takes."""
    fast_by_arch = fast_by_arch or {}
    out = []
    for arch, configs in configs_by_arch.items():
        other = (kernels_by_arch or {}).get(arch, {})
        fast = fast_by_arch.get(arch)
        flag = FAST_FLAG if fast else None
        for cfg in (fast or {}).values():
            if len(cfg) < 7 or cfg[6]:
                raise ValueError(f"{op}: fast-accumulation config {cfg} for {arch} must end with "
                                 "ACC_PROMOTE 0 (no promotion)")
        for dtype in dtypes:
            splits = [s for s in (split_by_arch or {}).get(arch, ()) if dtype in s.dtypes]
            whole = {c for s in splits for c in s.whole}

            def rest(fast: bool) -> dict:   # each class's condition, less the calls the splits take
                return {c: " && ".join([cond] + [f"!({s.when})" for s in splits
                                                 if c in (s.fast_configs if fast else s.configs)])
                        for c, cond in classes.items()}
            for (cfg, kern, kgrid), names in _by_config(
                    {cls: (cfg, *other.get(cls, (kernel, grid))) for cls, cfg in configs.items()
                     if cls not in whole}).items():
                out.append(_aligned_variant(op, kern, dtype, cfg, names, rest(False), kgrid, aligned, arch,
                                            promote, flag, tag=kern.removeprefix(kernel)))
            for cfg, names in _by_config({c: cfg for c, cfg in (fast or {}).items() if c not in whole}).items():
                out.append(_aligned_variant(op, kernel, dtype, cfg, names, rest(True), grid, aligned,
                                            arch, promote, flag, fast=True))
            for split in splits:
                for is_fast, table in ((False, split.configs), (True, split.fast_configs)):
                    taken = {c: f"{classes[c]} && {split.when}" for c in table}
                    for cfg, names in _by_config(table).items():
                        tag = "_cuda" if split.source else split.kernel.removeprefix(kernel)
                        v = _aligned_variant(op, split.kernel, dtype, cfg, names, taken, split.grid, aligned,
                                             arch, promote, flag, fast=is_fast, tag=tag)
                        if split.source:
                            v = replace(v, kernel=f"{split.kernel}_{dtype}", constexprs={}, source=split.source,
                                        block=split.block, shared=split.shared, tensor_maps=split.tensor_maps)
                        out.append(v)
            cfg = fallback_by_arch[arch]
            out.append(Variant(
                name=f"{op}_{dtype}_any_{config_tag(cfg)}_u",
                dtype=dtype, kernel=kernel, when=f"dtype == {DTYPES[dtype]}",
                grid=(grid.replace("BLOCK_M", str(cfg[0])).replace("BLOCK_N", str(cfg[1])), "1", "1"),
                constexprs=_constexprs(cfg, promote), num_warps=cfg[4], num_stages=cfg[5],
                aligned=aligned, unaligned=True, arches=(arch,)))
    return merge_arches(out)


_ALIGNED = ("a", "b", "c", "stride_am", "stride_bn", "stride_cm", "N", "K")
_CUDA_KERNEL = dict(source="kernels/cuda/fp8_gemm_sm90.cu", block=("384", "1", "1"), shared=FP8_GEMM_SM90_CUDA_SHARED,
                    tensor_maps=FP8_GEMM_SM90_CUDA_MAPS)

NEEDS = ("fp8",)   # families a partial build adds: fp16/bf16/fp32 operands are quantized first by fp8_quantize_row

OPS = (
    Op("fp8_gemm", "triton", "kernels/triton/fp8_gemm.py", _PARAMS,
       gemm_variants("fp8_gemm", "_fp8_gemm", GEMM_DTYPES,
                     {"sm90": gemm_configs("sm90", "fp8_gemm", FP8_GEMM_SM90), "sm89": FP8_GEMM_SM89},
                     FP8_GEMM_FALLBACK, _ALIGNED, "fa_cdiv(M, BLOCK_M) * fa_cdiv(N, BLOCK_N)", promote=True,
                     fast_by_arch={"sm90": gemm_configs("sm90", "fp8_gemm_fast", FP8_GEMM_SM90_FAST)},
                     split_by_arch={"sm90": (
                         Split("fp8_gemm_sm90", PERSISTENT_GRID, f"({TMA_ROWS})", TMA_DTYPES, FP8_GEMM_SM90_CUDA, {},
                               **_CUDA_KERNEL),
                         Split("fp8_gemm_sm90", PERSISTENT_GRID, TMA_ROWS_WHEN, TMA_DTYPES, {}, FP8_GEMM_SM90_CUDA,
                               **_CUDA_KERNEL),
                         Split("_fp8_gemm_tma", PERSISTENT_GRID, TMA_WHEN, TMA_DTYPES, {}, FP8_GEMM_SM90_TMA_FAST,
                               whole=("large",)))}),   # promoted: TMA_ROWS; fast: TMA_ROWS_WHEN or TMA_WHEN
       arches=("sm89", "sm90"), dtypes=GEMM_DTYPES,
       doc="c = (a @ b^T) * a_scale[m*stride_sa] * b_scale[n*stride_sb] (+ bias); a, b e4m3fn; fp32 sums "
           "(fast_accum != 0 on sm90: tensor-core accumulation, no promotion); scratch: 128-byte aligned "
           f"device memory the sm90 TMA variants build descriptors in, scratch_bytes >= {FP8_GEMM_SCRATCH} x the "
           "SM count (other libraries ignore it)"),
)
