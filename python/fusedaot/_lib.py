"""Pick and load the native library for a GPU; call its C functions through ctypes.

Compute capability -> library:  8.0/8.6/8.7 -> sm80, 8.9 -> sm89, 9.0 -> sm90,
>= 10 -> ptx (compute_80 PTX, JIT-compiled once by the driver), < 8.0 -> the PyTorch
reference (one warning).  FUSEDAOT_ARCH=sm80|sm89|sm90|ptx overrides the choice for
every GPU; FUSEDAOT_DISABLE=1 forces the reference everywhere.
"""
from __future__ import annotations

import ctypes
import functools
import json
import os
import struct
import threading
import warnings
from pathlib import Path
from typing import NamedTuple, Optional

import torch

PACKAGE_DIR = Path(__file__).resolve().parent
ARCHES = ("sm80", "sm89", "sm90", "ptx")
REFERENCE = "reference"
DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2, torch.float64: 3}


class FusedAOTError(RuntimeError):
    """A failure of the native library or the CUDA driver (the message carries the driver's text)."""


@functools.lru_cache(maxsize=None)
def _read(name: str) -> dict:
    path = PACKAGE_DIR / name
    if not path.exists():
        raise FusedAOTError(f"fusedaot: {path} is missing; the installation is broken, reinstall fusedaot")
    return json.loads(path.read_text())


def manifest() -> dict:
    """Everything the build made: ops, every kernel variant of every arch, image stores."""
    return _read("manifest.json")


def ops_manifest() -> dict:
    """The manifest without its kernel list (what calls need; a small file, read once)."""
    return _read("ops.json")


def arch_for_capability(major: int, minor: int) -> str:
    """The library that runs natively on a GPU of compute capability major.minor."""
    if major < 8:
        return REFERENCE
    if major == 8:
        return "sm89" if minor == 9 else "sm80"  # sm_80 cubins run on every 8.x; 8.9 adds FP8
    if (major, minor) == (9, 0):
        return "sm90"  # sm_90a images run on 9.0 only
    return "ptx"


def _env_choice() -> str | None:
    if os.environ.get("FUSEDAOT_DISABLE", "") not in ("", "0"):
        return REFERENCE
    forced = os.environ.get("FUSEDAOT_ARCH", "")
    if forced and forced not in ARCHES:
        raise ValueError(f"FUSEDAOT_ARCH={forced!r} is not one of {', '.join(ARCHES)}")
    return forced or None


def arch_for(device=None) -> str:
    """The library fusedaot uses for a CUDA device: sm80, sm89, sm90, ptx or reference."""
    choice = _env_choice()
    if choice:
        return choice
    if not torch.cuda.is_available():
        return REFERENCE
    return arch_for_capability(*torch.cuda.get_device_capability(device))


# The C types of a packed buffer's struct codes, for error messages.
_C_TYPES = {"Q": "a pointer (uint64)", "q": "int64", "i": "int32", "d": "double"}


def _packed_call(op: str, fn, fmt: str, names: list[str]):
    """The op's C function as a Python callable: the arguments (stream, device, dtype, params...,
    named by `names`) go to fusedaot_<op>_packed in one buffer laid out by `fmt` (the manifest's
    struct format), so ctypes marshals one argument instead of a dozen.  An argument that does
    not fit its C type is an error here, not a silently truncated value."""
    pack = struct.Struct(fmt).pack

    def call(*args):
        try:
            buffer = pack(*args)
        except (struct.error, OverflowError) as e:
            raise FusedAOTError(f"fusedaot: {op}: {_bad_argument(fmt, names, args)} ({e})") from None
        return fn(buffer)

    call.__name__ = op
    return call


def _bad_argument(fmt: str, names: list[str], args: tuple) -> str:
    """Which of a packed call's arguments does not fit its C type."""
    codes = fmt.lstrip("=")
    if len(args) != len(codes):
        return f"{len(args)} arguments given, the C function takes {len(codes)} ({', '.join(names)})"
    for name, code, value in zip(names, codes, args):
        try:
            struct.pack("=" + code, value)
        except (struct.error, OverflowError):
            return f"argument {name} = {value!r} does not fit its C type, {_C_TYPES[code]}"
    return "the arguments do not fit their C types"


