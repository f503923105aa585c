"""The §4.5 analyses and Table 5 subset (`tfnegseq.experiments.analyses`), the attention
share they read (`CtrModel.attention_share`), and the studies that record them."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from tests.conftest import REPO
from tests.models.test_ctr import make_model, planted_batch
from tfnegseq.experiments import __main__ as entry
from tfnegseq.experiments import analyses


def rows_table(rng, n=4000):
    pos_length = rng.integers(0, 120, n)
    cold = rng.random(n) < 0.2
    label = (rng.random(n) < 0.4).astype(float)
    prob = np.clip(0.3 * label + 0.1 * (pos_length > 50) + rng.random(n) * 0.6, 0, 1)
    share = np.where(rng.random(n) < 0.05, np.nan, 0.5 + 0.1 * label + 0.05 * rng.random(n))
    tokens = np.where(np.isnan(share), np.nan, 0.45 + 0.03 * label + 0.05 * rng.random(n))
    return {"label": label, "probability": prob, "user": rng.integers(0, 50, n),
            "pos_length": pos_length, "cold": cold, "share": share, "tokens": tokens}


def test_subsets_are_the_rows_the_paper_names_and_their_auc_is_sklearns():
    rows = rows_table(np.random.default_rng(0))
    out = analyses.summarize_rows(rows, max_history=100)
    y, p = rows["label"], rows["probability"]
    assert sorted(out["full_history"], key=int) == ["10", "20", "50", "100"]  # <= 100
    for cut in (10, 50, 100):
        full = rows["pos_length"] >= cut
        assert out["full_history"][str(cut)]["n"] == full.sum()
        assert out["full_history"][str(cut)]["auc"] == pytest.approx(
            roc_auc_score(y[full], p[full]))
    assert out["cold"]["auc"] == pytest.approx(roc_auc_score(y[rows["cold"]], p[rows["cold"]]))
    assert out["warm"]["n"] == (~rows["cold"]).sum()
    for (lo, hi), name in zip([(0, 2), (2, 10), (10, 40), (40, 100), (100, 10**9)],
                              ["0-1", "2-9", "10-39", "40-99", "100+"], strict=True):
        keep = (rows["pos_length"] >= lo) & (rows["pos_length"] < hi)
        assert out["activity"][name]["n"] == keep.sum()
        assert out["activity"][name]["auc"] == pytest.approx(roc_auc_score(y[keep], p[keep]))
    assert sum(b["n"] for b in out["activity"].values()) == len(y)
    share, ok = rows["share"], np.isfinite(rows["share"])
    want_gap = share[ok & (y == 1)].mean() - share[ok & (y == 0)].mean()
    assert out["attention"]["gap"] == pytest.approx(want_gap)
    assert out["attention"]["gap"] == pytest.approx(0.1, abs=0.01)  # planted above
    assert out["attention"]["rows"] == ok.sum()
    tokens = rows["tokens"]
    assert out["attention"]["positive_tokens"] == pytest.approx(tokens[ok].mean())
    assert out["attention"]["positive_tokens_clicked"] == pytest.approx(
        tokens[ok & (y == 1)].mean())
    assert out["attention"]["token_gap"] == pytest.approx(
        tokens[ok & (y == 1)].mean() - tokens[ok & (y == 0)].mean())
    assert out["attention"]["token_gap"] == pytest.approx(0.03, abs=0.01)  # planted above


def test_a_subset_with_one_class_has_no_auc_and_no_attention_is_none():
    rows = rows_table(np.random.default_rng(1), n=50)
    rows["label"][rows["cold"]] = 1.0
    rows["share"][:] = np.nan
    out = analyses.summarize_rows(rows, max_history=100)
    assert out["cold"]["auc"] is None and out["cold"]["n"] == rows["cold"].sum()
    assert out["attention"] is None


def test_a_sequence_of_one_polarity_has_no_attention_fields():
    rows = rows_table(np.random.default_rng(6))
    assert analyses.summarize_rows(rows, 100)["attention"] is not None
    assert analyses.summarize_rows(rows, 100, both_polarities=False)["attention"] is None


def test_a_subset_where_no_user_has_both_classes_has_no_gauc():
    rows = {"label": np.array([1.0, 0.0, 1.0, 0.0]), "probability": np.array([.9, .1, .8, .2]),
            "user": np.arange(4), "pos_length": np.full(4, 5), "cold": np.zeros(4, bool),
            "share": np.full(4, np.nan)}
    out = analyses.summarize_rows(rows, max_history=10)
    assert out["all"]["auc"] == 1.0 and out["all"]["gauc"] is None


class FakeModel:
    """Scores = item row / 100; attention share = 0.25 and positive tokens 0.4 on every
    row."""

    has_attention_share = True

    def __call__(self, inputs):
        return {"probability": inputs["item_id"] / 100.0}

    def attention_share(self, inputs, return_token_share=False):
        share = np.full(len(inputs["item_id"]), 0.25)
        return (share, np.full_like(share, 0.4)) if return_token_share else share


def test_collect_rows_reads_cold_items_history_lengths_and_users_from_the_input():
    """Item rows 1..oov_buckets are out of vocabulary (cold), 0 never a target; the
    positive history length counts the non-padding (row > 0) entries; the raw ids never
    reach the model."""
    import tensorflow as tf

    oov = 3
    item = np.array([1, 3, 4, 50, 2, 9], np.int64)  # rows 1..3 cold
    pos = np.array([[0, 0, 7], [0, 5, 1], [9, 9, 9], [0, 0, 0], [4, 0, 2], [1, 1, 0]],
                   np.int64)
    label = np.array([1, 0, 1, 0, 1, 0], np.float32)
    features = {"item_id": item, "pos_item_id": pos, "raw_user_id": np.arange(100, 106),
                "raw_item_id": item * 11}
    ds = tf.data.Dataset.from_tensor_slices((features, label)).batch(4)
    seen = []

    class Model(FakeModel):
        def __call__(self, inputs):
            seen.append(sorted(inputs))
            return super().__call__(inputs)

    rows = analyses.collect_rows(Model(), ds, oov)
    np.testing.assert_array_equal(rows["cold"], [True, True, False, False, True, False])
    np.testing.assert_array_equal(rows["pos_length"], [1, 2, 3, 0, 2, 2])
    np.testing.assert_array_equal(rows["user"], np.arange(100, 106))
    np.testing.assert_allclose(rows["probability"], item / 100.0)
    np.testing.assert_allclose(rows["share"], 0.25)
    np.testing.assert_allclose(rows["tokens"], 0.4)
    assert all("raw_user_id" not in k and "raw_item_id" not in k for k in seen)


def interleaved(x, b, length):
    """Row b's mixed sequence at r = 0.5 built here: the 5 most recent positives and
    negatives, merged by order, left-padded -> (items, polarity)."""
    k = length // 2
    events = []
    for name, sign in (("pos", 1), ("neg", -1)):
        real = [(o, i) for i, o in zip(x[f"{name}_item_id"][b], x[f"{name}_order"][b],
                                       strict=True) if i > 0]
        events += [(o, i, sign) for o, i in sorted(real)[-k:]]
    events.sort()
    pad = length - len(events)
    return (np.array([0] * pad + [i for _, i, _ in events]),
            np.array([0] * pad + [s for _, _, s in events]))


def test_din_attention_share_is_the_absolute_weight_mass_on_positive_tokens():
    """DIN (no polarity encoding): tokens looked up here from the sequence built here,
    the DIN layer's weights, |w| on the positive tokens over |w| on all real ones."""
    rng = np.random.default_rng(2)
    x, _ = planted_batch(rng, 6)
    model = make_model("none", 0.5, "din")
    model(x)
    got, got_tokens = (np.asarray(v) for v in model.attention_share(x, True))
    np.testing.assert_allclose(got, np.asarray(model.attention_share(x)), rtol=1e-6)
    table = np.asarray(model.item_embedding.embeddings)
    position = np.asarray(model.position_embedding.embeddings)
    for b in range(6):
        ids, polarity = interleaved(x, b, 10)
        tokens = (table[ids] + position)[None]
        _, w = model.backbone(tokens, table[x["item_id"][b:b + 1]], (ids > 0)[None],
                              return_attention_scores=True)
        w = np.abs(np.asarray(w))[0]
        assert got[b] == pytest.approx(w[polarity == 1].sum() / w[polarity != 0].sum(),
                                       rel=1e-5)
        assert got_tokens[b] == pytest.approx((polarity == 1).sum() / (polarity != 0).sum())


