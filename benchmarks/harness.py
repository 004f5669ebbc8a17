"""Shared benchmark harness: device header, CUDA-event timing, host timing, result rows.

Every number follows the project's protocol: CUDA-event medians after warm-up, random inputs
rotated through several buffer sets when they fit in L2, the card, driver and copy bandwidth
measured in the same run, every impl against its baselines in the same process. Tables go to
stdout (markdown), rows to --out (JSON lines). Importing this touches no GPU, Triton or fusedaot.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}

# Sanity bound against the eager output: it catches a wrong kernel, it is not the test suite.
# About two ulps of the output dtype at values of size ~1 (bf16: 2^-7, fp16: 2^-10); fp32
# allows for another reduction order over up to 65536 terms.
SANITY_TOL = {torch.bfloat16: 2e-2, torch.float16: 4e-3, torch.float32: 1e-4}


def arg_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="a few representative shapes only")
    p.add_argument("--out", metavar="PATH", help="append one JSON line per result row to PATH")
    return p


def shape_list(text: str) -> list[tuple[int, int]]:
    """argparse type: M1xN1,M2xN2,... as [(M1, N1), (M2, N2), ...]."""
    try:
        shapes = [tuple(int(v) for v in s.lower().split("x")) for s in text.split(",") if s.strip()]
    except ValueError:
        shapes = []
    if not shapes or any(len(s) != 2 for s in shapes):
        raise argparse.ArgumentTypeError(f"want M1xN1,M2xN2,..., got {text!r}")
    return shapes


def csv_of(*choices: str):
    """argparse type: a comma list, each item one of `choices`."""
    def parse(text: str) -> list[str]:
        items = [t.strip() for t in text.split(",") if t.strip()]
        bad = [t for t in items if t not in choices]
        if bad or not items:
            raise argparse.ArgumentTypeError(
                f"got {text!r}; expected a comma list of {', '.join(choices)}")
        return items
    return parse


def first_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:200]}"


def import_triton():
    """(triton, None), or (None, reason): the suite runs where Triton cannot be imported."""
    try:
        import triton
        return triton, None
    except Exception as e:  # ImportError, or an install broken in some other way
        return None, f"import triton failed: {first_line(e)}"


def aot_specs():
    """The spec table (aot/specs/, standard library only), for baselines that launch the same
    kernels through Triton's JIT with the configs the AOT build uses."""
    if str(ROOT) not in sys.path:
        sys.path.append(str(ROOT))
    from aot import specs
    return specs


def holds(cond: str, **values) -> bool:
    """A dispatch condition of aot/specs (C's && and ||) for these parameter values: which
    shape class or kernel the build's dispatch picks, for a JIT baseline of the same kernel."""
    return eval(aot_specs().python_condition(cond), {}, values)


def triton_variant(op_name: str, dtype: str, arch: str | None = None, **values):
    """(variant, scope) of aot/specs's op `op_name`: the first of its `dtype` variants for `arch`
    (default: the current GPU's), in the order the build's C dispatch tries them, whose condition
    holds for these parameter values (pointers 16-byte aligned, as the benchmarks' inputs are),
    with the scope its grid expressions read; for a JIT baseline of the kernel the AOT build
    ships. ValueError where no variant takes the call or where the build sends it to CUDA C++
    (no Triton kernel to time)."""
    specs = aot_specs()
    op = next(o for o in specs.OPS if o.name == op_name)
    arch = arch or "sm%d%d" % torch.cuda.get_device_capability()
    scope = {**{p.name: 0 for p in op.params if p.ctype == "ptr"}, "dtype": specs.DTYPES[dtype],
             "fa_cdiv": specs.cdiv, "fa_min": min, "fa_max": max, **values}
    for v in op.variants:
        if v.dtype == dtype and not v.unaligned and (arch in v.arches or "ptx" in v.arches) \
                and holds(v.when, **scope):
            if op.lang != "triton" or v.source:
                raise ValueError(f"the build runs {op_name} in CUDA C++ here ({v.kernel})")
            return v, scope
    raise ValueError(f"no {op_name} variant in aot/specs for {dtype} {values}")


def import_fusedaot():
    """(fusedaot, description), or (None, reason). Every kernel is loaded up front: that keeps
    loading out of the timings and is what CUDA-graph capture requires."""
    try:
        import fusedaot
        fusedaot.load()
        lib = fusedaot.arch_for(torch.device("cuda"))
    except Exception as e:
        return None, f"fusedaot unavailable: {first_line(e)}"
    return fusedaot, f"{getattr(fusedaot, '__version__', '?')} from {Path(fusedaot.__file__).parent}, library {lib}"


