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
    return {"label": label, "probability": prob, "user": rng.integers(0, 50, n),
            "pos_length": pos_length, "cold": cold, "share": share}


def test_subsets_are_the_rows_the_paper_names_and_their_auc_is_sklearns():
    rows = rows_table(np.random.default_rng(0))
    out = analyses.summarize_rows(rows, length=100)
    y, p = rows["label"], rows["probability"]
    full = rows["pos_length"] >= 100
    assert out["full_history"]["n"] == full.sum()
    assert out["full_history"]["auc"] == pytest.approx(roc_auc_score(y[full], p[full]))
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


def test_a_subset_with_one_class_has_no_auc_and_no_attention_is_none():
    rows = rows_table(np.random.default_rng(1), n=50)
    rows["label"][rows["cold"]] = 1.0
    rows["share"][:] = np.nan
    out = analyses.summarize_rows(rows, length=100)
    assert out["cold"]["auc"] is None and out["cold"]["n"] == rows["cold"].sum()
    assert out["attention"] is None


def test_din_attention_share_is_the_absolute_weight_mass_on_positive_tokens():
    rng = np.random.default_rng(2)
    x, _ = planted_batch(rng, 6)
    model = make_model("pbe", 0.5, "din")
    model(x)
    got = np.asarray(model.attention_share(x))
    tokens, target, polarity, mask = model.encode_sequence(x)
    _, w = model.backbone(tokens, target, mask, return_attention_scores=True)
    w, polarity = np.abs(np.asarray(w)), np.asarray(polarity)
    want = [w[b][polarity[b] == 1].sum() / w[b][polarity[b] != 0].sum() for b in range(6)]
    np.testing.assert_allclose(got, want, rtol=1e-5)


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
    assert by["Pos Seq"]["analysis"]["attention"]["positive_share"] == pytest.approx(1.0)
    assert 0 < by["Mix Seq + TAPF"]["analysis"]["attention"]["positive_share"] < 1
    md = (results / f"polarity_{cfg.name}.md").read_text()
    assert "AUC by positive history length" in md and "| 0-1 (" in md
    assert (results / f"polarity_{cfg.name}_analyses.png").stat().st_size > 10_000
