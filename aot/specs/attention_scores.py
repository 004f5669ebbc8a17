"""attention_scores (Triton): s = q @ k^T * scale per batch and head, fp16/bf16.
Kernel in kernels/triton/attention_scores.py; variants from the GEMM family's builder
(aot/specs/fp8_gemm.py).  Here M is the number of query rows and K the head dim.

Shape classes: "gemv" M <= 8 (a query row or a few per head: reading k is the cost),
"decode" M <= 64 (64-row tiles), "prefill" beyond.  The inner dimension is a head dim
(64-128), so each program is short: the cost is storing s (or reading k), and the tiles are
as wide as registers allow.
- sm90: python -m aot.tune_gemm writes aot/tuning/sm90.json's "attention_scores" entry
  (decode and prefill, H100); ATTENTION_SCORES_SM90 where it has none.  gemv: 64x512 tiles
  on 8 warps, 2 stages, timed through Triton's JIT on an H100
  (docs/results/attention_scores_decode_tiles_h100.jsonl): one query row per head, 32 x 32
  heads x 4096 keys x 128, 385 us against 468 for the decode tile and 383 for eager's
  matmul; 64 x 1 x 8192 x 128, 63.4 against 77.5 and 63.8.  At 16 query rows the decode
  tile stays ahead (208 against 219 us at 256 x 16 x 8192 x 128).
- sm80, sm89 and the PTX library: heuristics, not measured: 128x128x64 tiles, 8 warps,
  2 stages (64 KiB of shared memory); gemv as decode (a 64x512 tile's two stages would not
  fit sm89's 99 KiB).
"""
from __future__ import annotations

from .core import Param, Op
from .fp8_gemm import gemm_configs, gemm_variants

ATTENTION_DTYPES = ("bf16", "fp16")
CLASSES = {"gemv": "M <= 8", "decode": "M > 8 && M <= 64", "prefill": "M > 64"}
# (BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, num_warps, num_stages)
ATTENTION_SCORES_SM90 = {"gemv": (64, 512, 64, 1, 8, 2), "decode": (64, 128, 64, 1, 4, 3),
                         "prefill": (128, 128, 64, 8, 8, 3)}
ATTENTION_SCORES_MMA = {"gemv": (64, 128, 64, 1, 4, 2), "decode": (64, 128, 64, 1, 4, 2),
                        "prefill": (128, 128, 64, 8, 8, 2)}
ATTENTION_SCORES_FALLBACK = (64, 64, 32, 8, 4, 2)

_PARAMS = (
    Param("q", "ptr"), Param("k", "ptr"), Param("s", "ptr"),
    Param("stride_qb", "i64"), Param("stride_qh", "i64"), Param("stride_qm", "i64"),
    Param("stride_kb", "i64"), Param("stride_kh", "i64"), Param("stride_kn", "i64"),
    Param("Z", "i32"), Param("H", "i32"), Param("M", "i32"), Param("N", "i32"), Param("K", "i32"), Param("scale", "f32"),
)
# every (batch * head, tile) on one axis: grid.x allows 2^31 - 1, grid.y only 65535
_GRID = "fa_cdiv(M, BLOCK_M) * fa_cdiv(N, BLOCK_N) * Z"

OPS = (
    Op("attention_scores", "triton", "kernels/triton/attention_scores.py", _PARAMS,
       gemm_variants("attention_scores", "_attention_scores", ATTENTION_DTYPES,
                     {"sm90": gemm_configs("sm90", "attention_scores", ATTENTION_SCORES_SM90),
                      "sm89": ATTENTION_SCORES_MMA, "sm80": ATTENTION_SCORES_MMA, "ptx": ATTENTION_SCORES_MMA},
                     {a: ATTENTION_SCORES_FALLBACK for a in ("sm80", "sm89", "sm90", "ptx")},
                     ("q", "k", "s", "stride_qb", "stride_qh", "stride_qm", "stride_kb", "stride_kh",
                      "stride_kn", "N", "K"),
                     _GRID, classes=CLASSES),
       dtypes=ATTENTION_DTYPES,
       doc="s[z] = q[z] @ k[z]^T * scale, z = (batch, head); s contiguous (B, H, M, N); fp32 sums"),
)
