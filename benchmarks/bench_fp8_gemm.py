"""FP8 GEMM: fusedaot.fp8_gemm against torch._scaled_mm (cuBLAS FP8) and a bf16 torch.matmul.

    python benchmarks/bench_fp8_gemm.py [--quick] [--out results.jsonl]

Shapes (M x N x K, out = a @ b^T with a (M, K), b (N, K)): 4096^3, 8192^3, 16384x8192x7168,
and decode / prefill-chunk sizes at N = K = 8192.  Pre-quantized inputs: fusedaot with
per-tensor and per-row scales, torch._scaled_mm with the same scales, each with and without
fast accumulation (use_fast_accum=True), bf16 torch.matmul on bf16 copies of the inputs, and
a Triton kernel launched by Triton's JIT ("triton jit"): the AOT build's promoted pick where
it is a Triton kernel (the JIT compiles without the build's PTX pass, aot/ptx.py); on sm90 at
the rows specs.fp8_gemm.TMA_ROWS names, where the build picks the CUDA C++ kernel, the Triton
kernel those rows took before it (the warp-specialised TMA kernel, per-tensor scales).  Then
the total with on-the-fly quantization of a (bf16, per row): fusedaot.fp8_gemm(a_bf16, b_fp8)
against its parts and against eager torch quantization + torch._scaled_mm.
TFLOP/s = 2 M N K / time.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness as H  # noqa: E402

SHAPES = ((4096, 4096, 4096), (8192, 8192, 8192), (16384, 8192, 7168),
          (1, 8192, 8192), (16, 8192, 8192), (128, 8192, 8192), (1024, 8192, 8192))
QUICK = ((4096, 4096, 4096), (8192, 8192, 8192), (16384, 8192, 7168))
FP8 = torch.float8_e4m3fn
# _fp8_gemm_tma's promoted config (BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, warps, stages, ACC_PROMOTE):
# what the rows of TMA_ROWS took before kernels/cuda/fp8_gemm_sm90.cu, the JIT baseline there.
TRITON_TMA_PROMOTED = (256, 128, 128, 8, 4, 3, 128)


class GemmTable:
    """Markdown rows with TFLOP/s and ratios against same-run baselines; JSON lines to --out."""

    def __init__(self, header: dict, out):
        self.header = header
        self.file = open(out, "a") if out else None
        self.stamp = {k: header[k] for k in ("card", "driver", "torch", "date", "copy_gbps")}

    def section(self, title: str, baselines: list[str], note: str = ""):
        self.baselines = baselines
        print(f"\n### {title}\n")
        if note:
            print(note + "\n")
        cols = ["op", "shape", "impl", "time (us)", "TFLOP/s"] + [f"x {b}" for b in baselines]
        print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols), flush=True)

    def rows(self, op: str, shape, flops: float, times: dict, ok: dict | None = None, extra: dict | None = None):
        for impl, t in times.items():
            row = {"op": op, "shape": list(shape), "impl": impl, "time_us": t,
                   "tflops": flops / t / 1e6 if t else None,
                   **{f"vs_{b}": (times[b] / t if t and times.get(b) else None) for b in self.baselines},
                   **(extra or {}).get(impl, {})}
            if ok and ok.get(impl) is False:
                row["ok"] = False
            if self.file:
                self.file.write(json.dumps({**row, **self.stamp}) + "\n")
                self.file.flush()
            f = lambda v, spec: "n/a" if v is None else format(v, spec)  # noqa: E731
            cells = [op, "x".join(map(str, shape)), impl + (" (MISMATCH)" if row.get("ok") is False else ""),
                     f(t, ".1f"), f(row["tflops"], ".0f")] + [f(row[f"vs_{b}"], ".2f") for b in self.baselines]
            print("| " + " | ".join(cells) + " |", flush=True)


def time_all(impls: dict, sets: list, where: str, notes: list) -> dict:
    out = {}
    for name, fn in impls.items():
        if not callable(fn):
            notes.append(f"{name}: n/a ({fn})")
            out[name] = None
            continue
        try:
            out[name] = H.time_device(fn, sets)
        except Exception as e:
            notes.append(f"{name} at {where}: n/a ({H.first_line(e)})")
            out[name] = None
            torch.cuda.empty_cache()
    return out


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    return ((x.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-30)).item()


def triton_jit_impl(triton, specs, m: int, n: int, k: int):
    """(run, config, per-tensor scales?): the Triton kernel and config of the "triton jit" row
    (bf16 output, no bias, promoted; the module docstring says which), launched through
    Triton's JIT with per-tensor scales for the TMA kernel, per-row ones otherwise; or None."""
    if triton is None or torch.cuda.get_device_capability() != (9, 0):
        return None
    fam = specs.fp8_gemm
    cls = next(c for c, cond in fam.SHAPE_CLASSES.items() if H.holds(cond, M=m))
    tma = cls in fam.FP8_GEMM_SM90_CUDA and H.holds(fam.TMA_ROWS, M=m, N=n, K=k)
    cfg = TRITON_TMA_PROMOTED if tma else fam.gemm_configs("sm90", "fp8_gemm", fam.FP8_GEMM_SM90)[cls]
    sys.path.insert(0, str(H.ROOT))
    from aot.compile import _triton_module
    module = _triton_module("kernels/triton/fp8_gemm.py")
    bm, bn, bk, gm, warps, stages, promote = cfg
    if tma:   # its descriptors live in scratch memory Triton's JIT allocates through this hook
        triton.set_allocator(lambda size, align, stream: torch.empty(size, dtype=torch.int8, device="cuda"))
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    tiles = dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=gm, ACC_PROMOTE=promote or None,
                 num_warps=warps, num_stages=stages)

    def run(a, b, sa, sb):
        (mm, k), n = a.shape, b.shape[0]
        c = torch.empty(mm, n, device=a.device, dtype=torch.bfloat16)
        grid = triton.cdiv(mm, bm) * triton.cdiv(n, bn)
        if tma:
            module._fp8_gemm_tma[(min(sms, grid),)](a, b, c, sa, sb, a.stride(0), b.stride(0), n, mm, n, k, **tiles)
        else:
            module._fp8_gemm[(grid,)](a, b, c, sa, sb, c, a.stride(0), b.stride(0), n, 0 if sa.numel() == 1 else 1,
                                      0 if sb.numel() == 1 else 1, mm, n, k, 0, **tiles)
        return c
    return run, cfg, tma


