"""LayerNorm (+ ReLU): fusedaot.layer_norm against F.layer_norm, torch.compile of it and Triton's JIT.

    python benchmarks/bench_layer_norm.py [--quick | --shapes M1xN1,M2xN2,...] [--dtype bf16,fp16]
                                          [--modes fwd,bwd,relu,host] [--budget-s S] [--out results.jsonl]

fwd: every impl over M x N (the norms grid of BENCHMARKS.md), weight and bias of x's dtype.
bwd: forward + backward (dx, dweight, dbias), fusedaot vs eager vs torch.compile.  relu:
LayerNorm + ReLU at (2048, 2048) fp32, the classic comparison (eager: relu(F.layer_norm)).
host: host time per call at 1 x 4096, with and without a CUDA graph.  The Triton-JIT baseline
launches the same kernel (kernels/triton/layer_norm.py) with the variant aot/specs selects.
--budget-s stops starting new shapes once that many seconds have passed (the rest are listed).
"""
from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness as H  # noqa: E402

EPS = 1e-5
M_ALL = (1, 16, 128, 1024, 4096, 16384, 32768)
N_ALL = (1024, 2048, 3072, 4096, 8192, 16384, 65536)
QUICK = ((1, 4096), (4096, 3072), (16384, 4096), (8192, 8192), (32768, 16384))
RELU_SEED = ((2048, 2048), torch.float32)
HOST_SHAPE = (1, 4096)
BIG = 1 << 24  # summary: % of copy bandwidth over shapes with M*N >= 16M


def eager(x, w, b):
    return F.layer_norm(x, x.shape[-1:], w, b, EPS)


def eager_relu(x, w, b):
    return torch.relu(F.layer_norm(x, x.shape[-1:], w, b, EPS))


