"""Unified-block backbones: OneTrans, HyFormer and MixFormer, and the parts they share.

Each backbone reads the (polarity-encoded) behaviour tokens `seq` `[B, L, d]` with their
mask `[B, L]` and the non-sequential tokens `ns` `[B, T, d]` (user profile, target item
and its side features, context: `CtrModel` builds them by OneTrans' Auto-Split,
`split(Dense(concat(features)), T)`), and returns `T` output tokens `[B, T, d]` for the
prediction head. None of the three papers has official code; each class's docstring
says what it implements and what it simplifies (sources: arXiv 2510.26104 OneTrans,
2601.12681 HyFormer, 2602.14110 MixFormer, 2507.15551 RankMixer for token mixing).

Shared conventions: pre-RMSNorm residual blocks (`keras.layers.RMSNormalization`);
attention logits and softmax in float32; a query with no key it may attend to (a fully
padded history) gets a zero context, never a NaN; padded behaviour tokens are masked as
keys, so they never reach a real token or the NS tokens' outputs (a padded slot's own
row, returned only by `return_sequence=True` for the analyses, is normalised noise).
"""

from __future__ import annotations

import math

import keras
from keras import ops

from tfnegseq.api_export import register
from tfnegseq.layers._common import check_block_args, check_int, fresh
from tfnegseq.layers.dropout import CounterDropout

NEG_INF = -1e9


