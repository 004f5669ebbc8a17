"""fusedaot.quantize_fp8 / dequantize_fp8: the e4m3fn codes bit for bit against the reference
(torch's own fp32 -> float8_e4m3fn conversion), the round trip within half an e4m3 ulp at
every element, exact amax and scales, saturation, zero rows and tensors, layouts, dtypes,
errors, opcheck, torch.compile and CUDA graphs.

    scale = amax / 448 (at least 2^-126; 1 where amax == 0),  q = e4m3(clamp(x / scale, +-448))

On sm89/sm90 the kernels convert with the hardware instruction, on sm80 and the PTX library
with an integer emulation; both must give exactly torch's codes (run the GPU tests with
FUSEDAOT_ARCH=ptx to check the emulation).
"""
from __future__ import annotations

import pytest
import torch

import fusedaot
import fusedaot.reference as R
from conftest import DTYPES, assert_written, compile_backends, make_tensor, on_foreign_device, poison

FP8 = torch.float8_e4m3fn
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.requires_cuda)]
SCALINGS = ("tensor", "row")


def codes(q: torch.Tensor) -> torch.Tensor:
    return q.view(torch.uint8)


def check_quantize(x: torch.Tensor, scaling: str):
    """Run quantize_fp8 on poisoned memory; check it against the reference bit for bit and
    the round trip within half an e4m3 ulp; return (q, scale)."""
    if x.is_cuda:
        poison(x.numel())   # the size of q, the output the kernel writes
    q, scale = fusedaot.quantize_fp8(x, scaling)
    assert q.dtype == FP8 and q.shape == x.shape and q.is_contiguous()
    assert scale.dtype == torch.float32
    assert scale.shape == (x.shape[:-1] + (1,) if scaling == "row" else ())
    q_ref, scale_ref = R.quantize_fp8(x.cpu(), scaling)
    # the scale is exact: amax is a max (no rounding), amax / 448 one correctly rounded division
    assert torch.equal(scale.cpu(), scale_ref), (scale.flatten()[:8], scale_ref.flatten()[:8])
    assert bool((scale > 0).all()) and bool(torch.isfinite(scale).all()), "scale must never be 0 or inf"
    bad = codes(q).cpu() != codes(q_ref)
    if bad.any():
        i = bad.nonzero()[0].tolist()
        pytest.fail(f"{int(bad.sum())} of {q.numel()} codes differ from torch's conversion; first at {i}: "
                    f"x = {x[tuple(i)].item()!r}, got 0x{codes(q)[tuple(i)].item():02x}, "
                    f"want 0x{codes(q_ref)[tuple(i)].item():02x}", pytrace=False)
    check_round_trip(x.cpu(), q.cpu(), scale.cpu())
    return q, scale


def half_ulp_e4m3(v: torch.Tensor) -> torch.Tensor:
    """Half the e4m3 spacing at |v| (float64): 2^(e-4) in the binade [2^e, 2^(e+1)), e >= -6;
    2^-10 in the subnormal range below 2^-6 (spacing 2^-9)."""
    _, e = torch.frexp(v.abs().to(torch.float64))      # |v| = m * 2^e, m in [0.5, 1)
    return torch.where(v.abs() < 2.0 ** -6, torch.full_like(v, 2.0 ** -10, dtype=torch.float64),
                       torch.ldexp(torch.ones_like(v, dtype=torch.float64), e - 5))


def check_round_trip(x, q, scale):
    """|q * scale - x| <= scale * half_ulp(x / scale) + 2^-22 |x| at every element: the e4m3
    rounding of x / scale, plus the fp32 roundings of x / scale and of the product (one fp32
    ulp each, 2^-23 relative) with 2x margin."""
    x64 = x.to(torch.float64)
    s64 = scale.to(torch.float64)
    v = (x.to(torch.float32) / scale).clamp(-448, 448)        # the value that was rounded, as the kernel has it
    err = (q.to(torch.float64) * s64 - x64).abs()
    bound = s64 * half_ulp_e4m3(v) + 2.0 ** -22 * x64.abs()
    bad = ~(err <= bound)
    if bad.any():
        i = bad.nonzero()[0].tolist()
        pytest.fail(f"round trip: {int(bad.sum())} elements beyond half an e4m3 ulp; first at {i}: x = "
                    f"{x64[tuple(i)].item()!r}, back {(q.to(torch.float64) * s64)[tuple(i)].item()!r}, "
                    f"err {err[tuple(i)].item():.3g} > {bound[tuple(i)].item():.3g}", pytrace=False)


# --- the reference itself -------------------------------------------------------------------

