"""fusedaot.swiglu / geglu / silu_and_mul / gelu_and_mul beyond the kernels: opcheck, torch.compile,
CUDA graphs and the modules nn.SwiGLU / nn.GeGLU.  (tests/test_swiglu.py: reference path, errors,
kernels, backward.)
"""
from __future__ import annotations

import pytest
import torch

import fusedaot
import fusedaot.nn
import fusedaot.reference
from conftest import assert_close, compile_backends, make_tensor, ref64
from test_swiglu import DEVICES, TOLERANCES, inputs, mags, oracle


# --- torch.library integration ----------------------------------------------------------

OPCHECK = [("swiglu", ()), ("geglu", ("none",)), ("geglu", ("tanh",)), ("silu_and_mul", ()),
           ("gelu_and_mul", ("tanh",))]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", (torch.bfloat16, torch.float32), ids=str)
@pytest.mark.parametrize("name,extra", OPCHECK, ids=[n + "".join(e) for n, e in OPCHECK])
def test_opcheck(device, dtype, name, extra):
    packed = name.endswith("_and_mul")
    args = inputs(packed, (6, 257), dtype, device)
    op, backward = getattr(torch.ops.fusedaot, name), getattr(torch.ops.fusedaot, name + "_backward")
    for grad in (False, True):
        torch.library.opcheck(op.default, tuple(a.clone().requires_grad_(grad) for a in args) + extra)
    dy = make_tensor((6, 257), dtype, device)
    torch.library.opcheck(backward.default, (dy,) + tuple(args) + extra)


@pytest.mark.parametrize("device", DEVICES)
def test_compile_fullgraph(device):
    tol = TOLERANCES[torch.bfloat16]
    for backend in compile_backends(device):
        torch._dynamo.reset()

        def terms(g, u, x):
            return (fusedaot.swiglu(g * 0.5, u), fusedaot.geglu(g, u, "tanh"),
                    fusedaot.silu_and_mul(x) * fusedaot.gelu_and_mul(x, "none"))

        def f(g, u, x):
            a, b, c = terms(g, u, x)
            return a + b + c

        cf = torch.compile(f, fullgraph=True, backend=backend, dynamic=True)
        for m in (5, 17):
            g, u = inputs(False, (m, 1000), torch.bfloat16, device)
            (x,) = inputs(True, (m, 1000), torch.bfloat16, device)
            for t in (g, u, x):
                t.requires_grad_()
            got, want = cf(g, u, x), f(g, u, x)
            # the sum of three bf16 terms may be rounded once (fused) or after each add (eager):
            # a few bf16 roundings of the terms' magnitude
            mag = sum(t.detach().double().abs() for t in terms(g, u, x))
            assert_close(got, want, dict(tol, comp=4 * tol["out"]), mag, what=f"{backend} forward")
            dy = torch.randn_like(got)
            # likewise for the gradients: their magnitude is that of each term's contribution
            parts = [torch.autograd.grad(t, (g, u, x), dy, allow_unused=True, materialize_grads=True)
                     for t in terms(g, u, x)]
            for i, (a, e, name) in enumerate(zip(torch.autograd.grad(got, (g, u, x), dy),
                                                 torch.autograd.grad(want, (g, u, x), dy), ("dgate", "dup", "dx"))):
                mag = sum(p[i].double().abs() for p in parts)
                assert_close(a, e, dict(tol, comp=4 * tol["out"]), mag, what=f"{backend} {name}")


@pytest.mark.requires_cuda
@pytest.mark.parametrize("m,n", [(1, 4096), (37, 4097), (1024, 1000)], ids=str)
def test_cuda_graph_replay(m, n):
    fusedaot.load()
    dtype = torch.bfloat16
    g, u = inputs(False, (m, n), dtype, "cuda")
    (x,) = inputs(True, (m, n), dtype, "cuda")
    dy = make_tensor((m, n), dtype, "cuda")

    def run():
        return (fusedaot.swiglu(g, u), fusedaot.gelu_and_mul(x, "tanh"),
                torch.ops.fusedaot.geglu_backward(dy, g, u, "none"), torch.ops.fusedaot.silu_and_mul_backward(dy, x))

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm up off the capture
        run()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y, yp, (dg, du), dx = run()
    tol = TOLERANCES[dtype]
    for _ in range(2):
        g.copy_(make_tensor((m, n), dtype, "cuda", scale=2.0))
        u.copy_(make_tensor((m, n), dtype, "cuda"))
        x.copy_(make_tensor((m, 2 * n), dtype, "cuda", scale=2.0))
        dy.copy_(make_tensor((m, n), dtype, "cuda"))
        graph.replay()
        torch.cuda.synchronize()
        assert_close(y, ref64(lambda a, b: oracle(False, None, a, b), g, u), tol, mags(False, (g, u)))
        assert_close(yp, ref64(lambda t: oracle(True, "tanh", t), x), tol, mags(True, (x,)))
        _, grads = ref64(lambda a, b: oracle(False, "none", a, b), g, u, dy=dy)
        for got, ref, mag, name in zip((dg, du), grads, mags(False, (g, u), dy), ("dgate", "dup")):
            assert_close(got, ref, tol, mag, name)
        _, (dx_ref,) = ref64(lambda t: oracle(True, None, t), x, dy=dy)
        assert_close(dx, dx_ref, tol, mags(True, (x,), dy)[0], "dx")


# --- modules ------------------------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
def test_modules(device):
    dtype = torch.bfloat16
    g, u = inputs(False, (4, 7, 1000), dtype, device)
    x = torch.cat([g, u], -1)
    assert torch.equal(fusedaot.nn.SwiGLU()(x), fusedaot.silu_and_mul(x))
    assert torch.equal(fusedaot.nn.SwiGLU()(g, u), fusedaot.swiglu(g, u))
    for approx in ("none", "tanh"):
        m = fusedaot.nn.GeGLU(approx)
        assert torch.equal(m(x), fusedaot.gelu_and_mul(x, approx))
        assert torch.equal(m(g, u), fusedaot.geglu(g, u, approx))
        assert repr(m) == f"GeGLU(approximate='{approx}')"
    assert_close(fusedaot.nn.GeGLU()(x), ref64(lambda t: oracle(True, "none", t), x), TOLERANCES[dtype],
                 mags(True, (x,)))
    assert not list(fusedaot.nn.SwiGLU().parameters())
