"""CAIN's context extraction over lifelong sequences (issue 14).

Paper: `../shared/papers/002_bbf64e76a3eb835d.txt` (CAIN), §4.1. Design notes:
`docs/design/cain.md` §2.2-2.3.

`TemporalConvolution` is eq. (5): each output is a linear map of the `2 cl + 1` items
centred on it (`cl` = context length on each side), zero outside the sequence and at
padding, so a padding slot never leaks into a real position; with PEG (eq. 12) the map
is a per-user kernel passed at call time, generated from the user's profile by
`PersonalizedExtractorGeneration` (eq. 10-11).
"""

from __future__ import annotations

import math

import keras
from keras import ops

from tfnegseq.api_export import register
from tfnegseq.layers._common import fresh
from tfnegseq.layers.lifelong import masked_softmax

ANCHORS = ("start", "end")  # TemporalConvolution: where its centres count from


@register
class TemporalConvolution(keras.layers.Layer):
    """A temporal convolution along the sequence, centred windows (CAIN eq. 5, 12).

    `y[b, j] = sum_{k=-cl..cl} x~[b, c_j + k] @ W[k + cl] + bias`, j = 0 ..
    ceil(N / s) - 1, where `x~[b, t] = x[b, t] * mask[b, t]` inside the sequence and 0
    outside it (both ends zero-padded; the padding slots of a left-padded sequence count
    as zeros too). `anchor="start"` (the default): output j is centred on input
    `c_j = j * s`. `anchor="end"`: on `c_j = o + j * s` with `o = (N - 1) mod s`, so the
    last output is centred on the last input. For a left-padded sequence (most recent
    item last, as the lifelong lists are) "end" keeps a centre on the newest item and
    every s-th one before it: with "start", a user with fewer than s real items at the
    right end of N slots may have no real centre at all (N = 256, s = 4^3: fewer than
    64 items) and a strided layer gives that user nothing. The two differ only for
    `stride > 1`. `context_length=0` is a per-item dense layer (the paper's cl = 0
    point).

    The windows are not Keras' `padding="same"`: for `stride > 1` TensorFlow's SAME
    padding centres output j on `j*s + cl - pad_left`, not on `j*s`. The sequence is
    padded explicitly (cl zeros before, enough after); the layer's own kernel is then one
    VALID `ops.conv`. Per-example kernels (PEG) are a stride-1 convolution over blocks
    of s input slots side by side (`[B, M, s d]`, the kernel's taps regrouped the same
    way, `[B, Q, s d, f]`, Q = ceil((2cl+1) / s)), computed as one batched matmul to
    every tap's output `[B, Q, M, f]` whose shifted sum is read by a skew (reshapes and
    one pad). It replaced a sum of 2cl+1 per-tap matmuls (half precision) and a window
    matmul (`[B, n_out, (2cl+1) d] @ [B, (2cl+1) d, f]`, float32), whose strided slices
    each cost a full-size pad in the backward pass. One layer's fwd + bwd, B = 256,
    N = 2,000, d = f = 64, cl = 7 (`benchmarks/bench_tcn_kernels.py`): under
    `mixed_bfloat16` on a CPU with AMX 0.63x the tap sum's time at stride 1 and 0.46x
    at stride 4; float32 XLA at stride 4 0.57x the window matmul's. In float32 at
    stride 1 the window matmul stays: there the two took about the same time and the
    blocked form's PEG step peaked 1.3 GiB higher (README, Performance).

    Args:
        filters: int. Output channels f (the constructor's `filters`; the call's
            `filters` argument is a per-example kernel, both names as issue 14 fixes
            them).
        context_length: int >= 0. cl, items on each side of the centre.
        stride: int >= 1. Distance between the centres of adjacent outputs. Defaults
            to 1.
        activation: optional activation of the output. Defaults to None (eq. 5 is
            linear).
        kernel_initializer, bias_initializer: initializers of `kernel`
            `[2cl+1, d, filters]` and `bias` `[filters]` (Conv1D's names and layout).
        use_kernel: bool. False: no `kernel` weight; every call must pass `filters` (a
            layer whose kernel PEG always replaces). Defaults to True.
        anchor: "start" or "end". Which end of the sequence the centres count from
            (above). Defaults to "start".
        **kwargs: base layer arguments (`name`, `dtype`).

    Call arguments:
        sequence: float `[B, N, d]`.
        mask: bool or 0/1 `[B, N]`, true at real items; None: every slot is real.
        filters: optional float `[B, 2cl+1, d, filters]`, replaces `kernel` per example
            (PEG, eq. 12); `bias` still applies.

    Returns:
        `[B, ceil(N / stride), filters]`. `output_mask(mask)` gives its mask (an output
        is real where its centre is).

    Example:

    ```python
    layer = TemporalConvolution(64, context_length=7, stride=1)
    y = layer(np.ones((2, 10, 32), "float32"), np.ones((2, 10), bool))  # (2, 10, 64)
    ```
    """

    def __init__(self, filters, context_length, stride=1, activation=None,
                 kernel_initializer="glorot_uniform", bias_initializer="zeros", use_kernel=True,
                 anchor="start", **kwargs):
        super().__init__(**kwargs)
        self.use_kernel = bool(use_kernel)
        if anchor not in ANCHORS:
            raise ValueError(f"`anchor` must be one of {ANCHORS}. Received: anchor={anchor!r}")
        self.anchor = anchor
        for name, value, low in (("filters", filters, 1), ("context_length", context_length, 0),
                                 ("stride", stride, 1)):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"`{name}` must be an int >= {low}. Received: {name}={value!r}")
        self.filters = filters
        self.context_length = context_length
        self.stride = stride
        self.activation = keras.activations.get(activation)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.supports_masking = False  # the mask is an explicit argument

    @property
    def taps(self) -> int:
        return 2 * self.context_length + 1

    def build(self, sequence_shape, mask_shape=None, filters_shape=None):
        dim = sequence_shape[-1]
        if dim is None:
            raise ValueError("the last dimension of `sequence` must be known")
        self.kernel = (self.add_weight(name="kernel", shape=(self.taps, dim, self.filters),
                                       initializer=self.kernel_initializer)
                       if self.use_kernel else None)
        self.bias = self.add_weight(name="bias", shape=(self.filters,),
                                    initializer=self.bias_initializer)
        self.built = True

    def output_length(self, length):
        return -(-length // self.stride)

    def offset(self, length):
        """The first centre, `o` (0 for "start", `(N - 1) mod s` for "end")."""
        return 0 if self.anchor == "start" else (length - 1) % self.stride

    def output_mask(self, mask):
        """The outputs' mask `[B, ceil(N / stride)]`: the mask at each centre."""
        if mask is None:
            return None
        length = mask.shape[1] if mask.shape[1] is not None else ops.shape(mask)[1]
        return mask[:, self.offset(length):: self.stride]

    def call(self, sequence, mask=None, filters=None):
        x = sequence
        if mask is not None:
            x = x * ops.expand_dims(ops.cast(mask, x.dtype), -1)
        length = x.shape[1] if x.shape[1] is not None else ops.shape(x)[1]
        cl, s = self.context_length, self.stride
        n_out = -(-length // s) if isinstance(length, int) else (length + s - 1) // s
        o = self.offset(length)
        # cl zeros before; after: up to the last tap of the last output,
        # o + (n_out-1)*s + cl; then the first o slots dropped (window j starts at o + j*s)
        after = o + (n_out - 1) * s + cl - (length - 1)
        after = max(after, 0) if isinstance(after, int) else ops.maximum(after, 0)
        x = ops.pad(x, [[0, 0], [cl, after], [0, 0]])[:, o:]
        per_example = filters is not None
        if not per_example and self.kernel is None:
            raise ValueError(f"{self.name} was built without a kernel (use_kernel=False): "
                             "pass `filters` (the per-example kernels)")
        kernel = ops.cast(filters if per_example else self.kernel, x.dtype)
        if not per_example:
            # One VALID convolution over the explicitly padded sequence: output j reads
            # padded inputs [j*s, j*s + 2cl] = inputs [j*s - cl, j*s + cl]. Faster under
            # XLA on CPU than the matmul forms: the window matmul below takes 1.2x its
            # time, a per-tap matmul sum 1.4x (fwd + bwd, B = 256, N = 2,000, cl = 7;
            # benchmarks/bench_tcn_kernels.py).
            out = ops.conv(x, kernel, strides=s, padding="valid")[:, :n_out]
            return self.activation(out + ops.cast(self.bias, out.dtype))
        # Per-example kernels. The padded input in blocks of s slots side by side,
        # [B, M, s d], and the kernel's taps likewise, W'[q] = [W[qs] ; ... ; W[qs + s-1]]
        # ([B, Q, s d, f], Q = ceil((2cl+1) / s), zero taps past 2cl): output j reads
        # padded inputs j*s + k, k = q*s + r, which is block j + q, so y[j] = sum_q
        # block[j + q] @ W'[q], a stride-1 convolution over M = n_out + Q - 1 blocks.
        # One batched matmul gives every tap's output, z[q, m] = block[m] @ W'[q]; then
        # y[j] = sum_q z[q, j + q], read by the skew trick: z's [Q, M] rows flattened and
        # read as rows of M + 1 put z[q, j + q] at column j of row q. No per-tap slice
        # (the gradient of each is a pad to the full input) and no window tensor.
        half = keras.backend.standardize_dtype(x.dtype) in ("bfloat16", "float16")
        if s == 1 and self.taps > 1 and not half:
            # float32 at stride 1: one batched matmul of the windows side by side,
            # [B, n_out, (2cl+1) d] @ [B, (2cl+1) d, f]. The blocked form below took
            # about the same time here (0.86-1.20x per round) and its training step
            # with PEG peaked 1.3 GiB higher (B = 256, N = 2,000, cl = 7;
            # benchmarks/results/tcn_kernels_f32_output_taps.json,
            # cain_f32_output_taps.json)
            windows = ops.concatenate([x[:, k: k + n_out] for k in range(self.taps)], axis=-1)
            dim = kernel.shape[2]
            # -> kernel [B, (2cl+1) d, f]; out [B, n_out, f]
            out = ops.matmul(windows, ops.reshape(kernel, (-1, self.taps * dim, self.filters)))
            out = out + ops.cast(self.bias, out.dtype)
            return self.activation(out)
        q_taps = -(-self.taps // s)
        blocks = n_out + q_taps - 1
        f = kernel.shape[-1]
        x = ops.pad(x, [[0, 0], [0, q_taps * s], [0, 0]])[:, : blocks * s]
        x = ops.reshape(x, (-1, blocks, s * x.shape[-1]))  # [B, M, s d]
        kernel = ops.pad(kernel, [[0, 0], [0, q_taps * s - self.taps], [0, 0], [0, 0]])
        kernel = ops.reshape(kernel, (-1, q_taps, s * kernel.shape[2], f))  # [B, Q, s d, f]
        z = ops.matmul(ops.expand_dims(x, 1), kernel)  # [B, Q, M, f]
        # -> [B, Q M, f], padded to [B, Q (M + 1), f]
        flat = ops.pad(ops.reshape(z, (-1, q_taps * blocks, f)), [[0, 0], [0, q_taps], [0, 0]])
        # -> [B, Q, M + 1, f], sliced to [B, Q, n_out, f], summed: [B, n_out, f]
        out = ops.sum(ops.reshape(flat, (-1, q_taps, blocks + 1, f))[:, :, :n_out], axis=1)
        out = out + ops.cast(self.bias, out.dtype)
        return self.activation(out)

    def compute_output_shape(self, sequence_shape, mask_shape=None, filters_shape=None):
        length = sequence_shape[1]
        return (sequence_shape[0], None if length is None else self.output_length(length),
                self.filters)

    def get_config(self):
        config = super().get_config()
        config.update(
            filters=self.filters,
            context_length=self.context_length,
            stride=self.stride,
            activation=keras.activations.serialize(self.activation),
            kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
            bias_initializer=keras.initializers.serialize(self.bias_initializer),
            use_kernel=self.use_kernel,
            anchor=self.anchor,
        )
        return config


@register
class FlatKernelGlorot(keras.initializers.Initializer):
    """Glorot-uniform values of a `[K, d, f]` convolution kernel (fan in `K d`, fan out
    `K f`), flattened: the bias of a Dense layer whose output is reshaped into such a
    kernel (PEG's `generate_<n>`), so that the generated kernel starts as a Glorot
    kernel plus a per-user offset.

    Args:
        kernel_shape: `(K, d, f)`.
        seed: int or None. Defaults to None.
    """

    def __init__(self, kernel_shape, seed=None):
        self.kernel_shape = tuple(int(v) for v in kernel_shape)
        self.seed = seed
        self._glorot = keras.initializers.GlorotUniform(seed=seed)

    def __call__(self, shape, dtype=None):
        if tuple(shape) != (math.prod(self.kernel_shape),):
            raise ValueError(f"FlatKernelGlorot{self.kernel_shape} initializes a "
                             f"{math.prod(self.kernel_shape)}-vector. Received: shape={shape}")
        return ops.reshape(self._glorot(self.kernel_shape, dtype=dtype), tuple(shape))  # [K d f]

    def get_config(self):
        return {"kernel_shape": list(self.kernel_shape), "seed": self.seed}


@register
class PersonalizedExtractorGeneration(keras.layers.Layer):
    """Per-user TCN kernels from the user's profile (CAIN PEG, eq. 10-11).

    For every generated TCN layer n: `O_n = ReLU(W1_n I + b1_n)` (eq. 10, Dense
    sublayer `hidden_<n>`) and `W^PC_n = reshape(W2_n O_n + b2_n, [K_n, d_n, f_n])`
    (eq. 11, Dense sublayer `generate_<n>`), I the profile representation `[B, p]`.
    The kernels replace the layer's own (eq. 12: `TemporalConvolution(..., filters=)`;
    Table 6's "replace", the paper's default). Xavier (Glorot) initialisation, as the
    paper's §5.1.4. The generator is large: `units * K * d * f` weights per layer
    (3.9 M at units 64, K 15, d = f = 64).

    `b2_n` starts as a Glorot draw of the `[K_n, d_n, f_n]` kernel (`FlatKernelGlorot`;
    `bias_initializer="kernel"`), so a layer's generated kernels start as one Glorot
    kernel plus a per-user offset `W2_n O_n`. With a zero `b2` they would start at the
    scale of that offset alone, which for profile embeddings of std 0.05 is about 20x
    below a Glorot kernel: every PEG layer would shrink its output about 20x at the
    start of training. "zeros" keeps `b2 = 0` (where the generated kernel is summed
    with a global one, Table 6's "sum").

    Args:
        kernel_shapes: list of `(K_n, d_n, f_n)`, one per generated layer (K_n = 2cl+1).
        units: int. Width of eq. 10's hidden layer. Defaults to 64.
        kernel_initializer: of both Dense layers. Defaults to "glorot_uniform".
        bias_initializer: "kernel" or "zeros", of `generate_<n>`'s bias (above).
            Defaults to "kernel".
        **kwargs: base layer arguments.

    Call arguments:
        profile: float `[B, p]`.

    Returns:
        A list of `[B, K_n, d_n, f_n]` kernels, in `kernel_shapes` order.

    Example:

    ```python
    peg = PersonalizedExtractorGeneration([(3, 4, 8)], units=8)
    kernels = peg(np.ones((2, 5), "float32"))  # a list: [(2, 3, 4, 8)]
    tcn = TemporalConvolution(8, context_length=1, use_kernel=False)
    y = tcn(np.ones((2, 6, 4), "float32"), filters=kernels[0])  # (2, 6, 8)
    ```
    """

    def __init__(self, kernel_shapes, units=64, kernel_initializer="glorot_uniform",
                 bias_initializer="kernel", **kwargs):
        super().__init__(**kwargs)
        if bias_initializer not in ("kernel", "zeros"):
            raise ValueError("`bias_initializer` must be 'kernel' or 'zeros'. "
                             f"Received: bias_initializer={bias_initializer!r}")
        self.bias_initializer = bias_initializer
        shapes = [tuple(s) for s in kernel_shapes]
        if not shapes or any(len(s) != 3 or any(not isinstance(v, int) or v < 1 for v in s)
                             for s in shapes):
            raise ValueError("`kernel_shapes` must be a non-empty list of (K, d, f) positive "
                             f"ints. Received: kernel_shapes={kernel_shapes!r}")
        if not isinstance(units, int) or units < 1:
            raise ValueError(f"`units` must be an int >= 1. Received: units={units!r}")
        self.kernel_shapes = shapes
        self.units = units
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.hidden = [
            keras.layers.Dense(units, activation="relu",
                               kernel_initializer=fresh(self.kernel_initializer),
                               dtype=self.dtype_policy, name=f"hidden_{n}")
            for n in range(len(shapes))
        ]
        self.generate = [
            keras.layers.Dense(k * d * f, kernel_initializer=fresh(self.kernel_initializer),
                               bias_initializer=(FlatKernelGlorot((k, d, f))
                                                 if bias_initializer == "kernel" else "zeros"),
                               dtype=self.dtype_policy, name=f"generate_{n}")
            for n, (k, d, f) in enumerate(shapes)
        ]

    def build(self, profile_shape):
        for hidden, generate in zip(self.hidden, self.generate, strict=True):
            hidden.build(profile_shape)
            generate.build((*profile_shape[:-1], self.units))
        self.built = True

    def call(self, profile):
        out = []
        for (k, d, f), hidden, generate in zip(self.kernel_shapes, self.hidden, self.generate,
                                               strict=True):
            out.append(ops.reshape(generate(hidden(profile)), (-1, k, d, f)))  # [B, K_n, d_n, f_n]
        return out

    def compute_output_shape(self, profile_shape):
        return [(profile_shape[0], *s) for s in self.kernel_shapes]

    def get_config(self):
        config = super().get_config()
        config.update(
            kernel_shapes=[list(s) for s in self.kernel_shapes],
            units=self.units,
            kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
            bias_initializer=self.bias_initializer,
        )
        return config


def receptive_field(context_lengths, strides):
    """Per stacked TCN layer n: `(J_n, c_n, r_n)`, J_n the input distance between two
    adjacent outputs, c_n the one-sided context (in inputs) and r_n = 2 c_n + 1 the
    receptive-field width. Eq. (7) is r_n = r_{n-1} + fs_n - 1 for stride 1; with
    strides, each tap of layer n is J_{n-1} inputs apart:

        J_n = J_{n-1} s_n,  c_n = c_{n-1} + cl_n J_{n-1}   (J_0 = 1, c_0 = 0)

    Output j of layer n is centred on input j J_n and reads inputs within c_n of it
    (every one of them when J_{n-1} <= r_{n-1}; with cl = 0 and a stride > 1 the set
    has holes)."""
    if len(context_lengths) != len(strides):
        raise ValueError(f"one stride per layer: {len(context_lengths)} context lengths, "
                         f"{len(strides)} strides")
    out, jump, context = [], 1, 0
    for cl, s in zip(context_lengths, strides, strict=True):
        context += cl * jump
        jump *= s
        out.append((jump, context, 2 * context + 1))
    return out


@register
class AuxiliaryTargetAttention(keras.layers.Layer):
    """Target attention with linear projections over a TCN layer's outputs (CAIN eq.
    8-9): `sa_t = (W_Q e) . (W_K cr_t) / sqrt(d_a)`, `IR = sum_t a_t W_V cr_t` over the
    real t, with `a = softmax(sa)` (default) or `a = sa` (`score_normalization="none"`,
    eq. 9 as printed: an unnormalised sum grows with the number of items, which is why
    softmax is the default). Projections `query`, `key`, `value` (Dense, no bias).

    Args:
        attention_dim: int. d_a.
        value_dim: int or None. Width of W_V; None: the keys' width. Defaults to None.
        score_normalization: "softmax" or "none". Defaults to "softmax".

    Call arguments:
        keys: float `[B, n, f]` (a TCN layer's outputs); query: float `[B, d]` (the
        target item); mask: bool `[B, n]` or None.

    Returns:
        `[B, value_dim]` (the keys' width when `value_dim` is None); a user without a
        real key gets zeros.

    Example:

    ```python
    layer = AuxiliaryTargetAttention(attention_dim=8)
    out = layer(np.ones((2, 5, 4), "float32"), np.ones((2, 6), "float32"),
                np.ones((2, 5), bool))  # (2, 4)
    ```
    """

    def __init__(self, attention_dim, value_dim=None, score_normalization="softmax", **kwargs):
        super().__init__(**kwargs)
        if score_normalization not in ("softmax", "none"):
            raise ValueError("`score_normalization` must be 'softmax' or 'none'. Received: "
                             f"score_normalization={score_normalization!r}")
        self.attention_dim = attention_dim
        self.value_dim = value_dim
        self.score_normalization = score_normalization

    def build(self, keys_shape, query_shape, mask_shape=None):
        value_dim = self.value_dim or keys_shape[-1]
        self.query_proj = keras.layers.Dense(self.attention_dim, use_bias=False,
                                             dtype=self.dtype_policy, name="query")
        self.key_proj = keras.layers.Dense(self.attention_dim, use_bias=False,
                                           dtype=self.dtype_policy, name="key")
        self.value_proj = keras.layers.Dense(value_dim, use_bias=False,
                                             dtype=self.dtype_policy, name="value")
        self.query_proj.build(query_shape)
        self.key_proj.build(keys_shape)
        self.value_proj.build(keys_shape)
        self.built = True

    def call(self, keys, query, mask=None):
        q = self.query_proj(query)  # [B, d_a]
        k = self.key_proj(keys)  # [B, n, d_a]
        v = self.value_proj(keys)  # [B, n, d_v]
        scores = ops.squeeze(ops.matmul(k, ops.expand_dims(q, -1)), -1)  # [B, n]
        scores = scores / ops.cast(ops.sqrt(float(self.attention_dim)), scores.dtype)
        real = (ops.ones_like(scores, dtype="bool") if mask is None
                else ops.cast(mask, "bool"))
        if self.score_normalization == "softmax":
            weights = masked_softmax(scores, real)  # all-padding users: zeros
        else:
            weights = ops.where(real, scores, ops.zeros_like(scores))
        return ops.squeeze(ops.matmul(ops.expand_dims(weights, 1), v), 1)  # [B, d_v]

    def get_config(self):
        config = super().get_config()
        config.update(attention_dim=self.attention_dim, value_dim=self.value_dim,
                      score_normalization=self.score_normalization)
        return config


@register
class MultiScopeInterestAggregator(keras.layers.Layer):
    """CAIN's MSIA (eq. 6, 8-9): stacked temporal convolutions, the major lifelong
    attention on the first layer's outputs and an auxiliary target attention on each
    later layer's, all interests concatenated.

    Layer 1: `cr^1 = TCN_1(x, mask)`, `IR_1 = major(cr^1, target, mask^1)` (eq. 6: the
    lifelong attention reads the contextualised items in place of the raw ones).
    Layer n >= 2: `cr^n = TCN_n(act(cr^{n-1}), mask^{n-1})` and
    `IR_n = AuxiliaryTargetAttention_n(cr^n, target, mask^n)` (eq. 8-9), with
    `mask^n` the mask at each output's centre. The attentions read the linear `cr^n`
    as eq. 6-9 write it; the next layer reads `act(cr^n)` (ReLU by default; eq. 5 is
    linear and a purely linear stack would be one wider convolution, while §4.2.1
    credits "the non-linearity of the TCN operations": our reading). Receptive fields:
    `receptive_field`. `num_layers=1` is "CAIN w/o MSIA" (a TCN layer and the major
    attention).

    Args:
        num_layers: int >= 1. TCN layers (the first feeds the major attention).
        context_length: int, or a list (one per layer). Defaults to 7 (the paper's).
        strides: list of ints (one per layer) or None: 1 for the first layer (§4.2.1)
            and `later_stride` for the others. Defaults to None.
        later_stride: int. Defaults to 4.
        filters: int or None. Channels of every TCN layer; None: the input's width
            (the major attention compares the outputs with the target item). Defaults
            to None.
        major_attention: a layer called `layer(keys [B, n, f], query [B, d], mask)`
            returning `[B, D]` (any of the lifelong attentions), or its serialized
            config; None: `DinAttention()`. One whose `uses_retrieval_keys` is true
            (ETA, SDIM: hash retrieval) also gets `retrieval_keys=`, the raw input
            items at the first layer's centres, so that it hashes items in the target's
            space and attends over their TCN outputs. Defaults to None.
        attention_dim: int. `AuxiliaryTargetAttention`'s for the later layers.
            Defaults to 64.
        value_dim: int or None. The same; None: the TCN's output width. Defaults to
            None.
        score_normalization: "softmax" or "none". The same. Defaults to "softmax".
        activation: between TCN layers. Defaults to "relu".
        peg_aggregation: how a layer's per-user kernel (PEG) meets its global one
            (Table 6): "replace" (eq. 12, the paper's default: `conv(x, W^PC) + b`),
            "sum" (`conv(x, W^PC + W) + b`, one convolution: it is linear in the
            kernel) or "concat" (`[conv(x, W^PC) + b ; conv(x, W) + b]`, then a Dense
            `merge_<n>` back to f channels, our choice so that the attentions keep
            comparing f-wide items with the target). Defaults to "replace".
        peg_layers: the layers (0-based) that always receive per-user kernels: with
            "replace" they have no global kernel (nothing would train it), with
            "concat" they get their merge. Defaults to none (kernels passed to other
            layers still replace or are summed with the global one).
        anchor: the TCN layers' `anchor`. Defaults to "end": the lifelong lists are
            left-padded, most recent last, and every strided layer keeps a centre on
            the newest item (with "start", users with fewer real items than a layer's
            total stride get no output from it).

    Call arguments:
        sequence: float `[B, N, d]` lifelong item representations; mask: bool `[B, N]`;
        target: float `[B, d]`; peg_filters: None or a list (one per layer) of None or
        `[B, 2cl+1, d_in, f]` per-user kernels (PEG, eq. 12); return_first_layer: also
        return the first layer's outputs and mask (SIM's auxiliary loss reads them);
        retrieval_keys: None or float `[B, N, d]`, what a hashing major attention (ETA,
        SDIM) hashes at the first layer's centres (default: `sequence`; `CainModel`
        passes the item embeddings alone, in the target's space).

    Returns:
        `[B, D + (num_layers - 1) * v]`, v = `value_dim` or, when that is None, the
        TCN's output width; or `(that, (cr^1, mask^1))`.

    Example:

    ```python
    layer = MultiScopeInterestAggregator(2, context_length=1, later_stride=2, attention_dim=8)
    out = layer(np.ones((2, 8, 4), "float32"), np.ones((2, 8), bool),
                np.ones((2, 4), "float32"))  # (2, 8)
    ```
    """

    def __init__(self, num_layers, context_length=7, strides=None, later_stride=4,
                 filters=None, major_attention=None, attention_dim=64, value_dim=None,
                 score_normalization="softmax", activation="relu", peg_aggregation="replace",
                 peg_layers=None, anchor="end", **kwargs):
        super().__init__(**kwargs)
        if peg_aggregation not in ("replace", "sum", "concat"):
            raise ValueError("`peg_aggregation` must be 'replace', 'sum' or 'concat'. "
                             f"Received: peg_aggregation={peg_aggregation!r}")
        if anchor not in ANCHORS:
            raise ValueError(f"`anchor` must be one of {ANCHORS}. Received: anchor={anchor!r}")
        self.anchor = anchor
        self.peg_aggregation = peg_aggregation
        if not isinstance(num_layers, int) or num_layers < 1:
            raise ValueError(f"`num_layers` must be an int >= 1. Received: num_layers={num_layers!r}")
        self.peg_layers = sorted(int(n) for n in (peg_layers or ()))
        if any(not 0 <= n < num_layers for n in self.peg_layers):
            raise ValueError(f"`peg_layers` must be layer indices in [0, {num_layers}). "
                             f"Received: {peg_layers!r}")
        cls = (list(context_length) if isinstance(context_length, (list, tuple))
               else [context_length] * num_layers)
        strides = list(strides) if strides is not None else [1] + [later_stride] * (num_layers - 1)
        if len(cls) != num_layers or len(strides) != num_layers:
            raise ValueError(f"`context_length` and `strides` need {num_layers} entries. "
                             f"Received: {cls}, {strides}")
        self.num_layers = num_layers
        self.context_lengths = cls
        self.strides = strides
        self.later_stride = later_stride
        self.filters = filters
        self.attention_dim = attention_dim
        self.value_dim = value_dim
        self.score_normalization = score_normalization
        self.activation = keras.activations.get(activation)
        if major_attention is None:
            from tfnegseq.layers.attention import DinAttention

            major_attention = DinAttention(name="major", dtype=self.dtype_policy)
        elif isinstance(major_attention, dict):
            major_attention = keras.layers.deserialize(major_attention)
        self.major = major_attention
        self.tcn: list = []
        self.auxiliary: list = []

    def build(self, sequence_shape, mask_shape=None, target_shape=None, peg_filters_shape=None):
        filters = self.filters or sequence_shape[-1]
        width = sequence_shape[-1]
        # A layer whose kernel PEG replaces (eq. 12) has no global kernel to train.
        replaced = set(self.peg_layers) if self.peg_aggregation == "replace" else set()
        self.tcn = [TemporalConvolution(filters, cl, s, use_kernel=n not in replaced,
                                        anchor=self.anchor, dtype=self.dtype_policy,
                                        name=f"tcn_{n}")
                    for n, (cl, s) in enumerate(zip(self.context_lengths, self.strides,
                                                    strict=True))]
        for n, layer in enumerate(self.tcn):
            layer.build((None, None, width if n == 0 else filters))
        self.auxiliary = [
            AuxiliaryTargetAttention(self.attention_dim, self.value_dim,
                                     self.score_normalization, dtype=self.dtype_policy,
                                     name=f"auxiliary_{n}")
            for n in range(1, self.num_layers)
        ]
        for layer in self.auxiliary:
            layer.build((None, None, filters), (None, target_shape[-1]))
        self.merge = {}
        if self.peg_aggregation == "concat":
            for n in self.peg_layers:
                self.merge[str(n)] = keras.layers.Dense(filters, dtype=self.dtype_policy,
                                                        name=f"merge_{n}")
                self.merge[str(n)].build((None, None, 2 * filters))
        self.built = True

    def kernel_shapes(self, width):
        """`(2cl+1, d_in, f)` of each layer's kernel for input items of `width`
        (what `PersonalizedExtractorGeneration` generates)."""
        filters = self.filters or width
        return [(2 * cl + 1, width if n == 0 else filters, filters)
                for n, cl in enumerate(self.context_lengths)]

    def _convolve(self, n, x, m, kernel):
        tcn = self.tcn[n]
        if kernel is None:
            return tcn(x, m)
        if self.peg_aggregation == "replace":
            return tcn(x, m, kernel)
        if self.peg_aggregation == "sum":
            return tcn(x, m, kernel + ops.cast(ops.expand_dims(tcn.kernel, 0), kernel.dtype))
        if str(n) not in self.merge:
            raise ValueError(f"layer {n} has no merge for peg_aggregation='concat'; list it "
                             f"in `peg_layers` (received {self.peg_layers})")
        both = ops.concatenate([tcn(x, m, kernel), tcn(x, m)], axis=-1)
        return self.merge[str(n)](both)

    def call(self, sequence, mask, target, peg_filters=None, return_first_layer=False,
             retrieval_keys=None):
        peg = list(peg_filters) if peg_filters is not None else [None] * self.num_layers
        if len(peg) != self.num_layers:
            raise ValueError(f"`peg_filters` needs {self.num_layers} entries (None where a "
                             f"layer has no PEG). Received: {len(peg)}")
        x, m = sequence, mask
        interests = []
        first = None
        for n, tcn in enumerate(self.tcn):
            if n:
                x = self.activation(x)
            x = self._convolve(n, x, m, peg[n])
            m = tcn.output_mask(m)
            if n == 0:
                first = (x, m)
                if getattr(self.major, "uses_retrieval_keys", False):
                    # hashing retrieval (ETA, SDIM) on the raw items at the centres, in
                    # the target's space (`retrieval_keys`, e.g. the item embeddings
                    # without side information; default the input sequence); the
                    # attention reads the TCN outputs
                    raw = sequence if retrieval_keys is None else retrieval_keys
                    keys = raw[:, tcn.offset(sequence.shape[1])::tcn.stride]
                    interests.append(self.major(x, target, m, retrieval_keys=keys))
                else:
                    interests.append(self.major(x, target, m))
            else:
                interests.append(self.auxiliary[n - 1](x, target, m))
        interest = ops.concatenate(interests, axis=-1)
        return (interest, first) if return_first_layer else interest

    def get_config(self):
        config = super().get_config()
        config.update(
            num_layers=self.num_layers,
            context_length=self.context_lengths,
            strides=self.strides,
            later_stride=self.later_stride,
            filters=self.filters,
            major_attention=keras.layers.serialize(self.major),
            attention_dim=self.attention_dim,
            value_dim=self.value_dim,
            score_normalization=self.score_normalization,
            activation=keras.activations.serialize(self.activation),
            peg_aggregation=self.peg_aggregation,
            peg_layers=self.peg_layers,
            anchor=self.anchor,
        )
        return config


@register
class ContextSelfAttention(keras.layers.Layer):
    """Self-attention as the context extractor CAIN's Table 1 compares the TCN with: one
    post-norm Transformer block over the whole lifelong sequence (multi-head attention
    among the real items, residual, layer norm, a ReLU feed-forward of width `ff_dim`,
    residual, layer norm), padding neither attending nor attended to and set to zero
    at the output. Cost grows with N^2 (the paper's reason to prefer the TCN).

    Attention alone treats the sequence as a set; a context extractor must know which
    items are neighbours. With `positions` (the default) a learned position embedding
    (weight `positions`, `[N, d]`, counted from the newest slot so that a left-padded
    user's most recent item always gets row N - 1) is added to the real items first, as
    a Transformer encoder does; the TCN and the GRU see the order by construction.

    Args:
        num_heads: int. Defaults to 2.
        ff_dim: int or None. Width of the feed-forward layer; None: twice the input's
            width. Defaults to None.
        dropout: float. Defaults to 0.
        positions: bool. Add the position embedding. Defaults to True.

    Call arguments:
        sequence: float `[B, N, d]`; mask: bool `[B, N]`; training.

    Returns:
        `[B, N, d]`.

    Example:

    ```python
    layer = ContextSelfAttention(num_heads=2)
    out = layer(np.ones((2, 5, 4), "float32"), np.ones((2, 5), bool))  # (2, 5, 4)
    ```
    """

    def __init__(self, num_heads=2, ff_dim=None, dropout=0.0, positions=True, **kwargs):
        super().__init__(**kwargs)
        self.num_heads, self.ff_dim, self.dropout = num_heads, ff_dim, dropout
        self.positions = bool(positions)

    def build(self, sequence_shape, mask_shape=None):
        d = sequence_shape[-1]
        if d % self.num_heads:
            raise ValueError(f"`num_heads`={self.num_heads} must divide the width {d}")
        self.position_embedding = None
        if self.positions:
            if sequence_shape[1] is None:
                raise ValueError("`positions` needs a static sequence length")
            self.position_embedding = self.add_weight(
                name="positions", shape=(sequence_shape[1], d),
                initializer=keras.initializers.RandomNormal(stddev=0.05))
        self.attention = keras.layers.MultiHeadAttention(
            self.num_heads, d // self.num_heads, dropout=self.dropout,
            dtype=self.dtype_policy, name="attention")
        self.attention.build(sequence_shape, sequence_shape)
        self.norm_1 = keras.layers.LayerNormalization(dtype=self.dtype_policy, name="norm_1")
        self.norm_2 = keras.layers.LayerNormalization(dtype=self.dtype_policy, name="norm_2")
        self.norm_1.build(sequence_shape)
        self.norm_2.build(sequence_shape)
        self.hidden = keras.layers.Dense(self.ff_dim or 2 * d, activation="relu",
                                         dtype=self.dtype_policy, name="hidden")
        self.project = keras.layers.Dense(d, dtype=self.dtype_policy, name="project")
        self.hidden.build(sequence_shape)
        self.project.build((*sequence_shape[:-1], self.ff_dim or 2 * d))
        self.built = True

    def call(self, sequence, mask=None, training=None):
        real = (ops.ones(ops.shape(sequence)[:2], dtype="bool") if mask is None
                else ops.cast(mask, "bool"))
        pairs = ops.logical_and(ops.expand_dims(real, 1), ops.expand_dims(real, 2))
        x = sequence
        if self.position_embedding is not None:
            x = x + ops.expand_dims(ops.cast(self.position_embedding, x.dtype), 0)
        x = x * ops.cast(ops.expand_dims(real, -1), x.dtype)
        attended = self.attention(x, x, attention_mask=pairs, training=training)
        x = self.norm_1(x + attended)
        x = self.norm_2(x + self.project(self.hidden(x)))
        return x * ops.cast(ops.expand_dims(real, -1), x.dtype)

    def get_config(self):
        config = super().get_config()
        config.update(num_heads=self.num_heads, ff_dim=self.ff_dim, dropout=self.dropout,
                      positions=self.positions)
        return config
