"""SwiGLU / GeGLU: fusedaot against eager act(gate) * up, torch.compile of it and Triton's JIT.

    python benchmarks/bench_swiglu.py [--quick] [--ops swiglu,silu_and_mul,...] [--shapes all|main|big]
                                      [--bwd-ops ...] [--modes fwd,host,bwd,tune] [--out results.jsonl]

Shapes: tokens {1, 128, 2048, 8192, 16384} x ffn {11008, 14336, 28672}, bf16 (--dtype).
Ops: swiglu(gate, up) and geglu(gate, up, "none" | "tanh") on separate (tokens, ffn) tensors;
silu_and_mul(x) and gelu_and_mul(x, ...) on the packed (tokens, 2 ffn) tensor [gate | up].
Eager is the unfused composition a user writes, F.silu(gate) * up (packed: on the two halves
of x); compile is torch.compile of the same.  The Triton-JIT baseline launches the same kernel
(kernels/triton/swiglu.py) with the variant aot/specs selects.
fwd: forward; bwd: forward + backward; host: host time per call at 1 x 11008;
tune: the kernel's candidate tile configs through Triton's JIT at a bandwidth-bound size.
"""
from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness as H  # noqa: E402

TOKENS = (1, 128, 2048, 8192, 16384)
FFN = (11008, 14336, 28672)
BIG_SHAPES = ((2048, 11008), (8192, 14336), (16384, 28672))   # 22M, 117M, 470M elements
QUICK = ((1, 11008), (2048, 14336), (16384, 28672))
MAIN_OPS = ("swiglu", "silu_and_mul")   # every shape with --shapes main; the others BIG_SHAPES
HOST_SHAPE = (1, 11008)
DEVICE = "cuda"
BIG = 1 << 24  # summary: % of copy bandwidth over shapes with >= 16M output elements
# op name -> (packed, activation: "silu" or gelu's approximate)
OPS = {"swiglu": (False, "silu"), "silu_and_mul": (True, "silu"),
       "geglu": (False, "none"), "geglu_tanh": (False, "tanh"),
       "gelu_and_mul": (True, "none"), "gelu_and_mul_tanh": (True, "tanh")}
ACT_CODE = {"silu": 0, "none": 1, "tanh": 2}   # the kernel's ACT constexpr
# (BLOCK_N, ROWS, num_warps) tried by --modes tune for the wide-row form
TUNE_CANDIDATES = ((512, 1, 4), (1024, 1, 2), (1024, 1, 4), (1024, 1, 8), (2048, 1, 4), (2048, 1, 8),
                   (4096, 1, 8), (256, 4, 4), (512, 2, 4))
TUNE_SHAPES = ((8192, 14336),)
TUNE_CASES = (("fwd silu packed", "fwd", True, 0), ("fwd gelu erf", "fwd", False, 1), ("bwd silu", "bwd", False, 0))


def act_fn(act: str):
    return F.silu if act == "silu" else (lambda g: F.gelu(g, approximate=act))


def eager_for(packed: bool, act: str):
    a = act_fn(act)
    if packed:
        def eager(x):
            f = x.shape[-1] // 2
            return a(x[..., :f]) * x[..., f:]
    else:
        def eager(gate, up):
            return a(gate) * up
    return eager


def fused_for(fa, packed: bool, act: str):
    if packed:
        return (lambda x: fa.silu_and_mul(x)) if act == "silu" else (lambda x: fa.gelu_and_mul(x, act))
    return (lambda g, u: fa.swiglu(g, u)) if act == "silu" else (lambda g, u: fa.geglu(g, u, act))


