"""AdaLN: fusedaot.ada_layer_norm against eager F.layer_norm(x, (N,)) * (1 + scale) + shift and
torch.compile of it.

    python benchmarks/bench_ada_layer_norm.py [--quick] [--hidden 3072,6144] [--tokens 1024,4096,4608,16384]
                                              [--forms tensor,sample,token] [--dtype bf16]
                                              [--modes fwd,bwd] [--budget-s S] [--out results.jsonl]

x is (2, tokens / 2, hidden) (two samples), scale and shift are the two halves of one
(..., 2 * hidden) modulation tensor, as DiT's adaLN_modulation(c).chunk() gives them: (hidden,)
per tensor, (2, 1, hidden) per sample, x's shape per token.  fwd: forward; bwd: forward +
backward (dx, dscale, dshift).  The kernel is CUDA C++, so there is no Triton-JIT baseline.
--budget-s stops starting new shapes once that many seconds have passed (the rest are listed).
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
HIDDEN = (3072, 6144)
TOKENS = (1024, 4096, 4608, 16384)
FORMS = ("tensor", "sample", "token")
QUICK = ((3072, 4096), (6144, 16384))
BIG = 1 << 24  # summary: % of copy bandwidth over shapes with M*N >= 16M


def eager(x, scale, shift):
    return F.layer_norm(x, x.shape[-1:], eps=EPS) * (1 + scale) + shift


def bench_case(report, fused, mode: str, form: str, tokens: int, n: int, dtype, l2: int):
    es = torch.finfo(dtype).bits // 8
    b, s = 2, tokens // 2
    m = b * s
    mod_rows = {"tensor": 1, "sample": b, "token": m}[form]
    # forward: read x, scale, shift; write y.  backward: read dy, x, scale; write dx (and, per
    # token, dscale and dshift; otherwise those are (B or 1) x N and not counted)
    nbytes = (2 * m * n + 2 * mod_rows * n) * es
    if mode == "bwd":
        nbytes += (3 * m * n + mod_rows * n + (2 * m * n if form == "token" else 0)) * es
    where = f"{b}x{s}x{n} {form} {H.DTYPE_NAMES[dtype]}"

    def make():
        x = torch.randn(b, s, n, dtype=dtype, device="cuda")
        lead = {"tensor": (), "sample": (b, 1), "token": (b, s)}[form]
        mod = (0.5 * torch.randn(*lead, 2 * n, device="cuda")).to(dtype)
        shift, scale = mod[..., :n], mod[..., n:]
        if mode == "fwd":
            return x, scale, shift
        return (x.requires_grad_(), scale.detach().requires_grad_(), shift.detach().requires_grad_(),
                torch.randn_like(x))

    per_set = (m * n * (3 if mode == "bwd" else 2) + 2 * mod_rows * n) * es
    sets = H.input_sets(make, per_set, 6 * m * n * es, l2)
    if sets is None:
        report.note(f"{where}: skipped, does not fit in free GPU memory")
        return
    impls = {"fusedaot": fused, "eager": eager, "compile": H.fresh_compile(eager)}
    if mode == "bwd":
        impls = {k: H.with_grad(f) if callable(f) else f for k, f in impls.items()}
    times, ok = H.measure(report, impls, sets, where, scale=1.0 if mode == "fwd" else 2.0)
    report.case(f"ada_layer_norm {form} " + ("fwd" if mode == "fwd" else "fwd+bwd"), (b, s, n), dtype, times,
                nbytes, ok=ok)
    del sets
    torch.cuda.empty_cache()


def main():
    p = H.arg_parser(__doc__.strip().splitlines()[0])
    ints = lambda text: [int(v) for v in text.split(",") if v]  # noqa: E731
    p.add_argument("--hidden", type=ints, default=list(HIDDEN))
    p.add_argument("--tokens", type=ints, default=list(TOKENS))
    p.add_argument("--forms", type=H.csv_of(*FORMS), default=",".join(FORMS))
    p.add_argument("--dtype", type=H.csv_of("bf16", "fp16", "fp32"), default="bf16")
    p.add_argument("--modes", type=H.csv_of("fwd", "bwd"), default="fwd,bwd")
    p.add_argument("--budget-s", type=float, default=0.0, help="start no new shape after this many seconds")
    args = p.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_ada_layer_norm: no CUDA device is visible; run it on a machine with a GPU")
    shapes = list(QUICK) if args.quick else [(n, t) for n in args.hidden for t in args.tokens]
    fa, about_fa = H.import_fusedaot()
    header = H.device_header(fusedaot=about_fa)
    fused = (lambda x, scale, shift: fa.ada_layer_norm(x, scale, shift, EPS)) if fa else about_fa
    report = H.Report(header, args.out)
    start, skipped = time.perf_counter(), []
    models = {"fwd": "read x + scale + shift, write y",
              "bwd": "fwd + bwd (read dy + x + scale, write dx, and per token dscale + dshift)"}
    for mode in args.modes:
        for dtype in [H.DTYPES[d] for d in args.dtype]:
            for form in args.forms:
                report.section(f"ada_layer_norm {form}, {'forward' if mode == 'fwd' else 'forward + backward'}, "
                               f"{H.DTYPE_NAMES[dtype]}", models[mode], ["eager", "compile"])
                for n, tokens in shapes:
                    if args.budget_s and time.perf_counter() - start > args.budget_s:
                        skipped.append(f"{mode} {form} {tokens}x{n}")
                        continue
                    bench_case(report, fused, mode, form, tokens, n, dtype, header["l2_bytes"])
                report.end_section()
    print()
    if skipped:
        print(f"not run (--budget-s {args.budget_s:g} reached): {', '.join(skipped)}")
    for baseline in ("compile", "eager"):
        report.summary("fusedaot", baseline, big=lambda r: r["shape"][0] * r["shape"][1] * r["shape"][2] >= BIG,
                       big_label="M*N >= 16M")


if __name__ == "__main__":
    main()
