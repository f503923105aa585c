"""`CtrModel` end to end against a numpy reference written from the paper's equations.

Tiny config (L = 6, d = 4, one side feature), every weight random (PBE's zero init
replaced too), histories with padding, ties and more events than the budget. The
reference does each step by hand: the mixed-polarity merge (§3.3, a plain sort),
item + position embeddings, PBE (eq. 2), TAPF (eq. 3-5, with the Dense biases the
layer documents), DIN's activation unit with sum pooling, the MLP head and the
sigmoid. Nothing of tfnegseq is called by the reference.
"""

import dataclasses
from fractions import Fraction

import numpy as np
import pytest

from tfnegseq.kinds.ctr.config import CtrModelConfig
from tfnegseq.models import CtrModel

L, D = 6, 4


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def merge(pos, pos_order, neg, neg_order, ratio, mode):
    """§3.3: the last floor(rL) positives and floor((1-r)L) negatives (real ids only),
    merged by order (ties: positive first) or grouped, left-padded to L."""
    # the ratio as the decimal the user wrote: 0.34 * 6 = 2.04 -> 2, 0.66 * 6 = 3.96 -> 3
    share = Fraction(str(ratio))
    kp, kn = int(share * L), int((1 - share) * L)
    p = [(o, 0, i, 1) for i, o in zip(pos, pos_order, strict=True) if i != 0][-kp:] if kp else []
    n = [(o, 1, i, -1) for i, o in zip(neg, neg_order, strict=True) if i != 0][-kn:] if kn else []
    events = sorted(p + n) if mode == "interleaved" else p + n
    items = [0] * (L - len(events)) + [e[2] for e in events]
    polarity = [0] * (L - len(events)) + [e[3] for e in events]
    return np.array(items), np.array(polarity)


def reference(w, x, ratio, mode, polarity_kind, bias=True, shared=False):
    out = []
    for b in range(len(x["item_id"])):
        items, pol = merge(x["pos_item_id"][b], x["pos_order"][b], x["neg_item_id"][b],
                           x["neg_order"][b], ratio, mode)
        e_v = w["item_embedding/embeddings"][x["item_id"][b]]  # target
        h = w["item_embedding/embeddings"][items] + w["position_embedding/embeddings"]  # eq. 2
        real = pol != 0
        if polarity_kind in ("pbe", "tapf"):
            table = w["pbe/embeddings/embeddings"]  # rows: -1, 0, +1
            h = h + real[:, None] * table[pol + 1]
        if polarity_kind == "tapf":
            b_int = w["tapf/interaction/bias"] if bias else 0.0
            b_g = w["tapf/gate/bias"] if bias else 0.0
            e_k = np.maximum((h * e_v) @ w["tapf/interaction/kernel"] + b_int, 0)  # eq. 3
            b_p = (table if shared else w["tapf/polarity_embedding/embeddings"])[pol + 1]
            g = sigmoid(np.concatenate([h, e_k, b_p], -1) @ w["tapf/gate/kernel"] + b_g)  # eq. 4
            h = h + pol[:, None] * (2 * g - 1) * e_k  # eq. 5
        # DIN: a_l = MLP([k, q, k - q, k * q]) (sigmoid hidden, linear score), sum pooling
        a = np.concatenate([h, np.tile(e_v, (L, 1)), h - e_v, h * e_v], -1)
        for i in range(2):
            a = sigmoid(a @ w[f"din_attention/hidden_{i}/kernel"] + w[f"din_attention/hidden_{i}/bias"])
        a = (a @ w["din_attention/score/kernel"] + w["din_attention/score/bias"])[:, 0]
        interest = (a * real) @ h
        z = np.concatenate([interest, e_v, w["user_embedding/embeddings"][x["user_id"][b]],
                            w["emb_user_age/embeddings"][x["user_age"][b]]])
        z = np.maximum(z @ w["mlp_0/kernel"] + w["mlp_0/bias"], 0)
        out.append((z @ w["logit/kernel"] + w["logit/bias"])[0])
    logit = np.array(out)
    return logit, sigmoid(logit)


def batch():
    return {
        "user_id": np.array([1, 2, 1]),
        "item_id": np.array([3, 4, 19]),
        "user_age": np.array([1, 3, 0]),
        # row 0: padding and a tie (orders 4 / 4); row 1: more events than the budget
        "pos_item_id": np.array([[0, 0, 5, 6, 7], [8, 9, 10, 11, 18], [0, 0, 0, 0, 2]]),
        "pos_order": np.array([[0, 0, 1, 4, 6], [1, 2, 3, 9, 12], [0, 0, 0, 0, 3]]),
        "neg_item_id": np.array([[0, 0, 0, 12, 13], [14, 15, 16, 17, 1], [0, 0, 0, 0, 0]]),
        "neg_order": np.array([[0, 0, 0, 4, 5], [4, 5, 6, 7, 8], [0, 0, 0, 0, 0]]),
    }


