"""fusedaot.fp8_gemm(use_fast_accum=True): against torch._scaled_mm(use_fast_accum=True) and the
promoted result on identical FP8 inputs and scales, the CPU emulation, the schema, argument
errors, FP8Linear and torch.compile with the flag.  (tests/test_fp8_gemm.py: the default call.)
"""
from __future__ import annotations

import pytest
import torch

import fusedaot
import fusedaot.nn
from conftest import assert_written, make_tensor, poison, skip_unless_scaled_mm
from test_fp8_gemm import DEVICES, FP8, FP8_DEVICES, quantized

# use_fast_accum=True (sm90: no promotion, the tensor cores' ~14-bit chain spans all of K)
# against the promoted result and against torch._scaled_mm(use_fast_accum=True), relative
# Frobenius error: ~3e-3 measured against the promoted result on an H200 at K = 4096-8192;
# two such errors, independent, add to ~4e-3, and a wrong tile, index or scale is O(1).
FAST_ACCUM_BOUND = 1e-2

# --- use_fast_accum ----------------------------------------------------------------------------------

def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    """Relative Frobenius error of x against ref."""
    return ((x.double() - ref.double()).norm() / ref.double().norm()).item()


def library_arch():
    lib = fusedaot._lib.device_library(torch.cuda.current_device())
    return None if lib is None else lib.arch