def load_by_path(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # Triton reads the kernel's source through its module
    spec.loader.exec_module(mod)
    return mod


def triton_jit_layer_norm():
    """(launch(x, w, b, relu) -> y, None), or (None, reason): _layer_norm_fwd through Triton's JIT
    with the aot/specs variant whose `when` holds (the JIT specialises on alignment by itself)."""
    triton, why = H.import_triton()
    if triton is None:
        return None, why
    try:
        kernel = load_by_path("_bench_layer_norm_kernel",
                              H.ROOT / "kernels" / "triton" / "layer_norm.py")._layer_norm_fwd
        H.aot_specs()
    except Exception as e:
        return None, f"cannot load kernels/triton/layer_norm.py or aot/specs: {H.first_line(e)}"
    configs = {}

    def config(dtype: str, M: int, N: int, flags: int):
        v, scope = H.triton_variant("layer_norm_fwd", dtype, M=M, N=N, flags=flags)
        return (eval(v.grid[0], {}, scope),), v

    def launch(x, w, b, relu=False):
        N = x.shape[-1]
        x2 = x.reshape(-1, N)
        M = x2.shape[0]
        flags = 1 * (w is not None) | 2 * (b is not None) | 4 * (w is not None and w.dtype != x.dtype) | 8 * relu
        key = (x.dtype, M, N, flags)
        if key not in configs:  # selection is host work the AOT path does in C: keep it out
            configs[key] = config(H.DTYPE_NAMES[x.dtype], M, N, flags)
        grid, v = configs[key]
        y = torch.empty_like(x2)
        kernel[grid](x2, y, x2 if w is None else w, x2 if b is None else b, x2.stride(0), y.stride(0), M, N, EPS,
                     flags, num_warps=v.num_warps, num_stages=v.num_stages, **v.constexprs)
        return y.view(x.shape)

    return launch, None


def bench_case(report, fused, triton_fn, mode: str, M: int, N: int, dtype, l2: int, relu=False):
    """One shape: every impl (a callable, or a string saying why it is n/a) on the same inputs."""
    es = torch.finfo(dtype).bits // 8
    fwd_bytes = (2 * M * N + 2 * N) * es                                  # read x, w, b; write y
    nbytes = fwd_bytes + ((3 * M * N + 2 * N) * es if mode == "bwd" else 0)  # + read x, dy, w, b; write dx
    where = f"{M}x{N} {H.DTYPE_NAMES[dtype]}"

    def make():
        x = torch.randn(M, N, dtype=dtype, device="cuda")
        w = (1 + 0.1 * torch.randn(N, device="cuda")).to(dtype)
        b = (0.1 * torch.randn(N, device="cuda")).to(dtype)
        if mode == "fwd":
            return x, w, b
        return x.requires_grad_(), w.requires_grad_(), b.requires_grad_(), torch.randn_like(x)

    per_set = (M * N * (3 if mode == "bwd" else 2) + 2 * N) * es  # inputs and the output
    sets = H.input_sets(make, per_set, 5 * M * N * es, l2)
    if sets is None:
        report.note(f"{where}: skipped, does not fit in free GPU memory")
        return
    ref = eager_relu if relu else eager
    compiled = H.fresh_compile(ref)
    impls = {"fusedaot": fused if not relu or not callable(fused) else (lambda x, w, b: fused(x, w, b, True)),
             "eager": ref, "compile": compiled}
    if mode == "fwd":
        impls["triton_jit"] = (lambda x, w, b: triton_fn(x, w, b, relu)) if callable(triton_fn) else triton_fn
    else:
        impls = {k: H.with_grad(f) if callable(f) else f for k, f in impls.items()}
    times, ok = H.measure(report, impls, sets, where, scale=1.0 if mode == "fwd" else 2.0)
    name = "layer_norm_relu" if relu else "layer_norm"
    report.case(f"{name} fwd" if mode == "fwd" else f"{name} fwd+bwd", (M, N), dtype, times, nbytes, ok=ok)
    del sets
    torch.cuda.empty_cache()


def bench_host(report, fused, triton_fn, dtype):
    M, N = HOST_SHAPE
    x = torch.randn(M, N, dtype=dtype, device="cuda")
    w = (1 + 0.1 * torch.randn(N, device="cuda")).to(dtype)
    b = (0.1 * torch.randn(N, device="cuda")).to(dtype)
    compiled = H.fresh_compile(eager)
    op = getattr(getattr(torch.ops, "fusedaot", None), "layer_norm", None) if callable(fused) else None
    impls = {"fusedaot": fused,
             "fusedaot torch.ops": (lambda x, w, b: op(x, w, b, EPS, False)) if op else
             "torch.ops.fusedaot.layer_norm is not registered",
             "eager": eager, "compile": compiled,
             "triton_jit": (lambda x, w, b: triton_fn(x, w, b)) if callable(triton_fn) else triton_fn}
    host, graph = H.measure(report, impls, [(x, w, b)], f"{M}x{N} {H.DTYPE_NAMES[dtype]}", host=True)
    report.case("layer_norm fwd", (M, N), dtype, host, graph=graph)


def main():
    p = H.arg_parser(__doc__.strip().splitlines()[0])
    p.add_argument("--dtype", type=H.csv_of("bf16", "fp16", "fp32"), default="bf16,fp16",
                   help="comma list of bf16, fp16, fp32 for the fwd/bwd grids")
    p.add_argument("--modes", type=H.csv_of("fwd", "bwd", "relu", "host"), default="fwd,bwd,relu,host",
                   help="comma list of fwd, bwd (forward + backward), relu (the (2048, 2048) fp32 table), host")
    p.add_argument("--shapes", type=H.shape_list, help="M1xN1,M2xN2,...: these shapes instead of the grid")
    p.add_argument("--budget-s", type=float, default=0.0, help="start no new shape after this many seconds")
    args = p.parse_args()
    dtypes, modes = [H.DTYPES[d] for d in args.dtype], args.modes
    if not torch.cuda.is_available():
        sys.exit("bench_layer_norm: no CUDA device is visible; run it on a machine with a GPU")
    shapes = args.shapes or (
        list(QUICK) if args.quick else [(m, n) for m in M_ALL for n in N_ALL])
    fa, about_fa = H.import_fusedaot()
    triton_fn, why_tr = triton_jit_layer_norm()
    header = H.device_header(fusedaot=about_fa,
                             triton_jit=why_tr or f"triton {sys.modules['triton'].__version__}")
    triton_fn = triton_fn or why_tr
    fused = (lambda x, w, b, relu=False: fa.layer_norm(x, w, b, EPS, "relu" if relu else None)) if fa else about_fa
    report = H.Report(header, args.out)
    l2 = header["l2_bytes"]
    start, skipped = time.perf_counter(), []

    def in_budget(what: str) -> bool:
        if args.budget_s and time.perf_counter() - start > args.budget_s:
            skipped.append(what)
            return False
        return True

    models = {"fwd": "read x + w + b, write y",
              "bwd": "fwd (read x + w + b, write y) + bwd (read x + dy + w + b, write dx; dw, db ignored)"}
    if "relu" in modes:
        (M, N), dt = RELU_SEED
        for mode in ("fwd", "bwd"):
            report.section(f"layer_norm + relu {'forward' if mode == 'fwd' else 'forward + backward'}, "
                           f"{M}x{N} fp32", models[mode],
                           ["eager", "compile"] + (["triton_jit"] if mode == "fwd" else []))
            if in_budget(f"relu {mode}"):
                bench_case(report, fused, triton_fn, mode, M, N, dt, l2, relu=True)
            report.end_section()
    for mode in [m for m in ("fwd", "bwd") if m in modes]:
        for dtype in dtypes:
            report.section(f"layer_norm {'forward' if mode == 'fwd' else 'forward + backward'}, "
                           f"{H.DTYPE_NAMES[dtype]}", models[mode],
                           ["eager", "compile"] + (["triton_jit"] if mode == "fwd" else []))
            for M, N in shapes:
                if in_budget(f"{mode} {M}x{N} {H.DTYPE_NAMES[dtype]}"):
                    bench_case(report, fused, triton_fn, mode, M, N, dtype, l2)
            report.end_section()
    if "host" in modes and in_budget("host"):
        report.section(f"layer_norm host time per call, {HOST_SHAPE[0]}x{HOST_SHAPE[1]} (2,000 back-to-back "
                       "calls, then synchronise; graph: the same calls captured in one CUDA graph and replayed)",
                       None, ["eager", "compile"], host=True)
        bench_host(report, fused, triton_fn, dtypes[0])
        report.end_section()
    print()
    if skipped:
        print(f"not run (--budget-s {args.budget_s:g} reached): {', '.join(skipped)}")
    for baseline in ("compile", "eager", "triton_jit"):
        report.summary("fusedaot", baseline, big=lambda r: r["shape"][0] * r["shape"][1] >= BIG,
                       big_label="M*N >= 16M")


if __name__ == "__main__":
    main()
