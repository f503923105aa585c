"""The lifelong-attention family CAIN is compared against (issue 14), usable as MSIA's
major attention (`tfnegseq.layers.cain.MultiScopeInterestAggregator`) and standalone.

Every layer is called `layer(sequence [B, N, d_s], target [B, d], mask [B, N])` and
returns `[B, D]`; the retrieval stages are public (`retrieve`) so tests can compare them
with a brute force. Rules shared by all (`docs/design/cain.md` §3.0):

- top-k on float32 scores; padding scores `-inf`, so a padding item is selected only
  when a user has fewer than k real ones, and then it is masked (`valid`) downstream;
- a user without a real item gets a zero interest, never NaN;
- the selected items are gathered with `take_along_axis`: gradients reach the selected
  rows only (the retrieval itself, a top-k, has no gradient).

Built so far: `MultiHeadTargetAttention` (the ESU of SIM, ETA and TWIN),
`SoftSearchAttention` (SIM soft search), `HashRetrievalAttention` (ETA),
`ConsistentTopKAttention` (TWIN), `HashSamplingAttention` (SDIM) and
`LifelongAttentionPyramid` (LAP, our reading: its method section was not available,
`docs/design/cain.md` §3.1).
"""

from __future__ import annotations

import keras
from keras import ops

from tfnegseq.api_export import register


def masked_softmax(scores, real):
    """Softmax over the last axis of `scores` where `real` (bool, same shape) is true,
    0 elsewhere; a row without a real entry gets all zeros (never NaN)."""
    filled = ops.where(real, scores, ops.full_like(scores, -1e9))
    return ops.where(real, ops.softmax(filled, axis=-1), ops.zeros_like(scores))


def select_top_k(scores, mask, k):
    """Indices `[B, k']` (k' = min(k, N)) of the k best real items by `scores`
    `[B, N]` (float32, larger first) and whether each selected slot is real."""
    scores = ops.cast(scores, "float32")
    mask = ops.cast(mask, "bool")
    k = min(int(k), int(scores.shape[1]))
    masked = ops.where(mask, scores, ops.full_like(scores, float("-inf")))
    _, indices = ops.top_k(masked, k, sorted=True)
    valid = ops.take_along_axis(mask, indices, axis=1)
    return indices, valid


def gather_items(sequence, indices):
    """`sequence[b, indices[b, j]]`: `[B, N, d]`, `[B, k]` -> `[B, k, d]`."""
    return ops.take_along_axis(sequence, ops.expand_dims(indices, -1), axis=1)


