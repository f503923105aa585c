"""SINE's sub-interest layers (RecSys 2023, §4.1-4.2, eq. 3-14).

"Understanding and Modeling Passive-Negative Feedback for Short-video Sequential
Recommendation" (SINE) reads a passive negative (a skipped short video) as the mismatch
of one sub-interest. The four layers here are its building blocks:

- `SubInterestAssignment` owns the prototypes `Z` (eq. 3) and maps every positive
  behaviour to the sub-interest that best separates it from its nearest passive
  negative (eq. 4-5).
- `SubInterestSelfAttention` is the causal self-attention block whose weights are
  re-weighted by sub-interest agreement (eq. 6-10).
- `SubInterestProjection` projects the encoded user state onto every prototype
  (eq. 11).
- `AdaptiveFusion` weighs the K sub-interest scores of a target item (eq. 12-14).

One `Z` per model: it lives in the assignment layer (`assignment.prototypes`, a float32
variable whatever the dtype policy) and the projection takes it as a call argument,
so it is trained by eq. 11 and by whatever loss the model adds on it (the paper's
distance correlation).
"""

from __future__ import annotations

import math

import keras
from keras import ops

from tfnegseq.api_export import register
from tfnegseq.layers._common import fresh
from tfnegseq.layers.dropout import CounterDropout

_BETA_MODES = ("paper", "official")
_NORMALIZATIONS = ("ratio", "softmax", "mean")
_MASKED = -1e9  # added to masked attention logits (float32): exp() underflows to 0


def _positive_int(name, value, allow_none=False):
    if allow_none and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        prefix = "None or " if allow_none else ""
        raise ValueError(f"`{name}` must be {prefix}an integer >= 1. Received: {name}={value}")


@register
class SubInterestAssignment(keras.layers.Layer):
    """Sub-interest of every positive behaviour (SINE eq. 3-5).

    Holds `K` prototypes `Z = (z_1, ..., z_K)` (eq. 3), a `[K, d]` weight named
    `prototypes`. A positive `e+` whose nearest (most recent) passive negative is `e-`
    gets `argmax_k (e+ . z_k - e- . z_k)` (eq. 4); one without a negative
    (`negative_mask` 0, or no `nearest_negatives`) gets `argmax_k e+ . z_k` (the
    sentence after eq. 5). Scores are computed in float32 under any dtype policy; ties
    go to the lowest index, so an all-zero (padding) embedding gets sub-interest 0.
    The argmax has no gradient: `Z` is trained through `SubInterestProjection` (eq. 11)
    and the model's losses.

    The prototypes are read through the `prototypes` property (a float32 variable, not
    autocast) so the model shares one `Z` between this layer and
    `SubInterestProjection`.

    Args:
        num_interests: int. Number of prototypes `K`, at least 1.
        prototypes_initializer: str or `keras.initializers.Initializer`. Initializer
            of `Z`. Defaults to `"glorot_uniform"`.
        **kwargs: Base layer keyword arguments (`name`, `dtype`, ...).

    Call arguments:
        positives: float tensor `[B, L, d]` (any leading shape). Positive embeddings.
        nearest_negatives: float tensor of the same shape, or None. The nearest
            passive negative of each positive. Defaults to None (no negatives).
        negative_mask: bool or 0/1 tensor `[B, L]`, or None. 1 where the positive has
            a negative. Defaults to None (every given negative is real).

    Returns:
        int32 tensor `[B, L]` with sub-interests in `[0, K)`.

    Example:

    ```python
    layer = SubInterestAssignment(num_interests=4)
    z_hat = layer(np.ones((2, 5, 8), "float32"), np.zeros((2, 5, 8), "float32"),
                  np.array([[0, 1, 1, 0, 1]] * 2))
    z_hat.shape  # (2, 5)
    ```
    """

    def __init__(self, num_interests, prototypes_initializer="glorot_uniform", **kwargs):
        super().__init__(**kwargs)
        _positive_int("num_interests", num_interests)
        self.num_interests = num_interests
        self.prototypes_initializer = keras.initializers.get(prototypes_initializer)

    def build(self, positives_shape):
        self._prototypes = self.add_weight(
            name="prototypes",
            shape=(self.num_interests, positives_shape[-1]),
            initializer=self.prototypes_initializer,
            dtype="float32",
            autocast=False,
        )
        self.built = True

    @property
    def prototypes(self):
        """The `[K, d]` float32 prototype variable `Z` (eq. 3)."""
        return self._prototypes

    def call(self, positives, nearest_negatives=None, negative_mask=None):
        z = ops.transpose(ops.cast(self._prototypes, "float32"))  # [d, K]
        scores = ops.matmul(ops.cast(positives, "float32"), z)  # [B, L, K]
        if nearest_negatives is not None:
            gap = ops.matmul(ops.cast(nearest_negatives, "float32"), z)  # [B, L, K]
            if negative_mask is not None:
                has = ops.cast(ops.expand_dims(ops.cast(negative_mask, "bool"), -1), "float32")
                gap = gap * has  # [B, L, K]
            scores = scores - gap
        return ops.cast(ops.argmax(scores, axis=-1), "int32")

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_interests": self.num_interests,
                "prototypes_initializer": keras.initializers.serialize(self.prototypes_initializer),
            }
        )
        return config


