"""The Table 2 sweep (`tfnegseq.experiments.table2`): every setting of every backbone loads,
a tiny sweep writes its JSON / markdown / plot with each run's config hash and seed,
resumes without rerunning, and moves runs of a changed config aside instead of mixing
them into the table."""

from __future__ import annotations

import json

import pytest

from tests.conftest import REPO
from tfnegseq.config import load_config
from tfnegseq.experiments import table2

CONFIG = REPO / "configs" / "movielens_100k.yaml"


@pytest.mark.parametrize("backbone", table2.BACKBONES)
def test_every_setting_of_every_backbone_is_a_valid_config(backbone):
    for setting, overrides in table2.SETTINGS.items():
        cfg = load_config(CONFIG, [*overrides, f"model.backbone={backbone}",
                                   *table2.BACKBONE_OVERRIDES.get(backbone, [])])
        assert cfg.model.backbone == backbone, setting
    ratio = {s: load_config(CONFIG, o).model.positive_ratio for s, o in table2.SETTINGS.items()}
    assert ratio["Pos Seq"] == 1.0 and ratio["Mix Seq + TAPF"] == 0.5


def test_unknown_backbone_is_refused_with_one_line(capsys):
    with pytest.raises(SystemExit) as e:
        table2.main(["--config", str(CONFIG), "--backbones", "din,longer", "--report-only"])
    assert e.value.code == 2 and "unknown backbone(s) ['longer']" in capsys.readouterr().err


@pytest.mark.slow  # six tiny trainings: about two minutes
def test_a_tiny_sweep_writes_results_resumes_and_keeps_configs_apart(tiny_samples, tmp_path,
                                                                      capsys):
    cfg, sets, _ = tiny_samples
    results, runs = tmp_path / "results", tmp_path / "runs"
    argv = ["--config", str(REPO / "configs" / "synthetic.yaml"), "--seeds", "0",
            "--backbones", "din,onetrans", "--settings", "Pos Seq,Mix Seq + TAPF",
            "--results-dir", str(results), "--runs-dir", str(runs),
            *[x for s in [*sets, "train.epochs=1"] for x in ("--set", s)]]
    assert table2.main(argv) == 0
    path = results / f"table2_{cfg.name}.json"
    data = json.loads(path.read_text())
    keys = sorted((r["backbone"], r["setting"], r["seed"]) for r in data["records"])
    assert keys == [("din", "Mix Seq + TAPF", 0), ("din", "Pos Seq", 0),
                    ("onetrans", "Mix Seq + TAPF", 0), ("onetrans", "Pos Seq", 0)]
    for r in data["records"]:
        assert 0.0 <= r["auc"] <= 1.0 and r["logloss"] > 0 and len(r["config_sha"]) == 12
    shas = {(r["backbone"], r["setting"]): r["config_sha"] for r in data["records"]}
    assert len(set(shas.values())) == 4  # each (backbone, setting) its own config
    md = (results / f"table2_{cfg.name}.md").read_text()
    assert "| onetrans | Mix Seq + TAPF |" in md and "| din | Pos Seq |" in md
    assert (results / f"table2_{cfg.name}.png").stat().st_size > 10_000
    out = capsys.readouterr().out
    assert "[4/4]" in out

    # resume: nothing left to run
    assert table2.main(argv) == 0
    assert "[1/" not in capsys.readouterr().out
    assert len(json.loads(path.read_text())["records"]) == 4

    # another config (embedding_dim), run for DIN only: every old run is of another
    # config now (the override applies to the whole sweep), so all four move aside and
    # the table holds only the two new DIN runs
    argv_changed = [*argv, "--set", "model.embedding_dim=8", "--backbones", "din"]
    assert table2.main(argv_changed) == 0
    out = capsys.readouterr().out
    assert "4 record(s) of another config moved to discarded_records" in out
    data = json.loads(path.read_text())
    assert len(data["discarded_records"]) == 4
    assert {r["discarded"] for r in data["discarded_records"]} == {"config changed"}
    assert sorted((r["backbone"], r["setting"]) for r in data["records"]) == [
        ("din", "Mix Seq + TAPF"), ("din", "Pos Seq")]
    assert all(r["config_sha"] != shas[("din", r["setting"])] for r in data["records"])
    assert "| onetrans |" not in (results / f"table2_{cfg.name}.md").read_text()


@pytest.mark.parametrize("experiment", ["main", "ratio-sweep", "overall"])
def test_every_ctr_and_cain_sweep_run_reads_its_batches_in_a_fixed_order(experiment, tmp_path,
                                                                       monkeypatch):
    """Sweeps of the CTR and CAIN studies train with `train.deterministic_input` (a
    seed's rerun repeats instead of moving by up to 0.009 AUC); the config does not."""
    from tfnegseq.experiments import __main__ as entry
    from tfnegseq.experiments import records

    config = {"main": CONFIG, "ratio-sweep": CONFIG,
              "overall": REPO / "configs" / "movielens_100k_cain.yaml"}[experiment]
    assert load_config(config).train.deterministic_input is False
    seen = []

    def fake_run(path, data, cfg, **fields):
        seen.append(cfg.train.deterministic_input)
        raise SystemExit(0)  # before any training

    monkeypatch.setattr(records, "run_ctr", fake_run)
    extra = {"main": ["--backbones", "din", "--settings", "Pos Seq"],
             "ratio-sweep": ["--settings", "r=0.5"],
             "overall": ["--study", "overall", "--settings", "LAP"]}
    name = "cain" if experiment == "overall" else experiment
    with pytest.raises(SystemExit):
        entry.main([name, "--config", str(config), "--seeds", "0", "--results-dir",
                    str(tmp_path), "--runs-dir", str(tmp_path / "runs"), *extra[experiment]])
    assert seen == [True]