@register
class MultiHeadTargetAttention(keras.layers.Layer):
    """Multi-head target attention (the ESU of SIM, ETA and TWIN): per head h,
    `a_h = softmax_t((q W_q)_h . (k_t W_k)_h / sqrt(d_h))` over the real items and
    `o = concat_h(sum_t a_h,t (v_t W_v)_h) W_o`; projections without bias, as FuxiCTR's
    `MultiHeadTargetAttention`.

    Args:
        attention_dim: int. Width of the query / key / value projections (split over
            the heads). Defaults to 64.
        num_heads: int dividing `attention_dim`. Defaults to 2.
        output_dim: int or None. Width of W_o; None: the items' width. Defaults to None.

    Call arguments:
        sequence `[B, n, d_s]`, target `[B, d]`, mask bool `[B, n]` or None.

    Returns:
        `[B, output_dim]`; zeros for a user without a real item.

    Example:

    ```python
    layer = MultiHeadTargetAttention(attention_dim=8, num_heads=2)
    out = layer(np.ones((2, 5, 4), "float32"), np.ones((2, 4), "float32"),
                np.ones((2, 5), bool))  # (2, 4)
    ```
    """

    def __init__(self, attention_dim=64, num_heads=2, output_dim=None, **kwargs):
        super().__init__(**kwargs)
        if num_heads < 1 or attention_dim % num_heads:
            raise ValueError(f"`num_heads` must divide `attention_dim`. Received: "
                             f"num_heads={num_heads}, attention_dim={attention_dim}")
        self.attention_dim, self.num_heads, self.output_dim = attention_dim, num_heads, output_dim

    def build(self, sequence_shape, target_shape, mask_shape=None):
        def dense(units, name, shape):
            layer = keras.layers.Dense(units, use_bias=False, dtype=self.dtype_policy,
                                       name=name)
            layer.build(shape)
            return layer

        self.query = dense(self.attention_dim, "query", target_shape)
        self.key = dense(self.attention_dim, "key", sequence_shape)
        self.value = dense(self.attention_dim, "value", sequence_shape)
        self.out = dense(self.output_dim or sequence_shape[-1], "output",
                         (None, self.attention_dim))
        self.built = True

    def heads(self, x):
        """`[B, n, attention_dim]` -> `[B, heads, n, d_h]`."""
        h, dh = self.num_heads, self.attention_dim // self.num_heads
        # -> [B, n, h, dh], transposed: [B, h, n, dh]
        return ops.transpose(ops.reshape(x, (-1, ops.shape(x)[1], h, dh)), (0, 2, 1, 3))

    def logits(self, sequence, target):
        """Scaled dot-product scores `[B, heads, n]`."""
        h, dh = self.num_heads, self.attention_dim // self.num_heads
        q = ops.reshape(self.query(target), (-1, h, 1, dh))  # [B, h, 1, dh]
        k = self.heads(self.key(sequence))  # [B, h, n, dh]
        return ops.matmul(q, ops.swapaxes(k, -1, -2))[:, :, 0] / ops.cast(
            ops.sqrt(float(dh)), q.dtype)

    def pool(self, weights, values):
        """`W_o` of the per-head weighted sums: weights `[B, h, n]`, values
        `[B, h, n, d_h]` -> `[B, output_dim]`."""
        pooled = ops.matmul(ops.expand_dims(weights, 2), values)[:, :, 0]  # [B, h, dh]
        return self.out(ops.reshape(pooled, (-1, self.attention_dim)))  # [B, attention_dim]

    def call(self, sequence, target, mask=None):
        scores = self.logits(sequence, target)  # [B, h, n]
        real = (ops.ones_like(scores, dtype="bool") if mask is None
                else ops.expand_dims(ops.cast(mask, "bool"), 1))
        real = ops.broadcast_to(real, ops.shape(scores))
        return self.pool(masked_softmax(scores, real), self.heads(self.value(sequence)))

    def get_config(self):
        config = super().get_config()
        config.update(attention_dim=self.attention_dim, num_heads=self.num_heads,
                      output_dim=self.output_dim)
        return config


@register
class SoftSearchAttention(keras.layers.Layer):
    """SIM with soft search (Pi et al., CIKM 2020): the general search unit scores every
    behaviour by an inner product of linear projections, `r_t = (x_t W_b) . (e W_a)`,
    keeps the top k real ones, and the exact search unit is a multi-head target
    attention over them.

    Implemented: the soft-search GSU and the ESU. `gsu_pooled` gives SIM's auxiliary
    input `U_r = sum_t r_t x_t` over every real item (the auxiliary CTR loss that trains
    the GSU is the model's, `CainModel`). Simplified: no time-interval embedding in the
    ESU (the lifelong lists carry no timestamps); padding never takes a top-k slot
    (FuxiCTR multiplies padded scores by 0, so a padding item can outrank real items
    with negative scores).

    Args:
        top_k: int. Items the GSU keeps. Defaults to 50.
        attention_dim: int. Width of the GSU projections and the ESU's attention.
            Defaults to 64.
        num_heads: int. Heads of the ESU; must divide `attention_dim`. Defaults to 2.

    Call arguments:
        sequence: float `[B, N, d_s]` the behaviours.
        target: float `[B, d]` the target item.
        mask: bool `[B, N]`, true at real items.

    Returns:
        `[B, d_s]` (the ESU's output, the items' width); zeros for a user without a
        real item.

    Example:

    ```python
    layer = SoftSearchAttention(top_k=3, attention_dim=8, num_heads=2)
    out = layer(np.ones((2, 5, 4), "float32"), np.ones((2, 4), "float32"),
                np.ones((2, 5), bool))  # (2, 4)
    ```
    """

    def __init__(self, top_k=50, attention_dim=64, num_heads=2, **kwargs):
        super().__init__(**kwargs)
        self.top_k, self.attention_dim, self.num_heads = top_k, attention_dim, num_heads

    def build(self, sequence_shape, target_shape, mask_shape=None):
        self.project_target = keras.layers.Dense(self.attention_dim, use_bias=False,
                                                 dtype=self.dtype_policy, name="gsu_target")
        self.project_items = keras.layers.Dense(self.attention_dim, use_bias=False,
                                                dtype=self.dtype_policy, name="gsu_items")
        self.project_target.build(target_shape)
        self.project_items.build(sequence_shape)
        self.esu = MultiHeadTargetAttention(self.attention_dim, self.num_heads,
                                            dtype=self.dtype_policy, name="esu")
        self.esu.build((None, self.top_k, sequence_shape[-1]), target_shape)
        self.built = True

    def relevance(self, sequence, target):
        """GSU scores `[B, N]`."""
        q = self.project_target(target)  # [B, a]
        return ops.squeeze(ops.matmul(self.project_items(sequence), ops.expand_dims(q, -1)), -1)

    def retrieve(self, sequence, target, mask):
        return select_top_k(ops.stop_gradient(self.relevance(sequence, target)), mask,
                            self.top_k)

    def gsu_pooled(self, sequence, target, mask):
        """`U_r = sum_t r_t x_t` over the real items `[B, d_s]` (SIM's auxiliary input)."""
        r = self.relevance(sequence, target) * ops.cast(mask, sequence.dtype)
        return ops.squeeze(ops.matmul(ops.expand_dims(r, 1), sequence), 1)

    def call(self, sequence, target, mask):
        indices, valid = self.retrieve(sequence, target, mask)
        return self.esu(gather_items(sequence, indices), target, valid)

    def get_config(self):
        config = super().get_config()
        config.update(top_k=self.top_k, attention_dim=self.attention_dim,
                      num_heads=self.num_heads)
        return config


