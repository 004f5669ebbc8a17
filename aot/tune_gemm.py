"""Tune the GEMM family's tile configs (fp8_gemm, fp8_gemm_fast, gated_mlp, attention_scores) on a GPU.

    python -m aot.tune_gemm --out aot/tuning/sm90.json
                            [--ops fp8_gemm,fp8_gemm_fast,gated_mlp,attention_scores] [--jobs 16]

Needs a GPU, torch and Triton (the version the build pins: the JIT compiles exactly the
kernel source the AOT build compiles, with the same constexprs, warps and stages).  For each
op and shape class it times every candidate config on that class's representative shapes
(CUDA events, median, L2 cleared between runs by triton.testing.do_bench), checks each
candidate's output against torch, and keeps the config with the best geometric-mean
throughput.  The candidates are compiled first in parallel worker processes (Triton's cache
then serves the timing process).  The result is merged into --out under the op's key
({class: [BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, num_warps, num_stages(, ACC_PROMOTE)]}); other
keys of the file are kept.  aot/specs/ reads it through tuning(arch).  fp8_gemm_fast is the
same kernel without promotion (ACC_PROMOTE 0: fp8_gemm(use_fast_accum=True) on sm90).
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# class -> representative shapes (M, N, K) and candidate configs.
# fp8_gemm configs end with ACC_PROMOTE: fp8_gemm's chosen config must promote (the default
# call promises fp32 sums), fp8_gemm_fast's must not (0).
FP8_GEMM = {
    "small": ([(16, 8192, 8192), (64, 4096, 4096)],
              [(64, 64, 256, 1, 4, 4, 128), (64, 32, 256, 1, 4, 4, 128), (64, 64, 128, 1, 4, 5, 128),
               (64, 128, 128, 1, 4, 4, 128), (64, 32, 512, 1, 4, 3, 128)]),
    "medium": ([(512, 8192, 8192), (1024, 4096, 4096)],
               [(128, 128, 128, 8, 8, 4, 128), (64, 128, 128, 8, 4, 4, 128), (128, 64, 128, 8, 4, 4, 128),
                (64, 64, 256, 8, 4, 4, 128), (128, 128, 256, 8, 8, 3, 128), (128, 256, 128, 8, 8, 3, 128)]),
    "large": ([(4096, 4096, 4096), (8192, 8192, 8192), (16384, 8192, 7168)],
              [(128, 128, 128, 8, 8, 4, 128), (128, 128, 256, 8, 8, 3, 128), (256, 128, 128, 8, 8, 3, 128),
               (256, 128, 128, 8, 8, 4, 128), (128, 256, 128, 8, 8, 3, 128), (256, 128, 64, 8, 8, 4, 128),
               (128, 256, 128, 8, 8, 3, 0)]),
}
GATED_MLP = {
    "small": ([(16, 14336, 4096)],
              [(64, 64, 128, 1, 4, 4), (64, 32, 128, 1, 4, 4), (64, 64, 64, 1, 4, 6), (64, 128, 64, 1, 4, 4)]),
    "medium": ([(512, 14336, 4096)],
               [(64, 128, 64, 8, 4, 4), (128, 128, 64, 8, 8, 4), (128, 64, 64, 8, 4, 4), (64, 64, 128, 8, 4, 4)]),
    "large": ([(2048, 14336, 4096), (8192, 14336, 4096)],
              [(128, 128, 64, 8, 8, 4), (128, 128, 64, 8, 8, 3), (128, 64, 64, 8, 4, 4), (64, 128, 64, 8, 4, 4),
               (256, 64, 64, 8, 8, 3), (128, 128, 32, 8, 8, 5)]),
}
# attention_scores shapes: (batch*heads, M, N, D)
ATTENTION_SCORES = {
    "gemv": ([(1024, 1, 4096, 128), (64, 1, 8192, 128)],
             [(64, 512, 64, 1, 8, 2), (64, 128, 64, 1, 4, 3), (64, 256, 64, 1, 4, 3), (64, 256, 128, 1, 4, 2)]),
    "decode": ([(32, 16, 4096, 128), (256, 16, 8192, 128)],
               [(64, 128, 64, 1, 4, 3), (64, 64, 64, 1, 4, 3), (64, 256, 64, 1, 4, 3), (64, 128, 128, 1, 4, 2)]),
    "prefill": ([(32, 2048, 2048, 128), (32, 4096, 4096, 64)],
                [(128, 128, 64, 8, 8, 3), (128, 256, 64, 8, 8, 3), (128, 128, 64, 8, 4, 3), (128, 64, 64, 8, 4, 3),
                 (64, 128, 64, 8, 4, 3), (128, 128, 128, 8, 8, 2)]),
}
FP8_GEMM_FAST = {
    "small": (FP8_GEMM["small"][0], [(64, 32, 256, 1, 4, 4, 0), (64, 64, 256, 1, 4, 4, 0), (64, 128, 128, 1, 4, 4, 0)]),
    "medium": (FP8_GEMM["medium"][0], [(64, 128, 128, 8, 4, 4, 0), (128, 128, 128, 8, 8, 4, 0),
                                       (128, 256, 128, 8, 8, 3, 0)]),
    "large": (FP8_GEMM["large"][0], [(128, 256, 128, 8, 8, 3, 0), (256, 128, 128, 8, 8, 3, 0),
                                     (128, 128, 128, 8, 8, 4, 0), (128, 256, 64, 8, 8, 4, 0)]),
}
TABLES = {"fp8_gemm": FP8_GEMM, "fp8_gemm_fast": FP8_GEMM_FAST, "gated_mlp": GATED_MLP,
          "attention_scores": ATTENTION_SCORES}
# The kernel and problem each table times (fp8_gemm_fast: fp8_gemm's), and the configs it may choose.
KERNEL_OF = {"fp8_gemm_fast": "fp8_gemm"}
ELIGIBLE = {"fp8_gemm": lambda cfg: bool(cfg[6]), "fp8_gemm_fast": lambda cfg: not cfg[6]}
SOURCES = {"fp8_gemm": ("kernels/triton/fp8_gemm.py", "_fp8_gemm"),
           "gated_mlp": ("kernels/triton/gated_mlp.py", "_gated_mlp"),
           "attention_scores": ("kernels/triton/attention_scores.py", "_attention_scores")}


def _kernel(op):
    sys.path.insert(0, str(ROOT))
    from aot.compile import _triton_module, use_ptx_pass
    use_ptx_pass()
    source, name = SOURCES[KERNEL_OF.get(op, op)]
    return getattr(_triton_module(source), name)


def problem(op: str, shape, with_ref=True):
    """(inputs for launch(), reference output or None, flops) for one shape, on the GPU."""
    import torch
    op = KERNEL_OF.get(op, op)
    g = torch.Generator(device="cuda").manual_seed(0)
    if op == "fp8_gemm":
        m, n, k = shape
        a = torch.randn(m, k, device="cuda", generator=g).to(torch.float8_e4m3fn)
        b = (torch.randn(n, k, device="cuda", generator=g) * 0.05).to(torch.float8_e4m3fn)
        sa = torch.rand(m, device="cuda", generator=g) + 0.5
        sb = torch.rand(n, device="cuda", generator=g) + 0.5
        c = torch.empty(m, n, device="cuda", dtype=torch.bfloat16)
        ref = (a.float() @ b.float().T) * sa[:, None] * sb[None, :] if with_ref else None
        return (a, b, c, sa, sb), ref, 2.0 * m * n * k
    if op == "gated_mlp":
        m, n, k = shape
        x = torch.randn(m, k, device="cuda", generator=g, dtype=torch.bfloat16)
        wg = torch.randn(n, k, device="cuda", generator=g, dtype=torch.bfloat16) * k ** -0.5
        wu = torch.randn(n, k, device="cuda", generator=g, dtype=torch.bfloat16) * k ** -0.5
        y = torch.empty(m, n, device="cuda", dtype=torch.bfloat16)
        ref = torch.nn.functional.silu((x @ wg.T).float()) * (x @ wu.T).float() if with_ref else None
        return (x, wg, wu, y), ref, 4.0 * m * n * k
    z, m, n, d = shape
    q = torch.randn(z, m, d, device="cuda", generator=g, dtype=torch.bfloat16)
    k_ = torch.randn(z, n, d, device="cuda", generator=g, dtype=torch.bfloat16)
    s = torch.empty(z, m, n, device="cuda", dtype=torch.bfloat16)
    ref = (q @ k_.transpose(1, 2)).float() * d ** -0.5 if with_ref else None
    return (q, k_, s), ref, 2.0 * z * m * n * d


def launch(op: str, kernel, cfg, tensors, warmup_only=False):
    """Launch `kernel` (Triton JIT) with config `cfg` on the problem's tensors; with
    warmup_only, compile it without launching."""
    import triton
    op = KERNEL_OF.get(op, op)
    bm, bn, bk, gm, warps, stages = cfg[:6]
    kw = dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=gm, num_warps=warps, num_stages=stages)
    if op == "fp8_gemm":
        a, b, c, sa, sb = tensors
        (m, k), n = a.shape, b.shape[0]
        args = (a, b, c, sa, sb, c, a.stride(0), b.stride(0), c.stride(0), 1, 1, m, n, k, 0)
        kw["ACC_PROMOTE"] = cfg[6] or None
        grid = (triton.cdiv(m, bm) * triton.cdiv(n, bn),)
    elif op == "gated_mlp":
        x, wg, wu, y = tensors
        (m, k), n = x.shape, wg.shape[0]
        args = (x, wg, wu, y, x.stride(0), wg.stride(0), wu.stride(0), y.stride(0), m, n, k, 0)
        grid = (triton.cdiv(m, bm) * triton.cdiv(n, bn),)
    else:
        q, k_, s = tensors
        z, m, d = q.shape
        n = k_.shape[1]
        args = (q, k_, s, q.stride(0), 0, q.stride(1), k_.stride(0), 0, k_.stride(1), 1, m, n, d, d ** -0.5)
        grid = (triton.cdiv(m, bm) * triton.cdiv(n, bn) * z,)
    if warmup_only:
        kernel.warmup(*args, grid=grid, **kw)
    else:
        kernel[grid](*args, **kw)


def _compile_worker(job):
    """Compile one (op, config) for every shape of its class (JIT warm-up into Triton's cache)."""
    op, cfg, shapes = job
    import torch
    kernel = _kernel(op)
    try:
        for shape in shapes:
            tensors, _, _ = problem(op, shape, with_ref=False)
            launch(op, kernel, cfg, tensors, warmup_only=True)
            del tensors
            torch.cuda.empty_cache()
        return op, cfg, None
    except Exception as e:  # reported, and the candidate is skipped
        return op, cfg, f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"


def tune(ops, jobs: int, log=print, save=lambda result: None) -> dict:
    """{op: {class: best config, "tflops": {class: geomean}}}; save(result) after every class,
    so that an interrupted run keeps what it measured."""
    import torch
    import triton.testing
    jobs_list = [(op, cfg, shapes) for op in ops for shapes, cfgs in TABLES[op].values() for cfg in cfgs]
    failed = {}
    if jobs > 1:
        try:
            with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn")) as pool:
                for op, cfg, err in pool.map(_compile_worker, jobs_list):
                    if err:
                        failed[(op, tuple(cfg))] = err
                        log(f"compile failed: {op} {cfg}: {err}")
        except Exception as e:  # the timing loop below compiles whatever is missing
            log(f"parallel compilation stopped ({type(e).__name__}: {e}); compiling while timing instead")
    out = {}
    for op in ops:
        kernel = _kernel(op)
        out[op] = {}
        for cls, (shapes, cfgs) in TABLES[op].items():
            scores = {tuple(c): [] for c in cfgs if (op, tuple(c)) not in failed}
            for shape in shapes:
                tensors, ref, flops = problem(op, shape)
                for cfg in list(scores):
                    try:
                        result = tensors[-3 if KERNEL_OF.get(op, op) == "fp8_gemm" else -1]
                        result.fill_(float("nan"))   # an element the candidate does not write fails the check
                        launch(op, kernel, cfg, tensors)
                        torch.cuda.synchronize()
                        err = ((result.float() - ref).abs().max() / ref.abs().max()).item()
                        if not err <= 2e-2:
                            raise ValueError(f"wrong output: max error {err:.3g} of max |ref|")
                        ms = triton.testing.do_bench(lambda c=cfg, t=tensors: launch(op, kernel, c, t), warmup=10,
                                                     rep=40, return_mode="median")
                    except Exception as e:
                        log(f"{op} {cls} {shape} {cfg}: dropped ({type(e).__name__}: {str(e).splitlines()[0][:160]})")
                        del scores[cfg]
                        continue
                    tflops = flops / ms / 1e9
                    scores[cfg].append(tflops)
                    log(f"{op:16s} {cls:7s} {'x'.join(map(str, shape)):18s} {str(cfg):36s} {ms * 1e3:9.1f} us "
                        f"{tflops:7.1f} TFLOP/s")
                del tensors, ref
                torch.cuda.empty_cache()
            eligible = {c: s for c, s in scores.items()
                        if len(s) == len(shapes) and ELIGIBLE.get(op, lambda _: True)(c)}
            if not eligible:
                log(f"{op} {cls}: no candidate worked; the spec's default stays")
                continue
            gm = {c: math.exp(sum(map(math.log, s)) / len(s)) for c, s in eligible.items()}
            best = max(gm, key=gm.get)
            log(f"{op} {cls}: best {best} at {gm[best]:.1f} TFLOP/s (geomean over {len(shapes)} shapes)")
            out[op][cls] = list(best)
            out[op].setdefault("tflops", {})[cls] = round(gm[best], 1)
            save(out)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m aot.tune_gemm", description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--ops", default=",".join(TABLES))
    ap.add_argument("--jobs", type=int, default=min(16, os.cpu_count() or 1))
    args = ap.parse_args(argv)
    ops = [o for o in args.ops.split(",") if o]
    bad = [o for o in ops if o not in TABLES]
    if bad:
        ap.error(f"unknown ops {bad}; expected some of {list(TABLES)}")
    import torch
    import triton
    original = json.loads(args.out.read_text()) if args.out.exists() else {}
    stamp = {"card": torch.cuda.get_device_name(), "date": datetime.date.today().isoformat(),
             "triton": triton.__version__, "torch": torch.__version__}

    def save(result):
        table = dict(original)
        for op, entry in result.items():
            if entry:
                table[op] = {**stamp, **entry}
        tmp = args.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(table, indent=1) + "\n")
        os.replace(tmp, args.out)

    tune(ops, args.jobs, log=lambda text: print(text, flush=True), save=save)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