def token_mixing(x, heads: int):
    """RankMixer's parameter-free token mixing: `[B, T, D] -> [B, heads, T * D / heads]`.

    Every token is cut into `heads` chunks of `D / heads`; output token `h` is the
    concatenation of chunk `h` of every input token. With `heads == T` the shape is kept
    (and the operation is its own inverse).
    """
    tokens, dim = x.shape[1], x.shape[2]
    y = ops.reshape(x, (-1, tokens, heads, dim // heads))  # [B, T, heads, D / heads]
    y = ops.transpose(y, (0, 2, 1, 3))  # [B, heads, T, D / heads]
    return ops.reshape(y, (-1, heads, tokens * (dim // heads)))  # [B, heads, T * D / heads]


def pyramid_schedule(length: int, ns_tokens: int, num_layers: int) -> list[int]:
    """Behaviour tokens that emit queries (and survive) in each OneTrans layer.

    OneTrans §3.4: "only a tail subset of the most recent sequential tokens emits
    queries", the count shrinking linearly over the stack "until it matches the number
    of non-sequential tokens" at the top. Here: linearly from all `length` tokens at the
    first layer to `min(length, ns_tokens)` at the last, except that the last layer
    keeps none, as its behaviour-token outputs nothing would read (the readout is the NS
    tokens), so only the NS tokens query there. One layer: `[0]`; two layers:
    `[length, 0]` (no behaviour token is dropped before the top layer: the pyramid
    changes nothing at two layers).
    """
    if num_layers == 1:
        return [0]
    end = min(length, ns_tokens)
    ramp = [int(round(length + (end - length) * i / (num_layers - 1)))
            for i in range(num_layers)]
    return ramp[:-1] + [0]


def attend(query, key, value, allowed, num_heads: int):
    """Scaled dot-product attention over heads with a boolean `allowed` `[B|1, Tq, Tk]`.

    `query` `[B, Tq, d]`, `key`/`value` `[B, Tk, d]` (already projected). Logits and
    softmax in float32; weights of disallowed keys are exactly 0, and a query with no
    allowed key gets a zero context. Returns `(context [B, Tq, d], weights
    [B, heads, Tq, Tk] float32)`.
    """
    dim = query.shape[-1]
    head_dim = dim // num_heads

    def split(x):  # [B, T, d] -> [B, h, T, dh]
        shape = ops.shape(x)
        return ops.transpose(ops.reshape(x, (shape[0], shape[1], num_heads, head_dim)),
                             (0, 2, 1, 3))  # [B, h, T, dh]

    q, k, v = split(query), split(key), split(value)
    logits = ops.einsum("bhqc,bhkc->bhqk", ops.cast(q, "float32"), ops.cast(k, "float32"))
    logits = logits / math.sqrt(head_dim)
    allowed = ops.expand_dims(ops.cast(allowed, "bool"), 1)  # [B|1, 1, Tq, Tk]
    logits = ops.where(allowed, logits, NEG_INF)
    weights = ops.softmax(logits, axis=-1) * ops.cast(allowed, "float32")
    context = ops.einsum("bhqk,bhkc->bqhc", ops.cast(weights, v.dtype), v)
    shape = ops.shape(context)
    return ops.reshape(context, (shape[0], shape[1], dim)), weights  # [B, Tq, d]


def attend_per_user(query, key, value, mask, num_heads: int, candidates=1):
    """`attend` for C candidates' queries per user against one user's keys.

    `query` `[B * C, Tq, d]` (user b's candidates at rows `b * C .. b * C + C - 1`),
    `key`/`value` `[B, L, d]`, `mask` bool `[B, L]` (the real keys): the keys and values
    are read per user, never copied per candidate. Returns `(context [B * C, Tq, d],
    weights [B * C, heads, Tq, L] float32)`; with C = 1 it is `attend` with every real
    key allowed.
    """
    tokens, dim = query.shape[1], query.shape[2]
    head_dim = dim // num_heads
    users, length = ops.shape(key)[0], ops.shape(key)[1]
    q = ops.reshape(query, (users, candidates, tokens, num_heads, head_dim))  # [B, C, Tq, h, dh]
    k = ops.reshape(key, (users, length, num_heads, head_dim))  # [B, L, h, dh]
    v = ops.reshape(value, (users, length, num_heads, head_dim))  # [B, L, h, dh]
    logits = ops.einsum("bcthe,blhe->bchtl", ops.cast(q, "float32"), ops.cast(k, "float32"))
    ok = ops.reshape(ops.cast(mask, "bool"), (users, 1, 1, 1, length))  # [B, 1, 1, 1, L]
    logits = ops.where(ok, logits / math.sqrt(head_dim), NEG_INF)
    weights = ops.softmax(logits, axis=-1) * ops.cast(ok, "float32")  # [B, C, h, Tq, L]
    context = ops.einsum("bchtl,blhe->bcthe", ops.cast(weights, v.dtype), v)
    # -> context [B * C, Tq, d], weights [B * C, h, Tq, L]
    return (ops.reshape(context, (users * candidates, tokens, dim)),
            ops.reshape(weights, (users * candidates, num_heads, tokens, length)))


@register
class PerTokenDense(keras.layers.Layer):
    """A Dense layer with its own kernel and bias for each of `T` token positions.

    `y[:, t] = activation(x[:, t] @ kernel[t] + bias[t])`; the input must have a static
    token count `T`. OneTrans' token-specific non-sequential parameters, RankMixer's
    per-token FFN and MixFormer's per-head FFNs are built from it.

    Args:
        units: int. Output width, at least 1.
        activation: str or None. Defaults to None.
        use_bias: bool. Defaults to True.
        kernel_initializer: initializer of the `[T, d_in, units]` kernel (each token's
            slice drawn independently with the variance of a Dense kernel of shape
            `[d_in, units]`). Defaults to `"glorot_uniform"`.

    Call arguments:
        x: float `[B, T, d_in]` (static T).

    Returns:
        `[B, T, units]`.

    Example:

    ```python
    layer = PerTokenDense(4)
    y = layer(np.ones((2, 3, 8), "float32"))  # (2, 3, 4)
    ```
    """

    def __init__(self, units, activation=None, use_bias=True,
                 kernel_initializer="glorot_uniform", **kwargs):
        super().__init__(**kwargs)
        check_int("units", units)
        self.units = units
        self.activation = keras.activations.get(activation)
        self.use_bias = use_bias
        self.kernel_initializer = keras.initializers.get(kernel_initializer)

    def build(self, input_shape):
        tokens, dim = input_shape[-2], input_shape[-1]
        if tokens is None:
            raise ValueError(f"{self.name}: the token count must be static. "
                             f"Received: input_shape={input_shape}")
        init = fresh(self.kernel_initializer)
        if isinstance(init, keras.initializers.VarianceScaling):
            # Keras reads [T, d_in, units] as a convolution kernel with receptive field T
            # (fans T * d_in, T * units): scaling by T gives each token's slice the
            # variance of a Dense kernel [d_in, units]; one call, so slices differ
            init = keras.initializers.VarianceScaling(
                scale=init.scale * tokens, mode=init.mode, distribution=init.distribution,
                seed=init.seed)
        self.kernel = self.add_weight(shape=(tokens, dim, self.units), initializer=init,
                                      name="kernel")
        self.bias = (self.add_weight(shape=(tokens, self.units), initializer="zeros",
                                     name="bias") if self.use_bias else None)
        self.built = True

    def call(self, x):
        y = ops.einsum("btd,tdu->btu", x, ops.cast(self.kernel, x.dtype))
        if self.bias is not None:
            y = y + ops.cast(self.bias, x.dtype)
        return self.activation(y)

    def get_config(self):
        config = super().get_config()
        config.update(units=self.units, activation=keras.activations.serialize(self.activation),
                      use_bias=self.use_bias,
                      kernel_initializer=keras.initializers.serialize(self.kernel_initializer))
        return config


class _UnifiedBlock(keras.layers.Layer):
    """Arguments, validation and config shared by the three backbones."""

    def __init__(self, num_layers, num_heads, ff_dim, dropout=0.0, epsilon=1e-6,
                 kernel_initializer="glorot_uniform", **kwargs):
        super().__init__(**kwargs)
        check_block_args(num_layers, num_heads, ff_dim, dropout)
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.ff_dim = ff_dim
        self.dropout = dropout
        self.epsilon = epsilon
        self.kernel_initializer = keras.initializers.get(kernel_initializer)

    def _check_shapes(self, seq_shape, ns_shape):
        length, tokens, dim = seq_shape[1], ns_shape[1], ns_shape[-1]
        if seq_shape[-1] != dim:
            raise ValueError(f"{self.name}: `seq` and `ns` need the same width. "
                             f"Received: seq_shape={seq_shape}, ns_shape={ns_shape}")
        if tokens is None:
            raise ValueError(f"{self.name}: the non-sequential token count must be static. "
                             f"Received: ns_shape={ns_shape}")
        if dim % self.num_heads:
            raise ValueError(f"{self.name}: `num_heads` must divide the token width. "
                             f"Received: num_heads={self.num_heads}, width={dim}")
        return length, tokens, dim

    def _common(self):
        return {"dtype": self.dtype_policy}

    def _dense(self, units, name, activation=None, use_bias=True):
        return keras.layers.Dense(units, activation=activation, use_bias=use_bias,
                                  kernel_initializer=fresh(self.kernel_initializer), name=name,
                                  **self._common())

    def _per_token(self, units, name, activation=None, use_bias=True):
        return PerTokenDense(units, activation=activation, use_bias=use_bias,
                             kernel_initializer=self.kernel_initializer, name=name,
                             **self._common())

    def _norm(self, name):
        return keras.layers.RMSNormalization(epsilon=self.epsilon, name=name, **self._common())

    def _drop(self, x, training):
        return self.residual_dropout(x, training=training)

    def get_config(self):
        config = super().get_config()
        config.update(num_layers=self.num_layers, num_heads=self.num_heads,
                      ff_dim=self.ff_dim, dropout=self.dropout, epsilon=self.epsilon,
                      kernel_initializer=keras.initializers.serialize(self.kernel_initializer))
        return config


@register
class OneTransEncoder(_UnifiedBlock):
    """OneTrans (arXiv 2510.26104): one causal Transformer over `[S-tokens; NS-tokens]`.

    Implemented as the paper describes (§3.1-3.4): the behaviour tokens (oldest first,
    the most recent last) are followed by the `T` non-sequential tokens; each of
    `num_layers` pre-RMSNorm blocks computes
    `Z = X + MixedMHA(RMSNorm(X))`, `X' = Z + MixedFFN(RMSNorm(Z))` with **mixed
    parameterisation**: every behaviour token shares one set of Q/K/V, output and FFN
    weights (`seq_*` Dense layers); each non-sequential token has its own
    (`ns_*` `PerTokenDense` layers, one kernel slice per token). Attention is
    **causal** over the concatenated order: a behaviour token sees itself and earlier
    behaviour tokens only; non-sequential token `j` sees every behaviour token and NS tokens
    `1..j`. **Pyramid stacking** (`pyramid=True`): layer `i` computes queries (and
    keeps outputs) only for the most recent `pyramid_schedule(L, T, num_layers)[i]`
    behaviour tokens and all NS tokens, while its keys and values cover every token
    the previous layer kept; in the last layer only the NS tokens query (without the
    pyramid, every behaviour token queries in every layer but the last). The output
    is the NS tokens after a final RMSNorm.

    Simplified or chosen where the paper is silent: one RMSNorm per sublayer shared by
    all tokens; FFN `W2 gelu(W1 x)` of width `ff_dim`; the attention output projection
    follows the mixed rule (shared for behaviour rows, per token for NS rows); the
    pyramid is linear without the paper's rounding to multiples of 32; the readout
    is the NS tokens (the paper says histories are "distilled inside the
    non-sequential tokens" but does not name the readout); no [SEP] tokens (one
    mixed sequence). Because the behaviour tokens never attend to NS tokens, their
    keys and values do not depend on the candidate and can be cached across
    candidates (§3.5.1) when the behaviour tokens themselves do not (TAPF on the input
    makes them candidate-dependent).

    Args:
        num_layers: int >= 1.
        num_heads: int >= 1, divides the token width.
        ff_dim: int >= 1. FFN hidden width.
        pyramid: bool. Pyramid stacking. Defaults to True.
        dropout: float in [0, 1): on both residual branches. Defaults to 0.0.
        epsilon: RMSNorm epsilon. Defaults to 1e-6.
        kernel_initializer: Defaults to `"glorot_uniform"`.

    Sublayers per layer `i`: `attention_norm_{i}`, `seq_qkv_{i}` (Dense 3d),
    `ns_qkv_{i}` (PerTokenDense 3d), `ns_out_{i}`, `ffn_norm_{i}`, `ns_ffn_inner_{i}`,
    `ns_ffn_outer_{i}`, and where behaviour tokens query (every layer but the last)
    `seq_out_{i}`, `seq_ffn_inner_{i}`, `seq_ffn_outer_{i}`; then `final_norm`.

    Call arguments:
        seq: `[B, L, d]` behaviour tokens (static L), the most recent last.
        ns: `[B, T, d]` non-sequential tokens (static T).
        mask: bool `[B, L]` or None (all real).
        training: dropout mode.
        return_sequence: also return the behaviour tokens that enter the last layer
            (the outputs of the layer before it; the inputs with one layer), after
            the final norm: `(ns_out, seq_out)`.
        return_attention_scores: also return the last layer's attention weights of the
            NS queries `[B, heads, T, L_last_in + T]` (keys: the behaviour tokens that
            entered the last layer, then the NS tokens).

    Returns:
        `[B, T, d]`, or a tuple as above.

    Example:

    ```python
    layer = OneTransEncoder(num_layers=2, num_heads=2, ff_dim=16)
    out = layer(np.ones((2, 5, 8), "float32"), np.ones((2, 3, 8), "float32"),
                np.ones((2, 5), bool))  # (2, 3, 8)
    ```
    """

    def __init__(self, num_layers, num_heads, ff_dim, pyramid=True, **kwargs):
        super().__init__(num_layers, num_heads, ff_dim, **kwargs)
        self.pyramid = bool(pyramid)

    def build(self, seq_shape, ns_shape, mask_shape=None):
        length, tokens, dim = self._check_shapes(seq_shape, ns_shape)
        if length is None:
            raise ValueError(f"{self.name}: the behaviour sequence length must be static. "
                             f"Received: seq_shape={seq_shape}")
        self.schedule = (pyramid_schedule(length, tokens, self.num_layers) if self.pyramid
                         else [length] * (self.num_layers - 1) + [0])
        seq, ns = (None, None, dim), (None, tokens, dim)
        self.blocks = []
        for i in range(self.num_layers):
            block = {
                "attention_norm": self._norm(f"attention_norm_{i}"),
                "seq_qkv": self._dense(3 * dim, f"seq_qkv_{i}"),
                "ns_qkv": self._per_token(3 * dim, f"ns_qkv_{i}"),
                "ns_out": self._per_token(dim, f"ns_out_{i}"),
                "ffn_norm": self._norm(f"ffn_norm_{i}"),
                "ns_ffn_inner": self._per_token(self.ff_dim, f"ns_ffn_inner_{i}", "gelu"),
                "ns_ffn_outer": self._per_token(dim, f"ns_ffn_outer_{i}"),
            }
            if self.schedule[i]:  # behaviour tokens emit queries in this layer
                block["seq_out"] = self._dense(dim, f"seq_out_{i}")
                block["seq_ffn_inner"] = self._dense(self.ff_dim, f"seq_ffn_inner_{i}", "gelu")
                block["seq_ffn_outer"] = self._dense(dim, f"seq_ffn_outer_{i}")
                block["seq_out"].build(seq)
                block["seq_ffn_inner"].build(seq)
                block["seq_ffn_outer"].build((None, None, self.ff_dim))
            for key in ("attention_norm", "ffn_norm", "seq_qkv"):
                block[key].build(seq)
            block["ns_qkv"].build(ns)
            block["ns_out"].build(ns)
            block["ns_ffn_inner"].build(ns)
            block["ns_ffn_outer"].build((None, tokens, self.ff_dim))
            self.blocks.append(block)
        self.final_norm = self._norm("final_norm")
        self.final_norm.build(seq)
        self.residual_dropout = CounterDropout(self.dropout, **self._common())
        self.built = True

    def call(self, seq, ns, mask=None, training=None, return_sequence=False,
             return_attention_scores=False):
        cache, entering = self._sequence_pass(seq, mask, training)
        out = self.decode(ns, cache, training=training,
                          return_attention_scores=return_attention_scores)
        if not return_sequence:
            return out
        out = out if isinstance(out, tuple) else (out,)
        return (out[0], self.final_norm(entering), *out[1:])

    def sequence_cache(self, seq, mask=None, training=None):
        """The behaviour side, which never reads the NS tokens (causal order): per
        layer, the keys, values and key mask `(k [B, L_i, d], v [B, L_i, d], mask
        [B, L_i])` the NS queries attend to. Computed once per user, it serves any
        number of candidates (`decode`); OneTrans §3.5.1's cross-candidate KV cache."""
        return self._sequence_pass(seq, mask, training)[0]

    def _sequence_pass(self, seq, mask, training):
        if mask is None:
            mask = ops.ones(ops.shape(seq)[:2], dtype="bool")
        mask = ops.cast(mask, "bool")
        s, current, cache = seq, seq.shape[1], []
        entering = seq  # the behaviour tokens entering the last layer
        for i, block in enumerate(self.blocks):
            keep = self.schedule[i]
            q_s, k_s, v_s = ops.split(block["seq_qkv"](block["attention_norm"](s)), 3, axis=-1)
            cache.append((k_s, v_s, mask))
            if not keep:
                continue
            # the most recent `keep` tokens query the behaviour tokens at or before them
            positions = ops.arange(current)
            causal = (ops.expand_dims(positions[current - keep:], 1)
                      >= ops.expand_dims(positions, 0))  # [keep, current]
            allowed = ops.logical_and(ops.expand_dims(causal, 0), ops.expand_dims(mask, 1))
            context, _ = attend(q_s[:, current - keep:], k_s, v_s, allowed, self.num_heads)
            s = s[:, current - keep:] + self._drop(block["seq_out"](context), training)
            s = s + self._drop(block["seq_ffn_outer"](block["seq_ffn_inner"](
                block["ffn_norm"](s))), training)
            mask = mask[:, current - keep:]
            current = keep
            entering = s
        return cache, entering

    def decode(self, ns, cache, training=None, return_attention_scores=False, candidates=1):
        """The NS tokens' pass given the behaviour side's `cache` (`sequence_cache`):
        NS token j attends to every real behaviour key and to NS tokens 1..j.

        `candidates` (C): `ns` holds C candidates' NS tokens per user, `[B * C, T, d]`
        (user b's at rows `b * C .. b * C + C - 1`), against a cache of B users: the
        behaviour keys and values are read per user, never copied per candidate.
        Returns `[B * C, T, d]` (and the weights `[B * C, heads, T, L_last + T]`).
        """
        tokens, dim = ns.shape[1], ns.shape[2]
        heads, head_dim = self.num_heads, dim // self.num_heads
        causal = (ops.expand_dims(ops.arange(tokens), 1)
                  >= ops.expand_dims(ops.arange(tokens), 0))  # [T, T]
        n, weights = ns, None
        for block, (k_s, v_s, mask) in zip(self.blocks, cache, strict=True):
            users, length = ops.shape(k_s)[0], ops.shape(k_s)[1]
            q_n, k_n, v_n = ops.split(block["ns_qkv"](block["attention_norm"](n)), 3, axis=-1)

            def per_candidate(x, users=users):  # [B * C, T, d] -> [B, C, T, h, dh]
                return ops.reshape(x, (users, candidates, tokens, heads, head_dim))

            def per_user(x, users=users, length=length):  # [B, L, d] -> [B, L, h, dh]
                return ops.reshape(x, (users, length, heads, head_dim))

            q, kn, vn = per_candidate(q_n), per_candidate(k_n), per_candidate(v_n)
            q32 = ops.cast(q, "float32")
            scale = 1.0 / math.sqrt(head_dim)
            logit_s = ops.einsum("bcthe,blhe->bchtl", q32,
                                 ops.cast(per_user(k_s), "float32")) * scale
            logit_n = ops.einsum("bcthe,bcshe->bchts", q32, ops.cast(kn, "float32")) * scale
            ok_s = ops.reshape(mask, (users, 1, 1, 1, length))  # [B, 1, 1, 1, L]
            ok_n = ops.reshape(causal, (1, 1, 1, tokens, tokens))  # [1, 1, 1, T, T]
            logits = ops.concatenate([ops.where(ok_s, logit_s, NEG_INF),
                                      ops.where(ok_n, logit_n, NEG_INF)], axis=-1)
            ok = ops.concatenate([ops.broadcast_to(ok_s, ops.shape(logit_s)),
                                  ops.broadcast_to(ok_n, ops.shape(logit_n))], axis=-1)
            w = ops.softmax(logits, axis=-1) * ops.cast(ok, "float32")  # [B, C, h, T, L + T]
            w_s = ops.cast(w[..., :length], v_s.dtype)
            w_n = ops.cast(w[..., length:], vn.dtype)
            context = (ops.einsum("bchtl,blhe->bcthe", w_s, per_user(v_s))
                       + ops.einsum("bchts,bcshe->bcthe", w_n, vn))
            context = ops.reshape(context, (users * candidates, tokens, dim))  # [B * C, T, d]
            # -> [B * C, h, T, L + T]
            weights = ops.reshape(w, (users * candidates, heads, tokens, length + tokens))
            n = n + self._drop(block["ns_out"](context), training)
            n = n + self._drop(block["ns_ffn_outer"](block["ns_ffn_inner"](
                block["ffn_norm"](n))), training)
        out = self.final_norm(n)
        return (out, weights) if return_attention_scores else out

    def get_config(self):
        config = super().get_config()
        config.update(pyramid=self.pyramid)
        return config


def _masked_mean(seq, mask):
    """Mean of the unmasked tokens `[B, d]`, summed in float32 (a bfloat16 sum over
    hundreds of tokens loses about 0.4 %), returned in `seq`'s dtype."""
    x = ops.cast(seq, "float32")
    w = ops.cast(ops.expand_dims(mask, -1), "float32")
    total = ops.sum(x * w, axis=1)
    count = ops.maximum(ops.sum(w, axis=1), 1.0)
    return ops.cast(total / count, seq.dtype)


@register
class HyFormerEncoder(_UnifiedBlock):
    """HyFormer (arXiv 2601.12681): global queries decode the sequence, then boost.

    Implemented (§3.3-3.6): `num_queries` (N) global tokens, each from its own FFN of
    `GlobalInfo = concat(NS tokens, masked mean of the behaviour tokens)`; then
    `num_layers` layers of
    1. sequence encoding: one pre-RMSNorm Transformer block over the behaviour tokens
       (`H_l = Enc_l(H_{l-1})`, `H_0` = the input tokens; non-causal, padding masked);
    2. Query Decoding: `Q = Q + CrossAttn(RMSNorm(Q), RMSNorm(H_l))` (only the N global
       tokens are queries; multi-head);
    3. Query Boosting: `X = [Q; F]` (T = N + M tokens, F the non-sequential tokens),
       `X = X + PerTokenFFN(TokenMixing(RMSNorm(X)))` (RankMixer mixing with T heads);
       the first N rows are the next layer's queries, the other M its NS tokens.
    The output is all T tokens after a final RMSNorm (the paper: "the output of the top
    HyFormer layer is fed into downstream MLPs").

    Simplified or chosen where the paper is silent: pre-RMSNorm everywhere (norms are
    not stated); the full-Transformer sequence encoder of §3.4.1 (i), not LONGER's
    short-query cross-attention; the NS tokens come from Auto-Split, not semantic
    groups; the boosted NS rows are carried to the next layer (RankMixer-style); one
    sequence, so one set of global queries.

    Args:
        num_layers, num_heads, ff_dim, dropout, epsilon, kernel_initializer: as
            `OneTransEncoder`.
        num_queries: int >= 1. Global query tokens N; `N + T` must divide the width.
            Defaults to 2.

    Sublayers: `query_inner` / `query_outer` (PerTokenDense over N tokens); per layer
    `i`: `seq_attention_norm_{i}`, `seq_qkv_{i}`, `seq_out_{i}`, `seq_ffn_norm_{i}`,
    `seq_ffn_inner_{i}`, `seq_ffn_outer_{i}`, `decode_query_norm_{i}`,
    `decode_key_norm_{i}`, `decode_q_{i}`, `decode_kv_{i}`, `decode_out_{i}`,
    `boost_norm_{i}`, `boost_inner_{i}`, `boost_outer_{i}` (PerTokenDense over T
    tokens); `final_norm`.

    Call arguments: `seq`, `ns`, `mask`, `training` as `OneTransEncoder`;
    `return_attention_scores`: also return the last layer's decoding weights
    `[B, heads, N, L]`.

    Returns:
        `[B, N + T, d]` (queries first), or `(output, weights)`.

    Example:

    ```python
    layer = HyFormerEncoder(num_layers=1, num_heads=2, ff_dim=16, num_queries=2)
    out = layer(np.ones((2, 5, 8), "float32"), np.ones((2, 2, 8), "float32"),
                np.ones((2, 5), bool))  # (2, 4, 8)
    ```
    """

    def __init__(self, num_layers, num_heads, ff_dim, num_queries=2, **kwargs):
        super().__init__(num_layers, num_heads, ff_dim, **kwargs)
        check_int("num_queries", num_queries)
        self.num_queries = num_queries

    def build(self, seq_shape, ns_shape, mask_shape=None):
        _, tokens, dim = self._check_shapes(seq_shape, ns_shape)
        total = self.num_queries + tokens
        if dim % total:
            raise ValueError(
                f"{self.name}: token mixing needs num_queries + non-sequential tokens to "
                f"divide the width. Received: {self.num_queries} + {tokens} = {total}, "
                f"width={dim}")
        seq = (None, None, dim)
        queries, mixed = (None, self.num_queries, dim), (None, total, dim)
        self.query_inner = self._per_token(self.ff_dim, "query_inner", "gelu")
        self.query_inner.build((None, self.num_queries, (tokens + 1) * dim))
        self.query_outer = self._per_token(dim, "query_outer")
        self.query_outer.build((None, self.num_queries, self.ff_dim))
        self.blocks = []
        for i in range(self.num_layers):
            block = {
                "seq_attention_norm": self._norm(f"seq_attention_norm_{i}"),
                "seq_qkv": self._dense(3 * dim, f"seq_qkv_{i}"),
                "seq_out": self._dense(dim, f"seq_out_{i}"),
                "seq_ffn_norm": self._norm(f"seq_ffn_norm_{i}"),
                "seq_ffn_inner": self._dense(self.ff_dim, f"seq_ffn_inner_{i}", "gelu"),
                "seq_ffn_outer": self._dense(dim, f"seq_ffn_outer_{i}"),
                "decode_query_norm": self._norm(f"decode_query_norm_{i}"),
                "decode_key_norm": self._norm(f"decode_key_norm_{i}"),
                "decode_q": self._dense(dim, f"decode_q_{i}"),
                "decode_kv": self._dense(2 * dim, f"decode_kv_{i}"),
                "decode_out": self._dense(dim, f"decode_out_{i}"),
                "boost_norm": self._norm(f"boost_norm_{i}"),
                "boost_inner": self._per_token(self.ff_dim, f"boost_inner_{i}", "gelu"),
                "boost_outer": self._per_token(dim, f"boost_outer_{i}"),
            }
            for key in ("seq_attention_norm", "seq_qkv", "seq_out", "seq_ffn_norm",
                        "seq_ffn_inner", "decode_key_norm", "decode_kv"):
                block[key].build(seq)
            block["seq_ffn_outer"].build((None, None, self.ff_dim))
            for key in ("decode_query_norm", "decode_q", "decode_out"):
                block[key].build(queries)
            block["boost_norm"].build(mixed)
            block["boost_inner"].build(mixed)
            block["boost_outer"].build((None, total, self.ff_dim))
            self.blocks.append(block)
        self.final_norm = self._norm("final_norm")
        self.final_norm.build(mixed)
        self.residual_dropout = CounterDropout(self.dropout, **self._common())
        self.built = True

    def call(self, seq, ns, mask=None, training=None, return_attention_scores=False):
        cache = self.sequence_cache(seq, mask, training)
        return self.decode(ns, cache, training, return_attention_scores)

    def sequence_cache(self, seq, mask=None, training=None):
        """The candidate-free side, once per user: every layer's sequence encoding and
        the keys and values the queries decode from, the mask and the masked mean of
        the behaviour tokens (an input of the query generation)."""
        if mask is None:
            mask = ops.ones(ops.shape(seq)[:2], dtype="bool")
        mask = ops.cast(mask, "bool")
        self_allowed = ops.logical_and(ops.expand_dims(mask, 1), ops.expand_dims(mask, 2))
        h, layers = seq, []
        for block in self.blocks:
            normed = block["seq_attention_norm"](h)
            qs, ks, vs = ops.split(block["seq_qkv"](normed), 3, axis=-1)
            context, _ = attend(qs, ks, vs, self_allowed, self.num_heads)
            h = h + self._drop(block["seq_out"](context), training)
            h = h + self._drop(block["seq_ffn_outer"](
                block["seq_ffn_inner"](block["seq_ffn_norm"](h))), training)
            layers.append(tuple(ops.split(block["decode_kv"](block["decode_key_norm"](h)), 2,
                                          axis=-1)))
        return {"layers": layers, "mask": mask, "mean": _masked_mean(seq, mask)}

    def decode(self, ns, cache, training=None, return_attention_scores=False, candidates=1):
        """Queries from the NS tokens, decoding and boosting against `cache`
        (`sequence_cache`) of B users, for `ns` of C candidates per user `[B * C, T, d]`.
        """
        tokens = ns.shape[1]
        total = self.num_queries + tokens
        mean = ops.repeat(cache["mean"], candidates, axis=0)  # [B * C, d]
        # -> ns [B * C, T d]; info [B * C, (T + 1) d]
        info = ops.concatenate([ops.reshape(ns, (-1, tokens * ns.shape[-1])), mean], axis=-1)
        info = ops.repeat(ops.expand_dims(info, 1), self.num_queries, axis=1)
        q = self.query_outer(self.query_inner(info))  # [B * C, N, d]
        f, weights = ns, None
        for block, (k, v) in zip(self.blocks, cache["layers"], strict=True):
            query = block["decode_q"](block["decode_query_norm"](q))
            context, weights = attend_per_user(query, k, v, cache["mask"], self.num_heads,
                                               candidates)
            q = q + self._drop(block["decode_out"](context), training)
            x = ops.concatenate([q, f], axis=1)  # [B * C, N + T, d]
            mixed = token_mixing(block["boost_norm"](x), total)
            x = x + self._drop(block["boost_outer"](block["boost_inner"](mixed)), training)
            q, f = x[:, : self.num_queries], x[:, self.num_queries:]
        out = self.final_norm(ops.concatenate([q, f], axis=1))
        return (out, weights) if return_attention_scores else out

    def get_config(self):
        config = super().get_config()
        config.update(num_queries=self.num_queries)
        return config


@register
class MixFormerEncoder(_UnifiedBlock):
    """MixFormer (arXiv 2602.14110): NS heads that mix among themselves, then read the
    sequence, in each layer.

    With `T` non-sequential tokens ("heads") of width `d` and the behaviour tokens
    projected once to width `T * d` (`sequence_projection`, so that chunk `i` of every
    behaviour token belongs to head `i`), each of `num_layers` layers computes
    (pre-RMSNorm throughout; the paper's eq. 3-9 as transcribed from its v2 PDF by a
    public write-up, GitHub `Bolt00Y/RAS` `mixformer/MixFormer_论文详解.md`, which agrees
    with a second write-up and the unofficial `yyHaker/MixFormer`; the PDF itself was
    not available to us):
    1. Query Mixer (feature-level mixing): `P = HeadMixing(RMSNorm(X)) + X` (RankMixer
       token mixing, T heads); `Q_i = P_i + SwiGLU_i(RMSNorm(P_i))` (per head).
    2. Cross attention (sequence-level mixing): `H = S + SwiGLU_l(RMSNorm(S))` on the
       *original* projected sequence `S` (eq. 5 read literally: the sequence is not
       updated across layers, which the paper does not state either way; each layer
       has its own SwiGLU, as its ablation "per-layer FFN -> shared" implies); head `i`
       attends with its single query `Q_i`
       over `K_i = H[..., i] W_k^i`, `V_i = H[..., i] W_v^i` (its own chunk and
       projections): `Z_i = Q_i + sum_t softmax_t(Q_i . K_ti / sqrt(d)) V_ti`.
    3. Output fusion: `X'_i = Z_i + SwiGLU'_i(RMSNorm(Z_i))` (per head).
    The output is the T heads after a final RMSNorm.

    Simplified: `num_heads` is not used for attention (each head is one query of width
    `d`, as in the paper); the NS heads come from Auto-Split (one Dense) instead of
    eq. 2's per-chunk projection of the concatenated features; how `S` reaches width
    `T * d` (one Dense here) and the final RMSNorm are not given by the paper; the
    UI-MixFormer serving variant (eq. 10-11, a user/item mask on the head mixing) is not
    built.

    Args:
        num_layers, ff_dim (SwiGLU hidden width), dropout, epsilon, kernel_initializer:
            as `OneTransEncoder`; `num_heads` is accepted and ignored (kept for a common
            signature); T must divide the width.

    Sublayers: `sequence_projection`; per layer `i`: `mix_norm_{i}`, `mix_ffn_norm_{i}`,
    `mix_gate_{i}`, `mix_up_{i}`, `mix_down_{i}` (PerTokenDense), `seq_norm_{i}`,
    `seq_gate_{i}`, `seq_up_{i}`, `seq_down_{i}` (Dense), `key_{i}`, `value_{i}`
    (PerTokenDense over the T chunks), `fuse_norm_{i}`, `fuse_gate_{i}`, `fuse_up_{i}`,
    `fuse_down_{i}`; `final_norm`.

    Call arguments: as `HyFormerEncoder`; the attention weights are `[B, T, L]`.

    Returns:
        `[B, T, d]`, or `(output, weights)`.

    Example:

    ```python
    layer = MixFormerEncoder(num_layers=1, num_heads=2, ff_dim=16)
    out = layer(np.ones((2, 5, 8), "float32"), np.ones((2, 2, 8), "float32"),
                np.ones((2, 5), bool))  # (2, 2, 8)
    ```
    """

    def __init__(self, num_layers, num_heads, ff_dim, **kwargs):
        super().__init__(num_layers, num_heads, ff_dim, **kwargs)

    def build(self, seq_shape, ns_shape, mask_shape=None):
        _, tokens, dim = self._check_shapes(seq_shape, ns_shape)
        if dim % tokens:
            raise ValueError(f"{self.name}: head mixing needs the non-sequential token count "
                             f"to divide the width. Received: tokens={tokens}, width={dim}")
        wide = tokens * dim
        heads, seq = (None, tokens, dim), (None, None, wide)
        self.sequence_projection = self._dense(wide, "sequence_projection")
        self.sequence_projection.build((None, None, dim))
        self.blocks = []
        for i in range(self.num_layers):
            block = {"mix_norm": self._norm(f"mix_norm_{i}"),
                     "mix_ffn_norm": self._norm(f"mix_ffn_norm_{i}"),
                     "seq_norm": self._norm(f"seq_norm_{i}"),
                     "fuse_norm": self._norm(f"fuse_norm_{i}")}
            for part in ("mix", "fuse"):
                block[f"{part}_gate"] = self._per_token(self.ff_dim, f"{part}_gate_{i}")
                block[f"{part}_up"] = self._per_token(self.ff_dim, f"{part}_up_{i}")
                block[f"{part}_down"] = self._per_token(dim, f"{part}_down_{i}")
                block[f"{part}_gate"].build(heads)
                block[f"{part}_up"].build(heads)
                block[f"{part}_down"].build((None, tokens, self.ff_dim))
            block["seq_gate"] = self._dense(self.ff_dim, f"seq_gate_{i}")
            block["seq_up"] = self._dense(self.ff_dim, f"seq_up_{i}")
            block["seq_down"] = self._dense(wide, f"seq_down_{i}")
            block["key"] = self._per_token(dim, f"key_{i}", use_bias=False)
            block["value"] = self._per_token(dim, f"value_{i}", use_bias=False)
            for key in ("mix_norm", "mix_ffn_norm", "fuse_norm"):
                block[key].build(heads)
            for key in ("seq_norm", "seq_gate", "seq_up"):
                block[key].build(seq)
            block["seq_down"].build((None, None, self.ff_dim))
            block["key"].build(heads)
            block["value"].build(heads)
            self.blocks.append(block)
        self.final_norm = self._norm("final_norm")
        self.final_norm.build(heads)
        self.residual_dropout = CounterDropout(self.dropout, **self._common())
        self.built = True

    @staticmethod
    def _swiglu(block, part, x):
        gate, up, down = block[f"{part}_gate"], block[f"{part}_up"], block[f"{part}_down"]
        return down(ops.silu(gate(x)) * up(x))

    def call(self, seq, ns, mask=None, training=None, return_attention_scores=False):
        cache = self.sequence_cache(seq, mask, training)
        return self.decode(ns, cache, training, return_attention_scores)

    def sequence_cache(self, seq, mask=None, training=None):
        """The candidate-free side, once per user: every layer's per-head keys and
        values `[B, L, T, d]` (from the layer's SwiGLU of the projected sequence) and the
        mask."""
        if mask is None:
            mask = ops.ones(ops.shape(seq)[:2], dtype="bool")
        s = self.sequence_projection(seq)  # [B, L, T d]
        tokens, dim = self.blocks[0]["key"].kernel.shape[:2]  # heads T, width d
        layers = []
        for block in self.blocks:
            h = s + self._drop(self._swiglu(block, "seq", block["seq_norm"](s)), training)
            chunks = ops.reshape(h, (-1, ops.shape(h)[1], tokens, dim))  # [B, L, T, d]
            # per-head K/V: token t's chunk i through head i's projection
            k = ops.einsum("blid,ide->blie", chunks, ops.cast(block["key"].kernel, h.dtype))
            v = ops.einsum("blid,ide->blie", chunks, ops.cast(block["value"].kernel, h.dtype))
            layers.append((k, v))
        return {"layers": layers, "mask": ops.cast(mask, "bool")}

    def decode(self, ns, cache, training=None, return_attention_scores=False, candidates=1):
        """The NS heads' mixing, reading and fusion against `cache` (`sequence_cache`) of
        B users, for `ns` of C candidates per user `[B * C, T, d]`."""
        tokens, dim = ns.shape[1], ns.shape[2]
        mask = cache["mask"]
        users, length = ops.shape(mask)[0], ops.shape(mask)[1]
        ok = ops.reshape(mask, (users, 1, 1, length))  # [B, 1, 1, L]
        x, weights = ns, None
        for block, (k, v) in zip(self.blocks, cache["layers"], strict=True):
            p = x + token_mixing(block["mix_norm"](x), tokens)
            q = p + self._drop(self._swiglu(block, "mix", block["mix_ffn_norm"](p)), training)
            qg = ops.reshape(q, (users, candidates, tokens, dim))  # [B, C, T, d]
            logits = ops.einsum("bcid,blid->bcil", ops.cast(qg, "float32"),
                                ops.cast(k, "float32"))
            logits = ops.where(ok, logits / math.sqrt(dim), NEG_INF)
            w = ops.softmax(logits, axis=-1) * ops.cast(ok, "float32")  # [B, C, T, L]
            read = ops.einsum("bcil,blid->bcid", ops.cast(w, v.dtype), v)
            z = q + ops.reshape(read, (users * candidates, tokens, dim))  # [B * C, T, d]
            x = z + self._drop(self._swiglu(block, "fuse", block["fuse_norm"](z)), training)
            weights = ops.reshape(w, (users * candidates, tokens, length))  # [B * C, T, L]
        out = self.final_norm(x)
        return (out, weights) if return_attention_scores else out
