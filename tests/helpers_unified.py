"""Unified-block backbone test helpers: numpy references in float64, random weights and
backend-agnostic `check_*` functions (run by `tests/layers/test_unified.py` and, under
JAX, by `tests/layers/test_jax_backend.py`).

The references are transcriptions of the blocks as the docstrings of
`tfnegseq.layers.unified` and the papers write them, computed the long way: attention
for *every* position with an explicit causal / padding test per (query, key) pair,
token-specific weights picked per position in a Python loop, RMSNorm, GELU (erf) and
SwiGLU from their formulas. They read the layer's weights by sublayer name only.
"""

from __future__ import annotations

import numpy as np
from scipy.special import erf

from tests.helpers import eager_call, to_numpy
from tfnegseq.layers.unified import HyFormerEncoder, MixFormerEncoder, OneTransEncoder

EPS = 1e-6


def rms(x, scale, eps=EPS):
    return x / np.sqrt((x ** 2).mean(-1, keepdims=True) + eps) * scale


def gelu(x):
    return 0.5 * x * (1.0 + erf(x / np.sqrt(2.0)))


def silu(x):
    return x / (1.0 + np.exp(-x))


def softmax_rows(logits, allowed):
    """Softmax over the allowed entries of the last axis; all-zero where none is."""
    out = np.zeros_like(logits)
    for idx in np.ndindex(*logits.shape[:-1]):
        ok = allowed[idx]
        if ok.any():
            z = np.where(ok, logits[idx], -np.inf)
            e = np.exp(z - z[ok].max())
            out[idx] = e / e.sum()
    return out


def mha(q, k, v, allowed, heads):
    """Per-head scaled dot-product attention, `allowed` `[B, Tq, Tk]`; returns the
    context `[B, Tq, d]` and weights `[B, heads, Tq, Tk]`."""
    b, tq, d = q.shape
    dh = d // heads
    context = np.zeros((b, tq, d))
    weights = np.zeros((b, heads, tq, k.shape[1]))
    for h in range(heads):
        sl = slice(h * dh, (h + 1) * dh)
        logits = np.einsum("bqc,bkc->bqk", q[..., sl], k[..., sl]) / np.sqrt(dh)
        w = softmax_rows(logits, allowed)
        weights[:, h] = w
        context[..., sl] = np.einsum("bqk,bkc->bqc", w, v[..., sl])
    return context, weights


def weights_of(sublayer):
    return [np.asarray(w, "float64") for w in sublayer.get_weights()]


def randomize(layer, rng, scale=0.4):
    """Random normal weights for every variable (norm scales around 1)."""
    for w in layer.weights:
        value = rng.normal(size=w.shape) * scale
        if "norm" in w.path:
            value = value + 1.0
        w.assign(value.astype("float32"))


def random_inputs(rng, batch=4, length=6, tokens=2, dim=8):
    seq = rng.normal(size=(batch, length, dim)).astype("float32")
    ns = rng.normal(size=(batch, tokens, dim)).astype("float32")
    mask = np.ones((batch, length), bool)
    for b in range(batch):
        mask[b, :b] = False  # left padding
    mask[-1, :] = False  # a row with no behaviour at all
    return seq, ns, mask


def dense(x, layer):
    w = weights_of(layer)
    y = x @ w[0]
    return y + w[1] if len(w) > 1 else y


def per_token(x, layer):
    """`x` `[B, T, d]`: token t through its own kernel slice (a loop over t)."""
    w = weights_of(layer)
    out = []
    for t in range(x.shape[1]):
        y = x[:, t] @ w[0][t]
        out.append(y + w[1][t] if len(w) > 1 else y)
    return np.stack(out, axis=1)


def token_mixing(x, heads):
    """Output token h = concat over input tokens t of chunk h of token t."""
    b, t, d = x.shape
    c = d // heads
    return np.stack([np.concatenate([x[:, j, h * c:(h + 1) * c] for j in range(t)], -1)
                     for h in range(heads)], axis=1)


# --------------------------------------------------------------------------- OneTrans


