"""Tests for the KuaiRec-layout simulator: format, determinism and the planted signals."""

from __future__ import annotations

import ast
import dataclasses

import numpy as np
import pandas as pd
import pytest
import yaml

from tfnegseq.config import SimulateConfig
from tfnegseq.data import simulate as sim

SMALL = SimulateConfig(seed=7, num_users=200, num_items=800, num_topics=20,
                       events_per_user_min=10, events_per_user_max=1500)
# bigger population for the statistical tests of drift
DRIFT_BASE = dataclasses.replace(SMALL, seed=3, num_users=300, num_items=1000)

BIG_MATRIX_DTYPES = {"user_id": "int64", "video_id": "int64", "play_duration": "int64",
                     "video_duration": "int64", "time": "string", "date": "int64",
                     "timestamp": "float64", "watch_ratio": "float64"}
USER_FEATURE_COLUMNS = (
    ["user_id", "user_active_degree", "is_lowactive_period", "is_live_streamer",
     "is_video_author", "follow_user_num", "follow_user_num_range", "fans_user_num",
     "fans_user_num_range", "friend_user_num", "friend_user_num_range", "register_days",
     "register_days_range"] + [f"onehot_feat{i}" for i in range(18)])
USER_STRING_COLUMNS = {"user_active_degree", "follow_user_num_range", "fans_user_num_range",
                       "friend_user_num_range", "register_days_range"}


@pytest.fixture(scope="module")
def small():
    return sim.simulate_with_latent(SMALL)


@pytest.fixture(scope="module")
def drift_runs():
    """The same world simulated without and with strong interest drift."""
    return {d: sim.simulate_with_latent(dataclasses.replace(DRIFT_BASE, drift=d))
            for d in (0.0, 1.0)}


