"""Shared test machinery: CUDA gating, allocator poisoning, float64 references, checks.

GPU tests carry `@pytest.mark.requires_cuda` (or use the `cuda` fixture) and skip
cleanly where torch sees no CUDA device.  The helpers below are imported by the
test modules (`from conftest import ...`).
"""
from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import textwrap
import sys

import pytest
import torch

TESTS = pathlib.Path(__file__).resolve().parent
REPO = TESTS.parent
# The test modules import helpers from this file whatever pytest's import mode is.
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

HAS_CUDA = torch.cuda.is_available()
DTYPES = (torch.float16, torch.bfloat16, torch.float32)
ARCH_LIBRARIES = ("sm80", "sm89", "sm90", "ptx")


def pytest_configure(config):
    config.addinivalue_line("markers", "requires_cuda: needs a CUDA device; skipped without one")
    config.addinivalue_line("markers", "slow: large tensors (several GB); deselect with -m 'not slow'")


def pytest_runtest_setup(item):
    if item.get_closest_marker("requires_cuda") is not None and not HAS_CUDA:
        pytest.skip("needs a CUDA device")


def pytest_report_header(config):
    lines = [f"torch {torch.__version__}, cuda available: {HAS_CUDA}"]
    try:
        import fusedaot
    except Exception as exc:  # the tests themselves report the failure
        return lines + [f"fusedaot: import failed: {exc!r}"]
    lines.append(f"fusedaot {getattr(fusedaot, '__version__', '?')} from {pathlib.Path(fusedaot.__file__).parent}")
    if HAS_CUDA:
        try:
            arch = fusedaot.arch_for(torch.device("cuda"))
        except Exception as exc:
            arch = f"error: {exc!r}"
        lines.append(f"device: {torch.cuda.get_device_name()} cc {torch.cuda.get_device_capability()}, "
                     f"library: {arch}, FUSEDAOT_ARCH={os.environ.get('FUSEDAOT_ARCH', '')!r}")
    return lines


@pytest.fixture
def cuda():
    """The current CUDA device; skips the test where there is none."""
    if not HAS_CUDA:
        pytest.skip("needs a CUDA device")
    return torch.device("cuda", torch.cuda.current_device())


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# --- poisoning --------------------------------------------------------------------

def poison(nbytes: int, device="cuda", copies: int = 4) -> None:
    """Leave the caching allocator holding blocks whose every byte is 0xFF.

    The ops allocate their outputs themselves, so an output cannot be pre-filled.
    Instead: release the cache, allocate `copies` blocks of the output's size (the
    allocator's best fit, i.e. the very blocks the op will be handed next), fill them
    with 0xFF bytes and free them.  0xFF.. is a NaN in fp32, fp16 and bf16 alike, so
    any element a kernel fails to write reads back as NaN.  Call it after creating the
    inputs and right before the op.
    """
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    nbytes = max(int(nbytes), 512)
    blocks = [torch.empty(nbytes, dtype=torch.uint8, device=device).fill_(0xFF) for _ in range(copies)]
    del blocks
    # the harness checks itself: the next allocation of this size must be poisoned
    probe = torch.empty(nbytes, dtype=torch.uint8, device=device)
    assert bool((probe == 0xFF).all()), "poison: the caching allocator did not hand back a poisoned block"
    del probe


def nbytes_of(*tensors: torch.Tensor) -> int:
    """Largest storage size among tensors shaped like the op's outputs."""
    return max((t.numel() * t.element_size() for t in tensors if t is not None), default=0)


def assert_written(*outs: torch.Tensor) -> None:
    """Every element finite: nothing left as the allocator's NaN poison.

    Inputs are drawn so that every true result is finite, so a NaN or Inf here is an
    element the kernel did not write (or computed wrongly).
    """
    for out in outs:
        if out is None or out.numel() == 0:
            continue
        bad = ~torch.isfinite(out)
        if bad.any():
            idx = bad.nonzero()[0].tolist()
            pytest.fail(f"{int(bad.sum())} of {out.numel()} output elements are not finite "
                        f"(first at {idx}): unwritten or wrong", pytrace=False)


