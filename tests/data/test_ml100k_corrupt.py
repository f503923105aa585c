"""Acceptance test of the job's hardening on MovieLens-100K.

The Beam job on a copy of MovieLens-100K with corrupt rows of every kind it
dead-letters (wrong field count, bad ids, bad or missing numbers, implausible and
out-of-range timestamps, blank lines, undecodable bytes, a stray carriage return,
duplicate side-table ids) finishes, dead-letters exactly those rows (file, physical
line, raw text, reason) and writes the same samples, split sizes and vocabularies as
on the clean copy.
"""

import collections
import os
import pathlib
import re
import shutil

import numpy as np

from tests.helpers_data import read_dead_letters, split_multiset
from tfnegseq.config import load_config
from tfnegseq.data import job
from tfnegseq.data.beam import reason_key

CONFIG = pathlib.Path(__file__).resolve().parents[2] / "configs" / "movielens_100k.yaml"
FILES = ("u.data", "u.user", "u.item")  # what the movielens source reads


def exact(reason):
    return re.escape(reason)


def prefix(reason):
    return re.escape(reason) + ".*"


def not_int(column, value):
    return exact(f"{column}: not a non-negative integer: {value!r}")


def fields(n, found):
    return exact(f"expected {n} fields, found {found}")


BLANK = exact("blank line")
ENCODING = exact("encoding")
GOOD_DATA = b"196\t242\t3\t881250949"  # line 1 of u.data
GENRES_0 = b"|0" * 19

# (bytes written as one row, then one reason pattern per physical line it makes).
# Rows are spread evenly over the file, the first before line 1, the last after the
# last line; none of them may be blank (blank lines at the end of a file are skipped).
DATA_ROWS = [
    (b"196\t242\t3", fields(4, 3)),
    (b"196\t242\t3\t881250949\t5", fields(4, 5)),
    (b"196 242 3 881250949", fields(4, 1)),  # spaces for tabs
    (b"", BLANK),
    (b"   ", BLANK),
    (b" \t \t \t ", exact("user_id: missing value")),  # four blank fields
    (b"abc\t242\t3\t881250949", not_int("user_id", "abc")),
    (b"-5\t242\t3\t881250949", not_int("user_id", "-5")),
    (b"1.5\t242\t3\t881250949", not_int("user_id", "1.5")),
    (b"99999999999999999999\t242\t3\t881250949", not_int("user_id", "99999999999999999999")),
    (b'"196"\t242\t3\t881250949', not_int("user_id", '"196"')),  # no quoting in u.data
    ("\uff11\uff19\uff16\t242\t3\t881250949".encode(), not_int("user_id", "\uff11\uff19\uff16")),
    (b"\xef\xbb\xbf196\t242\t3\t881250949", not_int("user_id", "\ufeff196")),  # a BOM mid-file
    (b"196\tx\t3\t881250949", not_int("item_id", "x")),
    (b"196\t-1\t3\t881250949", not_int("item_id", "-1")),
    (b"196\t\t3\t881250949", exact("item_id: missing value")),
    (b"196\t242\tgood\t881250949", exact("rating: not a number: 'good'")),
    (b"196\t242\t\t881250949", exact("rating: missing value")),
    (b"196\t242\tnan\t881250949", exact("rating: not a number: 'nan'")),
    (b"196\t242\tinf\t881250949", exact("rating: not finite: 'inf'")),
    (b"196\t242\t3\x00\t881250949", exact(f"rating: not a number: {'3' + chr(0)!r}")),  # NUL
    (b"196\t242\t3\tsoon", exact("timestamp: not a number: 'soon'")),
    (b"196\t242\t3\t", exact("timestamp: missing value")),
    (b"196\t242\t3\tinf", exact("timestamp: not finite: 'inf'")),
    (b"196\t242\t3\t1e300", exact("timestamp: timestamp out of range")),  # beyond int64 ms
    (b"196\t242\t3\t-1", prefix("timestamp: 1969-12-31T23:59:59.000Z is outside the plausible range")),
    (b"196\t242\t3\t4102444800",
     prefix("timestamp: 2100-01-01T00:00:00.000Z is outside the plausible range")),
    (b"196\t242\t3\t88125\xff0949", ENCODING),  # a byte that is never UTF-8
    (b"196\t242\t3\t8812509\xc3", ENCODING),  # a truncated UTF-8 sequence
    (b"196\t242\r3\t881250949", fields(4, 2), fields(4, 2)),  # a stray CR: two lines
    (b"196\t242\t5\t-881250949", prefix("timestamp: 1942-")),
]
USER_ROWS = [
    (b"944|25|M", fields(5, 3)),
    (b"945|25|M|student|12345|x", fields(5, 6)),
    (b"abc|25|M|student|12345", not_int("user_id", "abc")),
    (b"-3|25|M|student|12345", not_int("user_id", "-3")),
    (b"|25|M|student|12345", exact("user_id: missing value")),
    (b"", BLANK),
    (b"  ", BLANK),
    (b"946|2\xff|M|student|12345", ENCODING),
    (b"1|99|F|writer|00000", exact("duplicate id")),  # after user 1's row: the first wins
    (b"943|99|F|writer|00000", exact("duplicate id")),  # the file's last line, no newline
]
ITEM_ROWS = [
    (b"1683|Short (1999)", fields(24, 2)),
    (b"x1|Bad id (1995)|01-Jan-1995||u" + GENRES_0, not_int("item_id", "x1")),
    (b"-7|Negative (1995)|01-Jan-1995||u" + GENRES_0, not_int("item_id", "-7")),
    (b"", BLANK),
    # u.item is latin-1, which decodes every byte: undecodable bytes cannot occur
    (b"\xff\xfe|junk", fields(24, 2)),
    (b"1684|Long (1995)|01-Jan-1995||u" + GENRES_0 + b"|0", fields(24, 25)),
    (b"1|Fake (2000)|01-Jan-2000||u" + b"|1" * 19, exact("duplicate id")),  # genre 0, not 3
    (b"1682|Fake (1998)|01-Jan-1998||u" + b"|0" * 18 + b"|1", exact("duplicate id")),
]
CORRUPT = {"u.data": (DATA_ROWS, "utf-8"), "u.user": (USER_ROWS, "utf-8"),
           "u.item": (ITEM_ROWS, "latin-1")}