@register
class HashRetrievalAttention(keras.layers.Layer):
    """ETA (Chen et al., "End-to-End User Behavior Retrieval in CTR Prediction Model"):
    SimHash signatures `sign(x R)` (R a fixed random `[d, m]` projection, a
    non-trainable weight saved with the model) of the target and every behaviour; the
    k behaviours nearest the target in Hamming distance (ties: the more recent first)
    go to a multi-head target attention.

    Implemented: SimHash retrieval on the shared embeddings (so it follows their
    training, "end to end"), no gradient through the hash. Simplified: one fixed
    projection (FuxiCTR can redraw it per call; a redraw would make serving
    non-deterministic). The target and the items must share a width (one projection).

    Args:
        top_k: int. Items the retrieval keeps. Defaults to 50.
        hash_bits: int. m, the SimHash signature's bits. Defaults to 32.
        attention_dim: int. Width of the ESU's attention. Defaults to 64.
        num_heads: int. Heads of the ESU; must divide `attention_dim`. Defaults to 2.
        seed: int. Seed of the fixed random projection. Defaults to 0.

    Call arguments:
        sequence: float `[B, N, d]` the behaviours.
        target: float `[B, d]` the target item (the items' width).
        mask: bool `[B, N]`, true at real items.
        retrieval_keys: optional float `[B, N, d]`: hash these instead of `sequence`
            and attend over `sequence`. CAIN's backbone substitution passes the raw
            items while `sequence` holds their TCN outputs: a TCN output and the raw
            target live in unrelated spaces, and the hash has no gradient that could
            align them, so hashing the outputs against the target selects items at
            random (a review measured it: the item equal to the target was no nearer in
            Hamming distance than any other). Defaults to None (`sequence`).

    Returns:
        `[B, d]` (the ESU's output, the items' width); zeros for a user without a real
        item.

    Example:

    ```python
    layer = HashRetrievalAttention(top_k=3, hash_bits=8, attention_dim=8, num_heads=2)
    out = layer(np.ones((2, 5, 4), "float32"), np.ones((2, 4), "float32"),
                np.ones((2, 5), bool))  # (2, 4)
    ```
    """

    def __init__(self, top_k=50, hash_bits=32, attention_dim=64, num_heads=2, seed=0,
                 **kwargs):
        super().__init__(**kwargs)
        self.top_k, self.hash_bits = top_k, hash_bits
        self.attention_dim, self.num_heads, self.seed = attention_dim, num_heads, seed

    def build(self, sequence_shape, target_shape, mask_shape=None):
        if sequence_shape[-1] != target_shape[-1]:
            raise ValueError("HashRetrievalAttention hashes the target and the items with "
                             f"one projection: widths must match. Received: "
                             f"{sequence_shape[-1]} and {target_shape[-1]}")
        self.projection = self.add_weight(
            name="projection", shape=(sequence_shape[-1], self.hash_bits), trainable=False,
            initializer=keras.initializers.RandomNormal(seed=self.seed))
        self.esu = MultiHeadTargetAttention(self.attention_dim, self.num_heads,
                                            dtype=self.dtype_policy, name="esu")
        self.esu.build((None, self.top_k, sequence_shape[-1]), target_shape)
        self.built = True

    def signatures(self, x):
        """+-1 SimHash bits `[..., m]` (a projection of exactly 0 counts as +1)."""
        projected = ops.matmul(ops.cast(x, "float32"), ops.cast(self.projection, "float32"))
        return ops.where(projected >= 0, 1.0, -1.0)

    def hamming(self, sequence, target):
        """Hamming distances `[B, N]` between the items' and the target's signatures."""
        s_x = self.signatures(ops.stop_gradient(sequence))  # [B, N, m]
        s_q = self.signatures(ops.stop_gradient(target))  # [B, m]
        agree = ops.squeeze(ops.matmul(s_x, ops.expand_dims(s_q, -1)), -1)  # [B, N]
        return (self.hash_bits - agree) / 2.0

    def retrieve(self, sequence, target, mask):
        length = int(sequence.shape[1])
        distance = self.hamming(sequence, target)
        recency = ops.cast(ops.arange(length), "float32")[None, :]  # later = more recent
        key = (self.hash_bits - distance) * float(length + 1) + recency  # exact in float32
        return select_top_k(key, mask, self.top_k)

    uses_retrieval_keys = True  # MSIA passes the raw items (class docstring)

    def call(self, sequence, target, mask, retrieval_keys=None):
        keys = sequence if retrieval_keys is None else retrieval_keys
        indices, valid = self.retrieve(keys, target, mask)
        return self.esu(gather_items(sequence, indices), target, valid)

    def get_config(self):
        config = super().get_config()
        config.update(top_k=self.top_k, hash_bits=self.hash_bits,
                      attention_dim=self.attention_dim, num_heads=self.num_heads,
                      seed=self.seed)
        return config


