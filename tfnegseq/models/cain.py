"""CAIN, assembled from the `cain` kind's `model:` section (paper
`../shared/papers/002_bbf64e76a3eb835d.txt`, §3-4, Figure 2; `docs/design/cain.md`).

    life_item_id --item embedding (shared with the target)--> (+ value-bucket embedding)
        -> lhe [B, N, d]; mask: life_order > 0 (1-based orders; polarity 0 is also a
           neutral event, so it cannot be the mask)
        -> optional PBE / TAPF on the lifelong tokens (`lifelong_polarity`)
    context: tcn   -> MSIA (stacked TCN layers, the major attention on the first, eq. 6,
                      auxiliary target attentions on the later ones, eq. 8-9), the TCN
                      kernels generated per user by PEG where `peg_layers` says (eq. 10-12)
             none  -> the major attention on the raw items (the LAP / SIM / ETA / SDIM /
                      TWIN baselines, Figure 5's -1)
             gru / self_attention -> Table 1's other extractors, then the major attention
    short-term path: `CtrModel`'s mixed-polarity sequence (optional, `short_term`)
    head: MLP over [lifelong interest, short-term interest, target, user, profile, side]
          -> p(click), cross-entropy (eq. 2-3); SIM adds its auxiliary GSU loss.

Written with `keras.ops` only, so the same model runs on TensorFlow and on JAX.
"""

from __future__ import annotations

import math
from typing import Any

import keras
from keras import ops

from tfnegseq.api_export import register
from tfnegseq.keras_internals import scale_loss_for_distribution
from tfnegseq.kinds.cain.config import BEHAVIORAL, GROUPS, MOST_INTERACTED, CainModelConfig
from tfnegseq.layers.attention import DinAttention
from tfnegseq.layers.cain import (
    ContextSelfAttention,
    MultiScopeInterestAggregator,
    PersonalizedExtractorGeneration,
)
from tfnegseq.layers.lifelong import (
    ConsistentTopKAttention,
    HashRetrievalAttention,
    HashSamplingAttention,
    LifelongAttentionPyramid,
    SoftSearchAttention,
)
from tfnegseq.layers.polarity import PolarityBiasEmbedding, TargetAwarePolarityFusion
from tfnegseq.models.ctr import CtrModel


def major_attention(m: Any, name: str = "major") -> keras.layers.Layer:
    """The lifelong attention `m.major_attention` names, sized by the config."""
    kind = m.major_attention
    if kind == "lap":
        return LifelongAttentionPyramid(tuple(m.lap_top_k), m.lifelong_attention_dim,
                                        m.lifelong_heads, name=name)
    if kind == "sim":
        return SoftSearchAttention(m.top_k, m.lifelong_attention_dim, m.lifelong_heads,
                                   name=name)
    if kind == "eta":
        return HashRetrievalAttention(m.top_k, m.hash_bits, m.lifelong_attention_dim,
                                      m.lifelong_heads, name=name)
    if kind == "sdim":
        return HashSamplingAttention(m.sdim_hashes, m.sdim_hash_bits, name=name)
    if kind == "twin":
        return ConsistentTopKAttention(m.top_k, m.lifelong_attention_dim, m.lifelong_heads,
                                       name=name)
    return DinAttention(units=tuple(m.attention_units), name=name)  # "din"


