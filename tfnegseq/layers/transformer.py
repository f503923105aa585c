"""Transformer encoder over a behaviour sequence with the target token appended."""

from __future__ import annotations

import keras
from keras import ops

from tfnegseq.api_export import register
from tfnegseq.layers._common import check_block_args, fresh
from tfnegseq.layers.dropout import CounterDropout


@register
class TransformerEncoder(keras.layers.Layer):
    """Pre-LN Transformer encoder that reads out the target token.

    The target embedding is appended to the sequence as token `L`, and `num_layers`
    pre-LayerNorm blocks run over the `L + 1` tokens:
    `x = x + Dropout(MHA(LN(x)))`, then `x = x + Dropout(FFN(LN(x)))`, with
    `FFN(x) = W_2 act(W_1 x)`; a final LayerNorm is applied to the target's output.
    Positional information is the caller's (add it to `tokens` before).

    Padding: padded keys are masked in every block (softmax weight exactly 0), so
    padded tokens never reach a real one; padded query positions are computed but
    never read. The target key is always valid, so no row is fully masked. The last
    block only computes the target query (the other positions' outputs would be
    discarded), which saves its feed-forward and attention-output work on `L` tokens.

    Sublayers per block `i`: `attention_norm_{i}` (LayerNormalization),
    `attention_{i}` (`keras.layers.MultiHeadAttention`, `key_dim = d // num_heads`),
    `ffn_norm_{i}`, `ffn_inner_{i}` (Dense `ff_dim`, `activation`), `ffn_outer_{i}`
    (Dense `d`); then `final_norm`.

    Args:
        num_layers: int. Number of blocks, at least 1.
        num_heads: int. Attention heads, at least 1; must divide `d`.
        ff_dim: int. Hidden size of the feed-forward network, at least 1.
        dropout: float. Dropout rate in [0, 1) on attention weights and on both
            residual branches. Defaults to 0.0.
        activation: str. Activation of the feed-forward network. Defaults to
            `"relu"`.
        layer_norm_epsilon: float. LayerNorm epsilon. Defaults to 1e-6.
        kernel_initializer: str or initializer for the Dense and attention kernels.
            Defaults to `"glorot_uniform"`.
        **kwargs: Base layer keyword arguments (`name`, `dtype`, ...).

    Call arguments:
        tokens: float tensor `[B, L, d]`. Sequence tokens.
        target: float tensor `[B, d]`. Target item embedding.
        mask: bool tensor `[B, L]` or None. True for real tokens; None treats every
            token as real (a Keras mask attached to `tokens` is not read). Defaults
            to None.
        training: bool or None. Dropout mode. Defaults to None.
        return_attention_scores: bool. Also return the last block's attention weights
            of the target query. Defaults to False.
        return_sequence: bool. Return every token's output `[B, L + 1, d]` (the last
            block then computes all queries; the final LayerNorm applies to each)
            instead of the target's. Defaults to False.

    Returns:
        The target token's output `[B, d]` (`[B, L + 1, d]` with `return_sequence`), or
        `(output, scores)` with `scores` `[B, num_heads, L + 1]` (the last key is the
        target itself) when `return_attention_scores=True`.

    Example:

    ```python
    layer = TransformerEncoder(num_layers=2, num_heads=2, ff_dim=16)
    out = layer(np.ones((2, 5, 8), "float32"), np.ones((2, 8), "float32"),
                np.array([[False, False, True, True, True]] * 2))
    out.shape  # (2, 8)
    ```
    """

    def __init__(
        self,
        num_layers,
        num_heads,
        ff_dim,
        dropout=0.0,
        activation="relu",
        layer_norm_epsilon=1e-6,
        kernel_initializer="glorot_uniform",
        **kwargs,
    ):
        super().__init__(**kwargs)
        check_block_args(num_layers, num_heads, ff_dim, dropout)
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.ff_dim = ff_dim
        self.dropout = dropout
        self.activation = activation
        self.layer_norm_epsilon = layer_norm_epsilon
        self.kernel_initializer = keras.initializers.get(kernel_initializer)

    def build(self, tokens_shape, target_shape):
        dim = tokens_shape[-1]
        if target_shape[-1] != dim:
            raise ValueError(
                "`target` must have the token dimension. "
                f"Received: tokens_shape={tokens_shape}, target_shape={target_shape}"
            )
        if dim % self.num_heads:
            raise ValueError(
                "`num_heads` must divide the token dimension. "
                f"Received: num_heads={self.num_heads}, token dimension={dim}"
            )
        seq_shape = (None, None, dim)
        common = {"dtype": self.dtype_policy}
        self.blocks = []
        for i in range(self.num_layers):
            attention_norm = keras.layers.LayerNormalization(
                epsilon=self.layer_norm_epsilon, name=f"attention_norm_{i}", **common
            )
            attention = keras.layers.MultiHeadAttention(
                self.num_heads,
                dim // self.num_heads,
                dropout=self.dropout,
                kernel_initializer=fresh(self.kernel_initializer),
                name=f"attention_{i}",
                **common,
            )
            ffn_norm = keras.layers.LayerNormalization(
                epsilon=self.layer_norm_epsilon, name=f"ffn_norm_{i}", **common
            )
            ffn_inner = keras.layers.Dense(
                self.ff_dim,
                activation=self.activation,
                kernel_initializer=fresh(self.kernel_initializer),
                name=f"ffn_inner_{i}",
                **common,
            )
            ffn_outer = keras.layers.Dense(
                dim, kernel_initializer=fresh(self.kernel_initializer), name=f"ffn_outer_{i}", **common
            )
            attention_norm.build(seq_shape)
            attention.build(seq_shape, seq_shape)
            ffn_norm.build(seq_shape)
            ffn_inner.build(seq_shape)
            ffn_outer.build((None, None, self.ff_dim))
            self.blocks.append((attention_norm, attention, ffn_norm, ffn_inner, ffn_outer))
        self.residual_dropout = CounterDropout(self.dropout, **common)
        self.final_norm = keras.layers.LayerNormalization(
            epsilon=self.layer_norm_epsilon, name="final_norm", **common
        )
        self.final_norm.build((None, dim))
        self.built = True

    def call(self, tokens, target, mask=None, training=None, return_attention_scores=False,
             return_sequence=False):
        if return_sequence and return_attention_scores:
            raise ValueError("`return_sequence` and `return_attention_scores` are exclusive")
        x = ops.concatenate([tokens, ops.expand_dims(target, 1)], axis=1)  # [B, L + 1, d]
        if mask is None:
            mask = ops.ones(ops.shape(tokens)[:2], dtype="bool")
        mask = ops.cast(mask, "bool")
        key_mask = ops.concatenate([mask, ops.ones_like(mask[:, :1])], axis=1)  # [B, L + 1]
        scores = None
        for i, (attention_norm, attention, ffn_norm, ffn_inner, ffn_outer) in enumerate(
            self.blocks
        ):
            last = i == self.num_layers - 1 and not return_sequence
            normed = attention_norm(x)  # [B, L + 1, d]
            query = normed[:, -1:] if last else normed  # [B, 1, d] in the last block
            residual = x[:, -1:] if last else x
            attended = attention(
                query,
                normed,
                value_mask=key_mask,
                training=training,
                return_attention_scores=return_attention_scores and last,
            )
            if return_attention_scores and last:
                attended, scores = attended
            x = residual + self.residual_dropout(attended, training=training)
            ffn = ffn_outer(ffn_inner(ffn_norm(x)))
            x = x + self.residual_dropout(ffn, training=training)
        if return_sequence:
            return self.final_norm(x)  # [B, L + 1, d]
        output = self.final_norm(ops.squeeze(x, 1))  # [B, d]
        if return_attention_scores:
            return output, ops.squeeze(scores, 2)  # [B, heads, L + 1]
        return output

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_layers": self.num_layers,
                "num_heads": self.num_heads,
                "ff_dim": self.ff_dim,
                "dropout": self.dropout,
                "activation": self.activation,
                "layer_norm_epsilon": self.layer_norm_epsilon,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            }
        )
        return config
