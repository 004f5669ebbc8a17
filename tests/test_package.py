"""The installed package and the wheel: libraries, manifest, dependencies, no Triton.

CPU-only; this is what CI checks on the freshly installed wheel.
"""
from __future__ import annotations

import ctypes
import importlib.metadata
import json
import os
import pathlib
import re
import shutil
import struct
import subprocess
import sys
import zipfile

import pytest

import fusedaot
from conftest import ARCH_LIBRARIES, REPO

PKG = pathlib.Path(fusedaot.__file__).resolve().parent
FROM_SOURCE = PKG == (REPO / "python" / "fusedaot").resolve()
# The libraries may need only the C library itself; libcuda.so.1 is dlopened at run time.
ALLOWED_NEEDED = {"libc.so.6", "libdl.so.2", "libpthread.so.0", "libm.so.6"}

installed = pytest.mark.skipif(FROM_SOURCE, reason="fusedaot is imported from the source tree, not an installed wheel")


def _specs():
    sys.path.insert(0, str(REPO))  # aot/ is not installed; it lives at the repository root
    try:
        import aot.specs
    finally:
        sys.path.remove(str(REPO))
    return aot.specs


def _is_triton_requirement(req: str) -> bool:
    """A requirement on triton that applies without asking for an extra."""
    name = re.split(r"[\s;<>=!~\[(]", req.strip(), maxsplit=1)[0]
    return name.lower() == "triton" and not re.search(r"\bextra\s*==", req)


# --- a minimal ELF64 reader: DT_NEEDED entries and exported functions ---------------

