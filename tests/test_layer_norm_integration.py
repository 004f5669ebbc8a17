"""fusedaot.layer_norm beyond the kernels: opcheck, torch.compile, CUDA graphs and nn.LayerNorm.
(tests/test_layer_norm.py: reference path, errors, forward and backward kernels.)
"""
from __future__ import annotations

import pytest
import torch

import fusedaot
import fusedaot.nn
import fusedaot.reference
from conftest import DTYPES, assert_close, compile_backends, make_tensor, ref64
from test_layer_norm import DEVICES, EPS, TOLERANCES, inputs, mags, oracle, relu_safe


# --- torch.library integration ----------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", (torch.bfloat16, torch.float32), ids=str)
@pytest.mark.parametrize("params", ("wb", "none", "wb32"))
def test_opcheck(device, dtype, params):
    x, w, b = inputs((6, 257), dtype, device, params)
    for grad in (False, True):
        xs = x.clone().requires_grad_(grad)
        ws = None if w is None else w.clone().requires_grad_(grad)
        bs = None if b is None else b.clone().requires_grad_(grad)
        torch.library.opcheck(torch.ops.fusedaot.layer_norm.default, (xs, ws, bs, EPS, params == "wb32"))
    dy = torch.randn_like(x)
    torch.library.opcheck(torch.ops.fusedaot.layer_norm_backward.default, (dy, x, w, b, EPS, True))


@pytest.mark.parametrize("device", DEVICES)
def test_compile_fullgraph(device):
    for backend in compile_backends(device):
        torch._dynamo.reset()

        def f(x, w, b):
            return fusedaot.layer_norm(x * 2.0, w, b, 1e-5, "relu") + 1.0

        cf = torch.compile(f, fullgraph=True, backend=backend, dynamic=True)
        for m in (5, 17):  # two sizes through one dynamic graph
            x, w, b = inputs((m, 1000), torch.bfloat16, device)
            x.requires_grad_(), w.requires_grad_(), b.requires_grad_()
            got = cf(x, w, b)
            want = f(x, w, b)
            assert_close(got, want, TOLERANCES[torch.bfloat16], what=f"{backend} forward")
            dy = relu_safe(torch.randn_like(got), 2.0 * x.detach(), w.detach(), b.detach(), 1e-5)
            g_got = torch.autograd.grad(got, (x, w, b), dy)
            g_want = torch.autograd.grad(want, (x, w, b), dy)
            for a, c, name in zip(g_got, g_want, ("dx", "dw", "db")):
                assert_close(a, c, TOLERANCES[torch.bfloat16], what=f"{backend} {name}")


@pytest.mark.requires_cuda
@pytest.mark.parametrize("m,n", [(1, 4096), (37, 4097), (4, 65536)], ids=str)
def test_cuda_graph_replay(m, n):
    fusedaot.load()
    dtype = torch.bfloat16
    x, w, b = inputs((m, n), dtype, "cuda", "wb32")
    dy = make_tensor((m, n), dtype, "cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm up off the capture
        fusedaot.layer_norm(x, w, b, EPS)
        torch.ops.fusedaot.layer_norm_backward(dy, x, w, b, EPS, False)
    torch.cuda.current_stream().wait_stream(side)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        y = fusedaot.layer_norm(x, w, b, EPS)
        dx, dw, db = torch.ops.fusedaot.layer_norm_backward(dy, x, w, b, EPS, False)
    for _ in range(2):
        new = inputs((m, n), dtype, "cuda", "wb32")
        for t, v in zip((x, w, b), new):
            t.copy_(v)
        dy.copy_(make_tensor((m, n), dtype, "cuda"))
        g.replay()
        torch.cuda.synchronize()
        assert_close(y, ref64(oracle, x, w, b, eps=EPS), TOLERANCES[dtype], mags(x, w, b, EPS))
        _, (dx_ref, dw_ref, db_ref) = ref64(oracle, x, w, b, dy=dy, eps=EPS)
        mag_dx, mag_dw, mag_db = mags(x, w, b, EPS, dy)
        assert_close(dx, dx_ref, TOLERANCES[dtype], mag_dx, "dx")
        assert_close(dw, dw_ref, TOLERANCES[torch.float32], mag_dw, "dweight")
        assert_close(db, db_ref, TOLERANCES[torch.float32], mag_db, "dbias")


# --- nn.LayerNorm -------------------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("affine,bias", [(True, True), (True, False), (False, True)], ids=["affine", "nobias", "plain"])
def test_module_matches_torch(device, dtype, affine, bias):
    n = 1000
    ours = fusedaot.nn.LayerNorm(n, eps=1e-6, elementwise_affine=affine, bias=bias, device=device, dtype=dtype)
    ref = torch.nn.LayerNorm(n, eps=1e-6, elementwise_affine=affine, bias=bias, device=device, dtype=dtype)
    for attr in ("normalized_shape", "eps", "elementwise_affine"):
        assert getattr(ours, attr) == getattr(ref, attr), attr
    assert list(ours.state_dict()) == list(ref.state_dict())
    if affine:
        with torch.no_grad():
            ref.weight.copy_(inputs((n,), dtype, device)[1])
            if bias:
                ref.bias.copy_(inputs((n,), dtype, device)[2])
    ours.load_state_dict(ref.state_dict())
    x = make_tensor((3, 11, n), dtype, device).requires_grad_()
    y, y_ref = ours(x), ref(x)
    w = ref.weight if affine else None
    b = ref.bias if affine and bias else None
    assert_close(y, ref64(oracle, x, w, b, eps=1e-6), TOLERANCES[dtype], mags(x, w, b, 1e-6))
    # torch rounds x_hat and x_hat * w + b separately in 16-bit dtypes: allow two more roundings
    tol = dict(TOLERANCES[dtype], out=3 * TOLERANCES[dtype]["out"])
    assert_close(y, y_ref, tol, mags(x, w, b, 1e-6), what="against torch.nn.LayerNorm")
    if affine:
        y.backward(torch.ones_like(y))
        assert ours.weight.grad is not None and ours.weight.grad.shape == (n,)


@pytest.mark.parametrize("device", DEVICES)
def test_module_fp32_parameters_and_relu(device):
    # fp32 parameters with a bf16 input (mixed precision), the fused ReLU, two trailing dims
    ours = fusedaot.nn.LayerNorm((4, 250), device=device, dtype=torch.float32, activation="relu")
    with torch.no_grad():
        ours.weight.copy_(make_tensor((4, 250), torch.float32, device, scale=0.5, offset=1.0))
        ours.bias.copy_(make_tensor((4, 250), torch.float32, device, scale=0.5))
    x = make_tensor((3, 4, 250), torch.bfloat16, device)
    y = ours(x)
    assert y.dtype == torch.bfloat16 and y.shape == x.shape
    w, b = ours.weight.reshape(-1), ours.bias.reshape(-1)
    x2 = x.reshape(3, -1)
    assert_close(y.reshape(3, -1), ref64(oracle, x2, w, b, eps=1e-5, relu=True), TOLERANCES[torch.bfloat16],
                 mags(x2, w, b, 1e-5))
    y.float().sum().backward()
    assert ours.weight.grad.dtype == torch.float32 and ours.weight.grad.shape == (4, 250)
    assert "activation='relu'" in repr(ours)
    with pytest.raises(ValueError, match=r"LayerNorm: activation must be None or 'relu', got 'tanh'"):
        fusedaot.nn.LayerNorm(8, activation="tanh")
    with pytest.raises(ValueError, match=r"LayerNorm: expected input with trailing dimensions \(4, 250\)"):
        ours(torch.randn(2, 250, device=device))
