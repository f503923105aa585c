"""The CAIN model (issue 14): its config, its lifelong inputs, PEG wiring, the SIM
auxiliary loss, the Table 7 variants and serialization. The layers themselves are
checked against numpy in `tests/layers/test_cain.py` and `tests/layers/test_lifelong.py`."""

import dataclasses

import keras
import numpy as np
import pytest

from tests.helpers import to_numpy
from tfnegseq.config import ConfigError, config_from_dict
from tfnegseq.kinds.cain.config import CainModelConfig
from tfnegseq.models.cain import CainModel

B, H, N_S, ITEMS, USERS = 6, 5, 40, 50, 20
VOCAB = {"item_id": ITEMS + 1, "user_id": USERS + 1, "user_age": 8, "user_gender": 3}
SIDE = ["user_age", "user_gender"]
SMALL = dict(embedding_dim=8, sequence_length=6, lifelong_length=32, lap_top_k=[16, 8],
             top_k=8, lifelong_attention_dim=8, peg_units=4, attention_units=[8],
             mlp_units=[8], msia_layers=2, context_length=2)


def make_inputs(rng, lengths=(40, 33, 20, 5, 1, 0)):
    """CTR inputs plus left-padded lifelong lists of the given real lengths."""
    x = {
        "user_id": rng.integers(1, USERS, B), "item_id": rng.integers(1, ITEMS, B),
        "pos_item_id": rng.integers(1, ITEMS, (B, H)), "pos_order": np.tile(np.arange(1, H + 1), (B, 1)),
        "neg_item_id": rng.integers(1, ITEMS, (B, H)), "neg_order": np.tile(np.arange(1, H + 1), (B, 1)),
        "user_age": rng.integers(1, 8, B), "user_gender": rng.integers(1, 3, B),
    }
    real = np.arange(N_S)[None, :] >= N_S - np.asarray(lengths)[:, None]
    x["life_item_id"] = np.where(real, rng.integers(1, ITEMS, (B, N_S)), 0)
    x["life_order"] = np.where(real, np.arange(1, N_S + 1)[None, :], 0)
    x["life_polarity"] = np.where(real, rng.integers(-1, 2, (B, N_S)), 0)
    x["life_value"] = np.where(real, rng.uniform(0.5, 5.5, (B, N_S)), 0.0).astype("float32")
    return x


def make_model(**overrides):
    cfg = {**SMALL, **overrides}
    peg = cfg.get("peg_layers", "all") != "none"
    return CainModel(VOCAB, cfg, side_features=SIDE,
                     profile_features=["user_age", "user_gender"] if peg else [])


def probabilities(model, x):
    return to_numpy(model(x, training=False)["probability"])


# --------------------------------------------------------------------------- config


def test_config_defaults_are_the_papers():
    m = CainModelConfig()
    assert (m.kind, m.context, m.context_length, m.msia_layers, m.later_stride) == (
        "cain", "tcn", 7, 4, 4)
    assert (m.major_attention, m.peg_layers, m.peg_aggregation) == ("lap", "all", "replace")
    assert m.peg_layer_indices() == [0, 1, 2, 3]
    assert CainModelConfig(peg_layers="later").peg_layer_indices() == [1, 2, 3]


@pytest.mark.parametrize("model, message", [
    ({"context": "gru", "msia_layers": 2, "peg_layers": "none"}, "replaces the TCN"),
    ({"context": "none"}, "peg_layers: PEG generates TCN kernels"),
    ({"strides": [1, 4]}, "strides: needs msia_layers=4"),
    ({"lap_top_k": [8, 16]}, "lap_top_k"),
    ({"peg_layers": "later", "msia_layers": 1}, "needs msia_layers >= 2"),
    ({"lifelong_value_boundaries": [2.0, 2.0]}, "increase strictly"),
    ({"lifelong_heads": 3}, "lifelong_heads"),
    ({"context_length": -1}, "context_length"),
    ({"lifelong_length": 512}, "exceeds samples.lifelong_length=256"),
    ({"peg_inputs": ["zip"]}, r"peg_inputs: \['zip'\] are not in samples.user_features"),
    ({"tcn_layers": 2}, "tcn_layers"),
])
def test_config_refuses_impossible_values_at_load(model, message):
    raw = {"samples": {"lifelong_length": 256, "user_features": ["age"]},
           "model": {"kind": "cain", **model}}
    with pytest.raises(ConfigError, match=message):
        config_from_dict(raw, where="c.yaml")


