"""The loader: compute capability -> library, FUSEDAOT_ARCH / FUSEDAOT_DISABLE, missing
files, and (on a GPU) module loading: per device, thread-safe, stream-ordered, never
during CUDA-graph capture.
"""
from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

import fusedaot
from fusedaot import _lib
from conftest import ARCH_LIBRARIES

PKG = pathlib.Path(fusedaot.__file__).resolve().parent
# These tests tell right values from stale, missing or misrouted ones on fp32 data;
# the numerics themselves are test_rms_norm.py's and test_bias_gelu.py's.
TOL = dict(rtol=1e-5, atol=1e-5)
HAS_MANIFEST = (PKG / "manifest.json").is_file()


@pytest.fixture
def clean_env(monkeypatch):
    monkeypatch.delenv("FUSEDAOT_ARCH", raising=False)
    monkeypatch.delenv("FUSEDAOT_DISABLE", raising=False)
    return monkeypatch


def run_python(code: str, **env_overrides) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter that imports the same fusedaot as this one."""
    env = {k: v for k, v in os.environ.items() if k not in ("FUSEDAOT_ARCH", "FUSEDAOT_DISABLE")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PKG.parent), env.get("PYTHONPATH", "")]))
    env.update(env_overrides)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True,
                          text=True, timeout=300)


# --- the mapping, as a pure function ------------------------------------------------------

CAPABILITIES = [((8, 0), "sm80"), ((8, 6), "sm80"), ((8, 7), "sm80"), ((8, 9), "sm89"), ((9, 0), "sm90"),
                ((10, 0), "ptx"), ((10, 3), "ptx"), ((12, 0), "ptx"), ((7, 5), "reference"),
                ((7, 0), "reference"), ((6, 1), "reference")]


@pytest.mark.parametrize("cap,arch", CAPABILITIES, ids=[f"{a}.{b}" for (a, b), _ in CAPABILITIES])
def test_capability_to_library(cap, arch):
    assert _lib.arch_for_capability(*cap) == arch


@pytest.mark.parametrize("cap,arch", CAPABILITIES, ids=[f"{a}.{b}" for (a, b), _ in CAPABILITIES])
def test_arch_for_uses_the_device_capability(cap, arch, clean_env):
    clean_env.setattr(torch.cuda, "is_available", lambda: True)
    clean_env.setattr(torch.cuda, "get_device_capability", lambda device=None: cap)
    assert fusedaot.arch_for(torch.device("cuda", 0)) == arch


def test_arch_for_without_cuda(clean_env):
    clean_env.setattr(torch.cuda, "is_available", lambda: False)
    assert fusedaot.arch_for() == "reference"


@pytest.mark.parametrize("forced", ARCH_LIBRARIES)
def test_fusedaot_arch_overrides(forced, clean_env):
    clean_env.setattr(torch.cuda, "is_available", lambda: True)
    clean_env.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    clean_env.setenv("FUSEDAOT_ARCH", forced)
    assert fusedaot.arch_for(0) == forced
    clean_env.setenv("FUSEDAOT_DISABLE", "1")  # DISABLE wins over ARCH
    assert fusedaot.arch_for(0) == "reference"
    clean_env.setenv("FUSEDAOT_DISABLE", "0")
    assert fusedaot.arch_for(0) == forced


def test_unknown_fusedaot_arch_is_an_error(clean_env):
    clean_env.setenv("FUSEDAOT_ARCH", "sm70")
    with pytest.raises(ValueError, match=r"FUSEDAOT_ARCH='sm70' is not one of sm80, sm89, sm90, ptx"):
        fusedaot.arch_for(0)


@pytest.mark.parametrize("env,expected", [({"FUSEDAOT_ARCH": "ptx"}, "ptx"), ({"FUSEDAOT_ARCH": "sm80"}, "sm80"),
                                          ({"FUSEDAOT_DISABLE": "1"}, "reference"),
                                          ({"FUSEDAOT_DISABLE": "1", "FUSEDAOT_ARCH": "sm90"}, "reference")],
                         ids=["ptx", "sm80", "disable", "disable+arch"])
def test_environment_in_a_fresh_process(env, expected):
    r = run_python("import fusedaot; print(fusedaot.arch_for())", **env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == expected


def test_fusedaot_error_is_a_runtime_error():
    assert issubclass(fusedaot.FusedAOTError, RuntimeError)


# --- missing files ------------------------------------------------------------------------

@pytest.fixture
def package_copy(tmp_path, monkeypatch):
    """Point the loader at a copy of the package directory's data files; yield the copy."""
    if not HAS_MANIFEST:
        pytest.skip("no manifest.json next to fusedaot (source tree, not an installed wheel)")
    copy = tmp_path / "fusedaot"
    copy.mkdir()
    for name in ("manifest.json", "ops.json"):
        shutil.copy(PKG / name, copy / name)
    for arch in ARCH_LIBRARIES:
        shutil.copy(PKG / f"libfusedaot_{arch}.so", copy / f"libfusedaot_{arch}.so")
    monkeypatch.setattr(_lib, "PACKAGE_DIR", copy)
    monkeypatch.setattr(_lib, "_libraries", {})
    monkeypatch.setattr(_lib, "_by_device", [])
    return copy


