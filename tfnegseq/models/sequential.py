"""`SequentialRecommender`: SINE and its self-attentive baselines (next-item models).

One model class for the `sequential` kind's architectures (`SequentialModelConfig`):

- `sasrec`: item + position embeddings (eq. 6's `X = E + P`), `num_blocks` causal
  self-attention blocks (`SubInterestSelfAttention` without sub-interests, which is a
  plain SASRec block, eq. 10), a final layer norm (the official code's), and the score
  `o_t . e_i`. Trained with eq. 15's L1 (BPR against a uniformly sampled item).
- `sasrec_n`: SASRec whose training negatives also include the observed passive
  negative of each target (L1 + lambda_2 L2, §5.1.3).
- `sine`: the sub-interest of each input positive (`SubInterestAssignment`, eq. 3-5,
  from the positive and its nearest passive negative), the beta-weighted blocks (eq.
  6-10), the K projections (eq. 11) and the adaptive fusion score (eq. 12-14); loss eq.
  16: `lambda_1 L1 + lambda_2 L2 + lambda_3 L_dis`.

Training batches (`tfnegseq.data.sequential_input`, ids already embedding rows, 0 =
padding): `inputs`, `input_negatives`, `targets`, `target_negatives`,
`random_negatives` `[B, L]` and `mask` `[B, L]`; the model returns the scores of the
three kinds of target and owns its loss. Evaluation batches (`inputs`,
`input_negatives`, `target` `[B]`, `candidates` `[B, C]`, `exclude` `[B, L]`): the
model returns `target_score` `[B]`, `candidate_scores` `[B, C]` (the paper's protocol)
and `rank` `[B]`, the target's 0-based rank among the whole catalogue (the
vocabulary's kept items, the user's earlier positives in `exclude` left out; ties
pessimistic),
for the full-ranking protocol, so evaluation never holds `[users, items]` scores.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import keras
from keras import ops

from tfnegseq.api_export import register
from tfnegseq.config import validate_section
from tfnegseq.embeddings import EmbeddingTables
from tfnegseq.kinds.sequential.config import SequentialModelConfig
from tfnegseq.layers.sine import (
    AdaptiveFusion,
    SubInterestAssignment,
    SubInterestProjection,
    SubInterestSelfAttention,
)
from tfnegseq.losses import bpr_loss, distance_correlation

TRAIN_KEYS = ("inputs", "input_negatives", "targets", "target_negatives", "random_negatives",
              "mask")


@register
class SequentialRecommender(keras.Model):
    """SINE, SASRec and SASRec-N over a user's positive sequence.

    Args:
        num_items: int. Rows of the item table (the item vocabulary's size: padding row
            0, the kept items, the OOV buckets).
        model: dict. A `SequentialModelConfig` as a dict (validated here).
        catalogue_start: int. Rows `catalogue_start .. num_items - 1` are the catalogue
            that full ranking scores: the vocabulary's kept items, after padding (row
            0) and the OOV buckets (`tfnegseq.data.vocab`). Defaults to 1.
        **kwargs: `keras.Model` keyword arguments.
    """

    def __init__(self, num_items: int, model: dict[str, Any] | None = None,
                 catalogue_start: int = 1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        m = validate_section(SequentialModelConfig, model or {}, "model")
        self.m = m
        self.model_config = dataclasses.asdict(m)
        self.num_items = int(num_items)
        self.catalogue_start = int(catalogue_start)
        if not 1 <= self.catalogue_start < self.num_items:
            raise ValueError(
                f"`catalogue_start` must be in [1, num_items). Received: "
                f"catalogue_start={catalogue_start}, num_items={num_items}")
        self.sine = m.architecture == "sine"
        self.tables = EmbeddingTables()
        self.item_embedding = keras.layers.Embedding(
            num_items, m.embedding_dim, embeddings_initializer="glorot_uniform",
            name="item_embedding")
        self.position_embedding = keras.layers.Embedding(
            m.max_length, m.embedding_dim, name="position_embedding")
        self.embedding_dropout = keras.layers.Dropout(m.dropout)
        self.blocks = [
            SubInterestSelfAttention(
                m.num_heads, dropout=m.dropout, beta=m.beta if self.sine else None,
                beta_mode=m.beta_mode if self.sine else "paper", name=f"block_{i}")
            for i in range(m.num_blocks)
        ]
        self.final_norm = keras.layers.LayerNormalization(epsilon=1e-8, name="final_norm")
        if self.sine:
            self.assignment = SubInterestAssignment(m.num_interests, name="assignment")
            self.projection = SubInterestProjection(name="projection")
            self.fusion = AdaptiveFusion(m.fusion, name="fusion")

    # ------------------------------------------------------------------ parts
    def _items(self, ids: Any) -> Any:
        return self.tables.lookup(self, self.item_embedding, ids, self.compute_dtype)

    def _interests(self, items: Any, negatives_ids: Any, negatives: Any) -> Any:
        """Sub-interest of each positive (eq. 4-5), from its nearest passive negative
        unless `assignment_uses_negatives` is off."""
        if self.m.assignment_uses_negatives:
            return self.assignment(items, negatives, ops.not_equal(negatives_ids, 0))
        return self.assignment(items)

    def encode(self, inputs: dict[str, Any], training: bool | None = None) -> Any:
        """Per-position user states: `[B, L, d]`, or `[B, L, K, d]` for SINE."""
        ids = inputs["inputs"]
        mask = ops.not_equal(ids, 0)
        items = self._items(ids)
        length = ops.shape(ids)[1]
        positions = self.position_embedding(ops.arange(length) + (self.m.max_length - length))
        x = items + ops.cast(positions, items.dtype)
        x = self.embedding_dropout(x, training=training)
        x = ops.where(ops.expand_dims(mask, -1), x, ops.zeros((), x.dtype))
        interests = query = None
        if self.sine:
            negatives = self._items(inputs["input_negatives"])
            interests = self._interests(items, inputs["input_negatives"], negatives)
            if self.m.beta_mode == "official" and training and "targets" in inputs:
                # the official code compares each key with the *target's* sub-interest
                query = self._interests(self._items(inputs["targets"]),
                                        inputs["target_negatives"],
                                        self._items(inputs["target_negatives"]))
        for block in self.blocks:
            x = block(x, mask=mask, interests=interests, query_interests=query,
                      training=training)
        x = self.final_norm(x)
        if self.sine:
            x = self.projection(x, ops.cast(self.assignment.prototypes, x.dtype))
        return x

    def score(self, states: Any, items: Any) -> Any:
        """Scores of items `[..., d]` (one per state) or `[..., C, d]` for states
        `[..., d]` / `[..., K, d]`."""
        if self.sine:
            return self.fusion(states, items)
        if len(items.shape) == len(states.shape):
            return ops.sum(states * items, axis=-1)
        return ops.squeeze(ops.matmul(items, ops.expand_dims(states, -1)), -1)

    # ------------------------------------------------------------------ call
    def call(self, inputs: dict[str, Any], training: bool | None = None) -> dict[str, Any]:
        states = self.encode(inputs, training)
        if "targets" in inputs:  # a training batch: one target per position
            return {
                "positive": self.score(states, self._items(inputs["targets"])),
                "negative": self.score(states, self._items(inputs["random_negatives"])),
                "feedback": self.score(states, self._items(inputs["target_negatives"])),
            }
        last = states[:, -1]  # [B, d] or [B, K, d]: the most recent position
        target = self.score(last, self._items(inputs["target"]))  # [B]
        out = {"target_score": ops.cast(target, "float32")}
        if "candidates" in inputs:
            out["candidate_scores"] = ops.cast(
                self.score(last, self._items(inputs["candidates"])), "float32")
        if "exclude" in inputs:
            out["rank"] = self._full_rank(last, target, inputs["target"], inputs["exclude"])
        return out

    def _full_rank(self, last: Any, target: Any, target_ids: Any, exclude: Any) -> Any:
        """0-based rank of the target among the catalogue rows, rows in `exclude` left
        out; ties are pessimistic (every other catalogue row scoring the same ranks
        above), the default of `tfnegseq.metrics.rank_of_targets`."""
        rows = ops.arange(self.catalogue_start, self.num_items, dtype="int32")
        table = self._items(rows)  # [N, d]
        batch = ops.shape(last)[0]
        table = ops.broadcast_to(table, (batch, *table.shape))  # [B, N, d]
        scores = ops.cast(self.score(last, table), "float32")  # [B, N]
        target = ops.expand_dims(ops.cast(target, "float32"), 1)
        # the user's excluded rows, scattered into [B, num_items] (padding lands in row 0)
        exclude = ops.cast(exclude, "int32")
        length = ops.shape(exclude)[1]
        users = ops.repeat(ops.expand_dims(ops.arange(batch, dtype="int32"), 1), length, axis=1)
        indices = ops.reshape(ops.stack([users, exclude], axis=-1), (-1, 2))
        counts = ops.scatter(indices, ops.ones((batch * length,), "float32"),
                             (batch, self.num_items))
        keep = ops.equal(counts[:, self.catalogue_start:], 0.0)  # [B, N]
        above = ops.logical_and(scores >= target, keep)
        # the target's own row ties with itself: it is not above itself
        own = ops.equal(ops.expand_dims(rows, 0), ops.expand_dims(ops.cast(target_ids, "int32"), 1))
        return ops.sum(ops.cast(ops.logical_and(above, ops.logical_not(own)), "float32"), axis=1)

    # ------------------------------------------------------------------ loss
    def compile(self, optimizer="adam", loss=None, **kwargs: Any):
        """`keras.Model.compile` with the model's own loss (eq. 15-16).

        Raises:
            ValueError: `loss` is given (the model computes its own).
        """
        if loss is not None:
            raise ValueError(
                "SequentialRecommender computes its own loss (BPR, eq. 15-16); "
                f"compile(loss=...) is not accepted. Received: loss={loss!r}")
        super().compile(optimizer=optimizer, **kwargs)

    def get_compile_config(self):
        config = super().get_compile_config()
        if config:
            config = {k: v for k, v in config.items() if k != "loss"}
        return config

    def compile_from_config(self, config):
        config = {k: v for k, v in keras.saving.deserialize_keras_object(config).items()
                  if k != "loss"}
        self.compile(**config)
        if self.built and getattr(self, "optimizer", None) is not None:
            self.optimizer.build(self.trainable_variables)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """L1 (target vs a random item), L2 (target vs its passive negative), L_dis."""
        m = self.m
        mask = ops.cast(x["mask"], "float32")
        positive = ops.cast(y_pred["positive"], "float32")
        l1 = bpr_loss(positive, ops.cast(y_pred["negative"], "float32"), mask)
        feedback_mask = mask * ops.cast(ops.not_equal(x["target_negatives"], 0), "float32")
        l2 = bpr_loss(positive, ops.cast(y_pred["feedback"], "float32"), feedback_mask)
        if m.architecture == "sasrec":
            total = m.lambda_1 * l1
        elif m.architecture == "sasrec_n":
            total = m.lambda_1 * l1 + m.lambda_2 * l2
        else:
            l_dis = distance_correlation(ops.cast(self.assignment.prototypes, "float32"))
            total = m.lambda_1 * l1 + m.lambda_2 * l2 + m.lambda_3 * l_dis
        losses = [total]
        if self.losses:  # regularisers
            losses.append(ops.sum(ops.stack([ops.cast(v, "float32") for v in self.losses])))
        return ops.sum(ops.stack(losses))

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(num_items=self.num_items, model=self.model_config,
                      catalogue_start=self.catalogue_start)
        return config
