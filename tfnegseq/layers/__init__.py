"""Keras 3 layers (backend-agnostic, `keras.ops` only), registered for serialization.

    from tfnegseq.layers import MixedPolaritySequence, TargetAwarePolarityFusion
"""

from tfnegseq.layers.attention import DinAttention, token_matmul
from tfnegseq.layers.cain import (
    AuxiliaryTargetAttention,
    ContextSelfAttention,
    MultiScopeInterestAggregator,
    PersonalizedExtractorGeneration,
    TemporalConvolution,
    receptive_field,
)
from tfnegseq.layers.dropout import CounterDropout
from tfnegseq.layers.lifelong import (
    ConsistentTopKAttention,
    HashRetrievalAttention,
    HashSamplingAttention,
    LifelongAttentionPyramid,
    MultiHeadTargetAttention,
    SoftSearchAttention,
)
from tfnegseq.layers.polarity import (
    MixedPolaritySequence,
    PolarityBiasEmbedding,
    TargetAwarePolarityFusion,
)
from tfnegseq.layers.sine import (
    AdaptiveFusion,
    SubInterestAssignment,
    SubInterestProjection,
    SubInterestSelfAttention,
)
from tfnegseq.layers.transformer import TransformerEncoder
from tfnegseq.layers.unified import (
    HyFormerEncoder,
    MixFormerEncoder,
    OneTransEncoder,
    PerTokenDense,
)

__all__ = [
    "AdaptiveFusion",
    "AuxiliaryTargetAttention",
    "ConsistentTopKAttention",
    "ContextSelfAttention",
    "CounterDropout",
    "DinAttention",
    "HashRetrievalAttention",
    "HashSamplingAttention",
    "HyFormerEncoder",
    "LifelongAttentionPyramid",
    "MixFormerEncoder",
    "MixedPolaritySequence",
    "MultiHeadTargetAttention",
    "MultiScopeInterestAggregator",
    "OneTransEncoder",
    "PerTokenDense",
    "PersonalizedExtractorGeneration",
    "PolarityBiasEmbedding",
    "SoftSearchAttention",
    "SubInterestAssignment",
    "SubInterestProjection",
    "SubInterestSelfAttention",
    "TargetAwarePolarityFusion",
    "TemporalConvolution",
    "TransformerEncoder",
    "receptive_field",
    "token_matmul",
]
