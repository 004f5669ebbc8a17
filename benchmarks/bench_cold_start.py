"""Cold start of fusedaot.rms_norm in fresh processes, against Triton's JIT with an empty cache.

Measured: `import fusedaot` after `import torch`; the first fusedaot.rms_norm call (also through
the PTX library); fusedaot.load() of every kernel; Triton's JIT first call of the same kernel,
empty cache and warm disk cache.

    python benchmarks/bench_cold_start.py [--quick] [--repeat 5] [--shape 1024x4096]
                                          [--dtype bf16] [--out results.jsonl]

Each measurement runs in a fresh interpreter (this one, this environment, an empty working
directory); the table gives the median, min and max over --repeat processes. First calls are
timed with the CUDA context already created (torch.zeros(1, device='cuda') first) and include
the synchronisation after the call.
"""
from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness as H  # noqa: E402

# argv: M N dtype. Prints one JSON object of seconds.
_SETUP = """
import json, sys, time, torch
M, N, dtype = int(sys.argv[1]), int(sys.argv[2]), getattr(torch, sys.argv[3])
torch.zeros(1, device="cuda")
x = torch.randn(M, N, dtype=dtype, device="cuda")
w = (1 + 0.1 * torch.randn(N, device="cuda")).to(dtype)
torch.cuda.synchronize()
def timed(f):
    t0 = time.perf_counter()
    f()
    torch.cuda.synchronize()
    return time.perf_counter() - t0
"""
CHILD_IMPORT = """
import json, time, torch
t0 = time.perf_counter()
import fusedaot
print(json.dumps({"import fusedaot (after import torch)": time.perf_counter() - t0}))
"""
CHILD_FUSEDAOT = _SETUP + """
t_import = timed(lambda: __import__("fusedaot"))
import fusedaot
t_first = timed(lambda: fusedaot.rms_norm(x, w, 1e-6))
t_second = timed(lambda: fusedaot.rms_norm(x, w, 1e-6))
print(json.dumps({"import fusedaot (CUDA context up)": t_import, "first call": t_first,
                  "second call": t_second}))
"""
CHILD_LOAD = _SETUP + """
import fusedaot
t_load = timed(lambda: fusedaot.load())
print(json.dumps({"fusedaot.load(): every kernel of the library": t_load}))
"""
CHILD_TRITON = _SETUP + """
sys.path.insert(0, sys.argv[4])
import bench_rms_norm  # torch only: it imports Triton when asked for the launcher
t_import = timed(lambda: __import__("triton"))
box = {}
t_load = timed(lambda: box.update(zip(("launch", "why"), bench_rms_norm.triton_jit_rms_norm())))
if box["launch"] is None:
    print(json.dumps({"skip": box["why"]}))
    sys.exit(0)
t_first = timed(lambda: box["launch"](x, w))
t_second = timed(lambda: box["launch"](x, w))
print(json.dumps({"import triton": t_import, "load kernel source and spec": t_load,
                  "first call": t_first, "second call": t_second}))
"""


def run_child(code: str, argv: list[str], env: dict) -> dict:
    with tempfile.TemporaryDirectory() as cwd:  # nothing in the checkout may shadow a package
        r = subprocess.run([sys.executable, "-c", code, *argv], cwd=cwd, env=env,
                           capture_output=True, text=True, timeout=900)
    if r.returncode != 0:
        lines = (r.stderr.strip() or r.stdout.strip() or "no output").splitlines()
        raise RuntimeError(f"exit {r.returncode}: {lines[-1][:300]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main():
    p = H.arg_parser(__doc__.strip().splitlines()[0])
    p.add_argument("--repeat", type=int, default=5,
                   help="fresh processes per measurement (--quick: 2)")
    p.add_argument("--shape", default="1024x4096", help="MxN of the first call")
    p.add_argument("--dtype", default="bf16", choices=sorted(H.DTYPES))
    args = p.parse_args()
    if args.quick:
        args.repeat = min(args.repeat, 2)
    if not torch.cuda.is_available():
        sys.exit("bench_cold_start: no CUDA device is visible; run it on a machine with a GPU")
    M, N = (int(v) for v in args.shape.lower().split("x"))
    argv = [str(M), str(N), str(H.DTYPES[args.dtype]).split(".")[1]]
    _, why_tr = H.import_triton()
    header = H.device_header(python=sys.executable, triton_jit=why_tr or "importable")
    stamp = {k: header[k] for k in ("card", "driver", "torch", "date", "copy_gbps")}
    base = dict(os.environ)
    base.pop("TRITON_CACHE_DIR", None)
    no_driver_cache = {"CUDA_CACHE_DISABLE": "1"}  # the driver's PTX cache would hide the JIT
    here = [str(Path(__file__).resolve().parent)]
    runs = [  # (label, code, extra argv, environment, Triton cache: "empty" per process | "warm")
        ("fusedaot", CHILD_IMPORT, [], base, "empty"),
        ("fusedaot", CHILD_FUSEDAOT, [], base, "empty"),
        ("fusedaot", CHILD_LOAD, [], base, "empty"),
        ("fusedaot FUSEDAOT_ARCH=ptx, driver cache off", CHILD_FUSEDAOT, [],
         {**base, "FUSEDAOT_ARCH": "ptx", **no_driver_cache}, "empty"),
        ("triton_jit empty cache", CHILD_TRITON, here, base, "empty"),
        ("triton_jit warm disk cache", CHILD_TRITON, here, base, "warm"),
    ]
    warm_cache = tempfile.mkdtemp(prefix="triton-cache-")
    out = open(args.out, "a") if args.out else None
    print(f"\n### Cold start, rms_norm {M}x{N} {args.dtype} ({args.repeat} fresh processes each)\n")
    print("| impl | measurement | median (ms) | min (ms) | max (ms) |\n|---|---|---|---|---|")
    notes = []
    try:
        for label, code, extra, env, cache_kind in runs:
            if code is CHILD_TRITON and why_tr:
                notes.append(f"{label}: n/a ({why_tr})")
                continue
            fresh = cache_kind == "empty"
            samples = {}
            for i in range(args.repeat + (0 if fresh else 1)):  # a warm cache is filled first
                cache = tempfile.mkdtemp(prefix="triton-cache-") if fresh else warm_cache
                try:
                    res = run_child(code, argv + extra, {**env, "TRITON_CACHE_DIR": cache})
                except Exception as e:
                    notes.append(f"{label}: n/a ({H.first_line(e)})")
                    break
                finally:
                    if fresh:
                        shutil.rmtree(cache, ignore_errors=True)
                if "skip" in res:
                    notes.append(f"{label}: n/a ({res['skip']})")
                    break
                for k, v in res.items():
                    if fresh or i > 0:
                        samples.setdefault(k, []).append(v * 1e3)
            for what, ms in samples.items():
                row = {"op": "rms_norm", "mode": "cold", "shape": [M, N], "dtype": args.dtype,
                       "impl": label, "what": what, "median_ms": statistics.median(ms),
                       "min_ms": min(ms), "max_ms": max(ms), "runs": len(ms)}
                print(f"| {label} | {what} | {row['median_ms']:.2f} | {row['min_ms']:.2f} | "
                      f"{row['max_ms']:.2f} |", flush=True)
                if out:
                    out.write(json.dumps({**row, **stamp}) + "\n")
                    out.flush()
    finally:
        shutil.rmtree(warm_cache, ignore_errors=True)
    for text in notes:
        print(f"- {text}")
    print("- 'warm disk cache': Triton's cache already filled by an earlier process "
          "(what a second start of a server sees).")


if __name__ == "__main__":
    main()
