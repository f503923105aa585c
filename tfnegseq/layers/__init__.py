"""Keras 3 layers (backend-agnostic, `keras.ops` only), registered for serialization.

    from tfnegseq.layers import MixedPolaritySequence, TargetAwarePolarityFusion
"""

from tfnegseq.layers.attention import DinAttention, token_matmul
from tfnegseq.layers.polarity import (
    MixedPolaritySequence,
    PolarityBiasEmbedding,
    TargetAwarePolarityFusion,
)
from tfnegseq.layers.transformer import TransformerEncoder

__all__ = [
    "DinAttention",
    "MixedPolaritySequence",
    "PolarityBiasEmbedding",
    "TargetAwarePolarityFusion",
    "TransformerEncoder",
    "token_matmul",
]
