"""The benchmarks' JIT baselines choose their kernel as the build's dispatch does (no GPU needed).

benchmarks/harness.py's triton_variant reads aot/specs' C conditions; a condition it could not
read once left every JIT baseline of LayerNorm, RMSNorm's wide loop and RoPE "n/a" unnoticed.
"""
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def harness():
    spec = importlib.util.spec_from_file_location("_bench_harness", ROOT / "benchmarks" / "harness.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# (op, dtype, parameter values, the variant the build's dispatch runs): Triton calls next to
# calls whose conditions carry ! and || because CUDA C++ takes their neighbours.
TRITON_CALLS = [
    ("layer_norm_fwd", "bf16", dict(M=1, N=4096, flags=3), "layer_norm_fwd_bf16_b4096_r1_w8_a16"),
    ("layer_norm_fwd", "bf16", dict(M=2048, N=2048, flags=3), "layer_norm_fwd_bf16_b2048_r2_w4_a16"),
    ("rms_norm_fwd", "bf16", dict(w=1, M=16, N=65536), "rms_norm_fwd_bf16_loop8192_r1_w16_a16"),
    ("rms_norm_fwd", "fp16", dict(w=0, M=4096, N=4096), "rms_norm_fwd_fp16_b4096_r1_w8_nw_a16"),
    ("rope", "bf16", dict(M=1, N=64, D=128, Hq=32, Hk=8, flags=0), "rope_bf16_n64_h8_w1_r72_a16"),
    ("geglu_fwd", "bf16", dict(M=8, N=11008, approximate=1), "geglu_fwd_bf16_tanh_b1024_r1_w4_a16"),
]


@pytest.mark.parametrize("op, dtype, values, expected", TRITON_CALLS, ids=lambda c: str(c))
def test_triton_variant_is_the_dispatched_one(harness, op, dtype, values, expected):
    v, scope = harness.triton_variant(op, dtype, arch="sm90", **values)
    assert v.name == expected
    assert eval(v.grid[0], {}, scope) >= 1


@pytest.mark.parametrize("op, values", [
    ("layer_norm_fwd", dict(M=16384, N=4096, flags=3)),
    ("rms_norm_fwd", dict(w=1, M=4096, N=65536)),
    ("rope", dict(M=16384, N=64, D=128, flags=0)),
])
def test_triton_variant_names_cuda_calls(harness, op, values):
    with pytest.raises(ValueError, match=f"the build runs {op} in CUDA C\\+\\+ here"):
        harness.triton_variant(op, "bf16", arch="sm90", **values)
