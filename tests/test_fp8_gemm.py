"""fusedaot.fp8_gemm and fusedaot.nn.FP8Linear: float64 references on the same FP8 inputs,
torch._scaled_mm on identical inputs and scales, the error against a bf16 GEMM, shapes that
are not multiples of a tile (1, 17, 4097), empty ones, layouts, scale layouts, bias, errors
(by message, including FP8 on a library without FP8), opcheck, torch.compile, CUDA graphs,
and FP8Linear.  use_fast_accum: tests/test_fp8_gemm_fast_accum.py; the shipped kernels' SASS
and the dispatch over M: tests/test_fp8_gemm_build.py.

    out = (a @ b^T) * a_scale[m] * b_scale[n] (+ bias[n])
"""
from __future__ import annotations

import pathlib
import re

import pytest
import torch
import torch.nn.functional as F

import fusedaot
import fusedaot.nn
import fusedaot.reference as R
from conftest import (assert_close, assert_written, compile_backends, fp8_library_available, make_tensor,
                      on_foreign_device, poison, run_with_fake, skip_unless_scaled_mm)

FP8 = torch.float8_e4m3fn
OUT_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.requires_cuda)]
PKG = pathlib.Path(fusedaot.__file__).resolve().parent

# |got - ref| <= out*|ref| + comp*mag + floor, ref the float64 product of the same FP8 values
# and scales, mag = (|a| @ |b|^T) * a_scale * b_scale + |bias| (conftest.assert_close).
# out:   one rounding of the fp32 result into the output dtype: 2^-8 bf16, 2^-11 fp16, 2^-24 fp32.
# comp:  the products of two e4m3 values are exact in fp32; the error is in the sums.  sm90's
#        FP8 tensor cores keep about 14 significant bits within one chain of wgmmas, which the
#        kernel adds into the fp32 accumulator every 128 products (ACC_PROMOTE): at most
#        128 * 2^-13 = 2^-6 of a chunk's absolute sum in the worst case, sqrt(128) * 2^-13 ~ 2^-9.5
#        for independent roundings; the fp32 sums across chunks add K * 2^-24 <= 2^-11 for
#        K <= 8192.  2^-9 bounds the realistic case with room (a wrong scale, index or tile is
#        off by O(1) of mag and still fails).  The CPU path (fp32 matmul) needs K * 2^-24.
# floor: fp16 results below 2^-14 are subnormal: half their spacing, 2^-25.
TOLERANCES = {
    torch.bfloat16: dict(out=2**-8, comp=2**-9, floor=0.0),
    torch.float16: dict(out=2**-11, comp=2**-9, floor=2**-25),
    torch.float32: dict(out=2**-24, comp=2**-9, floor=0.0),
}
# Relative Frobenius error of fp8_gemm on quantized random normal inputs against a float64
# GEMM of the unquantized ones: e4m3 rounds each operand with ~2.65% rms relative error
# (a 3-bit mantissa: spacing 2^-3..2^-4 of the value, uniform rounding error), so the product
# carries sqrt(2) * 2.65% = 3.75% (measured 3.73-3.75% over M, N, K in 64..8192, per-tensor
# and per-row scales).  A bf16 GEMM of the same inputs: 0.17%.
FP8_VS_EXACT_BOUND = 0.045
# Against torch._scaled_mm on identical FP8 inputs and scales (both sum in fp32, round once).
SCALED_MM_BOUND = 1e-2


FP8_DEVICES = pytest.mark.parametrize("fp8_device", ["cpu", pytest.param("cuda", marks=pytest.mark.requires_cuda)],
                                      indirect=True)


def quantized(shape, device, scaling="row", scale=1.0):
    x = make_tensor(shape, torch.float32, device, scale=scale)
    q, s = fusedaot.quantize_fp8(x, scaling)
    return q, s


def reference64(a, b, sa, sb, bias=None):
    """The exact product (float64) and its magnitude (the sum of the terms' absolute values)."""
    a64, b64 = a.to(torch.float64), b.to(torch.float64)
    sa64, sb64 = sa.to(torch.float64).reshape(-1, 1), sb.to(torch.float64).reshape(1, -1)
    out = (a64 @ b64.T) * sa64 * sb64
    mag = (a64.abs() @ b64.abs().T) * sa64 * sb64
    if bias is not None:
        out = out + bias.to(torch.float64)
        mag = mag + bias.to(torch.float64).abs()
    return out, mag