# --------------------------------------------------------------------------- inputs


def test_value_buckets_follow_the_boundaries():
    """bucket = number of boundaries <= value (np.digitize, right-closed edges)."""
    model = make_model(lifelong_value_boundaries=[2.0, 3.0, 4.0, 5.0], peg_layers="none")
    rng = np.random.default_rng(0)
    x = make_inputs(rng)
    x["life_value"][:, -6:] = [1.0, 2.0, 2.5, 3.0, 4.99, 5.0]
    model(x)
    table = to_numpy(model.value_embedding.embeddings)
    items = to_numpy(model.item_embedding.embeddings)
    tokens, mask, _ = model.lifelong_tokens(x, None)
    tokens, mask = to_numpy(tokens), to_numpy(mask)
    ids = x["life_item_id"][:, -32:]
    buckets = np.digitize(x["life_value"][:, -32:], [2.0, 3.0, 4.0, 5.0], right=False)
    want = (items[ids] + table[buckets]) * mask[..., None]
    np.testing.assert_allclose(tokens, want, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(buckets[0, -6:], [0, 1, 1, 2, 3, 4])
    np.testing.assert_array_equal(mask, x["life_order"][:, -32:] > 0)


@pytest.mark.parametrize("overrides", [
    {},
    {"context": "none", "major_attention": "sim", "peg_layers": "none"},
    {"context": "gru", "msia_layers": 1, "peg_layers": "none", "major_attention": "twin"},
    {"context": "self_attention", "msia_layers": 1, "peg_layers": "none"},
    {"context": "gru", "msia_layers": 1, "peg_layers": "none", "major_attention": "eta"},
    {"major_attention": "sdim", "peg_layers": "none"},
])
def test_padding_and_items_beyond_the_lifelong_length_change_nothing(overrides):
    """The mask is life_order > 0 (polarity 0 is also a neutral event): what a padding
    slot holds, and anything older than the model's lifelong_length, is never read."""
    keras.utils.set_random_seed(1)
    model = make_model(**overrides)
    rng = np.random.default_rng(1)
    x = make_inputs(rng)
    base = probabilities(model, x)
    junk = {k: v.copy() for k, v in x.items()}
    pad = x["life_order"] == 0
    junk["life_item_id"] = np.where(pad, rng.integers(1, ITEMS, pad.shape), x["life_item_id"])
    junk["life_value"] = np.where(pad, 4.0, x["life_value"]).astype("float32")
    junk["life_polarity"] = np.where(pad, 1, x["life_polarity"])
    junk["life_item_id"][:, : N_S - 32] = rng.integers(1, ITEMS, (B, N_S - 32))  # too old
    junk["life_order"][:, : N_S - 32] = np.where(x["life_order"][:, : N_S - 32] > 0,
                                                  x["life_order"][:, : N_S - 32], 0)
    np.testing.assert_allclose(probabilities(model, junk), base, rtol=1e-5, atol=1e-6)
    # a real lifelong item does change the prediction of its user only
    moved = {k: v.copy() for k, v in x.items()}
    moved["life_item_id"][0, -1] = (x["life_item_id"][0, -1] % ITEMS) + 1
    after = probabilities(model, moved)
    assert abs(after[0] - base[0]) > 1e-7
    np.testing.assert_allclose(after[1:], base[1:], rtol=1e-5, atol=1e-6)


def test_a_user_without_lifelong_items_gets_a_finite_prediction():
    rng = np.random.default_rng(2)
    for major in ("lap", "sim", "eta", "sdim", "twin", "din"):
        model = make_model(major_attention=major)
        p = probabilities(model, make_inputs(rng, lengths=(0,) * B))
        assert np.isfinite(p).all(), major


# --------------------------------------------------------------------------- PEG


def test_peg_kernels_come_from_the_profile_and_differ_between_users():
    """The kernels MSIA receives are PEG's output on the profile embeddings (eq. 10-11,
    recomputed in numpy from the generator's weights), and the lifelong interest equals
    MSIA run with them; two users who differ only in profile get different interests."""
    keras.utils.set_random_seed(3)
    model = make_model(peg_layers="all")
    rng = np.random.default_rng(3)
    x = make_inputs(rng)
    x["life_item_id"][1] = x["life_item_id"][0]
    x["life_order"][1] = x["life_order"][0]
    x["life_value"][1] = x["life_value"][0]
    x["item_id"][1] = x["item_id"][0]
    x["user_age"][:2] = [2, 5]
    model(x)
    age = to_numpy(model.side_embeddings["user_age"].embeddings)[x["user_age"]]
    gender = to_numpy(model.side_embeddings["user_gender"].embeddings)[x["user_gender"]]
    profile = np.concatenate([age, gender], axis=-1)
    kernels = []
    for n, (hidden, generate) in enumerate(zip(model.peg.hidden, model.peg.generate, strict=True)):
        w1, b1 = (to_numpy(w) for w in hidden.weights)
        w2, b2 = (to_numpy(w) for w in generate.weights)
        k = (np.maximum(profile @ w1 + b1, 0) @ w2 + b2).reshape(B, *model.peg.kernel_shapes[n])
        kernels.append(k)
    assert not np.allclose(kernels[0][0], kernels[0][1])
    target = to_numpy(model.item_embedding.embeddings)[x["item_id"]]
    tokens, mask, _ = model.lifelong_tokens(x, target)
    want = to_numpy(model.msia(tokens, mask, target, [k.astype("float32") for k in kernels]))
    got = to_numpy(model.lifelong_interest(x, target)[0])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert not np.allclose(got[0], got[1], atol=1e-6)
    # replaced kernels have no global weight to train (nothing would update it)
    assert all(t.kernel is None for t in model.msia.tcn)
    summed = make_model(peg_aggregation="sum")
    summed(x)
    assert all(t.kernel is not None for t in summed.msia.tcn)


def behavioral_reference(x, n, edges):
    """Table 5's behavioural statistics of the last n lifelong events, from their
    definition (`CainModel.behavioral_statistics`), row by row."""
    rows = []
    for order, polarity, value in zip(x["life_order"], x["life_polarity"], x["life_value"],
                                      strict=True):
        real = order[-n:] > 0
        count = int(real.sum())
        pol, val = polarity[-n:][real], value[-n:][real]
        per = max(count, 1)
        row = [np.log(1 + count) / np.log(1 + n), (pol == 1).sum() / per, (pol == -1).sum() / per]
        if edges:
            buckets = [sum(v >= e for e in edges) for v in val]
            row.append(sum(buckets) / per / len(edges))
        rows.append(row)
    return np.array(rows, np.float32)


@pytest.mark.parametrize("edges", [[], [2.0, 3.0, 4.0, 5.0]])
def test_behavioral_statistics_match_their_definition(edges):
    """PEG's "behavioral" input: activity, positive and negative shares and the mean
    value bucket over the real events of the lifelong lists the model reads (the last
    `lifelong_length` of 40; a user with none gets zeros), recomputed in numpy."""
    model = make_model(lifelong_value_boundaries=edges)
    x = make_inputs(np.random.default_rng(11))
    x["life_value"][0, -3:] = [2.0, 1.999, 5.0]  # on and just below the edges
    got = to_numpy(model.behavioral_statistics(x))
    want = behavioral_reference(x, SMALL["lifelong_length"], edges)
    assert got.shape == (B, 4 if edges else 3)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(got[-1], 0.0)  # no lifelong events
    assert got[0, 0] == pytest.approx(1.0)  # 40 events fill the 32 the model reads


def check_users_0_1_get_other_kernels_and_the_model_round_trips(model, x):
    """PEG's kernels differ between users 0 and 1 (whose profiles differ only in what the
    test changed), and the model round-trips through its config."""
    kernels = to_numpy(model.peg(model.profile(x))[0])
    assert not np.allclose(kernels[0], kernels[1])
    again = CainModel.from_config(model.get_config())
    again(x)
    again.set_weights(model.get_weights())
    np.testing.assert_allclose(probabilities(again, x), probabilities(model, x), rtol=1e-6)


def test_peg_reads_the_behavioral_statistics_after_the_profile_embeddings():
    """`profile_features` with "behavioral": eq. 10's I is [age embedding ; statistics];
    two users with one profile and lifelong items but different polarities get different
    kernels (the statistics reach PEG); the model round-trips with it."""
    keras.utils.set_random_seed(5)
    cfg = {**SMALL, "lifelong_value_boundaries": [2.0, 4.0]}
    model = CainModel(VOCAB, cfg, side_features=SIDE, profile_features=["user_age", "behavioral"])
    x = make_inputs(np.random.default_rng(5))
    for name in ("life_item_id", "life_order", "life_value", "user_age", "item_id"):
        x[name][1] = x[name][0]
    x["life_polarity"][1] = np.where(x["life_order"][0] > 0, 1, 0)
    x["life_polarity"][0] = np.where(x["life_order"][0] > 0, -1, 0)
    model(x)
    age = to_numpy(model.side_embeddings["user_age"].embeddings)[x["user_age"]]
    want = np.concatenate([age, behavioral_reference(x, SMALL["lifelong_length"], [2.0, 4.0])], -1)
    np.testing.assert_allclose(to_numpy(model.profile(x)), want, rtol=1e-6, atol=1e-6)
    check_users_0_1_get_other_kernels_and_the_model_round_trips(model, x)


GENRES = 7  # item_genre vocabulary: row 0 padding, 1-6 values


def most_interacted_reference(x, n):
    """The most frequent `life_item_genre` among the real positive events of the last n
    (Table 5's "most interacted"), by counting row by row; ties to the smallest id, id 0
    (a missing value) not counted, 0 for a user with none."""
    out = []
    for order, polarity, genre in zip(x["life_order"], x["life_polarity"],
                                      x["life_item_genre"], strict=True):
        keep = (order[-n:] > 0) & (polarity[-n:] > 0) & (genre[-n:] > 0)
        counts = {}
        for g in genre[-n:][keep]:
            counts[int(g)] = counts.get(int(g), 0) + 1
        best = max(counts.values(), default=0)
        out.append(min(g for g, c in counts.items() if c == best) if counts else 0)
    return np.array(out)


def genre_model(profile=("user_age", "most_interacted"), **overrides):
    return CainModel({**VOCAB, "item_genre": GENRES}, {**SMALL, **overrides},
                     side_features=[*SIDE, "item_genre"], profile_features=list(profile),
                     lifelong_item_features=["genre"])


def genre_inputs(seed):
    rng = np.random.default_rng(seed)
    x = make_inputs(rng)
    x["item_genre"] = rng.integers(1, GENRES, B)
    x["life_item_genre"] = np.where(x["life_order"] > 0, rng.integers(0, GENRES, (B, N_S)), 0)
    return x


def test_most_interacted_is_the_modal_side_feature_of_the_positive_events():
    """PEG's "most_interacted" ids against a count by hand: only positive, real events
    among the last `lifelong_length` (32 of 40) count; a tie goes to the smaller id; a
    positive with a missing value (id 0) does not count; no positive gives 0."""
    model = genre_model()
    x = genre_inputs(3)
    n = SMALL["lifelong_length"]
    # user 0: genre 5 the most frequent positive, but only in the 8 slots the model does
    # not read (before the last 32), where it would win
    x["life_polarity"][0] = np.where(x["life_order"][0] > 0, 1, 0)
    x["life_item_genre"][0] = np.r_[np.full(8, 5), np.repeat([2, 3, 4, 6, 1, 0], [7, 5, 5, 5, 5, 5])]
    # user 1: a tie between 3 and 6 (two each), negatives of genre 1 everywhere else,
    # and positives with a missing genre (0) outnumbering both
    x["life_polarity"][1] = -1
    x["life_item_genre"][1] = 1
    x["life_polarity"][1, -7:] = 1
    x["life_item_genre"][1, -7:] = [6, 0, 3, 0, 6, 0, 3]
    x["life_polarity"][3] = -1  # user 3 (5 events): no positive
    got = [to_numpy(ids) for ids in model.most_interacted(x)]
    assert len(got) == 1 and got[0].shape == (B,)
    want = most_interacted_reference(x, n)
    np.testing.assert_array_equal(got[0], want)
    assert list(got[0][:2]) == [2, 3] and got[0][3] == 0 and got[0][-1] == 0


def test_peg_reads_the_most_interacted_values_through_the_item_feature_embedding():
    """eq. 10's I with "most_interacted" is [age embedding ; item_genre embedding of the
    modal genre]: the head's own item_genre table (no new one); two users differing only
    in the genres of their positive lifelong events get different kernels; the model
    round-trips with it."""
    keras.utils.set_random_seed(4)
    model = genre_model()
    x = genre_inputs(4)
    for name in ("life_item_id", "life_order", "life_value", "life_polarity", "user_age",
                 "item_id", "item_genre"):
        x[name][1] = x[name][0]
    x["life_polarity"][0:2] = np.where(x["life_order"][0] > 0, 1, 0)
    x["life_item_genre"][0] = np.where(x["life_order"][0] > 0, 2, 0)
    x["life_item_genre"][1] = np.where(x["life_order"][0] > 0, 5, 0)
    model(x)
    assert sum("item_genre" in w.path for w in model.weights) == 1
    age = to_numpy(model.side_embeddings["user_age"].embeddings)[x["user_age"]]
    genre = to_numpy(model.side_embeddings["item_genre"].embeddings)[
        most_interacted_reference(x, SMALL["lifelong_length"])]
    np.testing.assert_allclose(to_numpy(model.profile(x)), np.concatenate([age, genre], -1),
                               rtol=1e-6, atol=1e-6)
    check_users_0_1_get_other_kernels_and_the_model_round_trips(model, x)


def test_most_interacted_needs_the_lifelong_item_features():
    """The model refuses "most_interacted" without `lifelong_item_features`, and a
    lifelong item feature whose `item_<f>` embedding the head lacks."""
    with pytest.raises(ValueError, match="needs lifelong_item_features"):
        CainModel({**VOCAB, "item_genre": GENRES}, SMALL, side_features=[*SIDE, "item_genre"],
                  profile_features=["most_interacted"])
    with pytest.raises(ValueError, match="item_genre"):
        CainModel(VOCAB, SMALL, side_features=SIDE, profile_features=["most_interacted"],
                  lifelong_item_features=["genre"])


def test_peg_input_groups_resolve_from_the_config():
    """`peg_inputs`: "demographic" is every user feature, named once; "behavioral" is the
    statistics; unset is every user feature; a user feature named like a group is
    refused."""
    from tfnegseq.kinds.cain import profile_features

    def resolve(inputs, features=("age", "gender")):
        raw = {"samples": {"lifelong_length": 256, "user_features": list(features)},
               "model": {"kind": "cain", **({} if inputs is None else {"peg_inputs": inputs})}}
        return profile_features(config_from_dict(raw, where="c.yaml"))

    assert resolve(None) == ["user_age", "user_gender"]
    assert resolve(["demographic"]) == ["user_age", "user_gender"]
    assert resolve(["gender", "demographic", "behavioral"]) == [
        "user_gender", "user_age", "behavioral"]
    assert resolve(["behavioral", "user_id"]) == ["behavioral", "user_id"]
    with pytest.raises(ConfigError, match="name PEG input groups"):
        resolve(None, features=("age", "behavioral"))
    with pytest.raises(ConfigError, match="name PEG input groups"):
        resolve(None, features=("age", "most_interacted"))
    # "most_interacted" needs the lifelong lists of an item feature
    with pytest.raises(ConfigError, match="set samples.lifelong_item_features"):
        resolve(["most_interacted"])
    raw = {"samples": {"lifelong_length": 256, "user_features": ["age"],
                       "item_features": ["genre"], "lifelong_item_features": ["genre"]},
           "model": {"kind": "cain", "peg_inputs": ["demographic", "most_interacted"]}}
    assert profile_features(config_from_dict(raw, where="c.yaml")) == [
        "user_age", "most_interacted"]
    # a lifelong item feature must be an item feature, and needs the lifelong lists
    for samples, message in [({"item_features": [], "lifelong_item_features": ["genre"]},
                              "not in item_features"),
                             ({"lifelong_length": 0, "item_features": ["genre"],
                               "lifelong_item_features": ["genre"]}, "lifelong_length > 0")]:
        with pytest.raises(ConfigError, match=message):
            config_from_dict({"samples": samples}, where="c.yaml")


def test_peg_sum_is_one_convolution_with_the_summed_kernel():
    """Table 6 "sum": conv(x, W^PC) + conv(x, W) + b == conv(x, W^PC + W) + b, against
    the numpy convolution of eq. 5 with the summed kernel."""
    from tests.layers.test_cain import tcn_reference

    keras.utils.set_random_seed(4)
    model = make_model(peg_aggregation="sum")
    rng = np.random.default_rng(4)
    x = make_inputs(rng)
    model(x)
    target = to_numpy(model.item_embedding.embeddings)[x["item_id"]]
    tokens, mask, _ = model.lifelong_tokens(x, target)
    peg = [to_numpy(k) for k in model.peg(model.profile(x))]
    tcn = model.msia.tcn[0]
    assert tcn.activation(np.array([-1.0], "float32")) == -1.0  # linear: eq. 5 as written
    summed = peg[0] + to_numpy(tcn.kernel)[None]  # [B, 2cl+1, d, f]
    want = tcn_reference(to_numpy(tokens), to_numpy(mask), summed, to_numpy(tcn.bias),
                         tcn.context_length, tcn.stride, tcn.anchor)
    got = to_numpy(model.msia._convolve(0, tokens, mask, peg[0]))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------- loss


def test_sim_adds_its_auxiliary_cross_entropy():
    keras.utils.set_random_seed(5)
    model = make_model(context="none", major_attention="sim", peg_layers="none",
                       sim_auxiliary_weight=0.5)
    model.compile(optimizer="adam")
    rng = np.random.default_rng(5)
    x = make_inputs(rng)
    y = rng.integers(0, 2, B).astype("float32")
    out = model(x)
    logit, aux = to_numpy(out["logit"]), to_numpy(out["auxiliary_logit"])

    def bce(z):
        p = 1 / (1 + np.exp(-z.astype(np.float64)))
        return -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))

    got = float(to_numpy(model.compute_loss(x, y, out)))
    assert got == pytest.approx(bce(logit) + 0.5 * bce(aux), rel=1e-5)
    # the GSU's projections get a gradient only through the auxiliary loss
    history = model.fit(x, y, epochs=1, batch_size=B, verbose=0)
    assert np.isfinite(history.history["loss"]).all()


