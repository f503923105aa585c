"""Sweep result files (`tfnegseq.experiments.records`) and the SINE sweep's settings."""

import json

import numpy as np
import pytest

from tfnegseq.experiments import records
from tfnegseq.experiments.sine import GROUPS, setting_names


def test_mean_std_groups_records_with_the_sample_std():
    rs = [{"s": "a", "auc": 0.5}, {"s": "a", "auc": 0.7}, {"s": "b", "auc": 0.6},
          {"s": "b", "auc": None}]
    out = records.mean_std(rs, ("s",), ("auc", "gauc"))
    assert out[("a",)]["auc"] == pytest.approx((0.6, np.std([0.5, 0.7], ddof=1), 2))
    assert out[("b",)]["auc"] == (0.6, 0.0, 1)  # the missing value is left out
    assert "gauc" not in out[("a",)]


def test_finish_writes_json_markdown_and_plot_and_stamps_only_a_run(tmp_path):
    path = str(tmp_path / "sweep_x.json")
    plots = []
    data = records.load(path)
    assert data == {"records": []}
    records.describe(data, "tfnegseq.experiments.x", ["--seeds", "0"], seeds=[0])
    assert data["command"] == "python -m tfnegseq.experiments.x --seeds 0"
    text = records.finish(path, data, False, lambda d: f"{len(d['records'])} runs\n",
                          plots.append)
    assert text == "0 runs\n" and "finished" not in json.load(open(path))
    assert (tmp_path / "sweep_x.md").read_text() == "0 runs\n"
    assert plots == [str(tmp_path / "sweep_x.png")]
    records.finish(path, data, True, lambda d: "", plots.append)
    assert "finished" in json.load(open(path))


def test_setting_names_expand_groups_once_in_order():
    assert setting_names("table4,SINE,SASRec") == [*GROUPS["table4"], "SASRec"]
    assert setting_names("k_sweep")[:2] == ["SINE K=1", "SINE K=2"]


def test_sine_markdown_shows_a_spread_only_over_several_runs():
    from tfnegseq.experiments import sine

    def record(setting, seed, auc):
        return {"setting": setting, "seed": seed, "auc": auc, "gauc": 0.6, "ndcg@2": 0.7,
                "ndcg_no_cutoff": 0.8, "hr@10": 0.1, "ndcg@10": 0.05, "mrr": 0.05,
                "paper_epoch": 20, "full_epoch": 200}

    data = {"records": [record("SASRec", 0, 0.70), record("SASRec", 1, 0.72),
                        record("SINE", 0, 0.74)]}
    text = sine.markdown("toy", data)
    sasrec = next(line for line in text.splitlines() if line.startswith("| SASRec |"))
    single = next(line for line in text.splitlines() if line.startswith("| SINE |"))
    assert "0.7100 ± 0.0141" in sasrec and "| 2 |" in sasrec  # sample std of 0.70, 0.72
    assert "±" not in single and "0.7400" in single and "| 1 |" in single
    assert "still running." in text


def test_the_configs_own_k_is_the_sine_setting_in_the_k_sweep():
    from tfnegseq.experiments import sine

    assert sine.sweep_alias("SINE K=3", 3) == "SINE"
    assert sine.sweep_alias("SINE K=4", 3) == "SINE K=4"
    assert sine.sweep_alias("SINE K=4", 4) == "SINE"

    def record(setting, seed, auc):
        return {"setting": setting, "seed": seed, "auc": auc, "gauc": 0.6, "ndcg@2": 0.7,
                "ndcg_no_cutoff": 0.8, "hr@10": 0.1, "ndcg@10": 0.05, "mrr": 0.05,
                "paper_epoch": 20, "full_epoch": 200}

    data = {"records": [record("SINE", 0, 0.70), record("SINE", 1, 0.74),
                        record("SINE K=1", 0, 0.66)], "default_num_interests": 3}
    lines = sine.markdown("toy", data).splitlines()
    k3 = next(line for line in lines if line.startswith("| SINE K=3 |"))
    assert "0.7200 ± 0.0283" in k3 and "| 2 |" in k3  # SINE's two runs
    assert any(line.startswith("| SINE K=1 |") and "0.6600" in line for line in lines)
    assert "(K = 3: the SINE runs)" in "\n".join(lines)
    # a config with another K: its own K row is SINE's, K=3 is absent
    lines = sine.markdown("toy", {**data, "default_num_interests": 2}).splitlines()
    assert any(line.startswith("| SINE K=2 |") and "0.7200" in line for line in lines)
    assert not any(line.startswith("| SINE K=3 |") for line in lines)


