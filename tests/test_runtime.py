"""The C runtime and the generated dispatch, run against a fake CUDA driver (no GPU needed).

tests/fake_libcuda.c stands in for libcuda.so.1: it records each launch (function, grid,
block, shared memory, stream and the bytes of every kernel parameter) and can fail a module
load or report a capturing stream.  Each test runs in a fresh process that loads the fake
(its soname is libcuda.so.1, so the runtime's dlopen finds it) and then an installed
libfusedaot_<arch>.so through ctypes.  The expected variant, grid and parameters come from
the spec table and the manifest, so this checks the generated C against them: the variant
the dispatch picks, the launch geometry, and the C type of every argument (fp32 scalars as
4-byte floats, 64-bit strides).
"""
from __future__ import annotations

import json
import pathlib
import struct
import subprocess
import textwrap

import pytest

import fusedaot
from conftest import CC, run_with_fake
from test_specs import _condition, specs

PKG = pathlib.Path(fusedaot.__file__).resolve().parent
SMS = 132  # the fake device's multiprocessor count
ALIGNED, MISALIGNED, STREAM = 0x7F0000010000, 0x7F0000010002, 0x5000
pytestmark = pytest.mark.skipif(CC is None or not (PKG / "manifest.json").exists(),
                                reason="needs a C compiler and an installed fusedaot with its libraries")


def run(fake: pathlib.Path, arch: str, body: str) -> None:
    """Run `body` in a fresh process with `fake` as the driver and `lib` the arch's library,
    its functions typed from the manifest."""
    prelude = f"""
        manifest = json.load(open({str(PKG / 'manifest.json')!r}))
        lib.fusedaot_load.argtypes = [ctypes.c_void_p, ctypes.c_int32]
        C = {{"ptr": ctypes.c_void_p, "i32": ctypes.c_int32, "i64": ctypes.c_int64, "f32": ctypes.c_float}}
        for op, info in manifest["ops"].items():
            f = getattr(lib, "fusedaot_" + op)
            f.argtypes = [ctypes.c_void_p, ctypes.c_int32, ctypes.c_int32] + [C[t] for _, t in info["params"]]
    """
    run_with_fake(fake, str(PKG / f"libfusedaot_{arch}.so"), textwrap.dedent(prelude) + textwrap.dedent(body))


# --- what the dispatch should do, computed from the spec table ------------------------------

def _op(name):
    return next(op for op in specs.OPS if op.name == name)


def expected_launch(arch: str, op_name: str, args: dict) -> dict:
    op = _op(op_name)
    hits = [v for v in op.variants if arch in v.arches and eval(_condition(op, v), {}, dict(args))]
    assert len(hits) == 1, hits
    v = hits[0]
    k = next(k for k in json.load(open(PKG / "manifest.json"))["kernels"]
             if k["variant"] == v.name and k["arch"] == arch)
    ctypes_of = {p.name: p.ctype for p in op.params}
    params = []  # (struct format, value) in launch order
    for name in k["args"]:
        if name.startswith("tensor_map"):   # the fake driver writes a descriptor's address first
            ptr = v.tensor_maps[int(name.removeprefix("tensor_map"))].ptr
            params.append(("<Q", specs.launch_value(ptr, args, SMS)))
            continue
        fmt = {"ptr": "<Q", "i64": "<q", "i32": "<i", "f32": "<f"}[ctypes_of[name]]
        params.append((fmt, args[name]))
    if op.lang_of(v) == "triton":
        # global scratch (the caller's, where the kernel asks for some) and profile scratch (none)
        params += [("<Q", args["scratch"] if k["global_scratch"] else 0), ("<Q", 0)]
        block = [32 * k["num_warps"], 1, 1]
    else:
        block = [specs.launch_value(e, args, SMS) for e in v.block]
    return {"variant": v.name, "symbol": k["symbol"], "grid": [specs.launch_value(e, args, SMS) for e in v.grid],
            "block": block, "shared": k["shared"], "params": params, "image_sha256": k["image_sha256"]}


def call_source(op_name: str, args: dict, stream: int = STREAM, packed: bool = False) -> str:
    """Python source calling the op's C function, or with `packed` its _packed form on one
    buffer laid out by the manifest's struct format."""
    values = ", ".join(repr(args[p.name]) for p in _op(op_name).params)
    if packed:
        return (f"lib.fusedaot_{op_name}_packed(struct.pack(manifest['ops'][{op_name!r}]['packed'], "
                f"{stream}, 0, {args['dtype']}, {values}))")
    return f"lib.fusedaot_{op_name}({stream}, 0, {args['dtype']}, {values})"


