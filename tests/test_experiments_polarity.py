"""The mixed-polarity studies (`tfnegseq.experiments.polarity`) and the one entry point
`python -m tfnegseq.experiments NAME`: settings load as the configs they name, lengths
the samples cannot hold are skipped, a tiny sweep writes its report with slopes, and
user mistakes get one line."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import REPO
from tfnegseq.config import load_config
from tfnegseq.experiments import __main__ as entry
from tfnegseq.experiments import polarity

CONFIG = REPO / "configs" / "movielens_100k.yaml"


def test_tapf_ablation_switches_one_component_each():
    cfgs = {s: load_config(CONFIG, o).model for s, o in polarity.STUDIES["tapf-ablation"].items()}
    full = cfgs["full TAPF"]
    assert (full.polarity, full.positive_ratio, full.tapf_position) == ("tapf", 0.5, "input")
    for name, key in polarity.ABLATIONS.items():
        changed = {k for k in vars(full) if getattr(cfgs[name], k) != getattr(full, k)}
        assert changed == {key} and getattr(cfgs[name], key) is False


def test_ratio_and_length_settings():
    ratios = [load_config(CONFIG, o).model.positive_ratio
              for o in polarity.STUDIES["ratio-sweep"].values()]
    np.testing.assert_allclose(ratios, np.linspace(0, 1, 11))
    m = load_config(CONFIG, polarity.STUDIES["length-scaling"]["Mix Seq + TAPF L=200"]).model
    assert (m.sequence_length, m.positive_ratio, m.polarity) == (200, 0.5, "tapf")
    c = load_config(CONFIG, polarity.STUDIES["construction"]["grouped"]).model
    assert c.mode == "grouped"
    d = load_config(CONFIG, polarity.STUDIES["construction"]["dual-stream"]).model
    assert (d.mode, d.positive_ratio, d.polarity) == ("dual", 0.5, "tapf")
    a = {s: load_config(CONFIG, o).model for s, o in polarity.STUDIES["analyses"].items()}
    assert [(m.positive_ratio, m.polarity) for m in a.values()] == [
        (1.0, "none"), (0.5, "pbe"), (0.5, "tapf")]


def test_entry_point_refuses_an_unknown_experiment_with_one_line(capsys):
    assert entry.main(["table9"]) == 2
    err = capsys.readouterr().err
    assert "NAME is one of main, tapf-ablation" in err and "'table9'" in err


@pytest.mark.parametrize("argv, message", [
    (["--backbones", "din,longer"], "unknown backbone(s) ['longer']"),
    (["--settings", "r=2.0"], "unknown setting(s) ['r=2.0']"),
    (["--seeds", "x"], "--seeds"),
])
def test_cli_mistakes_get_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        entry.main(["ratio-sweep", "--config", str(CONFIG), *argv])
    assert e.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.slow  # four tiny trainings: about a minute and a half
def test_a_tiny_length_sweep_skips_what_the_data_cannot_hold(tiny_samples, tmp_path, capsys):
    cfg, sets, _ = tiny_samples  # samples.max_history = 20
    results = tmp_path / "results"
    argv = ["length-scaling", "--config", str(REPO / "configs" / "synthetic.yaml"),
            "--seeds", "0", "--backbones", "din", "--results-dir", str(results),
            "--runs-dir", str(tmp_path / "runs"),
            "--settings", "Pos Seq L=10,Mix Seq + TAPF L=10,Pos Seq L=20,Mix Seq + TAPF L=20,"
                          "Pos Seq L=50",
            *[x for s in [*sets, "train.epochs=1"] for x in ("--set", s)]]
    assert entry.main(argv) == 0
    out = capsys.readouterr().out
    assert "skipped length-scaling / din / Pos Seq L=50" in out and "[4/4]" in out
    data = json.loads((results / f"polarity_{cfg.name}.json").read_text())
    assert sorted(r["setting"] for r in data["records"]) == [
        "Mix Seq + TAPF L=10", "Mix Seq + TAPF L=20", "Pos Seq L=10", "Pos Seq L=20"]
    assert all(r["backbone"] == "din" and len(r["config_sha"]) == 12 for r in data["records"])
    md = (results / f"polarity_{cfg.name}.md").read_text()
    assert "## length-scaling, din" in md and "Slope of mean AUC per decade of L" in md
    # the slope in the report is the least-squares slope of the recorded AUCs
    auc = {r["setting"]: r["auc"] for r in data["records"]}
    want = (auc["Pos Seq L=20"] - auc["Pos Seq L=10"]) / np.log10(2)
    assert f"Pos Seq {want:+.4f} (2 lengths)" in md
    assert (results / f"polarity_{cfg.name}.png").stat().st_size > 10_000


def test_options_added_later_keep_the_committed_records_fingerprints(monkeypatch):
    """A config key added after records carried fingerprints (`records.LATER_KEYS`)
    leaves the hash of a config at its default unchanged: the revision-1 Table 2 record
    of OneTrans Pos Seq (config_sha d70f082777e2, written before `polarity_labels` and
    `samples.negative_history` existed) still matches its config at code revision 1; a
    non-default value changes the hash, and so does the current code revision (its
    records are not current any more)."""
    from tfnegseq.experiments import records, table2

    committed = json.loads(
        (REPO / "docs" / "results" / "rev1" / "table2_movielens_100k.json").read_text())
    sha = {(r["backbone"], r["setting"]): r.get("config_sha") for r in committed["records"]}
    assert sha[("onetrans", "Pos Seq")] == "d70f082777e2"
    overrides = [*table2.SETTINGS["Pos Seq"], "model.backbone=onetrans",
                 *table2.BACKBONE_OVERRIDES["onetrans"]]
    assert records.CODE_REVISION["ctr"] >= 2
    assert records.fingerprint(load_config(CONFIG, overrides)) != "d70f082777e2"
    monkeypatch.setitem(records.CODE_REVISION, "ctr", 1)
    assert records.fingerprint(load_config(CONFIG, overrides)) == "d70f082777e2"
    for later in ("model.polarity_labels=random", "samples.negative_history=random"):
        assert records.fingerprint(load_config(CONFIG, [*overrides, later])) != "d70f082777e2"


@pytest.mark.slow  # five tiny trainings and two Beam builds: about two minutes
def test_a_tiny_negative_ablation_builds_its_own_samples(tiny_samples, tmp_path, capsys):
    cfg, sets, root = tiny_samples
    results = tmp_path / "results"
    argv = ["negative-ablation", "--config", str(REPO / "configs" / "synthetic.yaml"),
            "--seeds", "0", "--results-dir", str(results), "--runs-dir", str(tmp_path / "runs"),
            *[x for s in [*sets, "train.epochs=1"] for x in ("--set", s)]]
    assert entry.main(argv) == 0
    out = capsys.readouterr().out
    for suffix in ("_neg_catalogue", "_neg_random"):
        assert f"building this setting's samples in {root}/samples{suffix}" in out
        with open(f"{root}/samples{suffix}/manifest.json") as f:
            manifest = json.load(f)
        assert manifest["config"]["samples"]["negative_history"] == (
            "catalogue" if suffix == "_neg_catalogue" else "random")
    data = json.loads((results / f"polarity_{cfg.name}.json").read_text())
    assert sorted(r["setting"] for r in data["records"]) == sorted(
        polarity.STUDIES["negative-ablation"])
    assert {r["backbone"] for r in data["records"]} == {"din"}
    md = (results / f"polarity_{cfg.name}.md").read_text()
    assert "## negative-ablation, din" in md and "| random polarity |" in md


@pytest.mark.slow  # three tiny trainings: about a minute
def test_a_tiny_construction_study_runs_the_dual_stream_encoder(tiny_samples, tmp_path):
    cfg, sets, _ = tiny_samples
    results = tmp_path / "results"
    argv = ["construction", "--config", str(REPO / "configs" / "synthetic.yaml"),
            "--seeds", "0", "--backbones", "din", "--results-dir", str(results),
            "--runs-dir", str(tmp_path / "runs"),
            *[x for s in [*sets, "train.epochs=1"] for x in ("--set", s)]]
    assert entry.main(argv) == 0
    data = json.loads((results / f"polarity_{cfg.name}.json").read_text())
    assert sorted(r["setting"] for r in data["records"]) == ["dual-stream", "grouped",
                                                              "interleaved"]
    dual = next(r for r in data["records"] if r["setting"] == "dual-stream")
    assert dual["analysis"]["attention"] is None  # no one attention over both polarities
    assert 0.0 <= dual["auc"] <= 1.0


def test_length_scaling_slopes_use_the_lengths_both_series_ran():
    """Pos Seq ran L = 10, 100; Mix Seq + TAPF also 1000: both slopes are fitted over
    10 and 100 only (hand-worked: +0.01 and +0.03 per decade, ratio 3), not Mix Seq's
    over 10-1000."""
    from tfnegseq.experiments.polarity import shared_fit

    fitted = shared_fit({"Pos Seq": {10: 0.70, 100: 0.71},
                         "Mix Seq + TAPF": {10: 0.70, 100: 0.73, 1000: 0.50}})
    assert fitted["Pos Seq"] == (pytest.approx(0.01), 2)
    assert fitted["Mix Seq + TAPF"] == (pytest.approx(0.03), 2)
    assert shared_fit({"Pos Seq": {10: 0.7}, "Mix Seq + TAPF": {10: 0.7, 100: 0.8}}) == {}
