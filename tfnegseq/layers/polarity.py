"""Mixed-polarity sequences and polarity-aware token calibration (PBE and TAPF).

Implements §3.3-3.4 of "Implicit negatives as first-class sequence tokens":

- `MixedPolaritySequence` builds the chronologically interleaved mixed-polarity
  sequence from a positive and an implicit-negative history (§3.3).
- `PolarityBiasEmbedding` adds a learnable polarity-type vector to every token
  (PBE, eq. 2).
- `TargetAwarePolarityFusion` calibrates every token against the target item with a
  gated, signed residual (TAPF, eq. 3-5), with a switch for every row of Table 3.

Polarity is an int tensor with +1 (positive), -1 (negative) and 0 (padding). Every
layer here leaves padding tokens untouched, so downstream masked computation never
sees a learned padding value.
"""

from __future__ import annotations

import keras
from keras import ops

from tfnegseq.api_export import register
from tfnegseq.budget import polarity_budget
from tfnegseq.layers._common import fresh
from tfnegseq.layers.attention import token_matmul

_MODES = ("interleaved", "grouped")


@register
class MixedPolaritySequence(keras.layers.Layer):
    """Builds the mixed-polarity behaviour sequence of §3.3.

    From a positive history and an implicit-negative history it takes the most recent
    `floor(positive_ratio * length)` positives and the most recent
    `floor((1 - positive_ratio) * length)` negatives (fewer when the user has fewer)
    and merges them by order (timestamp) into one sequence of `length` tokens with a
    polarity of +1 (positive) or -1 (negative). The two budgets are exact floors of
    the decimal `repr(positive_ratio)` shows (`0.29 * 100` gives 29, `0.29999999 * 10`
    gives 2), never of a rounded float product.

    A slot whose item is 0 is empty; its order is ignored. Real slots are in
    chronological order, the most recent last (their orders increase strictly from
    left to right). Histories are normally left-padded, but empty slots may sit
    anywhere: they are skipped, and the budget goes to the most recent real events.
    When every row's chosen events lie in its last `floor(r * L)` (resp.
    `floor((1 - r) * L)`) columns, as with left padding, only those columns are read;
    otherwise the batch is first compacted (a reverse count of the real events and
    one `[B, H]` scatter, no sort), which costs time linear in `max_history`.

    The output is left-padded too: the `T` chosen tokens occupy the last `T` positions,
    the most recent last, and the first `length - T` positions hold item 0 with
    polarity 0. In `"interleaved"` mode the tokens are in chronological order; when a
    positive and a negative have the same order, the positive comes first. In
    `"grouped"` mode all chosen positives (in order) come before all chosen negatives
    (in order). `positive_ratio=1.0` gives the positive-only sequence.

    The merge is vectorised and XLA friendly: a positive's position is its index in its
    own list plus the number of chosen negatives that precede it (one `[B, kp, kn]`
    comparison); positives are placed by a scatter of their column numbers into a
    `[B, L + 1]` map (unchosen ones into a dropped dump slot) and gathered with
    `take_along_axis`; the negatives then fill the remaining real slots in their own
    order (a cumulative count over `[B, L]`, and a `[B, kn]` scatter from rank to
    column). No sort, no `[B, K, L]` one-hot placement and no loop over the batch.

    Args:
        length: int. Sequence length budget `L` of the output, at least 1.
        positive_ratio: float. Share `r` of the budget given to positives, in [0, 1].
        mode: str. `"interleaved"` (chronological merge, §3.3) or `"grouped"`
            (positives block, then negatives block). Defaults to `"interleaved"`.
        **kwargs: Base layer keyword arguments (`name`, `dtype`, ...).

    Call arguments:
        pos_item: int tensor `[B, H+]`. Positive item ids, 0 for an empty slot.
        pos_order: int tensor `[B, H+]`. Order (e.g. timestamp) of each positive.
        neg_item: int tensor `[B, H-]`. Negative (skipped) item ids, 0 for empty.
        neg_order: int tensor `[B, H-]`. Order of each negative.

    Returns:
        A tuple `(items, polarity)`: `items` is `[B, length]` with the dtype of
        `pos_item` (JAX without `jax_enable_x64` holds int64 ids as int32);
        `polarity` is `[B, length]` int32 with +1, -1 and 0 for padding.

    Example:

    ```python
    layer = MixedPolaritySequence(length=4, positive_ratio=0.5)
    items, polarity = layer(
        np.array([[0, 7, 8]]), np.array([[0, 1, 5]]),
        np.array([[3, 4, 9]]), np.array([[2, 3, 6]]),
    )
    # items    -> [[7, 4, 8, 9]]  (orders 1, 3, 5, 6: two most recent of each)
    # polarity -> [[1, -1, 1, -1]]
    ```
    """

    def __init__(self, length, positive_ratio, mode="interleaved", **kwargs):
        super().__init__(**kwargs)
        if isinstance(length, bool) or not isinstance(length, int) or length < 1:
            raise ValueError(f"`length` must be an integer >= 1. Received: length={length}")
        if not 0.0 <= positive_ratio <= 1.0:
            raise ValueError(
                f"`positive_ratio` must be in [0, 1]. Received: positive_ratio={positive_ratio}"
            )
        if mode not in _MODES:
            raise ValueError(f"`mode` must be one of {_MODES}. Received: mode={mode}")
        self.length = length
        self.positive_ratio = positive_ratio
        self.mode = mode
        self.num_positive, self.num_negative = polarity_budget(positive_ratio, length)
        self.built = True

    @classmethod
    def _most_recent(cls, item, order, k):
        """The `k` most recent real events: items, orders, chosen mask, own index, count.

        Returns `[B, w]` tensors (`w = min(k, H)`, or `k` when `H` is not static): the
        chosen events in chronological order, wherever the empty slots of the history
        were. When `H <= k` every real event is chosen and the history is used as it
        is. Otherwise, when every row's chosen events lie in its last `w` columns
        (always so for left-padded histories), those columns are used; if not (one
        `cond` for the batch, and always when `H` is not static), `_compact` gathers
        them. Orders of unchosen columns are arbitrary: every use is masked by `chosen`.
        """
        history = item.shape[1]
        if history is not None and history <= k:
            window_item, window_order = item, order  # [B, H]
        elif history is None:  # the two branches' shapes could differ: always compact
            window_item, window_order = cls._compact(item, order, k)
        else:
            real = ops.cast(ops.not_equal(item, 0), "int32")
            in_window = ops.sum(real[:, -k:], axis=1)  # [B]
            spill = ops.any(ops.less(in_window, ops.minimum(ops.sum(real, axis=1), k)))
            window_item, window_order = ops.cond(
                spill,
                lambda: cls._compact(item, order, k),
                lambda: (item[:, -k:], order[:, -k:]),  # [B, k]
            )
        chosen = ops.not_equal(window_item, 0)
        chosen_int = ops.cast(chosen, "int32")
        own_index = ops.cumsum(chosen_int, axis=1) - 1
        count = ops.sum(chosen_int, axis=1, keepdims=True)  # [B, 1]
        return window_item, window_order, chosen, own_index, count

    @classmethod
    def _compact(cls, item, order, k):
        """`[B, k]` items and orders of the `k` most recent real events, left-padded.

        The rank of a real event from the most recent one is the number of real events
        right of it (`total - cumsum`, no `[B, H, H]` comparison); the events of rank
        `< k` go to column `k - 1 - rank` by one `[B, H]` scatter (`_place`). Columns
        left empty get item 0.
        """
        real = ops.not_equal(item, 0)
        real_int = ops.cast(real, "int32")
        total = ops.sum(real_int, axis=1, keepdims=True)  # [B, 1]
        later = total - ops.cumsum(real_int, axis=1)  # [B, H] real events right of each
        chosen = ops.logical_and(real, ops.less(later, k))
        source = cls._place(ops.where(chosen, k - 1 - later, k), k)  # [B, k] 1 + column
        column = ops.maximum(source - 1, 0)  # [B, k]
        picked = ops.take_along_axis(item, column, axis=1)  # [B, k]
        picked = ops.where(ops.greater(source, 0), picked, ops.zeros((), picked.dtype))
        return picked, ops.take_along_axis(order, column, axis=1)  # [B, k]

    @staticmethod
    def _place(target, size):
        """`[B, size]`: 1 + the column `j` with `target[b, j] == l` at position `l`, else 0.

        `target` `[B, k]` holds distinct positions in `[0, size)` per row, or `size` for
        columns to drop (a dump position, sliced off). One scatter of `B * k` values.
        """
        batch, width = ops.shape(target)[0], ops.shape(target)[1]
        rows = ops.broadcast_to(
            ops.expand_dims(ops.arange(batch, dtype="int32"), 1), ops.shape(target)
        )
        # -> [B * k, 2]
        indices = ops.stack([ops.reshape(rows, (-1,)), ops.reshape(target, (-1,))], axis=1)
        number = ops.broadcast_to(
            ops.expand_dims(ops.arange(1, width + 1, dtype="int32"), 0), ops.shape(target)
        )
        # -> number [B * k] scattered into [B, size + 1]
        placed = ops.scatter(indices, ops.reshape(number, (-1,)), (batch, size + 1))
        return placed[:, :size]

    def call(self, pos_item, pos_order, neg_item, neg_order):
        item_dtype = pos_item.dtype
        length = self.length
        pos = neg = None
        total = 0
        if self.num_positive > 0:
            pos = self._most_recent(pos_item, pos_order, self.num_positive)
            total = total + pos[4]
        if self.num_negative > 0:
            neg = self._most_recent(neg_item, neg_order, self.num_negative)
            total = total + neg[4]
        start = length - total  # [B, 1] first real slot of the output
        slots = ops.reshape(ops.arange(length, dtype="int32"), (1, -1))  # [1, L]
        out_items = None
        out_polarity = None
        is_pos = None
        if pos is not None:
            p_item, p_order, p_chosen, p_index, _ = pos
            rank = p_index  # [B, kp] position among the chosen tokens
            if neg is not None and self.mode == "interleaved":
                n_order, n_chosen = neg[1], neg[2]
                # neg_before[b, i, j]: negative j precedes positive i (ties: positive first).
                neg_before = ops.logical_and(
                    ops.less(ops.expand_dims(n_order, 1), ops.expand_dims(p_order, 2)),
                    ops.expand_dims(n_chosen, 1),
                )  # [B, kp, kn]
                rank = rank + ops.sum(ops.cast(neg_before, "int32"), axis=2)
            # source[b, l]: 1 + column of the positive placed at slot l, 0 if none.
            source = self._place(ops.where(p_chosen, start + rank, length), length)
            is_pos = ops.greater(source, 0)
            picked = ops.take_along_axis(p_item, ops.maximum(source - 1, 0), axis=1)
            out_items = ops.where(is_pos, ops.cast(picked, item_dtype), ops.zeros((), item_dtype))
            out_polarity = ops.cast(is_pos, "int32")
        if neg is not None:
            n_item, _, n_chosen, n_index, _ = neg
            width = ops.shape(n_item)[1]
            # Negatives fill the real slots left free, in their own (chronological) order:
            # the r-th free slot takes the chosen negative of rank r.
            is_neg = ops.greater_equal(slots, start)
            if is_pos is not None:
                is_neg = ops.logical_and(is_neg, ops.logical_not(is_pos))
            rank = ops.cumsum(ops.cast(is_neg, "int32"), axis=1) - 1  # [B, L]
            by_rank = self._place(ops.where(n_chosen, n_index, width), width)  # 1 + column
            column = ops.take_along_axis(by_rank, ops.clip(rank, 0, width - 1), axis=1) - 1
            picked = ops.take_along_axis(n_item, ops.maximum(column, 0), axis=1)
            picked = ops.cast(picked, item_dtype)
            if out_items is None:
                out_items = ops.where(is_neg, picked, ops.zeros((), item_dtype))
                out_polarity = -ops.cast(is_neg, "int32")
            else:
                out_items = ops.where(is_neg, picked, out_items)
                out_polarity = out_polarity - ops.cast(is_neg, "int32")
        return ops.cast(out_items, item_dtype), ops.cast(out_polarity, "int32")

    def get_config(self):
        config = super().get_config()
        config.update(
            {"length": self.length, "positive_ratio": self.positive_ratio, "mode": self.mode}
        )
        return config


