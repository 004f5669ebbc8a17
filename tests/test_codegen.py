"""The C generator on a small spec table of its own, compiled and run against the fake driver.

Independent of the installed wheel and of Triton: it generates the images, dispatch and
public header for two made-up ops (one of them not built for the arch), links them with the
runtime into a library, and checks the launches, the variant choice by alignment, and the
errors for a dtype without a variant and for an op the arch lacks.
"""
from __future__ import annotations

import pathlib
import struct
import subprocess
import sys
import textwrap

import pytest

from conftest import CC, REPO

sys.path.insert(0, str(REPO))
try:
    from aot import codegen, specs
finally:
    sys.path.remove(str(REPO))

PARAMS = (specs.Param("x", "ptr"), specs.Param("n", "i64"), specs.Param("alpha", "f32"))


def _variant(name, unaligned):
    return specs.Variant(name=name, dtype="fp32", kernel="_scale", when="dtype == 0",
                         grid=("fa_cdiv(n, 128)", "1", "1"), num_warps=4, aligned=("x",),
                         unaligned=unaligned)


SCALE = specs.Op("demo_scale", "triton", "none", PARAMS,
                 (_variant("demo_scale_fp32_a16", False), _variant("demo_scale_fp32_u", True)),
                 arches=("sm90",), doc="x *= alpha")
OTHER = specs.Op("demo_other", "triton", "none", PARAMS, (_variant("demo_other_fp32_u", True),),
                 arches=("sm80",), doc="built for sm80 only")


@pytest.fixture(scope="module")
def demo_library(tmp_path_factory) -> str:
    if CC is None:
        pytest.skip("no C compiler")
    d = tmp_path_factory.mktemp("gen")
    images, kernels = [], []
    for i, v in enumerate(SCALE.variants):
        sym = f"fa_image_{v.name}_sm90"
        codegen.write_image(d / f"{v.name}.c", sym, v.name.encode() + b"\0", v.name)
        images.append((sym, len(v.name) + 1))
        kernels.append({"op": SCALE, "variant": v, "image": i, "shared": 0,
                        "meta": {"symbol": "_scale", "num_warps": 4, "shared": 0, "args": ["x", "n", "alpha"]}})
    codegen.write_dispatch(d / "dispatch.c", "sm90", images, kernels, ops=(SCALE, OTHER))
    (d / "fusedaot.h").write_text(codegen.public_header(ops=(SCALE, OTHER)))
    out = d / "libdemo.so"
    sources = [str(REPO / "aot" / "runtime" / "fa_runtime.c"), str(d / "dispatch.c")] + \
              [str(d / f"{v.name}.c") for v in SCALE.variants]
    subprocess.run([CC, "-shared", "-fPIC", "-O1", "-Wall", "-Werror", "-Wno-unused-variable",
                    "-fvisibility=hidden", "-I", str(REPO / "aot" / "runtime"), "-I", str(d), "-o", str(out),
                    *sources, "-ldl", "-lpthread"], check=True)
    return str(out)


def test_generated_library(fake_driver, demo_library):
    aligned, misaligned = 0x7F0000100000, 0x7F0000100004
    params = lambda x: [list(struct.pack(f, v)) for f, v in  # noqa: E731
                        (("<Q", x), ("<q", 1000), ("<f", 2.5), ("<Q", 0), ("<Q", 0))]
    code = textwrap.dedent(f"""
        import ctypes
        fake = ctypes.CDLL({str(fake_driver)!r}, mode=ctypes.RTLD_GLOBAL)
        lib = ctypes.CDLL({demo_library!r})
        lib.fusedaot_last_error.restype = ctypes.c_char_p
        args = [ctypes.c_void_p, ctypes.c_int32, ctypes.c_int32, ctypes.c_void_p, ctypes.c_int64, ctypes.c_float]
        lib.fusedaot_demo_scale.argtypes = lib.fusedaot_demo_other.argtypes = args
        fake.fake_last_image.restype = ctypes.c_void_p

        class Launch(ctypes.Structure):
            _fields_ = [("symbol", ctypes.c_char * 128), ("grid", ctypes.c_uint * 3), ("block", ctypes.c_uint * 3),
                        ("shared", ctypes.c_uint), ("stream", ctypes.c_void_p), ("nparams", ctypes.c_int),
                        ("params", (ctypes.c_ubyte * 8) * 32)]
        fake.fake_last_launch.restype = ctypes.POINTER(Launch)
        error = lambda: lib.fusedaot_last_error().decode()

        for x, image, want in (({aligned}, b"demo_scale_fp32_a16", {params(aligned)!r}),
                               ({misaligned}, b"demo_scale_fp32_u", {params(misaligned)!r})):
            fake.fake_reset()
            fake.fake_expect(5, bytes([8, 8, 4, 8, 8]))
            assert lib.fusedaot_demo_scale(0x77, 0, 0, x, 1000, 2.5) == 0, error()
            last = fake.fake_last_launch().contents
            assert ctypes.string_at(fake.fake_last_image()) == image
            assert last.symbol == b"_scale" and list(last.grid) == [8, 1, 1] and list(last.block) == [128, 1, 1]
            assert [list(last.params[i])[:n] for i, n in enumerate([8, 8, 4, 8, 8])] == want
        assert lib.fusedaot_demo_scale(0x77, 0, 1, {aligned}, 1000, 2.5) == 10003
        assert "demo_scale has no sm90 kernel for dtype code 1" in error(), error()
        assert lib.fusedaot_demo_other(0x77, 0, 0, {aligned}, 1000, 2.5) == 10005
        assert "demo_other is not available on the sm90 library" in error(), error()
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_generated_files_name_their_generator(demo_library):
    gen = pathlib.Path(demo_library).parent
    for f in sorted(gen.glob("*.c")) + [gen / "fusedaot.h"]:
        assert f.read_text().startswith(f"/* Generated by {codegen.GENERATOR} from aot/specs.py"), f.name