@pytest.mark.parametrize("polarity, ratio, mode, bias, shared", [
    ("tapf", 0.5, "interleaved", True, False),
    ("tapf", 0.5, "grouped", True, False),
    ("pbe", 0.5, "interleaved", True, False),
    ("none", 1.0, "interleaved", True, False),
    ("tapf", 0.34, "interleaved", True, False),  # 2 + 3 slots: one stays padding
    ("tapf", 0.5, "interleaved", False, False),  # model.tapf_bias: false (eq. 3-4 as written)
    ("tapf", 0.5, "interleaved", False, True),  # ... and the gate reads PBE's table
])
@pytest.mark.parametrize("jit", [False, True])
def test_ctr_model_matches_numpy_reference(polarity, ratio, mode, bias, shared, jit):
    import keras

    cfg = CtrModelConfig(polarity=polarity, positive_ratio=ratio, mode=mode, sequence_length=L,
                         embedding_dim=D, mlp_units=[5], attention_units=[3, 2],
                         tapf_bias=bias, tapf_shared_polarity=shared)
    model = CtrModel({"item_id": 20, "user_id": 3, "user_age": 4}, dataclasses.asdict(cfg),
                     side_features=["user_age"])
    x = batch()
    model(x)
    rng = np.random.default_rng(7)
    for v in model.weights:
        v.assign(rng.normal(0, 0.5, v.shape).astype("float32"))
    w = {v.path.split("/", 1)[1]: np.asarray(v, np.float64) for v in model.weights}
    assert ("tapf/interaction/bias" in w) == (polarity == "tapf" and bias)
    assert ("tapf/polarity_embedding/embeddings" in w) == (polarity == "tapf" and not shared)
    want_logit, want_p = reference(w, x, ratio, mode, polarity, bias, shared)
    if jit:
        model.compile(jit_compile=True)
        out = model.predict(x, verbose=0)
    else:
        out = model(x)
    np.testing.assert_allclose(np.asarray(out["logit"]), want_logit, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(out["probability"]), want_p, rtol=1e-4, atol=1e-6)
    assert keras.backend.standardize_dtype(out["probability"].dtype) == "float32"


def test_tapf_encoded_placement_is_encoder_then_tapf_then_pooling():
    """`tapf_position: encoded` (Transformer): PBE'd tokens -> encoder over all tokens ->
    TAPF on the encoded sequence -> target-attention pooling -> head; composed here from
    the model's own sublayers (each has its numeric test) to check the wiring; the pooling
    is a softmax over the real tokens' target-attention scores."""
    from keras import ops

    cfg = CtrModelConfig(backbone="transformer", tapf_position="encoded", sequence_length=L,
                         embedding_dim=D, mlp_units=[5], attention_units=[3], num_heads=2)
    model = CtrModel({"item_id": 20, "user_id": 3, "user_age": 4}, dataclasses.asdict(cfg),
                     side_features=["user_age"])
    x = batch()
    out = np.asarray(model(x)["logit"])
    tokens, target, polarity, mask = model.encode_sequence(x)  # PBE applied, TAPF not yet
    encoded = model.backbone(tokens, target, mask, return_sequence=True)[:, :L]
    calibrated = model.tapf(encoded, target, polarity)
    _, scores = model.aggregation(calibrated, target, mask, return_attention_scores=True)
    scores = np.where(np.asarray(mask), np.asarray(scores, np.float64), -np.inf)
    w = np.exp(scores - scores.max(-1, keepdims=True))
    w = np.where(np.asarray(mask), w / w.sum(-1, keepdims=True), 0.0)  # softmax over real
    interest = ops.convert_to_tensor((w[..., None] * np.asarray(calibrated)).sum(1), "float32")
    z = ops.concatenate([interest, target, model._lookup(model.user_embedding, x["user_id"]),
                         model._lookup(model.side_embeddings["user_age"], x["user_age"])], -1)
    for layer in model.mlp:
        z = layer(z)
    np.testing.assert_allclose(out, np.asarray(model.out(z))[:, 0], rtol=1e-5, atol=1e-6)
    # and the input placement differs (TAPF before the encoder, no pooling layer)
    assert model.tapf_after_encoder and model.aggregation is not None


def test_transformer_return_sequence_ends_with_the_target_output():
    from tfnegseq.layers import TransformerEncoder

    rng = np.random.default_rng(3)
    tokens = rng.normal(size=(3, 5, 8)).astype("float32")
    target = rng.normal(size=(3, 8)).astype("float32")
    mask = np.array([[0, 1, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 1, 1]], bool)
    layer = TransformerEncoder(num_layers=2, num_heads=2, ff_dim=16)
    readout = np.asarray(layer(tokens, target, mask))
    sequence = np.asarray(layer(tokens, target, mask, return_sequence=True))
    assert sequence.shape == (3, 6, 8)
    np.testing.assert_allclose(sequence[:, -1], readout, rtol=1e-5, atol=1e-6)