def elf_dynamic(path: pathlib.Path) -> tuple[list[str], set[str]]:
    """(NEEDED libraries, defined global/weak FUNC symbols) of a little-endian ELF64 file."""
    data = path.read_bytes()
    assert data[:4] == b"\x7fELF", f"{path.name} is not an ELF file"
    assert data[4] == 2 and data[5] == 1, f"{path.name} is not a little-endian ELF64 file"
    shoff = struct.unpack_from("<Q", data, 0x28)[0]
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    # (name, type, flags, addr, offset, size, link, info, addralign, entsize)
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]

    def string(strtab_index: int, offset: int) -> str:
        start = sections[strtab_index][4] + offset
        return data[start:data.index(b"\0", start)].decode()

    needed, exported = [], set()
    for _, sh_type, _, _, off, size, link, _, _, _ in sections:
        if sh_type == 6:  # SHT_DYNAMIC: (d_tag, d_val) pairs, DT_NULL-terminated
            for i in range(size // 16):
                tag, val = struct.unpack_from("<qQ", data, off + 16 * i)
                if tag == 0:
                    break
                if tag == 1:  # DT_NEEDED
                    needed.append(string(link, val))
        elif sh_type == 11:  # SHT_DYNSYM; entry 0 is the null symbol
            for i in range(1, size // 24):
                name, info, _, shndx, _, _ = struct.unpack_from("<IBBHQQ", data, off + 24 * i)
                if shndx != 0 and info >> 4 in (1, 2) and info & 0xF == 2:  # GLOBAL|WEAK FUNC
                    exported.add(string(link, name))
    return needed, exported


# --- installed files ---------------------------------------------------------------

@pytest.fixture(scope="module")
def manifest():
    if FROM_SOURCE:
        pytest.skip("fusedaot is imported from the source tree, not an installed wheel")
    path = PKG / "manifest.json"
    assert path.is_file(), f"{path} is missing from the installed package"
    return json.loads(path.read_text())


@installed
@pytest.mark.parametrize("arch", ARCH_LIBRARIES)
def test_library_installed(arch):
    lib = PKG / f"libfusedaot_{arch}.so"
    assert lib.is_file(), f"{lib.name} is missing from {PKG}"
    assert lib.stat().st_size > 0


def test_ops_json_is_the_manifest_without_kernels(manifest):
    """What calls read at run time: the manifest less its kernel list, with each op's largest
    scratch need per arch; small enough to parse in well under a millisecond."""
    path = PKG / "ops.json"
    ops = json.loads(path.read_text())
    assert path.stat().st_size < 100_000, path.stat().st_size
    assert {k: v for k, v in manifest.items() if k not in ("kernels", "ops")} == \
        {k: v for k, v in ops.items() if k != "ops"}
    for name, info in manifest["ops"].items():
        assert {k: v for k, v in ops["ops"][name].items() if k != "global_scratch"} == info
        for arch, need in ops["ops"][name]["global_scratch"].items():
            assert need == max(k["global_scratch"] for k in manifest["kernels"]
                               if k["op"] == name and k["arch"] == arch)
    assert ops["ops"]["gated_mlp"]["global_scratch"]["sm90"] > 0  # the TMA kernels' descriptors


def test_manifest_top_level(manifest):
    assert manifest["version"] == fusedaot.__version__
    assert list(manifest["arches"]) == list(ARCH_LIBRARIES)
    assert manifest["libraries"] == {a: f"libfusedaot_{a}.so" for a in ARCH_LIBRARIES}
    assert set(manifest["min_driver"]) == set(ARCH_LIBRARIES)
    assert all(isinstance(v, int) and v >= 525 for v in manifest["min_driver"].values()), manifest["min_driver"]
    assert set(manifest["compilers"]) >= {"triton", "nvrtc"}


def test_manifest_matches_spec_table(manifest):
    specs = _specs()
    expected = {(op.name, v.name, arch) for op, v, arch in specs.enumerate_kernels()}
    got = [(k["op"], k["variant"], k["arch"]) for k in manifest["kernels"]]
    assert len(got) == len(set(got)), "manifest lists an image twice"
    missing, extra = expected - set(got), set(got) - expected
    assert not missing, f"{len(missing)} spec x arch images are not in the manifest, e.g. {sorted(missing)[:5]}"
    assert not extra, f"{len(extra)} manifest images are not in the spec table, e.g. {sorted(extra)[:5]}"
    caps = {(op.name, v.name): v.maxnreg for op, v, _ in specs.enumerate_kernels()}
    wrong = [(k["op"], k["variant"], k["arch"], k.get("maxnreg")) for k in manifest["kernels"]
             if k.get("maxnreg") != caps[(k["op"], k["variant"])]]
    assert not wrong, f"register caps that differ from the spec table: {wrong[:5]}"
    assert any(caps.values()), "no variant has a register cap (rms_norm_rope's per-head forward should)"


def test_every_image_is_nonempty(manifest):
    empty = [(k["op"], k["variant"], k["arch"]) for k in manifest["kernels"] if not k["image_bytes"] > 0]
    assert not empty, f"images with no bytes: {empty[:5]}"
    assert all(k["symbol"] for k in manifest["kernels"])


@pytest.mark.parametrize("arch", ARCH_LIBRARIES)
def test_images_are_stored_packed(manifest, arch):
    """The libraries hold their images in LZMA blocks: no cubin or PTX text appears whole in a
    library (its own ELF header is the only one), and the blocks are what the manifest says."""
    blocks = manifest["image_blocks"][arch]
    unique = {k["image"]: k["image_bytes"] for k in manifest["kernels"] if k["arch"] == arch}
    assert blocks["image_bytes"] == sum(unique.values()) and blocks["blocks"] > 0
    assert blocks["stored_bytes"] < blocks["image_bytes"] / 4, blocks  # measured: 5.6-11.4x smaller
    data = (PKG / f"libfusedaot_{arch}.so").read_bytes()
    assert blocks["stored_bytes"] < len(data) < blocks["stored_bytes"] + (2 << 20), (len(data), blocks)
    assert data.count(b"\x7fELF") == 1 and b".target sm_80" not in data


@pytest.mark.parametrize("arch", ARCH_LIBRARIES)
def test_images_target_their_arch(manifest, arch):
    """Each cubin is a CUDA ELF for its library's SM (e_flags' low byte: sm89's images are
    assembled from the sm80 compile's PTX, aot/compile.py, and must still be sm89 cubins); the
    PTX library's images are compute_80 PTX text."""
    from fusedaot import _lib
    images = list(_lib.library_for_arch(arch).images())
    assert images
    if arch == "ptx":
        bad = [i for i, image in enumerate(images)
               if image[:4] == b"\x7fELF" or not re.search(rb"^\s*\.target\s+sm_80\b", image, re.M)]
    else:
        sm = int(arch[2:])
        bad = [i for i, image in enumerate(images)   # ELFOSABI_CUDA, and the SM in e_flags
               if image[:4] != b"\x7fELF" or image[7] != 0x33 or struct.unpack_from("<I", image, 0x30)[0] & 0xFF != sm]
    assert not bad, f"{len(bad)} of the {arch} library's {len(images)} images are not built for {arch}, e.g. {bad[:5]}"


def test_images_unpack_through_the_c_abi(manifest):
    """fusedaot_image hands out each image byte for byte (the manifest's digests); no GPU."""
    import hashlib
    from fusedaot import _lib
    lib = _lib.library_for_arch("sm90")
    got = [hashlib.sha256(image).hexdigest()[:16] for image in lib.images()]
    assert set(got) == {k["image_sha256"] for k in manifest["kernels"] if k["arch"] == "sm90"}
    assert len(got) == len(set(got)) == lib._cdll.fusedaot_num_images()
    size = ctypes.c_size_t(0)
    assert lib._cdll.fusedaot_image(len(got), None, 0, ctypes.byref(size)) == 10008
    assert f"image {len(got)} does not exist (the sm90 library has {len(got)})" in str(lib.error(10008))


def test_manifest_ops_match_spec_params(manifest):
    specs = _specs()
    assert set(manifest["ops"]) == {op.name for op in specs.OPS}
    for op in specs.OPS:
        entry = manifest["ops"][op.name]
        assert [list(p) for p in entry["params"]] == [[p.name, p.ctype] for p in op.params], op.name
        assert set(entry["arches"]) == set(op.arches), op.name


def test_dist_metadata_does_not_require_triton():
    try:
        reqs = importlib.metadata.requires("fusedaot") or []
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("fusedaot has no installed distribution metadata (source tree)")
    assert not [r for r in reqs if _is_triton_requirement(r)], reqs
    assert importlib.metadata.version("fusedaot") == fusedaot.__version__


def test_package_sources_do_not_import_triton():
    offenders = []
    for path in sorted(PKG.rglob("*.py")):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if re.match(r"\s*(import\s+triton\b|from\s+triton\b)", line):
                offenders.append(f"{path.relative_to(PKG)}:{n}: {line.strip()}")
    assert not offenders, offenders


# --- libraries: NEEDED entries and exported ABI ---------------------------------------

@installed
@pytest.mark.parametrize("arch", ARCH_LIBRARIES)
def test_library_needs_only_libc(arch):
    needed, _ = elf_dynamic(PKG / f"libfusedaot_{arch}.so")
    extra = [n for n in needed if n not in ALLOWED_NEEDED and not n.startswith("ld-linux")]
    assert not extra, f"libfusedaot_{arch}.so needs {extra}; only libc-level libraries are allowed"


@installed
@pytest.mark.skipif(shutil.which("readelf") is None, reason="readelf not installed")
def test_elf_reader_agrees_with_readelf():
    lib = PKG / "libfusedaot_sm90.so"
    out = subprocess.run(["readelf", "-d", str(lib)], capture_output=True, text=True, check=True).stdout
    assert elf_dynamic(lib)[0] == re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", out)


@installed
def test_libraries_export_the_same_abi():
    specs = _specs()
    exports = {a: elf_dynamic(PKG / f"libfusedaot_{a}.so")[1] for a in ARCH_LIBRARIES}
    for arch, syms in exports.items():
        assert syms == exports["sm80"], f"libfusedaot_{arch}.so exports differ from sm80: {syms ^ exports['sm80']}"
    for op in specs.OPS:
        assert f"fusedaot_{op.name}" in exports["sm80"], f"no exported C function for {op.name}"


# --- import and `python -m fusedaot` where Triton cannot be imported ------------------

@pytest.fixture
def no_triton_env(tmp_path):
    """Environment whose `import triton` raises ImportError."""
    fake = tmp_path / "shadow" / "triton"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text('raise ImportError("triton is deliberately unavailable here")\n')
    env = dict(os.environ)
    # the shadow first, then the directory this process imported fusedaot from
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(fake.parent), str(PKG.parent), env.get("PYTHONPATH", "")]))
    env.pop("FUSEDAOT_DISABLE", None)
    return env


