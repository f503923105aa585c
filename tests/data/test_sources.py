"""Source adapters on small files in the published layouts (and the real MovieLens-100K)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from tfnegseq.config import GenericColumns, SourceConfig
from tfnegseq.data.events import EventChunk
from tfnegseq.data.sources import make_source
from tfnegseq.schema import PAD_ID, fingerprint64

KUAIREC_HEADER = "user_id,video_id,play_duration,video_duration,time,date,timestamp,watch_ratio"
KUAIRAND_HEADER = (
    "user_id,video_id,date,hourmin,time_ms,is_click,is_like,is_follow,is_comment,is_forward,"
    "is_hate,long_view,play_time_ms,duration_ms,profile_stay_time,comment_stay_time,"
    "is_profile_enter,is_rand,tab"
)
USER_FEATURES_HEADER = (
    "user_id,user_active_degree,is_lowactive_period,is_live_streamer,is_video_author,"
    "follow_user_num,follow_user_num_range,fans_user_num,fans_user_num_range,friend_user_num,"
    "friend_user_num_range,register_days,register_days_range,"
    + ",".join(f"onehot_feat{i}" for i in range(18))
)
T = "2020-07-05 05:27:48.378,20200705"


def _write(path, lines: list[str], encoding: str = "utf-8") -> None:
    path.write_text("".join(line + "\n" for line in lines), encoding=encoding)


def _read_all(src, chunk_rows: int = 50_000):
    chunks, dead = [], []
    for i, path in enumerate(src.log_files()):
        for chunk, d in src.read_chunks(i, path, chunk_rows):
            chunks.append(chunk)
            dead.extend(d)
    return EventChunk.concat(chunks), dead


def _kuairec(tmp_path, rows: list[str]):
    _write(tmp_path / "big_matrix.csv", [KUAIREC_HEADER, *rows])
    return make_source(SourceConfig(kind="kuairec", path=str(tmp_path)))


# ------------------------------------------------------------------------- kuairec


def test_kuairec_good_rows(tmp_path):
    src = _kuairec(tmp_path, [
        f"0,10,5000,10000,{T},1593898068.378,0.5",
        f"0,11,30000,10000,{T},1593898070.001,3.0",
        f"7,10,100,10000,{T},1593898000,0.01",
    ])
    assert src.log_files() == [str(tmp_path / "big_matrix.csv")]
    ev, dead = _read_all(src)
    assert dead == []
    np.testing.assert_array_equal(ev.user_id, [0, 0, 7])
    np.testing.assert_array_equal(ev.item_id, [10, 11, 10])
    np.testing.assert_array_equal(ev.timestamp, [1593898068378, 1593898070001, 1593898000000])
    np.testing.assert_allclose(ev.value, [0.5, 3.0, 0.01])
    np.testing.assert_array_equal(ev.line, [2, 3, 4])  # header is line 1
    assert ev.timestamp.dtype == np.int64 and ev.file_index.dtype == np.int32
    assert sorted(ev.columns) == ["play_duration", "video_duration", "watch_ratio"]
    np.testing.assert_allclose(ev.columns["play_duration"], [5000, 30000, 100])


CORRUPT = [
    (True, f"0,10,5000,10000,{T},1593898068.378,0.5"),
    ("expected 8 fields, found 7", f"0,11,5000,10000,{T},1593898069"),
    (True, f"1,12,5000,10000,{T},1593898070,2.5"),
    ("user_id: not a non-negative integer: 'abc'", f"abc,12,5000,10000,{T},1593898071,0.5"),
    ("timestamp: missing value", "1,13,5000,10000,,,,0.5"),
    ("watch_ratio: not a number: 'nan'", f"1,14,5000,10000,{T},1593898072,nan"),
    ("watch_ratio: not finite: 'inf'", f"1,15,5000,10000,{T},1593898073,inf"),
    ("play_duration: not a number: '12x'", f"1,16,12x,10000,{T},1593898074,0.5"),
    ("expected 8 fields, found 9", f"1,17,5000,10000,{T},1593898075,0.5,9"),
    ("blank line", ""),
    ("user_id: not a non-negative integer: '-3'", f"-3,18,5000,10000,{T},1593898076,0.5"),
    ("timestamp: timestamp out of range", f"2,19,5000,10000,{T},1e300,0.5"),
    (True, f"2,20,5000,10000,{T},1593898077,1.5"),
]


@pytest.mark.parametrize("chunk_rows", [1, 3, 50_000])
def test_kuairec_dead_letters(tmp_path, chunk_rows):
    # two trailing blank lines are skipped, not dead letters
    src = _kuairec(tmp_path, [r for _, r in CORRUPT] + ["", "  "])
    ev, dead = _read_all(src, chunk_rows)
    good = [i + 2 for i, (ok, _) in enumerate(CORRUPT) if ok is True]
    np.testing.assert_array_equal(ev.line, good)
    np.testing.assert_array_equal(ev.item_id, [10, 12, 20])
    expected = [(i + 2, r, ok) for i, (ok, r) in enumerate(CORRUPT) if ok is not True]
    assert [(d.line, d.raw, d.reason) for d in dead] == expected
    assert all(d.file == str(tmp_path / "big_matrix.csv") for d in dead)
    assert len(ev) + len(dead) == len(CORRUPT)


def test_kuairec_one_chunk_keeps_good_rows(tmp_path):
    src = _kuairec(tmp_path, [r for _, r in CORRUPT])
    out = list(src.read_chunks(3, src.log_files()[0]))
    assert len(out) == 1
    chunk, dead = out[0]
    assert len(chunk) == 3 and len(dead) == 10
    assert set(chunk.file_index.tolist()) == {3}


ODD_TOKENS = [" 12", "+12", "1e3", "1_0", "0x1A", "12.0", "", "nan", "NA", "inf", " 1.5 ",
              "1.5.", "-0", "9223372036854775807", "9223372036854775808", "TRUE", "None", ".5"]


def test_row_fate_does_not_depend_on_neighbours(tmp_path):
    """Each line alone (fast path) and all in one chunk (slow path) give the same result."""
    rows = []
    for t in ODD_TOKENS:
        rows += [f"{t},10,5000,10000,{T},1593898068.378,0.5",
                 f"1,10,5000,10000,{T},1593898068.378,{t}",
                 f"1,10,{t},10000,{T},{t},0.5"]
    src = _kuairec(tmp_path, rows)
    (a, da), (b, db) = _read_all(src, 1), _read_all(src, 50_000)
    assert len(b) > 0 and len(db) > 0
    for name in ("line", "user_id", "timestamp", "value"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert [(d.line, d.reason) for d in da] == [(d.line, d.reason) for d in db]


def test_large_chunk_locates_bad_lines(tmp_path):
    """Unparsable values in a 5000-line chunk: only those lines are dropped."""
    bad = {7: "x", 2500: "1.2.3", 4999: "abc"}
    rows = [f"{i},{bad.get(i, i % 50)},1,2,{T},{1593898068 + i},0.5" for i in range(5000)]
    ev, dead = _read_all(_kuairec(tmp_path, rows))
    keep = np.array([i for i in range(5000) if i not in bad])
    np.testing.assert_array_equal(ev.user_id, keep)
    np.testing.assert_array_equal(ev.line, keep + 2)
    np.testing.assert_array_equal(ev.timestamp, (1593898068 + keep) * 1000)
    assert [(d.line, d.reason) for d in dead] == [
        (i + 2, f"video_id: not a non-negative integer: {v!r}") for i, v in bad.items()]


def test_kuairec_missing_column_and_extra_columns(tmp_path):
    _write(tmp_path / "big_matrix.csv", ["user_id,video_id,timestamp", "1,2,3"])
    src = make_source(SourceConfig(kind="kuairec", path=str(tmp_path)))
    with pytest.raises(ValueError, match="missing column.*watch_ratio"):
        next(src.read_chunks(0, src.log_files()[0]))
    src = _kuairec(tmp_path, [f"0,10,5000,10000,{T},1593898068.378,0.5"])
    src.cfg.extra_columns = ["date", "nope"]
    ev, _ = _read_all(src)
    np.testing.assert_array_equal(ev.columns["date"], [20200705])
    assert "nope" not in ev.columns


def test_kuairec_profiles_and_categories(tmp_path):
    onehot = ",".join(["1"] * 17)
    _write(tmp_path / "user_features.csv", [
        USER_FEATURES_HEADER,
        f"0,full_active,0,0,0,5,\"(0,10]\",0,0,0,0,100,\"(90,180]\",{onehot},",
        f"3,UNKNOWN,1,0,0,50,\"(10,50]\",3,\"[1,10)\",1,\"[1,5)\",10,\"(0,30]\",{onehot},2",
    ])
    _write(tmp_path / "item_categories.csv",
           ["video_id,feat", '10,"[27, 9]"', '11,"[3]"', '12,"[]"'])
    src = make_source(SourceConfig(kind="kuairec", path=str(tmp_path)))
    users = src.user_profiles(["user_active_degree", "follow_user_num_range", "register_days",
                               "onehot_feat17"])
    assert users[0] == {
        "user_active_degree": fingerprint64("full_active"),
        "follow_user_num_range": fingerprint64("(0,10]"),
        "register_days": 100,
        "onehot_feat17": PAD_ID,
    }
    assert users[3]["onehot_feat17"] == 2
    assert src.user_profiles([]) == {}
    with pytest.raises(ValueError, match=r"'age'.*user_features\.csv.*user_active_degree"):
        src.user_profiles(["age"])
    items = src.item_features(["category"])
    assert items == {10: {"category": 27}, 11: {"category": 3}, 12: {"category": PAD_ID}}
    with pytest.raises(ValueError, match=r"'genre'.*item_categories\.csv.*category"):
        src.item_features(["genre"])


def test_remote_paths_use_gfile(tmp_path):
    """Paths with `://` go through tf.io.gfile (file:// stands in for gs:// here)."""
    _kuairec(tmp_path, [f"0,10,5000,10000,{T},1593898068.378,0.5"])
    src = make_source(SourceConfig(kind="kuairec", path=f"file://{tmp_path}"))
    assert src.log_files() == [f"file://{tmp_path}/big_matrix.csv"]
    ev, dead = _read_all(src)
    assert len(ev) == 1 and not dead and ev.timestamp[0] == 1593898068378


# ------------------------------------------------------------------------ kuairand


def _kuairand_row(user, item, time_ms, click, play, dur, hate=0):
    return (f"{user},{item},20220408,1015,{time_ms},{click},0,0,0,0,{hate},1,{play},{dur},"
            "0,0,0,0,1")


def test_kuairand(tmp_path):
    _write(tmp_path / "log_standard_4_08_to_4_21_1k.csv", [
        KUAIRAND_HEADER,
        _kuairand_row(1, 100, 1649412412946, 1, 5000, 10000),
        _kuairand_row(2, 101, 1649412412000, 0, 300, 0, hate=1),
    ])
    _write(tmp_path / "log_standard_4_22_to_5_08_1k.csv", [
        KUAIRAND_HEADER, _kuairand_row(1, 102, 1650600000000, 0, 1000, 4000),
    ])
    _write(tmp_path / "user_features_1k.csv", [
        USER_FEATURES_HEADER,
        '1,high_active,0,0,0,5,"(0,10]",0,0,0,0,100,"(90,180]",' + ",".join(["0"] * 18),
    ])
    _write(tmp_path / "video_features_basic_1k.csv", [
        "video_id,author_id,video_type,upload_dt,upload_type,visible_status,video_duration,"
        "server_width,server_height,music_id,music_type,tag",
        '100,7,NORMAL,2022-04-08,ShortImport,public,10000.0,720,1280,0,9,"17,8"',
    ])
    src = make_source(SourceConfig(kind="kuairand", path=str(tmp_path)))
    files = src.log_files()
    assert [f.rsplit("/", 1)[1] for f in files] == [
        "log_standard_4_08_to_4_21_1k.csv", "log_standard_4_22_to_5_08_1k.csv"]
    ev, dead = _read_all(src)
    assert dead == []
    np.testing.assert_array_equal(ev.timestamp, [1649412412946, 1649412412000, 1650600000000])
    np.testing.assert_array_equal(ev.file_index, [0, 0, 1])
    np.testing.assert_array_equal(ev.line, [2, 3, 2])
    np.testing.assert_array_equal(ev.value, [1, 0, 0])
    np.testing.assert_allclose(ev.columns["watch_ratio"], [0.5, 0.0, 0.25])  # duration 0 -> 0
    np.testing.assert_array_equal(ev.columns["is_hate"], [0, 1, 0])
    for c in ("is_click", "is_like", "long_view", "play_time_ms", "duration_ms"):
        assert c in ev.columns
    users = src.user_profiles(["user_active_degree", "register_days"])
    assert users == {1: {"user_active_degree": fingerprint64("high_active"), "register_days": 100}}
    items = src.item_features(["video_type", "video_duration", "tag", "category"])
    assert items[100] == {"video_type": fingerprint64("NORMAL"), "video_duration": 10000,
                          "tag": fingerprint64("17,8"), "category": 17}


# -------------------------------------------------------------------------- taobao


def test_taobao(tmp_path):
    _write(tmp_path / "UserBehavior.csv", [
        "1,100,5,pv,1511544070",
        "1,101,6,buy,1511544080",
        "2,100,5,jump,1511544090",
        "2,102,7,cart,1511544100",
        "2,101,9,fav,1511544110",
    ])
    src = make_source(SourceConfig(kind="taobao", path=str(tmp_path)))
    ev, dead = _read_all(src)
    np.testing.assert_array_equal(ev.value, [1, 4, 2, 3])
    np.testing.assert_array_equal(ev.timestamp, [1511544070000, 1511544080000, 1511544100000,
                                                 1511544110000])
    np.testing.assert_array_equal(ev.line, [1, 2, 4, 5])  # no header
    np.testing.assert_array_equal(ev.columns["is_buy"], [0, 1, 0, 0])
    np.testing.assert_array_equal(ev.columns["is_pv"], [1, 0, 0, 0])
    np.testing.assert_array_equal(ev.columns["category_id"], [5, 6, 7, 9])
    assert [(d.line, d.reason) for d in dead] == [
        (3, "behavior_type: unknown value 'jump'; expected one of ['buy', 'cart', 'fav', 'pv']")]
    # first occurrence wins (item 101 first seen with category 6)
    assert src.item_features(["category"]) == {
        100: {"category": 5}, 101: {"category": 6}, 102: {"category": 7}}
    with pytest.raises(ValueError, match="no user features"):
        src.user_profiles(["age"])


# ----------------------------------------------------------------------- movielens


def _movielens(tmp_path):
    _write(tmp_path / "u.data", ["196\t242\t3\t881250949", "186\t302\t3\t891717742",
                                 "x\t1\t1\t1"])
    _write(tmp_path / "u.user", ["196|49|M|writer|55105", "186|39|F|executive|T8H1N"])
    flags = ["|".join("1" if i == g else "0" for i in range(19)) for g in (1, 0)]
    _write(tmp_path / "u.item", [
        f"242|Kolya (1996)|24-Jan-1997||http://x|{flags[0]}",
        f"302|Café (1997)|||http://y|{flags[1]}",
    ], encoding="latin-1")
    return make_source(SourceConfig(kind="movielens", path=str(tmp_path)))


def test_movielens_small(tmp_path):
    src = _movielens(tmp_path)
    ev, dead = _read_all(src)
    np.testing.assert_array_equal(ev.user_id, [196, 186])
    np.testing.assert_array_equal(ev.timestamp, [881250949000, 891717742000])
    np.testing.assert_array_equal(ev.columns["rating"], [3, 3])
    np.testing.assert_array_equal(ev.line, [1, 2])
    assert [(d.line, d.reason) for d in dead] == [(3, "user_id: not a non-negative integer: 'x'")]
    users = src.user_profiles(["age", "gender", "zip"])
    assert users[196] == {"age": 49, "gender": fingerprint64("M"), "zip": 55105}
    assert users[186]["zip"] == fingerprint64("T8H1N")
    items = src.item_features(["genre", "year"])
    assert items == {242: {"genre": 1, "year": 1997}, 302: {"genre": 0, "year": PAD_ID}}


def test_movielens_100k(ml100k_dir):
    src = make_source(SourceConfig(kind="movielens", path=str(ml100k_dir)))
    ev, dead = _read_all(src, chunk_rows=30_000)
    raw = pd.read_csv(ml100k_dir / "u.data", sep="\t", header=None,
                      names=["user", "item", "rating", "ts"])
    assert len(ev) == 100_000 and dead == []
    assert len(np.unique(ev.user_id)) == 943 and len(np.unique(ev.item_id)) == 1682
    np.testing.assert_array_equal(ev.user_id, raw["user"])
    np.testing.assert_array_equal(ev.timestamp, raw["ts"].to_numpy() * 1000)
    np.testing.assert_array_equal(ev.line, np.arange(1, 100_001))
    assert len(src.user_profiles(["age", "occupation"])) == 943
    items = src.item_features(["genre", "year"])
    assert len(items) == 1682 and items[1] == {"genre": 3, "year": 1995}


# ------------------------------------------------------------------------- generic


def _generic(tmp_path, fmt, **kw):
    cols = GenericColumns(user_id="uid", item_id="iid", timestamp="ts", value="rating",
                          timestamp_unit="ms")
    return make_source(SourceConfig(kind="generic", path=str(tmp_path), format=fmt,
                                    columns=cols, **kw))


def test_generic_csv(tmp_path):
    _write(tmp_path / "b.csv", ["uid,iid,ts,rating,dwell", 'alice,42,1000,4,"1.5"',
                                "bob,x7,2000,,3", "42,42,3000,1,2"])
    _write(tmp_path / "a.csv", ["uid,iid,ts,rating,dwell", "carol,1,5,2,0"])
    (tmp_path / "ignored.txt").write_text("x")
    src = _generic(tmp_path, "csv", extra_columns=["dwell"])
    assert [f.rsplit("/", 1)[1] for f in src.log_files()] == ["a.csv", "b.csv"]
    ev, dead = _read_all(src)
    np.testing.assert_array_equal(ev.user_id, [fingerprint64("carol"), fingerprint64("alice"), 42])
    np.testing.assert_array_equal(ev.item_id, [1, 42, 42])
    np.testing.assert_array_equal(ev.timestamp, [5, 1000, 3000])
    np.testing.assert_array_equal(ev.columns["rating"], [2, 4, 1])
    np.testing.assert_array_equal(ev.columns["dwell"], [0, 1.5, 2])
    assert [(d.line, d.reason) for d in dead] == [(3, "rating: missing value")]


def test_generic_csv_no_header_tab(tmp_path):
    _write(tmp_path / "log.csv", ["u1\ti1\t1.5", "u2\ti2\t2"])
    cols = GenericColumns(user_id="0", item_id="1", timestamp="2", value="")
    src = make_source(SourceConfig(kind="generic", path=str(tmp_path), delimiter="\t",
                                   has_header=False, columns=cols))
    ev, dead = _read_all(src)
    assert not dead
    np.testing.assert_array_equal(ev.timestamp, [1500, 2000])
    np.testing.assert_array_equal(ev.value, [1.0, 1.0])
    np.testing.assert_array_equal(ev.line, [1, 2])


def test_generic_parquet(tmp_path):
    df = pd.DataFrame({"uid": ["alice", "7", None, "bob"], "iid": [1, 2, 3, 4],
                       "ts": [10, 20, 30, np.nan], "rating": [5.0, 3.0, 1.0, 2.0],
                       "unused": ["a", "b", "c", "d"]})
    df.to_parquet(tmp_path / "part-0.parquet")
    ev, dead = _read_all(_generic(tmp_path, "parquet"), chunk_rows=3)
    np.testing.assert_array_equal(ev.user_id, [fingerprint64("alice"), 7])
    np.testing.assert_array_equal(ev.line, [1, 2])
    np.testing.assert_array_equal(ev.value, [5, 3])
    assert [(d.line, d.reason) for d in dead] == [(3, "uid: missing value"),
                                                  (4, "ts: missing value")]
    assert json.loads(dead[0].raw) == {"uid": None, "iid": 3, "ts": 30.0, "rating": 1.0}


def test_generic_parquet_datetime_timestamps(tmp_path):
    ts = pd.to_datetime(["2020-07-05 00:00:01.5", None], utc=True)
    pd.DataFrame({"uid": [1, 2], "iid": [3, 4], "ts": ts, "rating": [1.0, 2.0]}).to_parquet(
        tmp_path / "a.parquet")
    ev, dead = _read_all(_generic(tmp_path, "parquet"))
    np.testing.assert_array_equal(ev.timestamp, [1593907201500])
    assert [(d.line, d.reason) for d in dead] == [(2, "ts: missing value")]


def test_generic_jsonl(tmp_path):
    _write(tmp_path / "log.jsonl", [
        json.dumps({"uid": "alice", "iid": 5, "ts": 100, "rating": 4}),
        "{not json",
        json.dumps({"uid": 3, "iid": "5", "ts": 200, "rating": "high"}),
        "[1, 2]",
        json.dumps({"uid": 3, "iid": 6, "ts": 300}),
        json.dumps({"uid": 3, "iid": 6, "ts": 400, "rating": 1}),
    ])
    ev, dead = _read_all(_generic(tmp_path, "jsonl"))
    np.testing.assert_array_equal(ev.user_id, [fingerprint64("alice"), 3])
    np.testing.assert_array_equal(ev.line, [1, 6])
    reasons = [(d.line, d.reason.split(":")[0]) for d in dead]
    assert reasons == [(2, "invalid JSON"), (3, "rating"), (4, "not a JSON object"), (5, "rating")]
    assert dead[1].reason == "rating: not a number: 'high'"


def test_generic_jsonl_odd_values(tmp_path):
    recs = [{"u": 10**30, "i": 1, "t": 1}, {"u": [1], "i": 1, "t": 1}, {"u": 1.5, "i": 1, "t": 1},
            {"u": -1, "i": 1, "t": 1}, {"u": "7", "i": 1, "t": 1e300}, {"u": 2.0, "i": 1, "t": "3"}]
    _write(tmp_path / "a.jsonl", [json.dumps(r) for r in recs] + [""])
    cols = GenericColumns(user_id="u", item_id="i", timestamp="t", value="")
    src = make_source(SourceConfig(kind="generic", path=str(tmp_path), format="jsonl",
                                   columns=cols))
    ev, dead = _read_all(src)
    np.testing.assert_array_equal(ev.user_id, [2])
    np.testing.assert_array_equal(ev.timestamp, [3000])
    assert [(d.line, d.reason) for d in dead] == [
        (1, f"u: not a valid id: {10**30}"), (2, "u: not a scalar value"),
        (3, "u: not a valid id: 1.5"), (4, "u: not a valid id: -1"),
        (5, "t: timestamp out of range")]


def test_make_source_unknown_kind():
    import types

    # SourceConfig itself refuses the kind; make_source's own check guards other callers
    with pytest.raises(ValueError, match="unknown 'nope'"):
        make_source(types.SimpleNamespace(kind="nope", path="x"))  # type: ignore[arg-type]


# ------------------------------------------------------------- hardening (issue 13)


def test_timestamp_bounds():
    from tfnegseq.data.sources import iso_ms, timestamp_bounds

    assert timestamp_bounds(now_ms=1_000) == (0, 1_000 + 86_400_000)
    assert timestamp_bounds(-5, 10, now_ms=1_000) == (-5, 10)
    with pytest.raises(ValueError, match="min_timestamp must be <= max_timestamp"):
        timestamp_bounds(10, 5)
    assert iso_ms(1_593_878_400_123) == "2020-07-04T16:00:00.123Z"
    assert iso_ms(-5_000) == "1969-12-31T23:59:55.000Z"
    assert iso_ms(2**62) == f"{2**62} ms"


def test_generic_jsonl_and_csv_lines_with_undecodable_bytes_are_dead_letters(tmp_path):
    """Read with errors="surrogateescape": the line becomes a dead letter with its bytes
    written as \\xNN; the lines around it are events."""
    good = [json.dumps({"uid": 1, "iid": i, "ts": 1000 * i, "rating": 1}).encode() for i in (1, 2)]
    bad = b'{"uid": 1, "iid": 7, "ts": 3000, "rating": "\xe9\xff"}'
    (tmp_path / "log.jsonl").write_bytes(b"\n".join([good[0], bad, good[1]]) + b"\n")
    ev, dead = _read_all(_generic(tmp_path, "jsonl"))
    np.testing.assert_array_equal(ev.line, [1, 3])
    assert [d.to_dict() for d in dead] == [{
        "file": str(tmp_path / "log.jsonl"), "line": 2, "reason": "encoding",
        "raw": '{"uid": 1, "iid": 7, "ts": 3000, "rating": "\\xe9\\xff"}',
    }]
    (tmp_path / "log.jsonl").unlink()
    (tmp_path / "b.csv").write_bytes(b"uid,iid,ts,rating\n1,2,1000,4\n1,\xc3,2000,4\n1,3,3000,4\n")
    ev, dead = _read_all(_generic(tmp_path, "csv"))
    np.testing.assert_array_equal(ev.item_id, [2, 3])
    assert [(d.line, d.raw, d.reason) for d in dead] == [(3, "1,\\xc3,2000,4", "encoding")]


# ------------------------------------------------------------ side tables: dead letters


def test_corrupt_side_table_rows_are_dead_letters(tmp_path):
    """KuaiRec `item_categories.csv`: a row with too few / too many fields, a bad id, a
    blank line in the middle and an undecodable byte are dead letters (file, line, raw,
    reason); the good rows are kept. Trailing blank lines are not rows."""
    path = tmp_path / "item_categories.csv"
    path.write_bytes(b"\n".join([
        b"video_id,feat", b'10,"[27, 9]"', b"11", b'x1,"[3]"', b"", b'12,"[5]",extra',
        b'13,"[\xff]"', b'14,"[8]"', b"", b"",
    ]))
    src = make_source(SourceConfig(kind="kuairec", path=str(tmp_path)))
    table = src.item_table(["category"])
    assert table.to_dict() == {10: {"category": 27}, 14: {"category": 8}}
    assert [(d.file, d.line, d.raw, d.reason) for d in table.dead] == [
        (str(path), 3, "11", "expected 2 fields, found 1"),
        (str(path), 4, 'x1,"[3]"', "video_id: not a non-negative integer: 'x1'"),
        (str(path), 5, "", "blank line"),
        (str(path), 6, '12,"[5]",extra', "expected 2 fields, found 3"),
        (str(path), 7, '13,"[\\xff]"', "encoding"),
    ]
    assert src.item_features(["category"]) == table.to_dict()


def test_side_table_duplicate_ids_keep_the_first_row_and_are_reported(tmp_path):
    """MovieLens `u.user` with user 7 on lines 1, 3 and 4: line 1 is kept, lines 3 and 4
    are dead letters with reason "duplicate id"; a row with 4 fields is one too."""
    _write(tmp_path / "u.data", ["7\t1\t3\t881250949"])
    _write(tmp_path / "u.user", ["7|49|M|writer|55105", "8|39|F|executive|T8H1N",
                                 "7|20|F|artist|11111", "7|21|M|none|22222",
                                 "9|30|M|doctor"])
    src = make_source(SourceConfig(kind="movielens", path=str(tmp_path)))
    table = src.user_table(["age"])
    users, duplicates = table.first_rows()
    assert users == {7: {"age": 49}, 8: {"age": 39}}
    path = str(tmp_path / "u.user")
    assert [(d.file, d.line, d.raw, d.reason) for d in duplicates] == [
        (path, 3, "7|20|F|artist|11111", "duplicate id"),
        (path, 4, "7|21|M|none|22222", "duplicate id"),
    ]
    assert [(d.line, d.reason) for d in table.dead] == [(5, "expected 5 fields, found 4")]
    assert src.user_profiles(["age"]) == users  # the first occurrence wins


def test_unknown_side_feature_is_refused_before_any_row_is_read(tmp_path):
    """`check_side_features` names the file and the available features (the job's driver
    calls it before the pipeline starts)."""
    _write(tmp_path / "user_features.csv", ["user_id,age", "1,5"])
    _write(tmp_path / "item_categories.csv", ["video_id,feat", '10,"[1]"'])
    src = make_source(SourceConfig(kind="kuairec", path=str(tmp_path)))
    src.check_side_features(["age"], ["category"])
    with pytest.raises(ValueError, match=r"'height'.*user_features\.csv.*\['age'\]"):
        src.check_side_features(["height"], [])
    with pytest.raises(ValueError, match=r"'genre'.*item_categories\.csv"):
        src.check_side_features([], ["genre"])