def scaled_mm_padded(a, b, sa, sb, scaling, use_fast_accum):
    """torch._scaled_mm (bf16 out) of the same FP8 values and scales.  cuBLASLt's FP8 GEMM
    needs K and N multiples of 16: both are padded with zeros (zero products change no sum;
    padded columns get scale 1) and the padding is cut off."""
    (m, k), n = a.shape, b.shape[0]
    kp, np_ = -(-k // 16) * 16, -(-n // 16) * 16
    ap = torch.zeros(m, kp, dtype=torch.uint8, device=a.device).view(FP8)
    bp = torch.zeros(np_, kp, dtype=torch.uint8, device=a.device).view(FP8)
    ap[:, :k] = a
    bp[:n, :k] = b
    if scaling == "tensor":
        scale_a, scale_b = sa, sb
    else:   # row-wise: scale_a (M, 1), scale_b (1, N)
        scale_a = sa.reshape(m, 1)
        scale_b = torch.ones(1, np_, device=a.device)
        scale_b[0, :n] = sb.reshape(-1)
    out = torch._scaled_mm(ap, bp.t(), scale_a=scale_a, scale_b=scale_b, out_dtype=torch.bfloat16,
                           use_fast_accum=use_fast_accum)
    return out[:, :n]


# (M, N, K): every shape class with aligned operands (the sm90 fast variants), N not a
# tile multiple (300x1000x4096, still aligned), and an unaligned call (N = 4097: the
# fallback, which ignores the flag).
FAST_SHAPES = [(2048, 4096, 4096), (512, 2048, 4096), (64, 4096, 8192), (300, 1000, 4096), (17, 4097, 512)]


@pytest.mark.requires_cuda
@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("scaling", ["tensor", "row"])
@pytest.mark.parametrize("m,n,k", FAST_SHAPES, ids=[f"{m}x{n}x{k}" for m, n, k in FAST_SHAPES])
def test_fast_accum_against_torch_scaled_mm_and_promoted(m, n, k, scaling, bias):
    skip_unless_scaled_mm()
    a, sa = quantized((m, k), "cuda", scaling)
    b, sb = quantized((n, k), "cuda", scaling, scale=0.02)
    bvec = make_tensor((n,), torch.bfloat16, "cuda") if bias else None
    outs = {}
    for fast in (False, True):
        poison(m * n * 2)
        outs[fast] = fusedaot.fp8_gemm(a, b, sa, sb, out_dtype=torch.bfloat16, bias=bvec, use_fast_accum=fast)
        assert outs[fast].shape == (m, n) and outs[fast].dtype == torch.bfloat16
        assert_written(outs[fast])
    theirs = scaled_mm_padded(a, b, sa, sb, scaling, use_fast_accum=True).double()
    if bvec is not None:   # added in float64, the same way for both scalings
        theirs = theirs + bvec.double()
    vs_theirs, vs_promoted = rel_err(outs[True], theirs), rel_err(outs[True], outs[False])
    print(f"fp8_gemm use_fast_accum {m}x{n}x{k} {scaling}: relative error {vs_theirs:.2e} against "
          f"torch._scaled_mm(use_fast_accum=True), {vs_promoted:.2e} against use_fast_accum=False")
    assert vs_theirs <= FAST_ACCUM_BOUND and vs_promoted <= FAST_ACCUM_BOUND
    if library_arch() == "sm89" or n == 4097:   # Ada accumulates in fp32; the fallback ignores the flag
        assert torch.equal(outs[True], outs[False])


@pytest.mark.requires_cuda
def test_fast_accum_reaches_the_sm90_dispatch():
    """On sm90 the flag selects other kernels: the fp32 results differ (a few 1e-3 relative),
    except through the unaligned fallback, which ignores it."""
    if library_arch() != "sm90":
        pytest.skip("the fast variants are sm90's")
    m, n, k = 2048, 1024, 4096
    a, sa = quantized((m, k), "cuda")
    b, sb = quantized((n, k), "cuda", scale=0.02)
    promoted = fusedaot.fp8_gemm(a, b, sa, sb, out_dtype=torch.float32)
    fast = fusedaot.fp8_gemm(a, b, sa, sb, out_dtype=torch.float32, use_fast_accum=True)
    assert not torch.equal(fast, promoted), "use_fast_accum=True ran the promoted kernel"
    assert rel_err(fast, promoted) <= FAST_ACCUM_BOUND
    big = torch.zeros(m, k + 16, dtype=torch.uint8, device="cuda").view(FP8)
    big[:, 3:3 + k] = a                                   # rows misaligned: the fallback variant
    assert torch.equal(fusedaot.fp8_gemm(big[:, 3:3 + k], b, sa, sb, out_dtype=torch.float32, use_fast_accum=True),
                       fusedaot.fp8_gemm(big[:, 3:3 + k], b, sa, sb, out_dtype=torch.float32))


def test_fast_accum_is_ignored_by_the_cpu_emulation():
    a, sa = quantized((37, 512), "cpu")
    b, sb = quantized((96, 512), "cpu", "tensor", scale=0.1)
    bias = make_tensor((96,), torch.bfloat16, "cpu")
    want = fusedaot.fp8_gemm(a, b, sa, sb, bias=bias)
    assert torch.equal(fusedaot.fp8_gemm(a, b, sa, sb, bias=bias, use_fast_accum=True), want)
    assert torch.equal(torch.ops.fusedaot.fp8_gemm(a, b, sa.reshape(-1), sb.reshape(-1), torch.bfloat16, bias, True),
                       want)
    x = make_tensor((5, 512), torch.bfloat16, "cpu")       # quantized on the fly
    assert torch.equal(fusedaot.fp8_gemm(x, b, None, sb, use_fast_accum=True), fusedaot.fp8_gemm(x, b, None, sb))


def test_fast_accum_in_schema():
    schema = torch.ops.fusedaot.fp8_gemm.default._schema
    arg = schema.arguments[-1]
    assert (arg.name, str(arg.type), arg.default_value) == ("use_fast_accum", "bool", False), str(schema)
    params = dict(fusedaot._lib.manifest()["ops"]["fp8_gemm"]["params"])
    assert params["fast_accum"] == "i32"


@pytest.mark.parametrize("device", DEVICES)
def test_fast_accum_must_be_a_bool(device):
    a, sa = quantized((4, 64), device)
    b, sb = quantized((8, 64), device)
    for bad, shown in ((1, r"1 \(int\)"), (0, r"0 \(int\)"), ("yes", r"'yes' \(str\)"), (None, r"None \(NoneType\)"),
                       (torch.tensor(True), r"tensor\(True.*\) \(Tensor\)")):
        with pytest.raises(TypeError, match=rf"fp8_gemm: use_fast_accum must be True or False, got {shown}"):
            fusedaot.fp8_gemm(a, b, sa, sb, use_fast_accum=bad)
    with pytest.raises(TypeError, match=r"FP8Linear: use_fast_accum must be True or False, got 1 \(int\)"):
        fusedaot.nn.FP8Linear(8, 8, device=device, use_fast_accum=1)
    linear = torch.nn.Linear(8, 8, device=device)
    with pytest.raises(TypeError, match=r"FP8Linear: use_fast_accum must be True or False, got 'no' \(str\)"):
        fusedaot.nn.FP8Linear.from_linear(linear, use_fast_accum="no")


@FP8_DEVICES
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_fp8_linear_fast_accum(fp8_device, bias):
    linear = torch.nn.Linear(4096, 1000, bias=bias, device=fp8_device, dtype=torch.bfloat16)
    fl = fusedaot.nn.FP8Linear.from_linear(linear, use_fast_accum=True)
    assert fl.use_fast_accum is True and "use_fast_accum=True" in repr(fl)
    assert fusedaot.nn.FP8Linear.from_linear(linear).use_fast_accum is False
    x = make_tensor((3, 100, 4096), torch.bfloat16, fp8_device)
    if fp8_device == "cuda":
        poison(300 * 1000 * 2)
    y = fl(x)
    assert y.shape == (3, 100, 1000) and y.dtype == torch.bfloat16
    assert_written(y)
    want = fusedaot.fp8_gemm(x, fl.weight, None, fl.weight_scale, out_dtype=torch.bfloat16, bias=fl.bias,
                             use_fast_accum=True)
    assert torch.equal(y, want)
    promoted = fusedaot.fp8_gemm(x, fl.weight, None, fl.weight_scale, out_dtype=torch.bfloat16, bias=fl.bias)
    assert rel_err(y, promoted) <= FAST_ACCUM_BOUND
    m = fusedaot.nn.FP8Linear(64, 32, bias=bias, device=fp8_device, dtype=torch.float16, use_fast_accum=True)
    assert m(make_tensor((5, 64), torch.float16, fp8_device)).dtype == torch.float16
    assert "use_fast_accum=True" in repr(m)


@FP8_DEVICES
def test_compile_passes_use_fast_accum(fp8_device):
    w, ws = quantized((96, 256), fp8_device, scale=0.1)
    torch._dynamo.reset()

    def f(x):
        return fusedaot.fp8_gemm(x, w, None, ws, out_dtype=torch.bfloat16, use_fast_accum=True)

    cf = torch.compile(f, fullgraph=True, backend="aot_eager")
    x = make_tensor((17, 256), torch.bfloat16, fp8_device)
    assert torch.equal(cf(x), f(x))
