"""`python -m tfnegseq.experiments.sine` end to end on a tiny sequential log: every
setting kind (the popularity floor, a trained baseline, DIN with its own validation
cadence, a SINE variant) runs, each record holds both protocols' metrics at its own
selected epoch, the markdown and the plot are written, and a second call resumes
without rerunning what is recorded."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

SETTINGS = "Popularity,Popularity (all events),SASRec,DIN,SINE w/o AF"


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    from tests.helpers_data import write_log
    from tfnegseq.config import load_config
    from tfnegseq.data import job

    root = tmp_path_factory.mktemp("experiments_sine")
    write_log(root / "log", np.random.default_rng(5), users=16, per_user=40)
    config = {
        "name": "tiny_sine",
        "source": {"kind": "kuairec", "path": str(root / "log")},
        "rules": {"label": [], "positive": ["watch_ratio >= 2.0"],
                  "negative": ["watch_ratio < 0.5"]},
        "samples": {"task": "sequential", "min_core": 1, "max_sequence": 50},
        "output": {"dir": str(root / "samples"), "shards": 1},
        "vocab": {"min_count": 1, "oov_buckets": 1},
        "model": {"kind": "sequential", "architecture": "sine", "embedding_dim": 8,
                  "max_length": 8, "num_blocks": 1, "num_heads": 1, "num_interests": 2,
                  "dropout": 0.0, "attention_units": [8], "mlp_units": [8],
                  "din_train_positions": 3},
        "train": {"epochs": 10, "batch_size": 4, "eval_split": "test", "jit_compile": False,
                  "early_stopping_metric": "ndcg@10", "validate_every": 5,
                  "test_at_validation": True, "keep_checkpoints": 0},
    }
    path = root / "tiny_sine.yaml"
    path.write_text(yaml.safe_dump(config))
    job.run(load_config(str(path)))
    return root, path


def run_sweep(root, path, capsys):
    from tfnegseq.experiments import sine

    argv = ["--config", str(path), "--settings", SETTINGS, "--seeds", "0",
            "--results-dir", str(root / "results"), "--runs-dir", str(root / "runs")]
    assert sine.main(argv) == 0
    return capsys.readouterr().out


@pytest.mark.slow  # a sweep of every SINE setting on tiny data: about 80 s
def test_sweep_writes_every_setting_and_resumes(sweep, capsys):
    root, path = sweep
    out = run_sweep(root, path, capsys)
    data = json.loads((root / "results" / "sine_tiny_sine.json").read_text())
    records = {r["setting"]: r for r in data["records"]}
    assert sorted(records) == sorted(SETTINGS.split(","))
    for name, r in records.items():
        assert r["seed"] == 0
        for key in ("auc", "gauc", "ndcg@2", "ndcg_no_cutoff", "hr@10", "ndcg@10", "mrr"):
            assert r[key] is None or 0.0 <= r[key] <= 1.0, (name, key)
        assert 0.0 <= r["hr@10"] <= 1.0 and 0.0 <= r["auc"] <= 1.0, name
        if name.startswith("Popularity"):
            assert r["paper_epoch"] is None
        else:  # each protocol read at its best validation epoch
            assert r["paper_epoch"] in (5, 10) and r["full_epoch"] in (5, 10), name
    # DIN validates every 10 epochs (the others every 5): once here, at the end
    assert records["DIN"]["paper_epoch"] == records["DIN"]["full_epoch"] == 10
    assert (root / "runs" / "tiny_sine" / "din_seed0").is_dir()
    md = (root / "results" / "sine_tiny_sine.md").read_text()
    for name in SETTINGS.split(","):
        assert f"| {name} |" in md, name
    png = (root / "results" / "sine_tiny_sine.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert "[5/5]" in out

    again = run_sweep(root, path, capsys)  # everything recorded: nothing reruns
    assert "[1/" not in again
    data = json.loads((root / "results" / "sine_tiny_sine.json").read_text())
    assert len(data["records"]) == 5


def test_popularity_counts_training_positives_only(tmp_path):
    """The popularity floor's counts: each item's occurrences as a training positive
    (before the validation target), counted here in numpy from the rows written; skips,
    the validation and the test targets never count."""
    from tests.data.test_sequential_windows import random_rows, write_sequences
    from tfnegseq.experiments.sine import training_positive_counts

    rows = random_rows(np.random.default_rng(4), 30, 12)
    want: dict[int, int] = {}
    for r in rows:
        items, pol = np.asarray(r["seq_item_id"]), np.asarray(r["seq_polarity"])
        k = int(np.ravel(r["valid_index"])[0])
        for item in items[:k][pol[:k] == 1]:
            want[int(item)] = want.get(int(item), 0) + 1
    assert sum(want.values()) > 0
    got = training_positive_counts(write_sequences(tmp_path, rows))
    assert got == want


@pytest.mark.slow  # shares the sweep above: about 35 s more
def test_an_interrupted_run_resumes_and_an_unmarked_one_starts_afresh(sweep, capsys,
                                                                      monkeypatch):
    """A sweep run killed mid-training (here: after epoch 6 of 10) resumes when the
    sweep runs again: epochs 0-5 are not trained again and the record says
    `resumed_from_epoch`. A run directory the sweep did not mark (another version's,
    or anything else there) is removed before the run."""
    import keras

    import tfnegseq.train
    from tfnegseq.experiments import records, sine

    root, path = sweep
    argv = ["--config", str(path), "--settings", "SASRec", "--seeds", "7",
            "--results-dir", str(root / "results_resume"), "--runs-dir", str(root / "runs")]
    run_dir = root / "runs" / "tiny_sine" / "sasrec_seed7"
    (run_dir / "backup").mkdir(parents=True)
    (run_dir / "backup" / "training_metadata.json").write_text("{}")  # unmarked

    class Killed(Exception):
        pass

    class KillAtEpoch6(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 6:
                raise Killed()

    started: list[int] = []  # the first epoch each training call runs

    class FirstEpoch(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.first = True

        def on_epoch_begin(self, epoch, logs=None):
            if self.first:
                started.append(epoch)
                self.first = False

    real = tfnegseq.train.run_config

    def run_config(cfg, verbose=0):
        kill = [KillAtEpoch6()] if not started else []
        return real(cfg, verbose, extra_callbacks=[FirstEpoch(), *kill])

    monkeypatch.setattr(tfnegseq.train, "run_config", run_config)
    with pytest.raises(Killed):
        sine.main(argv)
    assert "removing the interrupted run" in capsys.readouterr().out
    assert "epoch" in json.loads((run_dir / "backup" / "training_metadata.json").read_text())
    mark = json.loads((run_dir / records.RUN_MARK).read_text())
    state = json.loads((run_dir / "backup" / "validation" / "state.json").read_text())
    assert [h["epoch"] for h in state["history"]] == [5]  # validated at 5, then killed

    assert sine.main(argv) == 0
    assert "resuming the interrupted run" in capsys.readouterr().out
    assert started == [0, 6]  # the second call began at epoch 6
    data = json.loads((root / "results_resume" / "sine_tiny_sine.json").read_text())
    (r,) = data["records"]
    assert r["resumed_from_epoch"] == 6 and r["config_sha"] == mark["config_sha"]
    # the resumed run kept epoch 5's validation as it was, and validated epoch 10
    history = json.loads((run_dir / "metrics.json").read_text())["validation"]["history"]
    assert history[0] == state["history"][0] and [h["epoch"] for h in history] == [5, 10]


def test_sine_records_carry_fingerprints_and_other_configs_are_set_aside(tmp_path):
    """Each SINE record carries its config's fingerprint (sequential code revision
    included); a resumed sweep sets aside records of another config (here: one run with
    dropout 0.2, and one written without a fingerprint) instead of averaging them."""
    from tests.conftest import REPO
    from tfnegseq.experiments import records, sine

    config = str(REPO / "configs" / "movielens_100k_sine.yaml")
    cfg = sine.setting_config(config, [], "SASRec", 0, "runs/sine", "movielens_100k_sine")
    now = records.fingerprint(cfg)
    other = records.fingerprint(sine.setting_config(config, ["model.dropout=0.2"], "SASRec",
                                                    0, "runs/sine", "movielens_100k_sine"))
    assert now != other
    row = {"auc": 0.7, "gauc": 0.6, "ndcg@2": 0.7, "hr@10": 0.1, "ndcg@10": 0.05, "mrr": 0.04}
    path = tmp_path / "sine_movielens_100k_sine.json"
    path.write_text(json.dumps({"records": [
        {**row, "setting": "SASRec", "seed": 0, "config_sha": now},
        {**row, "setting": "SASRec", "seed": 1, "config_sha": other},
        {**row, "setting": "SASRec", "seed": 2}]}))
    assert sine.main(["--config", config, "--settings", "SASRec", "--results-dir",
                      str(tmp_path), "--report-only"]) == 0
    data = json.loads(path.read_text())
    assert [r["seed"] for r in data["records"]] == [0]
    assert sorted(r["seed"] for r in data["discarded_records"]) == [1, 2]


def test_the_k_sweep_plots_each_k_over_the_seeds_every_k_ran_at():
    """SINE (the config's K = 3) ran at seeds 0 and 1, K = 1 at seed 0 only: Figure 4's
    K = 3 point is SINE's seed-0 AUC (0.70), not the two-seed mean (0.75)."""
    from tfnegseq.experiments import sine

    def rec(setting, seed, auc):
        return {"setting": setting, "seed": seed, "auc": auc, "gauc": 0.6, "ndcg@2": 0.7}

    data = {"default_num_interests": 3,
            "records": [rec("SINE", 0, 0.70), rec("SINE", 1, 0.80), rec("SINE K=1", 0, 0.65),
                        rec("SASRec", 0, 0.5)]}
    ks, seeds, summ = sine.k_sweep_points(data)
    assert ks == [1, 3] and seeds == [0]
    assert summ[("SINE K=3",)]["auc"][0] == 0.70
    assert summ[("SINE K=1",)]["auc"][0] == 0.65
    # no seed shared by every K: every run counts
    data["records"][2]["seed"] = 2
    ks, seeds, summ = sine.k_sweep_points(data)
    assert seeds == [] and abs(summ[("SINE K=3",)]["auc"][0] - 0.75) < 1e-12