class Library:
    """One libfusedaot_<arch>.so; each op's C function is an attribute of the op's name, taking
    the C arguments (stream, device, dtype, params...) and returning the C result code."""

    def __init__(self, arch: str):
        m = ops_manifest()
        path = PACKAGE_DIR / m["libraries"].get(arch, f"libfusedaot_{arch}.so")
        if not path.exists():
            raise FusedAOTError(f"fusedaot: the {arch} library {path.name} is missing from {PACKAGE_DIR}; "
                                "the installation is broken, reinstall fusedaot")
        self.arch = arch
        self.path = path
        self._cdll = cdll = ctypes.CDLL(str(path))
        cdll.fusedaot_last_error.restype = ctypes.c_char_p
        cdll.fusedaot_arch.restype = ctypes.c_char_p
        cdll.fusedaot_load.argtypes = [ctypes.c_void_p, ctypes.c_int32]
        cdll.fusedaot_num_loaded.argtypes = [ctypes.c_int32]
        cdll.fusedaot_driver_version.argtypes = [ctypes.POINTER(ctypes.c_int32)]
        cdll.fusedaot_image.argtypes = [ctypes.c_int32, ctypes.c_void_p, ctypes.c_size_t,
                                        ctypes.POINTER(ctypes.c_size_t)]
        for op, info in m["ops"].items():
            fn = getattr(cdll, f"fusedaot_{op}_packed")
            fn.argtypes, fn.restype = (ctypes.c_char_p,), ctypes.c_int
            names = ["stream", "device", "dtype"] + [name for name, _ in info["params"]]
            setattr(self, op, _packed_call(op, fn, info["packed"], names))

    def error(self, rc: int, op: str = "") -> FusedAOTError:
        text = self._cdll.fusedaot_last_error().decode(errors="replace")
        return FusedAOTError(text or f"fusedaot: {op} failed with code {rc}")

    def load(self, device_index: int) -> None:
        rc = self._cdll.fusedaot_load(current_stream(device_index), device_index)
        if rc:
            raise self.error(rc, "load")

    def num_loaded(self, device_index: int) -> int:
        return self._cdll.fusedaot_num_loaded(device_index)

    def num_kernels(self) -> int:
        return self._cdll.fusedaot_num_kernels()

    def images(self):
        """Every image of the library, unpacked: cubins (or NUL-terminated PTX) as the build
        compiled them, for tools such as cuobjdump.  Needs no GPU."""
        for i in range(self._cdll.fusedaot_num_images()):
            size = ctypes.c_size_t(0)
            rc = self._cdll.fusedaot_image(i, None, 0, ctypes.byref(size))
            buf = ctypes.create_string_buffer(size.value)
            if rc or self._cdll.fusedaot_image(i, buf, size.value, ctypes.byref(size)):
                raise self.error(rc or 1, "image")
            yield buf.raw

    def driver_version(self) -> int:
        v = ctypes.c_int32(0)
        rc = self._cdll.fusedaot_driver_version(ctypes.byref(v))
        if rc:
            raise self.error(rc, "driver_version")
        return v.value


_lock = threading.Lock()
_libraries: dict[str, Library] = {}
_by_device: list = []   # device index -> Library, or None for the reference path
_warned_old_gpu = False


def library_for_arch(arch: str) -> Library:
    with _lock:
        lib = _libraries.get(arch)
        if lib is None:
            lib = _libraries[arch] = Library(arch)
        return lib


def _resolve(index: int):
    global _warned_old_gpu
    arch = arch_for(index)
    if arch == REFERENCE:
        if _env_choice() is None and not _warned_old_gpu:
            _warned_old_gpu = True
            name = torch.cuda.get_device_name(index)
            warnings.warn(f"fusedaot: {name} (compute capability {torch.cuda.get_device_capability(index)}) "
                          "is older than sm80; using the PyTorch reference implementations", stacklevel=3)
        return None
    return library_for_arch(arch)


_UNRESOLVED = object()


def device_library(index: int):
    """The Library for CUDA device `index`, or None when that device uses the reference path."""
    try:
        lib = _by_device[index]
    except IndexError:
        lib = _UNRESOLVED
    if lib is _UNRESOLVED:
        lib = _resolve(index)
        with _lock:
            _by_device.extend([_UNRESOLVED] * (index + 1 - len(_by_device)))
            _by_device[index] = lib
    return lib


def _current_stream_slow(index: int) -> int:
    return torch.cuda.current_stream(index).cuda_stream


# current_stream(device index) -> the raw CUstream handle of PyTorch's current stream there.
current_stream = getattr(torch._C, "_cuda_getCurrentRawStream", _current_stream_slow)


@functools.lru_cache(maxsize=None)
def sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def scratch_per_program(op: str, arch: str) -> int:
    """Bytes of global scratch memory a program of `op`'s kernels in the arch's library needs at
    most (the manifest's record of what Triton asked for: the sm90 TMA kernels build their
    descriptors there), 0 where no kernel needs any."""
    return ops_manifest()["ops"][op]["global_scratch"].get(arch, 0)


class Scratch(NamedTuple):
    buffer: Optional[torch.Tensor]   # holds the memory until the launch is queued
    ptr: int
    bytes: int


NO_SCRATCH = Scratch(None, 0, 0)


def scratch(op: str, lib, dev: int, device: torch.device) -> Scratch:
    """Fresh scratch memory for `op`'s persistent kernels (at most one program per SM), or
    NO_SCRATCH where the library's kernels need none.  The caller keeps the Scratch until its
    launch is queued.  A fresh buffer per call, so no two streams share one."""
    share = scratch_per_program(op, lib.arch)
    if not share:
        return NO_SCRATCH
    buf = torch.empty(share * sm_count(dev), dtype=torch.uint8, device=device)
    return Scratch(buf, buf.data_ptr(), buf.numel())