# ------------------------------------------------------------------------------ device header

def driver_version() -> str:
    try:
        r = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                           capture_output=True, text=True, timeout=30)
        if r.returncode == 0 and r.stdout.strip():
            return r.stdout.split()[0]
    except (OSError, subprocess.SubprocessError):
        pass
    v = getattr(torch._C, "_cuda_getDriverVersion", lambda: 0)()
    return f"CUDA {v // 1000}.{v % 1000 // 10} driver API (no nvidia-smi)" if v else "unknown"


def copy_bandwidth_gbps(nbytes: int = 1 << 30) -> float:
    """Device-to-device copy of 1 GiB, counting bytes read + written; median event timing."""
    nbytes = min(nbytes, torch.cuda.mem_get_info()[0] // 4) // 4096 * 4096
    src = torch.randint(1, 255, (nbytes,), dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    t_us = time_device(dst.copy_, [(src,)])
    del src, dst
    torch.cuda.empty_cache()
    return 2 * nbytes / t_us / 1e3


def device_header(**extra) -> dict:
    """Print and return the card, driver, versions, date and the copy bandwidth measured now."""
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    h = {"card": torch.cuda.get_device_name(), "capability": f"{props.major}.{props.minor}",
         "driver": driver_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
         "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
         "l2_bytes": getattr(props, "L2_cache_size", 0) or 50 << 20,
         "copy_gbps": copy_bandwidth_gbps(), **extra}
    print(f"card: {h['card']} (sm {h['capability']}, {props.total_memory / 2**30:.0f} GiB, "
          f"L2 {h['l2_bytes'] / 1e6:.0f} MB) | driver {h['driver']} | torch {h['torch']} "
          f"(CUDA {h['cuda']}) | {h['date']}")
    print(f"device-to-device copy bandwidth measured now (read + write): {h['copy_gbps']:.0f} GB/s")
    for k, v in extra.items():
        print(f"{k}: {v}")
    return h


# ------------------------------------------------------------------------------ timing

def input_sets(make, per_set: int, extra: int, l2_bytes: int) -> list | None:
    """Input sets from make() (each `per_set` bytes with its outputs), enough that cycling
    through them keeps L2 cold (>= 3x L2, at most 64); None where they and `extra` bytes of
    outputs and temporaries do not fit in free memory."""
    n = min(64, max(1, math.ceil(3 * l2_bytes / max(per_set, 1))))
    torch.cuda.empty_cache()
    if (n * per_set + extra) * 1.25 + (512 << 20) > torch.cuda.mem_get_info()[0]:
        return None
    return [make() for _ in range(n)]


_spin = {}
_SPIN_MAX_US = 200_000   # the longest spin queued ahead of a batch


def _spin_cycles_per_us() -> float | None:
    """Clock rate of torch.cuda._sleep, measured once; None where torch lacks it."""
    if not _spin and hasattr(torch.cuda, "_sleep"):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        torch.cuda._sleep(2_000_000)
        e.record()
        e.synchronize()
        _spin["rate"] = 2_000_000 / (s.elapsed_time(e) * 1e3)
    return _spin.get("rate")


def time_device(fn, arg_sets: list, warmup_ms=25, rep_ms=100, min_iters=10, max_iters=1000,
                batch=50) -> float:
    """Median device time (us) of fn(*args), cycling through arg_sets. Each call sits between
    its own pair of CUDA events; a spin kernel queued ahead of every batch keeps the GPU behind
    the host, so small kernels are timed without launch gaps (time_host measures those). A batch
    the host took longer to queue than its spin lasted (the GPU caught up and waited inside
    calls, so their events took the host's time) is queued again behind a longer spin."""
    n = len(arg_sets)
    fn(*arg_sets[0])
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for i in range(5):
        fn(*arg_sets[i % n])
    torch.cuda.synchronize()
    est_us = (time.perf_counter() - t0) / 5 * 1e6  # max(host, device) per call
    for i in range(min(2000, max(1, int(warmup_ms * 1e3 / est_us)))):
        fn(*arg_sets[i % n])
    iters = min(max_iters, max(min_iters, int(rep_ms * 1e3 / est_us)))
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
    rate = _spin_cycles_per_us()
    torch.cuda.synchronize()
    for b in range(0, iters, batch):
        calls = range(b, min(iters, b + batch))
        for _ in range(4):
            spin_us = min(_SPIN_MAX_US, 1.5 * len(calls) * (est_us + 10) + 50)
            if rate:
                torch.cuda._sleep(int(rate * spin_us))
            t0 = time.perf_counter()
            for i in calls:
                starts[i].record()
                fn(*arg_sets[i % n])
                ends[i].record()
            queued_us = (time.perf_counter() - t0) * 1e6
            if not rate or queued_us < 0.8 * spin_us or spin_us >= _SPIN_MAX_US:
                break
            est_us = max(2 * est_us, 1.5 * queued_us / len(calls))   # the host is slower than estimated
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) * 1e3 for s, e in zip(starts, ends))