@register
class SubInterestSelfAttention(keras.layers.Layer):
    """Causal self-attention block re-weighted by sub-interest agreement (SINE eq. 6-10).

    `Q = X W^q, K = X W^k, V = X W^v` (eq. 6, no biases, `num_heads` heads of `key_dim`),
    `alpha = softmax(Q K^T / sqrt(key_dim))` over the keys `j <= i` that are not padding
    (eq. 7), `alpha_hat = beta . alpha` (eq. 8-9), then eq. 10 with an output
    projection `W^o` (no bias) of the concatenated heads:
    `h = Norm(alpha_hat V W^o + X)`, `o = FFN(h) + h`, `FFN(h) = W_2 act(W_1 h + b_1) + b_2`.
    Positional embeddings are the caller's (`X = E + P`). This is eq. 6/10 as written
    (post-norm, `Q` from `X`); the official code uses SASRec's block instead (queries
    and the residual from `LayerNorm(X)`, keys and values from `X`, a final LayerNorm
    after the last block), which this layer does not reproduce.

    `beta` (eq. 8) depends on whether key `j`'s sub-interest `interests[j]` equals the
    query's, `query_interests[i]` (defaults to `interests[i]`, the paper's rule; the
    official code compares with the sub-interest of the item *following* `i`, i.e. the
    training target: pass that as `query_interests` to reproduce it). Two modes:

    - `beta_mode="paper"` (training and inference): `beta_1` for a match, `beta_2 =
      1 - beta_1` otherwise, and the weights are renormalised over the keys:
      `alpha_hat_ij = beta_ij alpha_ij / sum_j' beta_ij' alpha_ij'`, computed as
      `softmax(QK^T / sqrt(key_dim) + log beta)`. Eq. 9 without renormalisation would
      scale each row's total weight to somewhere in `[beta_2, beta_1]`, which the
      residual then mixes with `X` at a varying ratio, and with one sub-interest
      (`K = 1`, every key matches) would give `beta_1 alpha`, not SASRec. With the
      renormalisation only the ratio `beta_1 / beta_2` matters (the constraint
      `beta_1 + beta_2 = 1` leaves exactly that one degree of freedom), and whenever
      every key matches (in particular `K = 1`) the block *is* a plain SASRec block
      with the same weights, whatever `beta`. `beta=None` learns it: one scalar weight
      `beta_logit` `w`, `beta_1 = sigmoid(w)`, initialised to 0 (`beta_1 = 0.5`: the
      block starts as plain SASRec); a float in (0, 1) fixes `beta_1`.
    - `beta_mode="official"` (training only, as `SINE.forward` of the authors' code):
      weights of matching keys are multiplied by `beta` (their `filter`, any float
      > 0, required), others by 1, after softmax and dropout and without
      renormalisation. At inference the block is plain SASRec (their `predict` passes
      no weights). With `K = 1` it equals SASRec at inference only (or `beta=1`).

    With `interests=None` no `beta` is applied (plain SASRec block).

    Padding: padded keys get exactly zero weight, so a padded token never reaches a
    real one. Padded query positions output zeros (and zero attention weights), so
    fully masked rows (left padding) produce no NaN. Every real query attends at least
    to itself.

    Dropout (`dropout`): on the attention weights, on the attention output and on the
    feed-forward output (as the official code), in training only, with
    `CounterDropout` (hashed keep masks: the backend's uniform draws were half of a
    SASRec training step on CPU).

    Sublayers: `query`, `key`, `value` (EinsumDense `[d, H, key_dim]`, no bias),
    `attention_output` (EinsumDense `[H, key_dim, d]`, no bias), `attention_norm`
    (LayerNormalization), `ffn_inner` (Dense `feed_forward_dim`, `activation`),
    `ffn_outer` (Dense `d`); weight `beta_logit` when `beta` is learnt.

    Args:
        num_heads: int. Attention heads `H`, at least 1.
        key_dim: int or None. Size of each head. Defaults to None (`d // num_heads`;
            `num_heads` must divide `d`).
        dropout: float. Dropout rate in [0, 1). Defaults to 0.0.
        feed_forward_dim: int or None. Hidden size of the feed-forward network.
            Defaults to None (`d`, as the official code).
        beta: float or None. `beta_1` in (0, 1) in paper mode (None learns it); the
            match weight (> 0, required) in official mode. Defaults to None.
        beta_mode: str. `"paper"` or `"official"` (see above). Defaults to `"paper"`.
        activation: str. Activation of the feed-forward network. Defaults to `"relu"`.
        layer_norm_epsilon: float. LayerNorm epsilon. Defaults to 1e-8 (official code).
        kernel_initializer: str or initializer for every kernel. Defaults to
            `"glorot_uniform"`.
        **kwargs: Base layer keyword arguments (`name`, `dtype`, ...).

    Call arguments:
        x: float tensor `[B, L, d]`. `X = E + P`.
        mask: bool or 0/1 tensor `[B, L]`, or None. True for real tokens. Defaults to
            None (every token is real).
        interests: int tensor `[B, L]` or None. Sub-interest of each position (of its
            key). Defaults to None (no `beta`).
        query_interests: int tensor `[B, L]` or None. Sub-interest each query position
            is compared with. Defaults to None (`interests`).
        training: bool or None. Dropout, and `beta` in official mode. Defaults to None.
        return_attention_scores: bool. Also return `alpha_hat`. Defaults to False.

    Returns:
        `[B, L, d]`, or `(output, scores)` with `scores` `[B, H, L, L]` (query, key)
        when `return_attention_scores=True`.

    Example:

    ```python
    layer = SubInterestSelfAttention(num_heads=2, beta=0.7)
    out = layer(np.ones((2, 5, 8), "float32"), np.array([[0, 1, 1, 1, 1]] * 2),
                interests=np.array([[0, 2, 1, 2, 2]] * 2))
    out.shape  # (2, 5, 8)
    ```
    """

    def __init__(
        self,
        num_heads,
        key_dim=None,
        dropout=0.0,
        feed_forward_dim=None,
        beta=None,
        beta_mode="paper",
        activation="relu",
        layer_norm_epsilon=1e-8,
        kernel_initializer="glorot_uniform",
        **kwargs,
    ):
        super().__init__(**kwargs)
        # `mask` is a call argument: without this Keras warns that the mask is dropped;
        # `compute_mask` attaches none to the output (callers pass the mask explicitly)
        self.supports_masking = True
        _positive_int("num_heads", num_heads)
        _positive_int("key_dim", key_dim, allow_none=True)
        _positive_int("feed_forward_dim", feed_forward_dim, allow_none=True)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"`dropout` must be in [0, 1). Received: dropout={dropout}")
        if beta_mode not in _BETA_MODES:
            raise ValueError(
                f"`beta_mode` must be one of {_BETA_MODES}. Received: beta_mode={beta_mode}"
            )
        if beta_mode == "paper" and beta is not None and not 0.0 < beta < 1.0:
            raise ValueError(
                f"`beta` must be None or in (0, 1) in paper mode. Received: beta={beta}"
            )
        if beta_mode == "official" and (beta is None or not beta > 0.0):
            raise ValueError(f"`beta` must be a float > 0 in official mode. Received: beta={beta}")
        self.num_heads = num_heads
        self.key_dim = key_dim
        self.dropout = dropout
        self.feed_forward_dim = feed_forward_dim
        self.beta = beta
        self.beta_mode = beta_mode
        self.activation = activation
        self.layer_norm_epsilon = layer_norm_epsilon
        self.kernel_initializer = keras.initializers.get(kernel_initializer)

    def build(self, x_shape):
        dim = x_shape[-1]
        key_dim = self.key_dim
        if key_dim is None:
            if dim % self.num_heads:
                raise ValueError(
                    "`num_heads` must divide the token dimension when `key_dim` is None. "
                    f"Received: num_heads={self.num_heads}, token dimension={dim}"
                )
            key_dim = dim // self.num_heads
        self._head_dim = key_dim
        ff_dim = self.feed_forward_dim or dim
        common = {"dtype": self.dtype_policy}
        seq_shape = (None, None, dim)

        def kernel():  # one initializer per kernel: a shared one gives same-shaped kernels
            return {"kernel_initializer": fresh(self.kernel_initializer), **common}

        for name in ("query", "key", "value"):
            projection = keras.layers.EinsumDense(
                "bld,dhk->blhk", output_shape=(None, self.num_heads, key_dim), name=name,
                **kernel()
            )
            projection.build(seq_shape)
            setattr(self, f"{name}_dense", projection)
        self.output_dense = keras.layers.EinsumDense(
            "blhk,hkd->bld", output_shape=(None, dim), name="attention_output", **kernel()
        )
        self.output_dense.build((None, None, self.num_heads, key_dim))
        self.attention_norm = keras.layers.LayerNormalization(
            epsilon=self.layer_norm_epsilon, name="attention_norm", **common
        )
        self.attention_norm.build(seq_shape)
        self.ffn_inner = keras.layers.Dense(
            ff_dim, activation=self.activation, name="ffn_inner", **kernel()
        )
        self.ffn_inner.build(seq_shape)
        self.ffn_outer = keras.layers.Dense(dim, name="ffn_outer", **kernel())
        self.ffn_outer.build((None, None, ff_dim))
        self.dropout_layer = CounterDropout(self.dropout, **common)
        self.beta_logit = None
        if self.beta_mode == "paper" and self.beta is None:
            self.beta_logit = self.add_weight(
                name="beta_logit", shape=(), initializer="zeros", dtype="float32", autocast=False
            )
        self.built = True

    def compute_mask(self, inputs, previous_mask=None):
        return None

    def _log_beta(self):
        """(log beta_1, log beta_2) as float32 scalars (paper mode)."""
        if self.beta_logit is None:
            return math.log(self.beta), math.log1p(-self.beta)
        logit = ops.cast(self.beta_logit, "float32")
        return ops.log_sigmoid(logit), ops.log_sigmoid(-logit)

    def call(
        self,
        x,
        mask=None,
        interests=None,
        query_interests=None,
        training=None,
        return_attention_scores=False,
    ):
        length = ops.shape(x)[1]
        if mask is None:
            mask = ops.ones(ops.shape(x)[:2], dtype="bool")
        mask = ops.cast(mask, "bool")  # [B, L]
        position = ops.arange(length, dtype="int32")
        causal = ops.less_equal(ops.expand_dims(position, 0), ops.expand_dims(position, 1))
        valid = ops.logical_and(
            ops.logical_and(ops.expand_dims(mask, 1), ops.expand_dims(mask, 2)),
            ops.expand_dims(causal, 0),
        )  # [B, L(query), L(key)]
        valid = ops.expand_dims(valid, 1)  # [B, 1, L, L]
        match = None
        if interests is not None:
            keys = ops.cast(interests, "int32")
            queries = keys if query_interests is None else ops.cast(query_interests, "int32")
            match = ops.expand_dims(
                ops.equal(ops.expand_dims(queries, 2), ops.expand_dims(keys, 1)), 1
            )  # [B, 1, L, L]

        query = self.query_dense(x)  # [B, L, H, k]
        key = self.key_dense(x)  # [B, L, H, k]
        value = self.value_dense(x)  # [B, L, H, k]
        logits = ops.cast(ops.einsum("bihk,bjhk->bhij", query, key), "float32")  # [B, H, L, L]
        logits = logits / math.sqrt(self._head_dim)
        if match is not None and self.beta_mode == "paper":
            log_beta_1, log_beta_2 = self._log_beta()
            logits = logits + ops.where(match, log_beta_1, log_beta_2)
        logits = ops.where(valid, logits, _MASKED)
        weights = ops.where(valid, ops.softmax(logits, axis=-1), 0.0)  # [B, H, L, L]
        weights = self.dropout_layer(ops.cast(weights, x.dtype), training=training)
        if match is not None and self.beta_mode == "official" and training:
            factor = ops.where(match, ops.cast(self.beta, x.dtype), ops.cast(1.0, x.dtype))
            weights = weights * factor
        context = ops.einsum("bhij,bjhk->bihk", weights, value)  # [B, L, H, k]
        attended = self.dropout_layer(self.output_dense(context), training=training)  # [B, L, d]
        hidden = self.attention_norm(attended + x)
        ffn = self.dropout_layer(self.ffn_outer(self.ffn_inner(hidden)), training=training)
        output = ops.where(ops.expand_dims(mask, -1), ffn + hidden, ops.zeros((), ffn.dtype))
        if return_attention_scores:
            return output, weights
        return output

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_heads": self.num_heads,
                "key_dim": self.key_dim,
                "dropout": self.dropout,
                "feed_forward_dim": self.feed_forward_dim,
                "beta": self.beta,
                "beta_mode": self.beta_mode,
                "activation": self.activation,
                "layer_norm_epsilon": self.layer_norm_epsilon,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            }
        )
        return config