# --- float64 reference --------------------------------------------------------------

def to64(t):
    """An exact float64 copy of a floating tensor (None and non-tensors pass through)."""
    if isinstance(t, torch.Tensor) and t.is_floating_point():
        return t.detach().to(torch.float64)
    return t


def ref64(fn, *args, dy=None, **kwargs):
    """Evaluate `fn` on exact float64 copies of its tensor arguments.

    Without `dy`: returns fn's output (float64).  With `dy`: also back-propagates dy
    and returns (out, grads), grads holding one float64 gradient per positional
    argument (None where the argument is not a floating tensor).
    """
    args64 = [to64(a) for a in args]
    if dy is None:
        with torch.no_grad():
            return fn(*args64, **kwargs)
    leaves = [a.requires_grad_() if isinstance(a, torch.Tensor) else a for a in args64]
    out = fn(*leaves, **kwargs)
    out.backward(to64(dy))
    grads = tuple(a.grad if isinstance(a, torch.Tensor) else None for a in leaves)
    return out.detach(), grads


# --- checks --------------------------------------------------------------------------

def assert_close(actual, expected, tol, mag=None, what="output"):
    """|actual - expected| <= out * |expected| + comp * mag + floor, elementwise.

    `tol` is one row of a test file's TOLERANCES table: `out` is the unit roundoff of
    the stored dtype (the one rounding of an fp32 result into it), `comp` bounds the
    fp32 arithmetic's own error relative to `mag`, and `floor` is the absolute error
    of rounding into the dtype's subnormal range.  `mag` is the magnitude scale of the
    computation that produced each element (the sum of the absolute values of the
    terms); it defaults to |expected|, right for results without cancellation.
    """
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    if actual.numel() == 0:
        return
    a = actual.detach().to(torch.float64)
    e = expected.detach().to(device=a.device, dtype=torch.float64)
    m = e.abs() if mag is None else mag.detach().to(device=a.device, dtype=torch.float64)
    bound = tol["out"] * e.abs() + tol["comp"] * m + tol["floor"]
    err = (a - e).abs()
    bad = ~(err <= bound)  # also catches NaN
    if bad.any():
        excess = torch.where(bad, (err / bound.clamp_min(1e-300)).nan_to_num(float("inf")),
                             torch.zeros_like(err))
        i = int(excess.flatten().argmax())
        idx = list(torch.unravel_index(torch.tensor(i), a.shape)) if a.dim() else []
        idx = [int(k) for k in idx]
        pytest.fail(
            f"{what}: {int(bad.sum())} of {a.numel()} elements out of tolerance "
            f"(dtype {actual.dtype}, tol {tol}); worst at {idx}: got {a.flatten()[i].item():.9g}, "
            f"expected {e.flatten()[i].item():.9g}, |err| {err.flatten()[i].item():.3g} > "
            f"bound {bound.flatten()[i].item():.3g}",
            pytrace=False,
        )


def sample_rows(m: int, device) -> torch.Tensor:
    """Indices of some of m independent rows (the first, every 97th, the last): the rows a test of
    many rows compares with a float64 reference, after checking that every row was written."""
    return torch.cat([torch.arange(0, m, 97), torch.tensor([m - 1])]).to(device)


def make_tensor(shape, dtype, device, scale=1.0, offset=0.0):
    """randn * scale + offset, drawn in float32 and rounded once into `dtype`."""
    return (torch.randn(shape, device=device) * scale + offset).to(dtype)


# --- a fake CUDA driver for testing the C runtime without a GPU (tests/fake_libcuda.c) ------

CC = shutil.which("cc") or shutil.which("gcc")


@pytest.fixture(scope="session")
def fake_driver(tmp_path_factory) -> pathlib.Path:
    """tests/fake_libcuda.c built as a libcuda.so.1 (its soname), or a skip without a C compiler."""
    if CC is None:
        pytest.skip("no C compiler to build the fake CUDA driver")
    out = tmp_path_factory.mktemp("fake") / "libcuda.so.1"
    subprocess.run([CC, "-shared", "-fPIC", "-O1", "-Wl,-soname,libcuda.so.1", "-o", str(out),
                    str(REPO / "tests" / "fake_libcuda.c")], check=True)
    return out


