"""Elementwise and reduction CUDA ops: fusedaot.add_relu, mul_tanh, gelu_dropout,
reduce_sum_squared, reduce_mean_abs (and bias_gelu on the seed shape) against the eager
composition a user writes and torch.compile of it.

    python benchmarks/bench_elementwise.py [--quick] [--ops add_relu,...] [--modes fwd,bwd,host]
                                           [--out results.jsonl]

Shapes: (2048, 2048) fp32 (the seed table), 16M elements (4096 x 4096) and 256M elements
(65536 x 4096) bf16; bwd (forward + backward) at 16M, and for a broadcast (N,) b (whose
gradient is a column sum) over rows from 1 x 14336 to 8192 x 28672; host: host time per call at 1 x 4096
bf16, with and without a CUDA graph.  Byte models count each input read once and each output
written once; the eager column's unfused byte count is given with each op, and the ratio
"fused bytes removed" = eager bytes / fused bytes is the speedup over eager that the fusion can
buy at equal bandwidth.  The kernels are CUDA C++, so there is no Triton-JIT baseline.
Dropout outputs differ between implementations (each draws its own mask): fusedaot's is
checked against fusedaot.reference with the same seed and the others by their keep fraction,
instead of against eager's.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness as H  # noqa: E402

SEED = ((2048, 2048), torch.float32)
SHAPES = (((4096, 4096), torch.bfloat16), ((65536, 4096), torch.bfloat16))  # 16M, 256M elements
# forward + backward of a broadcast (N,) operand, whose gradient is a column sum: few rows
# (launch-bound) to many, as bench_bias_gelu.py's tokens x ffn
BROADCAST_BWD = (((1, 14336), torch.bfloat16), ((128, 11008), torch.bfloat16), ((4096, 4096), torch.bfloat16),
                 ((2048, 14336), torch.bfloat16), ((8192, 28672), torch.bfloat16))
HOST_SHAPE = (1, 4096)
P = 0.1  # dropout probability


def _sum_sq(dim):
    return lambda x: x.square().sum(dim)


def _mean_abs(dim):
    return lambda x: x.abs().mean(dim)


class Case:
    """One op: its inputs ("ab": a and b of one shape, "ab_row": b of N, "x": one input), the
    fused call, the eager composition, and byte models as functions of (M, N, element size e):
    fused (each input read once, each output written once), the eager composition's (every
    kernel reads its inputs and writes its output; dropout also writes its 1-byte mask) and the
    fused forward + backward.  The text forms are printed with the tables."""

    def __init__(self, kind, fused, eager, fused_bytes, eager_bytes, bwd_bytes, text):
        self.kind, self.fused, self.eager = kind, fused, eager
        self.fused_bytes, self.eager_bytes, self.bwd_bytes, self.text = fused_bytes, eager_bytes, bwd_bytes, text


def cases(fa):
    sq, ab = (lambda m, n, e: (m * n + m) * e), (lambda m, n, e: (m * n + n) * e)
    return {
        "add_relu": Case("ab", lambda a, b: fa.add_relu(a, b), lambda a, b: torch.relu(a + b),
                         lambda m, n, e: 3 * m * n * e, lambda m, n, e: 5 * m * n * e,
                         lambda m, n, e: 6 * m * n * e,
                         "read a, b, write y: 3MNe; eager add + relu: 5MNe; fwd+bwd adds read dy, y, write da "
                         "(db = da): 6MNe"),
        "add_relu(b: N)": Case("ab_row", lambda a, b: fa.add_relu(a, b), lambda a, b: torch.relu(a + b),
                               lambda m, n, e: (2 * m * n + n) * e, lambda m, n, e: (4 * m * n + n) * e,
                               lambda m, n, e: (5 * m * n + 2 * n) * e,
                               "read a, b (N), write y: (2MN + N)e; eager: (4MN + N)e; fwd+bwd adds read dy, y, "
                               "write da, db: (5MN + 2N)e"),
        "mul_tanh": Case("ab", lambda a, b: fa.mul_tanh(a, b), lambda a, b: torch.tanh(a * b),
                         lambda m, n, e: 3 * m * n * e, lambda m, n, e: 5 * m * n * e,
                         lambda m, n, e: 8 * m * n * e,
                         "read a, b, write y: 3MNe; eager mul + tanh: 5MNe; fwd+bwd adds read dy, a, b, "
                         "write da, db: 8MNe"),
        "mul_tanh(b: N)": Case("ab_row", lambda a, b: fa.mul_tanh(a, b), lambda a, b: torch.tanh(a * b),
                               lambda m, n, e: (2 * m * n + n) * e, lambda m, n, e: (4 * m * n + n) * e,
                               lambda m, n, e: (5 * m * n + 3 * n) * e,
                               "read a, b (N), write y: (2MN + N)e; eager: (4MN + N)e; fwd+bwd adds read dy, a, "
                               "b (N), write da, db (N): (5MN + 3N)e"),
        "gelu_dropout": Case("x", lambda x: fa.gelu_dropout(x, P), lambda x: F.dropout(F.gelu(x), P, training=True),
                             lambda m, n, e: 2 * m * n * e, lambda m, n, e: 4 * m * n * e + m * n * (e + 1),
                             lambda m, n, e: 5 * m * n * e,
                             "read x, write y: 2MNe (no mask); eager gelu + dropout: 4MNe + MN(e + 1) (dropout "
                             "writes a 1-byte mask); fwd+bwd adds read dy, x, write dx: 5MNe"),
        "reduce_sum_squared(-1)": Case("x", lambda x: fa.reduce_sum_squared(x, -1), _sum_sq(-1), sq,
                                       lambda m, n, e: (3 * m * n + m) * e, lambda m, n, e: 3 * m * n * e,
                                       "read x, write M sums: (MN + M)e; eager square + sum: (3MN + M)e; "
                                       "fwd+bwd adds read x, write dx: 3MNe"),
        "reduce_sum_squared(0)": Case("x", lambda x: fa.reduce_sum_squared(x, 0), _sum_sq(0), ab,
                                      lambda m, n, e: (3 * m * n + n) * e, lambda m, n, e: 3 * m * n * e,
                                      "read x, write N sums: (MN + N)e; eager: (3MN + N)e; fwd+bwd: 3MNe"),
        "reduce_mean_abs(-1)": Case("x", lambda x: fa.reduce_mean_abs(x, -1), _mean_abs(-1), sq,
                                    lambda m, n, e: (3 * m * n + m) * e, lambda m, n, e: 3 * m * n * e,
                                    "read x, write M means: (MN + M)e; eager abs + mean: (3MN + M)e; "
                                    "fwd+bwd: 3MNe"),
        "reduce_mean_abs(0)": Case("x", lambda x: fa.reduce_mean_abs(x, 0), _mean_abs(0), ab,
                                   lambda m, n, e: (3 * m * n + n) * e, lambda m, n, e: 3 * m * n * e,
                                   "read x, write N means: (MN + N)e; eager: (3MN + N)e; fwd+bwd: 3MNe"),
        "bias_gelu": Case("ab_row", lambda x, b: fa.bias_gelu(x, b), lambda x, b: F.gelu(x + b),
                          lambda m, n, e: (2 * m * n + n) * e, lambda m, n, e: (4 * m * n + n) * e, None,
                          "read x, bias (N), write y: (2MN + N)e; eager add + gelu: (4MN + N)e"),
    }


def make_inputs(kind, m, n, dtype, grad=False):
    def make():
        x = torch.randn(m, n, dtype=dtype, device="cuda")
        if kind == "x":
            out = (x,)
        else:
            out = (x, torch.randn(n if kind == "ab_row" else (m, n), device="cuda").to(dtype))
        if grad:
            out = tuple(t.requires_grad_() for t in out)
        return out
    return make


def check_dropout(report, fa, x, where):
    """fusedaot's mask against the reference with the same generator state; eager's and
    compile's by keep fraction only (their masks are their own)."""
    try:
        gen = torch.cuda.default_generators[x.get_device()]
        seed, counter = gen.initial_seed(), gen.get_offset() // 4
        y = fa.gelu_dropout(x, P)
        rows = slice(0, max(1, (1 << 20) // x.shape[-1]))  # the first ~1M elements
        want = fa.reference.gelu_dropout(x[rows], P, seed - (1 << 64) if seed >= 1 << 63 else seed, counter)
        ok = bool(((y[rows] == 0) == (want == 0)).all()) and H.matches(y[rows], want)
        kept = float((y != 0).float().mean())
    except Exception as e:  # reported; the timing rows then say n/a or MISMATCH for themselves
        report.note(f"gelu_dropout at {where}: the mask check failed: {H.first_line(e)}")
        return False
    if not ok or abs(kept - (1 - P)) > 0.01:
        report.note(f"gelu_dropout at {where}: fusedaot's output does not match its reference (kept {kept:.4f})")
    return ok


def bench_fwd(report, fa, name, case, m, n, dtype, l2):
    kind, fused, eager, fused_bytes = case.kind, case.fused, case.eager, case.fused_bytes
    es = torch.finfo(dtype).bits // 8
    where = f"{name} {m}x{n} {H.DTYPE_NAMES[dtype]}"
    make = make_inputs(kind, m, n, dtype)
    per_set = (3 if kind == "ab" else 2) * m * n * es
    sets = H.input_sets(make, per_set, 4 * m * n * es, l2)
    if sets is None:
        report.note(f"{where}: skipped, does not fit in free GPU memory")
        return
    impls = {"fusedaot": fused if fa else "fusedaot unavailable", "eager": eager, "compile": H.fresh_compile(eager)}
    dropout = name == "gelu_dropout"
    mask_ok = check_dropout(report, fa, sets[0][0], where) if dropout and fa else True
    times, ok = H.measure(report, impls, sets, where, scale=math.inf if dropout else 1.0)
    if not mask_ok:
        ok["fusedaot"] = False
    report.case(name, (m, n), dtype, times, fused_bytes(m, n, es), ok=ok)
    del sets
    torch.cuda.empty_cache()


def bench_bwd(report, fa, name, case, m, n, dtype, l2):
    kind, fused, eager = case.kind, case.fused, case.eager
    es = torch.finfo(dtype).bits // 8
    where = f"{name} fwd+bwd {m}x{n} {H.DTYPE_NAMES[dtype]}"
    base = make_inputs(kind, m, n, dtype, grad=True)
    with torch.no_grad():
        probe = eager(*base())
    out_shape = probe.shape
    del probe

    def make():
        ins = base()
        return ins + (torch.randn(out_shape, device="cuda").to(dtype),)

    n_in = 1 if kind == "x" else 2
    sets = H.input_sets(make, (2 * n_in + 3) * m * n * es, 6 * m * n * es, l2)
    if sets is None:
        report.note(f"{where}: skipped, does not fit in free GPU memory")
        return
    impls = {"fusedaot": fused if fa else "fusedaot unavailable", "eager": eager, "compile": H.fresh_compile(eager)}
    impls = {k: H.with_grad(f) if callable(f) else f for k, f in impls.items()}
    times, ok = H.measure(report, impls, sets, where, ref=H.with_grad_fp32(eager),
                          scale=math.inf if name == "gelu_dropout" else 2.0)
    report.case(name + " fwd+bwd", (m, n), dtype, times, case.bwd_bytes(m, n, es), ok=ok)
    del sets
    torch.cuda.empty_cache()


def bench_host(report, fa, name, case, dtype):
    kind, fused, eager = case.kind, case.fused, case.eager
    m, n = HOST_SHAPE
    args = make_inputs(kind, m, n, dtype)()
    op_name = name.split("(")[0]
    op = getattr(getattr(torch.ops, "fusedaot", None), op_name, None) if fa else None
    via_op = "torch.ops.fusedaot op not registered"
    if op is not None:
        if name.startswith("reduce"):
            dim = int(name[name.index("(") + 1:-1])
            via_op = lambda x: op(x, dim, False)  # noqa: E731
        elif name == "gelu_dropout":
            via_op = lambda x: op(x, P, 1, 2, None)  # noqa: E731
        else:
            via_op = op
    impls = {"fusedaot": fused if fa else "fusedaot unavailable", "fusedaot torch.ops": via_op,
             "eager": eager, "compile": H.fresh_compile(eager)}
    host, graph = H.measure(report, impls, [args], f"{name} {m}x{n}", host=True)
    report.case(name, (m, n), dtype, host, graph=graph)


def main():
    p = H.arg_parser(__doc__.strip().splitlines()[0])
    names = list(cases(None))
    p.add_argument("--ops", type=H.csv_of(*names), default=",".join(names), help="comma list of " + ", ".join(names))
    p.add_argument("--modes", type=H.csv_of("fwd", "bwd", "host"), default="fwd,bwd,host",
                   help="comma list of fwd, bwd (forward + backward: at 16M, and over rows for a "
                        "broadcast b), host")
    p.add_argument("--shapes", type=H.shape_list,
                   help="M1xN1,M2xN2,...: these bf16 shapes instead of the 16M and 256M ones (forward; "
                        "forward + backward where it would take 16M)")
    args = p.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_elementwise: no CUDA device is visible; run it on a machine with a GPU")
    fa, about = H.import_fusedaot()
    header = H.device_header(fusedaot=about)
    report = H.Report(header, args.out)
    table = cases(fa)
    ops = [o for o in names if o in args.ops]
    grid = [((m, n), torch.bfloat16) for m, n in args.shapes] if args.shapes else \
        list(SHAPES[:1] if args.quick else SHAPES)
    if "fwd" in args.modes:
        report.section("forward", "fused: inputs read once, outputs written once (see each op)",
                       ["eager", "compile"])
        for name in ops:
            shapes = ([SEED] if name in ("add_relu", "bias_gelu") and not args.shapes else []) + \
                     ([] if name == "bias_gelu" else grid)
            for (m, n), dtype in shapes:
                bench_fwd(report, fa, name, table[name], m, n, dtype, header["l2_bytes"])
        report.end_section()
        print("\nByte models (M x N input, element size e) and the byte ratio the fusion removes "
              "(eager's unfused bytes / fused bytes at 4096 x 4096 bf16):")
        for name in ops:
            c = table[name]
            print(f"- {name}: {c.text}; ratio {c.eager_bytes(4096, 4096, 2) / c.fused_bytes(4096, 4096, 2):.2f}")
    if "bwd" in args.modes:
        report.section("forward + backward, bf16 (16M elements; a broadcast b over rows)",
                       "fused forward + backward (see each op)", ["eager", "compile"])
        for name in [o for o in ops if o != "bias_gelu"]:
            shapes = (BROADCAST_BWD if name.endswith("(b: N)") and not args.quick and not args.shapes
                      else grid if args.shapes else SHAPES[:1])
            for (m, n), dtype in shapes:
                bench_bwd(report, fa, name, table[name], m, n, dtype, header["l2_bytes"])
        report.end_section()
    if "host" in args.modes:
        report.section(f"host time per call, {HOST_SHAPE[0]}x{HOST_SHAPE[1]} bf16 (2,000 back-to-back calls, "
                       "then synchronise; graph: the same calls captured in one CUDA graph and replayed)", None,
                       ["eager", "compile"], host=True)
        for name in [o for o in ops if o != "bias_gelu"]:
            bench_host(report, fa, name, table[name], torch.bfloat16)
        report.end_section()
    print()
    for baseline in ("compile", "eager"):
        report.summary("fusedaot", baseline, big=lambda r: r["shape"][0] * r["shape"][1] >= 1 << 24,
                       big_label="M*N >= 16M")


if __name__ == "__main__":
    main()
