"""Shared helpers of the Beam job's tests: tiny KuaiRec-layout logs and configs."""

import collections
import dataclasses
import glob
import json
import os

import numpy as np
import tensorflow as tf

from tfnegseq.config import config_from_dict

HEADER = "user_id,video_id,play_duration,video_duration,time,date,timestamp,watch_ratio"


def kuairec_row(user, item, ts, ratio, duration=10000):
    play = int(round(ratio * duration))
    return f"{user},{item},{play},{duration},2020-07-05 00:00:00.000,20200705,{ts:.3f},{play / duration}"


def write_log(path, rng, users=12, per_user=40):
    """A clean random log; returns the list of (user, item, ts_ms, label) rows."""
    rows, lines = [], [HEADER]
    for u in range(users):
        ts = 1593878400.0 + np.sort(rng.integers(0, 3000, per_user)).astype(float)
        for t in ts:
            item = int(rng.integers(0, 30))
            ratio = float(rng.choice([0.3, 1.1, 2.5]))
            lines.append(kuairec_row(u, item, t, ratio))
            rows.append((u, item, int(round(t * 1000)), int(ratio >= 2.0)))
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "big_matrix.csv"), "w") as f:
        f.write("\n".join(lines) + "\n")
    return rows


def make_cfg(src, out, **samples):
    return config_from_dict({
        "source": {"kind": "kuairec", "path": str(src)},
        "samples": {"max_history": 5, **samples},
        "model": {"sequence_length": 10},
        "split": {"kind": "user", "valid_fraction": 0.25, "test_fraction": 0.25},
        "output": {"dir": str(out), "shards": 2},
    })


def sequential_cfg(raw):
    """A job config building `samples.task: sequential` samples.

    Config validation ties `samples.task` to the model kind's, and no kind trains on
    sequential samples yet, so the task is set after loading; the Beam job reads only
    source, rules, samples, split and output.
    """
    samples = raw.pop("samples")
    cfg = config_from_dict(raw)
    cfg.samples = dataclasses.replace(cfg.samples, **samples)
    return cfg


def read_split(out, split):
    files = sorted(glob.glob(os.path.join(out, split, "*.tfrecord.gz")))
    recs = []
    for r in tf.data.TFRecordDataset(files, compression_type="GZIP"):
        ex = tf.train.Example.FromString(r.numpy())
        recs.append({k: list(v.int64_list.value) or list(v.float_list.value)
                     for k, v in ex.features.feature.items()})
    return recs


T0 = 1593878400.0  # seconds


def write_rows(path, rows):
    """A KuaiRec log of `(user, item, seconds after T0, watch_ratio)` rows, in this order."""
    os.makedirs(path, exist_ok=True)
    lines = [HEADER] + [kuairec_row(u, i, T0 + t, r) for u, i, t, r in rows]
    with open(os.path.join(path, "big_matrix.csv"), "w") as f:
        f.write("\n".join(lines) + "\n")


def read_tsv(path):
    return {int(a): int(b) for a, b in (ln.split("\t") for ln in open(path).read().splitlines())}



def read_dead_letters(out):
    """The job's dead letters (dicts: file, line, raw, reason) from `out/dead_letters`."""
    recs = []
    for path in sorted(glob.glob(os.path.join(out, "dead_letters", "*.jsonl"))):
        with open(path, encoding="utf-8") as f:
            recs += [json.loads(ln) for ln in f if ln.strip()]
    return recs


def split_multiset(out, split):
    """A split's examples as a multiset (Counter) of canonical serializations: each
    record parsed and serialized again deterministically (sorted feature keys), so two
    runs compare equal whatever the order of records and of features within them."""
    files = sorted(glob.glob(os.path.join(out, split, "*.tfrecord.gz")))
    return collections.Counter(
        tf.train.Example.FromString(r.numpy()).SerializeToString(deterministic=True)
        for r in tf.data.TFRecordDataset(files, compression_type="GZIP")
    )
