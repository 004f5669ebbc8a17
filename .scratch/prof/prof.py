import sys, torch
sys.path.insert(0, "benchmarks")
import harness as H
import fusedaot
from torch.profiler import profile, ProfilerActivity
out = open(sys.argv[1], "w")
for shape in ((4096, 4096), (8192, 1024), (512, 16384)):
    x = torch.randn(*shape, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    dy = torch.randn(shape[1], device="cuda", dtype=torch.bfloat16)
    f_ours = H.with_grad(lambda x: fusedaot.reduce_sum_squared(x, 0))
    comp = H.fresh_compile(lambda x: x.square().sum(0))
    f_comp = H.with_grad(comp)
    for name, f in (("fusedaot", f_ours), ("compile", f_comp)):
        for _ in range(20): f(x, dy)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as p:
            for _ in range(50): f(x, dy)
            torch.cuda.synchronize()
        out.write(f"==== {name} {shape}\n")
        out.write(p.key_averages().table(sort_by="cuda_time_total", row_limit=8, max_name_column_width=90) + "\n")
out.close()