def onetrans_reference(layer, seq, ns, mask, heads):
    """OneTrans on float64: every position computes its query (causal, padding masked),
    then only the pyramid's tail and the NS tokens are kept; mixed parameters per row."""
    s, n, m = seq.astype("float64"), ns.astype("float64"), mask.copy()
    tokens, weights = n.shape[1], None
    entering = s
    for i, block in enumerate(layer.blocks):
        keep = layer.schedule[i]
        cur = s.shape[1]
        x = np.concatenate([s, n], 1)
        g = weights_of(block["attention_norm"])[0]
        xn = rms(x, g)
        qkv_s = dense(xn[:, :cur], block["seq_qkv"])
        qkv_n = per_token(xn[:, cur:], block["ns_qkv"])
        qkv = np.concatenate([qkv_s, qkv_n], 1)
        d = x.shape[-1]
        q, k, v = qkv[..., :d], qkv[..., d:2 * d], qkv[..., 2 * d:]
        total = cur + tokens
        valid = np.concatenate([m, np.ones((m.shape[0], tokens), bool)], 1)
        allowed = np.zeros((x.shape[0], total, total), bool)
        for p in range(total):
            for j in range(total):
                allowed[:, p, j] = (j <= p) & valid[:, j]
        context, w = mha(q, k, v, allowed, heads)
        weights = w[:, :, cur:]  # NS queries
        n = n + per_token(context[:, cur:], block["ns_out"])
        fg = weights_of(block["ffn_norm"])[0]
        n = n + per_token(gelu(per_token(rms(n, fg), block["ns_ffn_inner"])),
                          block["ns_ffn_outer"])
        if keep:
            s = s[:, cur - keep:] + dense(context[:, cur - keep:cur], block["seq_out"])
            s = s + dense(gelu(dense(rms(s, fg), block["seq_ffn_inner"])),
                          block["seq_ffn_outer"])
            m = m[:, cur - keep:]
            entering = s
    final = weights_of(layer.final_norm)[0]
    return rms(n, final), rms(entering, final), weights


def check_onetrans(seed=0, num_layers=3, num_heads=2, pyramid=True, call=eager_call,
                   atol=1e-4, length=6, tokens=2):
    rng = np.random.default_rng(seed)
    seq, ns, mask = random_inputs(rng, length=length, tokens=tokens)
    layer = OneTransEncoder(num_layers, num_heads, ff_dim=12, pyramid=pyramid)
    layer(seq, ns, mask)
    randomize(layer, rng)
    out, seq_out, scores = to_numpy(call(layer, seq, ns, mask, return_sequence=True,
                                         return_attention_scores=True))
    want, want_seq, want_scores = onetrans_reference(layer, seq, ns, mask, num_heads)
    np.testing.assert_allclose(out, want, atol=atol, rtol=atol)
    np.testing.assert_allclose(seq_out, want_seq, atol=atol, rtol=atol)
    np.testing.assert_allclose(scores, want_scores, atol=atol, rtol=atol)
    return layer, out


# --------------------------------------------------------------------------- HyFormer


def transformer_block(h, mask, block, heads):
    hn = rms(h, weights_of(block["seq_attention_norm"])[0])
    qkv = dense(hn, block["seq_qkv"])
    d = h.shape[-1]
    allowed = mask[:, :, None] & mask[:, None, :]
    context, _ = mha(qkv[..., :d], qkv[..., d:2 * d], qkv[..., 2 * d:], allowed, heads)
    h = h + dense(context, block["seq_out"])
    hn = rms(h, weights_of(block["seq_ffn_norm"])[0])
    return h + dense(gelu(dense(hn, block["seq_ffn_inner"])), block["seq_ffn_outer"])