def time_host(fn, args: tuple, calls=2000, graph=False) -> float:
    """Wall time per call (us) of `calls` back-to-back calls, synchronised once at the end;
    graph=True captures the calls into one CUDA graph and times its replay instead."""
    if graph:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm up off the capture stream, as capture requires
            for _ in range(3):
                fn(*args)
        torch.cuda.current_stream().wait_stream(side)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            for _ in range(calls):
                fn(*args)
        run, reps = g.replay, 5
    else:  # five repetitions: one was seen to vary by 20-40% on a shared host
        run, reps = (lambda: [fn(*args) for _ in range(calls)]), 5
    run()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        run()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) / calls * 1e6)
    return statistics.median(times)


def matches(out: torch.Tensor, ref: torch.Tensor, scale: float = 1.0) -> bool:
    """Sanity check against ref on whole rows sampled (about 4M elements, last row included)."""
    a, b = out.detach().reshape(-1, out.shape[-1]), ref.detach().reshape(-1, ref.shape[-1])
    rows = torch.arange(0, a.shape[0], max(1, a.numel() >> 22), device=a.device)
    rows = torch.unique(torch.cat([rows, rows.new_tensor([a.shape[0] - 1])]))
    a, b = a[rows].float(), b[rows].float()
    return bool(((a - b).abs() <= SANITY_TOL[ref.dtype] * scale * (1 + b.abs())).all())


def with_grad(f):
    """f(*inputs) forward then backward: (*inputs, dy) -> the input gradients (dx first)."""
    return lambda *a: torch.autograd.grad(f(*a[:-1]), a[:-1], a[-1])


def with_grad_fp32(f):
    """with_grad(f) computed on fp32 copies of the inputs, rounded once to their dtype: a
    reference for gradients that eager in bf16 rounds at every step (tanh's 1 - y^2 from a
    rounded y loses most of its bits where |y| is near 1)."""
    def grads(*a):
        ins = [t.detach().float().requires_grad_() for t in a[:-1]]
        return tuple(g.to(t.dtype) for g, t in zip(torch.autograd.grad(f(*ins), ins, a[-1].float()), a))
    return grads


def fresh_compile(fn):
    """torch.compile(fn) anew for one shape and dtype, or why not: clearing dynamo's cache keeps
    earlier shapes from reaching the recompile limit (which would fall back to eager silently).
    A recompile after that would put the compiler inside the timing loop (seen once: 550-880 us
    rows for a 7 us op), so it is made an error: the row becomes n/a with the reason."""
    torch._dynamo.reset()
    torch._dynamo.config.error_on_recompile = True
    try:
        return torch.compile(fn, dynamic=False, fullgraph=True)
    except Exception as e:  # most failures surface at the first call instead, as n/a rows
        return f"torch.compile failed: {first_line(e)}"


def measure(report, impls: dict, sets: list, where: str, ref="eager", scale=1.0, host=False):
    """Time every impl on the same inputs. An impl given as a string is n/a for that reason, one
    that raises is n/a with its error. Device timing (host=False) also checks each output (the
    first, if several) against impl `ref`'s on the first set (or against ref(*set) where ref is
    a callable: a more accurate form than any impl) and returns (times, ok); host=True returns
    (host time, graph time) per call on sets[0]."""
    first = lambda out: out[0] if isinstance(out, (tuple, list)) else out  # noqa: E731
    a, b, expect = {}, {}, None
    if not host:
        try:
            expect = first((ref if callable(ref) else impls[ref])(*sets[0]))
        except Exception:
            pass  # reported when `ref` itself is measured
    for name, f in impls.items():
        a[name] = b[name] = None
        if not callable(f):
            report.note(f"{name}: n/a ({f})")
            continue
        try:
            if host:
                a[name] = time_host(f, sets[0])
                b[name] = time_host(f, sets[0], graph=True)
                continue
            if expect is not None and name != ref:
                b[name] = matches(first(f(*sets[0])), expect, scale)
            a[name] = time_device(f, sets)
        except Exception as e:
            report.note(f"{name} at {where}: n/a ({first_line(e)})")
            if isinstance(e, torch.cuda.OutOfMemoryError):
                torch.cuda.empty_cache()
    return a, b


# ------------------------------------------------------------------------------ results