def eager_quantize_row(x):
    """Per-row dynamic e4m3 quantization as a user writes it in torch."""
    amax = x.abs().amax(-1, keepdim=True).float()
    scale = torch.where(amax > 0, amax / 448.0, torch.ones_like(amax))
    return (x.float() / scale).clamp(-448, 448).to(FP8), scale


def bench_shape(table, fa, triton, specs, m, n, k, l2, notes):
    where = f"{m}x{n}x{k}"

    def make():
        a16 = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        b16 = (torch.randn(n, k, device="cuda") * 0.05).to(torch.bfloat16)
        qa, sa = fa.quantize_fp8(a16, "row")
        qb, sb = fa.quantize_fp8(b16, "row")
        qat, sat = fa.quantize_fp8(a16, "tensor")
        qbt, sbt = fa.quantize_fp8(b16, "tensor")
        return dict(a16=a16, b16=b16, qa=qa, sa=sa, qb=qb, sb=sb, qat=qat, sat=sat, qbt=qbt, sbt=sbt)

    per_set = (m * k + n * k) * 5 + m * n * 2
    sets = H.input_sets(make, per_set, m * n * 8, l2)
    if sets is None:
        notes.append(f"{where}: skipped, does not fit in free GPU memory")
        return
    flops = 2.0 * m * n * k
    jit = triton_jit_impl(triton, specs, m, n, k)
    impls = {
        "fusedaot tensor": lambda d: fa.fp8_gemm(d["qat"], d["qbt"], d["sat"], d["sbt"]),
        "fusedaot tensor fast-accum": lambda d: fa.fp8_gemm(d["qat"], d["qbt"], d["sat"], d["sbt"],
                                                            use_fast_accum=True),
        "fusedaot row": lambda d: fa.fp8_gemm(d["qa"], d["qb"], d["sa"], d["sb"]),
        "fusedaot row fast-accum": lambda d: fa.fp8_gemm(d["qa"], d["qb"], d["sa"], d["sb"], use_fast_accum=True),
        "_scaled_mm tensor": lambda d: torch._scaled_mm(d["qat"], d["qbt"].t(), d["sat"], d["sbt"],
                                                        out_dtype=torch.bfloat16),
        "_scaled_mm tensor fast-accum": lambda d: torch._scaled_mm(d["qat"], d["qbt"].t(), d["sat"], d["sbt"],
                                                                   out_dtype=torch.bfloat16, use_fast_accum=True),
        "_scaled_mm row": lambda d: torch._scaled_mm(d["qa"], d["qb"].t(), d["sa"], d["sb"].reshape(1, n),
                                                     out_dtype=torch.bfloat16),
        "_scaled_mm row fast-accum": lambda d: torch._scaled_mm(d["qa"], d["qb"].t(), d["sa"], d["sb"].reshape(1, n),
                                                                out_dtype=torch.bfloat16, use_fast_accum=True),
        "bf16 matmul": lambda d: torch.matmul(d["a16"], d["b16"].t()),
        "triton jit": (
            (lambda d: jit[0](d["qat"], d["qbt"], d["sat"].reshape(-1), d["sbt"].reshape(-1))) if jit and jit[2]
            else (lambda d: jit[0](d["qa"], d["qb"], d["sa"].reshape(-1), d["sb"].reshape(-1))) if jit
            else "Triton not importable or not an sm90 GPU"),
    }
    times = time_all(impls, [(s,) for s in sets], where, notes)
    d0 = sets[0]
    ok, errs, refs = {}, {}, {}
    # each fusedaot row against the _scaled_mm row with the same scales and accumulation
    for impl, base in (("fusedaot tensor", "_scaled_mm tensor"),
                       ("fusedaot tensor fast-accum", "_scaled_mm tensor fast-accum"),
                       ("fusedaot row", "_scaled_mm row"), ("fusedaot row fast-accum", "_scaled_mm row fast-accum"),
                       ("triton jit", "_scaled_mm tensor" if jit and jit[2] else "_scaled_mm row")):
        if not callable(impls[impl]):
            continue
        try:
            if base not in refs:
                refs[base] = impls[base](d0)
            errs[impl] = (rel_err(impls[impl](d0), refs[base]), base)
        except Exception as e:
            notes.append(f"accuracy check of {impl} against torch.{base} at {where}: {H.first_line(e)}")
    del refs
    for impl, (e, _) in errs.items():
        ok[impl] = e <= 1e-2
    extra = {impl: {"rel_err_vs_scaled_mm": e, "scaled_mm_baseline": base} for impl, (e, base) in errs.items()}
    if jit:
        extra.setdefault("triton jit", {})["config"] = list(jit[1])
    table.rows("fp8_gemm (pre-quantized)", (m, n, k), flops, times, ok, extra)
    notes.append(f"{where}: relative error against torch._scaled_mm on the same inputs and scales "
                 "(fast-accum rows against _scaled_mm fast-accum): "
                 + ", ".join(f"{k_} {v:.1e}" for k_, (v, _) in errs.items()))
    return sets


