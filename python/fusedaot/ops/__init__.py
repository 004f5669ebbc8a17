"""Public ops: each module registers its torch.library ops on import."""
from .bias_gelu import bias_gelu
from .add_relu import add_relu
from .gelu_dropout import gelu_dropout
from .mul_tanh import mul_tanh
from .reduce import reduce_mean_abs, reduce_sum_squared
from .ada_layer_norm import ada_layer_norm
from .layer_norm import layer_norm, layer_norm_relu
from .attention_scores import attention_scores
from .fp8 import dequantize_fp8, quantize_fp8
from .fp8_gemm import fp8_gemm
from .gated_mlp import fused_gated_mlp
from .fused_add_rms_norm import fused_add_rms_norm
from .rms_norm import rms_norm
from .rms_norm_rope import rms_norm_rope
from .rope import apply_rope, apply_rope_
from .swiglu import geglu, gelu_and_mul, silu_and_mul, swiglu

__all__ = ["add_relu", "gelu_dropout", "mul_tanh", "reduce_mean_abs", "reduce_sum_squared", "apply_rope", "apply_rope_", "rms_norm_rope", "ada_layer_norm", "layer_norm", "layer_norm_relu", "attention_scores", "dequantize_fp8", "fp8_gemm", "fused_gated_mlp", "quantize_fp8", "bias_gelu", "fused_add_rms_norm", "geglu", "gelu_and_mul", "rms_norm", "silu_and_mul", "swiglu"]