@register
class ConsistentTopKAttention(keras.layers.Layer):
    """TWIN (Chang et al., KDD 2023): the consistency-preserving GSU scores every
    behaviour with the ESU's own target-attention logits, per head h
    `alpha_h,t = (q W_q)_h . (x_t W_k)_h / sqrt(d_h) + beta . (c_t W_c)` (the second
    term only with cross features `side`, one scalar bias per behaviour), keeps each
    head's top k, and the ESU is the softmax of those same logits over the selected
    items, applied to `(x_t W_v)_h`, then `W_o`.

    Implemented: the shared logits of both stages (the consistency), per-head top-k
    (as TWIN and FuxiCTR), the cross-feature bias from `side` (e.g. polarity / value /
    position embeddings). Simplified: no caching of the item-only projections (a
    serving optimisation of the paper).

    Args:
        top_k: int. Items the first stage keeps. Defaults to 50.
        attention_dim: int. Width of the attention shared by both stages. Defaults to 64.
        num_heads: int. Heads; must divide `attention_dim`. Defaults to 2.
        output_dim: int or None. Width of the output; None: the items' width. Defaults
            to None.

    Call arguments:
        sequence `[B, N, d_s]`, target `[B, d]`, mask bool `[B, N]`, side: optional
        float `[B, N, c]` cross features.

    Returns:
        `[B, output_dim]` (`[B, d_s]` when `output_dim` is None); zeros for a user
        without a real item.

    Example:

    ```python
    layer = ConsistentTopKAttention(top_k=3, attention_dim=8, num_heads=2)
    out = layer(np.ones((2, 5, 4), "float32"), np.ones((2, 4), "float32"),
                np.ones((2, 5), bool), np.ones((2, 5, 3), "float32"))  # (2, 4)
    ```
    """

    def __init__(self, top_k=50, attention_dim=64, num_heads=2, output_dim=None, **kwargs):
        super().__init__(**kwargs)
        if num_heads < 1 or attention_dim % num_heads:
            raise ValueError(f"`num_heads` must divide `attention_dim`. Received: "
                             f"num_heads={num_heads}, attention_dim={attention_dim}")
        self.top_k, self.attention_dim = top_k, attention_dim
        self.num_heads, self.output_dim = num_heads, output_dim

    def build(self, sequence_shape, target_shape, mask_shape=None, side_shape=None):
        # the projections and head split of a MultiHeadTargetAttention, whose logits
        # serve both stages
        self.attention = MultiHeadTargetAttention(self.attention_dim, self.num_heads,
                                                  self.output_dim, dtype=self.dtype_policy,
                                                  name="attention")
        self.attention.build(sequence_shape, target_shape)
        self.cross = None
        if side_shape is not None:  # beta . (c W_c) in one map
            self.cross = keras.layers.Dense(1, use_bias=False, dtype=self.dtype_policy,
                                            name="cross")
            self.cross.build(side_shape)
        self.built = True

    def logits(self, sequence, target, side=None):
        """The shared logits `[B, heads, N]` (GSU and ESU)."""
        scores = self.attention.logits(sequence, target)
        if side is not None:
            if self.cross is None:
                raise ValueError("`side` was not given when the layer was built")
            scores = scores + ops.expand_dims(ops.squeeze(self.cross(side), -1), 1)
        return scores

    def retrieve(self, sequence, target, mask, side=None):
        """Per head: indices `[B, heads, k]`, valid, and the selected logits."""
        scores = ops.cast(self.logits(sequence, target, side), "float32")
        real = ops.broadcast_to(ops.expand_dims(ops.cast(mask, "bool"), 1), ops.shape(scores))
        k = min(int(self.top_k), int(scores.shape[-1]))
        picked, indices = ops.top_k(ops.where(real, scores, float("-inf")), k, sorted=True)
        valid = ops.take_along_axis(real, indices, axis=-1)
        return indices, valid, picked

    def call(self, sequence, target, mask, side=None):
        indices, valid, _ = self.retrieve(sequence, target, mask, side)
        # the ESU weights: softmax of the *same* logits, recomputed on the selected items
        # so that gradients flow to them (the top-k values carry no gradient on every
        # backend), over the real ones
        scores = self.logits(sequence, target, side)
        selected = ops.take_along_axis(scores, indices, axis=-1)  # [B, h, k]
        weights = masked_softmax(selected, valid)
        values = self.attention.heads(self.attention.value(sequence))  # [B, h, N, dh]
        gathered = ops.take_along_axis(values, ops.expand_dims(indices, -1), axis=2)
        return self.attention.pool(weights, gathered)

    def get_config(self):
        config = super().get_config()
        config.update(top_k=self.top_k, attention_dim=self.attention_dim,
                      num_heads=self.num_heads, output_dim=self.output_dim)
        return config


