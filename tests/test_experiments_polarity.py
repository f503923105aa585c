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
    both = cfgs["w/o target interaction & gating"]  # Table 3's last two rows
    assert {k for k in vars(full) if getattr(both, k) != getattr(full, k)} == {
        "tapf_target_interaction", "tapf_gating"}
    pb = cfgs["PB only"]
    assert (pb.polarity, pb.positive_ratio) == ("pbe", 0.5)


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


def test_endpoint_gains_reproduce_the_papers_table4_ratios_for_din():
    """The paper's DIN row of Table 4 (KuaiRec): Δ10→100 +0.0099 vs +0.0195 (ratio
    1.97x), Δ10→500 +0.0102 vs +0.0219 (2.15x); a least-squares fit of the same numbers
    gives another ratio, so the report's primary slope is the endpoint gain. A length
    only one series ran is not used."""
    from tfnegseq.experiments.polarity import endpoint_gains

    lengths = (10, 20, 50, 100, 200, 300, 500)
    pos = dict(zip(lengths, (.8263, .8306, .8351, .8362, .8374, .8366, .8365), strict=True))
    mix = dict(zip(lengths, (.8516, .8614, .8688, .8711, .8733, .8743, .8735), strict=True))
    gains = endpoint_gains({"Pos Seq": pos, "Mix Seq + TAPF": {**mix, 1000: 0.5}})
    assert sorted(gains) == [100, 500]
    assert gains[100]["Pos Seq"] == pytest.approx(0.0099)
    assert gains[100]["Mix Seq + TAPF"] == pytest.approx(0.0195)
    assert gains[500]["Mix Seq + TAPF"] / gains[500]["Pos Seq"] == pytest.approx(2.15, abs=0.005)
    assert gains[100]["Mix Seq + TAPF"] / gains[100]["Pos Seq"] == pytest.approx(1.97, abs=0.005)
    assert endpoint_gains({"Pos Seq": {10: .7, 100: .71},
                           "Mix Seq + TAPF": {10: .7, 100: .73}}) == {
        100: {"Pos Seq": pytest.approx(0.01), "Mix Seq + TAPF": pytest.approx(0.03)}}


def test_the_full_history_subset_fit_stops_at_its_cutoff():
    """Table 5's subset (positive history >= 100) fills Pos Seq only up to L = 100; the
    points beyond the cutoff, where it pads again, are left out of its slopes."""
    def rec(setting, auc):
        return {"study": "length-scaling", "backbone": "din", "setting": setting, "seed": 0,
                "analysis": {"full_history": {"100": {"auc": auc, "n": 5}}}}

    data = {"records": [rec(f"{name} L={length}", auc)
                        for name, aucs in (("Pos Seq", (.70, .71, .60)),
                                           ("Mix Seq + TAPF", (.70, .73, .90)))
                        for length, auc in zip((10, 100, 200), aucs, strict=True)]}
    points = polarity.full_history_points(data, "din", "100")
    assert points == {"Pos Seq": {10: .70, 100: .71}, "Mix Seq + TAPF": {10: .70, 100: .73}}
    fitted = polarity.full_history_slopes(data, "din", "100")
    assert fitted["Pos Seq"] == (pytest.approx(0.01), 2)  # per decade, over 10 and 100
    assert fitted["Mix Seq + TAPF"] == (pytest.approx(0.03), 2)


def test_a_length_only_one_series_can_run_is_not_run():
    """At max_history 100, Pos Seq L = 200 does not load but Mix Seq + TAPF L = 200 (100
    positive slots) does; no slope would use it, so the sweep leaves it out."""
    from tfnegseq.experiments.studies import incomplete

    loadable = {("length-scaling", "din", s): "sha" for s in polarity.STUDIES["length-scaling"]
                if not s.endswith(("L=300", "L=500")) and s != "Pos Seq L=200"}
    assert incomplete(polarity.SPEC, loadable) == [
        ("length-scaling", "din", "Mix Seq + TAPF L=200")]


def test_records_of_settings_the_config_cannot_load_are_set_aside(tmp_path, capsys):
    """A length-scaling record of L = 500 (samples with max_history 500) in the results
    of a sweep whose config holds 100 is not this sweep's run: it moves to
    `discarded_records` instead of being reported beside the new runs."""
    results = tmp_path / "results"
    results.mkdir()
    path = results / "polarity_movielens_100k.json"
    row = {"study": "length-scaling", "backbone": "din", "seed": 0, "auc": 0.7,
           "gauc": 0.6, "logloss": 0.5, "config_sha": "0123456789ab"}
    path.write_text(json.dumps({"records": [{**row, "setting": "Pos Seq L=500"}]}))
    assert entry.main(["length-scaling", "--config", str(CONFIG), "--backbones", "din",
                       "--results-dir", str(results), "--report-only"]) == 0
    data = json.loads(path.read_text())
    assert data["records"] == []
    assert [r["setting"] for r in data["discarded_records"]] == ["Pos Seq L=500"]
    assert "skipped length-scaling / din / Mix Seq + TAPF L=200" in capsys.readouterr().out


