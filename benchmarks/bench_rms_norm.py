"""RMSNorm: fusedaot.rms_norm against F.rms_norm, torch.compile(F.rms_norm) and Triton's JIT.

    python benchmarks/bench_rms_norm.py [--quick | --shapes M1xN1,M2xN2,...] [--dtype bf16,fp16,fp32]
                                        [--modes fwd,bwd,host] [--no-weight] [--out results.jsonl]

fwd: every impl, bf16 and fp16 over M x N (fp32: a few spot shapes). bwd: forward + backward,
fusedaot vs eager vs torch.compile. host: host time per call at 1 x 4096, with and without a
CUDA graph. --no-weight: weight None in every impl (fwd and bwd). The Triton-JIT baseline launches the same kernel (kernels/triton/rms_norm.py) with
the variant aot/specs selects, i.e. the same code and config as the AOT build.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness as H  # noqa: E402

EPS = 1e-6
M_ALL = (1, 16, 128, 1024, 4096, 16384, 32768)
N_ALL = (1024, 2048, 3072, 4096, 8192, 16384, 65536)
QUICK = ((1, 4096), (4096, 3072), (16384, 4096), (8192, 8192), (32768, 16384))
FP32_SPOT = ((1, 4096), (4096, 4096), (16384, 8192))
HOST_SHAPE = (1, 4096)
BIG = 1 << 24  # summary: % of copy bandwidth over shapes with M*N >= 16M


def eager(x, w):
    return F.rms_norm(x, x.shape[-1:], w, EPS)


def load_by_path(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # Triton reads the kernel's source through its module
    spec.loader.exec_module(mod)
    return mod


def triton_jit_rms_norm():
    """(launch(x, w) -> y, None), or (None, reason) where Triton or the sources are missing.

    Launches _rms_norm_fwd through Triton's JIT with the first variant of aot/specs's
    rms_norm_fwd whose `when` holds (the aligned ones come first; the JIT specialises on
    alignment by itself), so the JIT and the AOT build run the same kernel and config."""
    triton, why = H.import_triton()
    if triton is None:
        return None, why
    try:
        kernel = load_by_path("_bench_rms_norm_kernel",
                              H.ROOT / "kernels" / "triton" / "rms_norm.py")._rms_norm_fwd
        H.aot_specs()
    except Exception as e:
        return None, f"cannot load kernels/triton/rms_norm.py or aot/specs: {H.first_line(e)}"
    configs = {}

    def config(dtype: str, M: int, N: int, has_w: bool):
        v, scope = H.triton_variant("rms_norm_fwd", dtype, w=int(has_w), M=M, N=N)
        return (eval(v.grid[0], {}, scope),), v

    def launch(x, w):
        N = x.shape[-1]
        x2 = x.reshape(-1, N)
        M = x2.shape[0]
        key = (x.dtype, M, N, w is not None)
        if key not in configs:  # selection is host work the AOT path does in C: keep it out
            configs[key] = config(H.DTYPE_NAMES[x.dtype], M, N, w is not None)
        grid, v = configs[key]
        y = torch.empty_like(x2)
        kernel[grid](x2, y, x2 if w is None else w, x2.stride(0), y.stride(0), M, N, EPS,
                     num_warps=v.num_warps, num_stages=v.num_stages, **v.constexprs)
        return y.view(x.shape)

    return launch, None


def shapes(dtype, quick: bool):
    if dtype == torch.float32:
        return FP32_SPOT[1:2] if quick else FP32_SPOT
    return QUICK if quick else [(m, n) for m in M_ALL for n in N_ALL]


def bench_case(report, fused, triton_fn, mode: str, M: int, N: int, dtype, l2: int, weight=True):
    """One shape: every impl (a callable, or a string saying why it is n/a) on the same inputs;
    weight=False: each impl gets None for the weight."""
    es = torch.finfo(dtype).bits // 8
    nw = N if weight else 0
    fwd_bytes = (2 * M * N + nw) * es                          # read x, w; write y
    nbytes = fwd_bytes + ((3 * M * N + nw) * es if mode == "bwd" else 0)  # + read x, dy, w; write dx
    where = f"{M}x{N} {H.DTYPE_NAMES[dtype]}"

    def make():
        x = torch.randn(M, N, dtype=dtype, device="cuda")
        w = (1 + 0.1 * torch.randn(N, device="cuda")).to(dtype) if weight else None
        if mode == "fwd":
            return x, w
        if not weight:
            return x.requires_grad_(), torch.randn_like(x)
        return x.requires_grad_(), w.requires_grad_(), torch.randn_like(x)

    per_set = (M * N * (3 if mode == "bwd" else 2) + N) * es  # inputs and the output
    sets = H.input_sets(make, per_set, 5 * M * N * es, l2)
    if sets is None:
        report.note(f"{where}: skipped, does not fit in free GPU memory")
        return
    compiled = H.fresh_compile(eager)
    impls = {"fusedaot": fused, "eager": eager, "compile": compiled}
    if mode == "fwd":
        impls["triton_jit"] = triton_fn
    else:
        if not weight:   # x alone is differentiated
            impls = {k: (lambda x, f=f: f(x, None)) if callable(f) else f for k, f in impls.items()}
        impls = {k: H.with_grad(f) if callable(f) else f for k, f in impls.items()}
    times, ok = H.measure(report, impls, sets, where, scale=1.0 if mode == "fwd" else 2.0)
    op = ("rms_norm fwd" if mode == "fwd" else "rms_norm fwd+bwd") + ("" if weight else " (no weight)")
    report.case(op, (M, N), dtype, times, nbytes, ok=ok)
    del sets
    torch.cuda.empty_cache()


def bench_host(report, fused, triton_fn, dtype):
    M, N = HOST_SHAPE
    x = torch.randn(M, N, dtype=dtype, device="cuda")
    w = (1 + 0.1 * torch.randn(N, device="cuda")).to(dtype)
    compiled = H.fresh_compile(eager)
    # the same op through the dispatcher: what the direct eager path saves
    op = getattr(getattr(torch.ops, "fusedaot", None), "rms_norm", None) if callable(fused) else None
    impls = {"fusedaot": fused,
             "fusedaot torch.ops": (lambda x, w: op(x, w, EPS)) if op else
             "torch.ops.fusedaot.rms_norm is not registered",
             "eager": eager, "compile": compiled, "triton_jit": triton_fn}
    host, graph = H.measure(report, impls, [(x, w)], f"{M}x{N} {H.DTYPE_NAMES[dtype]}",
                            host=True)
    report.case("rms_norm fwd", (M, N), dtype, host, graph=graph)


def main():
    p = H.arg_parser(__doc__.strip().splitlines()[0])
    p.add_argument("--dtype", type=H.csv_of("bf16", "fp16", "fp32"), default="bf16,fp16,fp32",
                   help="comma list of bf16, fp16, fp32 (fp32 runs spot shapes only)")
    p.add_argument("--modes", type=H.csv_of("fwd", "bwd", "host"), default="fwd,bwd,host",
                   help="comma list of fwd, bwd (forward + backward), host")
    p.add_argument("--shapes", type=H.shape_list, help="M1xN1,M2xN2,...: these shapes instead of the grid")
    p.add_argument("--no-weight", action="store_true", help="weight None (fwd and bwd)")
    args = p.parse_args()
    dtypes, modes = [H.DTYPES[d] for d in args.dtype], args.modes
    if not torch.cuda.is_available():
        sys.exit("bench_rms_norm: no CUDA device is visible; run it on a machine with a GPU")
    fa, about_fa = H.import_fusedaot()
    triton_fn, why_tr = triton_jit_rms_norm()
    header = H.device_header(fusedaot=about_fa,
                             triton_jit=why_tr or f"triton {sys.modules['triton'].__version__}")
    triton_fn = triton_fn or why_tr
    fused = (lambda x, w: fa.rms_norm(x, w, EPS)) if fa else about_fa
    report = H.Report(header, args.out)
    l2 = header["l2_bytes"]
    titles = {"fwd": "forward", "bwd": "forward + backward"}
    w = "" if args.no_weight else " + w"
    models = {"fwd": f"read x{w}, write y",
              "bwd": f"fwd (read x{w}, write y) + bwd (read x + dy{w}, write dx; dw ignored)"}
    for mode in [m for m in modes if m in titles]:
        for dtype in dtypes:
            report.section(f"rms_norm {titles[mode]}{', no weight' if args.no_weight else ''}, "
                           f"{H.DTYPE_NAMES[dtype]}", models[mode],
                           ["eager", "compile"] + (["triton_jit"] if mode == "fwd" else []))
            for M, N in args.shapes or shapes(dtype, args.quick):
                bench_case(report, fused, triton_fn, mode, M, N, dtype, l2, weight=not args.no_weight)
            report.end_section()
    if "host" in modes:
        report.section(f"rms_norm host time per call, {HOST_SHAPE[0]}x{HOST_SHAPE[1]} "
                       "(2,000 back-to-back calls, then synchronise; graph: the same calls "
                       "captured in one CUDA graph and replayed)", None,
                       ["eager", "compile"], host=True)
        for dtype in [d for d in dtypes if d != torch.float32] or dtypes:
            bench_host(report, fused, triton_fn, dtype)
        report.end_section()
    print()
    for baseline in ("compile", "eager", "triton_jit"):
        report.summary("fusedaot", baseline, big=lambda r: r["shape"][0] * r["shape"][1] >= BIG,
                       big_label="M*N >= 16M")


if __name__ == "__main__":
    main()
