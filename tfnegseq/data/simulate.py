"""Seeded simulator of a short-video exposure log in the KuaiRec 2.0 raw layout.

It is the project's embedded default dataset: `make demo` runs on it with no download.
`python -m tfnegseq.data.simulate --config CONFIG [--set key=val ...] [--out DIR]` writes
three files into a directory (read them back with `source.kind: kuairec`):

    big_matrix.csv       user_id,video_id,play_duration,video_duration,time,date,
                         timestamp,watch_ratio  (durations in ms, `time` and `date` in
                         Beijing time, UTC+8, as in KuaiRec; rows ordered by user, time)
    user_features.csv    KuaiRec's user profile columns (user_active_degree, ranges,
                         register_days, onehot_feat0..onehot_feat17)
    item_categories.csv  video_id,feat  with feat a list string, main topic first

Generative story (all randomness from `numpy.random.Generator`s seeded by `cfg.seed`):

1. Topics have Zipf popularity (topic 0 most popular). Each item gets a main topic drawn
   from it (plus an occasional secondary tag), a latent vector = unit topic centroid +
   `ITEM_NOISE` * residual, a quality offset and a lognormal duration (5-60 s).
2. Each user gets an event count between `events_per_user_min` and `events_per_user_max`
   (log-uniform, so histories run from tens to thousands), a like set of 2-4 topics and
   a dislike set of 1-3 others (popular topics more likely), a personal taste vector,
   and a profile. `user_active_degree` sets the user's *sequential influence strength*
   (`INFLUENCE_BY_DEGREE`: full_active strongest, UNKNOWN none).
3. Drift: before each event, with probability `drift / DRIFT_EVENTS`, one liked topic
   leaves the like set and a neutral topic joins it, so old outcomes go stale.
4. Exposure: a recommender picks a topic by softmax over `RECO_LOGIT[state] + log pop`
   (liked topics boosted, disliked ones damped), exploring a popularity-drawn topic
   with probability `EXPLORE`, then an item of that topic by in-topic Zipf popularity.
   Skipped items therefore come from the same (current) interests as watched ones.
5. Engagement: log(watch_ratio) = bias + AFFINITY[state of the item's topic]
   + `PERSONAL` * <taste, residual> + quality + strength * <h, item vector>
   + `NOISE_SD` * N(0, 1), where h is an exponential moving average (`INFLUENCE_DECAY`)
   of the vectors of the user's recently *watched* items (play > 50% of duration).
   play_duration = round(watch_ratio * video_duration) ms; watch_ratio = play / duration.
6. `bias` is calibrated per run on a pilot simulation so that the share of
   watch_ratio >= 2.0 (KuaiRec's positive rule) is `target_positive_rate`; play times
   also split into SINE's classes (> 50% positive, < 3 s passive negative, neutral).
7. Time: each user's events form sessions (mean `SESSION_EVENTS` events) spread over
   `SPAN_DAYS` days from `start_timestamp`; inside a session the next event starts after
   the previous play plus a short pause, and `TIE_RATE` of events share the previous
   event's exact timestamp.

The latent ground truth (topic states, influence strengths, calibrated bias, ...) is
returned by `simulate_with_latent` and never written to the CSV files.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from tfnegseq.config import ConfigError, SimulateConfig, add_config_args, load_config

logger = logging.getLogger(__name__)

# ----------------------------------------------------------------- generative constants

LATENT_DIM = 16
TOPIC_ZIPF = 0.8  # topic popularity ~ 1 / (rank + 1) ** TOPIC_ZIPF
ITEM_ZIPF = 0.7  # in-topic item popularity exponent
ITEM_NOISE = 0.45  # norm of an item's residual relative to its unit topic centroid
SECOND_TAG_PROB = 0.35  # share of items with a secondary topic tag
QUALITY_SD = 0.25
DURATION_MEDIAN_MS = 15_000.0
DURATION_SIGMA = 0.6
DURATION_MIN_MS, DURATION_MAX_MS = 5_000, 60_000

LIKES_RANGE = (2, 4)  # inclusive
DISLIKES_RANGE = (1, 3)
DEGREES = ("full_active", "high_active", "middle_active", "UNKNOWN")
INFLUENCE_BY_DEGREE = {"full_active": 1.0, "high_active": 0.6, "middle_active": 0.3, "UNKNOWN": 0.0}

DRIFT_EVENTS = 100.0  # a swap of the like set every DRIFT_EVENTS / drift events
RECO_LOGIT = {-1: -1.5, 0: 0.0, 1: 2.5}  # recommender boost by topic state
EXPLORE = 0.15
AFFINITY = {-1: -1.5, 0: 0.0, 1: 1.0}  # engagement boost by topic state
PERSONAL = 0.3
NOISE_SD = 1.0
INFLUENCE_DECAY = 0.5  # h <- (1 - d) h + d v on each watched item
WATCHED_RATIO = 0.5  # "watched" = play > 50% of the duration (also SINE's positive rule)
MAX_WATCH_RATIO = 25.0

SESSION_EVENTS = 12.0
PAUSE_MEAN_MS = 2_000.0
TIE_RATE = 0.03
SPAN_DAYS = 56
LOCAL_UTC_OFFSET_MS = 8 * 3600 * 1000  # KuaiRec's `time` / `date` are Beijing time

PILOT_USERS = 192
PILOT_MAX_EVENTS = 400
POSITIVE_RATIO = 2.0  # KuaiRec's rule: positive iff watch_ratio >= 2.0

ONEHOT_CARDINALITY = (2, 8, 30, 40, 6, 4, 9, 50, 12, 3, 4, 8, 9, 2, 2, 2, 2, 2)
FOLLOW_BINS = ([0, 1, 11, 51, 101, 151, 251, 501],
               ["0", "(0,10]", "(10,50]", "(50,100]", "(100,150]", "(150,250]",
                "(250,500]", "500+"])
FANS_BINS = ([0, 1, 10, 100, 1000, 5000, 10_000, 100_000],
             ["0", "[1,10)", "[10,100)", "[100,1k)", "[1k,5k)", "[5k,1w)", "[1w,10w)", "10w+"])
FRIEND_BINS = ([0, 1, 5, 30, 60, 120, 250],
               ["0", "[1,5)", "[5,30)", "[30,60)", "[60,120)", "[120,250)", "250+"])
REGISTER_BINS = ([0, 15, 31, 61, 91, 181, 366, 731],
                 ["8-14", "15-30", "31-60", "61-90", "91-180", "181-365", "366-730", "730+"])

BIG_MATRIX_COLUMNS = ["user_id", "video_id", "play_duration", "video_duration", "time", "date",
                      "timestamp", "watch_ratio"]
FILES = {"big_matrix": "big_matrix.csv", "user_features": "user_features.csv",
         "item_categories": "item_categories.csv"}


# ------------------------------------------------------------------------ containers


@dataclass
class Items:
    topic: np.ndarray  # (I,) int64 main topic
    vec: np.ndarray  # (I, D) centroid + ITEM_NOISE * residual
    residual: np.ndarray  # (I, D) unit-scale residual
    quality: np.ndarray  # (I,)
    duration: np.ndarray  # (I,) int64 ms
    tags: list[list[int]]
    sorted_ids: np.ndarray  # item ids sorted by topic
    cum_weight: np.ndarray  # inclusive cumsum of in-topic popularity over sorted_ids
    topic_lo: np.ndarray  # (T,) cum weight before each topic's block
    topic_hi: np.ndarray  # (T,)
    topic_log_pop: np.ndarray  # (T,) log exposure popularity, -inf for empty topics
    topic_popularity: np.ndarray  # (T,) probabilities

    def sample(self, topic: np.ndarray, u: np.ndarray) -> np.ndarray:
        """Items of the given topics, by in-topic popularity (u uniform in [0, 1))."""
        lo, hi = self.topic_lo[topic], self.topic_hi[topic]
        idx = np.searchsorted(self.cum_weight, lo + u * (hi - lo), side="right")
        return self.sorted_ids[np.minimum(idx, len(self.sorted_ids) - 1)]


@dataclass
class Users:
    n_events: np.ndarray  # (U,) int64
    state: np.ndarray  # (U, T) int8 initial topic state: +1 liked, -1 disliked, 0 neutral
    taste: np.ndarray  # (U, D)
    strength: np.ndarray  # (U,) sequential influence strength
    degree: np.ndarray  # (U,) str user_active_degree

    def take(self, idx: np.ndarray, max_events: int) -> Users:
        return Users(np.minimum(self.n_events[idx], max_events), self.state[idx],
                     self.taste[idx], self.strength[idx], self.degree[idx])


@dataclass
class Events:
    """Per-event arrays in (user, time) order, plus per-event latent truth."""

    item: np.ndarray
    play: np.ndarray
    topic_state: np.ndarray  # state of the item's topic for the user at that moment
    affinity: np.ndarray  # the non-sequential part of the score (without bias and noise)
    influence: np.ndarray  # strength * <h, v>
    swaps: np.ndarray  # (U,) like-set swaps per user


@dataclass
class Latent:
    """Ground truth behind a simulated log (never written to the CSV files)."""

    bias: float
    item_topic: np.ndarray  # (I,)
    item_share: np.ndarray  # (T,) share of the catalogue in each topic
    topic_popularity: np.ndarray  # (T,)
    user_strength: np.ndarray  # (U,) sequential influence strength
    user_degree: np.ndarray  # (U,) user_active_degree
    initial_state: np.ndarray  # (U, T) int8
    swaps: np.ndarray  # (U,)
    event_topic_state: np.ndarray  # (N,) int8, same row order as big_matrix
    event_affinity: np.ndarray  # (N,) float32
    event_influence: np.ndarray  # (N,) float32


# ---------------------------------------------------------------------------- items


def _topic_popularity(num_topics: int) -> np.ndarray:
    w = 1.0 / np.arange(1, num_topics + 1) ** TOPIC_ZIPF
    return w / w.sum()


def make_items(cfg: SimulateConfig, rng: np.random.Generator) -> Items:
    n, t = cfg.num_items, cfg.num_topics
    pop = _topic_popularity(t)
    topic = rng.choice(t, size=n, p=pop)
    # every topic gets an item when the catalogue is big enough
    seeds = rng.choice(n, size=min(n, t), replace=False)
    topic[seeds] = np.arange(len(seeds))
    centroids = rng.standard_normal((t, LATENT_DIM))
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    residual = rng.standard_normal((n, LATENT_DIM)) / np.sqrt(LATENT_DIM)
    vec = centroids[topic] + ITEM_NOISE * residual
    quality = QUALITY_SD * rng.standard_normal(n)
    dur = np.exp(np.log(DURATION_MEDIAN_MS) + DURATION_SIGMA * rng.standard_normal(n))
    duration = np.clip(np.rint(dur), DURATION_MIN_MS, DURATION_MAX_MS).astype(np.int64)
    second = np.where(rng.random(n) < SECOND_TAG_PROB, rng.integers(0, t, n), -1)
    tags = [[int(a)] if b < 0 or b == a else [int(a), int(b)]
            for a, b in zip(topic.tolist(), second.tolist(), strict=True)]

    # items sorted by topic, in random order inside a topic: position = popularity rank
    sorted_ids = np.lexsort((rng.random(n), topic))
    st = topic[sorted_ids]
    starts = np.searchsorted(st, np.arange(t), side="left")
    ends = np.searchsorted(st, np.arange(t), side="right")
    rank = np.arange(n) - starts[st]
    weight = 1.0 / (rank + 1.0) ** ITEM_ZIPF
    cum = np.cumsum(weight)
    lo = np.concatenate([[0.0], cum])[starts]
    hi = np.concatenate([[0.0], cum])[ends]
    counts = ends - starts
    log_pop = np.where(counts > 0, np.log(pop), -np.inf)
    return Items(topic.astype(np.int64), vec, residual, quality, duration, tags, sorted_ids,
                 cum, lo, hi, log_pop, pop)


# ---------------------------------------------------------------------------- users


def _event_counts(cfg: SimulateConfig, rng: np.random.Generator) -> np.ndarray:
    """Log-uniform counts in [min, max], stratified so the whole range is covered."""
    u = (rng.permutation(cfg.num_users) + rng.random(cfg.num_users)) / cfg.num_users
    lo, hi = np.log(cfg.events_per_user_min), np.log(cfg.events_per_user_max)
    n = np.rint(np.exp(lo + u * (hi - lo)))
    return np.clip(n, cfg.events_per_user_min, cfg.events_per_user_max).astype(np.int64)


def _interest_sets(items: Items, num_users: int, rng: np.random.Generator) -> np.ndarray:
    t = len(items.topic_log_pop)
    n_ok = int(np.isfinite(items.topic_log_pop).sum())
    keys = 0.7 * items.topic_log_pop + rng.gumbel(size=(num_users, t))
    order = np.argsort(-keys, axis=1)  # empty topics (-inf) last
    n_like = np.clip(rng.integers(LIKES_RANGE[0], LIKES_RANGE[1] + 1, num_users),
                     1, max(1, n_ok // 3))
    n_dis = np.minimum(rng.integers(DISLIKES_RANGE[0], DISLIKES_RANGE[1] + 1, num_users),
                       np.maximum(n_ok - n_like - 1, 0))
    pos = np.arange(t)[None, :]
    ranked = np.where(pos < n_like[:, None], 1, np.where(pos < (n_like + n_dis)[:, None], -1, 0))
    state = np.zeros((num_users, t), dtype=np.int8)
    np.put_along_axis(state, order, ranked.astype(np.int8), axis=1)
    return state


def _degrees(n_events: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """user_active_degree, more active users more often full/high active."""
    q = (np.argsort(np.argsort(n_events, kind="stable")) + 0.5) / len(n_events)  # in (0, 1)
    one = np.ones_like(q)
    # weights of DEGREES (full, high, middle, UNKNOWN) given the activity quantile q
    w = np.stack([0.1 + 0.6 * q, 0.3 * one, 0.1 + 0.5 * (1 - q), 0.15 * one], axis=1)
    cum = np.cumsum(w / w.sum(axis=1, keepdims=True), axis=1)
    pick = (rng.random(len(q))[:, None] > cum).sum(axis=1)
    return np.asarray(DEGREES, dtype=object)[np.minimum(pick, len(DEGREES) - 1)]


def make_users(cfg: SimulateConfig, items: Items, rng: np.random.Generator) -> Users:
    n_events = _event_counts(cfg, rng)
    state = _interest_sets(items, cfg.num_users, rng)
    taste = rng.standard_normal((cfg.num_users, LATENT_DIM))
    degree = _degrees(n_events, rng)
    strength = np.array([INFLUENCE_BY_DEGREE[d] for d in degree], dtype=np.float64)
    return Users(n_events, state, taste, strength, degree)


def _binned(values: np.ndarray, bins: tuple[list[int], list[str]]) -> np.ndarray:
    edges, labels = bins
    idx = np.searchsorted(np.asarray(edges), values, side="right") - 1
    return np.asarray(labels, dtype=object)[np.clip(idx, 0, len(labels) - 1)]


def user_features_frame(users: Users, rng: np.random.Generator) -> pd.DataFrame:
    u = len(users.n_events)
    follow = np.floor(rng.lognormal(3.0, 1.5, u) * (rng.random(u) > 0.1)).astype(np.int64)
    fans = np.floor(rng.lognormal(1.5, 2.0, u) * (rng.random(u) > 0.2)).astype(np.int64)
    friend = np.floor(rng.lognormal(1.0, 1.3, u) * (rng.random(u) > 0.3)).astype(np.int64)
    register = rng.integers(8, 2000, u).astype(np.int64)
    cols: dict[str, Any] = {
        "user_id": np.arange(u, dtype=np.int64),
        "user_active_degree": users.degree,
        "is_lowactive_period": (rng.random(u) < 0.05).astype(np.int64),
        "is_live_streamer": (rng.random(u) < 0.03).astype(np.int64),
        "is_video_author": (rng.random(u) < 0.3).astype(np.int64),
        "follow_user_num": follow,
        "follow_user_num_range": _binned(follow, FOLLOW_BINS),
        "fans_user_num": fans,
        "fans_user_num_range": _binned(fans, FANS_BINS),
        "friend_user_num": friend,
        "friend_user_num_range": _binned(friend, FRIEND_BINS),
        "register_days": register,
        "register_days_range": _binned(register, REGISTER_BINS),
    }
    for j, card in enumerate(ONEHOT_CARDINALITY):
        p = _topic_popularity(card)  # skewed, like KuaiRec's one-hot features
        cols[f"onehot_feat{j}"] = rng.choice(card, size=u, p=p).astype(np.int64)
    return pd.DataFrame(cols)


# --------------------------------------------------------------------------- events


def _swap_likes(state: np.ndarray, rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One liked topic becomes neutral and one neutral topic liked; returns swapped rows."""
    st = state[rows]
    r = rng.random(st.shape)
    liked_score = np.where(st == 1, r, -1.0)
    neutral_score = np.where(st == 0, r, -1.0)
    liked, neutral = liked_score.argmax(axis=1), neutral_score.argmax(axis=1)
    ok = (liked_score.max(axis=1) >= 0) & (neutral_score.max(axis=1) >= 0)
    rows, liked, neutral = rows[ok], liked[ok], neutral[ok]
    state[rows, liked] = 0
    state[rows, neutral] = 1
    return rows


