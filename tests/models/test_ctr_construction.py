"""CtrModel's sequence-construction and polarity-label options (paper Table 7, Figure 8):
the dual-stream encoder (`model.mode: dual`) and random polarity labels
(`model.polarity_labels: random`)."""

import dataclasses

import numpy as np
import pytest

from tests.models.test_ctr import ITEMS, planted_batch
from tfnegseq.config import ConfigError, load_config
from tfnegseq.kinds.ctr.config import CtrModelConfig as ModelConfig
from tfnegseq.models.ctr import CtrModel

UNIFIED = ["onetrans", "hyformer", "mixformer"]


def make(backbone="din", polarity="tapf", ratio=0.5, length=10, mode="dual",
         labels="observed", **extra):
    m = dataclasses.asdict(ModelConfig(
        backbone=backbone, polarity=polarity, positive_ratio=ratio, sequence_length=length,
        mode=mode, polarity_labels=labels, embedding_dim=16, mlp_units=[32],
        attention_units=[16], num_heads=2, ns_tokens=2, num_queries=2, **extra))
    return CtrModel({"item_id": ITEMS + 1, "user_id": 5}, m)


def most_recent(items, orders, k):
    """The k most recent real (id > 0) events of one row, oldest first, left-padded to k."""
    real = [(o, i) for i, o in zip(items, orders, strict=True) if i > 0]
    kept = [i for _, i in sorted(real)][-k:] if k else []
    return [0] * (k - len(kept)) + kept


def test_dual_stream_sequences_are_the_most_recent_of_each_polarity():
    """[pad, the floor(r L)-slot positive stream | the floor((1 - r) L)-slot negative
    stream], each the most recent events of its polarity, built here from the lists."""
    rng = np.random.default_rng(0)
    x, _ = planted_batch(rng, 6, h=10)
    model = make(ratio=0.3, length=11)  # budget (3, 7): 4 positive slots incl. 1 pad
    items, polarity = (np.asarray(a) for a in model._mixed(x))
    assert items.shape == (6, 11)
    for b in range(6):
        want_pos = most_recent(x["pos_item_id"][b], x["pos_order"][b], 3)
        want_neg = most_recent(x["neg_item_id"][b], x["neg_order"][b], 7)
        assert list(items[b]) == [0, *want_pos, *want_neg]
        assert list(polarity[b]) == [0] + [1 if i else 0 for i in want_pos] + [
            -1 if i else 0 for i in want_neg]


@pytest.mark.parametrize("backbone,polarity", [
    *[(b, "pbe") for b in ["din", "transformer", *UNIFIED]],
    ("transformer", "tapf"),  # TAPF after the encoder, each stream its own pooling
    ("onetrans", "tapf")])
def test_dual_streams_do_not_interact(backbone, polarity):
    """Changing a negative changes only the negative stream's half of the interest,
    changing a positive only the positive stream's half."""
    rng = np.random.default_rng(1)
    x, _ = planted_batch(rng, 4, h=10)
    model = make(backbone, polarity=polarity)
    if (backbone, polarity) == ("transformer", "tapf"):
        assert model.tapf_after_encoder and model.aggregation_negative is not None
    interest, _ = model.short_term_interest(x)
    half = interest.shape[-1] // 2
    for name, moved, still in (("neg_item_id", slice(half, None), slice(None, half)),
                               ("pos_item_id", slice(None, half), slice(half, None))):
        y = {k: v.copy() for k, v in x.items()}
        last = y[name][:, -1]
        y[name][:, -1] = np.where(last > 0, last % ITEMS + 1, last)  # another real item
        other, _ = model.short_term_interest(y)
        np.testing.assert_allclose(np.asarray(other)[:, still], np.asarray(interest)[:, still],
                                   rtol=1e-5, atol=1e-6)
        assert np.abs(np.asarray(other)[:, moved] - np.asarray(interest)[:, moved]).max() > 1e-6