@register
class PolarityBiasEmbedding(keras.layers.Layer):
    """Polarity Bias Embedding (PBE, eq. 2): adds a learnable polarity vector per token.

    `h_k = e_k + b_{p_k}` where `b_{+1}` and `b_{-1}` are rows of a zero-initialised
    `Embedding` sublayer named `embeddings` (3 rows, indexed by `polarity + 1`). The
    positional term `pos_k` of eq. 2 is left to the caller. Padding tokens
    (polarity 0) come out unchanged: the added bias is multiplied by the non-padding
    mask, so the padding row (row 1) is never used and receives no gradient.

    Args:
        embeddings_initializer: str or `keras.initializers.Initializer`. Initializer of
            the polarity rows. Defaults to `"zeros"` (the paper's choice).
        **kwargs: Base layer keyword arguments (`name`, `dtype`, ...).

    Call arguments:
        tokens: float tensor `[B, L, d]`. Token embeddings `e_k`.
        polarity: int tensor `[B, L]`. +1, -1, or 0 for padding.

    Returns:
        Float tensor `[B, L, d]`: `tokens + b_polarity`, `tokens` where polarity is 0.

    Example:

    ```python
    layer = PolarityBiasEmbedding()
    out = layer(np.zeros((2, 5, 8), "float32"), np.array([[0, 1, -1, 1, 1]] * 2))
    out.shape  # (2, 5, 8)
    ```
    """

    def __init__(self, embeddings_initializer="zeros", **kwargs):
        super().__init__(**kwargs)
        self.embeddings_initializer = keras.initializers.get(embeddings_initializer)

    def build(self, tokens_shape, polarity_shape):
        self.embeddings = keras.layers.Embedding(
            3,
            tokens_shape[-1],
            embeddings_initializer=self.embeddings_initializer,
            dtype=self.dtype_policy,
            name="embeddings",
        )
        self.embeddings.build(polarity_shape)
        self.built = True

    def call(self, tokens, polarity):
        polarity = ops.expand_dims(ops.cast(polarity, "int32"), -1)  # [B, L, 1]
        table = ops.cast(self.embeddings.embeddings, tokens.dtype)  # [3, d]: rows -1, 0, +1
        # A select, not a gather: the gradient of a 3-row gather over B * L tokens is a
        # scatter-add into 3 rows; of a select it is two masked sums.
        bias = ops.where(ops.greater(polarity, 0), table[2], table[0])  # [B, L, d]
        return ops.where(ops.equal(polarity, 0), tokens, tokens + bias)

    def get_config(self):
        config = super().get_config()
        config["embeddings_initializer"] = keras.initializers.serialize(self.embeddings_initializer)
        return config