def _lookup(table: dict[int, float]) -> np.ndarray:
    return np.array([table[-1], table[0], table[1]], dtype=np.float64)


def run_events(
    items: Items,
    users: Users,
    bias: np.ndarray,
    drift: float,
    rng: np.random.Generator,
    progress: bool = False,
) -> Events:
    """Simulates every user's timeline, all users in lock-step (one numpy pass per step).

    `bias` is per user (the pilot calibration runs several biases side by side).
    """
    n = users.n_events
    order = np.argsort(-n, kind="stable")  # row r of the working arrays = user order[r]
    n_sorted = n[order]
    offsets = np.concatenate([[0], np.cumsum(n)[:-1]])[order]
    state = users.state[order].copy()
    taste, strength, b = users.taste[order], users.strength[order], bias[order]
    h = np.zeros((len(n), LATENT_DIM))
    total = int(n.sum())
    out_item = np.empty(total, np.int64)
    out_play = np.empty(total, np.int64)
    out_state = np.empty(total, np.int8)
    out_aff = np.empty(total, np.float32)
    out_infl = np.empty(total, np.float32)
    swaps = np.zeros(len(n), np.int64)
    reco, aff_table = _lookup(RECO_LOGIT), _lookup(AFFINITY)
    pop_cum = np.cumsum(items.topic_popularity * np.isfinite(items.topic_log_pop))
    p_swap = drift / DRIFT_EVENTS
    active = np.searchsorted(-n_sorted, -np.arange(int(n_sorted[0]) if len(n) else 0), "left")
    t0, next_log = time.time(), 0.25
    for s, k in enumerate(active.tolist()):
        if p_swap > 0:
            rows = np.flatnonzero(rng.random(k) < p_swap)
            if len(rows):
                swaps[_swap_likes(state, rows, rng)] += 1
        st = state[:k]
        logits = reco[st + 1] + items.topic_log_pop + rng.gumbel(size=st.shape)
        topic = logits.argmax(axis=1)
        explore = rng.random(k) < EXPLORE
        topic[explore] = np.searchsorted(pop_cum, rng.random(int(explore.sum())) * pop_cum[-1])
        item = items.sample(topic, rng.random(k))
        tstate = st[np.arange(k), topic]
        v = items.vec[item]
        aff = (aff_table[tstate + 1] + items.quality[item]
               + PERSONAL * np.einsum("kd,kd->k", taste[:k], items.residual[item]))
        infl = strength[:k] * np.einsum("kd,kd->k", h[:k], v)
        z = b[:k] + aff + infl + NOISE_SD * rng.standard_normal(k)
        dur = items.duration[item]
        play = np.rint(np.exp(np.minimum(z, np.log(MAX_WATCH_RATIO))) * dur).astype(np.int64)
        watched = np.flatnonzero(play > WATCHED_RATIO * dur)
        h[watched] = (1.0 - INFLUENCE_DECAY) * h[watched] + INFLUENCE_DECAY * v[watched]
        pos = offsets[:k] + s
        out_item[pos], out_play[pos], out_state[pos] = item, play, tstate
        out_aff[pos], out_infl[pos] = aff, infl
        if progress and (s + 1) / len(active) >= next_log:
            logger.info("simulate: step %d/%d (%.1fs)", s + 1, len(active), time.time() - t0)
            next_log += 0.25
    user_swaps = np.zeros(len(n), np.int64)
    user_swaps[order] = swaps
    return Events(out_item, out_play, out_state, out_aff, out_infl, user_swaps)


