"""Modules: drop-in replacements for their torch.nn counterparts."""
from __future__ import annotations

import numbers
from typing import Optional

import torch

from .ops.fused_add_rms_norm import fused_add_rms_norm
from .ops.rms_norm import rms_norm
from .ops.rms_norm_rope import rms_norm_rope
from .ops.ada_layer_norm import ada_layer_norm
from .ops.layer_norm import layer_norm
from .ops.fp8 import quantize_fp8
from .ops.fp8_gemm import check_fast_accum, fp8_gemm
from .ops.gated_mlp import ACTIVATIONS as _GATED_ACTIVATIONS, fused_gated_mlp
from .ops.swiglu import geglu, gelu_and_mul, silu_and_mul, swiglu
from .ops.gelu_dropout import gelu_dropout

__all__ = ["GELUDropout", "FusedRMSNormRoPE", "AdaLayerNorm", "LayerNorm", "RMSNorm", "GeGLU", "SwiGLU", "FP8Linear", "FusedGatedMLP"]


class RMSNorm(torch.nn.Module):
    """Drop-in for torch.nn.RMSNorm (same arguments, same state_dict key "weight", same
    numerics within rounding).  Normalizing over several trailing dimensions flattens them
    into one row (a view where x's layout allows, else one copy).

    eps=None uses fp32's machine epsilon, as torch does for fp16, bf16 and fp32 inputs.
    """

    def __init__(self, normalized_shape, eps=None, elementwise_affine=True, device=None, dtype=None):
        super().__init__()
        if isinstance(normalized_shape, numbers.Integral):
            normalized_shape = (int(normalized_shape),)
        normalized_shape = tuple(int(n) for n in normalized_shape)
        if not normalized_shape:
            raise ValueError("RMSNorm: normalized_shape must name at least one dimension")
        self.normalized_shape = normalized_shape
        self.eps = eps
        self.elementwise_affine = elementwise_affine
        if elementwise_affine:
            self.weight = torch.nn.Parameter(torch.ones(normalized_shape, device=device, dtype=dtype))
        else:
            self.register_parameter("weight", None)

    def reset_parameters(self) -> None:
        if self.weight is not None:
            torch.nn.init.ones_(self.weight)

    def forward(self, x: torch.Tensor, residual: Optional[torch.Tensor] = None):
        """rms_norm(x), or with `residual` the pre-norm decoder's fused step:
        (rms_norm(x + residual), x + residual) in one pass (fusedaot.fused_add_rms_norm)."""
        k = len(self.normalized_shape)
        if tuple(x.shape[x.dim() - k:]) != self.normalized_shape:
            raise ValueError(f"RMSNorm: expected input with trailing dimensions {self.normalized_shape}, "
                             f"got shape {tuple(x.shape)}")
        w = None if self.weight is None else self.weight.reshape(-1)
        rows = x if k == 1 else x.reshape(*x.shape[:-k], -1)
        if residual is None:
            return rms_norm(rows, w, self.eps).view(x.shape)
        if residual.shape != x.shape:
            raise ValueError(f"RMSNorm: residual has shape {tuple(residual.shape)} but x has shape {tuple(x.shape)}")
        res = residual if k == 1 else residual.reshape(rows.shape)
        if w is None:  # no weight to fuse with: the sum, then the norm
            s = rows + res
            return rms_norm(s, None, self.eps).view(x.shape), s.view(x.shape)
        y, s = fused_add_rms_norm(rows, res, w, self.eps)
        return y.view(x.shape), s.view(x.shape)

    def extra_repr(self) -> str:
        return f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}"


class SwiGLU(torch.nn.Module):
    """The activation of a Llama-style gated MLP: silu(gate) * up.  No parameters.

    forward(x): x (..., 2F) is the output of a merged gate/up projection, [gate | up] along the
    last dimension (the vLLM / SGLang `gate_up_proj` layout): returns (..., F), the halves read in
    place.  forward(gate, up): separate (..., F) tensors, e.g. Hugging Face's `gate_proj(x)` and
    `up_proj(x)`.  So a Llama MLP is `down_proj(SwiGLU()(gate_up_proj(x)))` or
    `down_proj(SwiGLU()(gate_proj(x), up_proj(x)))`.
    """

    def forward(self, x: torch.Tensor, up: Optional[torch.Tensor] = None) -> torch.Tensor:
        return silu_and_mul(x) if up is None else swiglu(x, up)


