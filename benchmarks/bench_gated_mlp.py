"""Fused gated MLP: fusedaot.fused_gated_mlp against the eager composition
(two matmuls + activation + multiply), torch.compile of it and Triton's JIT of the same kernel.

    python benchmarks/bench_gated_mlp.py [--quick] [--out results.jsonl]

y = silu(x @ w_gate^T) * (x @ w_up^T), bf16, x (M, H), weights (I, H); M in {1, 16, 128,
2048, 8192} at 4096 -> 14336 and M = 2048 at 8192 -> 28672.  TFLOP/s = 4 M H I / time.  Peak
memory: the most the caching allocator held during one call beyond the inputs (eager keeps
both (M, I) products, the activation and the output alive at once; the fused kernel only y).
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness as H  # noqa: E402
from bench_fp8_gemm import GemmTable, time_all  # noqa: E402

SHAPES = ((1, 4096, 14336), (16, 4096, 14336), (128, 4096, 14336), (2048, 4096, 14336), (8192, 4096, 14336),
          (2048, 8192, 28672))
QUICK = ((16, 4096, 14336), (2048, 4096, 14336), (8192, 4096, 14336))
COMPILE_AT = {16, 2048, 8192}   # torch.compile baseline at these M (each compile costs ~10 s)


def eager(x, wg, wu):
    return F.silu(x @ wg.T) * (x @ wu.T)


def peak_extra_mib(fn, args) -> float:
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    out = fn(*args)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    del out
    return peak / 2**20


def triton_jit(triton, specs, m):
    if triton is None or torch.cuda.get_device_capability() != (9, 0):
        return "Triton not importable or not an sm90 GPU"
    fam, gm_ = specs.gated_mlp, specs.fp8_gemm
    cls = next(c for c, cond in gm_.SHAPE_CLASSES.items() if H.holds(cond, M=m))
    tma = cls in fam.GATED_MLP_SM90_TMA
    bm, bn, bk, gm, warps, stages = fam.sm90_configs()[cls][:6]
    sys.path.insert(0, str(H.ROOT))
    from aot.compile import _triton_module
    module = _triton_module("kernels/triton/gated_mlp.py")
    kernel = module._gated_mlp_tma if tma else module._gated_mlp
    # the TMA kernel's descriptors live in global scratch memory, which Triton's JIT allocates here
    triton.set_allocator(lambda size, align, stream: torch.empty(size, dtype=torch.int8, device="cuda"))
    sms = torch.cuda.get_device_properties(0).multi_processor_count

    def run(x, wg, wu):
        (mm, k), n = x.shape, wg.shape[0]
        y = torch.empty(mm, n, device=x.device, dtype=x.dtype)
        tiles = triton.cdiv(mm, bm) * triton.cdiv(n, bn)
        kernel[(min(sms, tiles) if tma else tiles,)](
            x, wg, wu, y, x.stride(0), wg.stride(0), wu.stride(0), n, mm, n, k, 0,
            BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=gm, num_warps=warps, num_stages=stages)
        return y
    return run


def main():
    p = H.arg_parser(__doc__.strip().splitlines()[0])
    args = p.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_gated_mlp: no CUDA device is visible; run it on a machine with a GPU")
    fa, about_fa = H.import_fusedaot()
    if fa is None:
        sys.exit(f"bench_gated_mlp: {about_fa}")
    triton, why = H.import_triton()
    header = H.device_header(fusedaot=about_fa, triton=getattr(triton, "__version__", why))
    specs = H.aot_specs()
    table = GemmTable(header, args.out)
    table.section("fused_gated_mlp (silu), bf16", ["eager", "compile"],
                  "`x B` = B's time / this row's, same run, same card.  peak MiB: allocator peak during one call "
                  "beyond the inputs.")
    notes = []
    compile_at = {2048} if args.quick else COMPILE_AT
    for m, h, i in (QUICK if args.quick else SHAPES):
        where = f"{m}x{h}x{i}"

        def make():
            x = torch.randn(m, h, device="cuda", dtype=torch.bfloat16)
            wg = (torch.randn(i, h, device="cuda") * h ** -0.5).to(torch.bfloat16)
            wu = (torch.randn(i, h, device="cuda") * h ** -0.5).to(torch.bfloat16)
            return x, wg, wu
        sets = H.input_sets(make, (m * h + 2 * i * h + m * i) * 2, 4 * m * i * 2, header["l2_bytes"])
        if sets is None:
            notes.append(f"{where}: skipped, does not fit in free GPU memory")
            continue
        impls = {"fusedaot": fa.fused_gated_mlp, "eager": eager,
                 "compile": H.fresh_compile(eager) if m in compile_at else "not compiled at this M (time)",
                 "triton jit (same kernel)": triton_jit(triton, specs, m) if m == 2048 else "timed at M = 2048 only"}
        times = time_all(impls, sets, where, notes)
        ref = eager(*sets[0]).float()
        ok, extra = {}, {}
        for name, fn in impls.items():
            if callable(fn) and times.get(name):
                out = fn(*sets[0]).float()
                err = ((out - ref).abs().max() / ref.abs().max()).item()
                ok[name] = err <= 2e-2
                extra[name] = {"peak_extra_mib": peak_extra_mib(fn, sets[0]), "max_err_vs_eager": err}
        table.rows("fused_gated_mlp silu", (m, h, i), 4.0 * m * h * i, times, ok, extra)
        notes.append(f"{where} peak MiB beyond inputs: " +
                     ", ".join(f"{k} {v['peak_extra_mib']:.0f}" for k, v in extra.items()))
        del sets
        torch._dynamo.reset()
        torch.cuda.empty_cache()
    print("".join(f"- {t}\n" for t in notes), end="")


if __name__ == "__main__":
    main()
