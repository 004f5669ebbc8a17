"""FP8 quantization: fusedaot.quantize_fp8 / dequantize_fp8 against eager torch and torch.compile.

    python benchmarks/bench_fp8.py [--quick] [--out results.jsonl]

Shapes 16384 x {4096, 8192}, bf16 (and fp32 at 16384 x 4096).  Byte model: read x once, write
the e4m3 bytes (and the scales); % copy = GB/s / copy bandwidth measured in this run.  A
per-tensor scale needs max |x| over the whole tensor before the first byte can be written,
so x is read twice (amax, then quantize): its traffic is 2 reads + 1 write, and under the
read-once model it cannot pass (2 + 1) / (2 + 2 + 1) = 60% of copy for bf16.  Per-row scaling
holds each row in registers and reads x once.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness as H  # noqa: E402

SHAPES = (((16384, 4096), torch.bfloat16), ((16384, 8192), torch.bfloat16), ((16384, 4096), torch.float32))
QUICK = (((16384, 8192), torch.bfloat16),)
FP8 = torch.float8_e4m3fn


def eager_quantize(scaling):
    def f(x):
        xf = x.float()
        amax = xf.abs().amax(-1, keepdim=True) if scaling == "row" else xf.abs().amax()
        scale = torch.where(amax > 0, amax / 448.0, torch.ones_like(amax))
        return (xf / scale).clamp(-448, 448).to(FP8), scale
    return f


def eager_dequantize(q, s):
    return (q.float() * s).to(torch.bfloat16)


def main():
    p = H.arg_parser(__doc__.strip().splitlines()[0])
    args = p.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_fp8: no CUDA device is visible; run it on a machine with a GPU")
    fa, about_fa = H.import_fusedaot()
    if fa is None:
        sys.exit(f"bench_fp8: {about_fa}")
    header = H.device_header(fusedaot=about_fa)
    report = H.Report(header, args.out)
    cases = QUICK if args.quick else SHAPES
    for scaling in ("row", "tensor"):
        report.section(f"quantize_fp8 scaling={scaling!r}", "read x once, write q (1 byte) and the scales",
                       ["eager", "compile"])
        for (m, n), dtype in cases:
            es = torch.finfo(dtype).bits // 8
            sets = H.input_sets(lambda: (torch.randn(m, n, device="cuda", dtype=dtype),), m * n * (es + 1),
                                m * n * 8, header["l2_bytes"])
            eager = eager_quantize(scaling)
            impls = {"fusedaot": lambda x, s=scaling: fa.quantize_fp8(x, s), "eager": eager,
                     "compile": H.fresh_compile(eager)}
            # outputs are FP8 (no sanity tolerance in the harness): compared bit for bit below
            # instead, against fusedaot's reference (scale = amax / 448 correctly rounded; the
            # eager line above divides by a Python number, which CUDA does by multiplying with
            # its reciprocal: some scales then differ by 1 ulp, and q with them at ties)
            times, _ = H.measure(report, impls, sets, f"{m}x{n}", ref="(checked below)")
            q, s = fa.quantize_fp8(sets[0][0], scaling)
            qe, se = fa.reference.quantize_fp8(sets[0][0], scaling)
            same = (torch.equal(q.view(torch.uint8), qe.view(torch.uint8))
                    and torch.equal(s.reshape(-1), se.reshape(-1)))
            report.case(f"quantize_fp8 {scaling}", (m, n), dtype, times, m * n * (es + 1) + 4 * (m if scaling == "row" else 1),
                        ok={"fusedaot": same})
            if scaling == "tensor" and times.get("fusedaot"):
                actual = m * n * (2 * es + 1)
                report.note(f"{m}x{n} {H.DTYPE_NAMES[dtype]} per tensor, counting both reads of x: "
                            f"{actual / times['fusedaot'] / 1e3:.0f} GB/s = "
                            f"{100 * actual / times['fusedaot'] / 1e3 / header['copy_gbps']:.1f}% of copy")
            del sets
            torch.cuda.empty_cache()
        report.end_section()
    report.section("dequantize_fp8 (per-row scales, bf16 out)", "read q (1 byte) and the scales, write y",
                   ["eager", "compile"])
    for (m, n), dtype in cases:
        if dtype != torch.bfloat16:
            continue
        sets = H.input_sets(lambda: fa.quantize_fp8(torch.randn(m, n, device="cuda"), "row"), m * n * 3,
                            m * n * 8, header["l2_bytes"])
        impls = {"fusedaot": lambda q, s: fa.dequantize_fp8(q, s, torch.bfloat16), "eager": eager_dequantize,
                 "compile": H.fresh_compile(eager_dequantize)}
        times, ok = H.measure(report, impls, sets, f"{m}x{n}")
        report.case("dequantize_fp8 row", (m, n), torch.bfloat16, times, m * n * 3 + 4 * m, ok=ok)
        del sets
        torch.cuda.empty_cache()
    report.end_section()
    print()
    report.summary("fusedaot", "eager", big=lambda r: True, big_label="every shape")


if __name__ == "__main__":
    main()
