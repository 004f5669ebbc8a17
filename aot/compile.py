"""Compile one kernel variant for one architecture: Triton or NVRTC, content-addressed cache.

Neither compiler needs a GPU or a driver.  Results are cached under `cache_dir` by a
hash of everything that determines the image (compiler version, source text, signature,
constexprs, options, arch), so an unchanged kernel is never recompiled.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from . import ptx as ptx_pass
from . import specs

ROOT = Path(__file__).resolve().parent.parent
PTX_PASS_TEXT = Path(ptx_pass.__file__).read_bytes()  # part of every Triton image's cache key


class CompileError(RuntimeError):
    pass


def _digest(*parts) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p if isinstance(p, bytes) else str(p).encode())
        h.update(b"\0")
    return h.hexdigest()


PTX_PASS_TAG = "ptx-pass-" + _digest(PTX_PASS_TEXT)[:16]


def _cached(cache_dir: Path, key: str, build):
    """Return (image bytes, meta dict, hit) for `key`, calling build() on a miss."""
    d = cache_dir / key[:2]
    img_path, meta_path = d / f"{key}.bin", d / f"{key}.json"
    if img_path.exists() and meta_path.exists():
        return img_path.read_bytes(), json.loads(meta_path.read_text()), True
    image, meta = build()
    d.mkdir(parents=True, exist_ok=True)
    tmp = img_path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_bytes(image)
    os.replace(tmp, img_path)  # image first: the meta file marks the entry complete
    meta_path.with_suffix(f".tmp{os.getpid()}").write_text(json.dumps(meta))
    os.replace(meta_path.with_suffix(f".tmp{os.getpid()}"), meta_path)
    return image, meta, False


# ----------------------------------------------------------------------------- Triton

@functools.lru_cache(maxsize=None)
def _triton_module(source: str):
    path = ROOT / source
    name = "fusedaot_kernels_" + path.stem
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _with_ptx_pass(backend, stages, options, language, capability):
    """Triton's stage hook: its PTX goes through ptx_pass before ptxas (and into asm["ptx"])."""
    make_ptx = stages["ptx"]
    stages["ptx"] = lambda src, metadata: ptx_pass.wait_for_wgmma_results(make_ptx(src, metadata))