def hyformer_reference(layer, seq, ns, mask, heads):
    seq, ns = seq.astype("float64"), ns.astype("float64")
    b, tokens, d = ns.shape
    nq = layer.num_queries
    counts = np.maximum(mask.sum(1, keepdims=True), 1)
    pooled = (seq * mask[..., None]).sum(1) / counts
    info = np.concatenate([ns.reshape(b, -1), pooled], -1)
    wi, bi = weights_of(layer.query_inner)
    wo, bo = weights_of(layer.query_outer)
    q = np.stack([gelu(info @ wi[j] + bi[j]) @ wo[j] + bo[j] for j in range(nq)], 1)
    f, h, weights = ns, seq, None
    for block in layer.blocks:
        h = transformer_block(h, mask, block, heads)
        kv = dense(rms(h, weights_of(block["decode_key_norm"])[0]), block["decode_kv"])
        query = dense(rms(q, weights_of(block["decode_query_norm"])[0]), block["decode_q"])
        context, weights = mha(query, kv[..., :d], kv[..., d:], np.repeat(
            mask[:, None, :], nq, 1), heads)
        q = q + dense(context, block["decode_out"])
        x = np.concatenate([q, f], 1)
        mixed = token_mixing(rms(x, weights_of(block["boost_norm"])[0]), nq + tokens)
        x = x + per_token(gelu(per_token(mixed, block["boost_inner"])), block["boost_outer"])
        q, f = x[:, :nq], x[:, nq:]
    return rms(np.concatenate([q, f], 1), weights_of(layer.final_norm)[0]), weights


def check_hyformer(seed=0, num_layers=2, num_heads=2, num_queries=2, call=eager_call,
                   atol=1e-4):
    rng = np.random.default_rng(seed)
    seq, ns, mask = random_inputs(rng)
    layer = HyFormerEncoder(num_layers, num_heads, ff_dim=12, num_queries=num_queries)
    layer(seq, ns, mask)
    randomize(layer, rng)
    out, scores = to_numpy(call(layer, seq, ns, mask, return_attention_scores=True))
    want, want_scores = hyformer_reference(layer, seq, ns, mask, num_heads)
    np.testing.assert_allclose(out, want, atol=atol, rtol=atol)
    np.testing.assert_allclose(scores, want_scores, atol=atol, rtol=atol)
    return layer, out


# --------------------------------------------------------------------------- MixFormer


def swiglu(x, block, part, token_specific):
    fn = per_token if token_specific else dense
    return fn(silu(fn(x, block[f"{part}_gate"])) * fn(x, block[f"{part}_up"]),
              block[f"{part}_down"])


def mixformer_reference(layer, seq, ns, mask):
    seq, x = seq.astype("float64"), ns.astype("float64")
    b, heads, d = x.shape
    s = dense(seq, layer.sequence_projection)  # [B, L, heads d]
    weights = None
    for block in layer.blocks:
        p = x + token_mixing(rms(x, weights_of(block["mix_norm"])[0]), heads)
        q = p + swiglu(rms(p, weights_of(block["mix_ffn_norm"])[0]), block, "mix", True)
        h = s + swiglu(rms(s, weights_of(block["seq_norm"])[0]), block, "seq", False)
        wk, wv = weights_of(block["key"])[0], weights_of(block["value"])[0]
        z = np.zeros_like(q)
        weights = np.zeros((b, heads, seq.shape[1]))
        for i in range(heads):
            chunk = h[..., i * d:(i + 1) * d]  # [B, L, d]: head i's part of each token
            k, v = chunk @ wk[i], chunk @ wv[i]
            logits = np.einsum("bd,bld->bl", q[:, i], k) / np.sqrt(d)
            w = softmax_rows(logits, mask)
            weights[:, i] = w
            z[:, i] = q[:, i] + np.einsum("bl,bld->bd", w, v)
        x = z + swiglu(rms(z, weights_of(block["fuse_norm"])[0]), block, "fuse", True)
    return rms(x, weights_of(layer.final_norm)[0]), weights


def check_mixformer(seed=0, num_layers=2, call=eager_call, atol=1e-4):
    rng = np.random.default_rng(seed)
    seq, ns, mask = random_inputs(rng)
    layer = MixFormerEncoder(num_layers, 2, ff_dim=12)
    layer(seq, ns, mask)
    randomize(layer, rng)
    out, scores = to_numpy(call(layer, seq, ns, mask, return_attention_scores=True))
    want, want_scores = mixformer_reference(layer, seq, ns, mask)
    np.testing.assert_allclose(out, want, atol=atol, rtol=atol)
    np.testing.assert_allclose(scores, want_scores, atol=atol, rtol=atol)
    return layer, out


CHECKS = {"onetrans": check_onetrans, "hyformer": check_hyformer, "mixformer": check_mixformer}
