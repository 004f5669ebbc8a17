"""RMSNorm + RoPE: fusedaot.rms_norm_rope against eager norm-then-rope (F.rms_norm, then the Hugging
Face rotate_half formula) and torch.compile of it.

    python benchmarks/bench_rms_norm_rope.py [--quick] [--dtype bf16,fp16] [--modes fwd,bwd]
                                             [--norm head,row] [--budget-s SECONDS] [--out results.jsonl]

Shapes (BENCHMARKS.md): tokens {1, 128, 2048, 16384} x q projections of 32 and 64 heads of 128,
and 32 heads of 64 and 256.  x (1, T, H*D), tables (T, D) in the model's dtype.  norm "head":
QK-norm per head with a (D,) weight (Qwen3); "row": over the whole projection with a (H*D,)
weight (OLMo-2).  fwd: forward; bwd: forward + backward (dx and dweight).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness as H  # noqa: E402

EPS = 1e-6
TOKENS = (1, 128, 2048, 16384)
SHAPES = ([(t, 32, 128) for t in TOKENS] + [(t, 64, 128) for t in TOKENS]
          + [(t, 32, 64) for t in TOKENS] + [(t, 32, 256) for t in TOKENS])
QUICK = ((1, 32, 128), (128, 32, 128), (2048, 32, 128), (16384, 32, 128), (16384, 64, 128))
BIG = 1 << 24


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def eager_for(per_head: bool, d: int):
    def eager(x, w, cos, sin):
        b, t, hidden = x.shape
        if per_head:
            z = F.rms_norm(x.view(b, t, -1, d), (d,), w, EPS)
        else:
            z = F.rms_norm(x, (hidden,), w, EPS).view(b, t, -1, d)
        c, s = cos[:, None, :], sin[:, None, :]
        return (z * c + rotate_half(z) * s).view(x.shape)
    return eager


def fwd_bwd(f):
    def run(x, w, cos, sin, dy):
        return torch.autograd.grad(f(x, w, cos, sin), (x, w), dy)
    return run


def bench_case(report, fa, mode, norm, shape, dtype, l2):
    t, h, d = shape
    per_head = norm == "head"
    es = torch.finfo(dtype).bits // 8
    elems = t * h * d
    width = d if per_head else h * d
    nbytes = (2 * elems + width + 2 * t * d) * es    # read x, w, each token's cos and sin rows; write y
    if mode == "bwd":
        nbytes += (3 * elems + width + 2 * t * d) * es  # read dy, x, w, tables; write dx (dweight not counted)
    where = f"{t}x{h}x{d} {norm} {H.DTYPE_NAMES[dtype]}"

    def make():
        x = torch.randn(1, t, h * d, dtype=dtype, device="cuda")
        w = (1 + 0.1 * torch.randn(width, device="cuda")).to(dtype)
        ang = torch.arange(t, device="cuda")[:, None] * 10000 ** (-torch.arange(0, d, 2, device="cuda") / d)
        cos, sin = (torch.cat([f(ang), f(ang)], -1).to(dtype) for f in (torch.cos, torch.sin))
        if mode == "fwd":
            return x, w, cos, sin
        return x.requires_grad_(), w.requires_grad_(), cos, sin, torch.randn_like(x)

    sets = H.input_sets(make, (2 * elems + 2 * t * d) * es * (2 if mode == "bwd" else 1), 6 * elems * es, l2)
    if sets is None:
        report.note(f"{where}: skipped, does not fit in free GPU memory")
        return
    fused = ((lambda x, w, c, s: fa.rms_norm_rope(x, w, c, s, head_dim=d, eps=EPS, per_head=per_head))
             if fa else "fusedaot unavailable")
    eager = eager_for(per_head, d)
    impls = {"fusedaot": fused, "eager": eager, "compile": H.fresh_compile(eager)}
    if mode == "bwd":
        impls = {name: fwd_bwd(f) if callable(f) else f for name, f in impls.items()}
    times, ok = H.measure(report, impls, sets, where, scale=1.0 if mode == "fwd" else 2.0)
    op = f"rms_norm_rope({norm}) " + ("fwd" if mode == "fwd" else "fwd+bwd")
    report.case(op, shape, dtype, times, nbytes, ok=ok)
    del sets
    torch.cuda.empty_cache()


def main():
    p = H.arg_parser(__doc__.strip().splitlines()[0])
    p.add_argument("--dtype", type=H.csv_of("bf16", "fp16", "fp32"), default="bf16")
    p.add_argument("--modes", type=H.csv_of("fwd", "bwd"), default="fwd,bwd")
    p.add_argument("--norm", type=H.csv_of("head", "row"), default="head,row")
    p.add_argument("--budget-s", type=float, default=0, help="stop starting new shapes after this many seconds")
    args = p.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_rms_norm_rope: no CUDA device is visible; run it on a machine with a GPU")
    fa, about_fa = H.import_fusedaot()
    header = H.device_header(fusedaot=about_fa)
    report = H.Report(header, args.out)
    start = time.perf_counter()
    models = {"fwd": "read x, weight and each token's cos and sin rows, write y",
              "bwd": "fwd + read dy, x, weight, tables, write dx (dweight's fp32 partial sums not counted)"}
    for mode in args.modes:
        for norm in args.norm:
            for dtype in [H.DTYPES[d] for d in args.dtype]:
                report.section(f"rms_norm_rope({norm}) {'forward' if mode == 'fwd' else 'forward + backward'}, "
                               f"{H.DTYPE_NAMES[dtype]}", models[mode], ["eager", "compile"])
                for shape in (QUICK if args.quick else SHAPES):
                    if args.budget_s and time.perf_counter() - start > args.budget_s:
                        report.note(f"time budget of {args.budget_s:.0f} s spent: later shapes not measured")
                        break
                    bench_case(report, fa, mode, norm, shape, dtype, header["l2_bytes"])
                report.end_section()
    print()
    elems = lambda r: r["shape"][0] * r["shape"][1] * r["shape"][2]  # noqa: E731
    for baseline in ("eager", "compile"):
        report.summary("fusedaot", baseline, big=lambda r: elems(r) >= BIG, big_label=">= 16M elements")


if __name__ == "__main__":
    main()
