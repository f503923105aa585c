"""The `model:` section of the `ctr` kind (mixed-polarity CTR models)."""

from __future__ import annotations

from dataclasses import field
from typing import Literal

from pydantic import StrictBool, StrictFloat, StrictInt, model_validator
from pydantic.dataclasses import dataclass

from tfnegseq.budget import polarity_budget
from tfnegseq.config import SECTION, ModelSection, at_least, in_range


@dataclass(config=SECTION)
class CtrModelConfig(ModelSection):
    """The mixed-polarity CTR model (`tfnegseq.models.CtrModel`).

    `backbone` lists only the backbones that are built; any other is refused at load.
    """

    kind: Literal["ctr"] = "ctr"
    backbone: Literal["din", "transformer", "onetrans", "hyformer", "mixformer"] = "din"
    polarity: Literal["none", "pbe", "tapf"] = "tapf"
    sequence_length: StrictInt = 100
    positive_ratio: StrictFloat = 0.5
    # How the chosen positives and negatives become the sequence (paper Table 7):
    # "interleaved" (chronological merge, §3.3), "grouped" (all positives, then all
    # negatives, one encoder) or "dual" (a dual-stream encoder: the positives and the
    # negatives are two sequences, each through its own copy of the backbone; the two
    # interests are concatenated before the head). "dual" splits the same budget,
    # floor(r L) positive and floor((1 - r) L) negative slots, and needs both >= 1.
    mode: Literal["interleaved", "grouped", "dual"] = "interleaved"
    # The polarity labels the model reads (paper Figure 8 (c)): "observed", or "random":
    # each real token keeps its item but gets a polarity drawn from a hash of (user id,
    # item id), +1 or -1 with probability 1/2 each, the same at training and evaluation.
    polarity_labels: Literal["observed", "random"] = "observed"
    embedding_dim: StrictInt = 64
    mlp_units: list[StrictInt] = field(default_factory=lambda: [200, 80])
    attention_units: list[StrictInt] = field(default_factory=lambda: [80, 40])
    num_heads: StrictInt = 2
    num_layers: StrictInt = 1
    dropout: StrictFloat = 0.0
    # Unified-block backbones (onetrans, hyformer, mixformer; tfnegseq.layers.unified):
    # the non-sequential features (target item and its side features, user id and
    # profile, context) become `ns_tokens` tokens by OneTrans' Auto-Split (one Dense over
    # their concatenation, split into tokens of width embedding_dim); `num_queries` is
    # HyFormer's global query tokens (num_queries + ns_tokens must divide embedding_dim,
    # for its token mixing); MixFormer needs ns_tokens to divide embedding_dim; `pyramid`
    # is OneTrans' pyramid stacking. `num_layers` and `num_heads` apply to these too.
    ns_tokens: StrictInt = 4
    num_queries: StrictInt = 4
    pyramid: StrictBool = True
    # Where TAPF calibrates the tokens. "encoded" (default): the paper's Figure 2 order
    # (PBE -> sequence encoding -> target-conditioned gating -> weighted aggregation): on
    # the Transformer's encoded sequence outputs, then a softmax target-attention pooling
    # (scores from `aggregation`, a DinAttention). "input": on the embedded tokens, before
    # the backbone (what Table 2 was first run with). DIN has no sequence encoder, so for
    # DIN both placements are the same model. Chosen from the Table 2 re-run with both
    # placements, 5 seeds each (docs/results/tapf_position.md). The unified backbones
    # encode and aggregate in the same attention stack (OneTrans) or interleave the two
    # in every layer (HyFormer, MixFormer), so there TAPF always calibrates the
    # behaviour tokens at the backbone's input, in both placements.
    tapf_position: Literal["input", "encoded"] = "encoded"
    # Two smaller deviations of TAPF from eq. (3)-(4), kept as defaults (Table 2 was run
    # with them) and switchable: the Dense layers `interaction` and `gate` carry biases
    # that the equations do not have (tapf_bias: false removes them); TAPF's gate reads
    # its own uniformly initialised polarity table instead of PBE's zero-initialised one
    # (tapf_shared_polarity: true makes the gate read PBE's table b_p, as eq. 4 writes).
    tapf_bias: StrictBool = True
    tapf_shared_polarity: StrictBool = False
    # TAPF ablation switches (paper Table 3)
    tapf_polarity_embedding: StrictBool = True
    tapf_gating: StrictBool = True
    tapf_polarity_sign: StrictBool = True
    tapf_residual: StrictBool = True
    tapf_target_interaction: StrictBool = True

    @model_validator(mode="after")
    def _check(self) -> CtrModelConfig:
        in_range(self, "positive_ratio", 0.0, 1.0)
        at_least(self, 1, "sequence_length", "embedding_dim", "num_layers")
        in_range(self, "dropout", 0.0, 1.0, high_open=True)
        if self.num_heads < 1 or self.embedding_dim % self.num_heads:
            raise ValueError(
                f"num_heads: must be >= 1 and divide embedding_dim={self.embedding_dim}. "
                f"Received: {self.num_heads}"
            )
        at_least(self, 1, "ns_tokens", "num_queries")
        if self.backbone == "hyformer" and self.embedding_dim % (self.ns_tokens + self.num_queries):
            raise ValueError(
                f"num_queries: num_queries + ns_tokens ({self.num_queries} + {self.ns_tokens}) "
                f"must divide embedding_dim={self.embedding_dim} (HyFormer's token mixing)")
        if self.backbone == "mixformer" and self.embedding_dim % self.ns_tokens:
            raise ValueError(
                f"ns_tokens: must divide embedding_dim={self.embedding_dim} (MixFormer's head "
                f"mixing). Received: {self.ns_tokens}")
        for name in ("mlp_units", "attention_units"):
            if any(u < 1 for u in getattr(self, name)):
                raise ValueError(f"{name}: every entry must be >= 1. Received: {getattr(self, name)}")
        if not self.attention_units:
            raise ValueError("attention_units: needs at least one layer (DIN's activation unit)")
        if self.mode == "dual" and min(polarity_budget(self.positive_ratio,
                                                       self.sequence_length)) < 1:
            raise ValueError(
                f"mode: 'dual' needs at least one positive and one negative slot; "
                f"positive_ratio={self.positive_ratio}, sequence_length={self.sequence_length} "
                f"give {polarity_budget(self.positive_ratio, self.sequence_length)}")
        if sum(polarity_budget(self.positive_ratio, self.sequence_length)) == 0:
            raise ValueError(
                f"sequence_length: floor(r * L) + floor((1 - r) * L) is 0 at sequence_length="
                f"{self.sequence_length}, positive_ratio={self.positive_ratio}: no slot for any "
                "event; raise sequence_length")
        return self
