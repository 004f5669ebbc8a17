"""`python -m fusedaot`: what is installed, which library each GPU gets, and what it holds."""
from __future__ import annotations

import collections
import sys

import torch

import fusedaot
from fusedaot import _lib


def _driver_version() -> str:
    for arch in _lib.ARCHES:
        try:
            v = _lib.library_for_arch(arch).driver_version()
            return f"{v // 1000}.{v % 1000 // 10}"
        except (fusedaot.FusedAOTError, OSError) as e:
            return f"none ({e})"
    return "unknown"


def main() -> int:
    m = _lib.manifest()
    print(f"fusedaot {fusedaot.__version__}  (torch {torch.__version__}, built with "
          + ", ".join(f"{k} {v}" for k, v in sorted(m["compilers"].items())) + ")")
    print(f"package: {_lib.PACKAGE_DIR}")
    print(f"CUDA driver: {_driver_version()}")
    print("minimum driver: " + ", ".join(f"{a} >= {m['min_driver'][a]}" for a in m["arches"])
          + "  (the PTX library needs the newer driver; it is the path for GPUs newer than sm90)")
    env = _lib._env_choice()
    if env:
        print(f"override: every GPU uses {env} (FUSEDAOT_ARCH / FUSEDAOT_DISABLE)")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if not count:
        print("GPUs: none visible; every op runs the PyTorch reference")
    for i in range(count):
        major, minor = torch.cuda.get_device_capability(i)
        arch = _lib.arch_for(i)
        note = ""
        if arch == "ptx":
            note = "  (kernels are JIT-compiled by the driver on first load: call fusedaot.load() at start-up)"
        print(f"GPU {i}: {torch.cuda.get_device_name(i)}  capability {major}.{minor}  -> {arch}{note}")

    counts = collections.Counter((k["op"], k["arch"]) for k in m["kernels"])
    arches = m["arches"]
    print()
    print(f"{'op':24s}" + "".join(f"{a:>8s}" for a in arches))
    for op in m["ops"]:
        print(f"{op:24s}" + "".join(f"{counts.get((op, a), 0) or '-':>8}" for a in arches))
    images = {(k["arch"], k.get("image", k["variant"])): k["image_bytes"] for k in m["kernels"]}
    size = sum(images.values())
    stored = sum(b["stored_bytes"] for b in m.get("image_blocks", {}).values())
    print(f"\n{len(m['kernels'])} kernel variants (numbers are variants per op and arch), "
          f"{size / 1e6:.1f} MB of images" + (f", stored in {stored / 1e6:.1f} MB of LZMA blocks" if stored else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
