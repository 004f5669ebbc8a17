"""Cases shared by the tests of the binary elementwise ops (tests/test_add_relu.py,
tests/test_mul_tanh.py): the same argument checks (python/fusedaot/ops/_binary.py) and the same
row layouts (kernels/cuda/elementwise.cuh), so one list of bad calls and one set of layouts,
each test file passing its op's name and its own float64 check.

    check_forward(a, b): runs the op on (a, b) and compares it with the float64 formula
    inputs(shape, dtype, device, broadcast=False): (a, b) of the given layout
"""
from __future__ import annotations

import pytest
import torch

import fusedaot
from conftest import make_tensor, on_foreign_device

# forward shapes: empty, single elements, odd widths (not multiples of any vector width),
# several rows, more than 2^20 elements in one row, leading dimensions
FORWARD_SHAPES = [(0, 8), (1,), (7,), (1, 7), (4097,), (3, 4097), (64, 1000), (2, 3, 4097), (1024, 4096),
                  ((1 << 20) + 3,), (513, 2048)]
MISALIGNED_SHAPES = [(8,), (1, 8), (7, 1000), (33, 4096), (4097,)]
LAYOUT_WIDTHS = (3, 8, 1000, 4097)
BAD_CALLS = 7   # len(bad_calls(...))


def bad_calls(op: str, dev) -> list:
    """(arguments, exception, message) of calls the op must refuse."""
    bf = torch.bfloat16
    a = torch.randn(2, 4096, device=dev, dtype=bf)
    return [
        ((torch.ones(2, 8, dtype=torch.int32, device=dev), torch.ones(8, dtype=torch.int32, device=dev)), TypeError,
         rf"{op}: a must be float16, bfloat16, float32 or float64, got torch\.int32"),
        ((a, torch.ones(4096, dtype=torch.float32, device=dev)), TypeError,
         rf"{op}: b dtype torch\.float32 does not match a dtype torch\.bfloat16"),
        ((a, torch.ones(4095, dtype=bf, device=dev)), ValueError,
         rf"{op}: b has shape \(4095,\) but must be a's shape \(2, 4096\) or \(4096,\)"),
        ((a, torch.ones(1, 4096, dtype=bf, device=dev)), ValueError,
         rf"{op}: b has shape \(1, 4096\) but must be a's shape \(2, 4096\) or \(4096,\)"),
        ((a, torch.ones(3, 4096, dtype=bf, device=dev)), ValueError,
         rf"{op}: b has shape \(3, 4096\) but must be a's shape"),
        ((torch.tensor(1.0, device=dev), torch.tensor(1.0, device=dev)), ValueError,
         rf"{op}: a must have at least one dimension, got a scalar"),
        ((a, 1.0), TypeError, rf"{op}: b must be a torch\.Tensor, got float"),
    ]


def check_bad_call(op: str, device, case: int) -> None:
    args, exc, msg = bad_calls(op, device)[case]
    with pytest.raises(exc, match=msg):
        getattr(fusedaot, op)(*args)


def check_device_errors(op: str) -> None:
    """b on another device than a (needs CUDA), and tensors of a device type torch has but
    fusedaot does not serve."""
    fn = getattr(fusedaot, op)
    if torch.cuda.is_available():
        a = torch.randn(2, 64, device="cuda")
        with pytest.raises(ValueError, match=rf"{op}: b is on cpu but a is on {a.device}"):
            fn(a, torch.ones(64))
    with pytest.raises(ValueError, match=rf"{op}: tensors on 'xla' are not supported; use CUDA or CPU tensors"):
        fn(on_foreign_device(torch.randn(2, 8)), torch.randn(8))


def check_misaligned(check_forward, inputs, shape, dtype, device="cuda") -> None:
    """Pointers one element past a 16-byte boundary: the vectorised variants must not run."""
    n = 1
    for s in shape:
        n *= s
    abuf, bbuf = make_tensor((1 + n,), dtype, device), make_tensor((1 + n,), dtype, device)
    a, b = abuf[1:].view(shape), bbuf[1:].view(shape)
    assert a.data_ptr() % 16 and b.data_ptr() % 16
    check_forward(a, b)
    check_forward(a, inputs(shape, dtype, device)[1])                       # a misaligned only
    check_forward(inputs(shape, dtype, device)[0], b)                       # b misaligned only
    check_forward(a, bbuf[1:1 + shape[-1]])                                 # misaligned broadcast b


def check_layouts(check_forward, n, dtype, device="cuda") -> None:
    """Strided, transposed and stride-0 rows of a and b; the inputs stay unwritten."""
    a = make_tensor((37, n + 5), dtype, device)
    before = a.clone()
    b = make_tensor((n,), dtype, device)
    check_forward(a[:, :n], b)                                                   # odd row stride
    check_forward(a[:, :n], make_tensor((37, n + 64), dtype, device)[:, 8:8 + n])  # both strided
    assert torch.equal(a, before), "the input was written to"
    check_forward(make_tensor((5, 7, n), dtype, device).transpose(0, 1), b)      # leading dims transposed
    check_forward(make_tensor((n, 6), dtype, device).t(), make_tensor((6, n), dtype, device))  # copied
    check_forward(make_tensor((1, n), dtype, device).expand(6, n), b)            # a's row stride 0
    check_forward(make_tensor((6, n), dtype, device), b.expand(6, n))            # b of a's shape, stride 0
    check_forward(make_tensor((6, n), dtype, device), make_tensor((2 * n,), dtype, device)[::2])  # strided b
