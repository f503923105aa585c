"""The TAAC-2025 `seq.jsonl` adapter: records to events, the profile and item feature
dicts to side tables, malformed lines and records to dead letters, and the Beam job
building CTR samples from it. The file is written here from the organisers' record
layout `[user_id, item_id, user_feature, item_feature, action_type, timestamp]`."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import REPO
from tfnegseq.config import SourceConfig, load_config
from tfnegseq.data.events import EventChunk
from tfnegseq.data.sources import make_source

T0 = 1_746_000_000  # 2025-04-30, seconds


def profile(user, ts=T0, **feats):
    return [user, None, {"103": 7, "106": [2, 5], **feats}, None, None, ts]


def item(user, item_id, action, ts, **feats):
    return [user, item_id, None, {"100": item_id % 3 + 1, **feats}, action, ts]


def write(path, lines):
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))


def read_all(src):
    chunks, dead = [], []
    for i, p in enumerate(src.log_files()):
        for chunk, d in src.read_chunks(i, p, chunk_rows=3):
            chunks.append(chunk)
            dead.extend(d)
    return EventChunk.concat(chunks), dead


def test_records_become_events_and_bad_ones_dead_letters(tmp_path):
    write(tmp_path / "seq.jsonl", [
        [profile(1), item(1, 10, 0, T0 + 1), item(1, 11, 1, T0 + 2), item(1, 11, 2, T0 + 9)],
        "{not json",
        [item(2, 12, 0, T0 + 5), profile(2, **{"103": 4}), [2, 13, None, None, "x", T0 + 6],
         [2, 14, None]],
        {"user": 3},
        [item(3, 10, 1, T0 + 7)],
    ])
    ev, dead = read_all(make_source(SourceConfig(kind="taac", path=str(tmp_path))))
    order = np.lexsort((ev.item_id, ev.timestamp))
    assert ev.user_id[order].tolist() == [1, 1, 2, 3, 1]
    assert ev.item_id[order].tolist() == [10, 11, 12, 10, 11]
    assert ev.value[order].tolist() == [0, 1, 0, 1, 2]  # action_type
    assert ev.timestamp[order].tolist() == [1000 * (T0 + t) for t in (1, 2, 5, 7, 9)]
    assert ev.line[order].tolist() == [1, 1, 3, 5, 1]
    reasons = {(d.line, d.reason.split(":")[0]) for d in dead}
    assert reasons == {(2, "not JSON"), (3, "record 2"), (3, "record 3"),
                       (4, "not a JSON list of records")}
    assert any("action_type: expected an integer >= 0, found 'x'" in d.reason for d in dead)
    assert all(d.file.endswith("seq.jsonl") for d in dead)


def test_side_tables_from_the_feature_dicts(tmp_path):
    write(tmp_path / "seq.jsonl", [
        [profile(1), item(1, 10, 0, T0 + 1, **{"121": 901}), item(1, 10, 1, T0 + 2)],
        [profile(2, **{"103": 4}), item(2, 11, 0, T0 + 3)],
    ])
    src = make_source(SourceConfig(kind="taac", path=str(tmp_path)))
    assert src.user_profiles(["103"]) == {1: {"103": 7}, 2: {"103": 4}}
    # an item's first feature dict wins; a key it lacks is 0 (missing)
    assert src.item_features(["100", "121"]) == {10: {"100": 2, "121": 901},
                                                 11: {"100": 3, "121": 0}}
    with pytest.raises(ValueError, match=r"seq.jsonl:1: user feature '106' is a list of ids"):
        src.user_profiles(["106"])
    with pytest.raises(ValueError, match=r"unknown item feature '999'.*available: \['100', '121'\]"):
        src.check_side_features([], ["999"])


def test_the_beam_job_builds_ctr_samples_from_seq_jsonl(tmp_path):
    from tfnegseq.data import job

    rng = np.random.default_rng(0)
    lines = []
    for user in range(1, 41):
        recs = [profile(user, **{"103": int(user % 5) + 1})]
        for k in range(30):
            action = int(rng.random() < 0.3)
            recs.append(item(user, int(rng.integers(1, 60)), action, T0 + 3600 * k + user))
        lines.append(recs)
    write(tmp_path / "seq.jsonl", lines + ["broken"])
    cfg = load_config(REPO / "configs" / "taac.yaml", [
        f"source.path={tmp_path}", f"output.dir={tmp_path}/samples", "samples.max_history=10",
        "model.sequence_length=10", "samples.user_features=['103']",
        "samples.item_features=['100']", "output.shards=1"])
    stats = job.run(cfg)
    clicks = sum(r[4] for recs in lines for r in recs if r[1] is not None)
    assert stats["counters"]["events_read"] == 40 * 30 == stats["total_samples"]
    assert stats["dead_letters"] == 1  # the "broken" line
    assert stats["vocab_sizes"]["user_103"] == 5 and stats["vocab_sizes"]["user_id"] == 40
    counts = json.loads((tmp_path / "samples" / "_stats.json").read_text())
    assert sum(counts["positives"].values()) == clicks  # label = action_type >= 1