# sm90: the TMA kernel, a persistent grid of SMS programs, scratch for each (other arches: no scratch)
GATED_MLP_TMA = ("gated_mlp", dict(dtype=2, x=ALIGNED, wg=ALIGNED + 0x100000, wu=ALIGNED + 0x200000,
                                   y=ALIGNED + 0x300000, stride_xm=4096, stride_wg=4096, stride_wu=4096,
                                   stride_ym=14336, M=2048, N=14336, K=4096, activation=0,
                                   scratch=ALIGNED + 0x400000, scratch_bytes=SMS * 512))
# sm90: the CUDA C++ kernel with two TMA descriptors, a persistent grid (sm89: a Triton tile)
FP8_GEMM_LARGE = ("fp8_gemm", dict(dtype=2, a=ALIGNED, b=ALIGNED + 0x1000000, c=ALIGNED + 0x2000000,
                                   a_scale=ALIGNED + 0x3000000, b_scale=ALIGNED + 0x3001000, bias=0,
                                   stride_am=8192, stride_bn=8192, stride_cm=8192, stride_sa=0, stride_sb=0,
                                   M=4096, N=8192, K=8192, has_bias=0, fast_accum=0,
                                   scratch=ALIGNED + 0x4000000, scratch_bytes=SMS * 512))