def test_only_records_of_the_current_config_and_code_revision_are_current(monkeypatch):
    """A record is current when its `config_sha` is the fingerprint its setting would
    run with now: one of another config, one written before fingerprints (no sha) and,
    after a code revision, one of the older code all move to `discarded_records`."""
    from tfnegseq.config import config_from_dict
    from tfnegseq.experiments import records

    cfg = config_from_dict({"model": {"kind": "ctr"}})
    monkeypatch.setitem(records.CODE_REVISION, "ctr", 1)
    old = records.fingerprint(cfg)
    monkeypatch.setitem(records.CODE_REVISION, "ctr", 2)
    now = records.fingerprint(cfg)
    assert old != now
    data = {"records": [{"setting": "a", "seed": 0, "config_sha": now},
                        {"setting": "a", "seed": 1, "config_sha": old},
                        {"setting": "a", "seed": 2},
                        {"setting": "b", "seed": 0}]}  # no expectation: left alone
    records.set_aside_stale(data, {("a",): now}, ("setting",))
    assert [(r["setting"], r["seed"]) for r in data["records"]] == [("a", 0), ("b", 0)]
    assert [r["seed"] for r in data["discarded_records"]] == [1, 2]
    assert all(r["discarded"] == "config changed" for r in data["discarded_records"])


def _fake_training(monkeypatch, run_dir):
    """Replaces `tfnegseq.train.run_config` by a stub that records what `run_dir` holds
    when training starts (a sorted list of names, one per run) and returns CTR metrics,
    with `resumed_from_epoch` when a resume state is there (as the trainer does)."""
    import tfnegseq.train

    seen: list[list[str]] = []

    def fake_run(c, verbose=0):
        seen.append(sorted(p.name for p in run_dir.iterdir()))
        # as the trainer: a resume state left in backup/ is resumed, and said so
        state = run_dir / "backup" / "tfnegseq_resume.json"
        resumed = json.loads(state.read_text())["epochs_done"] if state.exists() else None
        return {"auc": 0.7, "gauc": 0.6, "logloss": 0.5, "eval_examples": 3,
                "train_examples_per_second": 1.0, "seconds": 1.0,
                "resumed_from_epoch": resumed}

    monkeypatch.setattr(tfnegseq.train, "run_config", fake_run)
    return seen


def test_a_sweep_run_starts_afresh_over_an_unrecorded_run_directory(tmp_path, monkeypatch):
    """An unrecorded run's directory is an interrupted run, maybe of older code whose
    backup the config hash cannot tell apart: `run_ctr` removes it instead of resuming."""
    from tfnegseq.config import config_from_dict
    from tfnegseq.experiments import records

    run_dir = tmp_path / "run"
    (run_dir / "backup").mkdir(parents=True)
    (run_dir / "backup" / "stale.weights.h5").write_bytes(b"old")
    cfg = config_from_dict({"model": {"kind": "ctr"}, "train": {"run_dir": str(run_dir)}})
    seen = _fake_training(monkeypatch, run_dir)
    data = {"records": []}
    records.run_ctr(str(tmp_path / "r.json"), data, cfg, setting="a", seed=0)
    assert seen == [[records.RUN_MARK]] and data["records"][0]["auc"] == 0.7