def test_reference_codes_are_torchs_rne_conversion():
    # every e4m3 value, every midpoint between neighbours (ties go to the even code), and
    # values just beside them; 448 is the largest finite value and is what amax maps to
    values = torch.arange(0, 127, dtype=torch.uint8).view(FP8).to(torch.float64)
    mids = (values[1:] + values[:-1]) / 2
    pts = torch.cat([values, mids, mids * (1 + 2.0 ** -20), mids * (1 - 2.0 ** -20)]).to(torch.float32)
    x = torch.cat([pts, -pts, torch.tensor([448.0])]).reshape(1, -1)
    q, s = R.quantize_fp8(x, "tensor")
    assert s.item() == 1.0
    assert torch.equal(codes(q), codes(x.to(FP8)))


def test_reference_scale_rules():
    assert R.fp8_scale(torch.tensor(0.0)).item() == 1.0
    assert R.fp8_scale(torch.tensor(448.0)).item() == 1.0
    assert R.fp8_scale(torch.tensor(1e-40)).item() == 2.0 ** -126     # subnormal amax: normal scale
    assert R.fp8_scale(torch.tensor(3e38)).item() == pytest.approx(3e38 / 448, rel=1e-7)
    assert torch.isnan(R.fp8_scale(torch.tensor(float("nan"))))


# --- CPU and GPU: shapes, dtypes, scalings -----------------------------------------------------