CASES = [
    ("rms_norm_fwd", dict(dtype=2, x=ALIGNED, y=ALIGNED + 0x100000, w=ALIGNED + 0x200000,
                          stride_x=4096, stride_y=4096, M=37, N=4096, eps=1e-6)),
    ("rms_norm_fwd", dict(dtype=0, x=MISALIGNED, y=ALIGNED, w=0, stride_x=1003, stride_y=1000,
                          M=5, N=1000, eps=0.25)),
    ("rms_norm_fwd", dict(dtype=1, x=ALIGNED, y=ALIGNED, w=ALIGNED, stride_x=131072, stride_y=131072,
                          M=3, N=131072, eps=1e-5)),
    ("rms_norm_bwd", dict(dtype=2, dy=ALIGNED, x=ALIGNED, w=ALIGNED, dx=ALIGNED, dw_partial=ALIGNED + 64,
                          dw=ALIGNED + 128, stride_dy=3072, stride_x=3072, stride_dx=3072, M=1000, N=3072,
                          eps=1e-6, G=125)),
    ("rms_norm_dw", dict(dtype=2, dw_partial=ALIGNED, dw=ALIGNED, G=125, N=3072)),
    ("rms_norm_bwd_stats", dict(dtype=0, dy=ALIGNED, x=ALIGNED, w=0, stats=ALIGNED, stride_dy=65536,
                                stride_x=65536, M=3, N=65536, eps=1e-6)),
    ("rms_norm_bwd_wide", dict(dtype=1, dy=ALIGNED, x=MISALIGNED, w=ALIGNED, dx=ALIGNED, dw_partial=ALIGNED,
                               dw=ALIGNED, dres=ALIGNED, stats=ALIGNED, stride_dy=65537, stride_x=65537,
                               stride_dx=65537, stride_dres=65537, M=300, N=65537, eps=1e-6, G=33)),
    ("fused_add_rms_norm_fwd", dict(dtype=1, x=ALIGNED, r=MISALIGNED, w=ALIGNED, y=ALIGNED, s=ALIGNED,
                                    stride_x=4096, stride_r=4097, stride_y=4096, stride_s=4096, M=64, N=4096,
                                    eps=1e-5)),
    ("fused_add_rms_norm_bwd", dict(dtype=2, dy=ALIGNED, x=ALIGNED, w=ALIGNED, dx=ALIGNED, dw_partial=ALIGNED,
                                    dw=ALIGNED, dres=ALIGNED, stride_dy=65536, stride_x=65536, stride_dx=65536,
                                    stride_dres=65536, M=8, N=65536, eps=1e-6, G=8)),
    ("bias_gelu_fwd", dict(dtype=2, x=ALIGNED, bias=ALIGNED, y=ALIGNED, stride_x=4096, M=4096, N=4096,
                           approximate=1)),
    ("bias_gelu_fwd", dict(dtype=1, x=ALIGNED, bias=ALIGNED, y=ALIGNED, stride_x=4097, M=2, N=4097,
                           approximate=0)),
    ("bias_gelu_bwd", dict(dtype=0, dy=ALIGNED, x=ALIGNED, bias=ALIGNED, dx=ALIGNED, dbias=0,
                           dbias_partial=ALIGNED, stride_dy=1024, stride_x=1024, M=300, N=1024, approximate=0, G=17)),
    ("fp8_quantize_row", dict(dtype=2, x=ALIGNED, q=ALIGNED + 0x100000, scale=ALIGNED + 0x200000,
                              stride_x=8192, stride_q=8192, M=4096, N=8192)),
    ("gated_mlp", dict(dtype=1, x=ALIGNED, wg=ALIGNED + 0x100000, wu=MISALIGNED, y=ALIGNED, stride_xm=4096,
                       stride_wg=4096, stride_wu=4096, stride_ym=14336, M=2048, N=14336, K=4096, activation=2,
                       scratch=0, scratch_bytes=0)),
    GATED_MLP_TMA,
    FP8_GEMM_LARGE,
    ("swiglu_fwd", dict(dtype=2, gate=ALIGNED, up=ALIGNED + 0x100000, out=ALIGNED + 0x200000,
                        stride_gate=11008, stride_up=11008, M=2048, N=11008)),
    ("geglu_bwd", dict(dtype=1, dy=ALIGNED, gate=ALIGNED, up=ALIGNED + 2 * 4097, dgate=ALIGNED + 0x100000,
                       dup=ALIGNED + 0x100000 + 2 * 4097, stride_dy=4097, stride_gate=8194, stride_up=8194,
                       stride_dx=8194, M=3, N=4097, approximate=1)),
    ("rope", dict(dtype=2, q=ALIGNED, k=ALIGNED + 0x100000, cos=ALIGNED + 0x200000, sin=ALIGNED + 0x300000,
                  pos=ALIGNED + 0x400000, q_out=ALIGNED + 0x500000, k_out=ALIGNED + 0x600000, stride_qb=0,
                  stride_qs=6144, stride_qh=128, stride_kb=0, stride_ks=6144, stride_kh=128, stride_oqb=0,
                  stride_oqs=4096, stride_oqh=128, stride_okb=0, stride_oks=1024, stride_okh=128, stride_cb=0,
                  stride_cs=128, stride_pb=0, M=2048, S=2048, Hq=32, Hk=8, N=64, D=128, P=4096, flags=5)),
    ("rms_norm_rope_fwd_interleaved", dict(dtype=1, x=MISALIGNED, w=ALIGNED, cos=ALIGNED, sin=ALIGNED, pos=0,
                                           y=ALIGNED, stride_xb=0, stride_xs=720, stride_yb=0, stride_ys=720,
                                           stride_wh=0, stride_cb=0, stride_cs=40, stride_pb=0, M=7, S=7, H=9,
                                           N=80, pairs=20, P=7, eps=1e-6, per_head=1, flags=2)),
    ("rms_norm_rope_bwd", dict(dtype=2, dy=ALIGNED, x=ALIGNED, w=ALIGNED, cos=ALIGNED, sin=ALIGNED, pos=ALIGNED,
                               dx=ALIGNED, dw_partial=ALIGNED, dw=0, stride_dyb=0, stride_dys=4096, stride_xb=0,
                               stride_xs=4096, stride_dxb=0, stride_dxs=4096, stride_wh=128, stride_cb=0,
                               stride_cs=128, stride_pb=0, M=4096, S=4096, H=32, N=128, pairs=64, P=8192,
                               eps=1e-5, per_head=0, flags=1, G=528, C=1, W=4096)),
    ("rms_norm_rope_bwd", dict(dtype=0, dy=ALIGNED, x=ALIGNED, w=ALIGNED, cos=ALIGNED, sin=ALIGNED, pos=0,
                               dx=ALIGNED, dw_partial=ALIGNED, dw=ALIGNED + 0x100000, stride_dyb=0, stride_dys=0,
                               stride_xb=0, stride_xs=0, stride_dxb=0, stride_dxs=0, stride_wh=0, stride_cb=0,
                               stride_cs=128, stride_pb=0, M=1, S=1, H=32, N=128, pairs=64, P=1,
                               eps=1e-6, per_head=1, flags=0, G=1, C=32, W=128)),
    ("rms_norm_rope_dw", dict(dtype=2, dw_partial=ALIGNED, dw=ALIGNED, G=528, W=4096)),
    ("gelu_dropout_fwd", dict(dtype=0, x=MISALIGNED, y=ALIGNED, rng=0, n=4097, seed=-5, counter=(1 << 40) + 7,
                              threshold=1 << 31, scale_bits=0x4000000000000000, dropout=1)),
    ("reduce_cols", dict(dtype=3, x=ALIGNED, out=ALIGNED, partial=ALIGNED + 0x100000, stride_o=0, stride_r=4096,
                         M=1, R=4096, N=4096, S=32, chunk=128, L=16, kind=1)),
    ("layer_norm_fwd", dict(dtype=2, x=ALIGNED, y=ALIGNED, w=ALIGNED, b=0, stride_x=4096, stride_y=4096, M=37,
                            N=4096, eps=1e-5, flags=1 | 4 | 8)),
    ("layer_norm_bwd_dx", dict(dtype=1, dy=ALIGNED, x=MISALIGNED, w=ALIGNED, b=ALIGNED, stats=ALIGNED, dx=ALIGNED,
                               dwb_partial=ALIGNED, dw=ALIGNED, db=ALIGNED, stride_dy=65537, stride_x=65537,
                               stride_dx=65537, M=300, N=65537, flags=3, G=9)),
    ("ada_layer_norm_bwd", dict(dtype=2, dy=ALIGNED, x=ALIGNED, scale=ALIGNED, dx=ALIGNED, dscale=0, dshift=0,
                                partial=ALIGNED, stride_dy=6144, stride_x=6144, stride_sb=12288, stride_ss=0,
                                M=4096, N=6144, S=2048, R=2048, eps=1e-6, flags=1, J=132)),
]


