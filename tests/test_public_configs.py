"""The shipped configs of the public datasets a user downloads (KuaiRec, KuaiRand; TAAC
in tests/data/test_taac.py): they load, carry the mixed-polarity paper's settings, and
their files (written here in each dataset's layout) go through the Beam job and one
training run."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import REPO
from tests.data.test_sources import KUAIRAND_HEADER, USER_FEATURES_HEADER, _kuairand_row
from tfnegseq.config import load_config


@pytest.mark.parametrize("name, split, lr, positive", [
    ("kuairec", "user", 1e-3, "watch_ratio >= 2.0"),
    ("kuairand", "temporal", 5e-4, "is_click >= 1"),
])
def test_public_configs_carry_the_papers_settings(name, split, lr, positive):
    cfg = load_config(REPO / "configs" / f"{name}.yaml")
    assert (cfg.source.kind, cfg.split.kind, cfg.train.learning_rate) == (name, split, lr)
    assert cfg.rules.positive == [positive] and cfg.rules.label == [positive]
    m = cfg.model
    assert (m.embedding_dim, m.sequence_length, m.positive_ratio) == (64, 100, 0.5)
    assert (cfg.train.batch_size, cfg.train.epochs) == (2048, 1)


def write_kuairand(root, users=30, events=40, seed=0):
    rng = np.random.default_rng(seed)
    half = events // 2
    for f, offset in (("log_standard_4_08_to_4_21_1k.csv", 0),
                      ("log_standard_4_22_to_5_08_1k.csv", half)):
        rows = [KUAIRAND_HEADER]
        for u in range(1, users + 1):
            for k in range(offset, offset + half):
                rows.append(_kuairand_row(u, int(rng.integers(1, 80)),
                                          1_649_400_000_000 + 60_000 * k + u,
                                          int(rng.random() < 0.38), 1000, 5000))
        (root / f).write_text("\n".join(rows) + "\n")
    (root / "user_features_1k.csv").write_text("\n".join(
        [USER_FEATURES_HEADER] + [f'{u},{"high_active" if u % 2 else "low_active"},0,0,0,5,'
                                  f'"(0,10]",0,0,0,0,100,"(90,180]",' + ",".join(["0"] * 18)
                                  for u in range(1, users + 1)]) + "\n")
    (root / "video_features_basic_1k.csv").write_text("\n".join(
        ["video_id,author_id,video_type,upload_dt,upload_type,visible_status,video_duration,"
         "server_width,server_height,music_id,music_type,tag"]
        + [f'{i},7,NORMAL,2022-04-08,ShortImport,public,5000.0,720,1280,0,9,"{i % 9},8"'
           for i in range(1, 80)]) + "\n")


TINY = ["samples.max_history=10", "model.sequence_length=10", "model.embedding_dim=16",
        "train.batch_size=64", "output.shards=1", "train.export=false"]


@pytest.mark.slow  # two Beam jobs and two tiny trainings: about a minute
@pytest.mark.parametrize("name", ["kuairec", "kuairand"])
def test_public_config_builds_samples_and_trains(name, tmp_path):
    from tfnegseq.data import job
    from tfnegseq.data.simulate import simulate_to_dir
    from tfnegseq.train import run_config

    log = tmp_path / "log"
    log.mkdir()
    sets = [f"source.path={log}", f"output.dir={tmp_path}/samples",
            f"train.run_dir={tmp_path}/run", *TINY]
    if name == "kuairand":
        write_kuairand(log)
    else:  # the simulator writes KuaiRec's raw layout
        sim = load_config(REPO / "configs" / "synthetic.yaml", [
            f"source.path={log}", "simulate.num_users=40", "simulate.num_items=200",
            "simulate.events_per_user_min=20", "simulate.events_per_user_max=60"])
        simulate_to_dir(sim.simulate, str(log))
    cfg = load_config(REPO / "configs" / f"{name}.yaml", sets)
    stats = job.run(cfg)
    assert stats["dead_letters"] == 0 and stats["total_samples"] > 0
    counts = json.loads((tmp_path / "samples" / "_stats.json").read_text())
    assert sum(counts["positives"].values()) > 0
    metrics = run_config(cfg, verbose=0)
    assert 0.0 <= metrics["auc"] <= 1.0 and metrics["eval_examples"] > 0