@pytest.mark.parametrize("arch", ARCH_LIBRARIES)
def test_missing_library_names_file_and_arch(arch, package_copy):
    (package_copy / f"libfusedaot_{arch}.so").unlink()
    with pytest.raises(fusedaot.FusedAOTError, match=rf"\b{arch}\b.*libfusedaot_{arch}\.so|libfusedaot_{arch}\.so.*\b{arch}\b"):
        _lib.library_for_arch(arch)
    others = [a for a in ARCH_LIBRARIES if a != arch]
    assert _lib.library_for_arch(others[0]).arch == others[0]  # the rest still load


def test_missing_manifest_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(_lib, "PACKAGE_DIR", tmp_path)
    _lib._read.cache_clear()
    try:
        with pytest.raises(fusedaot.FusedAOTError, match=r"manifest\.json is missing"):
            _lib.manifest()
        with pytest.raises(fusedaot.FusedAOTError, match=r"ops\.json is missing"):
            _lib.ops_manifest()
    finally:
        _lib._read.cache_clear()


def test_libraries_load_without_a_driver(package_copy):
    # dlopen must not need libcuda: every library opens and reports its arch and size
    manifest = json.loads((package_copy / "manifest.json").read_text())
    for arch in ARCH_LIBRARIES:
        lib = _lib.library_for_arch(arch)
        assert lib._cdll.fusedaot_arch().decode() == arch
        assert lib.num_kernels() == sum(k["arch"] == arch for k in manifest["kernels"])


def test_c_arguments_that_do_not_fit_are_refused(package_copy):
    # one buffer carries a call's arguments (fusedaot_<op>_packed): a value its C type cannot
    # hold is an error naming the argument, raised before anything reaches the library
    lib = _lib.library_for_arch("sm90")
    #        stream device dtype x  y  w  stride_x stride_y M        N  eps
    good = (0, 0, 2, 0, 0, 0, 1, 1, 1, 1, 1e-6)
    with pytest.raises(fusedaot.FusedAOTError,
                       match=r"rms_norm_fwd: argument M = 2147483648 does not fit its C type, int32"):
        lib.rms_norm_fwd(*good[:8], 1 << 31, *good[9:])
    with pytest.raises(fusedaot.FusedAOTError,
                       match=r"rms_norm_fwd: argument x = -1 does not fit its C type, a pointer \(uint64\)"):
        lib.rms_norm_fwd(*good[:3], -1, *good[4:])
    with pytest.raises(fusedaot.FusedAOTError,
                       match=r"rms_norm_fwd: 10 arguments given, the C function takes 11 \(stream, device, dtype, x,"):
        lib.rms_norm_fwd(*good[:10])


@pytest.mark.requires_cuda
def test_missing_library_on_the_gpu_path(tmp_path):
    if not HAS_MANIFEST:
        pytest.skip("no manifest.json next to fusedaot (source tree, not an installed wheel)")
    copy = tmp_path / "fusedaot"
    shutil.copytree(PKG, copy, ignore=shutil.ignore_patterns("__pycache__", "libfusedaot_sm80.so"))
    r = subprocess.run([sys.executable, "-c", textwrap.dedent("""
        import torch, fusedaot
        try:
            fusedaot.rms_norm(torch.randn(4, 64, device="cuda"))
        except fusedaot.FusedAOTError as e:
            print("ERROR:", e)
        """)], env={**os.environ, "FUSEDAOT_ARCH": "sm80",
             "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH", "")]))},
        capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "ERROR:" in r.stdout and "libfusedaot_sm80.so" in r.stdout and "sm80" in r.stdout, r.stdout


# --- on a GPU -----------------------------------------------------------------------------