def corrupt_copy(src, dst, name, rows, encoding, tail=b"\n"):
    """Writes `src/name` to `dst/name` with `rows` inserted, spread evenly, and `tail`
    after the last line; returns the expected dead letters
    {(name, physical line): (raw text, reason pattern)}."""
    lines = (src / name).read_bytes().splitlines()
    at = np.linspace(0, len(lines), len(rows)).round().astype(int).tolist()
    pending = collections.deque(zip(at, rows, strict=True))
    out, expected, line = [], {}, 0
    for i in range(len(lines) + 1):
        while pending and pending[0][0] == i:
            raw, *reasons = pending.popleft()[1]
            physical = raw.splitlines() or [raw]
            assert len(physical) == len(reasons), raw
            for text, reason in zip(physical, reasons, strict=True):
                line += 1
                expected[(name, line)] = (text.decode(encoding, "backslashreplace"), reason)
            out.append(raw)
        if i < len(lines):
            out.append(lines[i])
            line += 1
    (dst / name).write_bytes(b"\n".join(out) + tail)
    return expected


def run_job(src, out):
    cfg = load_config(CONFIG, [f"source.path={src}", f"output.dir={out}", "output.shards=1"])
    return job.run(cfg)


def test_corrupt_rows_are_dead_letters_and_change_no_sample(ml100k_dir, tmp_path):
    clean, dirty = tmp_path / "clean", tmp_path / "corrupt"
    clean.mkdir()
    dirty.mkdir()
    expected = {}
    for name in FILES:
        shutil.copy(ml100k_dir / name, clean / name)
        rows, encoding = CORRUPT[name]
        # u.data ends in blank lines (skipped, no dead letters); u.user without a newline
        tail = {"u.data": b"\n\n   \n\n", "u.user": b""}.get(name, b"\n")
        expected |= corrupt_copy(clean, dirty, name, rows, encoding, tail)
    assert len(expected) == sum(len(r) - 1 for rows, _ in CORRUPT.values() for r in rows)

    want = run_job(clean, tmp_path / "out_clean")
    got = run_job(dirty, tmp_path / "out_corrupt")

    # exactly the inserted rows are dead letters, each once, with its raw text and reason
    assert want["dead_letters"] == 0
    dead = read_dead_letters(tmp_path / "out_corrupt")
    found = collections.Counter((os.path.basename(d["file"]), d["line"]) for d in dead)
    assert sorted(found) == sorted(expected)
    assert max(found.values()) == 1
    for d in dead:
        raw, reason = expected[(os.path.basename(d["file"]), d["line"])]
        assert d["raw"] == raw, d
        assert re.fullmatch(reason, d["reason"]), d
    assert got["dead_letters"] == len(expected)
    assert got["dead_letter_users"] == 0

    # same split sizes, statistics and counters, except the dead letters' counters
    for key in ("samples", "total_samples", "positive_rate", "vocab_sizes", "history_length",
                "excluded", "warnings", "features"):
        assert got[key] == want[key], key
    assert want["samples"]["train"] > 0 and want["samples"]["test"] > 0

    def split_counters(counters):
        dead = {k: v for k, v in counters.items() if k.startswith("dead_letters_")}
        return {k: v for k, v in counters.items() if k not in dead}, dead

    got_counters, got_dead = split_counters(got["counters"])
    want_counters, want_dead = split_counters(want["counters"])
    assert got_counters == want_counters
    assert want_dead == {}
    assert got_dead == {f"dead_letters_{k}": n
                        for k, n in collections.Counter(map(reason_key, dead)).items()}

    # the same examples in every split (as multisets), vocabularies and schema
    for split in want["samples"]:
        assert split_multiset(tmp_path / "out_corrupt", split) == \
            split_multiset(tmp_path / "out_clean", split), split
    vocab = {p.name: p.read_bytes() for p in (tmp_path / "out_clean" / "vocab").iterdir()}
    assert vocab
    assert {p.name: p.read_bytes() for p in (tmp_path / "out_corrupt" / "vocab").iterdir()} == vocab
    assert (tmp_path / "out_corrupt" / "schema.pbtxt").read_bytes() == \
        (tmp_path / "out_clean" / "schema.pbtxt").read_bytes()
