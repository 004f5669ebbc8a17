"""Public ops: each module registers its torch.library ops on import."""
from .bias_gelu import bias_gelu
from .fused_add_rms_norm import fused_add_rms_norm
from .rms_norm import rms_norm

__all__ = ["bias_gelu", "fused_add_rms_norm", "rms_norm"]