def load_by_path(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # Triton reads the kernel's source through its module
    spec.loader.exec_module(mod)
    return mod


def triton_kernels():
    """(module, specs) or (None, reason): kernels/triton/swiglu.py for Triton's JIT."""
    triton, why = H.import_triton()
    if triton is None:
        return None, why
    try:
        mod = load_by_path("_bench_swiglu_kernel", H.ROOT / "kernels" / "triton" / "swiglu.py")
        return (mod, H.aot_specs()), None
    except Exception as e:
        return None, f"cannot load kernels/triton/swiglu.py or aot/specs: {H.first_line(e)}"


def triton_jit_for(kernels, packed: bool, act: str):
    """The same kernel and config as the AOT build (the variant aot/specs selects), launched by
    Triton's JIT; it specialises on alignment by itself."""
    mod, _ = kernels
    op_name = "swiglu_fwd" if act == "silu" else "geglu_fwd"
    configs = {}

    def config(dtype, M, N):
        v, scope = H.triton_variant(op_name, H.DTYPE_NAMES[dtype], M=M, N=N, approximate=ACT_CODE[act] - 1)
        return (eval(v.grid[0], {}, scope),), v

    def launch(gate, up, stride_gate, stride_up, M, N, dtype, device):
        key = (dtype, M, N)
        if key not in configs:  # selection is host work the AOT path does in C: keep it out
            configs[key] = config(dtype, M, N)
        grid, v = configs[key]
        out = torch.empty((M, N), dtype=dtype, device=device)
        mod._glu_fwd[grid](gate, up, out, stride_gate, stride_up, M, N, num_warps=v.num_warps,
                           num_stages=v.num_stages, **v.constexprs)
        return out

    if packed:
        def run(x):
            f = x.shape[-1] // 2
            return launch(x, x[:, f:], x.stride(0), x.stride(0), x.shape[0], f, x.dtype, x.device)
    else:
        def run(gate, up):
            return launch(gate, up, gate.stride(0), up.stride(0), gate.shape[0], gate.shape[1], gate.dtype,
                          gate.device)
    return run


def make_inputs(packed: bool, M: int, N: int, dtype, grad: bool):
    if packed:
        x = torch.randn(M, 2 * N, dtype=dtype, device=DEVICE)
        ins = [x.requires_grad_(grad)]
    else:
        ins = [torch.randn(M, N, dtype=dtype, device=DEVICE).requires_grad_(grad) for _ in range(2)]
    return (*ins, torch.randn(M, N, dtype=dtype, device=DEVICE)) if grad else tuple(ins)


def bench_case(report, fa, kernels, name: str, mode: str, M: int, N: int, dtype, l2: int):
    packed, act = OPS[name]
    es = torch.finfo(dtype).bits // 8
    nbytes = 3 * M * N * es                       # read gate + up, write out
    if mode == "bwd":
        nbytes += 5 * M * N * es                  # read dy + gate + up, write dgate + dup
    where = f"{name} {M}x{N} {H.DTYPE_NAMES[dtype]}"
    per_set = (3 if mode == "fwd" else 6) * M * N * es
    sets = H.input_sets(lambda: make_inputs(packed, M, N, dtype, mode == "bwd"), per_set, 8 * M * N * es, l2)
    if sets is None:
        report.note(f"{where}: skipped, does not fit in free GPU memory")
        return
    eager = eager_for(packed, act)
    impls = {"fusedaot": fused_for(fa, packed, act) if fa else "fusedaot unavailable",
             "eager": eager, "compile": H.fresh_compile(eager)}
    if mode == "fwd":
        impls["triton_jit"] = triton_jit_for(kernels[0], packed, act) if kernels[0] else kernels[1]
    else:
        impls = {k: H.with_grad(f) if callable(f) else f for k, f in impls.items()}
    times, ok = H.measure(report, impls, sets, where, scale=1.0 if mode == "fwd" else 2.0)
    report.case(f"{name} " + ("fwd" if mode == "fwd" else "fwd+bwd"), (M, N), dtype, times, nbytes, ok=ok)
    del sets
    torch.cuda.empty_cache()


def bench_host(report, fa, name: str, dtype):
    packed, act = OPS[name]
    M, N = HOST_SHAPE
    args = make_inputs(packed, M, N, dtype, False)
    eager = eager_for(packed, act)
    op = getattr(torch.ops.fusedaot, name.replace("_tanh", ""), None) if fa else None
    extra = () if act == "silu" else (act,)
    impls = {"fusedaot": fused_for(fa, packed, act) if fa else "fusedaot unavailable",
             "fusedaot torch.ops": (lambda *a: op(*a, *extra)) if op else "torch.ops.fusedaot op missing",
             "eager": eager, "compile": H.fresh_compile(eager)}
    host, graph = H.measure(report, impls, [args], f"{name} {M}x{N}", host=True)
    report.case(f"{name} fwd", (M, N), dtype, host, graph=graph)


def bench_tune(report, kernels, dtype, l2: int):
    """Every TUNE_CANDIDATES config of _glu_fwd / _glu_bwd through Triton's JIT (aligned inputs)."""
    if kernels[0] is None:
        report.note(f"tune: n/a ({kernels[1]})")
        return
    mod = kernels[0][0]
    es = torch.finfo(dtype).bits // 8
    for label, direction, packed, act in TUNE_CASES:
        for M, N in TUNE_SHAPES:
            nbytes = (3 if direction == "fwd" else 5) * M * N * es

            def make():  # inputs, then dy and dx (M, 2N) for bwd, or out for fwd
                ins = make_inputs(packed, M, N, dtype, False)
                if direction == "fwd":
                    return ins + (torch.empty(M, N, dtype=dtype, device=DEVICE),)
                return ins + (torch.randn(M, N, dtype=dtype, device=DEVICE),
                              torch.empty(M, 2 * N, dtype=dtype, device=DEVICE))

            sets = H.input_sets(make, (3 if direction == "fwd" else 5) * M * N * es, 0, l2)
            if sets is None:
                report.note(f"tune {label} {M}x{N}: does not fit")
                continue
            times = {}
            for block_n, rows, warps in TUNE_CANDIDATES:
                grid = (math.ceil(M / rows) * math.ceil(N / block_n),)
                meta = dict(BLOCK_N=block_n, ROWS=rows, ACT=act, num_warps=warps)

                def run(*t):
                    g, u = (t[0], t[0][:, N:]) if packed else t[:2]
                    s = g.stride(0)
                    if direction == "fwd":
                        mod._glu_fwd[grid](g, u, t[-1], s, s, M, N, **meta)
                    else:  # dgate and dup: the halves of dx, as the packed backward writes them
                        dx = t[-1]
                        mod._glu_bwd[grid](t[-2], g, u, dx, dx[:, N:], N, s, s, 2 * N, M, N, **meta)
                try:
                    times[f"b{block_n}_r{rows}_w{warps}"] = H.time_device(run, sets)
                except Exception as e:
                    report.note(f"tune {label} b{block_n}_r{rows}_w{warps}: {H.first_line(e)}")
            report.case(f"tune {label}", (M, N), dtype, times, nbytes)
            del sets
            torch.cuda.empty_cache()


def main():
    p = H.arg_parser(__doc__.strip().splitlines()[0])
    p.add_argument("--dtype", type=H.csv_of("bf16", "fp16", "fp32"), default="bf16",
                   help="comma list of bf16, fp16, fp32")
    p.add_argument("--ops", type=H.csv_of(*OPS), default=",".join(OPS), help="comma list of " + ", ".join(OPS))
    p.add_argument("--shapes", choices=("all", "main", "big"), default="main",
                   help="fwd shapes. all: tokens x ffn for every op; main: that for swiglu and silu_and_mul, "
                        "big for the others; big: 2048x11008, 8192x14336, 16384x28672")
    p.add_argument("--bwd-ops", type=H.csv_of(*OPS), default="swiglu,silu_and_mul,geglu",
                   help="ops of the bwd mode (on the big shapes)")
    p.add_argument("--modes", type=H.csv_of("fwd", "bwd", "host", "tune"), default="fwd,host,tune,bwd",
                   help="comma list of fwd, bwd (forward + backward), host, tune; run in this order")
    args = p.parse_args()
    dtypes, modes = [H.DTYPES[d] for d in args.dtype], args.modes
    if not torch.cuda.is_available():
        sys.exit("bench_swiglu: no CUDA device is visible; run it on a machine with a GPU")
    fa, about_fa = H.import_fusedaot()
    kernels = triton_kernels()
    header = H.device_header(fusedaot=about_fa,
                             triton_jit=kernels[1] or f"triton {sys.modules['triton'].__version__}")
    report = H.Report(header, args.out)
    l2 = header["l2_bytes"]

    def shapes(mode, name):
        if args.quick:
            return QUICK
        every = [(m, n) for m in TOKENS for n in FFN]
        if mode == "fwd" and (args.shapes == "all" or (args.shapes == "main" and name in MAIN_OPS)):
            return every
        return BIG_SHAPES

    titles = {"fwd": "forward", "bwd": "forward + backward"}
    models = {"fwd": "read gate + up, write out (3 x M x F elements; packed: x is gate + up)",
              "bwd": "fwd (read gate + up, write out) + bwd (read dy + gate + up, write dgate + dup): 8 x M x F"}
    for mode in modes:
        if mode in titles:
            for dtype in dtypes:
                report.section(f"swiglu / geglu {titles[mode]}, {H.DTYPE_NAMES[dtype]}", models[mode],
                               ["eager", "compile"] + (["triton_jit"] if mode == "fwd" else []))
                for name in (args.ops if mode == "fwd" else args.bwd_ops):
                    for M, N in shapes(mode, name):
                        bench_case(report, fa, kernels, name, mode, M, N, dtype, l2)
                report.end_section()
        elif mode == "host":
            report.section(f"swiglu / geglu host time per call, {HOST_SHAPE[0]}x{HOST_SHAPE[1]} "
                           "(2,000 back-to-back calls, then synchronise; graph: the same calls captured in one "
                           "CUDA graph and replayed)", None, ["eager", "compile"], host=True)
            for name in [n for n in MAIN_OPS if n in args.ops] or args.ops[:1]:
                bench_host(report, fa, name, dtypes[0])
            report.end_section()
        elif mode == "tune":
            report.section(f"tune: _glu_fwd / _glu_bwd tile configs through Triton's JIT, "
                           f"{H.DTYPE_NAMES[dtypes[0]]}", "fwd: 3 x M x F elements; bwd: 5 x M x F",
                           ["b1024_r1_w4"])
            bench_tune(report, kernels, dtypes[0], l2)
            report.end_section()
    print()
    for baseline in ("compile", "eager", "triton_jit"):
        report.summary("fusedaot", baseline, big=lambda r: r["shape"][0] * r["shape"][1] >= BIG,
                       big_label=">= 16M elements")


if __name__ == "__main__":
    main()
