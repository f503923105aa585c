"""The mixed-polarity CTR model, assembled from `ModelConfig`.

    pos/neg histories --MixedPolaritySequence(L, r, mode)--> items [B,L], polarity [B,L]
    items --item embedding (shared with the target)--> + position embedding -> tokens
    polarity encoding: none | pbe (eq. 2) | tapf (PBE then TAPF, eq. 3-5)
    backbone: din (target attention, sum pooling) | transformer (encoder over tokens
              and the target token)
    head: MLP over [user interest, target, user id, profile and side features] -> p(click)

Inputs are looked-up ids (rows of the embedding tables; 0 = padding), produced by the
tf.data pipeline or, at serving time, by the lookups in the exported graph. Written with
`keras.ops` only, so the same model runs on TensorFlow and on JAX.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops
from keras.src.backend import AutocastScope  # not exported by Keras 3.15's public API

from tfnegseq.api_export import register
from tfnegseq.config import ModelConfig
from tfnegseq.layers.attention import DinAttention
from tfnegseq.layers.polarity import (
    MixedPolaritySequence,
    PolarityBiasEmbedding,
    TargetAwarePolarityFusion,
)
from tfnegseq.layers.transformer import TransformerEncoder
from tfnegseq.optimizers import RowSparseAdam  # noqa: F401  (registered for load_model)


def take_rows(table, ids):
    """`ops.take(table, ids, axis=0)` whose gradient is one dense segment sum.

    The gradient for `table` `[V, d]` is `segment_sum(upstream, ids, V)`: the rows of
    ids that repeat are added before the optimizer sees them, on every backend. (The
    TensorFlow gradient of a gather is `IndexedSlices`; Keras' Adam squares those row
    by row, so a row used `n` times in a batch would get `sum g^2` instead of
    `(sum g)^2` in its second moment, unlike under JAX, and the rows would be summed
    twice, once per moment.)
    """
    @ops.custom_gradient
    def _take(values):
        rows = ops.take(values, ids, axis=0)

        def grad(*args, upstream=None):
            if upstream is None:
                (upstream,) = args
            dim = ops.shape(values)[-1]
            return ops.segment_sum(
                ops.reshape(upstream, (-1, dim)),
                ops.reshape(ids, (-1,)),
                num_segments=values.shape[0],
            )

        return rows, grad

    # Pass a tensor, not the variable: TensorFlow's custom gradient refuses a variable
    # read inside the function. `ops.copy` is that read (compiled code elides the copy).
    return _take(ops.copy(table))


@register
class CtrModel(keras.Model):
    """Mixed-polarity sequence CTR model.

    Args:
        vocab_sizes: dict. Embedding rows per id feature name (`item_id`, `user_id`,
            `user_<f>`, `item_<f>`), from `Vocabulary.size`.
        model: dict. A `ModelConfig` as a dict (so the model serializes to plain JSON).
        side_features: list of str. Names of scalar profile / side features to embed.
        row_sparse_gradients: bool. Look the embedding tables up with a plain
            `ops.take`, whose TensorFlow gradient is row-sparse (`tf.IndexedSlices`),
            for `tfnegseq.optimizers.RowSparseAdam` to update only the rows a batch
            uses. Defaults to False: `take_rows`, a dense gradient (summed repeats).
            Under JAX, where the gradient of a gather is dense, `train_step` is
            `tfnegseq.jax_sparse.train_step` instead, which gets the gradients of the
            looked-up rows and gives the tables the same lazy Adam update.

    Call arguments:
        inputs: dict with `user_id`, `item_id` [B]; `pos_item_id`, `pos_order`,
            `neg_item_id`, `neg_order` [B, H]; and every name in `side_features` [B].

    Returns:
        dict with `probability` [B] (float32) and `logit` [B].
    """

    def __init__(self, vocab_sizes: dict[str, int], model: dict[str, Any],
                 side_features: list[str] | None = None, row_sparse_gradients: bool = False,
                 **kwargs: Any):
        super().__init__(**kwargs)
        self.row_sparse_gradients = bool(row_sparse_gradients)
        self._slice_capture = None  # a jax_sparse.SliceCapture while its step traces
        self.vocab_sizes = dict(vocab_sizes)
        self.model_config = dict(model)
        self.side_features = list(side_features or [])
        m = ModelConfig(**self.model_config)
        self.m = m
        d = m.embedding_dim
        self.sequence = MixedPolaritySequence(m.sequence_length, m.positive_ratio, mode=m.mode,
                                              name="sequence")
        self.item_embedding = keras.layers.Embedding(
            vocab_sizes["item_id"], d, name="item_embedding", dtype="float32",
            embeddings_initializer=keras.initializers.RandomNormal(stddev=0.05),
        )
        self.user_embedding = keras.layers.Embedding(
            vocab_sizes["user_id"], d, name="user_embedding", dtype="float32",
            embeddings_initializer=keras.initializers.RandomNormal(stddev=0.05),
        )
        self.position_embedding = keras.layers.Embedding(
            m.sequence_length, d, name="position_embedding", dtype="float32",
            embeddings_initializer=keras.initializers.RandomNormal(stddev=0.05),
        )
        self.side_embeddings = {
            name: keras.layers.Embedding(vocab_sizes[name], max(4, d // 4), name=f"emb_{name}",
                                        dtype="float32")
            for name in self.side_features
        }
        self.pbe = PolarityBiasEmbedding(name="pbe") if m.polarity in ("pbe", "tapf") else None
        self.tapf = (
            TargetAwarePolarityFusion(
                use_polarity_embedding=m.tapf_polarity_embedding,
                use_gating=m.tapf_gating,
                use_polarity_sign=m.tapf_polarity_sign,
                use_residual=m.tapf_residual,
                use_target_interaction=m.tapf_target_interaction,
                name="tapf",
            )
            if m.polarity == "tapf"
            else None
        )
        if m.backbone == "din":
            self.backbone = DinAttention(units=tuple(m.attention_units), name="din_attention")
        elif m.backbone == "transformer":
            self.backbone = TransformerEncoder(
                num_layers=m.num_layers, num_heads=m.num_heads, ff_dim=2 * d,
                dropout=m.dropout, name="transformer",
            )
        else:
            raise ValueError(
                f"backbone {m.backbone!r} is not available yet; choose 'din' or 'transformer'"
            )
        self.mlp = [keras.layers.Dense(u, activation="relu", name=f"mlp_{i}")
                    for i, u in enumerate(m.mlp_units)]
        self.dropout = keras.layers.Dropout(m.dropout) if m.dropout else None
        self.out = keras.layers.Dense(1, name="logit", dtype="float32")

    @staticmethod
    def _table(layer):
        """An embedding sublayer's float32 table (built on first use, as `Embedding.call`).

        Tables are float32 under any policy and rows are cast to the compute dtype after
        the lookup: a bf16 table would be cast whole every step and the gradients of
        its duplicate rows summed in bf16 (the "embedding trap" of mixed_bfloat16).
        """
        if not layer.built:
            layer.build()
        return layer.embeddings

    @staticmethod
    def _read(table):
        """The float32 value of a table variable. Inside `call` of a model with a mixed
        policy Keras reads every float variable through an autocast scope, which would
        cast the whole table to bf16 every step (and sum its gradient in bf16); the
        table is read outside that scope instead."""
        with AutocastScope(None):
            return table.value  # TensorFlow: the tf.Variable; JAX: the (traced) array

    def _gather(self, table, ids):
        """Float32 rows `table[ids]` `[*ids.shape, d]` (table: a float32 variable)."""
        if "int" not in keras.backend.standardize_dtype(ids.dtype):
            ids = ops.cast(ids, "int32")  # as `Embedding.call` (e.g. symbolic float inputs)
        if self.row_sparse_gradients:
            if self._slice_capture is not None:  # JAX row-sparse train_step
                return self._slice_capture.gather(self, table, ids)
            return ops.take(self._read(table), ids, axis=0)
        return take_rows(self._read(table), ids)

    def table_index(self, table) -> int:
        """The position of an embedding table variable in `trainable_variables`."""
        for index, variable in enumerate(self.trainable_variables):
            if variable is table:
                return index
        raise ValueError(f"{table.path} is not a trainable variable of {self.name}")

    def train_step(self, *args):
        """Keras' step; under JAX with `row_sparse_gradients`, `jax_sparse.train_step`."""
        if self.row_sparse_gradients and keras.backend.backend() == "jax":
            from tfnegseq import jax_sparse

            return jax_sparse.train_step(self, *args)
        return super().train_step(*args)

    def _lookup(self, layer, ids):
        """Rows of an embedding sublayer (float32 table), cast to the compute dtype."""
        return ops.cast(self._gather(self._table(layer), ids), self.compute_dtype)

    def encode_sequence(self, inputs: dict[str, Any], training: bool | None = None):
        """Tokens [B,L,d], target [B,d], polarity [B,L], mask [B,L] (shared with analyses)."""
        items, polarity = self.sequence(
            inputs["pos_item_id"], inputs["pos_order"], inputs["neg_item_id"], inputs["neg_order"]
        )
        # One lookup for the sequence and the target (one gradient segment sum).
        batch, length = ops.shape(items)[0], ops.shape(items)[1]
        ids = ops.concatenate(
            [ops.reshape(items, (-1,)), ops.cast(inputs["item_id"], items.dtype)], axis=0
        )
        rows = self._gather(self._table(self.item_embedding), ids)  # [B * L + B, d] float32
        tokens = ops.reshape(rows[: batch * length], (batch, length, -1))  # [B, L, d]
        position = self._read(self._table(self.position_embedding))  # [L, d] float32
        tokens = tokens + ops.expand_dims(position, 0)  # + pos_k
        tokens = ops.cast(tokens, self.compute_dtype)
        target = ops.cast(rows[batch * length :], self.compute_dtype)  # [B, d]
        if self.pbe is not None:
            tokens = self.pbe(tokens, polarity)
        if self.tapf is not None:
            tokens = self.tapf(tokens, target, polarity)
        mask = ops.not_equal(polarity, 0)  # [B, L]
        return tokens, target, polarity, mask

    def call(self, inputs: dict[str, Any], training: bool | None = None):
        tokens, target, _, mask = self.encode_sequence(inputs, training)
        if self.m.backbone == "din":
            interest = self.backbone(tokens, target, mask)  # [B, d]
        else:
            interest = self.backbone(tokens, target, mask, training=training)  # [B, d]
        parts = [interest, target, self._lookup(self.user_embedding, inputs["user_id"])]
        parts += [self._lookup(self.side_embeddings[n], inputs[n]) for n in self.side_features]
        x = ops.concatenate(parts, axis=-1)
        for layer in self.mlp:
            x = layer(x)
            if self.dropout is not None:
                x = self.dropout(x, training=training)
        logit = ops.squeeze(ops.cast(self.out(x), "float32"), axis=-1)  # [B]
        return {"probability": ops.sigmoid(logit), "logit": logit}

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """Binary cross-entropy on the logit (numerically stable), via the compiled loss."""
        logit = y_pred["logit"] if isinstance(y_pred, dict) else y_pred
        return super().compute_loss(x, y, logit, sample_weight, training)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            vocab_sizes=self.vocab_sizes,
            model=self.model_config,
            side_features=self.side_features,
            row_sparse_gradients=self.row_sparse_gradients,
        )
        return config


def model_inputs(model_cfg: ModelConfig, side_features: list[str]) -> list[str]:
    """The feature names `CtrModel` reads."""
    return ["user_id", "item_id", "pos_item_id", "pos_order", "neg_item_id", "neg_order",
            *side_features]