def test_a_sweep_stops_when_its_config_changes_under_it(tmp_path, monkeypatch):
    """The fingerprint recorded with a run is the config that run trains: if the YAML
    changes after the sweep computed its fingerprints, the run is refused before it
    trains, instead of being recorded under the older config's hash."""
    from tfnegseq.experiments import records, studies

    edited = {"now": False}
    real_load, real_describe = studies.load_config, records.describe

    def load(path, overrides=()):
        return real_load(path, [*overrides, *(["model.embedding_dim=8"] if edited["now"]
                                                else [])])

    def describe(*args, **kwargs):  # called after the fingerprints, before the first run
        real_describe(*args, **kwargs)
        edited["now"] = True

    monkeypatch.setattr(studies, "load_config", load)
    monkeypatch.setattr(records, "describe", describe)
    monkeypatch.setattr(records, "run_ctr", lambda *a, **k: pytest.fail("trained"))
    with pytest.raises(SystemExit, match="the config differs from the one this sweep"):
        entry.main(["ratio-sweep", "--config", str(CONFIG), "--settings", "r=0.5",
                    "--seeds", "0", "--results-dir", str(tmp_path), "--runs-dir",
                    str(tmp_path / "runs")])


def test_reanalyse_skips_a_run_directory_holding_another_configs_model(tmp_path, capsys):
    """`--reanalyse` recomputes a record's analyses only from the model its own config
    trained: a directory reused by a run of other overrides is left alone."""
    from tfnegseq.experiments import records, studies

    calls = []
    spec = studies.Studies(prog="p", prefix="x", kind="ctr",
                           studies={"s": {"a": []}}, reference={"s": "a"},
                           default_studies=("s",), after_run=lambda cfg: calls.append(cfg)
                           or {"analysis": {"ok": True}})

    def run_config(study, backbone, setting, seed, extra=()):
        return load_config(CONFIG, [f"train.run_dir={tmp_path / 'run'}", *extra])

    ours = run_config("s", None, "a", 0)
    sha = records.fingerprint(ours)
    data = {"records": [{"study": "s", "setting": "a", "seed": 0, "config_sha": sha}]}
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.keras").write_bytes(b"")
    other = run_config("s", None, "a", 0, ["model.embedding_dim=8"])
    (run / "metrics.json").write_text(json.dumps({"config": other.to_dict()}))
    studies.reanalyse(spec, data, str(tmp_path / "r.json"), {("s", "a"): sha}, ["s"], [0],
                      run_config)
    assert calls == [] and "analysis" not in data["records"][0]
    assert "hold a model of another config" in capsys.readouterr().out
    (run / "metrics.json").write_text(json.dumps({"config": ours.to_dict()}))
    studies.reanalyse(spec, data, str(tmp_path / "r.json"), {("s", "a"): sha}, ["s"], [0],
                      run_config)
    assert len(calls) == 1 and data["records"][0]["analysis"] == {"ok": True}


def test_study_reports_show_the_relative_change_the_attention_split_and_recorded_seeds():
    """Table 3's Δ % is relative to the reference's AUC (hand-worked: 0.79 vs 0.80 is
    -1.25 %); Table 6's a+ on clicked and unclicked rows are columns; the seeds line
    names the seeds of the records, not the last call's."""
    from tfnegseq.experiments import studies

    def rec(setting, seed, auc):
        return {"study": "tapf-ablation", "backbone": "din", "setting": setting, "seed": seed,
                "auc": auc, "gauc": 0.6, "logloss": 0.5,
                "analysis": {"attention": {"positive_share": 0.6,
                                           "positive_share_clicked": 0.65,
                                           "positive_share_not_clicked": 0.55,
                                           "positive_tokens": 0.5, "gap": 0.1,
                                           "token_gap": 0.0}}}

    data = {"records": [rec("full TAPF", 0, 0.80), rec("full TAPF", 3, 0.80),
                        rec("PB only", 0, 0.79)], "seeds": [3]}
    md = studies.markdown(polarity.SPEC, "toy", data)
    assert "Seeds: [0, 3];" in md
    line = next(x for x in md.splitlines() if x.startswith("| PB only |") and "0.7900" in x)
    assert "| -0.0100 | -1.25% |" in line
    assert "| a+ clicked | a+ unclicked |" in md
    assert any(x.startswith("| PB only |") and "| 0.650 | 0.550 |" in x
               for x in md.splitlines())