@pytest.mark.parametrize("arch", specs.ARCHES)
def test_dispatch_launches_the_selected_variant(fake_driver, arch):
    checks = []
    for (op_name, args), packed in [(case, False) for case in CASES] + [(case, True) for case in CASES]:
        if arch not in _op(op_name).arches:
            continue
        want = expected_launch(arch, op_name, args)
        widths = bytes(8 if fmt in ("<Q", "<q") else 4 for fmt, _ in want["params"])
        expected_bytes = [list(struct.pack(fmt, val)) for fmt, val in want["params"]]
        checks.append(f"""
            fake.fake_reset()
            fake.fake_expect({len(widths)}, {widths!r})
            rc = {call_source(op_name, args, packed=packed)}
            assert rc == 0, ({want['variant']!r}, rc, error())
            last = fake.fake_last_launch().contents
            assert fake.fake_launches() == 1
            assert last.symbol.decode() == {want['symbol']!r}, last.symbol
            assert list(last.grid) == {want['grid']!r}, ({want['variant']!r}, list(last.grid))
            assert list(last.block) == {want['block']!r}, ({want['variant']!r}, list(last.block))
            assert last.shared == {want['shared']!r} and last.stream == {STREAM}
            # past 48 KiB of static + dynamic shared memory a kernel needs the opt-in
            optin = {want['shared']!r} if {want['shared']!r} + fake.fake_static_smem() > 48 * 1024 else 0
            assert fake.fake_dynamic_smem_optin(last.symbol) == optin, ({want['variant']!r}, optin)
            got = [list(last.params[i])[:n] for i, n in enumerate({list(widths)!r})]
            assert got == {expected_bytes!r}, ({want['variant']!r}, got)
            if fake.fake_loads():  # the image it unpacked and loaded is the variant's, byte for byte
                assert image_digest(fake.fake_last_image()) == {want['image_sha256']!r}, {want['variant']!r}
        """)
    run(fake_driver, arch, "".join(textwrap.dedent(c) for c in checks))