@register
class CainModel(CtrModel):
    """CAIN and the lifelong-attention baselines (one class; the config picks).

    Args:
        vocab_sizes, side_features, row_sparse_gradients: as `CtrModel`.
        model: dict. A `CainModelConfig` as a dict.
        profile_features: list of str. The inputs PEG generates kernels from (eq. 10's
            I): `user_<f>` side features and/or `user_id`, each read through the same
            embedding the head uses, "behavioral" (`behavioral_statistics`) and/or
            "most_interacted" (`most_interacted`, through the `item_<f>` embeddings).
            Needed when `peg_layers` is not "none".
        lifelong_item_features: list of str. The `f` of the `life_item_<f>` lists the
            inputs carry (`samples.lifelong_item_features`); "most_interacted" reads
            them. Each `item_<f>` must be among `side_features`.

    Call arguments:
        inputs: `CtrModel`'s (when `short_term`) plus `life_item_id`, `life_order`,
            `life_value` `[B, N_s]` (N_s >= `lifelong_length`; the last N are read) and
            `life_polarity` when `lifelong_polarity` is not "none" or PEG reads
            "behavioral" or "most_interacted", and `life_item_<f>` (ids looked up in
            `item_<f>`'s vocabulary) for "most_interacted".

    Returns:
        dict with `probability` [B], `logit` [B] and, for SIM, `auxiliary_logit` [B]
        (its GSU's auxiliary CTR head; `compute_loss` adds its cross-entropy weighted
        by `sim_auxiliary_weight`).
    """

    config_class = CainModelConfig
    kind_name = "cain"

    def __init__(self, vocab_sizes: dict[str, int], model: dict[str, Any],
                 side_features: list[str] | None = None,
                 profile_features: list[str] | None = None,
                 lifelong_item_features: list[str] | None = None,
                 row_sparse_gradients: bool = False, **kwargs: Any):
        super().__init__(vocab_sizes, model, side_features=side_features,
                         row_sparse_gradients=row_sparse_gradients, **kwargs)
        self.profile_features = list(profile_features or [])
        self.lifelong_item_features = list(lifelong_item_features or [])
        m = self.m
        d = m.embedding_dim
        if m.peg_layers != "none" and not self.profile_features:
            raise ValueError("peg_layers needs profile_features (PEG's input, eq. 10)")
        missing = [f for f in self.profile_features
                   if f not in GROUPS and f not in self.side_features]
        missing += [f"item_{f}" for f in self.lifelong_item_features
                    if f"item_{f}" not in self.side_features]
        if missing:
            raise ValueError(f"profile_features / lifelong_item_features {missing} are not "
                             f"among side_features {self.side_features} (PEG reads the "
                             "head's embeddings)")
        if MOST_INTERACTED in self.profile_features and not self.lifelong_item_features:
            raise ValueError(f"profile_features '{MOST_INTERACTED}' needs "
                             "lifelong_item_features (the life_item_<f> lists it reads)")
        self.value_boundaries = [float(b) for b in m.lifelong_value_boundaries]
        self.value_embedding = keras.layers.Embedding(
            len(self.value_boundaries) + 1, d, name="value_embedding", dtype="float32",
            embeddings_initializer=keras.initializers.RandomNormal(stddev=0.05),
        ) if self.value_boundaries else None
        self.life_pbe = (PolarityBiasEmbedding(name="life_pbe")
                         if m.lifelong_polarity in ("pbe", "tapf") else None)
        self.life_tapf = (TargetAwarePolarityFusion(name="life_tapf")
                          if m.lifelong_polarity == "tapf" else None)
        self.extractor: Any = None
        self.msia: Any = None
        self.peg: Any = None
        self.major: Any = None
        if m.context == "tcn":
            self.msia = MultiScopeInterestAggregator(
                m.msia_layers, m.context_length, strides=m.strides, later_stride=m.later_stride,
                major_attention=major_attention(m), attention_dim=m.lifelong_attention_dim,
                score_normalization=m.auxiliary_normalization, activation=m.tcn_activation,
                peg_aggregation=m.peg_aggregation, peg_layers=m.peg_layer_indices(),
                name="msia",
            )
            layers = m.peg_layer_indices()
            if layers:
                shapes = self.msia.kernel_shapes(d)
                # "sum": the global kernel is the Glorot start; else the generator's bias
                self.peg = PersonalizedExtractorGeneration(
                    [shapes[n] for n in layers], units=m.peg_units, name="peg",
                    bias_initializer="zeros" if m.peg_aggregation == "sum" else "kernel")
        else:
            self.major = major_attention(m)
            if m.context == "gru":
                # Bidirectional: the TCN sees both sides of an item (our reading of
                # Table 1's "RNN").
                self.extractor = keras.layers.Bidirectional(
                    keras.layers.GRU(d // 2, return_sequences=True), merge_mode="concat",
                    name="gru")
                if d % 2:
                    raise ValueError(f"context 'gru' needs an even embedding_dim. Received: {d}")
            elif m.context == "self_attention":
                self.extractor = ContextSelfAttention(m.lifelong_heads, name="self_attention")
        self.auxiliary_head = (
            [keras.layers.Dense(m.lifelong_attention_dim, activation="relu", name="sim_aux_0"),
             keras.layers.Dense(1, name="sim_aux_logit", dtype="float32")]
            if m.major_attention == "sim" else None
        )

    @property
    def has_short_term(self) -> bool:
        return bool(self.m.short_term)

    def lifelong_tokens(self, inputs: dict[str, Any], target, with_items: bool = False):
        """`(tokens [B, N, d], mask [B, N] bool, polarity [B, N])` of the last N items;
        with `with_items`, also the item embeddings alone `[B, N, d]` (zero at padding,
        before the value embedding and PBE / TAPF): the keys hash retrieval (ETA, SDIM)
        compares with the target item, which carries no value or polarity."""
        n = self.m.lifelong_length
        items = inputs["life_item_id"][:, -n:]
        mask = ops.greater(inputs["life_order"][:, -n:], 0)
        batch, length = ops.shape(items)[0], ops.shape(items)[1]
        rows = self.tables.gather(self, self.tables.table(self.item_embedding),
                                  ops.reshape(items, (-1,)))  # items [B*N]; rows [B*N, d]
        tokens = ops.reshape(rows, (batch, length, -1))  # [B, N, d]
        keep = ops.expand_dims(mask, -1)
        item_rows = (ops.cast(tokens, self.compute_dtype) * ops.cast(keep, self.compute_dtype)
                     if with_items else None)
        if self.value_embedding is not None:
            bucket = self._value_buckets(inputs)
            # -> bucket [B*N]; value_rows [B*N, d]
            value_rows = self.tables.gather(self, self.tables.table(self.value_embedding),
                                            ops.reshape(bucket, (-1,)))
            tokens = tokens + ops.reshape(value_rows, (batch, length, -1))  # [B, N, d]
        tokens = ops.cast(tokens, self.compute_dtype)
        tokens = tokens * ops.cast(keep, tokens.dtype)
        polarity = None
        if self.life_pbe is not None:
            polarity = ops.where(mask, ops.cast(inputs["life_polarity"][:, -n:], "int32"), 0)
            tokens = self.life_pbe(tokens, polarity)
            if self.life_tapf is not None:
                tokens = self.life_tapf(tokens, target, polarity)
        if with_items:
            return tokens, mask, polarity, item_rows
        return tokens, mask, polarity

    def _value_buckets(self, inputs: dict[str, Any]):
        """The bucket of each of the last N `life_value`s `[B, N]` int32: the number of
        `lifelong_value_boundaries` edges <= the value."""
        values = ops.cast(inputs["life_value"][:, -self.m.lifelong_length:], "float32")
        bucket = ops.zeros_like(values, dtype="int32")
        for edge in self.value_boundaries:
            bucket = bucket + ops.cast(ops.greater_equal(values, edge), "int32")
        return bucket

    def behavioral_statistics(self, inputs: dict[str, Any]):
        """PEG's "behavioral" input (Table 5's behavioural statistics; ours: the paper
        does not list them) `[B, 3]`, or `[B, 4]` with `lifelong_value_boundaries`, each
        in [0, 1], over the real events among the last N lifelong items the model reads
        (all before the target, so nothing leaks):

            activity = log(1 + n) / log(1 + N)      n real events (life_order > 0)
            positive share, negative share          life_polarity +1 / -1 among them
            mean value bucket / number of edges     the engagement value's bucket

        A user with no lifelong events gets zeros."""
        n_max = self.m.lifelong_length
        real = ops.cast(ops.greater(inputs["life_order"][:, -n_max:], 0), "float32")
        polarity = ops.cast(inputs["life_polarity"][:, -n_max:], "float32") * real
        count = ops.sum(real, axis=-1)
        per_event = ops.maximum(count, 1.0)
        stats = [ops.log1p(count) / math.log1p(n_max),
                 ops.sum(ops.cast(ops.greater(polarity, 0.0), "float32"), axis=-1) / per_event,
                 ops.sum(ops.cast(ops.less(polarity, 0.0), "float32"), axis=-1) / per_event]
        if self.value_boundaries:
            bucket = ops.cast(self._value_buckets(inputs), "float32")
            stats.append(ops.sum(bucket * real, axis=-1) / per_event
                         / float(len(self.value_boundaries)))
        return ops.cast(ops.stack(stats, axis=-1), self.compute_dtype)

    def most_interacted(self, inputs: dict[str, Any]) -> list[Any]:
        """PEG's "most_interacted" ids (Table 5's "most interacted authors"; ours: the
        most frequent side feature), one int32 `[B]` per `lifelong_item_features` f: the
        `life_item_<f>` id counted most often among the user's positive events
        (`life_polarity` > 0, real) among the last N lifelong items the model reads (all
        before the target). Ties go to the smallest id (the value more frequent in the
        training samples: vocabulary ids are by count). The padding id 0 (a missing
        value) is not counted; a user with no counted event gets 0, the padding row.

        Counted with one scatter-add into `[B, V]` (V the vocabulary size), so memory
        is O(B (N + V)), not O(B N V) as a one-hot count would be."""
        n = self.m.lifelong_length
        positive = ops.logical_and(ops.greater(inputs["life_order"][:, -n:], 0),
                                   ops.greater(inputs["life_polarity"][:, -n:], 0))
        out = []
        for f in self.lifelong_item_features:
            ids = ops.cast(inputs[f"life_item_{f}"][:, -n:], "int32")
            size = int(self.vocab_sizes[f"item_{f}"])
            batch, length = ops.shape(ids)[0], ops.shape(ids)[1]
            counted = ops.cast(ops.logical_and(positive, ops.greater(ids, 0)), "int32")
            rows = ops.repeat(ops.expand_dims(ops.arange(batch, dtype="int32"), 1), length,
                              axis=1)
            # -> [B*N, 2]
            where = ops.stack([ops.reshape(rows, (-1,)), ops.reshape(ids, (-1,))], axis=-1)
            # -> counted [B*N] scattered into [B, V]
            counts = ops.scatter(where, ops.reshape(counted, (-1,)), (batch, size))
            # count * V - id: one maximum per row, at the largest count's smallest id
            # (the count is <= N, so this stays far inside int32 for any real V)
            key = counts * size - ops.expand_dims(ops.arange(size, dtype="int32"), 0)
            out.append(ops.cast(ops.argmax(key, axis=-1), "int32"))
        return out

    def profile(self, inputs: dict[str, Any]):
        """PEG's input I `[B, p]`: the profile features' embeddings (and the behavioural
        statistics, the most interacted values' embeddings), concatenated in
        `profile_features` order."""
        parts = []
        for name in self.profile_features:
            if name == BEHAVIORAL:
                parts.append(self.behavioral_statistics(inputs))
                continue
            if name == MOST_INTERACTED:
                for f, ids in zip(self.lifelong_item_features, self.most_interacted(inputs),
                                  strict=True):
                    parts.append(self._lookup(self.side_embeddings[f"item_{f}"], ids))
                continue
            layer = self.user_embedding if name == "user_id" else self.side_embeddings[name]
            parts.append(self._lookup(layer, inputs[name]))
        return ops.concatenate(parts, axis=-1) if len(parts) > 1 else parts[0]

    def lifelong_interest(self, inputs: dict[str, Any], target, training=None):
        """`(interest [B, D], first-layer items [B, n, f], their mask)` of the lifelong
        sequence (the items and mask feed SIM's auxiliary GSU loss)."""
        tokens, mask, _, item_rows = self.lifelong_tokens(inputs, target, with_items=True)
        major = self.msia.major if self.msia is not None else self.major
        # hash retrieval (ETA, SDIM) compares the item embeddings alone with the target
        keys = item_rows if getattr(major, "uses_retrieval_keys", False) else None
        if self.msia is not None:
            kernels = None
            if self.peg is not None:
                generated = iter(self.peg(self.profile(inputs)))
                layers = set(self.m.peg_layer_indices())
                kernels = [next(generated) if n in layers else None
                           for n in range(self.m.msia_layers)]
            interest, (items, items_mask) = self.msia(tokens, mask, target, kernels,
                                                      return_first_layer=True,
                                                      retrieval_keys=keys)
            return interest, items, items_mask
        items = tokens
        if isinstance(self.extractor, keras.layers.Bidirectional):
            items = self.extractor(tokens, mask=mask, training=training)
            items = items * ops.cast(ops.expand_dims(mask, -1), items.dtype)
        elif self.extractor is not None:
            items = self.extractor(tokens, mask, training=training)
        if keys is not None:  # the attention reads the (contextualised) tokens
            return self.major(items, target, mask, retrieval_keys=keys), items, mask
        return self.major(items, target, mask), items, mask

    # served row by row: the lifelong path has its own candidate-free state
    shares_user_side = False

    def _target(self, inputs: dict[str, Any]):
        return self._lookup(self.item_embedding, inputs["item_id"])

    def call(self, inputs: dict[str, Any], training: bool | None = None):
        if self.has_short_term:
            short, target = self.short_term_interest(inputs, training)
            parts = [short]
        else:
            target, parts = self._target(inputs), []
        life, items, items_mask = self.lifelong_interest(inputs, target, training)
        logit = self.head([life, *parts, target], inputs, training)
        out = {"probability": ops.sigmoid(logit), "logit": logit}
        if self.auxiliary_head is not None:
            # SIM's GSU is trained by an auxiliary CTR task on U_r = sum_t r_t x_t (§3.2).
            major = self.msia.major if self.msia is not None else self.major
            pooled = major.gsu_pooled(items, target, items_mask)
            x = ops.concatenate([pooled, target], axis=-1)
            for layer in self.auxiliary_head:
                x = layer(x)
            out["auxiliary_logit"] = ops.squeeze(ops.cast(x, "float32"), axis=-1)
        return out

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """Cross-entropy on the logit (eq. 3), plus SIM's auxiliary cross-entropy."""
        loss = super().compute_loss(x, y, y_pred, sample_weight, training)
        if isinstance(y_pred, dict) and "auxiliary_logit" in y_pred and y is not None:
            labels = ops.cast(ops.reshape(y, (-1, 1)), "float32")  # [B, 1]
            aux = keras.losses.binary_crossentropy(
                labels, ops.expand_dims(y_pred["auxiliary_logit"], -1), from_logits=True)  # [B]
            if sample_weight is not None:
                weights = ops.cast(ops.reshape(sample_weight, (-1,)), "float32")  # [B]
                aux = ops.sum(aux * weights) / ops.maximum(ops.sum(weights), 1e-12)
            else:
                aux = ops.mean(aux)
            # / replicas under a tf.distribute strategy, as Keras' own loss above
            loss = loss + scale_loss_for_distribution(self.m.sim_auxiliary_weight * aux)
        return loss

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(profile_features=self.profile_features,
                      lifelong_item_features=self.lifelong_item_features)
        return config