def _positions(user: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    counts = np.bincount(user)
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
    return np.arange(len(user)) - offsets[user], offsets


def _check_dtype(series: pd.Series, kind: str) -> None:
    if kind == "string":
        assert pd.api.types.is_string_dtype(series.dtype), series.name
        assert not pd.api.types.is_numeric_dtype(series.dtype), series.name
    else:
        assert series.dtype == np.dtype(kind), (series.name, series.dtype)


# -------------------------------------------------------------------- determinism


def test_same_seed_identical_different_seed_differs(small):
    again = sim.simulate(SMALL)
    for key, frame in small[0].items():
        pd.testing.assert_frame_equal(frame, again[key], check_exact=True)
    other = sim.simulate(dataclasses.replace(SMALL, seed=8))
    assert not small[0]["big_matrix"].equals(other["big_matrix"])
    assert not small[0]["user_features"].equals(other["user_features"])


# ------------------------------------------------------------------------- format


def test_big_matrix_columns_and_dtypes_roundtrip(small, tmp_path):
    frames, _ = small
    big = frames["big_matrix"]
    assert list(big.columns) == list(BIG_MATRIX_DTYPES)
    for col, kind in BIG_MATRIX_DTYPES.items():
        _check_dtype(big[col], kind)
    sim.write(frames, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(sim.FILES.values())
    for key, name in sim.FILES.items():
        back = pd.read_csv(tmp_path / name, float_precision="round_trip")
        pd.testing.assert_frame_equal(back, frames[key], check_exact=True)
    header = (tmp_path / "big_matrix.csv").read_text().splitlines()[0]
    assert header == "user_id,video_id,play_duration,video_duration,time,date,timestamp,watch_ratio"


def test_user_features_layout(small):
    frames, latent = small
    uf = frames["user_features"]
    assert list(uf.columns) == USER_FEATURE_COLUMNS
    for col in uf.columns:
        _check_dtype(uf[col], "string" if col in USER_STRING_COLUMNS else "int64")
    np.testing.assert_array_equal(uf["user_id"], np.arange(SMALL.num_users))
    assert set(uf["user_active_degree"]) == set(sim.DEGREES)
    np.testing.assert_array_equal(uf["user_active_degree"].to_numpy(dtype=object),
                                  latent.user_degree)
    assert ((uf["follow_user_num"] == 0) == (uf["follow_user_num_range"] == "0")).all()
    assert uf["follow_user_num_range"].str.match(r"^(0|\(\d+,\d+\]|\d+\+)$").all()
    onehot = uf[[f"onehot_feat{i}" for i in range(18)]].to_numpy()
    assert onehot.min() >= 0 and onehot.max() < max(sim.ONEHOT_CARDINALITY)


def test_item_categories_main_topic_first(small):
    frames, latent = small
    cats = frames["item_categories"]
    assert list(cats.columns) == ["video_id", "feat"]
    np.testing.assert_array_equal(cats["video_id"], np.arange(SMALL.num_items))
    feats = [ast.literal_eval(f) for f in cats["feat"]]
    assert all(isinstance(f, list) and 1 <= len(f) <= 2 for f in feats)
    np.testing.assert_array_equal([f[0] for f in feats], latent.item_topic)
    two = np.mean([len(f) == 2 for f in feats])
    # a second tag is drawn with SECOND_TAG_PROB and dropped when it repeats the main one
    expected = sim.SECOND_TAG_PROB * (1 - 1 / SMALL.num_topics)
    assert abs(two - expected) < 0.05
    multi = cats["feat"][[len(f) == 2 for f in feats]]
    assert multi.str.match(r"^\[\d+, \d+\]$").all()  # KuaiRec's "[27, 9]"


def test_ids_start_at_zero(small):
    big = small[0]["big_matrix"]
    assert big["user_id"].min() == 0 and big["user_id"].max() == SMALL.num_users - 1
    assert big["user_id"].nunique() == SMALL.num_users
    assert big["video_id"].min() >= 0 and big["video_id"].max() < SMALL.num_items
    assert big["video_id"].nunique() > SMALL.num_items // 2


def test_watch_ratio_is_play_over_duration(small):
    big = small[0]["big_matrix"]
    ratio = big["play_duration"].to_numpy() / big["video_duration"].to_numpy()
    np.testing.assert_array_equal(big["watch_ratio"].to_numpy(), ratio)
    dur = big["video_duration"]
    assert dur.min() >= sim.DURATION_MIN_MS and dur.max() <= sim.DURATION_MAX_MS
    assert (big["play_duration"] >= 0).all()


# ----------------------------------------------------------------- distributions


@pytest.mark.parametrize("target", [0.06, 0.14])
def test_positive_rate_follows_target(target):
    cfg = dataclasses.replace(SMALL, num_users=120, seed=11, target_positive_rate=target)
    rate = (sim.simulate(cfg)["big_matrix"]["watch_ratio"] >= 2.0).mean()
    assert abs(rate - target) < 0.02


def test_default_positive_rate_in_band(small):
    rate = (small[0]["big_matrix"]["watch_ratio"] >= 2.0).mean()
    assert 0.05 <= rate <= 0.15
    assert abs(rate - SMALL.target_positive_rate) < 0.02


def test_sine_classes_all_well_represented(small):
    big = small[0]["big_matrix"]
    play, dur = big["play_duration"], big["video_duration"]
    positive = (play > 0.5 * dur).mean()
    passive = ((play < 3000) & ~(play > 0.5 * dur)).mean()
    neutral = 1.0 - positive - passive
    assert min(positive, passive, neutral) > 0.15


def test_event_counts_span_the_range(small):
    counts = small[0]["big_matrix"].groupby("user_id").size().to_numpy()
    lo, hi = SMALL.events_per_user_min, SMALL.events_per_user_max
    assert counts.min() >= lo and counts.max() <= hi
    assert counts.min() < 1.5 * lo and counts.max() > hi / 1.5
    # heavy tail: log-uniform, so the median is far below the mean
    assert np.median(counts) < 0.7 * counts.mean()


def test_timestamps_per_user_and_time_columns(small):
    big = small[0]["big_matrix"]
    user = big["user_id"].to_numpy()
    assert (np.diff(user) >= 0).all()
    ts_ms = np.rint(big["timestamp"].to_numpy() * 1000).astype(np.int64)
    np.testing.assert_allclose(ts_ms / 1000.0, big["timestamp"], rtol=0, atol=1e-6)
    same_user = np.diff(user) == 0
    step = np.diff(ts_ms)[same_user]
    assert (step >= 0).all()
    tie_share = (step == 0).mean()
    assert 0.3 * sim.TIE_RATE < tie_share < 2.0 * sim.TIE_RATE
    start = int(SMALL.start_timestamp * 1000)
    assert ts_ms.min() >= start and ts_ms.max() <= start + sim.SPAN_DAYS * 86_400_000
    assert (ts_ms.max() - ts_ms.min()) > 14 * 86_400_000  # spans weeks
    local = pd.to_datetime(ts_ms + 8 * 3600 * 1000, unit="ms")
    expected_time = local.strftime("%Y-%m-%d %H:%M:%S.%f").str[:-3]
    np.testing.assert_array_equal(big["time"].to_numpy(dtype=object), np.asarray(expected_time))
    np.testing.assert_array_equal(big["date"], local.strftime("%Y%m%d").astype(np.int64))


# ---------------------------------------------------------------- planted signals


def test_skipped_items_come_from_liked_topics(drift_runs):
    frames, latent = drift_runs[0.0]  # no drift: the like set is the initial one
    big = frames["big_matrix"]
    user = big["user_id"].to_numpy()
    topic = latent.item_topic[big["video_id"].to_numpy()]
    liked = latent.initial_state[user, topic] == 1
    skipped = big["watch_ratio"].to_numpy() < 2.0
    # a uniformly random catalogue item falls in a liked topic with this probability
    base = ((latent.initial_state == 1) * latent.item_share).sum(axis=1)[user]
    # the recommender's expected liked share (RECO_LOGIT, EXPLORE, topic popularity)
    w = latent.topic_popularity * np.exp(
        np.select([latent.initial_state == 1, latent.initial_state == -1],
                  [sim.RECO_LOGIT[1], sim.RECO_LOGIT[-1]], sim.RECO_LOGIT[0]))
    pop_liked = ((latent.initial_state == 1) * latent.topic_popularity).sum(axis=1)
    reco = (1 - sim.EXPLORE) * ((latent.initial_state == 1) * w).sum(1) / w.sum(1)
    expected = (reco + sim.EXPLORE * pop_liked)[user]
    assert liked[skipped].mean() > 2.0 * base[skipped].mean()
    assert abs(liked.mean() - expected.mean()) < 0.05
    # skips are mostly near the interests, yet less so than engagements
    assert liked[skipped].mean() < liked[~skipped].mean()


def _recency_gap(frames: dict, latent: sim.Latent, lag: int = 200) -> float:
    """corr(outcome, most recent same-topic outcome) - corr(outcome, one >= lag back)."""
    big = frames["big_matrix"]
    user = big["user_id"].to_numpy()
    pos, _ = _positions(user)
    key = user * len(latent.item_share) + latent.item_topic[big["video_id"].to_numpy()]
    outcome = np.log(big["watch_ratio"].to_numpy() + 1e-3)
    order = np.lexsort((pos, key))
    ks, ps, ys = key[order], pos[order], outcome[order]
    combined = ks * 10**7 + ps
    old = np.searchsorted(combined, combined - lag, side="right") - 1
    ok = (old >= 0) & (ks[np.maximum(old, 0)] == ks) & np.r_[False, ks[1:] == ks[:-1]]
    recent = np.r_[0.0, ys[:-1]]
    assert ok.sum() > 5000
    corr_recent = np.corrcoef(ys[ok], recent[ok])[0, 1]
    corr_old = np.corrcoef(ys[ok], ys[np.maximum(old, 0)][ok])[0, 1]
    return float(corr_recent - corr_old)


def test_drift_makes_recent_outcomes_more_informative(drift_runs):
    assert drift_runs[1.0][1].swaps.sum() > 0 and drift_runs[0.0][1].swaps.sum() == 0
    gap_still = _recency_gap(*drift_runs[0.0])
    gap_drift = _recency_gap(*drift_runs[1.0])
    # at drift 1 a liked topic swaps every DRIFT_EVENTS events: after 200 events most
    # users' like sets changed, so the old outcome predicts much less than the recent one
    assert gap_drift > 0.05
    assert gap_drift - gap_still > 0.04


def test_profile_feature_sets_sequential_influence(small):
    frames, latent = small
    big = frames["big_matrix"]
    user = big["user_id"].to_numpy()
    _, offsets = _positions(user)
    topic = latent.item_topic[big["video_id"].to_numpy()]
    watched = big["watch_ratio"].to_numpy() > sim.WATCHED_RATIO
    positive = big["watch_ratio"].to_numpy() >= 2.0
    last = np.maximum.accumulate(np.where(watched, np.arange(len(big)), -1))
    prev = np.r_[-1, last[:-1]]  # last watched event strictly before this one
    ok = (prev >= offsets[user]) & (latent.event_topic_state == 1)  # liked topics only
    same = topic[np.maximum(prev, 0)] == topic
    degree = frames["user_features"]["user_active_degree"].to_numpy(dtype=object)[user]
    lift = {}
    for d in sim.DEGREES:
        m = ok & (degree == d)
        assert m.sum() > 1000
        lift[d] = positive[m & same].mean() - positive[m & ~same].mean()
    strength = [sim.INFLUENCE_BY_DEGREE[d] for d in sim.DEGREES]
    assert np.corrcoef(strength, [lift[d] for d in sim.DEGREES])[0, 1] > 0.8
    strongest = sim.DEGREES[int(np.argmax(strength))]
    weakest = sim.DEGREES[int(np.argmin(strength))]
    assert lift[strongest] - lift[weakest] > 0.06
    assert abs(lift[weakest]) < 0.04  # strength 0: no sequential dependence left


# ------------------------------------------------------------------------------ CLI


def test_main_writes_to_out_and_source_path(tmp_path, capsys):
    src = tmp_path / "src"
    cfg_path = tmp_path / "sim.yaml"
    cfg_path.write_text(yaml.safe_dump({
        "source": {"kind": "kuairec", "path": str(src)},
        "simulate": {"num_users": 30, "num_items": 100, "events_per_user_max": 200},
    }))
    sim.main(["--config", str(cfg_path), "--set", "simulate.seed=3"])
    line = capsys.readouterr().out.strip()
    assert "events" in line and "positive_rate=" in line and str(src) in line
    big = pd.read_csv(src / "big_matrix.csv")
    assert big["user_id"].nunique() == 30
    out = tmp_path / "out"
    sim.main(["--config", str(cfg_path), "--set", "simulate.seed=3", "--out", str(out)])
    assert (out / "big_matrix.csv").read_bytes() == (src / "big_matrix.csv").read_bytes()
    stats = sim.simulate_to_dir(SimulateConfig(num_users=5, num_items=50, seed=1), tmp_path / "s")
    assert set(stats) == {"events", "users", "items", "positive_rate"}
    assert stats["users"] == 5 and stats["items"] == 50
    assert stats["events"] == len(pd.read_csv(tmp_path / "s" / "big_matrix.csv"))


def test_tiny_worlds_do_not_break():
    for cfg in (SimulateConfig(num_users=1, num_items=1, num_topics=1, events_per_user_min=1,
                               events_per_user_max=1),
                SimulateConfig(num_users=3, num_items=5, num_topics=20, events_per_user_max=50)):
        frames = sim.simulate(cfg)
        assert len(frames["item_categories"]) == cfg.num_items
        assert frames["big_matrix"]["user_id"].nunique() == cfg.num_users