# --------------------------------------------------------------------------- variants


TABLE_7 = {
    "LAP": {"context": "none", "major_attention": "lap", "peg_layers": "none"},
    "SIM": {"context": "none", "major_attention": "sim", "peg_layers": "none"},
    "ETA": {"context": "none", "major_attention": "eta", "peg_layers": "none"},
    "SDIM": {"context": "none", "major_attention": "sdim", "peg_layers": "none"},
    "TWIN": {"context": "none", "major_attention": "twin", "peg_layers": "none"},
    "CAIN w/o MSIA, PEG": {"msia_layers": 1, "peg_layers": "none"},
    "CAIN w/o PEG": {"peg_layers": "none"},
    "CAIN": {},
    "CAIN, concat PEG, TAPF on lifelong": {"peg_aggregation": "concat",
                                           "lifelong_polarity": "tapf"},
    "CAIN without the short-term path": {"short_term": False},
}


# Three variants by default (the raw-attention baseline with its auxiliary loss, CAIN,
# and CAIN with every option on); the rest with `make test-slow`.
DEFAULT_VARIANTS = ("SIM", "CAIN", "CAIN, concat PEG, TAPF on lifelong")


@pytest.mark.parametrize("name", [n if n in DEFAULT_VARIANTS else
                                  pytest.param(n, marks=pytest.mark.slow) for n in TABLE_7])