# ---------------------------------------------------------------------- calibration


def _positive_share(events: Events, items: Items) -> np.ndarray:
    return events.play >= POSITIVE_RATIO * items.duration[events.item]


def _pilot_rates(
    items: Items, pilot: Users, grid: np.ndarray, drift: float, seed: np.random.SeedSequence
) -> np.ndarray:
    """Positive rate for each bias in `grid`, all grid points simulated side by side."""
    m, g = len(pilot.n_events), len(grid)
    rep = np.tile(np.arange(m), g)
    users = Users(pilot.n_events[rep], pilot.state[rep], pilot.taste[rep],
                  pilot.strength[rep], pilot.degree[rep])
    events = run_events(items, users, np.repeat(grid, m), drift, np.random.default_rng(seed))
    group = np.repeat(np.arange(g), m)[np.repeat(np.arange(m * g), users.n_events)]
    pos = np.bincount(group, weights=_positive_share(events, items), minlength=g)
    return pos / np.bincount(group, minlength=g)


def calibrate_bias(
    cfg: SimulateConfig, items: Items, users: Users, seed: np.random.SeedSequence
) -> float:
    """The bias whose pilot run gives `target_positive_rate` positives (watch_ratio >= 2)."""
    s_pick, s_coarse, s_fine = seed.spawn(3)
    u = len(users.n_events)
    idx = np.random.default_rng(s_pick).choice(u, size=min(u, PILOT_USERS), replace=False)
    pilot = users.take(np.sort(idx), PILOT_MAX_EVENTS)
    target = np.log(cfg.target_positive_rate / (1.0 - cfg.target_positive_rate))
    bias = 0.0
    for grid, s in ((np.linspace(-5.0, 2.0, 15), s_coarse), (np.linspace(-0.3, 0.3, 7), s_fine)):
        grid = grid + bias
        rates = np.clip(_pilot_rates(items, pilot, grid, cfg.drift, s), 1e-4, 1 - 1e-4)
        logit = np.maximum.accumulate(np.log(rates / (1.0 - rates)))
        bias = float(np.interp(target, logit + 1e-9 * np.arange(len(grid)), grid))
    return bias