def test_onetrans_attention_share_reads_the_tokens_entering_its_last_layer():
    """With the pyramid (4 layers over 10 tokens down to 2 NS tokens: schedule
    [10, 7, 5, 0], so the last layer's behaviour keys are the 5 most recent tokens) and
    the 5 negatives older than the 5 positives, the last layer attends to positives
    only: share 1. Without the pyramid it also attends to the negatives."""
    import dataclasses

    from tfnegseq.kinds.ctr.config import CtrModelConfig
    from tfnegseq.models.ctr import CtrModel

    h = 10
    x = {"user_id": np.ones(3, np.int64), "item_id": np.array([3, 4, 5]),
         "pos_item_id": np.tile(np.arange(1, h + 1), (3, 1)),
         "pos_order": np.tile(np.arange(101, 101 + h), (3, 1)),
         "neg_item_id": np.tile(np.arange(11, 11 + h), (3, 1)),
         "neg_order": np.tile(np.arange(1, h + 1), (3, 1))}
    for pyramid, want_one in ((True, True), (False, False)):
        m = dataclasses.asdict(CtrModelConfig(
            backbone="onetrans", polarity="pbe", sequence_length=10, embedding_dim=16,
            num_heads=2, num_layers=4, ns_tokens=2, pyramid=pyramid, mlp_units=[8],
            attention_units=[8]))
        model = CtrModel({"item_id": 30, "user_id": 2}, m)
        share, tokens = (np.asarray(v) for v in model.attention_share(x, True))
        if want_one:
            assert model.backbone.schedule == [10, 7, 5, 0]
            np.testing.assert_allclose(share, 1.0, rtol=1e-6)
            np.testing.assert_allclose(tokens, 1.0)  # the 2 entering tokens: positives
        else:
            assert (share < 0.99).all() and (share > 0.01).all()
            np.testing.assert_allclose(tokens, 0.5)  # 5 positives, 5 negatives


