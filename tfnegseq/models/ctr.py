"""The mixed-polarity CTR model, assembled from the `ctr` kind's `model:` section.

    pos/neg histories --MixedPolaritySequence(L, r, mode)--> items [B,L], polarity [B,L]
              (mode dual: two sequences, floor(r L) positives and floor((1 - r) L)
              negatives, each through its own copy of the backbone, interests
              concatenated; polarity_labels random: hashed coins instead of the labels)
    items --item embedding (shared with the target)--> + position embedding -> tokens
    polarity encoding: none | pbe (eq. 2) | tapf (PBE then TAPF, eq. 3-5)
    backbone: din (target attention, sum pooling) | transformer (encoder over tokens
              and the target token) | onetrans | hyformer | mixformer (unified blocks,
              tfnegseq.layers.unified: the behaviour tokens and `ns_tokens` non-sequential
              tokens, Auto-Split from [target, user, profile / side features], in one
              backbone; its output tokens, flattened, are the user interest)
    tapf_position: input (TAPF on the embedded tokens, before the backbone) | encoded
              (transformer only: PBE -> encoder over all tokens -> TAPF on the encoded
              sequence -> softmax target-attention pooling, scores from `aggregation`;
              Figure 2's order)
    head: MLP over [user interest, target, user id, profile and side features] -> p(click)

Inputs are looked-up ids (rows of the embedding tables; 0 = padding), produced by the
tf.data pipeline or, at serving time, by the lookups in the exported graph. Written with
`keras.ops` only, so the same model runs on TensorFlow and on JAX.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from tfnegseq.api_export import register
from tfnegseq.budget import polarity_budget
from tfnegseq.config import validate_section
from tfnegseq.embeddings import EmbeddingTables, ZeroLeadingRows
from tfnegseq.kinds.ctr.config import CtrModelConfig
from tfnegseq.layers.attention import DinAttention
from tfnegseq.layers.dropout import CounterDropout
from tfnegseq.layers.polarity import (
    MixedPolaritySequence,
    PolarityBiasEmbedding,
    TargetAwarePolarityFusion,
)
from tfnegseq.layers.transformer import TransformerEncoder
from tfnegseq.layers.unified import HyFormerEncoder, MixFormerEncoder, OneTransEncoder
from tfnegseq.optimizers import RowSparseAdam  # noqa: F401  (registered for load_model)


def random_polarity(items, users, polarity):
    """Polarity `[B, L]` with each real token's (polarity != 0) sign replaced by a coin
    hashed from (user id, item id): +1 or -1 with probability 1/2, the same for the same
    pair in every call (paper Figure 8 (c), "random polarity"). Padding stays 0.

    The hash: h = (a * 40503 + b * 9973) mod 65521 with a, b the ids mod 32749, then
    h * 27893 mod 65521 >= 32761 -> +1 (int32 throughout: no product exceeds 2^31)."""
    a = ops.mod(ops.cast(items, "int32"), 32749)
    b = ops.mod(ops.cast(ops.reshape(users, (-1, 1)), "int32"), 32749)  # [B, 1]
    h = ops.mod(a * 40503 + b * 9973, 65521)
    h = ops.mod(h * 27893, 65521)
    coin = ops.where(ops.greater_equal(h, 32761), 1, -1)
    return ops.cast(ops.where(ops.not_equal(polarity, 0), coin, 0), "int32")


@register
class CtrModel(keras.Model):
    """Mixed-polarity sequence CTR model.

    Args:
        vocab_sizes: dict. Embedding rows per id feature name (`item_id`, `user_id`,
            `user_<f>`, `item_<f>`), from `Vocabulary.size`.
        model: dict. A `CtrModelConfig` (the `model:` section) as a dict, so the model
            serializes to plain JSON; validated like the config file.
        side_features: list of str. Names of scalar profile / side features to embed.
        row_sparse_gradients: bool. Row-sparse embedding gradients for
            `tfnegseq.optimizers.RowSparseAdam` (see `tfnegseq.embeddings.EmbeddingTables`,
            through which every table is read; under JAX `train_step` is its
            row-sparse step). Defaults to False: dense gradients with summed repeats.
        item_rows_multiple: int. The item table's rows rounded up to a multiple of this
            (rows past the vocabulary are never looked up), so `model_parallel` splits
            them evenly over its devices (`tfnegseq.kinds.ctr.item_rows_multiple`).
            Defaults to 1.
        unknown_rows: int. Leading rows of every id table that no kept id maps to
            (padding and the OOV buckets, `1 + vocab.oov_buckets`), zero at
            initialization (`ZeroLeadingRows`). Defaults to 0.

    The model owns its loss: binary cross-entropy on the logit. `compile` takes no
    `loss` (a probability loss such as `"binary_crossentropy"` on the logit would train
    silently on the wrong quantity), and refuses one.

    Call arguments:
        inputs: dict with `user_id`, `item_id` [B]; `pos_item_id`, `pos_order`,
            `neg_item_id`, `neg_order` [B, H]; and every name in `side_features` [B].

    Returns:
        dict with `probability` [B] (float32) and `logit` [B].
    """

    # The `model:` section this class is configured by (a subclass adds its own keys).
    config_class: type = CtrModelConfig
    kind_name = "ctr"

    def __init__(self, vocab_sizes: dict[str, int], model: dict[str, Any],
                 side_features: list[str] | None = None, row_sparse_gradients: bool = False,
                 item_rows_multiple: int = 1, unknown_rows: int = 0, **kwargs: Any):
        super().__init__(**kwargs)
        self.row_sparse_gradients = bool(row_sparse_gradients)
        # leading rows of the id tables no kept id maps to (padding and the OOV
        # buckets, `1 + vocab.oov_buckets`): zero at init (`ZeroLeadingRows`)
        self.unknown_rows = int(unknown_rows)
        # the item table's rows rounded up to a multiple of this (rows past the vocabulary
        # are never looked up): model_parallel splits them evenly over its devices
        self.item_rows_multiple = int(item_rows_multiple)
        self.tables = EmbeddingTables(row_sparse_gradients=self.row_sparse_gradients)
        self.vocab_sizes = dict(vocab_sizes)
        m = validate_section(self.config_class, {**dict(model), "kind": self.kind_name},
                             where=f"{type(self).__name__}(model=...)")
        self.model_config = dict(model)
        self.side_features = list(side_features or [])
        self.m = m
        d = m.embedding_dim
        short = self.has_short_term
        # Construction order is initialisation order (seeded runs reproduce): keep it.
        self.dual = m.mode == "dual"
        # dual-stream: the positive and the negative sequence, [pad, positives | negatives]
        # (floor(r L) and floor((1 - r) L) slots; `_mixed`); else the mixed sequence
        budget = polarity_budget(m.positive_ratio, m.sequence_length)
        self.sequence = (
            None if not short
            else MixedPolaritySequence(budget[0], 1.0, name="sequence")
            if self.dual
            else MixedPolaritySequence(m.sequence_length, m.positive_ratio, mode=m.mode,
                                       name="sequence"))
        self.sequence_negative = (MixedPolaritySequence(budget[1], 0.0, name="sequence_negative")
                                  if short and self.dual else None)
        self.negative_slots = budget[1]
        rows = -(-vocab_sizes["item_id"] // self.item_rows_multiple) * self.item_rows_multiple
        self.item_embedding = keras.layers.Embedding(
            rows, d, name="item_embedding", dtype="float32",
            embeddings_initializer=self._id_initializer(),
        )
        self.user_embedding = keras.layers.Embedding(
            vocab_sizes["user_id"], d, name="user_embedding", dtype="float32",
            embeddings_initializer=self._id_initializer(),
        )
        self.position_embedding = keras.layers.Embedding(
            m.sequence_length, d, name="position_embedding", dtype="float32",
            embeddings_initializer=keras.initializers.RandomNormal(stddev=0.05),
        ) if short else None
        self.side_embeddings = {
            name: keras.layers.Embedding(vocab_sizes[name], max(4, d // 4), name=f"emb_{name}",
                                        dtype="float32",
                                        embeddings_initializer=self._id_initializer("uniform"))
            for name in self.side_features
        }
        self.pbe = (PolarityBiasEmbedding(name="pbe")
                    if short and m.polarity in ("pbe", "tapf") else None)
        self.tapf = (
            TargetAwarePolarityFusion(
                use_polarity_embedding=m.tapf_polarity_embedding,
                use_gating=m.tapf_gating,
                use_polarity_sign=m.tapf_polarity_sign,
                use_residual=m.tapf_residual,
                use_target_interaction=m.tapf_target_interaction,
                use_bias=m.tapf_bias,
                shared_polarity_embedding=m.tapf_shared_polarity,
                name="tapf",
            )
            if short and m.polarity == "tapf"
            else None
        )
        self.backbone: Any = self._make_backbone("") if short else None
        # the dual-stream encoder's second backbone, for the negative sequence
        self.backbone_negative: Any = (self._make_backbone("_negative") if short and self.dual
                                       else None)
        # OneTrans' Auto-Split tokenizer of the non-sequential features
        self.ns_tokenizer = (keras.layers.Dense(m.ns_tokens * d, name="ns_tokenizer")
                             if short and self.unified else None)
        # TAPF after the sequence encoder (Figure 2), then target-attention pooling.
        self.tapf_after_encoder = (
            self.tapf is not None and m.tapf_position == "encoded"
            and m.backbone == "transformer"
        )
        self.aggregation = (
            DinAttention(units=tuple(m.attention_units), name="aggregation")
            if self.tapf_after_encoder else None
        )
        self.aggregation_negative = (
            DinAttention(units=tuple(m.attention_units), name="aggregation_negative")
            if self.tapf_after_encoder and self.dual else None
        )
        self.mlp = [keras.layers.Dense(u, activation="relu", name=f"mlp_{i}")
                    for i, u in enumerate(m.mlp_units)]
        self.dropout = CounterDropout(m.dropout) if m.dropout else None
        self.out = keras.layers.Dense(1, name="logit", dtype="float32")

    def _make_backbone(self, suffix: str) -> Any:
        """The configured backbone layer, named `<backbone><suffix>`."""
        m, d = self.m, self.m.embedding_dim
        if m.backbone == "din":
            return DinAttention(units=tuple(m.attention_units), name=f"din_attention{suffix}")
        if m.backbone == "transformer":
            return TransformerEncoder(num_layers=m.num_layers, num_heads=m.num_heads,
                                      ff_dim=2 * d, dropout=m.dropout, name=f"transformer{suffix}")
        # a unified block (the config refuses any other backbone)
        unified = {"onetrans": (OneTransEncoder, {"pyramid": m.pyramid}),
                   "hyformer": (HyFormerEncoder, {"num_queries": m.num_queries}),
                   "mixformer": (MixFormerEncoder, {})}
        cls, extra = unified[m.backbone]
        return cls(num_layers=m.num_layers, num_heads=m.num_heads, ff_dim=2 * d,
                   dropout=m.dropout, name=f"{m.backbone}{suffix}", **extra)

    def _mixed(self, inputs: dict[str, Any]):
        """(items [B, L], polarity [B, L]) of the short-term sequence: the mixed sequence,
        or for the dual-stream encoder [padding, the floor(r L) slots of the positive stream,
        the floor((1 - r) L) of the negative stream] (the padding when the two sum to
        less than L); with `polarity_labels: random`, each real token's
        polarity replaced by its hashed coin (`random_polarity`)."""
        assert self.sequence is not None, "a model without the short-term path"
        args = (inputs["pos_item_id"], inputs["pos_order"], inputs["neg_item_id"],
                inputs["neg_order"])
        items, polarity = self.sequence(*args)
        if self.sequence_negative is not None:
            neg_items, neg_polarity = self.sequence_negative(*args)
            pad = self.m.sequence_length - self.sequence.length - self.sequence_negative.length
            if pad:  # floor(r L) + floor((1 - r) L) < L: padding slots first
                zeros = ops.zeros((ops.shape(items)[0], pad), "int32")
                items = ops.concatenate([ops.cast(zeros, items.dtype), items], axis=1)
                polarity = ops.concatenate([zeros, polarity], axis=1)
            items = ops.concatenate([items, ops.cast(neg_items, items.dtype)], axis=1)
            polarity = ops.concatenate([polarity, neg_polarity], axis=1)
        if self.m.polarity_labels == "random":
            polarity = random_polarity(items, inputs["user_id"], polarity)
        return items, polarity

    @property
    def unified(self) -> bool:
        """Whether the backbone is a unified block (OneTrans, HyFormer, MixFormer)."""
        return self.m.backbone in ("onetrans", "hyformer", "mixformer")

    @property
    def has_short_term(self) -> bool:
        """Whether the model reads the short-term mixed-polarity sequence (always, here;
        `CainModel` may go without it)."""
        return True

    def compile(self, optimizer="adam", loss=None, **kwargs: Any):
        """`keras.Model.compile` with the model's own loss (cross-entropy on the logit).

        Raises:
            ValueError: `loss` is given (any loss: the model computes its own).
        """
        if loss is not None:
            raise ValueError(
                f"{type(self).__name__} computes its own loss (binary cross-entropy on the "
                f"logit); compile it without `loss`. Received: loss={loss!r}"
            )
        super().compile(optimizer=optimizer,
                        loss=keras.losses.BinaryCrossentropy(from_logits=True), **kwargs)

    def get_compile_config(self):
        """The compile arguments without `loss` (the model sets its own), so
        `keras.saving.load_model` re-compiles it without tripping `compile`'s refusal."""
        config = super().get_compile_config()
        if config:
            config = {k: v for k, v in config.items() if k != "loss"}
        return config

    def compile_from_config(self, config):
        """Re-compiles a loaded model (Keras skips models that override `compile`)."""
        config = {k: v for k, v in keras.saving.deserialize_keras_object(config).items()
                  if k != "loss"}
        self.compile(**config)
        if self.built and getattr(self, "optimizer", None) is not None:
            self.optimizer.build(self.trainable_variables)

    def train_step(self, *args):
        """Keras' step; under JAX with `row_sparse_gradients`, the tables' row-sparse step."""
        if self.tables.uses_jax_step():
            return self.tables.train_step(self, *args)
        return super().train_step(*args)

    def _lookup(self, layer, ids):
        """Rows of an embedding sublayer (float32 table), cast to the compute dtype."""
        return self.tables.lookup(self, layer, ids, self.compute_dtype)

    def _tapf_table(self) -> dict[str, Any]:
        """PBE's polarity table for TAPF's gate when `tapf_shared_polarity` (eq. 4's b_p)."""
        if not self.m.tapf_shared_polarity:
            return {}
        assert self.pbe is not None  # polarity "tapf" builds both
        return {"polarity_embeddings": self.pbe.embeddings.embeddings}

    def _tokens(self, rows, batch, length, polarity):
        """Looked-up item rows `[B * L, d]` -> tokens `[B, L, d]`: + position, the
        compute dtype, PBE (everything before TAPF; none of it reads the candidate)."""
        tokens = ops.reshape(rows, (batch, length, -1))  # [B, L, d]
        position = self.tables.read(self.tables.table(self.position_embedding))  # [L, d] f32
        tokens = ops.cast(tokens + ops.expand_dims(position, 0), self.compute_dtype)  # + pos_k
        if self.pbe is not None:
            tokens = self.pbe(tokens, polarity)
        return tokens

    def encode_sequence(self, inputs: dict[str, Any], training: bool | None = None):
        """Tokens [B,L,d] (PBE applied, TAPF not yet), target [B,d], polarity [B,L],
        mask [B,L] (shared with analyses)."""
        items, polarity = self._mixed(inputs)
        # One lookup for the sequence and the target (one gradient segment sum).
        batch, length = ops.shape(items)[0], ops.shape(items)[1]
        ids = ops.concatenate(
            [ops.reshape(items, (-1,)), ops.cast(inputs["item_id"], items.dtype)], axis=0
        )  # [B*L] sequence ids, then [B] targets: [B*L+B]
        rows = self.tables.gather(self, self.tables.table(self.item_embedding), ids)  # [B*L+B, d]
        tokens = self._tokens(rows[: batch * length], batch, length, polarity)
        target = ops.cast(rows[batch * length :], self.compute_dtype)  # [B, d]
        return tokens, target, polarity, ops.not_equal(polarity, 0)

    def sequence_state(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """What the short-term path computes without the candidate, once per user:
        `tokens` [B, L, d] (lookups, mixed sequence, position, PBE), `polarity`, `mask`
        [B, L] and, for the unified backbones when no TAPF reads the candidate first,
        `cache`: their candidate-free side (OneTrans: every layer's behaviour-token keys
        and values; HyFormer: the sequence encoding's keys and values and the masked
        mean that feeds its query generation; MixFormer: the per-head keys and values;
        `sequence_cache` of each)."""
        items, polarity = self._mixed(inputs)
        batch, length = ops.shape(items)[0], ops.shape(items)[1]
        rows = self.tables.gather(self, self.tables.table(self.item_embedding),
                                  ops.reshape(items, (-1,)))  # items [B*L]; rows [B*L, d]
        state = {"tokens": self._tokens(rows, batch, length, polarity), "polarity": polarity,
                 "mask": ops.not_equal(polarity, 0)}
        if self.unified and self.tapf is None and not self.dual:
            if not self.backbone.built:
                self.backbone.build(state["tokens"].shape,
                                    (None, self.m.ns_tokens, self.m.embedding_dim))
            state["cache"] = self.backbone.sequence_cache(state["tokens"], state["mask"])
        return state

    def call(self, inputs: dict[str, Any], training: bool | None = None):
        interest, target = self.short_term_interest(inputs, training)
        logit = self.head([interest, target], inputs, training)
        return {"probability": ops.sigmoid(logit), "logit": logit}

    # Whether `score_candidates` scores this model (a subclass with more candidate-free
    # state, like CAIN's lifelong path, sets False and is served row by row).
    shares_user_side = True

    def score_candidates(self, users: dict[str, Any], candidates: dict[str, Any],
                         num_candidates, training: bool | None = None):
        """Scores `num_candidates` (C) candidates per user, computing the user side once.

        Args:
            users: the user-level inputs, `[B]` / `[B, H]` (ids looked up).
            candidates: `item_id` and the `item_<f>` side features, `[B * C]` (row-major:
                user b's candidates at rows `b * C .. b * C + C - 1`).
            num_candidates: C (a scalar, static or not).

        Returns:
            `{"probability", "logit"}`, `[B * C]` each: what `call` returns for the rows
            (user b, candidate c), computed with `sequence_state` once per user and the
            candidate-dependent rest (TAPF, the backbone's target-dependent part, the
            head) per row.
        """
        state = self.sequence_state(users)

        def tile(x):
            return ops.repeat(x, num_candidates, axis=0)

        rows = {**{k: tile(v) for k, v in users.items()}, **candidates}
        cache = state.pop("cache", None)
        # the behaviour side per candidate row, unless a unified backbone's cache replaces
        # it (its keys and values are read per user, not copied per candidate)
        state = ({k: tile(v) for k, v in state.items()} if cache is None
                 else dict.fromkeys(state))
        target = self._lookup(self.item_embedding, rows["item_id"])  # [B * C, d]
        interest = self.interest_from_tokens(state["tokens"], target, state["polarity"],
                                             state["mask"], rows, training, cache,
                                             num_candidates)
        logit = self.head([interest, target], rows, training)
        return {"probability": ops.sigmoid(logit), "logit": logit}

    def short_term_interest(self, inputs: dict[str, Any], training: bool | None = None):
        """`(interest [B, d'], target [B, d])` of the short-term mixed-polarity sequence."""
        tokens, target, polarity, mask = self.encode_sequence(inputs, training)
        return self.interest_from_tokens(tokens, target, polarity, mask, inputs, training), target

    def interest_from_tokens(self, tokens, target, polarity, mask, inputs: dict[str, Any],
                             training: bool | None = None, cache: Any = None,
                             num_candidates: Any = 1):
        """The candidate-dependent part: TAPF, the backbone, pooling -> interest [B, d'].

        `cache`: a unified backbone's candidate-free side of B users (`sequence_state`),
        used instead of recomputing it from `tokens` (then unused), for
        `num_candidates` rows per user."""
        if self.tapf is not None and not self.tapf_after_encoder:
            tokens = self.tapf(tokens, target, polarity, **self._tapf_table())
        ns = self.ns_tokens(inputs, target) if self.unified else None
        if not self.dual:
            return self._stream_interest(self.backbone, self.aggregation, tokens, target,
                                         polarity, mask, ns, training, cache, num_candidates)
        # dual-stream: each stream through its own backbone, the interests concatenated
        cut = self.m.sequence_length - self.negative_slots
        return ops.concatenate([
            self._stream_interest(backbone, aggregation, tokens[:, part], target,
                                  polarity[:, part], mask[:, part], ns, training)
            for backbone, aggregation, part in (
                (self.backbone, self.aggregation, slice(None, cut)),
                (self.backbone_negative, self.aggregation_negative, slice(cut, None)))
        ], axis=-1)

    def _stream_interest(self, backbone, aggregation, tokens, target, polarity, mask, ns,
                         training=None, cache: Any = None, num_candidates: Any = 1):
        """One sequence's interest [B, d']: `backbone` over `tokens` (TAPF applied unless
        it follows the encoder), pooled."""
        if self.m.backbone == "din":
            interest = backbone(tokens, target, mask)  # [B, d]
        elif self.unified:
            if cache is not None:
                out = backbone.decode(ns, cache, training=training, candidates=num_candidates)
            else:
                out = backbone(tokens, ns, mask, training=training)  # [B, T', d]
            interest = ops.reshape(out, (-1, out.shape[1] * out.shape[2]))  # [B, T' d]
        elif self.tapf_after_encoder:
            assert self.tapf is not None and aggregation is not None
            length = ops.shape(tokens)[1]
            encoded = backbone(tokens, target, mask, training=training,
                               return_sequence=True)[:, :length]  # [B, L, d]
            calibrated = self.tapf(encoded, target, polarity, **self._tapf_table())  # [B, L, d]
            # Weighted aggregation with softmax-normalised target-attention weights: the
            # encoder's outputs are layer-normalised (|h| ~ 1 per dimension), so DIN's
            # unnormalised sum over L tokens would be ~L times the input placement's
            # scale (measured: mean |interest| 46 vs 0.8 at L = 100 at initialisation).
            _, scores = aggregation(calibrated, target, mask,
                                    return_attention_scores=True)  # [B, L]
            scores = ops.where(mask, ops.cast(scores, "float32"), -1e9)
            weights = ops.softmax(scores, axis=-1) * ops.cast(mask, "float32")  # [B, L]
            weights = ops.cast(weights, calibrated.dtype)
            interest = ops.sum(ops.expand_dims(weights, -1) * calibrated, axis=1)  # [B, d]
        else:
            interest = backbone(tokens, target, mask, training=training)  # [B, d]
        return interest

    @property
    def has_attention_share(self) -> bool:
        """Whether `attention_share` is defined for this model: DIN, OneTrans or the
        Transformer with TAPF after the encoder, over one mixed sequence."""
        return (self.has_short_term and not self.dual
                and (self.m.backbone in ("din", "onetrans") or self.tapf_after_encoder))

    def attention_share(self, inputs: dict[str, Any], return_token_share: bool = False):
        """The share of the backbone's attention on positive tokens, `[B]` float32 (the
        paper's a-bar+ of §4.5.1 and Figure 9; NaN for a row without real tokens):

        - DIN: |w_k| summed over positive tokens over |w_k| summed over real tokens (its
          pooling weights w_k are unnormalised, so their absolute mass);
        - OneTrans: the last layer's NS-query attention (softmax) on the behaviour tokens
          that enter it, summed over heads and NS queries, positive over all behaviour
          mass (the NS keys are left out);
        - the Transformer with `tapf_position: encoded`: the softmax weights of its
          target-attention pooling.

        With `return_token_share`: also the share of positive tokens among the real
        tokens that attention covers, `[B]` (what a+ would be if the attention were
        uniform over those tokens: the baseline a+ is read against).

        Raises:
            ValueError: another backbone, or the dual-stream encoder (no one attention
                over both polarities).
        """
        if not self.has_attention_share:
            raise ValueError(
                f"attention_share: defined for DIN, OneTrans and the Transformer with "
                f"tapf_position 'encoded' over one mixed sequence. Received: backbone="
                f"{self.m.backbone!r}, mode={self.m.mode!r}, tapf_position="
                f"{self.m.tapf_position!r}")
        tokens, target, polarity, mask = self.encode_sequence(inputs)
        if self.tapf is not None and not self.tapf_after_encoder:
            tokens = self.tapf(tokens, target, polarity, **self._tapf_table())
        if self.m.backbone == "din":
            _, w = self.backbone(tokens, target, mask, return_attention_scores=True)
            mass = ops.abs(ops.cast(w, "float32"))  # [B, L]
        elif self.m.backbone == "onetrans":
            _, w = self.backbone(tokens, self.ns_tokens(inputs, target), mask,
                                 return_attention_scores=True)  # [B, h, T, L' + T]
            keys = w.shape[-1] - self.m.ns_tokens
            mass = ops.sum(ops.cast(w, "float32")[..., :keys], axis=(1, 2))  # [B, L']
            polarity = polarity[:, polarity.shape[1] - keys:]
        else:
            assert self.tapf is not None and self.aggregation is not None
            length = ops.shape(tokens)[1]
            encoded = self.backbone(tokens, target, mask, return_sequence=True)[:, :length]
            calibrated = self.tapf(encoded, target, polarity, **self._tapf_table())
            _, scores = self.aggregation(calibrated, target, mask, return_attention_scores=True)
            scores = ops.where(mask, ops.cast(scores, "float32"), -1e9)
            mass = ops.softmax(scores, axis=-1)
        real = ops.cast(ops.not_equal(polarity, 0), "float32")
        positive = ops.cast(ops.greater(polarity, 0), "float32")
        share = ops.sum(mass * positive, axis=1) / ops.sum(mass * real, axis=1)
        if not return_token_share:
            return share
        return share, ops.sum(positive, axis=1) / ops.sum(real, axis=1)

    def ns_tokens(self, inputs: dict[str, Any], target):
        """The unified backbones' non-sequential tokens `[B, ns_tokens, d]`: Auto-Split
        (OneTrans §3.2.1) of [target item, user id, profile / side features]."""
        assert self.ns_tokenizer is not None
        parts = [target, self._lookup(self.user_embedding, inputs["user_id"])]
        parts += [self._lookup(self.side_embeddings[n], inputs[n]) for n in self.side_features]
        flat = self.ns_tokenizer(ops.concatenate(parts, axis=-1))  # [B, T d]
        return ops.reshape(flat, (-1, self.m.ns_tokens, self.m.embedding_dim))  # [B, T, d]

    def head(self, parts: list[Any], inputs: dict[str, Any], training: bool | None = None):
        """The logit `[B]` (float32): the MLP over `parts` (interests, target), the user
        id and the profile / side features."""
        parts = [*parts, self._lookup(self.user_embedding, inputs["user_id"])]
        parts += [self._lookup(self.side_embeddings[n], inputs[n]) for n in self.side_features]
        x = ops.concatenate(parts, axis=-1)
        for layer in self.mlp:
            x = layer(x)
            if self.dropout is not None:
                x = self.dropout(x, training=training)
        return ops.squeeze(ops.cast(self.out(x), "float32"), axis=-1)  # [B]

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """Binary cross-entropy on the logit (numerically stable); `compile` sets it."""
        logit = y_pred["logit"] if isinstance(y_pred, dict) else y_pred
        # [B, 1] each: Keras' cross-entropy averages over the last axis, so [B] labels and
        # logits would give a scalar "per-example" loss, which Keras' reduction leaves
        # unscaled under tf.distribute (each replica's mean summed: twice the gradient
        # on two replicas)
        if y is not None:
            y = ops.reshape(y, (-1, 1))  # [B, 1]
        # -> logit [B, 1]
        return super().compute_loss(x, y, ops.reshape(logit, (-1, 1)), sample_weight, training)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            vocab_sizes=self.vocab_sizes,
            model=self.model_config,
            side_features=self.side_features,
            row_sparse_gradients=self.row_sparse_gradients,
            item_rows_multiple=self.item_rows_multiple,
            unknown_rows=self.unknown_rows,
        )
        return config

    def _id_initializer(self, base: str | None = None) -> Any:
        """A fresh initializer of an id table (`unknown_rows` leading rows zero): base
        None = RandomNormal(0.05), else a Keras initializer name."""
        init = (keras.initializers.RandomNormal(stddev=0.05) if base is None
                else keras.initializers.get(base))
        return ZeroLeadingRows(init, self.unknown_rows) if self.unknown_rows else init

