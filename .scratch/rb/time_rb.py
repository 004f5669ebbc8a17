"""reduce backward forms: the shipped reduce_bwd_bf16_v8 against row-walking tiles (ctypes), and torch.compile of 2*x*dy."""
import ctypes, json, math, sys
import torch
sys.path.insert(0, "benchmarks")
import harness as H
out = open(sys.argv[1], "w")
cu = ctypes.CDLL("libcuda.so.1")
torch.zeros(1, device="cuda")
mod = ctypes.c_void_p()
assert cu.cuModuleLoadData(ctypes.byref(mod), open(".scratch/rb/sweep.cubin", "rb").read()) == 0
def fn(name):
    f = ctypes.c_void_p(); assert cu.cuModuleGetFunction(ctypes.byref(f), mod, name.encode()) == 0, name; return f
def launch(f, grid, args):
    ptrs = [ctypes.cast(ctypes.pointer(a), ctypes.c_void_p) for a in args]
    arr = (ctypes.c_void_p * len(args))(*ptrs)
    rc = cu.cuLaunchKernel(f, grid[0], grid[1], grid[2], 256, 1, 1, 0, ctypes.c_void_p(torch.cuda.current_stream().cuda_stream), arr, None)
    assert rc == 0, rc
copy = H.copy_bandwidth_gbps()
print("copy", copy, torch.cuda.get_device_name())
cdiv = lambda a, b: -(-a // b)
I = ctypes.c_int64; P = ctypes.c_void_p
for R, N in ((4096, 4096), (16384, 1024), (1024, 16384), (8192, 1024), (512, 16384), (2048, 2048), (65536, 4096), (2048, 11008)):
    nb = 2 * R * N * 2 + N * 2
    nsets = max(1, min(16, math.ceil(3 * 50e6 / nb)))
    sets = []
    for _ in range(nsets):
        x = torch.randn(R, N, device="cuda", dtype=torch.bfloat16); dy = torch.randn(N, device="cuda", dtype=torch.bfloat16)
        sets.append((dy, x, torch.empty_like(x)))
    ref = (2 * sets[0][1].float() * sets[0][0].float()).bfloat16()
    forms = {}
    f0 = fn("reduce_bwd_bf16_v8")
    forms["shipped"] = lambda dy, x, dx: launch(f0, (min(cdiv(R * N, 8 * 256), 2**31 - 1), 1, 1),
        [P(dy.data_ptr()), P(x.data_ptr()), P(dx.data_ptr()), I(0), I(N), I(N), I(1), I(1), I(R), I(N), I(R), ctypes.c_int(0)])
    for lanes, k in ((32, 1), (32, 2), (32, 4), (32, 8), (16, 2), (16, 4), (8, 4), (64, 2)):
        f = fn(f"rb_l{lanes}_k{k}")
        grid = (cdiv(N // 8, lanes), cdiv(R, 256 // lanes * k), 1)
        forms[f"l{lanes}_k{k}"] = (lambda f, grid: lambda dy, x, dx: launch(f, grid,
            [P(dy.data_ptr()), P(x.data_ptr()), P(dx.data_ptr()), I(0), I(N), I(0), I(R), I(N), ctypes.c_float(2.0)]))(f, grid)
    comp = H.fresh_compile(lambda dy, x: 2 * x * dy[None, :])
    forms["compile"] = lambda dy, x, dx: comp(dy, x)
    for name, f in forms.items():
        s0 = sets[0]
        s0[2].fill_(float("nan"))
        o = f(*s0); torch.cuda.synchronize()
        o = o if o is not None else s0[2]
        ok = bool((o.float() - ref.float()).abs().max() <= 1e-2 * (1 + ref.float().abs().max()))
        t = H.time_device(f, sets)
        row = dict(R=R, N=N, form=name, us=t, pct_copy=nb / t / 1e3 / copy * 100, ok=ok, card=torch.cuda.get_device_name(), copy_gbps=copy)
        out.write(json.dumps(row) + "\n"); out.flush()
        print(f"{R}x{N} {name:8s} {t:8.2f} us {row['pct_copy']:5.1f}% ok={ok}")
    del sets; torch.cuda.empty_cache()