@pytest.mark.requires_cuda
def test_gpu_uses_its_library():
    expected = os.environ.get("FUSEDAOT_ARCH") or _lib.arch_for_capability(*torch.cuda.get_device_capability())
    if os.environ.get("FUSEDAOT_DISABLE", "") not in ("", "0"):
        expected = "reference"
    assert fusedaot.arch_for(torch.cuda.current_device()) == expected
    lib = _lib.device_library(torch.cuda.current_device())
    assert (lib is None) if expected == "reference" else (lib.arch == expected)


@pytest.mark.requires_cuda
def test_disable_runs_the_reference_on_gpu():
    r = run_python("""
        import torch, fusedaot
        from fusedaot import _lib
        x = torch.randn(33, 1000, device="cuda", dtype=torch.bfloat16); w = torch.randn(1000, device="cuda", dtype=torch.bfloat16)
        assert torch.equal(fusedaot.rms_norm(x, w), fusedaot.reference.rms_norm(x, w, 1e-6))
        assert torch.equal(fusedaot.bias_gelu(x, w, "tanh"), fusedaot.reference.bias_gelu(x, w, "tanh"))
        assert _lib._libraries == {}, _lib._libraries
        print("ok")
        """, FUSEDAOT_DISABLE="1")
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


@pytest.mark.requires_cuda
@pytest.mark.parametrize("arch", ["ptx", "native"])
def test_first_use_from_many_threads(arch):
    r = run_python("""
        import threading, torch, fusedaot
        xs = [torch.randn(8, 4096 + i, device="cuda") for i in range(16)]
        torch.cuda.synchronize()
        out, errors, start = [None] * 16, [], threading.Barrier(16)
        def work(i):
            try:
                start.wait()
                out[i] = fusedaot.rms_norm(xs[i]) if i % 2 else fusedaot.bias_gelu(xs[i], xs[i][0])
            except Exception as e:
                errors.append(repr(e))
        threads = [threading.Thread(target=work, args=(i,)) for i in range(16)]
        [t.start() for t in threads]; [t.join() for t in threads]
        assert not errors, errors
        torch.cuda.synchronize()
        for i, x in enumerate(xs):
            ref = fusedaot.reference.rms_norm(x, None, 1e-6) if i % 2 else fusedaot.reference.bias_gelu(x, x[0], "none")
            torch.testing.assert_close(out[i], ref, rtol=1e-5, atol=1e-5)
        print("ok")
        """, **({"FUSEDAOT_ARCH": "ptx"} if arch == "ptx" else {}))
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


@pytest.mark.requires_cuda
def test_capture_before_load_is_refused_or_works():
    r = run_python("""
        import torch, fusedaot
        x = torch.randn(4, 1024, device="cuda"); torch.cuda.synchronize()
        g = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(g):
                y = fusedaot.rms_norm(x)
        except fusedaot.FusedAOTError as e:
            assert "load" in str(e), e
            print("refused")
        else:
            g.replay(); torch.cuda.synchronize()
            torch.testing.assert_close(y, fusedaot.reference.rms_norm(x, None, 1e-6), rtol=1e-5, atol=1e-5)
            print("captured")
        fusedaot.load()
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            y = fusedaot.rms_norm(x)
        x.copy_(torch.randn_like(x)); g.replay(); torch.cuda.synchronize()
        torch.testing.assert_close(y, fusedaot.reference.rms_norm(x, None, 1e-6), rtol=1e-5, atol=1e-5)
        """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() in ("refused", "captured")


@pytest.mark.requires_cuda
def test_launches_on_the_current_stream():
    # x is written on a side stream behind a long sleep; a launch on any other stream
    # (the legacy default stream does not wait for non-blocking streams) reads stale x.
    x = torch.zeros(64, 4096, device="cuda")
    b = torch.randn(4096, device="cuda")
    new = torch.randn_like(x)
    torch.cuda.synchronize()
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        torch.cuda._sleep(50_000_000)
        x.copy_(new)
        y1 = fusedaot.rms_norm(x)
        y2 = fusedaot.bias_gelu(x, b)
    torch.cuda.synchronize()
    torch.testing.assert_close(y1, fusedaot.reference.rms_norm(new, None, 1e-6), **TOL)
    torch.testing.assert_close(y2, fusedaot.reference.bias_gelu(new, b, "none"), **TOL)


@pytest.mark.requires_cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_second_device():
    dev = torch.device("cuda", 1)
    fusedaot.load(dev)
    x = torch.randn(16, 3072, device=dev)
    with torch.cuda.device(0):  # the current device is not x's
        y = fusedaot.rms_norm(x)
    assert y.device == dev
    torch.testing.assert_close(y, fusedaot.reference.rms_norm(x, None, 1e-6), **TOL)
