"""python .scratch/sass.py SOURCE.cu KERNEL_SUBSTR [arch]: NVRTC compile, print the SASS of matching kernels and instruction counts."""
import sys, subprocess, tempfile, pathlib, glob, re
sys.path.insert(0, "/work/main")
from aot.compile import compile_cuda
src, pat = sys.argv[1], sys.argv[2]
arch = sys.argv[3] if len(sys.argv) > 3 else "sm90"
img, meta, _ = compile_cuda(str(pathlib.Path(src).resolve()), arch, pathlib.Path(tempfile.mkdtemp()))
f = tempfile.NamedTemporaryFile(suffix=".cubin", delete=False); f.write(img); f.close()
tool = glob.glob("/tmp/bv/lib/python3*/site-packages/triton/backends/nvidia/bin/cuobjdump")[0]
out = subprocess.run([tool, "-sass", f.name], capture_output=True, text=True).stdout
res = subprocess.run([tool.replace("cuobjdump", "nvdisasm"), "--print-code", f.name], capture_output=True, text=True) if False else None
cur = None; blocks = {}
for line in out.splitlines():
    m = re.search(r"Function : (\S+)", line)
    if m: cur = m.group(1); blocks[cur] = []; continue
    if cur and re.search(r"/\*[0-9a-f]{4}\*/", line): blocks[cur].append(line)
for name, lines in blocks.items():
    if pat in name:
        print("====", name, len(lines), "instructions")
        if len(sys.argv) > 4: print("\n".join(lines))
if len(sys.argv) > 5:
    print(subprocess.run([tool, "-res-usage", f.name], capture_output=True, text=True).stdout)
