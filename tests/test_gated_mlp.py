"""fusedaot.fused_gated_mlp and fusedaot.nn.FusedGatedMLP: float64 references, shapes that are
not multiples of a tile, empty ones, layouts, every activation and dtype, backward, errors,
opcheck, torch.compile, CUDA graphs and the sm90 SASS (HGMMA: bf16 wgmma).

    y = act(x @ w_gate^T) * (x @ w_up^T),  act: silu | gelu (erf) | gelu_tanh
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import fusedaot
import fusedaot.nn
from conftest import assert_close, assert_written, compile_backends, make_tensor, on_foreign_device, poison
from test_fp8_gemm_build import sm90_sass

DTYPES = (torch.bfloat16, torch.float16)
ACTIVATIONS = ("silu", "gelu", "gelu_tanh")
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.requires_cuda)]

# Forward: |got - ref| <= out*|ref| + comp*mag + floor, ref in float64 (conftest.assert_close).
# out:   y is rounded once from fp32: 2^-8 (bf16), 2^-11 (fp16).
# comp:  2^-23, one fp32 ulp of a partial sum, with mag from forward_mag(): the tensor cores
#        add each block of 16 exact products into the fp32 accumulator after aligning them to
#        the largest (truncating, up to ~16 ulps of the block's largest magnitude), so over
#        ceil(K/16) blocks the error of g stays below (ceil(K/16) + 16) * 2^-23 * G, with
#        G = sum_k |x_k w_k| bounding every partial sum (same for u with U); it reaches y
#        through act'(g) * u and act(g).  The activation's own fp32 error (exp/erfc, a division,
#        two products) is a few fp32 ulps: 8 * |act(g) u| in mag.  The CPU path sums in fp32.
#        A wrong tile, weight or activation errs by O(|y|); the K tail is checked at K = 1, 17.
# floor: fp16 results below 2^-14 are subnormal: half their spacing, 2^-25.
TOLERANCES = {
    torch.bfloat16: dict(out=2**-8, comp=2**-23, floor=0.0),
    torch.float16: dict(out=2**-11, comp=2**-23, floor=2**-25),
}
# Backward: the reference composition in x's dtype (fusedaot.reference.fused_gated_mlp_backward)
# rounds g and u (matmul outputs), dg and du, and the final products into the dtype, each
# within one unit roundoff u of the value (g, u: of G, U, which also bound their fp32 sums'
# error).  backward_mags() propagates one u of each through dg = dy u act'(g), du = dy act(g)
# (|act''| <= 1 for all three activations: 0.5 silu, 0.8 gelu) and the matmuls; comp = 2u
# covers their sum, out = u the last rounding.
GRAD_TOLERANCES = {
    torch.bfloat16: dict(out=2**-8, comp=2 * 2**-8, floor=0.0),
    torch.float16: dict(out=2**-11, comp=2 * 2**-11, floor=2**-25),
}


def act64(g, activation):
    """The activation, in float64 (torch's own definitions; the reference must agree)."""
    if activation == "silu":
        return F.silu(g)
    return F.gelu(g, approximate="tanh" if activation == "gelu_tanh" else "none")


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_reference_activation_matches_torch(activation):
    # the reference's (and the kernel's) cancellation-free forms against torch's in float64
    g = torch.linspace(-12, 12, 20001, dtype=torch.float64)
    from fusedaot.reference import _gated_act
    torch.testing.assert_close(_gated_act(g, activation), act64(g, activation), rtol=1e-12, atol=1e-15)


def oracle(x, wg, wu, activation):
    return act64(x @ wg.T, activation) * (x @ wu.T)


def act_grad64(g, activation):
    g = g.detach().requires_grad_()
    act64(g, activation).backward(torch.ones_like(g))
    return g.grad


def forward_mag(x, wg, wu, activation):
    """(reference y, mag) in float64; see TOLERANCES."""
    x64, g64w, u64w = (t.detach().to(torch.float64) for t in (x, wg, wu))
    g, u = x64 @ g64w.T, x64 @ u64w.T
    G, U = x64.abs() @ g64w.abs().T, x64.abs() @ u64w.abs().T
    a, da = act64(g, activation), act_grad64(g, activation)
    steps = math.ceil(x.shape[-1] / 16) + 16
    mag = steps * (da.abs() * G * u.abs() + a.abs() * U) + 4 * (a * u).abs()   # 4 * 2^-23 = 8 fp32 ulps
    return a * u, mag


def inputs(shape_x, n, dtype, device):
    """x ~ N(0, 1), weights ~ N(0, 1/H): g and u ~ N(0, 1), so y stays in fp16's range."""
    h = shape_x[-1]
    x = make_tensor(shape_x, dtype, device)
    wg = make_tensor((n, h), dtype, device, scale=1 / math.sqrt(max(h, 1)))
    wu = make_tensor((n, h), dtype, device, scale=1 / math.sqrt(max(h, 1)))
    return x, wg, wu


def check_forward(x, wg, wu, activation):
    if x.is_cuda:
        poison(x.shape[:-1].numel() * wg.shape[0] * x.element_size())
    y = fusedaot.fused_gated_mlp(x, wg, wu, activation)
    assert y.shape == x.shape[:-1] + (wg.shape[0],) and y.dtype == x.dtype and y.is_contiguous()
    ref, mag = forward_mag(x, wg, wu, activation)
    assert_written(y)
    assert_close(y, ref, TOLERANCES[x.dtype], mag, f"fused_gated_mlp({activation}) {tuple(x.shape)}")
    return y


def backward_mags(x, wg, wu, dy, activation):
    x64, wg64, wu64, dy64 = (t.detach().to(torch.float64).reshape(-1, t.shape[-1]) for t in (x, wg, wu, dy))
    g, u = x64 @ wg64.T, x64 @ wu64.T
    G, U = x64.abs() @ wg64.abs().T, x64.abs() @ wu64.abs().T
    a, da = act64(g, activation), act_grad64(g, activation)
    d = dy64.abs()
    m_dg = d * (da.abs() * U + (u.abs() + U) * G + (u * da).abs())
    m_du = d * (da.abs() * G + a.abs())
    mag_dx = m_dg @ wg64.abs() + m_du @ wu64.abs()
    return mag_dx.reshape(x.shape), m_dg.T @ x64.abs(), m_du.T @ x64.abs()


def check_backward(x, wg, wu, dy, activation):
    x, wg, wu = (t.detach().clone().requires_grad_() for t in (x, wg, wu))
    y = fusedaot.fused_gated_mlp(x, wg, wu, activation)
    y.backward(dy)
    x64, wg64, wu64 = (t.detach().to(torch.float64).requires_grad_() for t in (x, wg, wu))
    oracle(x64, wg64, wu64, activation).backward(dy.to(torch.float64))
    mags = backward_mags(x, wg, wu, dy, activation)
    for name, got, want, mag in zip(("dx", "dw_gate", "dw_up"), (x.grad, wg.grad, wu.grad),
                                    (x64.grad, wg64.grad, wu64.grad), mags):
        assert got.shape == want.shape and got.dtype == x.dtype, name
        assert_written(got)
        assert_close(got, want, GRAD_TOLERANCES[x.dtype], mag, name)


# --- forward -------------------------------------------------------------------------------------

# (M, H, I): every shape class (M <= 64, <= 1024, larger), aligned and not (1, 17, 4097), K = H = 1
SHAPES = [(1, 17, 33), (1, 4096, 4097), (17, 1, 5), (5, 4097, 64), (64, 256, 512), (65, 512, 1000),
          (300, 1024, 2048), (0, 64, 128), (3, 0, 16), (1500, 512, 1024)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("m,h,n", SHAPES, ids=[f"{m}x{h}x{n}" for m, h, n in SHAPES])
def test_forward(m, h, n, activation, dtype, device):
    if device == "cpu" and m * h * n > 1 << 27:
        pytest.skip("large shapes on the GPU only")
    check_forward(*inputs((m, h), n, dtype, device), activation)


@pytest.mark.requires_cuda
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("m", [16, 2048])
def test_forward_llama_size(m, activation):
    check_forward(*inputs((m, 4096), 14336, torch.bfloat16, "cuda"), activation)


def _same(got, want):
    """The kernel reads every layout into the same tiles: bit-identical results.  The CPU path is
    torch's matmul, whose blocking (and so its rounding) may follow the layout and the core
    count: there, one rounding of the output dtype either way."""
    if got.is_cuda:
        return torch.equal(got, want)
    eps = torch.finfo(want.dtype).eps
    return torch.allclose(got.float(), want.float(), rtol=eps, atol=eps * want.float().abs().max().item())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_layouts(dtype, device):
    x, wg, wu = inputs((37, 1024), 768, dtype, device)
    want = fusedaot.fused_gated_mlp(x, wg, wu)
    big = make_tensor((37, 1024 + 40), dtype, device)
    big[:, 8:8 + 1024] = x
    assert _same(fusedaot.fused_gated_mlp(big[:, 8:8 + 1024], wg, wu), want)     # strided rows
    big[:, 3:3 + 1024] = x
    check_forward(big[:, 3:3 + 1024], wg, wu, "silu")                                 # misaligned rows
    merged = torch.cat([wg, wu])                                                      # a gate_up weight
    assert _same(fusedaot.fused_gated_mlp(x, merged[:768], merged[768:]), want)
    wide = make_tensor((768, 1024 + 64), dtype, device)
    wide[:, :1024] = wg
    assert _same(fusedaot.fused_gated_mlp(x, wide[:, :1024], wu), want)          # strided weight rows
    assert _same(fusedaot.fused_gated_mlp(x, wg.t().contiguous().t(), wu), want) # column-major: copied
    x3 = x.reshape(1, 37, 1024).expand(2, 37, 1024)                                   # leading dims, stride 0
    y3 = fusedaot.fused_gated_mlp(x3, wg, wu)
    assert y3.shape == (2, 37, 768) and _same(y3[1], want)


@pytest.mark.requires_cuda
def test_direct_path_equals_torch_op():
    x, wg, wu = inputs((64, 512), 1024, torch.bfloat16, "cuda")
    assert torch.equal(fusedaot.fused_gated_mlp(x, wg, wu, "gelu"),
                       torch.ops.fusedaot.fused_gated_mlp(x, wg, wu, "gelu"))


# --- backward ------------------------------------------------------------------------------------

BWD = [(1, 17, 33), (37, 256, 500), (0, 64, 32), (300, 1024, 2048)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("m,h,n", BWD, ids=[f"{m}x{h}x{n}" for m, h, n in BWD])
def test_backward(m, h, n, activation, dtype, device):
    if device == "cpu" and m * h * n > 1 << 24:
        pytest.skip("large shapes on the GPU only")
    x, wg, wu = inputs((m, h), n, dtype, device)
    check_backward(x, wg, wu, make_tensor((m, n), dtype, device), activation)


@pytest.mark.parametrize("device", DEVICES)
def test_backward_only_some_inputs(device):
    x, wg, wu = inputs((8, 64), 96, torch.bfloat16, device)
    wg.requires_grad_()
    fusedaot.fused_gated_mlp(x, wg, wu).sum().backward()
    assert wg.grad is not None and x.grad is None and wu.grad is None


# --- errors ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
def test_errors(device):
    x, wg, wu = inputs((4, 64), 96, torch.bfloat16, device)
    cases = [
        ((x.float(), wg, wu), TypeError, r"fused_gated_mlp: x must be float16 or bfloat16, got torch\.float32"),
        ((x, wg.half(), wu), TypeError, r"fused_gated_mlp: w_gate dtype torch\.float16 does not match x dtype "
                                        r"torch\.bfloat16"),
        ((x, wg[:, :63], wu), ValueError, r"fused_gated_mlp: w_gate has shape \(96, 63\) but must be \(intermediate, "
                                          r"64\): x has shape \(4, 64\) \(hidden = 64\)"),
        ((x, wg, wu[:95]), ValueError, r"fused_gated_mlp: w_gate has shape \(96, 64\) but w_up has shape \(95, 64\)"),
        ((x, wg.reshape(96, 64, 1), wu), ValueError, r"fused_gated_mlp: w_gate has shape \(96, 64, 1\) but must be"),
    ]
    for args, exc, msg in cases:
        with pytest.raises(exc, match=msg):
            fusedaot.fused_gated_mlp(*args)
    with pytest.raises(ValueError, match=r"fused_gated_mlp: activation must be 'silu', 'gelu' or 'gelu_tanh', got 'relu'"):
        fusedaot.fused_gated_mlp(x, wg, wu, "relu")


@pytest.mark.requires_cuda
def test_weights_on_other_device():
    x, wg, wu = inputs((4, 64), 96, torch.bfloat16, "cuda")
    with pytest.raises(ValueError, match=rf"fused_gated_mlp: w_up is on cpu but x is on {x.device}"):
        fusedaot.fused_gated_mlp(x, wg, wu.cpu())


def test_unsupported_device_type():
    x, wg, wu = inputs((4, 8), 16, torch.bfloat16, "cpu")
    with pytest.raises(ValueError, match=r"fused_gated_mlp: tensors on 'xla' are not supported"):
        fusedaot.fused_gated_mlp(on_foreign_device(x), wg, wu)


# --- the module ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_module(device, activation):
    mlp = fusedaot.nn.FusedGatedMLP(256, 688, activation, device=device, dtype=torch.bfloat16)
    assert sorted(mlp.state_dict()) == ["down_proj.weight", "gate_proj.weight", "up_proj.weight"]
    x = make_tensor((3, 21, 256), torch.bfloat16, device, scale=4.0).requires_grad_()
    y = mlp(x)
    assert y.shape == (3, 21, 256)
    h = fusedaot.fused_gated_mlp(x, mlp.gate_proj.weight, mlp.up_proj.weight, activation)
    assert torch.equal(y, mlp.down_proj(h))
    y.sum().backward()
    assert mlp.gate_proj.weight.grad is not None and mlp.down_proj.weight.grad is not None and x.grad is not None
    with pytest.raises(ValueError, match=r"FusedGatedMLP: activation must be 'silu', 'gelu' or 'gelu_tanh'"):
        fusedaot.nn.FusedGatedMLP(8, 16, "swish")


# --- torch.library integration ---------------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_opcheck(device, activation):
    x, wg, wu = inputs((6, 80), 48, torch.bfloat16, device)
    for grad in (False, True):
        args = [t.clone().requires_grad_(grad) for t in (x, wg, wu)]
        torch.library.opcheck(torch.ops.fusedaot.fused_gated_mlp.default, (*args, activation))
    dy = make_tensor((6, 48), torch.bfloat16, device)
    torch.library.opcheck(torch.ops.fusedaot.fused_gated_mlp_backward.default, (dy, x, wg, wu, activation))


@pytest.mark.parametrize("device", DEVICES)
def test_compile_fullgraph(device):
    for backend in compile_backends(device):
        torch._dynamo.reset()

        def f(x, wg, wu):
            return fusedaot.fused_gated_mlp(x * 2.0, wg, wu, "silu") + 1.0

        cf = torch.compile(f, fullgraph=True, backend=backend, dynamic=True)
        for m in (5, 17):
            x, wg, wu = (t.requires_grad_() for t in inputs((m, 128), 96, torch.bfloat16, device))
            got, want = cf(x, wg, wu), f(x, wg, wu)
            assert torch.equal(got, want), backend
            dy = torch.randn_like(got)
            for a, b in zip(torch.autograd.grad(got, (x, wg, wu), dy), torch.autograd.grad(want, (x, wg, wu), dy)):
                assert torch.equal(a, b), backend


@pytest.mark.requires_cuda
def test_cuda_graph_replay():
    fusedaot.load()
    x, wg, wu = inputs((33, 1024), 2048, torch.bfloat16, "cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fusedaot.fused_gated_mlp(x, wg, wu)
    torch.cuda.current_stream().wait_stream(side)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        y = fusedaot.fused_gated_mlp(x, wg, wu)
    for k in range(2):
        x.copy_(make_tensor((33, 1024), torch.bfloat16, "cuda", scale=k + 1.0))
        g.replay()
        torch.cuda.synchronize()
        ref, mag = forward_mag(x, wg, wu, "silu")
        assert_close(y, ref, TOLERANCES[torch.bfloat16], mag)


def test_sm90_sass_uses_wgmma(tmp_path):
    for text in sm90_sass("_gated_mlp", tmp_path):
        assert "HGMMA." in text, "an sm90 gated_mlp kernel without HGMMA"


def test_sm90_tma_kernel_copies_with_tma(tmp_path):
    """The sm90 kernel of M > 64 loads its tiles with TMA (UTMALDG) and stores y with it (UTMASTG)."""
    for text in sm90_sass("_gated_mlp_tma", tmp_path):
        assert "UTMALDG" in text and "UTMASTG" in text, "the sm90 TMA gated_mlp kernel without TMA copies"


@pytest.mark.parametrize("op,promised", [("gated_mlp", "GATED_MLP_SCRATCH"), ("fp8_gemm", "FP8_GEMM_SCRATCH")])
def test_scratch_covers_every_kernel(op, promised):
    """The Python layer allocates, per program, the most any of the library's kernels asked Triton
    for (none on libraries without TMA kernels); the C header promises C callers that the spec's
    figure of bytes a program suffices, so every kernel must fit in that too."""
    from test_specs import specs
    kernels = [k for k in fusedaot._lib.manifest()["kernels"] if k["op"] == op]
    limit = getattr(getattr(specs, op), promised)
    assert kernels and all(k["global_scratch"] <= limit for k in kernels)
    for arch in {k["arch"] for k in kernels}:
        need = max(k["global_scratch"] for k in kernels if k["arch"] == arch)
        assert fusedaot._lib.scratch_per_program(op, arch) == need, arch
    assert fusedaot._lib.scratch_per_program(op, "sm90") > 0, "no sm90 TMA kernel"
    assert fusedaot._lib.scratch_per_program(op, "sm89" if op == "fp8_gemm" else "sm80") == 0


def test_scratch_comes_with_its_buffer(monkeypatch):
    """_lib.scratch hands the caller the buffer with its pointer (the memory stays allocated
    until the caller's launch is queued), one share per SM; NO_SCRATCH where no kernel needs any."""
    lib = type("Lib", (), {"arch": "sm90"})
    monkeypatch.setattr(fusedaot._lib, "sm_count", lambda dev: 3)
    for op in ("fp8_gemm", "gated_mlp"):
        s = fusedaot._lib.scratch(op, lib, 0, torch.device("cpu"))
        assert s.buffer is not None and s.buffer.dtype == torch.uint8
        assert (s.ptr, s.bytes) == (s.buffer.data_ptr(), s.buffer.numel())
        assert s.bytes == 3 * fusedaot._lib.scratch_per_program(op, "sm90") > 0
    lib.arch = "sm89"
    assert fusedaot._lib.scratch("fp8_gemm", lib, 0, torch.device("cpu")) is fusedaot._lib.NO_SCRATCH
