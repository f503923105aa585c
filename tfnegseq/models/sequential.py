"""`SequentialRecommender`: SINE and its baselines (next-item models).

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
- `gru4rec` (§5.1.3, Hidasi et al. 2016): item embeddings, dropout, one
  `keras.layers.GRU` of width d over the positives (padding masked: a left-padded
  row's state at each real position is the state of its unpadded sequence), dropout,
  and the score `o_t . e_i`; L1.
- `din` (§5.1.3, Zhou et al. 2018) in the sequential setting: the item scored is the
  query of a `DinAttention` (MLP on `[k, q, k - q, k * q]`, no softmax) over the input
  positives at positions `<= t` for the target of position `t` (causal; every input
  at evaluation), pooled into `v = sum_j a_j k_j`; the score is an MLP head
  (`mlp_units`, ReLU, then a linear unit) over `[v, e_i, v * e_i]`, as DIN scores the
  concatenated interest and target rather than a dot product. L1. Scoring every
  target position costs O(L^2) attention units per user; `din_train_positions` (default
  50) draws that many real target positions per user and step instead. Its user state
  depends on the item, so scoring N items costs O(N L) attention units per user:
  full ranking scans the catalogue in chunks (`rank_chunk_size`).

Training batches (`tfnegseq.data.sequential_input`, ids already embedding rows, 0 =
padding): `inputs`, `input_negatives`, `targets`, `target_negatives`,
`random_negatives` `[B, L]` and `mask` `[B, L]`, and with length grouping the loss
scales `loss_scale` and `feedback_scale` `[B]`; the model returns the scores
`positive`, `negative` (the random item) and `feedback` (the passive negative) `[B, L]`
and owns its loss. Evaluation batches (`inputs`, `input_negatives`, `target` `[B]`,
`candidates` `[B, C]`, `exclude` `[B, L]`): the model returns `target_score` `[B]`,
`candidate_scores` `[B, C]` (the paper's protocol) and `rank` `[B]`, the target's
0-based rank among the whole catalogue (the vocabulary's kept items, the rows in
`exclude` left out; ties pessimistic), for the full-ranking protocol, so evaluation
never holds `[users, items]` scores beyond one chunk.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import keras
from keras import ops

from tfnegseq.api_export import register
from tfnegseq.config import validate_section
from tfnegseq.embeddings import EmbeddingTables
from tfnegseq.keras_internals import scale_loss_for_distribution
from tfnegseq.kinds.sequential.config import SequentialModelConfig
from tfnegseq.layers.attention import DinAttention
from tfnegseq.layers.dropout import CounterDropout
from tfnegseq.layers.sine import (
    AdaptiveFusion,
    SubInterestAssignment,
    SubInterestProjection,
    SubInterestSelfAttention,
)
from tfnegseq.losses import bpr_loss, distance_correlation, sine_loss

TRAIN_KEYS = (
    "inputs",
    "input_negatives",
    "targets",
    "target_negatives",
    "random_negatives",
    "mask",
)
SELF_ATTENTIVE = ("sine", "sasrec", "sasrec_n")
# DIN's automatic full-ranking chunk: about this many attention elements per user
DIN_RANK_ELEMENTS = 1 << 20


@register
class SequentialRecommender(keras.Model):
    """SINE, SASRec, SASRec-N, GRU4Rec and DIN over a user's positive sequence.

    Args:
        num_items: int. Rows of the item table (the item vocabulary's size: padding row
            0, the kept items, the OOV buckets).
        model: dict. A `SequentialModelConfig` as a dict (validated here).
        catalogue_start: int. Rows `catalogue_start .. num_items - 1` are the catalogue
            that full ranking scores: the vocabulary's kept items, after padding (row
            0) and the OOV buckets (`tfnegseq.data.vocab`). Defaults to 1.
        **kwargs: `keras.Model` keyword arguments.

    Call arguments:
        inputs: dict. A training batch (it has `targets`) or an evaluation batch (module
            docstring).
        training: bool or None. Dropout (and SINE's official-mode beta). Defaults to
            None.

    Returns:
        Training: `{"positive", "negative", "feedback"}` `[B, L]` (DIN: no
        `feedback`; with `din_train_positions` set and the batch width below it or
        unknown when traced (length-grouped batches), `[B, T]` scores of the drawn
        target positions plus `positions` and `mask`; a batch with at most T real
        targets per user has them all drawn). Evaluation:
        `{"target_score"}` `[B]`, with `candidate_scores` `[B, C]` when `candidates`
        is given and `rank` `[B]` (float32) when `exclude` is.

    Example:

    ```python
    model = SequentialRecommender(1000, {"architecture": "sasrec", "max_length": 50})
    model.compile(optimizer="adam")
    model.fit(train_ds)  # tfnegseq.data.sequential_input batches
    model.predict(eval_ds)["rank"]
    ```
    """

    def __init__(
        self,
        num_items: int,
        model: dict[str, Any] | None = None,
        catalogue_start: int = 1,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        m = validate_section(SequentialModelConfig, model or {}, "model")
        self.m = m
        self.model_config = dataclasses.asdict(m)
        self.num_items = int(num_items)
        self.catalogue_start = int(catalogue_start)
        if not 1 <= self.catalogue_start < self.num_items:
            raise ValueError(
                f"`catalogue_start` must be in [1, num_items). Received: "
                f"catalogue_start={catalogue_start}, num_items={num_items}"
            )
        self.architecture = m.architecture
        self.sine = m.architecture == "sine"
        self.din = m.architecture == "din"
        self.tables = EmbeddingTables()
        self.item_embedding = keras.layers.Embedding(
            num_items,
            m.embedding_dim,
            embeddings_initializer="glorot_uniform",
            name="item_embedding",
        )
        self.embedding_dropout = CounterDropout(m.dropout)
        if m.architecture in SELF_ATTENTIVE:
            self.position_embedding = keras.layers.Embedding(
                m.max_length, m.embedding_dim, name="position_embedding"
            )
            # SASRec passes no sub-interests, so beta never applies: a fixed value keeps
            # the block from creating an unused learnable `beta_logit`
            self.blocks = [
                SubInterestSelfAttention(
                    m.num_heads,
                    dropout=m.dropout,
                    beta=m.beta if self.sine else 0.5,
                    beta_mode=m.beta_mode if self.sine else "paper",
                    name=f"block_{i}",
                )
                for i in range(m.num_blocks)
            ]
            self.final_norm = keras.layers.LayerNormalization(epsilon=1e-8, name="final_norm")
        if self.sine:
            self.assignment = SubInterestAssignment(m.num_interests, name="assignment")
            self.projection = SubInterestProjection(name="projection")
            self.fusion = AdaptiveFusion(m.fusion, name="fusion")
        if m.architecture == "gru4rec":
            # no cuDNN: TensorFlow's cuDNN GRU accepts only right-padded masks (ours are
            # left-padded, and a user may be all padding); JAX's has no masked form
            self.gru = keras.layers.GRU(
                m.embedding_dim, return_sequences=True, use_cudnn=False, name="gru"
            )
            self.output_dropout = CounterDropout(m.dropout)
        if self.din:
            self.attention = DinAttention(m.attention_units, name="attention")
            self.head = [
                keras.layers.Dense(u, activation="relu", name=f"mlp_{i}")
                for i, u in enumerate(m.mlp_units)
            ]
            self.logit = keras.layers.Dense(1, name="logit")
            # draws the target positions a training step scores (`din_train_positions`)
            self.position_seed = keras.random.SeedGenerator(name="position_seed")

    # ------------------------------------------------------------------ parts
    def _items(self, ids: Any) -> Any:
        return self.tables.lookup(self, self.item_embedding, ids, self.compute_dtype)

    def _interests(self, items: Any, negatives_ids: Any, negatives: Any) -> Any:
        """Sub-interest of each positive (eq. 4-5), from its nearest passive negative
        unless `assignment_uses_negatives` is off."""
        if self.m.assignment_uses_negatives:
            return self.assignment(items, negatives, ops.not_equal(negatives_ids, 0))
        return self.assignment(items)

    def hidden_states(self, inputs: dict[str, Any], training: bool | None = None) -> Any:
        """Per-position states `o_t` `[B, L, d]`, zero at padding: the last block's
        (SASRec, SINE before eq. 11's projection) or the GRU's output; for DIN, the
        embedded inputs (its keys; DIN's user state depends on the item scored)."""
        ids = inputs["inputs"]
        mask = ops.not_equal(ids, 0)
        items = self._items(ids)
        zero = ops.zeros((), items.dtype)
        if self.architecture == "gru4rec":
            x = self.embedding_dropout(items, training=training)
            # masked steps carry the state over, so left padding leaves the zero state
            x = self.gru(x, mask=mask, training=training)  # [B, L, d]
            x = self.output_dropout(x, training=training)
            return ops.where(ops.expand_dims(mask, -1), x, zero)
        if self.din:
            x = self.embedding_dropout(items, training=training)
            return ops.where(ops.expand_dims(mask, -1), x, zero)
        length = ops.shape(ids)[1]
        positions = self.position_embedding(ops.arange(length) + (self.m.max_length - length))
        x = items + ops.cast(positions, items.dtype)
        x = self.embedding_dropout(x, training=training)
        x = ops.where(ops.expand_dims(mask, -1), x, zero)
        interests = query = None
        if self.sine:
            negatives = self._items(inputs["input_negatives"])
            interests = self._interests(items, inputs["input_negatives"], negatives)
            if self.m.beta_mode == "official" and training and "targets" in inputs:
                # the official code compares each key with the *target's* sub-interest
                query = self._interests(
                    self._items(inputs["targets"]),
                    inputs["target_negatives"],
                    self._items(inputs["target_negatives"]),
                )
        for block in self.blocks:
            x = block(x, mask=mask, interests=interests, query_interests=query, training=training)
        return self.final_norm(x)

    def encode(self, inputs: dict[str, Any], training: bool | None = None) -> Any:
        """Per-position user states: `[B, L, d]`, or `[B, L, K, d]` for SINE (eq. 11);
        DIN's keys for DIN (`hidden_states`)."""
        x = self.hidden_states(inputs, training)
        if self.sine:
            x = self.projection(x, ops.cast(self.assignment.prototypes, x.dtype))
        return x

    def score(self, states: Any, items: Any) -> Any:
        """Scores of items `[..., d]` (one per state) or `[..., C, d]` for states
        `[..., d]` / `[..., K, d]` (SASRec, SASRec-N, GRU4Rec, SINE; DIN scores through
        `call`, its state depends on the item)."""
        if self.din:
            raise ValueError(
                "`score` does not apply to DIN (its user state depends on "
                "the item scored); call the model on a batch instead."
            )
        if self.sine:
            return self.fusion(states, items)
        if len(items.shape) == len(states.shape):
            return ops.sum(states * items, axis=-1)
        return ops.squeeze(ops.matmul(items, ops.expand_dims(states, -1)), -1)

    def _din_scores(self, keys: Any, valid: Any, queries: Any) -> Any:
        """DIN scores `[B, Q]` of the items `queries` `[B, Q, d]` (Q may be dynamic, as
        in the export's signatures), each attending over `keys` `[B, L, d]` where
        `valid` `[B, Q, L]` is true."""
        length, dim = ops.shape(keys)[1], keys.shape[2]  # L may be dynamic
        batch, num_queries = ops.shape(queries)[0], ops.shape(queries)[1]
        flat_keys = ops.reshape(
            ops.broadcast_to(ops.expand_dims(keys, 1), (batch, num_queries, length, dim)),
            (-1, length, dim),
        )  # [B*Q, L, d]
        pooled = self.attention(
            flat_keys, ops.reshape(queries, (-1, dim)), ops.reshape(valid, (-1, length))
        )  # [B*Q, d]
        interest = ops.reshape(pooled, (batch, num_queries, dim))  # [B, Q, d]
        x = ops.concatenate([interest, queries, interest * queries], axis=-1)  # [B, Q, 3d]
        for layer in self.head:
            x = layer(x)
        return ops.squeeze(self.logit(x), -1)  # [B, Q]

    def _score_items(self, context: Any, items: Any) -> Any:
        """Scores `[B, Q]` of items `[B, Q, d]` from the evaluation context: the last
        state (`[B, d]`, `[B, K, d]` for SINE) or, for DIN, `(keys, mask)`."""
        if not self.din:
            return self.score(context, items)
        keys, mask = context
        batch, num_queries = ops.shape(items)[0], ops.shape(items)[1]
        valid = ops.broadcast_to(ops.expand_dims(mask, 1), (batch, num_queries, ops.shape(keys)[1]))
        return self._din_scores(keys, valid, items)

    # ------------------------------------------------------------------ call
    def call(self, inputs: dict[str, Any], training: bool | None = None) -> dict[str, Any]:
        states = self.encode(inputs, training)
        if "targets" in inputs:  # a training batch: one target per position
            if self.din:
                return self._din_train_scores(inputs, states)

            def scorer(ids):
                return self.score(states, self._items(ids))

            return {
                "positive": scorer(inputs["targets"]),
                "negative": scorer(inputs["random_negatives"]),
                "feedback": scorer(inputs["target_negatives"]),
            }
        if self.din:
            context = (states, ops.not_equal(inputs["inputs"], 0))
        else:
            context = states[:, -1]  # [B, d] or [B, K, d]: the most recent position
        target = self._score_items(context, self._items(ops.expand_dims(inputs["target"], 1)))
        target = ops.squeeze(target, 1)  # [B]
        out = {"target_score": ops.cast(target, "float32")}
        if "candidates" in inputs:
            out["candidate_scores"] = ops.cast(
                self._score_items(context, self._items(inputs["candidates"])), "float32"
            )
        if "exclude" in inputs:
            out["rank"] = self._full_rank(context, target, inputs["target"], inputs["exclude"])
        return out

    def _din_train_scores(self, inputs: dict[str, Any], states: Any) -> dict[str, Any]:
        """DIN's training scores `{"positive", "negative"}` (no `feedback`: DIN trains
        with L1 only). Each target position `t` attends over the inputs at `j <= t`, so
        scoring every position costs O(L^2) attention units per user; with
        `din_train_positions` T < L, each user scores T target positions drawn
        uniformly without replacement from its real targets (all of them when it has
        at most T), fresh every step, and the outputs are `[B, T]` with `positions`
        (int32, the drawn positions) and `mask` (1 where the drawn slot is a real
        target; the loss reads it instead of the batch's `mask`)."""
        keys_mask = ops.not_equal(inputs["inputs"], 0)  # [B, L]
        length = ops.shape(states)[1]  # dynamic under length grouping
        count = self.m.din_train_positions
        static_length = states.shape[1]
        if count is None or (static_length is not None and static_length <= count):
            causal = ops.tril(ops.ones((length, length), "bool"))  # [t, j]: j <= t
            valid = ops.logical_and(ops.expand_dims(keys_mask, 1), causal)  # [B, L, L]
            return {
                "positive": self._din_scores(states, valid, self._items(inputs["targets"])),
                "negative": self._din_scores(
                    states, valid, self._items(inputs["random_negatives"])
                ),
            }
        target_mask = ops.cast(inputs["mask"], "float32")  # [B, L]
        batch = ops.shape(target_mask)[0]
        # real targets draw keys in [1, 2), other slots in [-1, 0): the top T are T
        # uniform real targets (fewer when the user has fewer); T columns of -2 keep
        # top_k defined when a length bucket is shorter than T
        noise = keras.random.uniform(ops.shape(target_mask), seed=self.position_seed)
        keys = ops.concatenate(
            [noise + 2.0 * target_mask - 1.0, ops.full((batch, count), -2.0)], axis=1
        )
        _, drawn = ops.top_k(keys, count)  # [B, T]
        drawn = ops.cast(drawn, "int32")
        real = ops.less(drawn, length)
        positions = ops.where(real, drawn, 0)
        chosen = ops.where(real, ops.take_along_axis(target_mask, positions, axis=1), 0.0)
        columns = ops.arange(length, dtype="int32")
        causal = ops.less_equal(
            ops.reshape(columns, (1, 1, -1)), ops.expand_dims(positions, -1)
        )  # [B, T, L]: keys j <= t
        valid = ops.logical_and(ops.expand_dims(keys_mask, 1), causal)

        def scorer(name: str) -> Any:
            ids = ops.take_along_axis(inputs[name], positions, axis=1)  # [B, T]
            return self._din_scores(states, valid, self._items(ids))

        return {
            "positive": scorer("targets"),
            "negative": scorer("random_negatives"),
            "positions": positions,
            "mask": chosen,
        }

    # ------------------------------------------------------------------ full ranking
    def rank_chunk_size(self) -> int:
        """Catalogue items scored at once per user in full ranking (`rank_chunk_size`,
        or automatic: the whole catalogue, DIN chunks of about `DIN_RANK_ELEMENTS`
        attention elements per user)."""
        size = self.num_items - self.catalogue_start
        m = self.m
        if m.rank_chunk_size is not None:
            return min(m.rank_chunk_size, size)
        if self.din:
            per_item = m.max_length * (m.embedding_dim + sum(m.attention_units))
            return max(1, min(size, DIN_RANK_ELEMENTS // per_item))
        return size

    def _catalogue_scores(self, context: Any, rows: Any = None) -> Any:
        """float32 scores `[B, n]` of the item rows `rows` `[n]`; None: every row of the
        table, read in place (no gather), `[B, num_items]`."""
        if rows is None:
            table = self.tables.read(self.tables.table(self.item_embedding))
            items = ops.cast(table, self.compute_dtype)  # [num_items, d]
        else:
            items = self._items(rows)  # [n, d]
        if not self.din and not self.sine:
            return ops.cast(ops.matmul(context, ops.transpose(items)), "float32")  # [B, n]
        if self.sine:
            return ops.cast(self.fusion.score_catalogue(context, items), "float32")
        batch = ops.shape(context[0])[0]
        items = ops.broadcast_to(items, (batch, *items.shape))  # [B, n, d]
        return ops.cast(self._score_items(context, items), "float32")

    def catalogue_scores(self, inputs: dict[str, Any]) -> Any:
        """float32 scores `[B, N]` of every catalogue item (rows `catalogue_start` ..
        `num_items - 1`, in row order) for the users of `inputs` (`inputs`, and
        `input_negatives` for SINE): the `candidate_scores` the model gives the whole
        catalogue, computed against the item table in place. Not for DIN (its user
        state depends on the item: score the catalogue as candidates, in chunks).

        Raises:
            ValueError: the model is DIN.
        """
        if self.din:
            raise ValueError("`catalogue_scores` does not apply to DIN; score the catalogue "
                             "as `candidates` in chunks (`rank_chunk_size`).")
        context = self.encode(inputs, training=False)[:, -1]  # [B, d] or [B, K, d]
        return self._catalogue_scores(context)[:, self.catalogue_start:]

    def _full_rank(self, context: Any, target: Any, target_ids: Any, exclude: Any) -> Any:
        """0-based rank of the target among the catalogue rows, rows in `exclude` left
        out; ties are pessimistic (every other catalogue row scoring the same ranks
        above), the default of `tfnegseq.metrics.rank_of_targets`. The catalogue is
        scored `rank_chunk_size()` rows at a time (an `ops.fori_loop` when that is
        less than the catalogue); the counts add up over the chunks."""
        target = ops.expand_dims(ops.cast(target, "float32"), 1)  # [B, 1]
        target_ids = ops.expand_dims(ops.cast(target_ids, "int32"), 1)  # [B, 1]
        # the user's excluded rows, scattered into [B, num_items] (padding lands in row 0)
        exclude = ops.cast(exclude, "int32")
        shape = ops.shape(exclude)  # the length is dynamic under length grouping
        users = ops.broadcast_to(ops.expand_dims(ops.arange(shape[0], dtype="int32"), 1), shape)
        indices = ops.reshape(ops.stack([users, exclude], axis=-1), (-1, 2))  # [B*L, 2]
        counts = ops.scatter(
            indices,
            ops.ones_like(ops.reshape(exclude, (-1,)), dtype="float32"),  # [B*L]
            (shape[0], self.num_items),
        )
        keep = ops.equal(counts, 0.0)  # [B, num_items]
        size = self.num_items - self.catalogue_start
        chunk = self.rank_chunk_size()

        def count(start: Any) -> Any:
            rows = ops.arange(chunk, dtype="int32") + start + self.catalogue_start  # [n]
            real = ops.less(rows, self.num_items)  # the last chunk may run past the end
            rows = ops.minimum(rows, self.num_items - 1)
            scores = self._catalogue_scores(context, rows)  # [B, n]
            counted = ops.logical_and(ops.take(keep, rows, axis=1), real)  # [B, n]
            # the target's own row ties with itself: it is not above itself
            counted = ops.logical_and(counted, ops.not_equal(rows, target_ids))
            above = ops.logical_and(scores >= target, counted)
            return ops.sum(ops.cast(above, "float32"), axis=1)  # [B]

        if chunk >= size:
            return count(0)
        steps = -(-size // chunk)
        return ops.fori_loop(
            0, steps, lambda i, total: total + count(i * chunk), ops.zeros_like(target[:, 0])
        )

    # ------------------------------------------------------------------ loss
    def compile(self, optimizer="adam", loss=None, **kwargs: Any):
        """`keras.Model.compile` with the model's own loss (eq. 15-16).

        Raises:
            ValueError: `loss` is given (the model computes its own).
        """
        if loss is not None:
            raise ValueError(
                "SequentialRecommender computes its own loss (BPR, eq. 15-16); "
                f"compile(loss=...) is not accepted. Received: loss={loss!r}"
            )
        super().compile(optimizer=optimizer, **kwargs)

    def get_compile_config(self):
        config = super().get_compile_config()
        if config:
            config = {k: v for k, v in config.items() if k != "loss"}
        return config

    def compile_from_config(self, config):
        config = {
            k: v for k, v in keras.saving.deserialize_keras_object(config).items() if k != "loss"
        }
        self.compile(**config)
        if self.built and getattr(self, "optimizer", None) is not None:
            self.optimizer.build(self.trainable_variables)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """`lambda_1 L1` (target vs a random item); sasrec_n and sine add `lambda_2 L2`
        (target vs its passive negative, pairs without one masked), sine
        `lambda_3 L_dis`; plus any regularisation losses.

        L1 and L2 are means over the batch's real pairs, each multiplied by the batch's
        `loss_scale` / `feedback_scale` when the input carries them (length grouping:
        the batch's pair count over its chunk's mean, so every pair weighs the same
        whatever the length of its batch's users; `tfnegseq.data.sequential_input`).
        For DIN with sampled target positions, L1 is the mean over the sampled pairs
        times the scale of all target pairs: each batch weighs by its users' number of
        targets, not by the (capped) number sampled."""
        m = self.m
        # DIN with sampled target positions scores `[B, T]` and says which are real
        mask = ops.cast(y_pred["mask"] if "mask" in y_pred else x["mask"], "float32")
        positive = ops.cast(y_pred["positive"], "float32")

        def scale(key):  # length-grouped batches (tfnegseq.data.sequential_input)
            return ops.mean(ops.cast(x[key], "float32")) if key in x else 1.0

        l1 = scale("loss_scale") * bpr_loss(
            positive, ops.cast(y_pred["negative"], "float32"), mask)
        l2 = l_dis = 0.0  # the terms an architecture does not have
        if m.architecture in ("sasrec_n", "sine"):
            feedback_mask = mask * ops.cast(ops.not_equal(x["target_negatives"], 0), "float32")
            l2 = scale("feedback_scale") * bpr_loss(
                positive, ops.cast(y_pred["feedback"], "float32"), feedback_mask)
        if self.sine:
            l_dis = distance_correlation(ops.cast(self.assignment.prototypes, "float32"))
        losses = [sine_loss(l1, l2, l_dis, (m.lambda_1, m.lambda_2, m.lambda_3))]  # eq. 16
        if self.losses:  # regularisers
            losses.append(ops.sum(ops.stack([ops.cast(v, "float32") for v in self.losses])))
        # / replicas under a tf.distribute strategy, as Keras' own losses (the replicas'
        # gradients are summed)
        return scale_loss_for_distribution(ops.sum(ops.stack(losses)))

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            num_items=self.num_items, model=self.model_config, catalogue_start=self.catalogue_start
        )
        return config