def _f(v, spec: str) -> str:
    return "n/a" if v is None else format(v, spec)


class Report:
    """Result rows: a markdown table per section on stdout, one JSON line per row in `out`."""

    def __init__(self, header: dict, out: str | None):
        self.header, self.rows, self.notes = header, [], []
        self.file = open(out, "a") if out else None
        self.stamp = {k: header[k] for k in ("card", "driver", "torch", "date", "copy_gbps")}

    def section(self, title: str, byte_model: str | None, baselines: list[str], host=False):
        self.byte_model, self.baselines, self.host = byte_model, baselines, host
        print(f"\n### {title}\n")
        if byte_model:
            print(f"Bytes: {byte_model}. % copy = GB/s / copy bandwidth measured in this run.")
        print(f"`x B` = B's {'host ' if host else ''}time / this row's (> 1: faster than B), "
              "same run, same card.\n")
        cols = (["op", "shape", "dtype", "impl"]
                + (["host us/call", "graph us/call"] if host else ["time (us)", "GB/s", "% copy"])
                + [f"x {b}" for b in baselines])
        print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols), flush=True)

    def note(self, text: str):
        if text not in self.notes:
            self.notes.append(text)

    def end_section(self):
        print("".join(f"- {text}\n" for text in self.notes), end="", flush=True)
        self.notes = []

    def case(self, op: str, shape, dtype, times: dict, nbytes: int | None = None,
             graph: dict | None = None, ok: dict | None = None):
        """times: impl -> median us or None (n/a); graph: impl -> us per call in a CUDA graph."""
        for impl, t in times.items():
            row = {"op": op, "shape": list(shape), "dtype": DTYPE_NAMES[dtype], "impl": impl,
                   "time_us": t}
            if self.host:
                row.update(mode="host", graph_us=(graph or {}).get(impl))
            else:
                gbps = nbytes / t / 1e3 if t and nbytes else None
                row.update(bytes=nbytes, byte_model=self.byte_model, gbps=gbps,
                           pct_copy=100 * gbps / self.header["copy_gbps"] if gbps else None)
            row.update({f"vs_{b}": times[b] / t if t and times.get(b) else None
                        for b in self.baselines})
            if (ok or {}).get(impl) is not None:
                row["ok"] = ok[impl]
            self.rows.append(row)
            if self.file:
                self.file.write(json.dumps({**row, **self.stamp}) + "\n")
                self.file.flush()
            cells = [op, "x".join(map(str, shape)), row["dtype"],
                     impl + (" (MISMATCH)" if row.get("ok") is False else "")]
            if self.host:
                cells += [_f(t, ".2f"), _f(row["graph_us"], ".2f")]
            else:
                cells += [_f(t, ".2f" if t and t < 100 else ".1f"), _f(row["gbps"], ".0f"),
                          _f(row["pct_copy"], ".1f")]
            cells += [_f(row[f"vs_{b}"], ".2f") for b in self.baselines]
            print("| " + " | ".join(cells) + " |", flush=True)
            if row.get("ok") is False:
                self.note(f"{impl} at {cells[1]} {row['dtype']}: output differs from eager "
                          "beyond the sanity bound; its time is not a result")

    def summary(self, impl: str, baseline: str, big=lambda row: False, big_label: str = ""):
        """Per op and dtype: geometric mean and min of impl's ratio vs baseline, and impl's %
        of copy bandwidth on the `big` rows. Rows that failed the sanity check are left out."""
        mine = [r for r in self.rows if r["impl"] == impl and "pct_copy" in r
                and f"vs_{baseline}" in r and r.get("ok") is not False]
        for op, dtype in sorted({(r["op"], r["dtype"]) for r in mine}):
            rows = [r for r in mine if (r["op"], r["dtype"]) == (op, dtype)]
            rat = [(r[f"vs_{baseline}"], r["shape"]) for r in rows if r[f"vs_{baseline}"]]
            line = f"summary {op} {dtype}: {impl} vs {baseline}: "
            if rat:
                gm = math.exp(sum(math.log(v) for v, _ in rat) / len(rat))
                lo = min(rat)
                line += (f"geomean {gm:.3f}x, min {lo[0]:.3f}x at {'x'.join(map(str, lo[1]))} "
                         f"({len(rat)} shapes)")
            else:
                line += "n/a"
            pct = [r["pct_copy"] for r in rows if big(r) and r["pct_copy"]]
            if pct:
                line += (f"; {impl} at {big_label}: mean {statistics.mean(pct):.1f}% of copy BW, "
                         f"min {min(pct):.1f}% ({len(pct)} shapes)")
            print(line)
