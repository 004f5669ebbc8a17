"""RoPE: fusedaot.apply_rope against the Hugging Face formula in eager PyTorch, torch.compile of it
and the same Triton kernel through Triton's JIT.

    python benchmarks/bench_rope.py [--quick] [--dtype bf16,fp16] [--modes fwd,bwd,host]
                                    [--budget-s SECONDS] [--out results.jsonl]

Shapes (BENCHMARKS.md): tokens {1, 128, 2048, 16384} x (32 q / 8 kv heads, 64 q / 8 kv heads) at
head_dim 128, and 32 / 8 heads at head_dim 64 and 256.  q (1, T, Hq, D) and k (1, T, Hk, D),
tables (T, D) in the model's dtype (row t for token t), half-split layout.  fwd: forward, also the
in-place form; bwd: forward + backward; host: host time per call at one token.
The eager baseline is what model code writes:
    q * cos + rotate_half(q) * sin,  k * cos + rotate_half(k) * sin
"""
from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness as H  # noqa: E402

TOKENS = (1, 128, 2048, 16384)
# head_dim 128 first, then the large token counts of head_dim 64 and 256, then their small ones
SHAPES = ([(t, 32, 8, 128) for t in TOKENS] + [(t, 64, 8, 128) for t in TOKENS]
          + [(t, 32, 8, d) for t in TOKENS[:1:-1] for d in (64, 256)]
          + [(t, 32, 8, d) for t in TOKENS[1::-1] for d in (64, 256)])
QUICK = ((1, 32, 8, 128), (2048, 32, 8, 128), (16384, 32, 8, 128), (16384, 64, 8, 128), (16384, 32, 8, 256))
BIG = 1 << 24   # the bandwidth target: T * (Hq + Hk) * D >= 16M elements


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def eager(q, k, cos, sin):
    c, s = cos[:, None, :], sin[:, None, :]   # (T, 1, D) over (1, T, H, D)
    return q * c + rotate_half(q) * s, k * c + rotate_half(k) * s


def fwd_bwd(f):
    """f's forward and backward: (q, k, cos, sin, dq, dk) -> (grad q, grad k)."""
    def run(q, k, cos, sin, dq, dk):
        return torch.autograd.grad(f(q, k, cos, sin), (q, k), (dq, dk))
    return run