@pytest.mark.parametrize("backbone", ["din", "onetrans"])
def test_attention_share_is_one_without_negatives_and_zero_without_positives(backbone):
    rng = np.random.default_rng(3)
    x, _ = planted_batch(rng, 4)
    model = make_model("tapf", 0.5, backbone)
    only_pos = {**x, "neg_item_id": np.zeros_like(x["neg_item_id"])}
    only_neg = {**x, "pos_item_id": np.zeros_like(x["pos_item_id"])}
    np.testing.assert_allclose(np.asarray(model.attention_share(only_pos)), 1.0, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(model.attention_share(only_neg)), 0.0, atol=1e-7)
    mixed = np.asarray(model.attention_share(x))
    assert ((mixed > 0) & (mixed < 1)).all()


def test_attention_share_refuses_a_backbone_without_one_attention():
    model = make_model("pbe", 0.5, "hyformer")
    x, _ = planted_batch(np.random.default_rng(4), 2)
    with pytest.raises(ValueError, match="attention_share: defined for DIN, OneTrans"):
        model.attention_share(x)


@pytest.mark.slow  # two tiny trainings and their analyses: about a minute
def test_a_tiny_analyses_study_records_and_plots_the_analyses(tiny_samples, tmp_path, capsys):
    cfg, sets, _ = tiny_samples
    results = tmp_path / "results"
    argv = ["analyses", "--config", str(REPO / "configs" / "synthetic.yaml"), "--seeds", "0",
            "--backbones", "din", "--settings", "Pos Seq,Mix Seq + TAPF",
            "--results-dir", str(results), "--runs-dir", str(tmp_path / "runs"),
            *[x for s in [*sets, "train.epochs=1"] for x in ("--set", s)]]
    assert entry.main(argv) == 0
    data = json.loads((results / f"polarity_{cfg.name}.json").read_text())
    by = {r["setting"]: r for r in data["records"]}
    assert set(by) == {"Pos Seq", "Mix Seq + TAPF"}
    for r in by.values():  # the analysis pass scores what the run's evaluation scored
        assert r["analysis"]["all"]["auc"] == pytest.approx(r["auc"], abs=1e-6)
        assert r["analysis"]["all"]["n"] == r["eval_examples"]
    assert by["Pos Seq"]["analysis"]["attention"] is None  # one polarity: no split
    attention = by["Mix Seq + TAPF"]["analysis"]["attention"]
    assert 0 < attention["positive_share"] < 1 and 0 < attention["positive_tokens"] < 1
    md = (results / f"polarity_{cfg.name}.md").read_text()
    assert "AUC by positive history length" in md and "| 0-1 (" in md
    assert "| a+ | a+ clicked | a+ unclicked | tokens+ | gap | token gap |" in md
    # Table 6's a+ on clicked and on unclicked rows: both real shares in the TAPF row
    table = md.split("| a+ | a+ clicked | a+ unclicked |", 1)[1].splitlines()
    row = next(line for line in table if line.startswith("| Mix Seq + TAPF | "))
    clicked, unclicked = (float(c) for c in row.split(" | ")[4:6])
    assert 0 < clicked < 1 and 0 < unclicked < 1
    assert clicked == pytest.approx(attention["positive_share_clicked"], abs=5e-4)
    assert (results / f"polarity_{cfg.name}_analyses.png").stat().st_size > 10_000

    # --reanalyse: recomputed from the saved models; a run without its model is left alone
    before = json.loads(json.dumps(by["Mix Seq + TAPF"]["analysis"]))
    for r in data["records"]:
        r["analysis"] = {"stale": True}
    (results / f"polarity_{cfg.name}.json").write_text(json.dumps(data))
    import shutil
    shutil.rmtree(next((tmp_path / "runs").glob("*/analyses_din_pos_seq_seed0")))
    # in a fresh process (nothing trained there: the saved models' classes must register)
    import subprocess
    import sys
    done = subprocess.run([sys.executable, "-m", "tfnegseq.experiments", *argv, "--reanalyse"],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "1 of 2 recorded runs have no saved model" in done.stdout
    again = {r["setting"]: r for r in json.loads(
        (results / f"polarity_{cfg.name}.json").read_text())["records"]}
    assert again["Pos Seq"]["analysis"] == {"stale": True}
    assert again["Mix Seq + TAPF"]["analysis"] == before
    assert len(again) == 2 and again["Mix Seq + TAPF"]["auc"] == by["Mix Seq + TAPF"]["auc"]
