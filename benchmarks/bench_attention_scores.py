"""Attention scores: fusedaot.attention_scores against eager q @ k^T * scale and torch.compile.

    python benchmarks/bench_attention_scores.py [--quick] [--out results.jsonl]

bf16, (B, H, M, D) x (B, H, N, D) -> (B, H, M, N).  Byte model: read q and k once, write s
once (s dominates: the op is bound by writing it for head dims <= 128).  Eager is one
batched matmul and one scaling pass over s (or the scale folded into q: another pass over q).
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness as H  # noqa: E402

SHAPES = ((1, 32, 4096, 4096, 128), (4, 32, 2048, 2048, 128), (8, 16, 1024, 1024, 64), (32, 32, 1, 4096, 128),
          (8, 32, 16, 8192, 128))
QUICK = ((1, 32, 4096, 4096, 128), (32, 32, 1, 4096, 128))


def eager(q, k, scale):
    return torch.matmul(q, k.transpose(-1, -2)) * scale


def main():
    p = H.arg_parser(__doc__.strip().splitlines()[0])
    args = p.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_attention_scores: no CUDA device is visible; run it on a machine with a GPU")
    fa, about_fa = H.import_fusedaot()
    if fa is None:
        sys.exit(f"bench_attention_scores: {about_fa}")
    header = H.device_header(fusedaot=about_fa)
    report = H.Report(header, args.out)
    report.section("attention_scores bf16", "read q + k, write s", ["eager", "compile"])
    for b, h, m, n, d in (QUICK if args.quick else SHAPES):
        scale = d ** -0.5

        def make():
            return (torch.randn(b, h, m, d, device="cuda", dtype=torch.bfloat16),
                    torch.randn(b, h, n, d, device="cuda", dtype=torch.bfloat16), scale)
        nbytes = (b * h * (m + n) * d + b * h * m * n) * 2
        sets = H.input_sets(make, nbytes, 2 * b * h * m * n * 2, header["l2_bytes"])
        if sets is None:
            report.note(f"{b}x{h}x{m}x{n}x{d}: skipped, does not fit in free GPU memory")
            continue
        impls = {"fusedaot": fa.attention_scores, "eager": eager, "compile": H.fresh_compile(eager)}
        times, ok = H.measure(report, impls, sets, f"{b}x{h}x{m}x{n}x{d}", scale=2.0)
        report.case("attention_scores", (b, h, m, n, d), torch.bfloat16, times, nbytes, ok=ok)
        report.note(f"{b}x{h}x{m}x{n}x{d}: fusedaot at "
                    f"{2 * b * h * m * n * d / times['fusedaot'] / 1e6 if times.get('fusedaot') else float('nan'):.0f} "
                    "TFLOP/s")
        del sets
        torch.cuda.empty_cache()
    report.end_section()
    print()
    report.summary("fusedaot", "eager")
    report.summary("fusedaot", "compile")


if __name__ == "__main__":
    main()