def triton_jit_rope():
    """(launch(q, k, cos, sin) -> (q_out, k_out), None), or (None, reason): _rope through Triton's
    JIT with the config aot/specs selects for the call, i.e. the code and config of the AOT build."""
    triton, why = H.import_triton()
    if triton is None:
        return None, why
    try:
        spec = importlib.util.spec_from_file_location("_bench_rope_kernel", H.ROOT / "kernels" / "triton" / "rope.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod  # Triton reads the kernel's source through its module
        spec.loader.exec_module(mod)
        H.aot_specs()
    except Exception as e:
        return None, f"cannot load kernels/triton/rope.py or aot/specs: {H.first_line(e)}"
    configs = {}
    no_positions = torch.zeros(1, dtype=torch.int64, device="cuda")

    def config(dtype, t, d):   # q and k as one (t, hq + hk, d) call, full rotary
        return H.triton_variant("rope", dtype, M=t, N=d // 2, D=d, flags=0)[0]

    def launch(q, k, cos, sin):
        _, t, hq, d = q.shape
        hk = k.shape[2]
        key = (q.dtype, t, d)
        if key not in configs:  # selection is host work the AOT path does in C
            configs[key] = config(H.DTYPE_NAMES[q.dtype], t, d)
        v = configs[key]
        qo, ko = torch.empty_like(q), torch.empty_like(k)
        grid = (t * triton.cdiv(hq + hk, v.constexprs["HEADS"]),)
        mod._rope[grid](q, k, cos, sin, no_positions, qo, ko, 0, hq * d, d, 0, hk * d, d, 0, hq * d, d, 0, hk * d, d,
                        0, d, 0, t, hq, hk, d // 2, d, t, 0, num_warps=v.num_warps, **v.constexprs)
        return qo, ko

    return launch, None


def bench_case(report, fa, triton_fn, mode, shape, dtype, l2):
    t, hq, hk, d = shape
    es = torch.finfo(dtype).bits // 8
    elems = t * (hq + hk) * d
    nbytes = (2 * elems + 2 * t * d) * es            # read q, k and each token's cos, sin rows; write q, k
    if mode == "bwd":
        nbytes *= 2                                  # the backward moves the same bytes again
    where = f"{t}x{hq}/{hk}x{d} {H.DTYPE_NAMES[dtype]}"

    def make():
        q = torch.randn(1, t, hq, d, dtype=dtype, device="cuda")
        k = torch.randn(1, t, hk, d, dtype=dtype, device="cuda")
        ang = torch.arange(t, device="cuda")[:, None] * 10000 ** (-torch.arange(0, d, 2, device="cuda") / d)
        cos, sin = (torch.cat([f(ang), f(ang)], -1).to(dtype) for f in (torch.cos, torch.sin))
        if mode == "fwd":
            return q, k, cos, sin
        return q.requires_grad_(), k.requires_grad_(), cos, sin, torch.randn_like(q), torch.randn_like(k)

    sets = H.input_sets(make, (2 * elems + 2 * t * d) * es * (2 if mode == "bwd" else 1), 6 * elems * es, l2)
    if sets is None:
        report.note(f"{where}: skipped, does not fit in free GPU memory")
        return
    fused = (lambda q, k, c, s: fa.apply_rope(q, k, c, s)) if fa else "fusedaot unavailable"
    impls = {"fusedaot": fused, "eager": eager, "compile": H.fresh_compile(eager)}
    if mode == "fwd":
        impls["triton_jit"] = triton_fn
        # last: it rotates its inputs, so that nothing measured after it sees them changed
        impls["fusedaot in place"] = (lambda q, k, c, s: fa.apply_rope_(q, k, c, s)) if fa else fused
    else:
        impls = {name: fwd_bwd(f) if callable(f) else f for name, f in impls.items()}
    times, ok = H.measure(report, impls, sets, where, scale=1.0 if mode == "fwd" else 2.0)
    report.case("rope fwd" if mode == "fwd" else "rope fwd+bwd", shape, dtype, times, nbytes, ok=ok)
    del sets
    torch.cuda.empty_cache()


def bench_host(report, fa, triton_fn, dtype):
    t, hq, hk, d = 1, 32, 8, 128
    q, k = torch.randn(1, t, hq, d, dtype=dtype, device="cuda"), torch.randn(1, t, hk, d, dtype=dtype, device="cuda")
    cos, sin = torch.randn(t, d, dtype=dtype, device="cuda"), torch.randn(t, d, dtype=dtype, device="cuda")
    op = getattr(getattr(torch.ops, "fusedaot", None), "apply_rope", None) if fa else None
    impls = {"fusedaot": (lambda *a: fa.apply_rope(*a)) if fa else "fusedaot unavailable",
             "fusedaot torch.ops": (lambda q, k, c, s: op(q, k, c, s, None, False, d)) if op else "not registered",
             "eager": eager, "compile": H.fresh_compile(eager), "triton_jit": triton_fn}
    host, graph = H.measure(report, impls, [(q, k, cos, sin)], f"{t}x{hq}/{hk}x{d}", host=True)
    report.case("rope fwd", (t, hq, hk, d), dtype, host, graph=graph)


def main():
    p = H.arg_parser(__doc__.strip().splitlines()[0])
    p.add_argument("--dtype", type=H.csv_of("bf16", "fp16", "fp32"), default="bf16")
    p.add_argument("--modes", type=H.csv_of("fwd", "bwd", "host"), default="fwd,bwd,host")
    p.add_argument("--budget-s", type=float, default=0, help="stop starting new shapes after this many seconds")
    args = p.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_rope: no CUDA device is visible; run it on a machine with a GPU")
    fa, about_fa = H.import_fusedaot()
    triton_fn, why_tr = triton_jit_rope()
    header = H.device_header(fusedaot=about_fa, triton_jit=why_tr or f"triton {sys.modules['triton'].__version__}")
    report = H.Report(header, args.out)
    start = time.perf_counter()
    models = {"fwd": "read q, k and each token's cos and sin rows, write q_out, k_out",
              "bwd": "twice the forward's bytes (the backward reads dq_out, dk_out and the tables, writes dq, dk)"}
    for mode in [m for m in args.modes if m in models]:
        for dtype in [H.DTYPES[d] for d in args.dtype]:
            report.section(f"rope {'forward' if mode == 'fwd' else 'forward + backward'}, {H.DTYPE_NAMES[dtype]}",
                           models[mode], ["eager", "compile"] + (["triton_jit"] if mode == "fwd" else []))
            for shape in (QUICK if args.quick else SHAPES):
                if args.budget_s and time.perf_counter() - start > args.budget_s:
                    report.note(f"time budget of {args.budget_s:.0f} s spent: later shapes not measured")
                    break
                bench_case(report, fa, triton_fn or why_tr, mode, shape, dtype, header["l2_bytes"])
            report.end_section()
    if "host" in args.modes:
        report.section("rope host time per call, 1 token x 32/8 heads x 128 (2,000 back-to-back calls; graph: "
                       "the same calls captured in one CUDA graph)", None, ["eager", "compile"], host=True)
        bench_host(report, fa, triton_fn or why_tr, H.DTYPES[args.dtype[0]])
        report.end_section()
    print()
    elems = lambda r: r["shape"][0] * (r["shape"][1] + r["shape"][2]) * r["shape"][3]  # noqa: E731
    for baseline in ("compile", "eager", "triton_jit"):
        report.summary("fusedaot", baseline, big=lambda r: elems(r) >= BIG, big_label=">= 16M elements")


if __name__ == "__main__":
    main()