def test_dual_stream_din_is_two_target_attentions_concatenated():
    """DIN dual stream: the interest is [DIN_pos(positive tokens); DIN_neg(negative
    tokens)], the tokens looked up here from the streams built by `most_recent`."""
    rng = np.random.default_rng(2)
    x, _ = planted_batch(rng, 5, h=10)
    model = make("din", polarity="none", ratio=0.5, length=10)
    interest, target = model.short_term_interest(x)
    table = np.asarray(model.item_embedding.embeddings)
    position = np.asarray(model.position_embedding.embeddings)
    parts = []
    for layer, name, cols in ((model.backbone, "pos", slice(0, 5)),
                              (model.backbone_negative, "neg", slice(5, 10))):
        ids = np.array([most_recent(x[f"{name}_item_id"][b], x[f"{name}_order"][b], 5)
                        for b in range(5)])
        tokens = table[ids] + position[cols][None]
        parts.append(np.asarray(layer(tokens, table[x["item_id"]], ids > 0)))
    np.testing.assert_allclose(np.asarray(interest), np.concatenate(parts, -1),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backbone", ["din", "transformer", "onetrans"])
def test_dual_stream_score_candidates_equals_scoring_each_row(backbone):
    rng = np.random.default_rng(3)
    x, _ = planted_batch(rng, 3)
    model = make(backbone, polarity="pbe")
    users = {k: v for k, v in x.items() if k != "item_id"}
    cands = rng.integers(1, ITEMS + 1, (3, 4))
    shared = model.score_candidates(users, {"item_id": cands.reshape(-1)}, 4)
    rows = {k: np.repeat(v, 4, axis=0) for k, v in users.items()}
    rows["item_id"] = cands.reshape(-1)
    np.testing.assert_allclose(np.asarray(shared["logit"]), np.asarray(model(rows)["logit"]),
                               rtol=1e-5, atol=1e-5)


def coin(item, user):
    """The hash of `random_polarity`'s docstring, in Python integers."""
    h = ((item % 32749) * 40503 + (user % 32749) * 9973) % 65521
    return 1 if (h * 27893) % 65521 >= 32761 else -1


def test_random_polarity_labels_keep_items_and_hash_each_pair():
    rng = np.random.default_rng(4)
    x, _ = planted_batch(rng, 8, h=10)
    x["user_id"] = np.arange(1, 9)
    observed = make(mode="interleaved")
    shuffled = make(mode="interleaved", labels="random")
    items, pol = (np.asarray(a) for a in observed._mixed(x))
    items_r, pol_r = (np.asarray(a) for a in shuffled._mixed(x))
    np.testing.assert_array_equal(items_r, items)  # the same tokens, in the same slots
    want = np.array([[coin(int(i), int(u)) if p else 0 for i, p in zip(row, prow, strict=True)]
                     for row, prow, u in zip(items, pol, x["user_id"], strict=True)])
    np.testing.assert_array_equal(pol_r, want)
    assert (pol_r != pol)[pol != 0].any()


def test_random_polarity_is_a_fair_coin():
    """Over 100,000 (user, item) pairs the share of +1 is within 1 % of one half, and
    independent of the observed label (the same share among observed negatives)."""
    from tfnegseq.models.ctr import random_polarity

    rng = np.random.default_rng(5)
    items = rng.integers(1, 2_000_000, (1000, 100))
    observed = np.where(rng.random((1000, 100)) < 0.5, 1, -1).astype("int32")
    got = np.asarray(random_polarity(items, np.arange(1000) * 7919, observed))
    assert abs((got == 1).mean() - 0.5) < 0.01
    assert abs((got[observed == -1] == 1).mean() - 0.5) < 0.01
    assert set(np.unique(got)) == {-1, 1}


@pytest.mark.parametrize("ratio,length", [(1.0, 10), (0.0, 10), (0.05, 10)])
def test_dual_mode_without_both_streams_is_refused(ratio, length):
    with pytest.raises(ConfigError, match="mode: 'dual' needs at least one positive and one"):
        load_config("configs/synthetic.yaml", [
            "model.mode=dual", f"model.positive_ratio={ratio}", f"model.sequence_length={length}"])


def test_unknown_polarity_labels_are_refused():
    with pytest.raises(ConfigError, match="polarity_labels"):
        load_config("configs/synthetic.yaml", ["model.polarity_labels=shuffled"])