def test_tma_descriptors_describe_the_operands(fake_driver):
    """sm90's CUDA C++ fp8_gemm kernel reads a and b through TMA descriptors the dispatch encodes
    for each call: a as K x M bytes in 128 x 128 boxes, b as K x N in 128 x 256, rows a stride
    apart, the 128-byte swizzle (3).  An empty operand gets a descriptor of one row (the driver
    refuses a zero dimension) and no launch.  A descriptor the driver refuses is an error
    naming it, and nothing is launched."""
    _, args = FP8_GEMM_LARGE
    empty = dict(args, N=0)
    run(fake_driver, "sm90", f"""
        fake.fake_reset()
        assert {call_source("fp8_gemm", args)} == 0, error()
        assert fake.fake_tensor_maps() == 2 and fake.fake_launches() == 1
        a, b = list(fake.fake_tensor_map(1).contents)[:7], list(fake.fake_tensor_map(0).contents)[:7]
        assert a == [{args['a']}, 8192, 4096, 8192, 128, 128, 3], a
        assert b == [{args['b']}, 8192, 8192, 8192, 128, 256, 3], b
        fake.fake_reset()
        assert {call_source("fp8_gemm", empty)} == 0, error()
        assert fake.fake_tensor_maps() == 2 and fake.fake_launches() == 0
        assert list(fake.fake_tensor_map(0).contents)[1:3] == [8192, 1]
        fake.fake_reset()
        fake.fake_fail_tensor_map(1)
        assert {call_source("fp8_gemm", args)} != 0
        assert "cuTensorMapEncodeTiled (a TMA descriptor) failed" in error(), error()
        assert fake.fake_launches() == 0
    """)


def test_scratch_too_small_or_misaligned_is_refused(fake_driver):
    """The sm90 TMA kernel writes its descriptors into the caller's scratch memory: less than a
    program's share for each program, or a misaligned buffer, is an error before any launch."""
    name, args = GATED_MLP_TMA
    short = dict(args, scratch_bytes=SMS * 512 - 1)
    misaligned = dict(args, scratch=ALIGNED + 0x400000 + 64)
    tiles = dict(args, M=128, N=256, scratch_bytes=2 * 512)   # 2 tiles: 2 programs, 2 shares
    run(fake_driver, "sm90", f"""
        for call in ({call_source(name, short)!r}, {call_source(name, misaligned)!r}):
            fake.fake_reset()
            rc = eval(call)
            assert rc == 10007 and fake.fake_launches() == 0, (rc, error())
            assert "gated_mlp needs {SMS * 512} bytes of scratch memory, 128-byte aligned" in error(), error()
        fake.fake_reset()
        assert {call_source(name, tiles)} == 0, error()
        assert list(fake.fake_last_launch().contents.grid) == [2, 1, 1]
    """)


def test_capture_refused_until_loaded(fake_driver):
    args = CASES[0][1]
    run(fake_driver, "sm90", f"""
        fake.fake_set(0, 0xCAFE, 0)
        rc = {call_source('rms_norm_fwd', args, stream=0xCAFE)}
        assert rc == 10004 and "call fusedaot.load() before capture" in error(), (rc, error())
        assert fake.fake_launches() == 0 and fake.fake_loads() == 0
        assert lib.fusedaot_load(0, 0) == 0, error()
        assert fake.fake_loads() == len({{k["image"] for k in manifest["kernels"] if k["arch"] == "sm90"}})
        rc = {call_source('rms_norm_fwd', args, stream=0xCAFE)}
        assert rc == 0 and fake.fake_launches() == 1, (rc, error())
    """)


def test_driver_error_reaches_the_caller(fake_driver):
    run(fake_driver, "sm90", f"""
        fake.fake_set(1, 0, 0)
        rc = {call_source(*CASES[0])}
        assert rc == 209, rc
        msg = error()
        assert "no kernel image is available" in msg and "CUDA_ERROR_NO_BINARY_FOR_GPU" in msg, msg
        assert "cuModuleLoadData" in msg and "rms_norm_fwd_bf16" in msg, msg
    """)


def test_device_context_pushed_and_popped(fake_driver):
    run(fake_driver, "sm90", f"""
        fake.fake_set(0, 0, 0)            # no current context: the device's is pushed, then popped
        assert {call_source(*CASES[0])} == 0, error()
        assert fake.fake_pushes() == fake.fake_pops() >= 1
        fake.fake_reset()
        fake.fake_set(0, 0, 0xC0C0)       # already current: left alone
        assert {call_source(*CASES[0])} == 0, error()
        assert fake.fake_pushes() == fake.fake_pops() == 0
    """)