def use_ptx_pass():
    """Make this process's Triton compile through the PTX pass (the build and the tuner's JIT),
    caching in a directory named by the pass under the configured one: Triton's cache key does
    not know the hook.  (Its cache is what lets the ptx library reuse the sm80 compile.)"""
    import triton
    triton.knobs.runtime.add_stages_inspection_hook = _with_ptx_pass
    base = os.environ.get("TRITON_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".triton", "cache")
    if os.path.basename(base) != PTX_PASS_TAG:   # worker processes inherit the tagged directory
        os.environ["TRITON_CACHE_DIR"] = os.path.join(base, PTX_PASS_TAG)


def triton_signature(op: specs.Op, v: specs.Variant, arg_names) -> tuple[dict, dict, list]:
    """(signature, attrs, runtime args) of `v` for Triton, from the op's C parameter types."""
    signature, attrs, args = {}, {}, []
    for i, name in enumerate(arg_names):
        if name in v.constexprs:
            signature[name] = "constexpr"
            continue
        try:
            p = op.param(name)
        except StopIteration:
            raise CompileError(f"{v.name}: kernel argument {name!r} is neither a constexpr "
                               f"nor a parameter of op {op.name}") from None
        if p.ctype == "ptr":
            signature[name] = "*" + (v.dtype if p.elem == "T" else p.elem)
        else:
            signature[name] = specs.TRITON_SCALAR[p.ctype]
        if name in v.aligned and not v.unaligned:
            div = 16 if p.ctype == "ptr" else specs.align_elements(p, v)
            attrs[(i,)] = [["tt.divisibility", div]]
        args.append(name)
    return signature, attrs, args


def _ptx_param_count(ptx: str, name: str) -> int:
    m = re.search(r"\.entry\s+" + re.escape(name) + r"\s*\((.*?)\)", ptx, re.S)
    return m.group(1).count(".param") if m else -1


# sm89 images of variants that sm80 also has are assembled from the sm80 compile.  Triton lowers
# a kernel identically for sm80 and sm89 unless it has fp8 types (sm89's fp8 conversions and mma):
# the PTX differs only in its .target line (measured over every non-fp8 variant of the spec table: byte-identical cubins,
# docs/design.md).  So a kernel whose TTIR has no fp8 type takes the sm80 compile's PTX (from
# Triton's cache when the sm80 image is built, as the ptx library's are), retargeted as Triton's
# own make_ptx does, through Triton's ptxas step for sm89: the front end and LLVM run once for both.
RETARGET = {"sm89": "sm80"}
_FP8_TYPE = re.compile(r"\bf8E[0-9]")


def _retarget(ptx: str, target: str) -> str:
    """`ptx` with its .target line naming `target` (sm_89, sm_90a), as Triton's make_ptx writes it."""
    return re.sub(r"^\s*\.target\s+\S+", f".target {target}", ptx, count=1, flags=re.M)


def _triton_ptxas(ptx: str, arch: str, options: dict) -> bytes:
    """Triton's last step, its ptxas with its options, on `ptx` for `arch`."""
    from triton.backends.compiler import GPUTarget
    from triton.backends.nvidia.compiler import CUDABackend

    cc = specs.ARCH_CC[arch]
    backend = CUDABackend(GPUTarget("cuda", cc, 32))
    return backend.make_cubin(_retarget(ptx, f"sm_{cc}"), {}, backend.parse_options(options), cc)


def compile_triton(op: specs.Op, v: specs.Variant, arch: str, cache_dir: Path):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    source_text = (ROOT / op.source).read_bytes()
    fn = getattr(_triton_module(op.source), v.kernel)
    signature, attrs, args = triton_signature(op, v, fn.arg_names)
    options = {"num_warps": v.num_warps, "num_stages": v.num_stages}
    if v.maxnreg:
        options["maxnreg"] = v.maxnreg
    base = RETARGET.get(arch)
    base = base if base in v.arches and base in op.arches else None
    key = _digest("triton", triton.__version__, os.environ.get("TRITON_DISABLE_LINE_INFO"), PTX_PASS_TEXT,
                  source_text, v.kernel, sorted(signature.items()), sorted(v.constexprs.items()),
                  sorted(attrs.items()), sorted(options.items()), arch, base)

    def triton_compile(target: str):
        try:
            return triton.compile(ASTSource(fn, signature, dict(v.constexprs), attrs),
                                  target=GPUTarget("cuda", specs.ARCH_CC[target], 32), options=options)
        except Exception as e:  # the compiler's own message follows ours
            raise CompileError(f"Triton failed to compile {v.name} ({op.source}:{v.kernel}) for {target} "
                               f"with signature {signature} constexprs {v.constexprs}:\n{e}") from e

    def build():
        use_ptx_pass()
        k = triton_compile(base or arch)
        if base and _FP8_TYPE.search(k.asm["ttir"]):
            k = triton_compile(arch)
        md = k.metadata
        if md.profile_scratch_size:
            raise CompileError(f"{v.name} for {arch} needs Triton profile scratch memory, "
                               "which the fusedaot runtime does not provide")
        if md.global_scratch_size and not any(p.name == "scratch" for p in op.params):
            raise CompileError(f"{v.name} for {arch} needs {md.global_scratch_size} bytes of Triton global "
                               f"scratch memory a program, but op {op.name} has no `scratch` parameter to pass it")
        ptx = k.asm["ptx"]
        nparams = _ptx_param_count(ptx, md.name)
        if nparams != len(args) + 2:  # Triton appends global and profile scratch pointers
            raise CompileError(f"{v.name}: the compiled kernel takes {nparams} parameters, "
                               f"expected {len(args)} + 2 scratch pointers")
        if arch == "ptx":
            image = ptx.encode() + b"\0"
        elif specs.ARCH_CC[arch] != md.target.arch:
            try:
                image = _triton_ptxas(ptx, arch, options)
            except Exception as e:
                raise CompileError(f"ptxas failed to assemble {v.name} ({op.source}:{v.kernel}) for {arch} "
                                   f"from its {base} PTX:\n{e}") from e
        else:
            image = k.asm["cubin"]
        meta = {"symbol": md.name, "num_warps": md.num_warps, "shared": md.shared,
                "compiler": f"triton {triton.__version__}", "args": args,
                "global_scratch": md.global_scratch_size, "global_scratch_align": md.global_scratch_align,
                "ptx_version": _ptx_version(ptx)}
        return image, meta

    return _cached(cache_dir, key, build)


def _ptx_version(ptx: str) -> str:
    m = re.search(r"^\s*\.version\s+(\d+\.\d+)", ptx, re.M)
    return m.group(1) if m else ""


# ------------------------------------------------------------------------------ NVRTC

NVRTC_OPTIONS = ("-std=c++17", "--fmad=true")
NVRTC_ARCH = {"sm80": "sm_80", "sm89": "sm_89", "sm90": "sm_90a", "ptx": "compute_80"}  # sm_90a: wgmma, setmaxnreg


@functools.lru_cache(maxsize=None)
def _nvrtc():
    try:
        import nvidia.cuda_nvrtc as pkg
    except ImportError as e:
        raise CompileError("NVRTC not found: install the nvidia-cuda-nvrtc-cu12 wheel "
                           "(a build requirement in pyproject.toml)") from e
    lib = ctypes.CDLL(os.path.join(list(pkg.__path__)[0], "lib", "libnvrtc.so.12"))
    major, minor = ctypes.c_int(), ctypes.c_int()
    lib.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor))
    return lib, f"{major.value}.{minor.value}"


def nvrtc_version() -> str:
    return _nvrtc()[1]


def _nvrtc_call(lib, fn, *args):
    rc = getattr(lib, fn)(*args)
    if rc != 0:
        lib.nvrtcGetErrorString.restype = ctypes.c_char_p
        raise CompileError(f"{fn} failed: {lib.nvrtcGetErrorString(rc).decode()}")


