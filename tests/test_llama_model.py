"""A real model through fusedaot: a small Llama built by transformers (random weights, local
config, nothing downloaded) with its RMSNorm modules replaced by fusedaot.nn.RMSNorm and its rotary
embedding (modeling_llama.apply_rotary_pos_emb) by fusedaot.apply_rope.  Its logits must match the
unmodified model's.

Tolerance: both models are compared with the same weights run in float64 (the truth).  fusedaot
rounds each norm and rotation once where transformers rounds two or three times in 16-bit dtypes, so
the fused model must be no less accurate than the unmodified one: its largest error against the
truth may exceed the unmodified model's by at most 2x (the largest of 50k logits' errors varies by
tens of percent from one set of roundings to another; a kernel error of even one wrong element in
one head moves the logits far beyond that), and the two models' logits may differ by at most the
sum of their two errors.
"""
from __future__ import annotations

import copy

import pytest
import torch

import fusedaot
import fusedaot.nn

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.requires_cuda


def _config():
    from transformers import LlamaConfig
    config = LlamaConfig(vocab_size=512, hidden_size=256, intermediate_size=688, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         rms_norm_eps=1e-5, tie_word_embeddings=False)
    config._attn_implementation = "eager"
    return config


def _fuse(model) -> int:
    """Replace every Llama RMSNorm by fusedaot.nn.RMSNorm (weights copied); return how many."""
    swaps = []
    for name, module in model.named_modules():
        if type(module).__name__ == "LlamaRMSNorm":
            parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
            swaps.append((parent, name.rpartition(".")[2], module))
    for parent, attr, old in swaps:
        new = fusedaot.nn.RMSNorm(old.weight.shape[0], eps=old.variance_epsilon, device=old.weight.device,
                                  dtype=old.weight.dtype)
        with torch.no_grad():
            new.weight.copy_(old.weight)
        setattr(parent, attr, new)
    return len(swaps)


class FusedRotary:
    """transformers' apply_rotary_pos_emb(q, k, cos, sin, ...) through fusedaot.apply_rope:
    q (B, Hq, S, D) and k (B, Hk, S, D) are read as (B, S, H, D) strided views; cos and sin
    (B, S, D) are per-batch tables (row s of batch b)."""

    def __init__(self):
        self.calls = 0

    def __call__(self, q, k, cos, sin, *args, **kwargs):
        self.calls += 1
        qo, ko = fusedaot.apply_rope(q.transpose(1, 2), k.transpose(1, 2), cos, sin)
        return qo.transpose(1, 2), ko.transpose(1, 2)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("offset", [0, 300], ids=["positions-from-0", "positions-from-300"])
def test_llama_logits_match(dtype, offset, monkeypatch):
    from transformers import LlamaForCausalLM
    from transformers.models.llama import modeling_llama

    torch.manual_seed(0)
    base = LlamaForCausalLM(_config()).eval()
    truth_model = copy.deepcopy(base).to("cuda", torch.float64)
    hf = base.to("cuda", dtype)
    fused = copy.deepcopy(hf)
    assert _fuse(fused) == 2 * 2 + 1   # two per layer and the final norm
    rotary = FusedRotary()
    for module in fused.modules():   # a bound rotary function, where the attention keeps one
        if hasattr(module, "rotary_fn"):
            module.rotary_fn = rotary

    ids = torch.randint(0, 512, (2, 96), device="cuda")
    positions = (torch.arange(96, device="cuda") + offset).expand(2, 96)
    with torch.no_grad():
        truth = truth_model(ids, position_ids=positions).logits
        want = hf(ids, position_ids=positions).logits
        with monkeypatch.context() as m:
            m.setattr(modeling_llama, "apply_rotary_pos_emb", rotary)
            got = fused(ids, position_ids=positions).logits
    assert rotary.calls == 2, "the fused rotary embedding was not called once per layer"
    assert got.dtype == want.dtype and got.shape == want.shape and bool(got.isfinite().all())
    err_hf = (want.double() - truth).abs().max().item()
    err_fused = (got.double() - truth).abs().max().item()
    diff = (got.double() - want.double()).abs().max().item()
    scale = truth.abs().max().item()
    print(f"{dtype}: max |logit| {scale:.3g}; error vs float64: transformers {err_hf:.3g}, fused {err_fused:.3g}; "
          f"fused vs transformers {diff:.3g}")
    assert err_fused <= 2 * err_hf, (err_fused, err_hf)
    assert diff <= err_hf + err_fused, (diff, err_hf, err_fused)
