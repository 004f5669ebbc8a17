"""gated_mlp (Triton): y = act(x @ w_gate^T) * (x @ w_up^T) in one kernel, fp16/bf16.
Kernels in kernels/triton/gated_mlp.py; variants from the GEMM family's builder
(aot/specs/fp8_gemm.py: shape classes by M, aligned configs and one fallback per dtype).

Two fp32 accumulators live in registers, so tiles are narrower than a plain GEMM's:
- sm90, M > 64: _gated_mlp_tma, TMA copies and a persistent grid (one program per SM, up
  to the tile count), 128x128x64 tiles on 8 warps with 3 stages (GATED_MLP_SM90_TMA).  On
  an H100 through Triton's JIT at 4096 -> 14336: 681-690 TFLOP/s at 2048 tokens, 697-702
  at 8192, 703-710 at 2048 x 8192 -> 28672, where the pointer kernel below reached
  560-597 (its best tiles, same runs); flattening the tile and K loops into one pipeline
  ran at 530-550.  The kernel builds its TMA descriptors on the device, in global scratch
  memory (128 bytes each, 4 a program) the caller passes as `scratch` (GATED_MLP_SCRATCH
  bytes a program, 128-byte aligned, for dev->sms programs).
- sm90, M <= 64 (decode, weight-bound): _gated_mlp with tiles from
  aot/tuning/sm90.json's "gated_mlp" entry (python -m aot.tune_gemm), GATED_MLP_SM90 where
  the table has none.
- sm80, sm89 and the PTX library: heuristics, not measured.  mma.sync keeps both
  accumulators in fewer registers per thread with 8 warps on a 128x64 tile (140
  registers, no spills), 3 stages of 64-wide K (64 KiB of shared memory: fits sm89's and
  consumer Blackwell's 99 KiB); 64x64 tiles for decode.
"""
from __future__ import annotations

from .core import Param, Op
from .fp8_gemm import gemm_configs, gemm_variants

GATED_MLP_DTYPES = ("bf16", "fp16")
# (BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, num_warps, num_stages)
GATED_MLP_SM90 = {"small": (64, 64, 128, 1, 4, 4), "medium": (64, 128, 64, 8, 4, 4),
                  "large": (128, 128, 64, 8, 8, 4)}
GATED_MLP_MMA = {"small": (64, 64, 64, 1, 4, 3), "medium": (128, 64, 64, 8, 8, 3),
                 "large": (128, 64, 64, 8, 8, 3)}
GATED_MLP_FALLBACK = (64, 64, 32, 8, 4, 2)
GATED_MLP_SM90_TMA = {"medium": (128, 128, 64, 8, 8, 3), "large": (128, 128, 64, 8, 8, 3)}
GATED_MLP_SCRATCH = 512   # bytes of TMA descriptors a program: 4 of 128 bytes
_PERSISTENT_GRID = "fa_min(dev->sms, fa_cdiv(M, BLOCK_M) * fa_cdiv(N, BLOCK_N))"

_PARAMS = (
    Param("x", "ptr"), Param("wg", "ptr"), Param("wu", "ptr"), Param("y", "ptr"),
    Param("stride_xm", "i64"), Param("stride_wg", "i64"), Param("stride_wu", "i64"), Param("stride_ym", "i64"),
    Param("M", "i32"), Param("N", "i32"), Param("K", "i32"), Param("activation", "i32"),
    # Triton's global scratch memory for the TMA variants (not a kernel argument of its own)
    Param("scratch", "ptr", "u8"), Param("scratch_bytes", "i64"),
)


def sm90_configs() -> dict:
    """class -> config on sm90: the TMA table's where it has the class, else the tuned one (also
    what benchmarks/bench_gated_mlp.py gives its Triton JIT baseline)."""
    return {**gemm_configs("sm90", "gated_mlp", GATED_MLP_SM90), **GATED_MLP_SM90_TMA}


OPS = (
    Op("gated_mlp", "triton", "kernels/triton/gated_mlp.py", _PARAMS,
       gemm_variants("gated_mlp", "_gated_mlp", GATED_MLP_DTYPES,
                     {"sm90": sm90_configs(),
                      "sm89": GATED_MLP_MMA, "sm80": GATED_MLP_MMA, "ptx": GATED_MLP_MMA},
                     {a: GATED_MLP_FALLBACK for a in ("sm80", "sm89", "sm90", "ptx")},
                     ("x", "wg", "wu", "y", "stride_xm", "stride_wg", "stride_wu", "stride_ym", "N", "K"),
                     "fa_cdiv(M, BLOCK_M) * fa_cdiv(N, BLOCK_N)",
                     kernels_by_arch={"sm90": {cls: ("_gated_mlp_tma", _PERSISTENT_GRID) for cls in GATED_MLP_SM90_TMA}}),
       dtypes=GATED_MLP_DTYPES,
       doc="y = act(x @ wg^T) * (x @ wu^T); activation 0 silu, 1 gelu (erf), 2 gelu (tanh); fp32 sums; "
           "scratch: 128-byte aligned device memory the sm90 TMA variants build descriptors in, "
           f"scratch_bytes >= {GATED_MLP_SCRATCH} x the SM count (other libraries ignore it)"),
)