def check(a, b, sa, sb, out_dtype, bias=None):
    m, n = a.shape[0], b.shape[0]
    if a.is_cuda:
        poison(m * n * torch.finfo(out_dtype).bits // 8)
    out = fusedaot.fp8_gemm(a, b, sa, sb, out_dtype=out_dtype, bias=bias)
    assert out.shape == (m, n) and out.dtype == out_dtype and out.is_contiguous()
    ref, mag = reference64(a, b, sa, sb, bias)
    assert_written(out)
    assert_close(out, ref, TOLERANCES[out_dtype], mag, f"fp8_gemm {tuple(a.shape)} x {tuple(b.shape)}")
    return out


# --- shapes, dtypes, scale layouts, bias ---------------------------------------------------------

# (M, N, K): every shape class (M <= 64, <= 1024, larger), aligned (K, N multiples of 16) and
# not (1, 17, 4097), K = 0, empty outputs; sm90's TMA kernels (specs.fp8_gemm.TMA_ROWS, aligned:
# the CUDA C++ kernel, and with fast accumulation _fp8_gemm_tma for one scale per operand and
# no bias) on partial tiles in M, N and K (1500 x 1032 x 1040), on one narrow column tile
# (1025 x 8 x 16) and on medium rows with N, K >= 8192 (264 x 8208 x 8192: partial tiles in M and N).
SHAPES = [(1, 17, 4097), (1, 1, 1), (17, 17, 17), (16, 4096, 4096), (64, 1000, 512), (65, 257, 1024),
          (300, 1024, 2048), (1025, 512, 4096), (2048, 2048, 4096), (1500, 1032, 1040), (1025, 8, 16),
          (264, 8208, 8192), (5, 7, 0), (0, 64, 256), (4, 0, 64)]


@FP8_DEVICES
@pytest.mark.parametrize("out_dtype", OUT_DTYPES, ids=str)
@pytest.mark.parametrize("m,n,k", SHAPES, ids=[f"{m}x{n}x{k}" for m, n, k in SHAPES])
def test_against_float64(m, n, k, out_dtype, fp8_device):
    if fp8_device == "cpu" and m * n * k > 1 << 28:
        pytest.skip("large shapes on the GPU only")
    for i, (sa_mode, sb_mode) in enumerate([("tensor", "tensor"), ("row", "row"), ("tensor", "row"),
                                            ("row", "tensor")]):
        a, sa = quantized((m, k), fp8_device, sa_mode, scale=3.0)
        b, sb = quantized((n, k), fp8_device, sb_mode, scale=0.05)
        bias = make_tensor((n,), out_dtype, fp8_device) if i % 2 else None
        check(a, b, sa, sb, out_dtype, bias)


@FP8_DEVICES
def test_on_the_fly_quantization_is_quantize_then_gemm(fp8_device):
    x = make_tensor((300, 1024), torch.bfloat16, fp8_device)
    w = make_tensor((512, 1024), torch.float16, fp8_device, scale=0.03)
    got = fusedaot.fp8_gemm(x, w, out_dtype=torch.float32)
    qx, sx = fusedaot.quantize_fp8(x, "row")
    qw, sw = fusedaot.quantize_fp8(w, "row")
    assert torch.equal(got, fusedaot.fp8_gemm(qx, qw, sx, sw, out_dtype=torch.float32))
    # one side pre-quantized, the other quantized here
    assert torch.equal(got, fusedaot.fp8_gemm(x, qw, None, sw, out_dtype=torch.float32))


@FP8_DEVICES
def test_error_against_exact_gemm(fp8_device):
    """FP8 rounding error of the whole pipeline (quantize both, GEMM) on random normal inputs,
    against a float64 GEMM of the unquantized inputs; a bf16 GEMM for comparison."""
    m, n, k = (512, 1024, 2048) if fp8_device == "cuda" else (128, 256, 512)
    a = make_tensor((m, k), torch.bfloat16, fp8_device)
    b = make_tensor((n, k), torch.bfloat16, fp8_device)
    exact = a.double() @ b.double().T
    out = fusedaot.fp8_gemm(a, b, out_dtype=torch.bfloat16)
    err = ((out.double() - exact).norm() / exact.norm()).item()
    err_bf16 = (((a.float() @ b.float().T).bfloat16().double() - exact).norm() / exact.norm()).item()
    print(f"relative error against float64: fp8_gemm {err:.4f}, bf16 GEMM {err_bf16:.5f}")
    assert 0.02 < err <= FP8_VS_EXACT_BOUND, err   # below 2%: the inputs were not really quantized


@pytest.mark.requires_cuda
@pytest.mark.parametrize("scaling", ["tensor", "row"])
@pytest.mark.parametrize("m,n,k", [(2048, 4096, 4096), (64, 4096, 8192), (4096, 1024, 1024)], ids=str)
def test_against_torch_scaled_mm(m, n, k, scaling):
    skip_unless_scaled_mm()
    a, sa = quantized((m, k), "cuda", scaling)
    b, sb = quantized((n, k), "cuda", scaling, scale=0.02)
    ours = fusedaot.fp8_gemm(a, b, sa, sb, out_dtype=torch.bfloat16)
    if scaling == "tensor":
        theirs = torch._scaled_mm(a, b.t(), scale_a=sa, scale_b=sb, out_dtype=torch.bfloat16)
    else:   # row-wise: scale_a (M, 1), scale_b (1, N)
        theirs = torch._scaled_mm(a, b.t(), scale_a=sa.reshape(m, 1), scale_b=sb.reshape(1, n),
                                  out_dtype=torch.bfloat16)
    rel = ((ours.double() - theirs.double()).norm() / theirs.double().norm()).item()
    worst = ((ours.double() - theirs.double()).abs().max() / theirs.double().abs().max()).item()
    print(f"fp8_gemm vs torch._scaled_mm {m}x{n}x{k} {scaling}: relative error {rel:.2e} (max {worst:.2e})")
    assert rel <= SCALED_MM_BOUND and worst <= SCALED_MM_BOUND


# --- layouts ---------------------------------------------------------------------------------------

@FP8_DEVICES
def test_layouts(fp8_device):
    m, n, k = 37, 96, 4096
    a, sa = quantized((m, k), fp8_device)
    b, sb = quantized((n, k), fp8_device, scale=0.1)
    want = fusedaot.fp8_gemm(a, b, sa, sb)
    big = torch.zeros(m, k + 48, dtype=torch.uint8, device=fp8_device).view(FP8)
    big[:, 16:16 + k] = a                                  # rows strided, still aligned: same variant
    assert torch.equal(fusedaot.fp8_gemm(big[:, 16:16 + k], b, sa, sb), want)
    big[:, 3:3 + k] = a                                    # rows misaligned: the fallback variant
    check(big[:, 3:3 + k], b, sa, sb, torch.bfloat16)
    bt = b.t().contiguous().t()                            # b with a strided inner dimension: copied
    assert torch.equal(fusedaot.fp8_gemm(a, bt, sa, sb), want)
    # a with leading dimensions and per-row scales shaped like quantize_fp8's output
    x = make_tensor((2, 3, 512), torch.float32, fp8_device)
    qx, sx = fusedaot.quantize_fp8(x, "row")               # sx: (2, 3, 1)
    out = fusedaot.fp8_gemm(qx, b[:, :512].contiguous(), sx, sb)
    assert out.shape == (2, 3, n)
    assert torch.equal(out.reshape(6, n), fusedaot.fp8_gemm(qx.reshape(6, 512), b[:, :512].contiguous(),
                                                            sx.reshape(6), sb))
    # 1-D a, like F.linear; b_scale as (1, N), as torch._scaled_mm takes it
    assert fusedaot.fp8_gemm(qx[0, 0], b[:, :512].contiguous(), sx[0, 0], sb.reshape(1, n)).shape == (n,)


@FP8_DEVICES
@pytest.mark.parametrize("fast", [False, True])
def test_large_m_layouts(fast, fp8_device):
    """Rows of a and b strided (aligned: sm90's TMA kernels read them through descriptors of
    that stride), every output element written, and the same call with a bias of zeros right
    too (on sm90, with fast accumulation, the TMA kernel for per-row scales and a bias)."""
    m, n, k = 1100, 264, 1024
    if fp8_device == "cpu" and fast:
        pytest.skip("the CPU emulation ignores use_fast_accum")
    a, sa = quantized((m, k), fp8_device, "row")
    b, sb = quantized((n, k), fp8_device, "row", scale=0.1)
    big_a = torch.zeros(m, k + 64, dtype=torch.uint8, device=fp8_device).view(FP8)
    big_b = torch.zeros(n, k + 32, dtype=torch.uint8, device=fp8_device).view(FP8)
    big_a[:, 32:32 + k] = a
    big_b[:, 16:16 + k] = b
    if fp8_device == "cuda":
        poison(m * n * 2)
    out = fusedaot.fp8_gemm(big_a[:, 32:32 + k], big_b[:, 16:16 + k], sa, sb, use_fast_accum=fast)
    assert_written(out)
    ref, mag = reference64(a, b, sa, sb)
    assert_close(out, ref, TOLERANCES[torch.bfloat16], mag, "fp8_gemm strided rows")
    zeros = torch.zeros(n, dtype=torch.bfloat16, device=fp8_device)
    with_bias = fusedaot.fp8_gemm(a, b, sa, sb, bias=zeros, use_fast_accum=fast)
    assert_close(with_bias, ref, TOLERANCES[torch.bfloat16], mag, "fp8_gemm with a zero bias")


@pytest.mark.requires_cuda
def test_direct_path_equals_torch_op():
    if not fp8_library_available():
        pytest.skip("no fp8_gemm in this library")
    a, sa = quantized((64, 1024), "cuda")
    b, sb = quantized((256, 1024), "cuda")
    bias = torch.randn(256, device="cuda", dtype=torch.bfloat16)
    assert torch.equal(fusedaot.fp8_gemm(a, b, sa, sb, bias=bias),
                       torch.ops.fusedaot.fp8_gemm(a, b, sa.reshape(-1), sb.reshape(-1), torch.bfloat16, bias))


# --- errors ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
def test_errors(device):
    a, sa = quantized((4, 64), device)
    b, sb = quantized((8, 64), device)
    x = torch.randn(4, 64, device=device, dtype=torch.bfloat16)
    cases = [
        ((a, quantized((8, 65), device)[0], sa, sb), ValueError,
         r"fp8_gemm: a has shape \(4, 64\) and b has shape \(8, 65\): a's last dimension \(K = 64\) must "
         r"equal b's second \(K = 65\)"),
        ((a, b, torch.ones(3, device=device), sb), ValueError,
         r"fp8_gemm: a_scale has shape \(3,\), which is neither one scale per tensor \(1 element\) nor one per "
         r"row of a \(\(4, 1\) or \(4,\)\)"),
        ((a, b, sa, torch.ones(8, 2, device=device)), ValueError,
         r"fp8_gemm: b_scale has shape \(8, 2\), which is neither one scale per tensor"),
        ((a, b, None, sb), ValueError, r"fp8_gemm: a is float8_e4m3fn, so a_scale is required"),
        ((x, b, sa, sb), ValueError, r"fp8_gemm: a is torch\.bfloat16 and is quantized here with its own scale"),
        ((a, b, sa.half(), sb), TypeError, r"fp8_gemm: a_scale must be float32, got torch\.float16"),
        ((a.view(torch.uint8), b, sa, sb), TypeError,
         r"fp8_gemm: a must be float8_e4m3fn \(with its scale\) or float16, bfloat16 or float32 \(quantized on "
         r"the fly\), got torch\.uint8"),
        ((x.to(torch.float8_e5m2), b, sa, sb), TypeError, r"fp8_gemm: a must be float8_e4m3fn"),
        ((a, b.reshape(2, 4, 64), sa, sb), ValueError, r"fp8_gemm: a must be \(\.\.\., K\) and b \(N, K\)"),
    ]
    for args, exc, msg in cases:
        with pytest.raises(exc, match=msg):
            fusedaot.fp8_gemm(*args)
    with pytest.raises(TypeError, match=r"fp8_gemm: out_dtype must be bfloat16, float16 or float32, got torch\.float64"):
        fusedaot.fp8_gemm(a, b, sa, sb, out_dtype=torch.float64)
    with pytest.raises(ValueError, match=r"fp8_gemm: bias has shape \(7,\) but the output has N = 8 columns"):
        fusedaot.fp8_gemm(a, b, sa, sb, bias=torch.zeros(7, device=device))


def test_unsupported_device_type():
    with pytest.raises(ValueError, match=r"fp8_gemm: tensors on 'xla' are not supported"):
        fusedaot.fp8_gemm(on_foreign_device(torch.randn(2, 8)), torch.randn(3, 8))


@pytest.mark.requires_cuda
def test_unavailable_library_error():
    """On the sm80 and PTX libraries (FUSEDAOT_ARCH=ptx on an H100, or a GPU without FP8) the
    error names the GPU, its library and what FP8 GEMM needs."""
    if fp8_library_available():
        pytest.skip("this GPU's library has fp8_gemm")
    a, sa = quantized((4, 64), "cpu")
    a, sa = a.cuda(), sa.cuda()
    arch = fusedaot.arch_for(torch.device("cuda"))
    name = re.escape(torch.cuda.get_device_name())
    with pytest.raises(fusedaot.FusedAOTError,
                       match=rf"fusedaot\.fp8_gemm: not available on {name} \(compute capability \d+\.\d+\), which "
                             rf"uses fusedaot's {arch} library.*; FP8 tensor cores need the sm89 or sm90 library, "
                             r"i\.e\. a GPU of compute capability 8\.9 \(Ada\) or 9\.0 \(Hopper\)"):
        fusedaot.fp8_gemm(a, a, sa, sa)
    # quantization itself works on every library (emulated conversion)
    x = torch.randn(4, 64, device="cuda")
    q, s = fusedaot.quantize_fp8(x, "row")
    assert torch.equal(q.view(torch.uint8).cpu(), R.quantize_fp8(x.cpu(), "row")[0].view(torch.uint8))


@pytest.mark.parametrize("arch", ["sm80", "ptx"])
def test_c_function_reports_unavailable(fake_driver, arch):
    """The generated fusedaot_fp8_gemm of a library without FP8 returns FA_ERR_UNAVAILABLE with a
    message naming the library (checked against a fake driver: no GPU needed)."""
    lib = PKG / f"libfusedaot_{arch}.so"
    if not lib.exists():
        pytest.skip(f"{lib.name} is not installed")
    run_with_fake(fake_driver, str(lib), """
        f = lib.fusedaot_fp8_gemm
        f.argtypes = [ctypes.c_void_p, ctypes.c_int32, ctypes.c_int32] + [ctypes.c_void_p] * 6 + \\
                     [ctypes.c_int64] * 5 + [ctypes.c_int32] * 5
        rc = f(0, 0, 2, 16, 16, 16, 16, 16, 0, 64, 64, 64, 0, 0, 64, 64, 64, 0, 1)
        assert rc == 10005, rc
        assert "fp8_gemm is not available on the %s library" in error(), error()
    """ % arch)


# --- FP8Linear -----------------------------------------------------------------------------------

@FP8_DEVICES
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_fp8_linear_from_linear(fp8_device, bias):
    linear = torch.nn.Linear(512, 384, bias=bias, device=fp8_device, dtype=torch.bfloat16)
    fl = fusedaot.nn.FP8Linear.from_linear(linear)
    assert fl.weight.dtype == FP8 and fl.weight.shape == (384, 512)
    assert fl.weight_scale.shape == (384, 1) and fl.weight_scale.dtype == torch.float32
    assert sorted(fl.state_dict()) == (["bias", "weight", "weight_scale"] if bias else ["weight", "weight_scale"])
    assert list(fl.parameters()) == []
    x = make_tensor((3, 77, 512), torch.bfloat16, fp8_device)
    y = fl(x)
    assert y.shape == (3, 77, 384) and y.dtype == torch.bfloat16
    want = fusedaot.fp8_gemm(x, fl.weight, None, fl.weight_scale, out_dtype=torch.bfloat16, bias=fl.bias)
    assert torch.equal(y, want)
    exact = F.linear(x.double(), linear.weight.double(), None if not bias else linear.bias.double())
    err = ((y.double() - exact).norm() / exact.norm()).item()
    assert err <= FP8_VS_EXACT_BOUND, err
    # a fresh module: nn.Linear's initialisation, quantized
    m = fusedaot.nn.FP8Linear(64, 32, bias=bias, device=fp8_device, dtype=torch.float16)
    assert m(make_tensor((5, 64), torch.float16, fp8_device)).dtype == torch.float16
    assert "in_features=64, out_features=32" in repr(m)


@pytest.mark.parametrize("device", DEVICES)
def test_fp8_linear_refuses_gradients(device):
    if device == "cuda" and not fp8_library_available():
        pytest.skip("no fp8_gemm in this library")
    fl = fusedaot.nn.FP8Linear(64, 32, device=device)
    x = torch.randn(4, 64, device=device, dtype=torch.bfloat16, requires_grad=True)
    y = fl(x)
    with pytest.raises(RuntimeError, match=r"is forward-only \(inference\): it has no gradient"):
        y.float().sum().backward()
    with torch.no_grad():
        assert torch.equal(fl(x), y)


def test_fp8_linear_errors():
    with pytest.raises(TypeError, match=r"FP8Linear: dtype \(the output's\) must be bfloat16, float16 or float32"):
        fusedaot.nn.FP8Linear(8, 8, dtype=torch.float64)


# --- torch.library integration --------------------------------------------------------------------

FP8_INPUT_UTILS = ("test_autograd_registration", "test_faketensor", "test_aot_dispatch_static",
                   "test_aot_dispatch_dynamic")


@FP8_DEVICES
def test_opcheck(fp8_device):
    a, sa = quantized((6, 160), fp8_device)
    b, sb = quantized((40, 160), fp8_device, "tensor")
    for out_dtype, bias, fast in ((torch.bfloat16, None, False), (torch.float32, torch.randn(40, device=fp8_device), True)):
        args = (a, b, sa.reshape(-1), sb.reshape(-1), out_dtype, bias, fast)
        # opcheck's test_schema compares inputs with arithmetic torch lacks for FP8: the bytes
        # are compared instead
        torch.library.opcheck(torch.ops.fusedaot.fp8_gemm.default, args, test_utils=FP8_INPUT_UTILS)
        before = [t.view(torch.uint8).clone() for t in (a, b)]
        torch.ops.fusedaot.fp8_gemm(*args)
        assert all(torch.equal(t.view(torch.uint8), v) for t, v in zip((a, b), before))


@FP8_DEVICES
def test_compile_fullgraph(fp8_device):
    w, ws = quantized((96, 256), fp8_device, scale=0.1)
    bias = torch.randn(96, device=fp8_device, dtype=torch.bfloat16)
    for backend in compile_backends(fp8_device):
        torch._dynamo.reset()

        def f(x):
            return fusedaot.fp8_gemm(x * 2.0, w, None, ws, out_dtype=torch.bfloat16, bias=bias) + 1.0

        cf = torch.compile(f, fullgraph=True, backend=backend, dynamic=True)
        for m in (5, 17):
            x = make_tensor((m, 256), torch.bfloat16, fp8_device)
            assert torch.equal(cf(x), f(x)), backend


@pytest.mark.requires_cuda
@pytest.mark.parametrize("m", [33, 1100])   # 1100: sm90's CUDA C++ kernel, its TMA descriptors captured
def test_cuda_graph_replay(m):
    if not fp8_library_available():
        pytest.skip("no fp8_gemm in this library")
    fusedaot.load()
    x = make_tensor((m, 1024), torch.bfloat16, "cuda")
    w, ws = quantized((512, 1024), "cuda", scale=0.05)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fusedaot.fp8_gemm(x, w, None, ws)
    torch.cuda.current_stream().wait_stream(side)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        y = fusedaot.fp8_gemm(x, w, None, ws)
    for k in range(2):
        x.copy_(make_tensor((m, 1024), torch.bfloat16, "cuda", scale=k + 1.0))
        g.replay()
        torch.cuda.synchronize()
        assert torch.equal(y, fusedaot.fp8_gemm(x, w, None, ws))
