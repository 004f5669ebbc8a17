"""Fused residual add + RMSNorm: fusedaot.fused_add_rms_norm against eager `x + r` then
F.rms_norm, and torch.compile of the same composition.

    python benchmarks/bench_fused_add_rms_norm.py [--quick] [--dtype bf16,fp16,fp32]
                                                  [--modes fwd,bwd,host] [--out results.jsonl]

fwd: bf16 and fp16 over M x N (fp32: spot shapes). bwd: forward + backward with a gradient on
both outputs (y and the new residual), as in a pre-norm decoder. host: host time per call at
1 x 4096.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness as H  # noqa: E402
from bench_rms_norm import BIG, HOST_SHAPE, shapes  # noqa: E402

EPS = 1e-6


def eager(x, r, w):
    s = x + r
    return F.rms_norm(s, s.shape[-1:], w, EPS), s


def with_grads(f):
    """fwd + bwd with the same upstream gradient on both outputs."""
    return lambda x, r, w, g: torch.autograd.grad(f(x, r, w), (x, r, w), (g, g))


def bench_case(report, fused, mode: str, M: int, N: int, dtype, l2: int):
    es = torch.finfo(dtype).bits // 8
    fwd_bytes = (4 * M * N + N) * es                               # read x, r, w; write y, s
    nbytes = fwd_bytes + ((4 * M * N + N) * es if mode == "bwd" else 0)  # + read s, dy, ds, w; write dx
    where = f"{M}x{N} {H.DTYPE_NAMES[dtype]}"

    def make():
        x = torch.randn(M, N, dtype=dtype, device="cuda")
        r = torch.randn(M, N, dtype=dtype, device="cuda")
        w = (1 + 0.1 * torch.randn(N, device="cuda")).to(dtype)
        if mode == "fwd":
            return x, r, w
        return x.requires_grad_(), r.requires_grad_(), w.requires_grad_(), torch.randn_like(x)

    per_set = (M * N * (4 if mode == "fwd" else 5) + N) * es
    sets = H.input_sets(make, per_set, 8 * M * N * es, l2)
    if sets is None:
        report.note(f"{where}: skipped, does not fit in free GPU memory")
        return
    impls = {"fusedaot": fused, "eager": eager, "compile": H.fresh_compile(eager)}
    if mode == "bwd":
        impls = {k: with_grads(f) if callable(f) else f for k, f in impls.items()}
    times, ok = H.measure(report, impls, sets, where, scale=1.0 if mode == "fwd" else 2.0)
    report.case("fused_add_rms_norm fwd" if mode == "fwd" else "fused_add_rms_norm fwd+bwd", (M, N), dtype,
                times, nbytes, ok=ok)
    del sets
    torch.cuda.empty_cache()


def bench_host(report, fused, dtype):
    M, N = HOST_SHAPE
    x, r = (torch.randn(M, N, dtype=dtype, device="cuda") for _ in range(2))
    w = (1 + 0.1 * torch.randn(N, device="cuda")).to(dtype)
    impls = {"fusedaot": fused, "eager": eager, "compile": H.fresh_compile(eager)}
    host, graph = H.measure(report, impls, [(x, r, w)], f"{M}x{N} {H.DTYPE_NAMES[dtype]}", host=True)
    report.case("fused_add_rms_norm fwd", (M, N), dtype, host, graph=graph)


def main():
    p = H.arg_parser(__doc__.strip().splitlines()[0])
    p.add_argument("--dtype", type=H.csv_of("bf16", "fp16", "fp32"), default="bf16,fp16,fp32")
    p.add_argument("--modes", type=H.csv_of("fwd", "bwd", "host"), default="fwd,bwd,host")
    args = p.parse_args()
    dtypes, modes = [H.DTYPES[d] for d in args.dtype], args.modes
    if not torch.cuda.is_available():
        sys.exit("bench_fused_add_rms_norm: no CUDA device is visible; run it on a machine with a GPU")
    fa, about_fa = H.import_fusedaot()
    header = H.device_header(fusedaot=about_fa)
    fused = (lambda x, r, w: fa.fused_add_rms_norm(x, r, w, EPS)) if fa else about_fa
    report = H.Report(header, args.out)
    titles = {"fwd": "forward", "bwd": "forward + backward"}
    models = {"fwd": "read x + r + w, write y + s",
              "bwd": "fwd (read x + r + w, write y + s) + bwd (read s + dy + ds + w, write dx; dw ignored)"}
    for mode in [m for m in modes if m in titles]:
        for dtype in dtypes:
            report.section(f"fused_add_rms_norm {titles[mode]}, {H.DTYPE_NAMES[dtype]}", models[mode],
                           ["eager", "compile"])
            for M, N in shapes(dtype, args.quick):
                bench_case(report, fused, mode, M, N, dtype, header["l2_bytes"])
            report.end_section()
    if "host" in modes:
        report.section(f"fused_add_rms_norm host time per call, {HOST_SHAPE[0]}x{HOST_SHAPE[1]}", None,
                       ["eager", "compile"], host=True)
        for dtype in [d for d in dtypes if d != torch.float32] or dtypes:
            bench_host(report, fused, dtype)
        report.end_section()
    print()
    for baseline in ("compile", "eager"):
        report.summary("fusedaot", baseline, big=lambda r: r["shape"][0] * r["shape"][1] >= BIG,
                       big_label="M*N >= 16M")


if __name__ == "__main__":
    main()
