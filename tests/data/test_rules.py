"""Label / polarity rules and their presets."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tfnegseq.config import RulesConfig, SourceConfig
from tfnegseq.data.events import EventChunk
from tfnegseq.data.rules import KUAIREC_RULES, MOVIELENS_RULES, SINE_RULES, apply_rules
from tfnegseq.data.sources import make_source


def _chunk(**columns: list[float]) -> EventChunk:
    n = len(next(iter(columns.values())))
    r = np.arange(n)
    return EventChunk(r, r + 100, r * 1000, np.zeros(n), np.zeros(n), r + 1, columns)


def test_kuairec_rules():
    c = apply_rules(_chunk(watch_ratio=[0.0, 1.99, 2.0, 5.0, np.nan]), KUAIREC_RULES)
    np.testing.assert_array_equal(c.polarity, [-1, -1, 1, 1, 0])  # NaN matches nothing
    np.testing.assert_array_equal(c.label, [0, 0, 1, 1, 0])
    assert c.label.dtype == np.int8 and c.polarity.dtype == np.int8


def test_sine_rules():
    # (play ms, ratio): skip < 3 s -> negative; > 50% -> positive; neither -> neutral;
    # a short video watched past half within 3 s is positive (rules are disjoint).
    play = [1000, 2999, 3000, 20000, 2500, 9000]
    ratio = [0.1, 0.5, 0.2, 0.9, 0.8, 0.5]
    c = apply_rules(_chunk(play_duration=play, watch_ratio=ratio), SINE_RULES)
    np.testing.assert_array_equal(c.polarity, [-1, -1, 0, 1, 1, 0])
    np.testing.assert_array_equal(c.label, [0, 0, 0, 1, 1, 0])  # label = positive


def test_movielens_rules():
    c = apply_rules(_chunk(rating=[1, 2, 3, 4, 5]), MOVIELENS_RULES)
    np.testing.assert_array_equal(c.polarity, [-1, -1, 0, 1, 1])
    np.testing.assert_array_equal(c.label, [0, 0, 0, 1, 1])


def test_and_semantics_core_columns_and_label():
    rules = RulesConfig(label=["value > 0"], positive=["rating >= 4", "timestamp >= 2000"],
                        negative=[])
    c = _chunk(rating=[5, 5, 5, 1])
    c.value[:] = [1, 0, 1, 0]
    out = apply_rules(c, rules)
    np.testing.assert_array_equal(out.polarity, [0, 0, 1, 0])
    np.testing.assert_array_equal(out.label, [1, 0, 1, 0])
    assert c.label is None  # the input chunk is not modified


def test_missing_column_error():
    with pytest.raises(ValueError) as e:
        apply_rules(_chunk(rating=[1.0]), KUAIREC_RULES)
    msg = str(e.value)
    assert "rules.positive[0]" in msg and "'watch_ratio'" in msg and "'rating'" in msg


def test_overlapping_rules_error():
    rules = RulesConfig(label=[], positive=["rating >= 3"], negative=["rating <= 3"])
    with pytest.raises(ValueError, match=r"rules.positive \['rating >= 3'\] and rules.negative"):
        apply_rules(_chunk(rating=[1, 3, 5]), rules)


def test_bad_rule_text():
    with pytest.raises(ValueError, match=r"rules.negative\[0\]"):
        apply_rules(_chunk(rating=[1.0]), RulesConfig(positive=["rating > 1"], negative=["x ~ 1"]))


def test_movielens_100k_rule_counts(ml100k_dir):
    src = make_source(SourceConfig(kind="movielens", path=str(ml100k_dir)))
    path = src.log_files()[0]
    parts = [apply_rules(c, MOVIELENS_RULES) for c, _ in src.read_chunks(0, path, 40_000)]
    ev = EventChunk.concat(parts)
    rating = pd.read_csv(ml100k_dir / "u.data", sep="\t", header=None)[2].to_numpy()
    assert int((ev.polarity == 1).sum()) == int((rating >= 4).sum())
    assert int((ev.polarity == -1).sum()) == int((rating <= 2).sum())
    assert int((ev.polarity == 0).sum()) == int((rating == 3).sum())
    assert int(ev.label.sum()) == int((rating >= 4).sum())