def test_empty_inputs_and_bad_device(fake_driver):
    empty = dict(CASES[0][1], M=0)
    run(fake_driver, "sm90", f"""
        assert {call_source('rms_norm_fwd', empty)} == 0, error()
        assert fake.fake_launches() == 0
        rc = lib.fusedaot_rms_norm_fwd({STREAM}, 3, 2, 0, 0, 0, 1, 1, 1, 1, 1e-6)
        assert rc == 10002 and "CUDA device 3 does not exist (1 visible)" in error(), (rc, error())
    """)


def test_concurrent_loads_load_each_image_once(fake_driver):
    """fusedaot_load from several threads at once, each unpacking blocks on threads of its own,
    while other threads make first calls: every image is loaded exactly once, byte for byte."""
    run(fake_driver, "sm90", f"""
        import threading
        rcs, start = [], threading.Barrier(6)
        def load():
            start.wait()
            rcs.append(lib.fusedaot_load(0, 0))
        def first_call():
            start.wait()
            rcs.append({call_source(*CASES[0])})
        threads = [threading.Thread(target=f) for f in (load, load, load, load, first_call, first_call)]
        [t.start() for t in threads]; [t.join() for t in threads]
        assert rcs == [0] * 6, (rcs, error())
        digests = [image_digest(fake.fake_image(i)) for i in range(fake.fake_loads())]
        assert len(digests) == len(set(digests)) == len({{k["image_sha256"] for k in manifest["kernels"]
                                                           if k["arch"] == "sm90"}}), len(digests)
    """)


@pytest.mark.parametrize("arch", specs.ARCHES)
def test_every_image_targets_its_arch(fake_driver, arch):
    """fusedaot_load loads every image once, unpacked byte for byte as the build compiled it
    (the manifest's digests); each is a cubin for exactly this arch (ELF e_flags carry the SM
    version; sm90's are sm_90a), or for the PTX library, sm_80 PTX of an ISA version no newer
    than the manifest's driver floor allows."""
    cc = {"sm80": 80, "sm89": 89, "sm90": 90}.get(arch)
    run(fake_driver, arch, f"""
        assert lib.fusedaot_load(0, 0) == 0, error()
        n = fake.fake_loads()
        digests = {{k["image_sha256"] for k in manifest["kernels"] if k["arch"] == {arch!r}}}
        assert n == len({{k["image"] for k in manifest["kernels"] if k["arch"] == {arch!r}}}) == len(digests), n
        assert {{image_digest(fake.fake_image(i)) for i in range(n)}} == digests
        for i in range(n):
            head = ctypes.string_at(fake.fake_image(i), 64)
            if {cc!r}:
                machine, = struct.unpack_from("<H", head, 0x12)
                flags, = struct.unpack_from("<I", head, 0x30)
                assert head[:4] == b"\\x7fELF" and machine == 190, (i, head[:20])
                assert flags & 0xFF == {cc!r}, (i, hex(flags))
            else:
                text = ctypes.string_at(fake.fake_image(i)).decode()
                assert ".target sm_80" in text and ".version 8.7" in text, text[:300]
        assert manifest["min_driver"][{arch!r}] == (570 if {arch == 'ptx'!r} else 525)
    """)


def test_public_header_declares_the_c_abi(tmp_path):
    """fusedaot.h, installed beside the libraries, declares every op with the manifest's C types:
    a C file assigning each function to a pointer of the expected type compiles cleanly."""
    header = PKG / "fusedaot.h"
    assert header.exists(), "fusedaot.h is not installed"
    ctype = {"ptr": "void*", "i32": "int32_t", "i64": "int64_t", "f32": "float"}
    lines = ['#include "fusedaot.h"']
    for op, info in json.load(open(PKG / "manifest.json"))["ops"].items():
        params = ", ".join(["void*", "int32_t", "int32_t"] + [ctype[t] for _, t in info["params"]])
        lines.append(f"int (*check_{op})({params}) = fusedaot_{op};")
        lines.append(f"int (*check_{op}_packed)(const unsigned char*) = fusedaot_{op}_packed;")
    lines += ["const char* (*check_error)(void) = fusedaot_last_error;",
              "int (*check_load)(void*, int32_t) = fusedaot_load;"]
    src = tmp_path / "abi.c"
    src.write_text("\n".join(lines) + "\n")
    proc = subprocess.run([CC, "-fsyntax-only", "-Wall", "-Werror", "-I", str(PKG), str(src)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
