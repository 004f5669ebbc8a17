"""What the build made of fp8_gemm: the sm90 cubins' SASS (QGMMA: FP8 wgmma) and the GEMM
family's dispatch over M, with fp8_gemm's promoted and fast-accumulation variants (no GPU
needed).  (tests/test_fp8_gemm.py: the op itself.)
"""
from __future__ import annotations

import itertools
import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

from test_fp8_gemm import PKG

# --- SASS: the sm90 kernels run on FP8 wgmma -----------------------------------------------------------

def find_tool(name: str):
    """cuobjdump / nvdisasm: on PATH, in a CUDA toolkit, or in Triton's package (not imported)."""
    found = shutil.which(name)
    if found:
        return found
    roots = [pathlib.Path(p) / "triton" / "backends" / "nvidia" / "bin" for p in sys.path if p]
    roots += [pathlib.Path(os.environ.get("CUDA_HOME", "/usr/local/cuda")) / "bin"]
    for root in roots:
        if (root / name).is_file():
            return str(root / name)
    return None


def sm90_sass(kernel: str, tmp_path) -> list[str]:
    """The SASS of every cubin in the installed libfusedaot_sm90.so that holds `kernel` (at
    least one, or the test fails); skips without the library or cuobjdump.  No GPU needed."""
    library = PKG / "libfusedaot_sm90.so"
    if not library.exists():
        pytest.skip("libfusedaot_sm90.so is not installed")
    from fusedaot import _lib
    tool = find_tool("cuobjdump")
    if tool is None:
        pytest.skip("cuobjdump is not available")
    texts = []
    for i, image in enumerate(_lib.library_for_arch("sm90").images()):
        if f".text.{kernel}\0".encode() not in image:
            continue
        path = tmp_path / f"{kernel}_{i}.cubin"
        path.write_bytes(image)
        proc = subprocess.run([tool, "-sass", str(path)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        texts.append(proc.stdout)
    assert texts, f"no {kernel} cubin found in {library.name}"
    return texts


def test_sm90_sass_uses_fp8_wgmma(tmp_path):
    for text in sm90_sass("_fp8_gemm", tmp_path):
        assert re.search(r"\bQGMMA\.\d+x\d+x\d+\.F32\.E4M3\.E4M3", text), "an sm90 fp8_gemm kernel without QGMMA"


@pytest.mark.parametrize("kernel", ["_fp8_gemm_tma", "fp8_gemm_sm90_bf16"])
def test_sm90_tma_kernels_copy_with_tma(kernel, tmp_path):
    """Both TMA kernels load a and b with TMA (UTMALDG), the Triton one stores c with it too
    (UTMASTG; the CUDA C++ kernel stores from registers), and both are warp-specialised: their
    producer hands registers to the consumer warp groups (USETMAXREG)."""
    for text in sm90_sass(kernel, tmp_path):
        assert "UTMALDG" in text, f"the sm90 {kernel} kernel without TMA copies"
        assert ("UTMASTG" in text) == kernel.startswith("_"), f"{kernel}: TMA stores"
        assert "USETMAXREG" in text, f"{kernel}: warp specialisation"


QGMMA = re.compile(r"\bQGMMA\.\S+ (R\d+), gdesc\[\w+\], (R\w+)")


def serialised_wgmmas(sass: str) -> int:
    """How many QGMMAs that add into the previous one's accumulator wait for it first (a
    WARPGROUP.DEPBAR between them): ptxas's serialisation of a chain."""
    count, last_dest, waited = 0, None, False
    for line in sass.splitlines():
        m = QGMMA.search(line)
        if m:
            dest, acc = m.groups()
            count += dest == acc == last_dest and waited
            last_dest, waited = dest, False
        elif "WARPGROUP.DEPBAR" in line:
            waited = True
    return count


def test_sm90_wgmma_chains_are_not_serialised(tmp_path):
    """Promotion folds each chain into fp32 after a wait for the whole chain, not after each
    wgmma (aot/ptx.py: ptxas serialised them, 15-20% of the promoted kernels' throughput)."""
    for kernel in ("_fp8_gemm", "_fp8_gemm_tma", "fp8_gemm_sm90_bf16"):
        for text in sm90_sass(kernel, tmp_path):
            assert text.count("QGMMA") and serialised_wgmmas(text) == 0, f"an sm90 {kernel} kernel waits after each wgmma"


def test_serialised_wgmmas_counts_waits_inside_a_chain():
    chain = ["QGMMA.64x128x32.F32.E4M3.E4M3 R52, gdesc[UR12], RZ, !UPT ;",
             "QGMMA.64x128x32.F32.E4M3.E4M3 R52, gdesc[UR16], R52, gsb0 ;"]
    wait = "WARPGROUP.DEPBAR.LE gsb0, 0x0 ;"
    assert serialised_wgmmas("\n".join([chain[0], wait, chain[1], wait])) == 1
    assert serialised_wgmmas("\n".join([chain[0], chain[1], wait, "FADD R1, R52, R1 ;", chain[0], chain[1]])) == 0


def test_sm90_tma_variants_are_warp_specialised():
    """The manifest's record of the Triton TMA variants (fast accumulation only: the promoted
    calls take the CUDA C++ kernel): 12 warps launched for the 4 asked for (a producer and two
    consumer warp groups), scratch within what the C header promises, sm90 only."""
    from fusedaot import _lib
    from test_specs import specs
    kernels = [k for k in _lib.manifest()["kernels"] if k["op"] == "fp8_gemm" and k["variant"].endswith("_tma")]
    if not kernels:
        pytest.skip("no sm90 library in this build")
    assert {k["arch"] for k in kernels} == {"sm90"}
    assert len(kernels) == len(specs.fp8_gemm.TMA_DTYPES)   # one per dtype
    for k in kernels:
        assert k["num_warps"] == 12 and 0 < k["global_scratch"] <= specs.fp8_gemm.FP8_GEMM_SCRATCH, k


# --- the GEMM family's dispatch over M (tests/test_specs.py holds M at 64) -----------------------

def test_gemm_shape_classes_cover_every_m_exactly_once():
    from test_specs import _condition, specs
    names = ("fp8_gemm", "gated_mlp", "attention_scores")
    ops = [op for op in specs.OPS if op.name in names]
    assert len(ops) == 3
    for op in ops:
        pointers = [p.name for p in op.params if p.ctype == "ptr"]
        for arch in op.arches:
            variants = [(v.name, compile(_condition(op, v), v.name, "eval")) for v in op.variants if arch in v.arches]
            for dtype in (specs.DTYPES[d] for d in op.dtypes):
                for m in (0, 1, 16, 63, 64, 65, 1000, 1024, 1025, 100000):
                    for (k, pad, ptr), fast, bias, scales in itertools.product(
                            ((4096, 0, 0x7F0000001000), (4097, 0, 0x7F0000001000), (4096, 3, 0x7F0000001000),
                             (4096, 0, 0x7F0000001008)), (0, 1), (0, 1), ((0, 0), (0, 1), (1, 0), (1, 1))):
                        args = dict(dtype=dtype, M=m, N=4096, K=k, fast_accum=fast, has_bias=bias,
                                    **{p: ptr for p in pointers})
                        args.update({p.name: k + pad for p in op.params if p.name.startswith("stride_")})
                        args.update(stride_sa=scales[0], stride_sb=scales[1])
                        hits = [name for name, code in variants if eval(code, {}, dict(args))]
                        assert len(hits) == 1, (op.name, arch, args, hits)


def test_sm90_has_promoted_and_fast_variants():
    """On sm90 every (dtype, shape class, bias or not) of an aligned call has a promoted variant
    for fast_accum == 0 (ACC_PROMOTE set, or for the rows of TMA_ROWS in bf16/fp16 the CUDA C++
    kernel, which always promotes) and one for fast_accum != 0: ACC_PROMOTE None with the
    tuning table's fp8_gemm_fast tile, or for those rows _fp8_gemm_tma's FAST tile with one
    scale per operand and no bias, else the CUDA C++ kernel again.  sm89 and the unaligned
    fallbacks select the same variant either way."""
    from test_specs import _condition, specs
    fam = specs.fp8_gemm
    op = next(op for op in specs.OPS if op.name == "fp8_gemm")
    assert op.param("fast_accum").ctype == "i32"
    pointers = [p.name for p in op.params if p.ctype == "ptr"]
    fast_configs = fam.gemm_configs("sm90", "fp8_gemm_fast", fam.FP8_GEMM_SM90_FAST)
    for arch in op.arches:
        variants = [(v, compile(_condition(op, v), v.name, "eval")) for v in op.variants if arch in v.arches]
        for dtype, (cls, m), n, k, bias, scale_stride in itertools.product(
                op.dtypes, (("small", 16), ("medium", 512), ("large", 4096)), (4096, 8192), (8192, 8193), (0, 1),
                (0, 1)):
            args = dict(dtype=specs.DTYPES[dtype], M=m, N=n, K=k, has_bias=bias,
                        **{p: 0x7F0000001000 for p in pointers})
            args.update({p.name: k for p in op.params if p.name.startswith("stride_")})
            args.update(stride_sa=scale_stride, stride_sb=scale_stride)
            picked = {}
            for flag in (0, 1, 7):
                hits = [v for v, code in variants if eval(code, {}, dict(args, fast_accum=flag))]
                assert len(hits) == 1, (arch, dtype, cls, k, flag, [v.name for v in hits])
                picked[flag] = hits[0]
            assert picked[1] is picked[7], (arch, dtype, cls)
            promoted, fast = picked[0], picked[1]
            if arch == "sm90" and k == 8192:
                rows = eval(specs.python_condition(fam.TMA_ROWS), {}, dict(M=m, N=n, K=k))
                tma = rows and cls in fam.FP8_GEMM_SM90_CUDA and dtype in fam.TMA_DTYPES
                one_scale = bias == scale_stride == 0
                assert "fast_accum == 0" in promoted.when and "fast_accum != 0" in fast.when
                cuda = [v for v, on in ((promoted, tma), (fast, tma and not one_scale)) if on]
                for v in cuda:   # the CUDA C++ kernel, which always promotes
                    assert v.kernel == f"fp8_gemm_sm90_{dtype}" and v.source and not v.constexprs, v.name
                    assert v.tensor_maps == fam.FP8_GEMM_SM90_CUDA_MAPS and v.name.endswith("_cuda"), v.name
                if not tma:
                    assert promoted.kernel == "_fp8_gemm" and promoted.constexprs["ACC_PROMOTE"], promoted.name
                if fast not in cuda:
                    kernel = "_fp8_gemm_tma" if tma else "_fp8_gemm"
                    assert fast.kernel == kernel and fast.constexprs["ACC_PROMOTE"] is None, fast.name
                    assert fast.name.endswith(("_fast", "_fast_tma")), fast.name
                    want = fam.FP8_GEMM_SM90_TMA_FAST[cls] if tma else fast_configs[cls]
                    c = fast.constexprs
                    assert (c["BLOCK_M"], c["BLOCK_N"], c["BLOCK_K"], c["GROUP_M"], fast.num_warps,
                            fast.num_stages) == want[:6], (fast.name, want)
            else:
                assert promoted is fast and "fast_accum" not in promoted.when, (arch, promoted.name)


def test_fast_configs_must_not_promote():
    from test_specs import specs
    fam = specs.fp8_gemm
    with pytest.raises(ValueError, match=r"fp8_gemm: fast-accumulation config \(64, 64, 64, 8, 4, 2, 128\) for "
                                         r"sm90 must end with ACC_PROMOTE 0"):
        fam.gemm_variants("fp8_gemm", "_fp8_gemm", ("bf16",), {"sm90": fam.FP8_GEMM_SM90}, fam.FP8_GEMM_FALLBACK,
                          (), "1", promote=True, fast_by_arch={"sm90": {"small": (64, 64, 64, 8, 4, 2, 128)}})