def bench_quantized_total(table, fa, sets, m, n, k, notes):
    where = f"{m}x{n}x{k}"
    impls = {
        "fusedaot quantize+gemm": lambda d: fa.fp8_gemm(d["a16"], d["qb"], None, d["sb"]),
        "  quantize_fp8(a, row)": lambda d: fa.quantize_fp8(d["a16"], "row"),
        "  fp8_gemm (row scales)": lambda d: fa.fp8_gemm(d["qa"], d["qb"], d["sa"], d["sb"]),
        "torch quantize+_scaled_mm row": lambda d: (lambda q: torch._scaled_mm(
            q[0], d["qb"].t(), q[1], d["sb"].reshape(1, n), out_dtype=torch.bfloat16))(eager_quantize_row(d["a16"])),
        "bf16 matmul": lambda d: torch.matmul(d["a16"], d["b16"].t()),
    }
    times = time_all(impls, [(s,) for s in sets], where, notes)
    table.rows("fp8_gemm (a bf16, quantized per row on the fly)", (m, n, k), 2.0 * m * n * k, times)


def main():
    p = H.arg_parser(__doc__.strip().splitlines()[0])
    args = p.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_fp8_gemm: no CUDA device is visible; run it on a machine with a GPU")
    fa, about_fa = H.import_fusedaot()
    if fa is None:
        sys.exit(f"bench_fp8_gemm: {about_fa}")
    triton, why = H.import_triton()
    header = H.device_header(fusedaot=about_fa, triton=getattr(triton, "__version__", why))
    specs = H.aot_specs()
    table = GemmTable(header, args.out)
    notes = []
    shapes = QUICK if args.quick else SHAPES
    table.section("fp8_gemm, pre-quantized e4m3 inputs, bf16 output",
                  ["_scaled_mm tensor", "_scaled_mm tensor fast-accum", "_scaled_mm row", "bf16 matmul"],
                  "`x B` = B's time / this row's (> 1: faster than B), same run, same card. "
                  "fusedaot and torch._scaled_mm (default: fp32 accumulation) get identical inputs and scales; "
                  "the fast-accum rows pass use_fast_accum=True to both.")
    kept = {}
    for m, n, k in shapes:
        sets = bench_shape(table, fa, triton, specs, m, n, k, header["l2_bytes"], notes)
        if sets is not None and (m, n, k) in QUICK:
            kept[(m, n, k)] = sets[:1]
        del sets
        torch.cuda.empty_cache()
    print("".join(f"- {t}\n" for t in notes), end="")
    notes = []
    table.section("fp8_gemm with on-the-fly quantization of a (bf16 -> e4m3 per row), b pre-quantized per row",
                  ["torch quantize+_scaled_mm row", "bf16 matmul"],
                  "The indented rows are the two launches the first one makes.")
    for (m, n, k), sets in kept.items():
        bench_quantized_total(table, fa, sets, m, n, k, notes)
    print("".join(f"- {t}\n" for t in notes), end="")


if __name__ == "__main__":
    main()