# ----------------------------------------------------------------------- timestamps


def timestamps_ms(
    n_events: np.ndarray, play: np.ndarray, start_ms: int, rng: np.random.Generator
) -> np.ndarray:
    """Per-user non-decreasing event times (int ms): sessions spread over SPAN_DAYS."""
    total, u = len(play), len(n_events)
    offsets = np.concatenate([[0], np.cumsum(n_events)[:-1]])
    user = np.repeat(np.arange(u), n_events)
    first = np.zeros(total, bool)
    first[offsets] = True
    prev_play = np.concatenate([[0], play[:-1]])
    delta = prev_play + np.rint(rng.exponential(PAUSE_MEAN_MS, total)).astype(np.int64)
    tie = (rng.random(total) < TIE_RATE) & ~first
    new_session = first | ((rng.random(total) < 1.0 / SESSION_EVENTS) & ~tie)
    delta[tie | first] = 0
    busy = np.add.reduceat(delta, offsets)
    idle = np.maximum(SPAN_DAYS * 86_400_000 - busy, 0) * rng.uniform(0.3, 1.0, u)
    w = np.where(new_session, rng.exponential(1.0, total), 0.0)
    share = w / np.add.reduceat(w, offsets)[user]
    delta += np.floor(idle[user] * share).astype(np.int64)
    c = np.cumsum(delta)
    return start_ms + c - (c[offsets] - delta[offsets])[user]