@pytest.mark.slow  # interrupted and resumed sweep trainings: about 35 s
def test_a_sweep_resumes_only_an_interrupted_run_of_its_own_fingerprint(tmp_path, monkeypatch):
    """A run directory the sweep marked with this run's fingerprint and whose trainer
    left a resume state is kept (the trainer resumes it) and the record says after
    which epoch; a mark of another fingerprint (other config or code revision), a
    finished but unrecorded run, a resume state of another config and a backup without
    its weights file are removed."""
    from tfnegseq.config import config_from_dict
    from tfnegseq.experiments import records
    from tfnegseq.runs import write_resume_state

    run_dir = tmp_path / "run"
    cfg = config_from_dict({"model": {"kind": "ctr"}, "train": {"run_dir": str(run_dir)}})
    other = config_from_dict({"model": {"kind": "ctr", "embedding_dim": 8},
                              "train": {"run_dir": str(run_dir)}})
    seen = _fake_training(monkeypatch, run_dir)

    def keras_backup(weights=True):  # what BackupAndRestore leaves after epoch 7
        import h5py

        if weights:
            h5py.File(run_dir / "backup" / "latest.weights.h5", "w").close()
        (run_dir / "backup" / "training_metadata.json").write_text('{"epoch": 7}')

    def interrupted(mark_cfg, state_cfg, finished=False, weights=True):
        if run_dir.exists():
            import shutil
            shutil.rmtree(run_dir)
        write_resume_state(str(run_dir), state_cfg, {"epochs_done": 7, "epochs": [],
                                                     "seconds": 2.0})
        keras_backup(weights)
        (run_dir / records.RUN_MARK).write_text(
            json.dumps({"config_sha": records.fingerprint(mark_cfg)}))
        if finished:
            (run_dir / "metrics.json").write_text("{}")
        data = {"records": []}
        records.run_ctr(str(tmp_path / "r.json"), data, cfg, setting="a", seed=0)
        return data["records"][0].get("resumed_from_epoch")

    assert interrupted(cfg, cfg) == 7
    assert seen[-1] == ["backup", records.RUN_MARK]  # kept for the trainer
    for mark_cfg, state_cfg, finished, weights in [
            (other, cfg, False, True), (cfg, other, False, True), (cfg, cfg, True, True),
            (cfg, cfg, False, False)]:  # the last: its backup lost the weights file
        assert interrupted(mark_cfg, state_cfg, finished, weights) is None
        assert seen[-1] == [records.RUN_MARK]  # removed; the new run's mark written
        mark = json.loads((run_dir / records.RUN_MARK).read_text())
        assert mark == {"config_sha": records.fingerprint(cfg)}
    monkeypatch.setitem(records.CODE_REVISION, "ctr", 99)  # same config, newer code
    write_resume_state(str(run_dir), cfg, {"epochs_done": 7, "epochs": [], "seconds": 2.0})
    keras_backup()
    data = {"records": []}
    records.run_ctr(str(tmp_path / "r.json"), data, cfg, setting="a", seed=0)
    assert "resumed_from_epoch" not in data["records"][0] and seen[-1] == [records.RUN_MARK]


def test_cain_settings_that_build_one_model_share_a_fingerprint():
    """strides None means 1 then `later_stride`; a setting that spells the same strides
    out (Figure 7's "first stride 1", Figure 6's "1 layer") is the same model, so the
    same fingerprint; other strides are another model."""
    from tests.conftest import REPO
    from tfnegseq.config import load_config
    from tfnegseq.experiments import records

    config = REPO / "configs" / "movielens_100k_cain.yaml"

    def sha(*overrides):
        return records.fingerprint(load_config(config, list(overrides)))

    assert sha() == sha("model.strides=[1,4,4,4]")
    assert sha("model.msia_layers=1") == sha("model.msia_layers=1", "model.strides=[1]")
    assert sha("model.later_stride=1") == sha("model.strides=[1,1,1,1]")
    assert sha() != sha("model.strides=[2,4,4,4]") != sha("model.later_stride=2")


def test_a_setting_another_study_already_ran_is_copied_not_trained(tmp_path, monkeypatch):
    """Two studies naming one config: the second gets the first's record (marked
    `copied_from`), one training in all; a different config trains."""
    from tests.conftest import REPO
    from tfnegseq.experiments import records, studies

    spec = studies.Studies(
        prog="p", prefix="x", kind="ctr", default_studies=("a", "b"),
        studies={"a": {"mix": ["model.positive_ratio=0.5"]},
                 "b": {"same": ["model.positive_ratio=0.5"], "other": ["model.positive_ratio=1.0"]}},
        reference={"a": "mix", "b": "same"})
    trained = []

    def fake_run(path, data, cfg, **fields):
        trained.append((fields["study"], fields["setting"]))
        data["records"].append({**fields, "auc": 0.7 + 0.01 * len(trained), "gauc": 0.6,
                                "logloss": 0.5})
        records.save(path, data)

    monkeypatch.setattr(records, "run_ctr", fake_run)
    assert studies.run(spec, ["--config", str(REPO / "configs" / "movielens_100k.yaml"),
                              "--study", "a", "--study", "b", "--seeds", "0",
                              "--results-dir", str(tmp_path), "--runs-dir",
                              str(tmp_path / "runs")]) == 0
    assert trained == [("a", "mix"), ("b", "other")]
    data = json.loads((tmp_path / "x_movielens_100k.json").read_text())
    same = next(r for r in data["records"] if r["setting"] == "same")
    assert same["copied_from"] == "a / mix" and same["auc"] == 0.71 and same["study"] == "b"