_FAKE_PRELUDE = """
import ctypes, hashlib, json, struct
fake = ctypes.CDLL({fake!r}, mode=ctypes.RTLD_GLOBAL)  # the runtime's dlopen finds it by soname
lib = ctypes.CDLL({library!r})
lib.fusedaot_last_error.restype = ctypes.c_char_p
fake.fake_set.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
fake.fake_last_image.restype = ctypes.c_void_p
fake.fake_image.restype = ctypes.c_void_p
fake.fake_image_size.argtypes = [ctypes.c_void_p]
fake.fake_image_size.restype = ctypes.c_size_t

def image_digest(address):  # the manifest's image_sha256 of the image the fake driver copied
    return hashlib.sha256(ctypes.string_at(address, fake.fake_image_size(address))).hexdigest()[:16]

class Launch(ctypes.Structure):  # struct fake_launch
    _fields_ = [("symbol", ctypes.c_char * 128), ("grid", ctypes.c_uint * 3), ("block", ctypes.c_uint * 3),
                ("shared", ctypes.c_uint), ("stream", ctypes.c_void_p), ("nparams", ctypes.c_int),
                ("params", (ctypes.c_ubyte * 8) * 64)]  # MAX_PARAMS
fake.fake_last_launch.restype = ctypes.POINTER(Launch)
fake.fake_tensor_map.restype = ctypes.POINTER(ctypes.c_uint64 * 16)

def error():
    return lib.fusedaot_last_error().decode()
"""


def run_with_fake(fake: pathlib.Path, library: str, body: str) -> None:
    """Run `body` in a fresh process where `fake` is the CUDA driver and `lib` the library."""
    code = _FAKE_PRELUDE.format(fake=str(fake), library=str(library)) + textwrap.dedent(body)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"


class _OnXla(torch.Tensor):
    """A CPU tensor that reports an 'xla' device: what ops must refuse with a clear error."""

    @property
    def device(self):
        return torch.device("xla", 0)


def compile_backends(device: str) -> list[str]:
    """torch.compile backends the tests run the ops under on `device`: aot_eager always (the
    fake implementations and autograd through the dispatcher), inductor where it can compile
    (a C++ compiler for CPU code, Triton for CUDA code; fusedaot itself needs neither)."""
    out = ["aot_eager"]
    if device == "cpu" and (shutil.which("c++") or shutil.which("g++")):
        out.append("inductor")
    if device == "cuda":
        import torch.utils._triton
        if torch.utils._triton.has_triton():
            out.append("inductor")
    return out


def on_foreign_device(t: torch.Tensor) -> torch.Tensor:
    return t.as_subclass(_OnXla)


# --- FP8 (tests/test_fp8*.py) ---------------------------------------------------------------------

def fp8_library_available() -> bool:
    """The current GPU's library has fp8_gemm (sm89, sm90), or the GPU uses the reference."""
    import fusedaot
    lib = fusedaot._lib.device_library(torch.cuda.current_device())
    return lib is None or lib.arch in fusedaot._lib.manifest()["ops"]["fp8_gemm"]["arches"]


def skip_unless_scaled_mm() -> None:
    """Skip a CUDA test that compares against torch._scaled_mm unless this GPU's library has
    fp8_gemm and the GPU has FP8 tensor cores (sm89+)."""
    if not fp8_library_available():
        pytest.skip("no fp8_gemm in this library")
    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("torch._scaled_mm needs FP8 tensor cores")


@pytest.fixture
def fp8_device(request):
    """"cpu", or "cuda" where the GPU's library has fp8_gemm (else the test skips: on the
    sm80 and PTX libraries test_unavailable_library_error checks the error instead)."""
    import fusedaot
    device = request.param
    if device == "cuda":
        if not HAS_CUDA:
            pytest.skip("needs a CUDA device")
        if not fp8_library_available():
            pytest.skip(f"the {fusedaot.arch_for(torch.device('cuda'))} library has no fp8_gemm")
    return device
