"""Lifelong (`life_*`) samples from long simulated histories: the
`configs/synthetic_lifelong.yaml` preset, and a tiny long-history simulation through the
Beam job checked against the raw log."""

import os

import numpy as np
import pandas as pd
import pytest

from tests.helpers_data import read_split
from tfnegseq.config import load_config
from tfnegseq.data import job
from tfnegseq.data import simulate as sim
from tfnegseq.data.samples import select_targets

PRESET = os.path.join(os.path.dirname(sim.__file__), "..", "configs", "synthetic_lifelong.yaml")


def test_preset_users_span_hundreds_to_thousands_of_events():
    cfg = load_config(PRESET)
    assert cfg.name == "synthetic_lifelong"
    assert cfg.samples.lifelong_length == 2000
    assert cfg.output.dir == "build/samples/synthetic_lifelong"
    n = sim._event_counts(cfg.simulate, np.random.default_rng(0))
    assert len(n) == cfg.simulate.num_users
    assert n.min() >= 150 and 3800 <= n.max() <= 4000
    assert (n >= 2000).mean() > 0.15  # a tail longer than the lifelong list
    assert ((n >= 100) & (n < 1000)).mean() > 0.5  # most users have hundreds
    # the documented size: targets thinned to 51,904 samples
    assert sum(len(select_targets(int(k), cfg.samples))
               for k in sim._event_counts(cfg.simulate, np.random.default_rng(
                   np.random.SeedSequence(cfg.simulate.seed).spawn(6)[1]))) == 51_904


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The preset at tiny sizes: 10 users of 30-300 events, lifelong_length 64."""
    root = tmp_path_factory.mktemp("lifelong")
    cfg = load_config(PRESET, [
        "simulate.num_users=10", "simulate.num_items=300", "simulate.num_topics=10",
        "simulate.events_per_user_min=30", "simulate.events_per_user_max=300",
        "samples.lifelong_length=64", "samples.max_history=10", "model.sequence_length=10",
        "samples.target_stride=3", "samples.max_targets_per_user=40",
        f"source.path={root / 'log'}", f"output.dir={root / 'out'}", "output.shards=1",
    ])
    sim.write(sim.simulate(cfg.simulate), root / "log")
    manifest = job.run(cfg)
    big = pd.read_csv(root / "log" / "big_matrix.csv")
    big["ms"] = np.rint(big["timestamp"] * 1000).astype(np.int64)
    big["line"] = np.arange(len(big))
    # each user's timeline as the job sorts it: (timestamp, input order)
    timeline = {u: g.sort_values(["ms", "line"], kind="stable").reset_index(drop=True)
                for u, g in big.groupby("user_id")}
    recs = [r for s in ("train", "valid", "test") for r in read_split(root / "out", s)]
    return cfg, manifest, timeline, recs


def test_some_user_is_longer_than_the_lifelong_list(tiny):
    cfg, manifest, timeline, recs = tiny
    life = cfg.samples.lifelong_length
    assert max(len(t) for t in timeline.values()) > life
    lens = [len(r.get("life_order", [])) for r in recs]
    assert max(lens) == life and manifest["history_length"]["life_max"] == life
    # the thinned targets: every 3rd event from each user's last, at most 40 per user
    assert len(recs) == manifest["total_samples"] == sum(
        len(select_targets(len(t), cfg.samples)) for t in timeline.values())


def test_life_lists_are_capped_oldest_first_and_strictly_before_the_target(tiny):
    cfg, _, timeline, recs = tiny
    life = cfg.samples.lifelong_length
    for r in recs:
        t = timeline[r["user_id"][0]]
        o = r["order"][0]
        target_ms = int(t["ms"][o - 1])
        assert target_ms == r["timestamp"][0] and int(t["video_id"][o - 1]) == r["item_id"][0]
        orders = r.get("life_order", [])
        assert len(orders) <= life
        assert all(a < b for a, b in zip(orders, orders[1:], strict=False))  # oldest first
        assert all(k < o for k in orders)  # no leakage: strictly before the target ...
        assert all(int(t["ms"][k - 1]) < target_ms for k in orders)  # ... in time too
        before = np.flatnonzero(t["ms"].to_numpy() < target_ms) + 1
        assert orders == before[-life:].tolist()  # the most recent `life` of them
        idx = np.asarray(orders, dtype=np.int64) - 1
        assert r.get("life_item_id", []) == t["video_id"].to_numpy()[idx].tolist()
        ratio = t["watch_ratio"].to_numpy()[idx]
        np.testing.assert_allclose(r.get("life_value", []), ratio.astype(np.float32))
        assert r.get("life_polarity", []) == np.where(ratio >= 2.0, 1, -1).tolist()
