"""Public ops: each module registers its torch.library ops on import."""
from .bias_gelu import bias_gelu
from .rms_norm import rms_norm

__all__ = ["bias_gelu", "rms_norm"]