def _run(args, env, cwd):
    return subprocess.run([sys.executable, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=300)


def test_import_without_triton(no_triton_env, tmp_path):
    probe = _run(["-c", "import triton"], no_triton_env, tmp_path)
    assert probe.returncode != 0 and "deliberately unavailable" in probe.stderr, "the triton shadow does not work"
    code = ("import torch, fusedaot\n"
            "x = torch.randn(3, 8); w = torch.randn(8)\n"
            "assert fusedaot.rms_norm(x, w).shape == (3, 8)\n"
            "assert fusedaot.bias_gelu(x, w).shape == (3, 8)\n"
            "print(fusedaot.__file__)\n")
    r = _run(["-c", code], no_triton_env, tmp_path)
    assert r.returncode == 0, r.stderr
    assert pathlib.Path(r.stdout.strip()).resolve().parent == PKG, "the subprocess imported another fusedaot"


@installed
def test_python_m_fusedaot_without_triton(no_triton_env, tmp_path):
    import torch

    r = _run(["-m", "fusedaot"], no_triton_env, tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert fusedaot.__version__ in r.stdout
    assert torch.__version__.split("+")[0] in r.stdout
    for word in ("rms_norm", "bias_gelu", *ARCH_LIBRARIES):
        assert word in r.stdout, f"`python -m fusedaot` does not mention {word}:\n{r.stdout}"


# --- the wheel file, when the build left one ------------------------------------------

def _wheels():
    return sorted(p for d in ("dist", "wheelhouse") for p in (REPO / d).glob("fusedaot-*.whl"))


@pytest.mark.skipif(not _wheels(), reason="no wheel in dist/ or wheelhouse/")
@pytest.mark.parametrize("wheel", _wheels(), ids=lambda p: p.name)
def test_wheel(wheel):
    # name-version(-build)?-python-abi-platform.whl
    python_tag, abi_tag, platform_tag = wheel.stem.split("-")[-3:]
    assert (python_tag, abi_tag) == ("py3", "none"), wheel.name
    assert platform_tag.startswith(("manylinux", "linux")), wheel.name
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        for arch in ARCH_LIBRARIES:
            assert f"fusedaot/libfusedaot_{arch}.so" in names, f"{wheel.name} lacks libfusedaot_{arch}.so"
        assert {"fusedaot/manifest.json", "fusedaot/ops.json", "fusedaot/__init__.py",
                "fusedaot/reference/__init__.py"} <= names
        assert not [n for n in names if n.startswith(("triton/", "aot/", "tests/", "kernels/"))]
        meta = zf.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
        wheel_info = zf.read(next(n for n in names if n.endswith(".dist-info/WHEEL"))).decode()
    reqs = [line.split(":", 1)[1] for line in meta.splitlines() if line.startswith("Requires-Dist:")]
    assert not [r for r in reqs if _is_triton_requirement(r)], reqs
    assert any(r.strip().startswith("torch") for r in reqs), "torch must be a runtime requirement"
    assert f"Tag: py3-none-{platform_tag}" in wheel_info