@register
class HashSamplingAttention(keras.layers.Layer):
    """SDIM (Cao et al., CIKM 2022): `m` SimHash functions of `tau` bits each put the
    target and every behaviour in one of `2^tau` buckets; per function, the interest is
    the sum of the behaviours in the target's bucket (L2-normalised when `normalize`),
    and the output is the mean over the functions. No retrieval stage and no attention
    weights: the collision probability stands in for an attention kernel on the angle.

    Implemented: the sampling-based aggregation with fixed projections (non-trainable,
    saved). Simplified: no separate short-sequence attention (the model has its own).
    `normalize` defaults to True, the paper's reading (FuxiCTR's default is False).

    Args:
        num_hashes: int. m, the number of hash functions. Defaults to 48.
        hash_bits: int. tau, bits per hash function. Defaults to 3.
        normalize: bool. L2-normalise the sum of the target bucket's behaviours. Defaults
            to True.
        seed: int. Seed of the fixed random projections. Defaults to 0.

    Call arguments:
        sequence: float `[B, N, d]` the behaviours.
        target: float `[B, d]` the target item (the items' width).
        mask: bool `[B, N]`, true at real items.
        retrieval_keys: optional float `[B, N, d]`: bucket these instead of `sequence`
            and sum `sequence` (as `HashRetrievalAttention`: CAIN passes the raw items
            beside their TCN outputs). Defaults to None (`sequence`).

    Returns:
        `[B, d]`: the mean over the `m` functions of the bucket sums; zeros for a user
        without a real item.

    Example:

    ```python
    layer = HashSamplingAttention(num_hashes=4, hash_bits=2)
    out = layer(np.ones((2, 5, 4), "float32"), np.ones((2, 4), "float32"),
                np.ones((2, 5), bool))  # (2, 4)
    ```
    """

    def __init__(self, num_hashes=48, hash_bits=3, normalize=True, seed=0, **kwargs):
        super().__init__(**kwargs)
        self.num_hashes, self.hash_bits = num_hashes, hash_bits
        self.normalize, self.seed = normalize, seed

    def build(self, sequence_shape, target_shape, mask_shape=None):
        if sequence_shape[-1] != target_shape[-1]:
            raise ValueError("HashSamplingAttention hashes the target and the items with "
                             f"the same projections: widths must match. Received: "
                             f"{sequence_shape[-1]} and {target_shape[-1]}")
        self.projection = self.add_weight(
            name="projection", shape=(sequence_shape[-1], self.num_hashes * self.hash_bits),
            trainable=False, initializer=keras.initializers.RandomNormal(seed=self.seed))
        self.built = True

    def buckets(self, x):
        """Bucket `[..., m]` (float32, exact) of each hash function: sum_i bit_i 2^i."""
        bits = ops.matmul(ops.cast(ops.stop_gradient(x), "float32"),
                          ops.cast(self.projection, "float32")) >= 0
        # -> [..., m, tau]
        bits = ops.reshape(ops.cast(bits, "float32"),
                           (*ops.shape(bits)[:-1], self.num_hashes, self.hash_bits))
        powers = ops.cast(2 ** ops.arange(self.hash_bits), "float32")
        return ops.sum(bits * powers, axis=-1)

    def collisions(self, sequence, target, mask):
        """`[B, N, m]` 1.0 where a real item shares the target's bucket."""
        same = ops.equal(self.buckets(sequence), ops.expand_dims(self.buckets(target), 1))
        return ops.cast(same & ops.expand_dims(ops.cast(mask, "bool"), -1), sequence.dtype)

    uses_retrieval_keys = True

    def call(self, sequence, target, mask, retrieval_keys=None):
        keys = sequence if retrieval_keys is None else retrieval_keys
        weights = self.collisions(keys, target, mask)  # [B, N, m]
        sums = ops.matmul(ops.swapaxes(weights, 1, 2), sequence)  # [B, m, d]
        if self.normalize:
            # rsqrt of the clamped square, not sqrt then clamp: a function whose bucket
            # holds no item has sums == 0, and sqrt's gradient at 0 is 0 * inf = nan
            squared = ops.sum(sums * sums, axis=-1, keepdims=True)
            sums = sums * ops.rsqrt(ops.maximum(squared, ops.cast(1e-24, sums.dtype)))
        return ops.mean(sums, axis=1)

    def get_config(self):
        config = super().get_config()
        config.update(num_hashes=self.num_hashes, hash_bits=self.hash_bits,
                      normalize=self.normalize, seed=self.seed)
        return config