_MISSING_TABLE = (
    "`shared_polarity_embedding=True` needs the `polarity_embeddings` call argument (a "
    "[3, d_p] table with rows for polarity -1, 0, +1, e.g. PBE's `embeddings.embeddings`) "
    "whenever the gate reads the polarity embedding."
)


@register
class TargetAwarePolarityFusion(keras.layers.Layer):
    """Target-Aware Polarity Fusion (TAPF, eq. 3-5): target-conditioned signed residual.

    For each token `h_k` and target embedding `e_v`:

    - eq. 3: `e_k = ReLU(W_int (h_k * e_v))` (sublayer `interaction`, Dense d, ReLU);
    - eq. 4: `g_k = sigmoid(W_g [h_k || e_k || b_{p_k}])` (sublayer `gate`, Dense d,
      sigmoid, kernel `[2d + d_p, d]`; `b_p` is row `p + 1` of a `[3, d_p]` polarity
      table, rows for polarity -1, 0, +1);
    - eq. 5: `h'_k = h_k + p_k * (2 g_k - 1) * e_k`.

    Padding tokens (polarity 0) come out unchanged, and the padding row (row 1) of the
    polarity table is never read, so it receives no gradient. The `use_*` switches
    below remove one component each, matching the rows of Table 3;
    `use_target_interaction=False` together with `use_gating=False` is the "target
    interaction & gating" row.

    Two deviations from the paper, each with a switch whose default keeps them:

    - Biases: eq. 3-4 have none, but `interaction` and `gate` carry Dense biases by
      default (`use_bias=True`). `use_bias=False` follows the equations and creates
      no bias.
    - Polarity table: the paper writes `b_{p_k}` as in PBE's eq. 2 without saying
      whether the table is PBE's. By default TAPF has its own table, the sublayer
      `polarity_embedding` (`[3, d_p]`, `d_p = polarity_dim or d`), initialised by
      `polarity_initializer` (uniform, where PBE's table starts at zero).
      `shared_polarity_embedding=True` creates no table: the caller passes one, e.g.
      PBE's `embeddings.embeddings`, as the `polarity_embeddings` call argument, and
      the gate kernel's polarity block takes that table's width.

    For speed the gate's concat is never materialised: `W_g` is split into its `h`,
    `e` and `b_p` blocks, and the polarity share `W_g,p b_p + bias` is computed once
    per polarity value (a `[3, d]` table `t`). Biases and that table are folded into
    the per-token matmuls as extra kernel rows, so no per-token gather, bias add or
    (in the backward pass) scatter / column sum over `B * L` tokens is needed:

        e_k = ReLU([h_k * e_v, 1] @ [W_int; b_int])
        g_k = sigmoid([h_k, 1, [p_k = +1]] @ [W_g,h; t_-1; t_+1 - t_-1] + e_k @ W_g,e)

    (padding rows get `t_-1`, which the sign 0 multiplies away; without biases the
    interaction's extra row goes, and the gate keeps its `1` column only for `t_-1`).
    The per-token matmuls go through `token_matmul`. The sublayers still hold the
    weights of eq. 3-4 (`interaction`: a `[d, d]` kernel; `gate`: one `[2d + d_p, d]`
    kernel; each with a `[d]` bias when `use_bias`).

    Args:
        polarity_dim: int or None. Dimension `d_p` of the gate's own polarity
            embedding; None uses the token dimension `d`. With
            `shared_polarity_embedding=True` it must be None or the shared table's
            width. Defaults to None.
        use_polarity_embedding: bool. Feed `b_p` to the gate (eq. 4); False gates on
            `[h || e]` only and creates no `polarity_embedding`. Defaults to True.
        use_gating: bool. Use the gate; False fixes `2g - 1 = 1` and creates neither
            `gate` nor `polarity_embedding`. Defaults to True.
        use_polarity_sign: bool. Multiply by the sign `p_k`; False uses `m = +1` for
            every real token. Defaults to True.
        use_residual: bool. Add `h_k` back (eq. 5); False outputs
            `p_k (2g - 1) e_k` for real tokens. Defaults to True.
        use_target_interaction: bool. Multiply by the target in eq. 3; False uses
            `e_k = ReLU(W_int h_k)` (the target is then unused). Defaults to True.
        use_bias: bool. Give `interaction` and `gate` Dense biases (not in eq. 3-4);
            False creates none. Defaults to True.
        shared_polarity_embedding: bool. Read the gate's polarity table from the
            `polarity_embeddings` call argument instead of an own
            `polarity_embedding` sublayer. Defaults to False.
        kernel_initializer: str or initializer for the Dense kernels. Defaults to
            `"glorot_uniform"`.
        bias_initializer: str or initializer for the Dense biases. Defaults to
            `"zeros"`.
        polarity_initializer: str or initializer for `polarity_embedding`. Defaults
            to `"uniform"`.
        **kwargs: Base layer keyword arguments (`name`, `dtype`, ...).

    Call arguments:
        tokens: float tensor `[B, L, d]`. Sequence tokens `h_k`.
        target: float tensor `[B, d]`. Target item embedding `e_v`.
        polarity: int tensor `[B, L]`. +1, -1, or 0 for padding.
        polarity_embeddings: float tensor `[3, d_p]` or None. The shared polarity
            table (rows for polarity -1, 0, +1). Required with
            `shared_polarity_embedding=True` when the gate reads `b_p`
            (`use_gating` and `use_polarity_embedding`), ignored when it does not,
            refused with `shared_polarity_embedding=False`. Defaults to None.

    Returns:
        Float tensor `[B, L, d]`: the calibrated tokens `h'_k`.

    Example:

    ```python
    layer = TargetAwarePolarityFusion()
    out = layer(np.ones((2, 5, 8), "float32"), np.ones((2, 8), "float32"),
                np.array([[0, 1, -1, 1, 1]] * 2))
    out.shape  # (2, 5, 8)

    # Sharing PBE's table, as eq. 4's `b_p` read literally:
    pbe = PolarityBiasEmbedding()
    tapf = TargetAwarePolarityFusion(use_bias=False, shared_polarity_embedding=True)
    tokens, target = np.ones((2, 5, 8), "float32"), np.ones((2, 8), "float32")
    polarity = np.array([[0, 1, -1, 1, 1]] * 2)
    hidden = pbe(tokens, polarity)
    out = tapf(hidden, target, polarity, polarity_embeddings=pbe.embeddings.embeddings)
    ```
    """

    def __init__(
        self,
        polarity_dim=None,
        use_polarity_embedding=True,
        use_gating=True,
        use_polarity_sign=True,
        use_residual=True,
        use_target_interaction=True,
        use_bias=True,
        shared_polarity_embedding=False,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        polarity_initializer="uniform",
        **kwargs,
    ):
        super().__init__(**kwargs)
        if polarity_dim is not None and (
            isinstance(polarity_dim, bool) or not isinstance(polarity_dim, int) or polarity_dim < 1
        ):
            raise ValueError(
                "`polarity_dim` must be None or an integer >= 1. "
                f"Received: polarity_dim={polarity_dim}"
            )
        self.polarity_dim = polarity_dim
        self.use_polarity_embedding = bool(use_polarity_embedding)
        self.use_gating = bool(use_gating)
        self.use_polarity_sign = bool(use_polarity_sign)
        self.use_residual = bool(use_residual)
        self.use_target_interaction = bool(use_target_interaction)
        self.use_bias = bool(use_bias)
        self.shared_polarity_embedding = bool(shared_polarity_embedding)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.polarity_initializer = keras.initializers.get(polarity_initializer)

    @property
    def _gate_reads_polarity(self):
        return self.use_gating and self.use_polarity_embedding

    def _check_polarity_table(self, table_shape):
        """Refuses a table the layer would not read, or a missing / malformed one."""
        if table_shape is not None and not self.shared_polarity_embedding:
            raise ValueError(
                "`polarity_embeddings` is only read with `shared_polarity_embedding=True`; "
                "this layer has its own `polarity_embedding`. "
                f"Received: polarity_embeddings_shape={table_shape}"
            )
        if not (self.shared_polarity_embedding and self._gate_reads_polarity):
            return
        if table_shape is None:
            raise ValueError(_MISSING_TABLE)
        if len(table_shape) != 2 or table_shape[0] not in (3, None):
            raise ValueError(
                "`polarity_embeddings` must have shape [3, d_p] (rows for polarity -1, 0, "
                f"+1). Received: polarity_embeddings_shape={table_shape}"
            )
        if self.polarity_dim is not None and self.polarity_dim != table_shape[1]:
            raise ValueError(
                "`polarity_dim` must be None or equal the width of `polarity_embeddings`. "
                f"Received: polarity_dim={self.polarity_dim}, "
                f"polarity_embeddings_shape={table_shape}"
            )

    def build(self, tokens_shape, target_shape, polarity_shape, polarity_embeddings_shape=None):
        dim = tokens_shape[-1]
        if target_shape[-1] != dim:
            raise ValueError(
                "`target` must have the token dimension. "
                f"Received: tokens_shape={tokens_shape}, target_shape={target_shape}"
            )
        self._check_polarity_table(polarity_embeddings_shape)
        self._dim = dim

        def dense_kwargs():  # one initializer per weight: a shared one repeats values
            return {
                "use_bias": self.use_bias,
                "kernel_initializer": fresh(self.kernel_initializer),
                "bias_initializer": fresh(self.bias_initializer),
                "dtype": self.dtype_policy,
            }

        self.interaction = keras.layers.Dense(
            dim, activation="relu", name="interaction", **dense_kwargs()
        )
        self.interaction.build((None, dim))
        self.gate = None
        self.polarity_embedding = None
        if self.use_gating:
            gate_in = 2 * dim
            if self.use_polarity_embedding and self.shared_polarity_embedding:
                gate_in += polarity_embeddings_shape[-1]
            elif self.use_polarity_embedding:
                polarity_dim = self.polarity_dim or dim
                gate_in += polarity_dim
                self.polarity_embedding = keras.layers.Embedding(
                    3,
                    polarity_dim,
                    embeddings_initializer=self.polarity_initializer,
                    dtype=self.dtype_policy,
                    name="polarity_embedding",
                )
                self.polarity_embedding.build(polarity_shape)
            self.gate = keras.layers.Dense(dim, activation="sigmoid", name="gate", **dense_kwargs())
            self.gate.build((None, gate_in))
        self.built = True

    def call(self, tokens, target, polarity, polarity_embeddings=None):
        self._check_polarity_table(
            None if polarity_embeddings is None else tuple(polarity_embeddings.shape)
        )
        dim = self._dim
        dtype = self.compute_dtype
        polarity = ops.expand_dims(ops.cast(polarity, "int32"), -1)  # [B, L, 1]
        ones = ops.ones_like(tokens[..., :1])  # [B, L, 1]
        # eq. 3, the bias folded into the kernel: ReLU([h * e_v, 1] @ [W_int; b_int]).
        x = tokens * ops.expand_dims(target, 1) if self.use_target_interaction else tokens
        kernel = ops.cast(self.interaction.kernel, dtype)  # [d, d]
        if self.use_bias:
            bias = ops.expand_dims(ops.cast(self.interaction.bias, dtype), 0)  # [1, d]
            x = ops.concatenate([x, ones], axis=-1)  # [B, L, d + 1]
            kernel = ops.concatenate([kernel, bias], axis=0)  # [d + 1, d]
        interaction = ops.relu(token_matmul(x, kernel))
        update = interaction  # [B, L, d]
        if self.use_gating:
            # eq. 4 with W_g = [W_h; W_e; W_p]: h @ W_h + e @ W_e + (b_p @ W_p + bias)[p].
            gate_kernel = ops.cast(self.gate.kernel, dtype)  # [2d + dp, d]
            w_h, w_e = gate_kernel[:dim], gate_kernel[dim : 2 * dim]
            bias = None
            if self.use_bias:
                bias = ops.expand_dims(ops.cast(self.gate.bias, dtype), 0)  # [1, d]
            if self.use_polarity_embedding:
                if self.shared_polarity_embedding:
                    table = polarity_embeddings  # [3, dp]
                else:
                    table = self.polarity_embedding.embeddings  # [3, dp]
                table = ops.matmul(ops.cast(table, dtype), gate_kernel[2 * dim :])  # [3, d]
                if bias is not None:
                    table = table + bias  # [3, d] by polarity
                # h @ W_h + table[p] as one matmul: [h, 1, [p = +1]] @ [W_h; t_-1; t_+1 - t_-1]
                # (padding rows get t_-1, which the sign 0 below multiplies away).
                x = ops.concatenate([tokens, ones, ops.cast(ops.greater(polarity, 0), dtype)], -1)
                kernel = ops.concatenate([w_h, table[0:1], table[2:3] - table[0:1]], axis=0)
            elif bias is not None:
                x = ops.concatenate([tokens, ones], axis=-1)  # [B, L, d + 1]
                kernel = ops.concatenate([w_h, bias], axis=0)  # [d + 1, d]
            else:
                x, kernel = tokens, w_h
            logits = token_matmul(x, kernel) + token_matmul(interaction, w_e)
            update = ops.tanh(0.5 * logits) * update  # 2 sigmoid(z) - 1 == tanh(z / 2)
        real = ops.not_equal(polarity, 0)  # [B, L, 1]
        sign = polarity if self.use_polarity_sign else real
        update = update * ops.cast(sign, dtype)
        if self.use_residual:
            return tokens + update  # eq. 5; padding: sign 0 -> tokens
        return ops.where(real, update, tokens)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "polarity_dim": self.polarity_dim,
                "use_polarity_embedding": self.use_polarity_embedding,
                "use_gating": self.use_gating,
                "use_polarity_sign": self.use_polarity_sign,
                "use_residual": self.use_residual,
                "use_target_interaction": self.use_target_interaction,
                "use_bias": self.use_bias,
                "shared_polarity_embedding": self.shared_polarity_embedding,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
                "bias_initializer": keras.initializers.serialize(self.bias_initializer),
                "polarity_initializer": keras.initializers.serialize(self.polarity_initializer),
            }
        )
        return config