def test_every_variant_trains_and_round_trips(name, tmp_path):
    keras.utils.set_random_seed(6)
    model = make_model(**TABLE_7[name])
    model.compile(optimizer="adam")
    rng = np.random.default_rng(6)
    x = make_inputs(rng)
    y = rng.integers(0, 2, B).astype("float32")
    history = model.fit(x, y, epochs=2, batch_size=3, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(probabilities(loaded, x), probabilities(model, x),
                               rtol=1e-5, atol=1e-6)
    assert loaded.m == model.m


def test_short_term_path_is_absent_when_switched_off():
    model = make_model(short_term=False)
    assert model.sequence is None and model.backbone is None and model.pbe is None
    x = make_inputs(np.random.default_rng(7))
    for name in ("pos_item_id", "pos_order", "neg_item_id", "neg_order"):
        x.pop(name)
    assert probabilities(model, x).shape == (B,)


def test_model_refuses_peg_without_profile():
    with pytest.raises(ValueError, match="profile_features"):
        CainModel(VOCAB, {**SMALL}, side_features=SIDE, profile_features=[])
    with pytest.raises(ValueError, match="not among side_features"):
        CainModel(VOCAB, {**SMALL}, side_features=SIDE, profile_features=["user_zip"])


def test_config_round_trips_through_the_model():
    cfg = dataclasses.asdict(CainModelConfig(**{**SMALL, "major_attention": "eta"}))
    model = CainModel(VOCAB, cfg, side_features=SIDE, profile_features=["user_age"])
    assert model.get_config()["model"]["major_attention"] == "eta"
    assert model.get_config()["profile_features"] == ["user_age"]


@pytest.mark.parametrize("context, msia_layers", [("none", 1), ("gru", 1), ("tcn", 2)])
@pytest.mark.parametrize("major", ["eta", "sdim"])
def test_hash_retrieval_compares_the_item_embeddings_alone_with_the_target(
        major, context, msia_layers, monkeypatch):
    """ETA and SDIM hash the lifelong items to compare them with the target item, which
    carries no engagement value: the keys they hash are the item embeddings alone
    (zero at padding), whatever the value embedding adds to the tokens and whether the
    attention reads raw items, a GRU's outputs or MSIA's first layer (its centres)."""
    keras.utils.set_random_seed(7)
    model = make_model(context=context, msia_layers=msia_layers, major_attention=major,
                       peg_layers="none", lifelong_value_boundaries=[2.0, 4.0])
    rng = np.random.default_rng(7)
    x = make_inputs(rng)
    model(x)
    attention = model.msia.major if model.msia is not None else model.major
    seen = []
    real_call = attention.call

    def spy(sequence, target, mask, retrieval_keys=None):
        seen.append(None if retrieval_keys is None else to_numpy(retrieval_keys))
        return real_call(sequence, target, mask, retrieval_keys=retrieval_keys)

    monkeypatch.setattr(attention, "call", spy)
    model(x)
    table = to_numpy(model.item_embedding.embeddings)
    items = x["life_item_id"][:, -SMALL["lifelong_length"]:]
    want = table[items] * (x["life_order"][:, -SMALL["lifelong_length"]:] > 0)[..., None]
    if model.msia is not None:
        tcn = model.msia.tcn[0]
        want = want[:, tcn.offset(want.shape[1])::tcn.stride]
    assert seen and seen[-1] is not None
    np.testing.assert_allclose(seen[-1], want, rtol=1e-6, atol=1e-6)


def check_most_interacted_jit():
    """`most_interacted` under `jax.jit` (the ids' count is a scatter-add), against the
    count by hand; run in a JAX process by `tests/layers/test_cain.py::test_tcn_under_jax`."""
    import jax

    model = genre_model()
    x = {k: np.asarray(v) for k, v in genre_inputs(8).items()}
    model(x)
    got = jax.jit(lambda inputs: model.most_interacted(inputs)[0])(x)
    np.testing.assert_array_equal(np.asarray(got),
                                  most_interacted_reference(x, SMALL["lifelong_length"]))