SHAPES = [(0, 8), (4, 0), (1, 1), (3, 17), (37, 127), (5, 512), (3, 513), (4, 2048), (2, 4097),
          (2, 8192), (2, 8193), (2, 3, 1000)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("scaling", SCALINGS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_quantize(shape, scaling, dtype, device):
    x = make_tensor(shape, dtype, device, scale=3.0)
    q, s = check_quantize(x, scaling)
    if x.numel():
        amax = x.float().abs().amax(-1, keepdim=True) if scaling == "row" else x.float().abs().max()
        # amax maps to +-448 exactly: the saturating end of the range is used
        top = (x.float().abs() == amax) & (amax > 0)
        assert bool((q.float().abs()[top] == 448).all())


@pytest.mark.requires_cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("scaling", SCALINGS)
@pytest.mark.parametrize("m,n", [(1024, 4096), (64, 65536), (3, 100000), (4096, 16)], ids=str)
def test_quantize_large(m, n, scaling, dtype):
    check_quantize(make_tensor((m, n), dtype, "cuda", scale=10.0), scaling)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("scaling", SCALINGS)
def test_every_code_and_tie(device, scaling):
    """Rows whose amax is 448 (scale 1) holding every e4m3 value, every midpoint (ties to
    even) and values one fp32 ulp beside each midpoint, both signs, subnormals included."""
    values = torch.arange(0, 127, dtype=torch.uint8).view(FP8).to(torch.float64)
    mids = (values[1:] + values[:-1]) / 2
    pts = torch.cat([values, mids]).to(torch.float32)
    pts = torch.cat([pts, torch.nextafter(pts, torch.tensor(0.0)), torch.nextafter(pts, torch.tensor(1e9))])
    pts = pts[pts <= 448]
    row = torch.cat([pts, -pts, torch.tensor([448.0])])
    x = row.repeat(3, 1).to(device)
    q, s = check_quantize(x, scaling)
    assert bool((s == 1.0).all())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("scaling", SCALINGS)
def test_saturates_at_448(device, scaling):
    """amax / 448 rounds down for some amax: then amax / scale exceeds 448 in fp32 and must
    saturate to 448, never become NaN (e4m3fn has no infinity; beyond 464 it would be NaN)."""
    cand = torch.rand(1 << 16, dtype=torch.float64).mul(1e4).to(torch.float32) + 1
    over = cand[(cand / R.fp8_scale(cand)) > 448][:256]
    assert over.numel() == 256, "expected amax values whose scale rounds down"
    x = (over[:, None] * torch.tensor([1.0, -1 / 3, 0.5, 0.25])).to(device)   # each row's amax first
    q, s = check_quantize(x, scaling)
    qf = q.float().cpu()
    assert not qf.isnan().any() and bool((qf.abs() <= 448).all())
    top = qf[:, 0] if scaling == "row" else qf.flatten()[x.flatten().abs().argmax().item()].reshape(1)
    assert bool((top == 448).all())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_zero_rows_and_zero_tensors(device, dtype):
    x = make_tensor((6, 300), dtype, device)
    x[1] = 0
    x[4] = -0.0
    q, s = check_quantize(x, "row")
    assert s[1].item() == 1.0 and s[4].item() == 1.0
    assert not codes(q)[1].any()
    z = torch.zeros(5, 77, dtype=dtype, device=device)
    for scaling in SCALINGS:
        q, s = check_quantize(z, scaling)
        assert bool((s == 1.0).all()) and not codes(q).any()
    # tiny values: amax far below 448 * 2^-126 still gives a normal, finite scale
    t = torch.full((2, 64), 1e-30 if dtype == torch.float32 else 1e-7, dtype=dtype, device=device)
    for scaling in SCALINGS:
        q, s = check_quantize(t, scaling)
        assert bool((s >= 2.0 ** -126).all())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("scaling", SCALINGS)
def test_nan_propagates(device, scaling):
    x = make_tensor((3, 64), torch.float32, device)
    x[1, 5] = float("nan")
    q, s = fusedaot.quantize_fp8(x, scaling)
    assert torch.isnan(q.float()[1]).all()
    if scaling == "row":
        assert torch.isnan(s[1]).all() and torch.isfinite(s[[0, 2]]).all()
        assert not torch.isnan(q.float()[[0, 2]]).any()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_layouts(device, dtype):
    for scaling in SCALINGS:
        big = make_tensor((37, 4096 + 24), dtype, device)
        check_quantize(big[:, 8:8 + 4096], scaling)                       # strided rows, aligned
        check_quantize(big[:, 3:3 + 4096], scaling)                       # misaligned rows
        check_quantize(make_tensor((300, 9), dtype, device).t(), scaling)  # last dim strided: copied
        check_quantize(make_tensor((5, 7, 96), dtype, device).transpose(0, 1), scaling)


# --- dequantize --------------------------------------------------------------------------------

def _random_codes(shape, device):
    c = torch.randint(0, 256, shape, dtype=torch.uint8)
    c[(c & 0x7F) == 0x7F] = 0x3A   # no NaN codes
    return c.view(FP8).to(device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("out_dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(0, 8), (5, 0), (1, 1), (7, 17), (33, 4097), (2, 3, 640)], ids=str)
def test_dequantize_exact(shape, out_dtype, device):
    q = _random_codes(shape, device)
    for scale in (torch.tensor(0.37, device=device),                                  # per tensor, 0-d
                  torch.rand(shape[:-1] + (1,), device=device) * 4 + 0.01,            # per row (..., 1)
                  torch.rand(shape[:-1], device=device) + 0.5):                       # per row (...)
        if device == "cuda":
            poison(q.numel() * torch.finfo(out_dtype).bits // 8)
        y = fusedaot.dequantize_fp8(q, scale, out_dtype)
        assert y.dtype == out_dtype and y.shape == q.shape
        # q * scale in fp32 (exact: 4 + 24 significant bits fit in fp32's 24 only after one
        # rounding, which both sides do identically), then one rounding into out_dtype
        want = R.dequantize_fp8(q.cpu(), scale.cpu(), out_dtype)
        assert_written(y)
        assert torch.equal(y.cpu(), want)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("scaling", SCALINGS)
def test_round_trip_through_dequantize(device, scaling):
    x = make_tensor((9, 1000), torch.float32, device, scale=50.0)
    q, s = fusedaot.quantize_fp8(x, scaling)
    y = fusedaot.dequantize_fp8(q, s, torch.float32)
    check_round_trip(x.cpu(), q.cpu(), s.cpu())
    assert torch.equal(y.cpu(), (q.float() * s).cpu())


# --- errors ------------------------------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
def test_errors(device):
    x = torch.randn(4, 32, device=device)
    with pytest.raises(TypeError, match=r"quantize_fp8: x must be float16, bfloat16 or float32, got torch\.int32"):
        fusedaot.quantize_fp8(torch.ones(4, 8, dtype=torch.int32, device=device))
    with pytest.raises(TypeError, match=r"quantize_fp8: x must be float16, bfloat16 or float32, got torch\.float64"):
        fusedaot.quantize_fp8(x.double())
    with pytest.raises(ValueError, match=r"quantize_fp8: scaling must be 'tensor' or 'row', got 'col'"):
        fusedaot.quantize_fp8(x, "col")
    with pytest.raises(TypeError, match=r"quantize_fp8: dtype must be torch\.float8_e4m3fn .* got torch\.float8_e5m2"):
        fusedaot.quantize_fp8(x, "row", torch.float8_e5m2)
    with pytest.raises(ValueError, match=r"quantize_fp8: x must have at least one dimension"):
        fusedaot.quantize_fp8(torch.tensor(1.0, device=device))
    q, s = fusedaot.quantize_fp8(x, "row")
    with pytest.raises(TypeError, match=r"dequantize_fp8: x_fp8 must be torch\.float8_e4m3fn, got torch\.float32"):
        fusedaot.dequantize_fp8(x, s)
    with pytest.raises(ValueError, match=r"dequantize_fp8: scale has shape \(3,\), which is neither one scale per "
                                         r"tensor \(1 element\) nor one per row of x_fp8 \(\(4, 1\) or \(4,\)\)"):
        fusedaot.dequantize_fp8(q, torch.ones(3, device=device))
    with pytest.raises(ValueError, match=r"dequantize_fp8: scale has shape \(1, 4\), which is neither"):
        fusedaot.dequantize_fp8(q, torch.ones(1, 4, device=device))
    with pytest.raises(TypeError, match=r"dequantize_fp8: scale must be float32, got torch\.float16"):
        fusedaot.dequantize_fp8(q, s.half())
    with pytest.raises(TypeError, match=r"dequantize_fp8: out_dtype must be float16, bfloat16 or float32, got torch\.int8"):
        fusedaot.dequantize_fp8(q, s, torch.int8)


def test_unsupported_device_type():
    with pytest.raises(ValueError, match=r"quantize_fp8: tensors on 'xla' are not supported"):
        fusedaot.quantize_fp8(on_foreign_device(torch.randn(2, 8)))


@pytest.mark.parametrize("device", DEVICES)
def test_gradient_is_refused(device):
    x = torch.randn(4, 32, device=device, requires_grad=True)
    q, s = fusedaot.quantize_fp8(x, "row")
    y = fusedaot.dequantize_fp8(q, s, torch.float32)
    with pytest.raises(RuntimeError, match=r"fusedaot\.(de)?quantize_fp8 is forward-only \(inference\): it has no gradient"):
        y.sum().backward()
    with torch.no_grad():   # under no_grad the same call is fine
        q2, s2 = fusedaot.quantize_fp8(x, "row")
    assert torch.equal(codes(q2), codes(q))


# --- torch.library integration ------------------------------------------------------------------

def _unchanged(args, fn):
    """The op must not write to its inputs (opcheck's test_schema cannot compare FP8 tensors:
    torch has no FP8 arithmetic to do it with, so the bytes are compared here)."""
    before = [a.detach().reshape(-1).view(torch.uint8).clone() if isinstance(a, torch.Tensor) else a for a in args]
    fn(*args)
    for a, b in zip(args, before):
        if isinstance(a, torch.Tensor):
            assert torch.equal(a.detach().reshape(-1).view(torch.uint8), b)


FP8_INPUT_UTILS = ("test_autograd_registration", "test_faketensor", "test_aot_dispatch_static",
                   "test_aot_dispatch_dynamic")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", (torch.bfloat16, torch.float32), ids=str)
def test_opcheck(device, dtype):
    x = make_tensor((6, 257), dtype, device)
    for scaling in SCALINGS:
        torch.library.opcheck(torch.ops.fusedaot.quantize_fp8.default, (x, scaling))
        # with a gradient requested only registration and fakes: the backward refuses by design
        torch.library.opcheck(torch.ops.fusedaot.quantize_fp8.default, (x.clone().requires_grad_(), scaling),
                              test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))
        q, s = fusedaot.quantize_fp8(x, scaling)
        args = (q, s, torch.float16)
        torch.library.opcheck(torch.ops.fusedaot.dequantize_fp8.default, args, test_utils=FP8_INPUT_UTILS)
        _unchanged(args, torch.ops.fusedaot.dequantize_fp8)


@pytest.mark.parametrize("device", DEVICES)
def test_compile_fullgraph(device):
    for backend in compile_backends(device):
        torch._dynamo.reset()

        def f(x):
            q, s = fusedaot.quantize_fp8(x * 2.0, "row")
            qt, st = fusedaot.quantize_fp8(x, "tensor")
            return fusedaot.dequantize_fp8(q, s, torch.float32) + fusedaot.dequantize_fp8(qt, st, torch.float32)

        cf = torch.compile(f, fullgraph=True, backend=backend, dynamic=True)
        for m in (5, 17):
            x = make_tensor((m, 1000), torch.bfloat16, device)
            assert torch.equal(cf(x), f(x)), backend


@pytest.mark.requires_cuda
def test_cuda_graph_replay():
    fusedaot.load()
    x = make_tensor((33, 4096), torch.bfloat16, "cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fusedaot.quantize_fp8(x, "tensor")
        fusedaot.quantize_fp8(x, "row")
    torch.cuda.current_stream().wait_stream(side)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        qt, st = fusedaot.quantize_fp8(x, "tensor")
        qr, sr = fusedaot.quantize_fp8(x, "row")
        y = fusedaot.dequantize_fp8(qr, sr, torch.float32)
    for k in range(2):
        x.copy_(make_tensor((33, 4096), torch.bfloat16, "cuda", scale=k + 1.0))
        g.replay()
        torch.cuda.synchronize()
        for (q, s), scaling in (((qt, st), "tensor"), ((qr, sr), "row")):
            q_ref, s_ref = R.quantize_fp8(x.cpu(), scaling)
            assert torch.equal(codes(q).cpu(), codes(q_ref)) and torch.equal(s.cpu(), s_ref)
        assert torch.equal(y, qr.float() * sr)
