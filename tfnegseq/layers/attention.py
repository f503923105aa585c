"""DIN target attention: the activation unit and masked weighted-sum pooling.

Also `token_matmul`, a matmul for per-token activations shared with the polarity layers.
"""

from __future__ import annotations

import math

import keras
from keras import ops

from tfnegseq.api_export import register
from tfnegseq.layers._common import fresh

# Rows per chunk below which `token_matmul` keeps one plain matmul.
_MIN_CHUNK_ROWS = 64


def token_matmul(x, kernel, chunks=256):
    """`x @ kernel` for per-token activations `x` `[..., k]` and a shared `[k, m]` kernel.

    Same values as `ops.matmul(x, kernel)`. When the token count `N` (the product of
    the leading dims) is static and splits into `chunks` chunks of at least 64 rows, the
    product is computed as a batched matmul over `[chunks, N / chunks, k]` with the
    kernel broadcast to every chunk. The reason is the backward pass: the kernel's
    gradient of a plain matmul is one dot contracting over all `N = B * L` rows, which
    XLA:CPU runs at about a third of the forward speed; split, it is a batched dot and
    a sum over `chunks` (one 64x64 layer forward + backward at B * L = 204,800: -21 %
    on a 2-core Xeon). Dynamic shapes (e.g. serving with an unknown batch) take the
    plain matmul.
    """
    lead = tuple(x.shape[:-1])
    if any(not isinstance(n, int) for n in lead):
        return ops.matmul(x, kernel)
    rows = math.prod(lead)
    if rows % chunks or rows // chunks < _MIN_CHUNK_ROWS:
        return ops.matmul(x, kernel)
    k, m = kernel.shape
    chunked = ops.reshape(x, (chunks, rows // chunks, k))  # [chunks, N / chunks, k]
    out = ops.matmul(chunked, ops.broadcast_to(ops.expand_dims(kernel, 0), (chunks, k, m)))
    return ops.reshape(out, (*lead, m))  # [..., m]


@register
class DinAttention(keras.layers.Layer):
    """DIN's local activation unit with weighted-sum pooling (Zhou et al., 2018).

    For every key `k_l` and the query `q` (the target item), a score
    `a_l = MLP([k_l, q, k_l - q, k_l * q])` is computed by hidden Dense layers
    (`units`, `activation`) and a linear Dense(1); as in DIN there is no softmax.
    The output is `sum_l a_l * mask_l * k_l`: padding keys get weight exactly 0, so
    any finite values in padded key slots leave the output unchanged.

    The first hidden layer is linear in its `[4d]` input, so with its kernel split
    into blocks `W_1 = [W_a; W_b; W_c; W_d]` it is computed as
    `k @ (W_a + W_c + diag(q) W_d) + q @ (W_b - W_c) + bias`: one per-example
    `[d, u]` kernel and one per-example bias (a `[B, u]` term computed once, not per
    token), then a single batched matmul over the keys. No `[B, L, 4d]` concat is
    built, and the sublayer `hidden_0` still holds one `[4d, u]` kernel. The further
    hidden layers use their sublayers' weights through `token_matmul`.

    Pass `mask` explicitly (a Keras mask attached to `keys` is not read); without it
    every key counts.

    Args:
        units: sequence of int. Sizes of the hidden Dense layers, named
            `hidden_0`, `hidden_1`, ...; the scoring Dense(1) is named `score`.
            Defaults to `(80, 40)`.
        activation: str. Keras activation of the hidden layers. Defaults to
            `"sigmoid"`.
        kernel_initializer: str or initializer for the Dense kernels. Defaults to
            `"glorot_uniform"`.
        bias_initializer: str or initializer for the Dense biases. Defaults to
            `"zeros"`.
        **kwargs: Base layer keyword arguments (`name`, `dtype`, ...).

    Call arguments:
        keys: float tensor `[B, L, d]`. Behaviour tokens.
        query: float tensor `[B, d]`. Target item embedding.
        mask: bool tensor `[B, L]` or None. True for real keys. Defaults to None.
        return_attention_scores: bool. Also return the weights. Defaults to False.

    Returns:
        `pooled` `[B, d]`, or `(pooled, weights)` with `weights` `[B, L]` (0 on
        padding) when `return_attention_scores=True`.

    Example:

    ```python
    layer = DinAttention(units=(16, 8))
    pooled = layer(np.ones((2, 5, 4), "float32"), np.ones((2, 4), "float32"),
                   np.array([[False, True, True, True, True]] * 2))
    pooled.shape  # (2, 4)
    ```
    """

    def __init__(
        self,
        units=(80, 40),
        activation="sigmoid",
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        **kwargs,
    ):
        super().__init__(**kwargs)
        units = tuple(units) if isinstance(units, (list, tuple)) else units
        if (
            not isinstance(units, tuple)
            or not units
            or any(isinstance(u, bool) or not isinstance(u, int) or u < 1 for u in units)
        ):
            raise ValueError(
                "`units` must be a non-empty sequence of positive integers. "
                f"Received: units={units}"
            )
        if not isinstance(activation, str):
            raise ValueError(
                f"`activation` must be a Keras activation name. Received: activation={activation}"
            )
        try:
            self._activation_fn = keras.activations.get(activation)
        except ValueError as error:
            raise ValueError(
                f"`activation` must be a Keras activation name. Received: activation={activation}"
            ) from error
        self.units = units
        self.activation = activation
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)

    def build(self, keys_shape, query_shape):
        dim = keys_shape[-1]
        if query_shape[-1] != dim:
            raise ValueError(
                "`query` must have the key dimension. "
                f"Received: keys_shape={keys_shape}, query_shape={query_shape}"
            )
        self._dim = dim

        def dense_kwargs():  # one initializer per weight: a shared one repeats values
            return {
                "kernel_initializer": fresh(self.kernel_initializer),
                "bias_initializer": fresh(self.bias_initializer),
                "dtype": self.dtype_policy,
            }

        self.hidden_layers = []
        in_dim = 4 * dim
        for i, units in enumerate(self.units):
            layer = keras.layers.Dense(
                units, activation=self.activation, name=f"hidden_{i}", **dense_kwargs()
            )
            layer.build((None, in_dim))
            self.hidden_layers.append(layer)
            in_dim = units
        self.score = keras.layers.Dense(1, name="score", **dense_kwargs())
        self.score.build((None, in_dim))
        self.built = True

    def call(self, keys, query, mask=None, return_attention_scores=False):
        dim = self._dim
        dtype = self.compute_dtype
        first = self.hidden_layers[0]
        kernel = ops.cast(first.kernel, dtype)  # [4d, u]
        w_k, w_q, w_diff, w_prod = (kernel[i * dim : (i + 1) * dim] for i in range(4))
        # [k, q, k - q, k * q] @ W_1 = k @ (W_k + W_diff + diag(q) W_prod) + q @ (W_q - W_diff)
        per_example_kernel = ops.expand_dims(w_k + w_diff, 0) + ops.expand_dims(
            query, -1
        ) * ops.expand_dims(w_prod, 0)  # [B, d, u]
        per_example_bias = ops.matmul(query, w_q - w_diff) + ops.cast(first.bias, dtype)  # [B, u]
        hidden = ops.matmul(keys, per_example_kernel) + ops.expand_dims(per_example_bias, 1)
        hidden = self._activation_fn(hidden)  # [B, L, u]
        for layer in self.hidden_layers[1:]:  # Dense(hidden), as a token_matmul
            hidden = token_matmul(hidden, ops.cast(layer.kernel, dtype)) + ops.cast(
                layer.bias, dtype
            )
            hidden = self._activation_fn(hidden)
        weights = ops.squeeze(self.score(hidden), -1)  # [B, L]
        if mask is not None:
            weights = ops.where(ops.cast(mask, "bool"), weights, ops.zeros_like(weights))
        pooled = ops.squeeze(ops.matmul(ops.expand_dims(weights, 1), keys), 1)  # [B, d]
        if return_attention_scores:
            return pooled, weights
        return pooled

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "units": list(self.units),
                "activation": self.activation,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
                "bias_initializer": keras.initializers.serialize(self.bias_initializer),
            }
        )
        return config