def test_a_sweep_over_some_settings_does_not_load_the_others(tmp_path):
    """`--settings` picks what runs: a setting left out that the config cannot load (here
    a sequence longer than the samples' history) does not refuse the sweep, even in a
    study that refuses invalid settings."""
    from tests.conftest import REPO
    from tfnegseq.experiments import studies

    spec = studies.Studies(
        prog="p", prefix="x", kind="ctr", default_studies=("a",),
        studies={"a": {"ok": [], "too long": ["model.sequence_length=500"]}},
        reference={"a": "ok"})
    argv = ["--config", str(REPO / "configs" / "movielens_100k.yaml"), "--results-dir",
            str(tmp_path), "--report-only"]
    assert studies.run(spec, [*argv, "--settings", "ok"]) == 0
    with pytest.raises(Exception, match="sequence_length"):
        studies.run(spec, argv)


def _sweep(path, dataset, recs, **meta):
    path.write_text(json.dumps({"dataset": dataset, "records": recs, **meta}))
    return str(path)


def test_merge_adds_the_runs_a_target_lacks_and_keeps_its_metadata(tmp_path):
    from tfnegseq.experiments.__main__ import main

    a = {"setting": "SINE", "seed": 0, "config_sha": "x", "auc": 0.7}
    b = {"setting": "SINE", "seed": 1, "config_sha": "x", "auc": 0.72}
    c = {"setting": "SASRec", "seed": 1, "config_sha": "y", "auc": 0.69}
    target = _sweep(tmp_path / "t.json", "toy", [a], command="sweep 0", notes="Seed 0.",
                    finished="2026-12-06T20:26:19")
    s1 = _sweep(tmp_path / "s1.json", "toy", [a, b], command="sweep 1",
                finished="2026-12-07T01:41:02")
    s2 = _sweep(tmp_path / "s2.json", "toy", [c, b], finished="2026-12-06T09:00:00")
    assert records.merge(target, [s1, s2], note="Seed 1 from two workers.") == (2, 2)
    out = json.load(open(target))
    assert out["records"] == [a, b, c]
    assert out["command"] == "sweep 0" and out["notes"] == "Seed 0. Seed 1 from two workers."
    assert out["finished"] == "2026-12-07T01:41:02"  # the latest run's end
    # the CLI entry point: merging again adds nothing
    assert main(["merge", target, s1]) == 0 and json.load(open(target))["records"] == [a, b, c]


def test_merge_tells_studies_and_backbones_apart(tmp_path):
    r = {"study": "overall", "backbone": "din", "setting": "TAPF", "seed": 0, "auc": 0.6}
    other_study = {**r, "study": "peg", "auc": 0.61}
    other_backbone = {**r, "backbone": "transformer", "auc": 0.62}
    target = str(tmp_path / "new.json")  # absent: created from the first source
    src = _sweep(tmp_path / "s.json", "toy", [r, other_study, other_backbone], notes="n")
    assert records.merge(target, [src]) == (3, 0)
    assert json.load(open(target))["notes"] == "n"


def test_merge_refuses_conflicting_runs_and_other_datasets_and_writes_nothing(
        tmp_path, capsys):
    from tfnegseq.experiments.__main__ import main

    a = {"setting": "SINE", "seed": 0, "config_sha": "x", "auc": 0.7}
    target = _sweep(tmp_path / "t.json", "toy", [a])
    before = open(target).read()
    rerun = _sweep(tmp_path / "rerun.json", "toy", [{**a, "auc": 0.71}])
    with pytest.raises(records.MergeError, match=r"rerun.json: record 0 \(setting='SINE', "
                                                 r"seed=0\) differs"):
        records.merge(target, [rerun])
    other = _sweep(tmp_path / "other.json", "ml", [{**a, "seed": 3}])
    with pytest.raises(records.MergeError, match="other.json: dataset 'ml'"):
        records.merge(target, [other])
    broken = _sweep(tmp_path / "broken.json", "toy", [{"seed": 1}])
    with pytest.raises(records.MergeError, match="broken.json: record 0 has no"):
        records.merge(target, [broken])
    assert open(target).read() == before
    not_a_sweep = tmp_path / "list.json"
    not_a_sweep.write_text("[]")
    with pytest.raises(records.MergeError, match="list.json: not a sweep file"):
        records.merge(str(not_a_sweep), [target])  # a bad target, not only a bad source
    assert main(["merge", target, str(tmp_path / "missing.json")]) == 2
    err = capsys.readouterr().err
    assert err.strip().endswith("missing.json: no such file") and err.count("\n") == 1