# A CUDA C++ source that the ptx library has too is compiled once, by NVRTC to compute_80 PTX;
# its cubins are that PTX assembled for each arch by the ptxas of the same CUDA release (12.8,
# Triton's).  Measured over every such source for sm_80, sm_89 and sm_90a: byte-identical to
# NVRTC's own cubins, which run the same NVVM and ptxas in one call; the front end and NVVM (AdaLN:
# 19 of 33 s an arch) run once instead of four times.  A source that tests __CUDA_ARCH__ would
# compile differently per arch, so NVRTC compiles it per arch, as it does a source without a PTX
# form (fp8_gemm's sm90 kernel).
@functools.lru_cache(maxsize=None)
def _source_arches(source: str) -> frozenset[str]:
    return frozenset(a for op, v, a in specs.enumerate_kernels() if op.lang_of(v) == "cuda" and op.source_of(v) == source)


def _from_ptx(source: str, texts) -> bool:
    return "ptx" in _source_arches(source) and not any(b"__CUDA_ARCH__" in t for t in texts)


@functools.lru_cache(maxsize=None)
def _ptxas_tool() -> tuple[str, str]:
    """(path, version) of the ptxas the build's Triton ships."""
    from triton.backends.nvidia.compiler import get_ptxas, get_ptxas_version

    m = re.search(r"release \S+ V(\S+)", get_ptxas_version())
    return get_ptxas(80).path, m.group(1) if m else "unknown"


def _ptxas(ptx: bytes, arch: str, what: str) -> bytes:
    """ptxas's cubin of `ptx` (NUL-terminated) retargeted to `arch`, with its default options."""
    path, _ = _ptxas_tool()
    text = _retarget(ptx.rstrip(b"\0").decode(), NVRTC_ARCH[arch]).encode()
    with tempfile.TemporaryDirectory() as d:
        src, out = os.path.join(d, "in.ptx"), os.path.join(d, "out.cubin")
        Path(src).write_bytes(text)
        r = subprocess.run([path, f"--gpu-name={NVRTC_ARCH[arch]}", src, "-o", out], capture_output=True, text=True)
        if r.returncode:
            raise CompileError(f"ptxas failed to assemble {what} for {arch} (exit {r.returncode}):\n{r.stderr}")
        return Path(out).read_bytes()


def compile_cuda(source: str, arch: str, cache_dir: Path):
    """`source`'s image (all its extern "C" kernels) for `arch`: NVRTC's, or its PTX assembled
    by ptxas (_from_ptx)."""
    path = ROOT / source
    headers = sorted(path.parent.glob("*.cuh"))
    text = path.read_bytes()
    if arch != "ptx" and _from_ptx(source, [text, *(h.read_bytes() for h in headers)]):
        ptx, meta, _ = compile_cuda(source, "ptx", cache_dir)
        version = _ptxas_tool()[1]
        key = _digest("ptxas", version, ptx, NVRTC_ARCH[arch])
        return _cached(cache_dir, key, lambda: (_ptxas(ptx, arch, source),
                                                 {"compiler": f"{meta['compiler']} + ptxas {version}", "ptx_version": ""}))
    lib, version = _nvrtc()
    opts = [f"--gpu-architecture={NVRTC_ARCH[arch]}", f"--include-path={path.parent}", *NVRTC_OPTIONS]
    key = _digest("nvrtc", version, text, *(h.read_bytes() for h in headers),
                  [o for o in opts if not o.startswith("--include-path")], arch)

    def build():
        prog = ctypes.c_void_p()
        _nvrtc_call(lib, "nvrtcCreateProgram", ctypes.byref(prog), text, path.name.encode(), 0, None, None)
        try:
            argv = (ctypes.c_char_p * len(opts))(*(o.encode() for o in opts))
            rc = lib.nvrtcCompileProgram(prog, len(opts), argv)
            size = ctypes.c_size_t()
            lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
            log = ctypes.create_string_buffer(size.value)
            lib.nvrtcGetProgramLog(prog, log)
            if rc != 0:
                raise CompileError(f"NVRTC {version} failed to compile {source} for {arch} "
                                   f"({' '.join(opts)}):\n{log.value.decode(errors='replace')}")
            getter = "PTX" if arch == "ptx" else "CUBIN"
            _nvrtc_call(lib, f"nvrtcGet{getter}Size", prog, ctypes.byref(size))
            buf = ctypes.create_string_buffer(size.value)
            _nvrtc_call(lib, f"nvrtcGet{getter}", prog, buf)
        finally:
            lib.nvrtcDestroyProgram(ctypes.byref(prog))
        image = buf.raw  # PTX from NVRTC is already NUL-terminated
        ptx_version = _ptx_version(image.decode(errors="replace")) if arch == "ptx" else ""
        return image, {"compiler": f"nvrtc {version}", "ptx_version": ptx_version}

    return _cached(cache_dir, key, build)
