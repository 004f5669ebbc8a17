"""gated_mlp (Triton): y = act(x @ w_gate^T) * (x @ w_up^T) in one kernel, fp16/bf16.
Kernel in kernels/triton/gated_mlp.py; variants from the GEMM family's builder
(aot/specs/fp8_gemm.py: shape classes by M, aligned configs and one fallback per dtype).

Two fp32 accumulators live in registers, so tiles are narrower than a plain GEMM's:
- sm90: python -m aot.tune_gemm writes aot/tuning/sm90.json's "gated_mlp" entry;
  GATED_MLP_SM90 where the table has none (no entry is committed yet): 128x128x64 with 8
  warps and 4 stages (194 registers, 192 KiB of shared memory), measured at 589 TFLOP/s at
  2048 x 4096 -> 14336 on an H100 through Triton's JIT.
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

_PARAMS = (
    Param("x", "ptr"), Param("wg", "ptr"), Param("wu", "ptr"), Param("y", "ptr"),
    Param("stride_xm", "i64"), Param("stride_wg", "i64"), Param("stride_wu", "i64"), Param("stride_ym", "i64"),
    Param("M", "i32"), Param("N", "i32"), Param("K", "i32"), Param("activation", "i32"),
)

OPS = (
    Op("gated_mlp", "triton", "kernels/triton/gated_mlp.py", _PARAMS,
       gemm_variants("gated_mlp", "_gated_mlp", GATED_MLP_DTYPES,
                     {"sm90": gemm_configs("sm90", "gated_mlp", GATED_MLP_SM90),
                      "sm89": GATED_MLP_MMA, "sm80": GATED_MLP_MMA, "ptx": GATED_MLP_MMA},
                     {a: GATED_MLP_FALLBACK for a in ("sm80", "sm89", "sm90", "ptx")},
                     ("x", "wg", "wu", "y", "stride_xm", "stride_wg", "stride_wu", "stride_ym", "N", "K"),
                     "fa_cdiv(M, BLOCK_M) * fa_cdiv(N, BLOCK_N)"),
       dtypes=GATED_MLP_DTYPES,
       doc="y = act(x @ wg^T) * (x @ wu^T); activation 0 silu, 1 gelu (erf), 2 gelu (tanh); fp32 sums"),
)
