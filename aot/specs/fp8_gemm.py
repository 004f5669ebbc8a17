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

Shape classes (by M, the rows of a: tokens): "small" M <= 64 (decode: the weight's bytes
dominate, many narrow column tiles), "medium" M <= 1024, "large" beyond.
- sm90: python -m aot.tune_gemm (Triton's JIT on an H100/H200) writes aot/tuning/sm90.json's
  "fp8_gemm" entry; FP8_GEMM_SM90 is used where the table has none (no entry is committed
  yet).  These defaults are chosen from the SASS, not timed: 128x128x128 is the widest tile
  whose two accumulators (the fp32 one and the wgmma partial sums, see ACC_PROMOTE) fit in
  registers without spills (201 of 255 registers; 128x256 spills), 4 stages of 32 KiB.
  wgmma needs BLOCK_M a multiple of 64 and 4 or 8 warps.
- sm89 (Ada: mma.sync FP8, 99 KiB of shared memory per block): heuristics, not measured:
  128x128x64 tiles with 4 stages (64 KiB) for the large classes, 64x64x128 for decode.
"""
from __future__ import annotations

from .core import DTYPES, Op, Param, Variant, merge_arches, tuning

SHAPE_CLASSES = {"small": "M <= 64", "medium": "M > 64 && M <= 1024", "large": "M > 1024"}
GEMM_DTYPES = ("bf16", "fp16", "fp32")   # output dtypes

# config: (BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, num_warps, num_stages, ACC_PROMOTE)
# ACC_PROMOTE (sm90): add the wgmma partial sums into the fp32 accumulator every 128
# elements of K, as cuBLAS does without "fast accumulation"; 0 never (Triton's default).
# Promotion needs a second accumulator in registers, so 128x128 is the widest tile.
FP8_GEMM_SM90 = {"small": (64, 64, 256, 1, 4, 4, 128), "medium": (128, 128, 128, 8, 8, 4, 128),
                 "large": (128, 128, 128, 8, 8, 4, 128)}
FP8_GEMM_SM89 = {"small": (64, 64, 128, 1, 4, 4, 0), "medium": (128, 128, 64, 8, 8, 4, 0),
                 "large": (128, 128, 64, 8, 8, 4, 0)}
FP8_GEMM_FALLBACK = {"sm90": (64, 64, 64, 8, 4, 2, 64), "sm89": (64, 64, 64, 8, 4, 2, 0)}

_PARAMS = (
    Param("a", "ptr", "fp8e4nv"), Param("b", "ptr", "fp8e4nv"), Param("c", "ptr"),
    Param("a_scale", "ptr", "fp32"), Param("b_scale", "ptr", "fp32"), Param("bias", "ptr"),
    Param("stride_am", "i64", "u8"), Param("stride_bn", "i64", "u8"), Param("stride_cm", "i64"),
    Param("stride_sa", "i64"), Param("stride_sb", "i64"),
    Param("M", "i32"), Param("N", "i32"), Param("K", "i32", "u8"), Param("has_bias", "i32"),
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


def gemm_variants(op: str, kernel: str, dtypes, configs_by_arch: dict, fallback_by_arch: dict,
                  aligned: tuple[str, ...], grid: str, classes=SHAPE_CLASSES, promote=False):
    """The variants of one GEMM op.  configs_by_arch: arch -> {class: config};
    fallback_by_arch: arch -> config; grid: a C expression of the tile sizes' names
    BLOCK_M and BLOCK_N (a 1-D grid)."""
    out = []
    for arch, configs in configs_by_arch.items():
        by_cfg = {}
        for cls, cfg in configs.items():
            by_cfg.setdefault(tuple(cfg), []).append(cls)
        for dtype in dtypes:
            for cfg, names in by_cfg.items():
                cond = " || ".join(f"({classes[c]})" for c in names)
                out.append(Variant(
                    name=f"{op}_{dtype}_{'_'.join(names)}_{config_tag(cfg)}_a16",
                    dtype=dtype, kernel=kernel,
                    when=f"dtype == {DTYPES[dtype]} && ({cond})",
                    grid=(grid.replace("BLOCK_M", str(cfg[0])).replace("BLOCK_N", str(cfg[1])), "1", "1"),
                    constexprs=_constexprs(cfg, promote), num_warps=cfg[4], num_stages=cfg[5],
                    aligned=aligned, arches=(arch,)))
            cfg = fallback_by_arch[arch]
            out.append(Variant(
                name=f"{op}_{dtype}_any_{config_tag(cfg)}_u",
                dtype=dtype, kernel=kernel, when=f"dtype == {DTYPES[dtype]}",
                grid=(grid.replace("BLOCK_M", str(cfg[0])).replace("BLOCK_N", str(cfg[1])), "1", "1"),
                constexprs=_constexprs(cfg, promote), num_warps=cfg[4], num_stages=cfg[5],
                aligned=aligned, unaligned=True, arches=(arch,)))
    return merge_arches(out)


OPS = (
    Op("fp8_gemm", "triton", "kernels/triton/fp8_gemm.py", _PARAMS,
       gemm_variants("fp8_gemm", "_fp8_gemm", GEMM_DTYPES,
                     {"sm90": gemm_configs("sm90", "fp8_gemm", FP8_GEMM_SM90), "sm89": FP8_GEMM_SM89},
                     FP8_GEMM_FALLBACK, ("a", "b", "c", "stride_am", "stride_bn", "stride_cm", "N", "K"),
                     "fa_cdiv(M, BLOCK_M) * fa_cdiv(N, BLOCK_N)", promote=True),
       arches=("sm89", "sm90"), dtypes=GEMM_DTYPES,
       doc="c = (a @ b^T) * a_scale[m*stride_sa] * b_scale[n*stride_sb] (+ bias); a, b e4m3fn; fp32 sums"),
)
