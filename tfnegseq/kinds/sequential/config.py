"""The `model:` section of the `sequential` kind (SINE and its baselines).

Defaults follow the official SINE code (`tsinghua-fib-lab/RecSys2023-SINE`,
`parameters.py`) where the paper is silent: 2 blocks, 1 head, d = 50, maximum length
200, dropout 0.5, K = 3 sub-interests, distance-correlation weight 1. DIN's activation
unit and head default to the `ctr` kind's (`attention_units` [80, 40], `mlp_units`
[200, 80]).
"""

from __future__ import annotations

from dataclasses import field
from typing import Literal

from pydantic import StrictBool, StrictFloat, StrictInt, model_validator
from pydantic.dataclasses import dataclass

from tfnegseq.config import SECTION, ModelSection, at_least, in_range


@dataclass(config=SECTION)
class SequentialModelConfig(ModelSection):
    """A next-item recommender over one ordered sequence of positives per user.

    `architecture` (`tfnegseq.models.SequentialRecommender`): "sine" (the paper's
    model), "sasrec" (positives only), "sasrec_n" (SASRec whose training negatives also
    include the observed passive negatives, §5.1.3), and two more §5.1.3 baselines over
    the positives only: "gru4rec" (one GRU of width `embedding_dim`) and "din" (target
    attention over the earlier positives, `attention_units`, then an MLP head,
    `mlp_units`). Keys an architecture does not use are accepted and ignored:
    `num_blocks` / `num_heads` serve the self-attentive three; `num_interests`, `beta`,
    `beta_mode`, `fusion` and `assignment_uses_negatives` only sine; `attention_units` /
    `mlp_units` / `din_train_positions` only din. Every architecture trains with
    `lambda_1 L1`; sasrec_n and sine add `lambda_2 L2`, sine `lambda_3 L_dis`.
    """

    kind: Literal["sequential"] = "sequential"
    architecture: Literal["sine", "sasrec", "sasrec_n", "gru4rec", "din"] = "sine"
    embedding_dim: StrictInt = 50
    max_length: StrictInt = 200
    num_blocks: StrictInt = 2
    num_heads: StrictInt = 1
    dropout: StrictFloat = 0.5
    # SINE
    num_interests: StrictInt = 3
    # beta_1 of eq. (8) in (0, 1); null = learnable (beta_2 = 1 - beta_1); with
    # beta_mode "official", the code's `filter` weight of matching keys (> 0, required)
    beta: StrictFloat | None = None
    # "paper": eq. (8)-(9) in training and prediction; "official": the code's weighting
    # (matching keys x beta, others x 1, no renormalisation, training only)
    beta_mode: Literal["paper", "official"] = "paper"
    # eq. (13) "ratio" of sigmoids; "softmax" (the official code); "mean" (w/o AF)
    fusion: Literal["ratio", "softmax", "mean"] = "ratio"
    # false: the assignment ignores passive negatives (Table 4 "w/o negative feedback",
    # with lambda_2 = 0)
    assignment_uses_negatives: StrictBool = True
    # the passive negative paired with a positive: "previous" (the event right before
    # it, the official code) or "window" (the latest skip since the previous positive)
    negative_rule: Literal["previous", "window"] = "previous"
    # evaluation candidates per user (the paper's protocol): the most recent skips of
    # the split's window; raise it to rank against every skip
    max_candidates: StrictInt = 100
    lambda_1: StrictFloat = 1.0
    lambda_2: StrictFloat = 1.0
    lambda_3: StrictFloat = 1.0
    # DIN: hidden sizes of the activation unit (sigmoid, at least one layer) and of the
    # head over [interest, e_i, interest * e_i] (ReLU; empty: a linear head)
    attention_units: list[StrictInt] = field(default_factory=lambda: [80, 40])
    mlp_units: list[StrictInt] = field(default_factory=lambda: [200, 80])
    # DIN: target positions scored per user and training step, drawn uniformly from
    # the user's real targets (fresh each step; a user with fewer scores all of them).
    # Every position attends over the inputs before it, so all L of them cost O(L^2)
    # attention units a user (about 45 s an epoch on MovieLens-100K at L = 200, 2
    # cores); null: every position
    din_train_positions: StrictInt | None = 50
    # full ranking: catalogue items scored at once per user; null = automatic (the whole
    # catalogue, except DIN, whose score costs O(L * attention_units) per item: chunks
    # of about 2^20 / (L * (d + sum(attention_units))) items)
    rank_chunk_size: StrictInt | None = None
    # retrieval signature: top-K over the whole catalogue
    retrieve_k: StrictInt = 100
    # training batches grouped by length (`tfnegseq.data.sequential_input`): users
    # sorted by length within chunks of 4 batches, each batch cut to the smallest of
    # these lengths that holds it (ascending, in [1, max_length]; max_length added);
    # null: max_length / 8, / 4, / 2 and max_length; []: off (every batch padded to
    # max_length, the official code's batches)
    length_buckets: list[StrictInt] | None = None

    @model_validator(mode="after")
    def _check(self) -> SequentialModelConfig:
        at_least(
            self,
            1,
            "embedding_dim",
            "max_length",
            "num_blocks",
            "num_interests",
            "retrieve_k",
            "max_candidates",
        )
        in_range(self, "dropout", 0.0, 1.0, high_open=True)
        if self.num_heads < 1 or self.embedding_dim % self.num_heads:
            raise ValueError(
                f"num_heads: must be >= 1 and divide embedding_dim={self.embedding_dim}. "
                f"Received: {self.num_heads}"
            )
        if self.beta_mode == "paper" and self.beta is not None and not 0.0 < self.beta < 1.0:
            raise ValueError(
                f"beta: must be null (learnable) or in (0, 1) with beta_mode "
                f"'paper'. Received: {self.beta}"
            )
        if self.beta_mode == "official" and (self.beta is None or not self.beta > 0.0):
            raise ValueError(
                f"beta: beta_mode 'official' needs the code's `filter` weight, "
                f"a number > 0. Received: {self.beta}"
            )
        for name in ("lambda_1", "lambda_2", "lambda_3"):
            at_least(self, 0.0, name)
        for name in ("attention_units", "mlp_units"):
            if any(u < 1 for u in getattr(self, name)):
                raise ValueError(
                    f"{name}: every entry must be >= 1. Received: {getattr(self, name)}"
                )
        if not self.attention_units:
            raise ValueError("attention_units: needs at least one layer (DIN's activation unit)")
        if self.length_buckets:
            from tfnegseq.data.sequential import resolve_buckets

            try:
                resolve_buckets(self.max_length, self.length_buckets)
            except ValueError as e:
                raise ValueError(f"length_buckets: {e}") from None
        if self.rank_chunk_size is not None:
            at_least(self, 1, "rank_chunk_size")
        if self.din_train_positions is not None:
            at_least(self, 1, "din_train_positions")
        return self