@register
class SubInterestProjection(keras.layers.Layer):
    """Projects an encoded user state onto every sub-interest prototype (SINE eq. 11).

    `o_k = o + sigmoid(o * z_k) * o`, element-wise (`*` is the Hadamard product, as in
    the official code), for each of the `K` prototypes. No weights of its own: `Z` is a
    call argument (`SubInterestAssignment.prototypes`), so one `Z` is shared and
    receives this layer's gradient.

    Args:
        **kwargs: Base layer keyword arguments (`name`, `dtype`, ...).

    Call arguments:
        encoded: float tensor `[B, d]` or `[B, L, d]` (any leading shape). `o`.
        prototypes: float tensor `[K, d]`. `Z`.

    Returns:
        `[B, K, d]` (`[B, L, K, d]`): the sub-interests `o_k`.

    Example:

    ```python
    z = np.random.normal(size=(3, 8)).astype("float32")
    SubInterestProjection()(np.ones((2, 8), "float32"), z).shape  # (2, 3, 8)
    ```
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.built = True

    def call(self, encoded, prototypes):
        encoded = ops.expand_dims(encoded, -2)  # [..., 1, d]
        z = ops.cast(prototypes, encoded.dtype)  # [K, d]
        return encoded + ops.sigmoid(encoded * z) * encoded  # [..., K, d]


@register
class AdaptiveFusion(keras.layers.Layer):
    """Scores a target item by importance-weighted sub-interests (SINE eq. 12-14).

    `r_k = sigmoid(W [e_i ; o_k] + b)` (eq. 12, a Dense sublayer named `importance`,
    `2d -> 1`, input order `[e_i ; o_k]` as in the paper; the official code
    concatenates `[o_k ; e_i]`, which is the same model with the kernel halves
    swapped), `Y_k = r_k / sum_k r_k` (eq. 13) and
    `score = sum_k Y_k (o_k . e_i)` (eq. 14). `normalization` chooses `Y`:

    - `"ratio"`: eq. 13.
    - `"softmax"`: `Y = softmax_k(W [e_i ; o_k] + b)`, as the official code.
    - `"mean"`: `Y_k = 1 / K`, no `importance` sublayer (Table 4, "w/o AF").

    `W [e_i ; o_k]` is computed as `e_i . W_e + o_k . W_o`, so the `[.., C, K, 2d]`
    concatenation is never built. Eq. 13 is computed as `softmax_k(log sigmoid(x_k))`,
    the same value. The plain ratio's gradient is -inf under XLA once every `x_k` is
    below about -45 (its backward squares `sum_k r_k`, about 1e-20 there, and XLA
    flushes the result to 0; eager keeps denormals), and its value is 0 / 0 below about
    -88. A SINE run on MovieLens-100K reached it at epoch 230 (the smallest per-row
    maximum logit at epoch 229: -43.9), and every weight was NaN after that step.

    Args:
        normalization: str. `"ratio"`, `"softmax"` or `"mean"`. Defaults to `"ratio"`.
        kernel_initializer: str or initializer of the `importance` kernel. Defaults to
            `"glorot_uniform"`.
        **kwargs: Base layer keyword arguments (`name`, `dtype`, ...).

    Call arguments:
        interests: float tensor `[B, K, d]` (any leading shape `[..., K, d]`). `o_k`.
        items: float tensor `[B, d]` (one item per user, `[..., d]`) or `[B, C, d]`
            (`C` candidates, `[..., C, d]`). `e_i`.

    Returns:
        Scores `[B]` (`[...]`) or `[B, C]` (`[..., C]`).

    Example:

    ```python
    layer = AdaptiveFusion()
    layer(np.ones((2, 3, 8), "float32"), np.ones((2, 5, 8), "float32")).shape  # (2, 5)
    ```
    """

    def __init__(self, normalization="ratio", kernel_initializer="glorot_uniform", **kwargs):
        super().__init__(**kwargs)
        if normalization not in _NORMALIZATIONS:
            raise ValueError(
                f"`normalization` must be one of {_NORMALIZATIONS}. "
                f"Received: normalization={normalization}"
            )
        self.normalization = normalization
        self.kernel_initializer = keras.initializers.get(kernel_initializer)

    def build(self, interests_shape, items_shape):
        dim = interests_shape[-1]
        if items_shape[-1] != dim:
            raise ValueError(
                "`items` must have the dimension of `interests`. "
                f"Received: interests_shape={interests_shape}, items_shape={items_shape}"
            )
        self.importance = None
        if self.normalization != "mean":
            self.importance = keras.layers.Dense(
                1,
                kernel_initializer=fresh(self.kernel_initializer),
                dtype=self.dtype_policy,
                name="importance",
            )
            self.importance.build((None, 2 * dim))
        self.built = True

    def call(self, interests, items):
        single = len(items.shape) == len(interests.shape) - 1
        if single:
            items = ops.expand_dims(items, -2)  # [..., 1, d]
        dots = ops.matmul(items, ops.swapaxes(interests, -1, -2))  # [..., C, K]
        if self.importance is None:
            scores = ops.mean(dots, axis=-1)  # [..., C]
        else:
            dim = interests.shape[-1]
            kernel = ops.cast(self.importance.kernel, dots.dtype)  # [2d, 1]
            bias = ops.cast(self.importance.bias, dots.dtype)  # [1]
            from_item = ops.matmul(items, kernel[:dim])  # [..., C, 1]
            from_interest = ops.swapaxes(ops.matmul(interests, kernel[dim:]), -1, -2)  # [..., 1, K]
            logits = from_item + from_interest + bias  # [..., C, K]
            if self.normalization == "softmax":
                weights = ops.softmax(logits, axis=-1)
            else:  # eq. 13, r_k / sum_j r_j, as a softmax of log r (see the docstring)
                weights = ops.softmax(ops.log_sigmoid(logits), axis=-1)
            scores = ops.sum(weights * dots, axis=-1)  # [..., C]
        return ops.squeeze(scores, -1) if single else scores

    def score_catalogue(self, interests, items):
        """Scores `[B, N]` of every user's `interests` `[B, K, d]` against one shared
        item table `items` `[N, d]`: `call(interests, items[None])`, computed with one
        `[B*K + 1, d] x [d, N]` product (the `o_k . e_i` dot products and every item's
        `e_i . W_e` term read the table once) and elementwise work on `[B, K, N]`."""
        if not self.built:
            self.build(tuple(interests.shape), tuple(items.shape))
        batch, k, dim = ops.shape(interests)[0], interests.shape[-2], interests.shape[-1]
        queries = ops.reshape(interests, (-1, dim))  # [B*K, d]
        if self.importance is not None:
            kernel = ops.cast(self.importance.kernel, interests.dtype)  # [2d, 1]
            # -> [B*K + 1, d] (the kernel transposed: [1, d])
            queries = ops.concatenate([queries, ops.transpose(kernel[:dim])], axis=0)
        # -> items [d, N]; products [B*K + 1, N] ([B*K, N] without `importance`)
        products = ops.matmul(queries, ops.transpose(ops.cast(items, interests.dtype)))
        dots = ops.reshape(products[: batch * k], (batch, k, -1))  # [B, K, N]
        if self.importance is None:
            return ops.mean(dots, axis=1)
        from_item = ops.expand_dims(products[batch * k:], 0)  # [1, 1, N]
        bias = ops.cast(self.importance.bias, interests.dtype)
        from_interest = ops.matmul(interests, kernel[dim:])  # [B, K, 1]
        logits = from_item + from_interest + bias  # [B, K, N]
        if self.normalization == "softmax":
            weights = ops.softmax(logits, axis=1)
        else:  # eq. 13 as in `call`
            weights = ops.softmax(ops.log_sigmoid(logits), axis=1)
        return ops.sum(weights * dots, axis=1)  # [B, N]

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "normalization": self.normalization,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            }
        )
        return config