class GeGLU(torch.nn.Module):
    """gelu(gate) * up, the gated MLP activation of GeGLU models; approximate: "none" (erf) or
    "tanh" (Gemma's gelu_pytorch_tanh).  forward(x) takes the packed (..., 2F) [gate | up]
    tensor, forward(gate, up) separate ones; see SwiGLU."""

    def __init__(self, approximate: str = "none"):
        super().__init__()
        if approximate not in ("none", "tanh"):
            raise ValueError(f"GeGLU: approximate must be 'none' or 'tanh', got {approximate!r}")
        self.approximate = approximate

    def forward(self, x: torch.Tensor, up: Optional[torch.Tensor] = None) -> torch.Tensor:
        return gelu_and_mul(x, self.approximate) if up is None else geglu(x, up, self.approximate)

    def extra_repr(self) -> str:
        return f"approximate={self.approximate!r}"


class FP8Linear(torch.nn.Module):
    """y = x @ W^T + b on FP8 tensor cores, for inference (forward only).

    W is stored as float8_e4m3fn with one fp32 scale per output channel (buffers "weight"
    (out, in) and "weight_scale" (out, 1)); x is quantized per row (token) on the fly; the
    output has `dtype`.  Needs the sm89 or sm90 library on a GPU (CPU runs an fp32
    emulation).  Build one from a trained layer with FP8Linear.from_linear(linear).
    use_fast_accum: fusedaot.fp8_gemm's (sm90: tensor-core accumulation without promotion,
    faster at few rows, a few 1e-3 relative error at large K).  A gradient through it raises an error.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None,
                 dtype=torch.bfloat16, use_fast_accum: bool = False):
        super().__init__()
        if dtype not in (torch.bfloat16, torch.float16, torch.float32):
            raise TypeError(f"FP8Linear: dtype (the output's) must be bfloat16, float16 or float32, got {dtype}")
        check_fast_accum("FP8Linear", use_fast_accum)
        self.in_features, self.out_features, self.dtype = int(in_features), int(out_features), dtype
        self.use_fast_accum = use_fast_accum
        w = torch.empty(self.out_features, self.in_features, device=device, dtype=torch.float32)
        torch.nn.init.kaiming_uniform_(w, a=5 ** 0.5)  # nn.Linear's initialisation
        q, s = quantize_fp8(w, "row")
        self.register_buffer("weight", q)
        self.register_buffer("weight_scale", s)
        if bias:
            bound = 1 / self.in_features ** 0.5 if self.in_features else 0.0
            self.register_buffer("bias", torch.empty(self.out_features, device=device, dtype=dtype).uniform_(-bound, bound))
        else:
            self.register_buffer("bias", None)

    @classmethod
    def from_linear(cls, linear: torch.nn.Linear, dtype=None, use_fast_accum: bool = False) -> "FP8Linear":
        """An FP8Linear computing `linear` with its weight quantized per output channel;
        dtype: the output's (default: linear's, fp32 for a float64 layer); use_fast_accum:
        see FP8Linear."""
        w = linear.weight.detach()
        if w.dtype not in (torch.bfloat16, torch.float16, torch.float32):
            w = w.float()
        if dtype is None:
            dtype = w.dtype
        if dtype not in (torch.bfloat16, torch.float16, torch.float32):
            raise TypeError(f"FP8Linear: dtype (the output's) must be bfloat16, float16 or float32, got {dtype}")
        check_fast_accum("FP8Linear", use_fast_accum)
        module = cls.__new__(cls)
        torch.nn.Module.__init__(module)
        module.in_features, module.out_features, module.dtype = linear.in_features, linear.out_features, dtype
        module.use_fast_accum = use_fast_accum
        q, s = quantize_fp8(w, "row")
        module.register_buffer("weight", q)
        module.register_buffer("weight_scale", s)
        module.register_buffer("bias", None if linear.bias is None else linear.bias.detach().to(dtype).clone())
        return module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fp8_gemm(x, self.weight, None, self.weight_scale, out_dtype=self.dtype, bias=self.bias,
                        use_fast_accum=self.use_fast_accum)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, dtype={self.dtype}, use_fast_accum={self.use_fast_accum}")


class FusedGatedMLP(torch.nn.Module):
    """A Llama-style gated MLP: down_proj(act(gate_proj(x)) * up_proj(x)), the gate and up
    projections and the activation in one fusedaot.fused_gated_mlp kernel, down_proj
    through torch.  Submodules gate_proj, up_proj (hidden -> intermediate) and down_proj
    (intermediate -> hidden) are bias-free nn.Linear layers, as in Hugging Face's LlamaMLP,
    so their state_dict keys match.  activation: "silu" | "gelu" | "gelu_tanh".
    """

    def __init__(self, hidden_size: int, intermediate_size: int, activation: str = "silu", device=None,
                 dtype=None):
        super().__init__()
        if activation not in _GATED_ACTIVATIONS:
            raise ValueError(f"FusedGatedMLP: activation must be 'silu', 'gelu' or 'gelu_tanh', got {activation!r}")
        self.hidden_size, self.intermediate_size, self.activation = hidden_size, intermediate_size, activation
        kw = dict(bias=False, device=device, dtype=dtype)
        self.gate_proj = torch.nn.Linear(hidden_size, intermediate_size, **kw)
        self.up_proj = torch.nn.Linear(hidden_size, intermediate_size, **kw)
        self.down_proj = torch.nn.Linear(intermediate_size, hidden_size, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = fused_gated_mlp(x, self.gate_proj.weight, self.up_proj.weight, self.activation)
        return self.down_proj(h)

    def extra_repr(self) -> str:
        return f"hidden_size={self.hidden_size}, intermediate_size={self.intermediate_size}, activation={self.activation!r}"


class LayerNorm(torch.nn.Module):
    """Drop-in for torch.nn.LayerNorm (same arguments, same state_dict keys "weight" and "bias",
    same numerics within rounding), with an optional fused activation: activation="relu" gives
    relu(layer_norm(x)) in one kernel.  Normalizing over several trailing dimensions flattens
    them into one row (a view where x's layout allows, else one copy).  The parameters may be
    kept in fp32 while x is fp16 or bf16.
    """

    def __init__(self, normalized_shape, eps: float = 1e-5, elementwise_affine: bool = True, bias: bool = True,
                 device=None, dtype=None, *, activation: Optional[str] = None):
        super().__init__()
        if isinstance(normalized_shape, numbers.Integral):
            normalized_shape = (int(normalized_shape),)
        normalized_shape = tuple(int(n) for n in normalized_shape)
        if not normalized_shape:
            raise ValueError("LayerNorm: normalized_shape must name at least one dimension")
        if activation not in (None, "relu"):
            raise ValueError(f"LayerNorm: activation must be None or 'relu', got {activation!r}")
        self.normalized_shape = normalized_shape
        self.eps = eps
        self.elementwise_affine = elementwise_affine
        self.activation = activation
        if elementwise_affine:
            self.weight = torch.nn.Parameter(torch.ones(normalized_shape, device=device, dtype=dtype))
            if bias:
                self.bias = torch.nn.Parameter(torch.zeros(normalized_shape, device=device, dtype=dtype))
            else:
                self.register_parameter("bias", None)
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    def reset_parameters(self) -> None:
        if self.weight is not None:
            torch.nn.init.ones_(self.weight)
        if self.bias is not None:
            torch.nn.init.zeros_(self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = len(self.normalized_shape)
        if tuple(x.shape[x.dim() - k:]) != self.normalized_shape:
            raise ValueError(f"LayerNorm: expected input with trailing dimensions {self.normalized_shape}, "
                             f"got shape {tuple(x.shape)}")
        if k == 1:
            return layer_norm(x, self.weight, self.bias, self.eps, self.activation)
        w = None if self.weight is None else self.weight.reshape(-1)
        b = None if self.bias is None else self.bias.reshape(-1)
        return layer_norm(x.reshape(*x.shape[:-k], -1), w, b, self.eps, self.activation).view(x.shape)

    def extra_repr(self) -> str:
        act = "" if self.activation is None else f", activation={self.activation!r}"
        return f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}{act}"


class AdaLayerNorm(torch.nn.Module):
    """DiT's adaptive LayerNorm: LayerNorm without affine parameters, modulated by a
    conditioning embedding through SiLU and a linear layer (DiT's adaLN_modulation):

        shift, scale = linear(silu(c)).chunk(2, dim=-1)      (DiT's order: shift first)
        y = layer_norm(x) * (1 + scale) + shift               (fusedaot.ada_layer_norm)

    x: (B, S, N) (or (B, ..., N)).  c: (B, conditioning_dim) modulates per sample, c of x's
    leading shape (B, S, conditioning_dim) per token, (conditioning_dim,) per tensor.  The chunks
    of the linear's output go to the kernel as strided views, without a copy.  The linear keeps
    nn.Linear's initialisation; DiT zeroes it in its model's init (adaLN-Zero), which makes a fresh
    module a plain LayerNorm.  Its dtype may be fp32 while x is fp16 or bf16.  For scale and shift
    computed elsewhere, call fusedaot.ada_layer_norm(x, scale, shift) directly.
    """

    def __init__(self, hidden_size: int, conditioning_dim: Optional[int] = None, eps: float = 1e-6,
                 bias: bool = True, device=None, dtype=None):
        super().__init__()
        self.hidden_size = int(hidden_size)
        self.conditioning_dim = int(conditioning_dim if conditioning_dim is not None else hidden_size)
        self.eps = eps
        self.linear = torch.nn.Linear(self.conditioning_dim, 2 * self.hidden_size, bias=bias, device=device,
                                      dtype=dtype)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.linear(torch.nn.functional.silu(c)).chunk(2, dim=-1)
        if shift.dim() == 2 and x.dim() >= 3:  # per sample: (B, N) -> (B, 1, ..., 1, N), still views
            index = (slice(None),) + (None,) * (x.dim() - 2)
            shift, scale = shift[index], scale[index]
        return ada_layer_norm(x, scale, shift, self.eps)

    def extra_repr(self) -> str:
        return f"{self.hidden_size}, conditioning_dim={self.conditioning_dim}, eps={self.eps}"


class FusedRMSNormRoPE(torch.nn.Module):
    """RMSNorm with a learned weight, then rotary embedding, in one kernel: the QK-norm + RoPE of
    OLMo-2 (per_head=False: the norm over the whole projection, weight (hidden_size,)) and Qwen3
    (per_head=True: over each head, weight (head_dim,)).

    forward(x, cos, sin, position_ids=None): x (B, S, hidden_size) or (T, hidden_size) with
    hidden_size = heads * head_dim; cos, sin, position_ids as for fusedaot.apply_rope.  Returns
    x's shape.  The weight starts at ones, like torch.nn.RMSNorm's.
    """

    def __init__(self, hidden_size: int, head_dim: int, eps: float = 1e-6, per_head: bool = False,
                 interleaved: bool = False, rotary_dim: Optional[int] = None, device=None, dtype=None):
        super().__init__()
        hidden_size, head_dim = int(hidden_size), int(head_dim)
        if head_dim <= 0 or hidden_size % head_dim:
            raise ValueError(f"FusedRMSNormRoPE: hidden_size {hidden_size} is not a multiple of head_dim {head_dim}")
        self.hidden_size, self.head_dim, self.eps = hidden_size, head_dim, eps
        self.per_head, self.interleaved, self.rotary_dim = bool(per_head), bool(interleaved), rotary_dim
        shape = (head_dim,) if per_head else (hidden_size,)
        self.weight = torch.nn.Parameter(torch.ones(shape, device=device, dtype=dtype))

    def reset_parameters(self) -> None:
        torch.nn.init.ones_(self.weight)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                position_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        return rms_norm_rope(x, self.weight, cos, sin, head_dim=self.head_dim, eps=self.eps, per_head=self.per_head,
                             position_ids=position_ids, interleaved=self.interleaved, rotary_dim=self.rotary_dim)

    def extra_repr(self) -> str:
        return (f"{self.hidden_size}, head_dim={self.head_dim}, eps={self.eps}, per_head={self.per_head}, "
                f"interleaved={self.interleaved}, rotary_dim={self.rotary_dim}")


class GELUDropout(torch.nn.Module):
    """torch.nn.Dropout(p)(torch.nn.GELU()(x)) in one kernel: dropout in training mode only.
    The mask comes from torch's generator (see fusedaot.gelu_dropout) and is regenerated, not
    stored, for the backward."""

    def __init__(self, p: float = 0.5):
        super().__init__()
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p < 1.0:
            raise ValueError(f"GELUDropout: p must be a number in [0, 1), got {p!r}")
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return gelu_dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"