@register
class LifelongAttentionPyramid(keras.layers.Layer):
    """LAP, the lifelong attention pyramid of LCN (Hou et al., "Cross-Domain LifeLong
    Sequential Modeling for Online Click-Through Rate Prediction", KDD 2024; CAIN's
    reference [21] and its major attention). **Our reading**: LCN's method section was
    not available (`docs/design/cain.md` §3.1); what is known is three cascading
    attention levels whose results are all combined, every item receiving a gradient,
    and each level narrowing the candidates of the next. Implemented as:

    - level 1 (all N items): `s1_t = (e W_q1) . (x_t W_k1) / sqrt(d_a)`, `IR_1 =
      (sum_t softmax(s1)_t x_t W_v1) W_o1` over the real items (every real item gets a
      gradient), and `S1` = its top `k1`;
    - level 2 (the `k1` items of S1): the same form with its own projections, `IR_2`,
      and `S2` = the top `k2` of S1 by `s2` (so S2 is a subset of S1);
    - level 3 (the `k2` items of S2): `MultiHeadTargetAttention` ("advanced attention"
      on the narrowest pool), `IR_3`;
    - output `[IR_1 ; IR_2 ; IR_3]`.

    Args:
        top_k: tuple of two ints (k1, k2), 1 <= k2 <= k1. Items levels 1 and 2 keep.
            Defaults to (256, 64).
        attention_dim: int. d_a, and the value width of levels 1-2. Defaults to 64.
        num_heads: int. Heads of level 3. Defaults to 2.

    Call arguments:
        sequence: float `[B, N, d_s]` the behaviours.
        target: float `[B, d]` the target item.
        mask: bool `[B, N]`, true at real items.

    Returns:
        `[B, 3 * attention_dim]`, `[IR_1 ; IR_2 ; IR_3]` (every level's output is
        `attention_dim` wide); zeros for a user without a real item.

    Example:

    ```python
    layer = LifelongAttentionPyramid(top_k=(4, 2), attention_dim=8, num_heads=2)
    out = layer(np.ones((2, 5, 4), "float32"), np.ones((2, 4), "float32"),
                np.ones((2, 5), bool))  # (2, 24)
    ```
    """

    def __init__(self, top_k=(256, 64), attention_dim=64, num_heads=2, **kwargs):
        super().__init__(**kwargs)
        top_k = tuple(int(k) for k in top_k)
        if len(top_k) != 2 or top_k[1] > top_k[0] or min(top_k) < 1:
            raise ValueError(f"`top_k` must be (k1, k2) with 1 <= k2 <= k1. Received: top_k={top_k}")
        self.top_k, self.attention_dim, self.num_heads = top_k, attention_dim, num_heads

    def build(self, sequence_shape, target_shape, mask_shape=None):
        self.levels = [PyramidLevel(self.attention_dim, name=f"level_{n}",
                                                      dtype=self.dtype_policy)
                       for n in (1, 2)]
        for level in self.levels:
            level.build(sequence_shape, target_shape)
        self.focus = MultiHeadTargetAttention(self.attention_dim, self.num_heads,
                                              output_dim=self.attention_dim,
                                              dtype=self.dtype_policy, name="level_3")
        self.focus.build((None, self.top_k[1], sequence_shape[-1]), target_shape)
        self.built = True

    def retrieve(self, sequence, target, mask):
        """`(S1 indices [B, k1], valid), (S2 indices [B, k2] into the sequence, valid)`."""
        s1 = self.levels[0].scores(sequence, target)
        i1, v1 = select_top_k(ops.stop_gradient(s1), mask, self.top_k[0])
        s2 = self.levels[1].scores(gather_items(sequence, i1), target)
        j2, v2 = select_top_k(ops.stop_gradient(s2), v1, self.top_k[1])
        return (i1, v1), (ops.take_along_axis(i1, j2, axis=1), v2)

    def call(self, sequence, target, mask):
        (i1, v1), (i2, v2) = self.retrieve(sequence, target, mask)
        ir1 = self.levels[0](sequence, target, mask)
        ir2 = self.levels[1](gather_items(sequence, i1), target, v1)
        ir3 = self.focus(gather_items(sequence, i2), target, v2)
        return ops.concatenate([ir1, ir2, ir3], axis=-1)

    def get_config(self):
        config = super().get_config()
        config.update(top_k=list(self.top_k), attention_dim=self.attention_dim,
                      num_heads=self.num_heads)
        return config


@register
class PyramidLevel(keras.layers.Layer):
    """One level of `LifelongAttentionPyramid`: a one-head `MultiHeadTargetAttention`
    (`s_t = (e W_q) . (x_t W_k) / sqrt(d_a)`, output `(sum_t softmax(s)_t x_t W_v) W_o`
    over the real items, zeros without one) whose scores `scores` also rank the items
    for the next level."""

    def __init__(self, attention_dim=64, **kwargs):
        super().__init__(**kwargs)
        self.attention_dim = attention_dim

    def build(self, sequence_shape, target_shape, mask_shape=None):
        self.inner = MultiHeadTargetAttention(self.attention_dim, 1,
                                              output_dim=self.attention_dim,
                                              dtype=self.dtype_policy, name="attention")
        self.inner.build(sequence_shape, target_shape)
        self.built = True

    def scores(self, sequence, target):
        """The level's attention logits `[B, n]` (one head)."""
        return self.inner.logits(sequence, target)[:, 0]

    def call(self, sequence, target, mask):
        return self.inner(sequence, target, mask)

    def get_config(self):
        config = super().get_config()
        config.update(attention_dim=self.attention_dim)
        return config
