"""Times the sweep.cubin entry points (ctypes, libcuda) against fusedaot.gelu_dropout; rows to argv[1]."""
import ctypes, json, math, sys, time
import torch
sys.path.insert(0, "benchmarks")
import harness as H
import fusedaot

out = open(sys.argv[1], "w")
cu = ctypes.CDLL("libcuda.so.1")
torch.zeros(1, device="cuda")
mod = ctypes.c_void_p()
img = open(".scratch/gd/sweep.cubin", "rb").read()
assert cu.cuModuleLoadData(ctypes.byref(mod), img) == 0
def fn(name):
    f = ctypes.c_void_p()
    assert cu.cuFuncGetAttribute is not None
    rc = cu.cuModuleGetFunction(ctypes.byref(f), mod, name.encode())
    assert rc == 0, (name, rc)
    return f
sms = torch.cuda.get_device_properties(0).multi_processor_count
P = 0.1
threshold = round(P * 65536)
scale_bits = ctypes.c_int64.from_buffer_copy(ctypes.c_double(1 / (1 - P))).value
SEED, CTR = 1234, 77

def launcher(name, grid, bwd):
    f = fn(name)
    def run(*ts):
        args = [ctypes.c_void_p(t.data_ptr()) for t in ts] + [ctypes.c_int64(v) for v in (ts[0].numel(), SEED, CTR, threshold, scale_bits)]
        arr = (ctypes.c_void_p * len(args))(*[ctypes.cast(ctypes.pointer(a), ctypes.c_void_p) for a in args])
        rc = cu.cuLaunchKernel(f, grid, 1, 1, 256, 1, 1, 0, ctypes.c_void_p(torch.cuda.current_stream().cuda_stream), arr, None)
        assert rc == 0, rc
    return run

copy = H.copy_bandwidth_gbps()
print("copy", copy, torch.cuda.get_device_name())
cdiv = lambda a, b: -(-a // b)
for n in (1 << 24, 1 << 28, (1 << 24) + 24):
    for bwd in (False, True):
        if bwd and n > (1 << 24) + 100: continue
        nb = (5 if bwd else 4) * n  # bytes: x, y (fwd); dy, x, dx (bwd), bf16
        nsets = max(1, min(8, math.ceil(3 * 50e6 / nb)))
        def mk():
            x = torch.randn(n, device="cuda", dtype=torch.bfloat16)
            y = torch.empty_like(x)
            return (torch.randn_like(x), x, y) if bwd else (x, y)
        sets = [mk() for _ in range(nsets)]
        chunks = n // 8
        forms = []
        for name, u, pf in (("d9_u2", 2, False), ("d5_u2", 2, False), ("d5_u4", 4, False), ("d5_u1", 1, False), ("d9_u1", 1, False),
                            ("d5_u1pf", 1, True), ("d5_u2pf", 2, True)):
            if pf:
                for per in (4, 6, 8, 12):
                    forms.append((f"{name}_g{per}", name, min(cdiv(chunks, u * 256), sms * per)))
            else:
                forms.append((name, name, min(cdiv(n, 8 * u * 256), sms * 32)))
        ref = None
        res = {}
        d = "bwd" if bwd else "fwd"
        if bwd:
            op = lambda dy, x, y: fusedaot.ops.gelu_dropout  # placeholder not used
        for tag, name, grid in forms:
            run = launcher(f"{d}_{name}", grid, bwd)
            s0 = sets[0]
            s0[-1].fill_(float("nan")); run(*s0); torch.cuda.synchronize()
            o = s0[-1].float()
            if ref is None: ref = o.clone()
            err = ((o - ref).abs() / (1e-3 + ref.abs())).max().item()
            nanc = torch.isnan(o).sum().item()
            t = H.time_device(run, sets)
            res[tag] = t
            row = dict(dir=d, n=n, form=tag, grid=grid, us=t, pct_copy=nb / t / 1e3 / copy * 100, max_rel_vs_d9=err, nan=nanc,
                       card=torch.cuda.get_device_name(), copy_gbps=copy)
            out.write(json.dumps(row) + "\n"); out.flush()
            print(f"{d} n={n} {tag:12s} grid={grid:6d} {t:8.2f} us {row['pct_copy']:5.1f}% err={err:.2e} nan={nanc}")
        # the shipped op (eager autograd off): forward only
        if not bwd:
            x = sets[0][0]
            f = lambda x, y: fusedaot.gelu_dropout(x, P)
            t = H.time_device(f, sets)
            print(f"{d} n={n} wheel {t:8.2f} us {nb / t / 1e3 / copy * 100:5.1f}%")
            out.write(json.dumps(dict(dir=d, n=n, form="wheel", us=t, pct_copy=nb / t / 1e3 / copy * 100)) + "\n")
        del sets
        torch.cuda.empty_cache()