def _time_columns(ts_ms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """KuaiRec's `time` ('2020-07-05 05:27:48.378') and `date` (20200705), Beijing time."""
    local = (ts_ms + LOCAL_UTC_OFFSET_MS).astype("datetime64[ms]")
    text = np.strings.replace(np.datetime_as_string(local, unit="ms"), "T", " ")
    days, inv = np.unique(local.astype("datetime64[D]"), return_inverse=True)
    day_int = np.array([int(str(d).replace("-", "")) for d in days], dtype=np.int64)
    return text.astype(object), day_int[inv.ravel()]


# ------------------------------------------------------------------------ simulate


def _big_matrix(
    items: Items, users: Users, events: Events, ts_ms: np.ndarray
) -> pd.DataFrame:
    duration = items.duration[events.item]
    time_text, date = _time_columns(ts_ms)
    return pd.DataFrame({
        "user_id": np.repeat(np.arange(len(users.n_events), dtype=np.int64), users.n_events),
        "video_id": events.item,
        "play_duration": events.play,
        "video_duration": duration,
        "time": time_text,
        "date": date,
        "timestamp": ts_ms / 1000.0,
        "watch_ratio": events.play / duration,
    })


def _item_categories(items: Items) -> pd.DataFrame:
    return pd.DataFrame({
        "video_id": np.arange(len(items.topic), dtype=np.int64),
        "feat": np.array([str(t) for t in items.tags], dtype=object),
    })


def simulate_with_latent(cfg: SimulateConfig) -> tuple[dict[str, pd.DataFrame], Latent]:
    """The three KuaiRec frames plus the latent ground truth that generated them."""
    t0 = time.time()
    s_items, s_users, s_profile, s_pilot, s_events, s_time = (
        np.random.SeedSequence(cfg.seed).spawn(6))
    items = make_items(cfg, np.random.default_rng(s_items))
    users = make_users(cfg, items, np.random.default_rng(s_users))
    total = int(users.n_events.sum())
    big = total >= 200_000
    bias = calibrate_bias(cfg, items, users, s_pilot)
    if big:
        logger.info("simulate: %d users, %d events, bias %.3f (%.1fs)",
                    cfg.num_users, total, bias, time.time() - t0)
    events = run_events(items, users, np.full(cfg.num_users, bias), cfg.drift,
                        np.random.default_rng(s_events), progress=big)
    ts = timestamps_ms(users.n_events, events.play, int(round(cfg.start_timestamp * 1000)),
                       np.random.default_rng(s_time))
    frames = {
        "big_matrix": _big_matrix(items, users, events, ts),
        "user_features": user_features_frame(users, np.random.default_rng(s_profile)),
        "item_categories": _item_categories(items),
    }
    if big:
        logger.info("simulate: frames built (%.1fs)", time.time() - t0)
    counts = np.bincount(items.topic, minlength=cfg.num_topics)
    latent = Latent(bias, items.topic, counts / counts.sum(), items.topic_popularity,
                    users.strength, users.degree, users.state, events.swaps,
                    events.topic_state, events.affinity, events.influence)
    return frames, latent


def simulate(cfg: SimulateConfig) -> dict[str, pd.DataFrame]:
    """Frames `big_matrix`, `user_features`, `item_categories` in KuaiRec's layout."""
    return simulate_with_latent(cfg)[0]


def write(frames: dict[str, pd.DataFrame], out_dir: str | os.PathLike[str]) -> None:
    """Writes each frame as KuaiRec's CSV file into `out_dir` (created if missing)."""
    os.makedirs(out_dir, exist_ok=True)
    for key, name in FILES.items():
        path = os.path.join(out_dir, name)
        tmp = path + ".tmp"
        frames[key].to_csv(tmp, index=False)
        os.replace(tmp, path)


def simulate_to_dir(cfg: SimulateConfig, out_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Simulates, writes the CSV files and returns small stats."""
    frames = simulate(cfg)
    t0 = time.time()
    write(frames, out_dir)
    logger.info("simulate: wrote %s (%.1fs)", out_dir, time.time() - t0)
    big = frames["big_matrix"]
    return {
        "events": len(big),
        "users": len(frames["user_features"]),
        "items": len(frames["item_categories"]),
        "positive_rate": float((big["watch_ratio"] >= POSITIVE_RATIO).mean()),
    }


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit code (2 with one line for a config mistake)."""
    parser = argparse.ArgumentParser(
        prog="python -m tfnegseq.data.simulate",
        description="Writes a synthetic short-video log in the KuaiRec 2.0 layout.")
    add_config_args(parser)
    parser.add_argument("--out", default="", help="output directory (default: source.path)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = args.out or cfg.source.path
    if not out:
        parser.error("no output directory: pass --out or set source.path in the config")
    t0 = time.time()
    stats = simulate_to_dir(cfg.simulate, out)
    print(f"simulate: {stats['events']} events, {stats['users']} users, {stats['items']} items, "
          f"positive_rate={stats['positive_rate']:.4f} -> {out} ({time.time() - t0:.1f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
