"""bias + GELU: fusedaot.bias_gelu against eager F.gelu(x + bias) and torch.compile of it.

    python benchmarks/bench_bias_gelu.py [--quick] [--dtype bf16] [--approximate none,tanh]
                                         [--modes fwd,bwd,host] [--out results.jsonl]

Shapes: (2048, 2048) fp32 (the seed table), 16M and 256M elements, and tokens x ffn sizes;
--dtype sets the dtype of every shape but the fp32 seed one. fwd: forward; bwd: forward +
backward; host: host time per call at 1 x 14336, with and without a CUDA graph.
The kernel is CUDA C++, so there is no Triton-JIT baseline.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness as H  # noqa: E402

SEED = ((2048, 2048), torch.float32)
SHAPES = ((4096, 4096), (65536, 4096),                                  # 16M, 256M elements
          (1, 14336), (128, 11008), (2048, 14336), (8192, 28672))     # tokens x ffn
QUICK = ((4096, 4096), (65536, 4096), (1, 14336))
HOST_SHAPE = (1, 14336)


def eager_for(approximate: str):
    return lambda x, bias: F.gelu(x + bias, approximate=approximate)


def bench_case(report, fused, mode: str, approximate: str, M: int, N: int, dtype, l2: int):
    """One shape: every impl (a callable, or a string saying why it is n/a) on the same inputs."""
    es = torch.finfo(dtype).bits // 8
    nbytes = (2 * M * N + N) * es                               # read x, bias; write y
    if mode == "bwd":
        nbytes += (3 * M * N + N) * es                          # read dy, x, bias; write dx
    where = f"{M}x{N} {H.DTYPE_NAMES[dtype]} approximate={approximate}"

    def make():
        x = torch.randn(M, N, dtype=dtype, device="cuda")
        bias = (0.5 * torch.randn(N, device="cuda")).to(dtype)
        if mode == "fwd":
            return x, bias
        return x.requires_grad_(), bias.requires_grad_(), torch.randn_like(x)

    per_set = (M * N * (3 if mode == "bwd" else 2) + N) * es   # inputs and the output
    sets = H.input_sets(make, per_set, 5 * M * N * es, l2)
    if sets is None:
        report.note(f"{where}: skipped, does not fit in free GPU memory")
        return
    eager = eager_for(approximate)
    compiled = H.fresh_compile(eager)
    impls = {"fusedaot": fused, "eager": eager, "compile": compiled}
    if mode == "bwd":
        impls = {k: H.with_grad(f) if callable(f) else f for k, f in impls.items()}
    times, ok = H.measure(report, impls, sets, where, scale=1.0 if mode == "fwd" else 2.0)
    op = f"bias_gelu({approximate}) " + ("fwd" if mode == "fwd" else "fwd+bwd")
    report.case(op, (M, N), dtype, times, nbytes, ok=ok)
    del sets
    torch.cuda.empty_cache()


def bench_host(report, fused, dtype):
    M, N = HOST_SHAPE
    x = torch.randn(M, N, dtype=dtype, device="cuda")
    bias = (0.5 * torch.randn(N, device="cuda")).to(dtype)
    eager = eager_for("none")
    compiled = H.fresh_compile(eager)
    # the same op through the dispatcher: what the direct eager path saves
    op = getattr(getattr(torch.ops, "fusedaot", None), "bias_gelu", None) if callable(fused) else None
    impls = {"fusedaot": fused,
             "fusedaot torch.ops": (lambda x, b: op(x, b, "none")) if op else
             "torch.ops.fusedaot.bias_gelu is not registered",
             "eager": eager, "compile": compiled}
    host, graph = H.measure(report, impls, [(x, bias)], f"{M}x{N} {H.DTYPE_NAMES[dtype]}",
                            host=True)
    report.case("bias_gelu(none) fwd", (M, N), dtype, host, graph=graph)


def main():
    p = H.arg_parser(__doc__.strip().splitlines()[0])
    p.add_argument("--dtype", type=H.csv_of("bf16", "fp16", "fp32"), default="bf16",
                   help="comma list of bf16, fp16, fp32 for every shape but the fp32 seed one")
    p.add_argument("--approximate", type=H.csv_of("none", "tanh"), default="none,tanh",
                   help="comma list of none, tanh")
    p.add_argument("--modes", type=H.csv_of("fwd", "bwd", "host"), default="fwd,bwd,host",
                   help="comma list of fwd, bwd (forward + backward), host")
    args = p.parse_args()
    dtypes, modes = [H.DTYPES[d] for d in args.dtype], args.modes
    if not torch.cuda.is_available():
        sys.exit("bench_bias_gelu: no CUDA device is visible; run it on a machine with a GPU")
    fa, about_fa = H.import_fusedaot()
    header = H.device_header(fusedaot=about_fa)

    def fused(approximate):  # the impl, or why it is n/a
        return (lambda x, b: fa.bias_gelu(x, b, approximate=approximate)) if fa else about_fa

    report = H.Report(header, args.out)
    cases = [SEED] + [(s, d) for d in dtypes for s in (QUICK if args.quick else SHAPES)]
    titles = {"fwd": "forward", "bwd": "forward + backward"}
    models = {"fwd": "read x + bias, write y",
              "bwd": "fwd (read x + bias, write y) + bwd (read dy + x + bias, write dx; "
                     "dbias ignored)"}
    for mode in [m for m in modes if m in titles]:
        report.section(f"bias_gelu {titles[mode]}", models[mode], ["eager", "compile"])
        for approximate in args.approximate:
            for (M, N), dtype in cases:
                bench_case(report, fused(approximate), mode, approximate, M, N, dtype,
                           header["l2_bytes"])
        report.end_section()
    if "host" in modes:
        report.section(f"bias_gelu host time per call, {HOST_SHAPE[0]}x{HOST_SHAPE[1]} "
                       "(2,000 back-to-back calls, then synchronise; graph: the same calls "
                       "captured in one CUDA graph and replayed)", None,
                       ["eager", "compile"], host=True)
        bench_host(report, fused("none"), dtypes[0])
        report.end_section()
    print()
    for baseline in ("compile", "eager"):
        report.summary("fusedaot", baseline, big=lambda r: r["shape"][0] * r["shape"][1] >= 1 << 24,
                       big_label="M*N >= 16M")


if __name__ == "__main__":
    main()
