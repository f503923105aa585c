"""Source adapters: raw public-dataset files -> canonical `EventChunk`s.

`make_source(cfg)` returns the adapter for `cfg.kind`; the Beam job calls
`log_files()`, then `read_chunks(i, path)` for each file and `user_profiles` /
`item_features` for side features. Every data row of a log becomes either an event
(a row of a chunk) or a `DeadLetter` (file, 1-based physical line, raw text, reason):
wrong field count, bad or negative id, missing / unparsable / non-finite number,
unknown enum value, out-of-range timestamp, a timestamp outside the plausible range
(`timestamp_bounds`: by default 1970-01-01 to the job's start plus one day), blank
line, a byte the file's encoding cannot decode (reason "encoding"). Blank lines at the very end of
a file are skipped. Parsing is vectorised per chunk (see `tfnegseq.data.delimited`).

Adapters (files are read from the directory `cfg.path`; `cfg.files` overrides the log
file names; paths with `://` are read through `tf.io.gfile`):

| kind | log | value | columns |
| movielens | `u.data` (tab, no header, seconds) | rating | rating |
| kuairec | `big_matrix.csv` | watch_ratio | watch_ratio, play_duration, video_duration (ms) |
| kuairand | `log_standard_4_08_to_4_21_1k.csv`, `log_standard_4_22_to_5_08_1k.csv` | is_click |
|  |  |  | is_click, is_like, long_view, is_hate, play_time_ms, duration_ms, watch_ratio, |
|  |  |  | play_duration / video_duration (aliases of play_time_ms / duration_ms) |
| taobao | `UserBehavior.csv` (no header, seconds) | behavior code (pv 1, cart 2, fav 3, buy 4) |
|  |  |  | behavior, is_pv, is_cart, is_fav, is_buy, category_id |
| generic | `*.csv` / `*.parquet` / `*.jsonl` (sorted) | `columns.value` | value column |

`cfg.extra_columns` found in a log are kept as float columns too. Categorical side
features: integer values stay ints, other text goes through `fingerprint64`, a missing
value is `PAD_ID` (see `tfnegseq.ids.feature_id`).

Side tables (`user_table` / `item_table`: `u.user`, `u.item`, KuaiRec / KuaiRand user
and item feature files) are read like the logs: a corrupt row (wrong field count, key
that is not a non-negative integer, blank line, undecodable byte) is a `DeadLetter` of
that file with its line, raw text and reason. Duplicate ids: the first row of an id
(lowest line) is kept, every later row of it is a dead letter with reason
"duplicate id" (`SideTable.first_rows`).
"""

from __future__ import annotations

import csv
import datetime
import functools
import io
import itertools
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from tfnegseq.config import SourceConfig
from tfnegseq.data import files
from tfnegseq.data.delimited import CsvLayout, field_counts, parse_lines
from tfnegseq.data.events import DeadLetter, EventChunk
from tfnegseq.data.jsonl import json_records
from tfnegseq.data.lines import (
    ENCODING_ERROR,
    escape_undecodable,
    line_chunks,
    read_header,
    read_lines,
    require_columns,
    undecodable_lines,
)
from tfnegseq.data.values import categorical_codes, text_ids, validate_frame, validate_values

_TS_LIMIT = float(2**62)
DAY_MS = 86_400_000
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
_BEHAVIOR = {"pv": 1, "cart": 2, "fav": 3, "buy": 4}
_UNIT_TO_MS = {"s": 1000.0, "ms": 1.0, "us": 0.001}


def _ms(values: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """(timestamps in int64 ms, mask of values out of the int64 range)."""
    ms = np.rint(np.asarray(values, dtype=np.float64) * scale)
    bad = ~(np.abs(ms) < _TS_LIMIT)
    return np.where(bad, 0, ms).astype(np.int64), bad


def timestamp_bounds(
    min_timestamp: int | None = None, max_timestamp: int | None = None,
    now_ms: int | None = None,
) -> tuple[int, int]:
    """The plausible range `[lo, hi]` of event times, in ms since the epoch.

    Args:
        min_timestamp: int or None. The earliest plausible time. Defaults to 0
            (1970-01-01T00:00Z).
        max_timestamp: int or None. The latest plausible time. Defaults to `now_ms`
            plus one day.
        now_ms: int or None. "Now" (the job's start). Defaults to the current time.

    Returns:
        `(lo, hi)`; events outside it are dead letters (`Source.read_chunks`).
    """
    lo = 0 if min_timestamp is None else int(min_timestamp)
    if max_timestamp is None:
        now = int(time.time() * 1000) if now_ms is None else int(now_ms)
        hi = now + DAY_MS
    else:
        hi = int(max_timestamp)
    if lo > hi:
        raise ValueError(f"min_timestamp must be <= max_timestamp. Received: {lo} > {hi}")
    return lo, hi


def iso_ms(ms: int) -> str:
    """`2020-07-04T16:00:00.000Z` for a time in ms since the epoch (`<ms> ms` beyond the
    years 1 .. 9999)."""
    try:
        when = _EPOCH + datetime.timedelta(milliseconds=int(ms))
    except OverflowError:
        return f"{int(ms)} ms"
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


def _raw_line(lines: list[str], start: int, line: int) -> str:
    """The raw text of physical line `line` of a chunk starting at line `start`."""
    return lines[line - start].rstrip("\r\n")


def _feature_dict(keys: np.ndarray, feats: dict[str, np.ndarray]) -> dict[int, dict[str, int]]:
    names = list(feats)
    cols = [feats[n].tolist() for n in names]
    return {k: dict(zip(names, v, strict=True)) for k, *v in zip(keys.tolist(), *cols, strict=True)}


DUPLICATE_ID = "duplicate id"  # the dead-letter reason of a side-table row whose id came before


@dataclass
class SideTable:
    """The rows of a side-feature file, in file order.

    `ids[i]`, `lines[i]` (1-based physical line) and `features[name][i]` describe the
    i-th good row; `dead` holds the corrupt rows as dead letters. An id may still occur
    more than once: `first_rows` keeps its first row and reports the others.
    """

    path: str = ""
    ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    lines: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    features: dict[str, np.ndarray] = field(default_factory=dict)
    dead: list[DeadLetter] = field(default_factory=list)
    encoding: str = "utf-8"

    def __len__(self) -> int:
        return len(self.ids)

    def first_rows(self) -> tuple[dict[int, dict[str, int]], list[DeadLetter]]:
        """(id -> features from the id's first row, dead letters "duplicate id" for
        every later row of an id, in line order; their raw text is read back)."""
        if not len(self.ids):
            return {}, []
        _, first = np.unique(self.ids, return_index=True)
        keep = np.zeros(len(self.ids), dtype=bool)
        keep[first] = True
        dup_lines = self.lines[~keep].tolist()
        raw = read_lines(self.path, set(dup_lines), self.encoding) if dup_lines else {}
        dups = [DeadLetter(self.path, n, raw.get(n, ""), DUPLICATE_ID) for n in dup_lines]
        rows = _feature_dict(self.ids[keep], {n: v[keep] for n, v in self.features.items()})
        return rows, dups

    def to_dict(self) -> dict[int, dict[str, int]]:
        """id -> features; an id's first row wins."""
        return self.first_rows()[0]


@dataclass(frozen=True)
class TableSpec:
    """Layout of a side-feature file: its name in `cfg.path`, key column, columns (None:
    a header line names them), delimiter, whether fields may be quoted, encoding, and
    the derived features the source computes from its columns."""

    name: str
    key: str
    names: tuple[str, ...] | None = None
    delimiter: str = ","
    quoting: bool = True
    encoding: str = "utf-8"
    derived: tuple[str, ...] = ()


class Source:
    """Reads one dataset layout. Subclasses implement the methods below.

    Args:
        cfg: SourceConfig. Where and what to read.
        min_timestamp: int or None. Earliest plausible event time (ms since the epoch);
            earlier events are dead letters. Defaults to 0 (1970-01-01).
        max_timestamp: int or None. Latest plausible event time (ms); later events are
            dead letters. Defaults to the time the source is built plus one day (the
            Beam job passes the bounds it fixed at its start).
    """

    kind = ""

    def __init__(self, cfg: SourceConfig, min_timestamp: int | None = None,
                 max_timestamp: int | None = None) -> None:
        self.cfg = cfg
        self.timestamp_range = timestamp_bounds(min_timestamp, max_timestamp)

    def _path(self, name: str) -> str:
        return files.join(self.cfg.path, name)

    def _files(self, default: list[str]) -> list[str]:
        names = list(self.cfg.files) or default
        paths = [self._path(n) for n in names]
        missing = [p for p in paths if not files.exists(p)]
        if missing:
            found = files.list_dir(self.cfg.path) if files.exists(self.cfg.path) else "(no directory)"
            raise FileNotFoundError(
                f"{self.kind} source: {missing} not found; {self.cfg.path} has {found}"
            )
        return paths

    def log_files(self) -> list[str]:
        """Interaction files (full paths) in input order."""
        raise NotImplementedError

    def read_chunks(
        self, file_index: int, path: str, chunk_rows: int = 50_000
    ) -> Iterator[tuple[EventChunk, list[DeadLetter]]]:
        """(events, dead letters) for each chunk of about `chunk_rows` lines, in file order."""
        raise NotImplementedError

    user_spec: TableSpec | None = None  # the user-profile file, if the layout has one
    item_spec: TableSpec | None = None  # the item-feature file, if the layout has one

    def user_profiles(self, names: list[str]) -> dict[int, dict[str, int]]:
        """user_id -> {feature: int} for the named features ({} when `names` is empty);
        a user's first row wins."""
        return self.user_table(names).to_dict()

    def item_features(self, names: list[str]) -> dict[int, dict[str, int]]:
        """item_id -> {feature: int} for the named features ({} when `names` is empty);
        an item's first row wins."""
        return self.item_table(names).to_dict()

    def user_table(self, names: list[str]) -> SideTable:
        """The user-profile file's rows and dead letters (an empty table when `names` is
        empty); unknown names raise ValueError."""
        return self._side_table("user", names)

    def item_table(self, names: list[str]) -> SideTable:
        """The item-feature file's rows and dead letters (see `user_table`)."""
        return self._side_table("item", names)

    def check_side_features(self, users: list[str], items: list[str]) -> None:
        """Raises ValueError naming the file and the available features unless every
        requested feature exists; reads at most the files' header lines."""
        for what, names in (("user", users), ("item", items)):
            if names:
                self._check_names(what, names)

    def _available(self, what: str) -> tuple[str, list[str]]:
        """(file, feature names) of the `what` ("user" / "item") side table."""
        spec = self.user_spec if what == "user" else self.item_spec
        if spec is None:
            raise ValueError(f"{self.kind} source has no {what} features")
        path = self._path(spec.name)
        cols = list(spec.names) if spec.names is not None else self._header(spec)
        return path, [c for c in cols if c != spec.key] + list(spec.derived)

    def _header(self, spec: TableSpec) -> list[str]:
        path = self._path(spec.name)
        with files.open_text(path, spec.encoding, errors="surrogateescape") as f:
            names = read_header(f, spec.delimiter)
        if spec.key not in names:
            raise ValueError(f"{path}: missing key column {spec.key!r}; the file has {names}")
        return names

    def _check_names(self, what: str, names: list[str]) -> None:
        try:
            path, available = self._available(what)
        except ValueError as e:
            if str(e).endswith(f"has no {what} features"):
                raise ValueError(f"{e}; requested {names}") from None
            raise
        for n in names:
            if n not in available:
                raise ValueError(
                    f"unknown {what} feature {n!r} in {path}; available: {sorted(available)}"
                )

    def _side_table(self, what: str, names: list[str]) -> SideTable:
        if not names:
            return SideTable()
        self._check_names(what, names)
        spec = self.user_spec if what == "user" else self.item_spec
        assert spec is not None
        keys, df, lines, dead = self._read_table(spec)
        feats = self._side_codes(what, df, names)
        return SideTable(self._path(spec.name), keys, lines, feats, dead, spec.encoding)

    def _side_codes(self, what: str, df: pd.DataFrame, names: list[str]) -> dict[str, np.ndarray]:
        """Feature codes of the good rows; sources with derived features override it."""
        return {n: categorical_codes(df[n]) for n in names}

    def _read_table(
        self, spec: TableSpec, chunk_rows: int = 200_000
    ) -> tuple[np.ndarray, pd.DataFrame, np.ndarray, list[DeadLetter]]:
        """(keys, text columns, line numbers) of the good rows of a side-feature file,
        and the dead letters of the corrupt ones, all in line order."""
        path = self._path(spec.name)
        quoting = csv.QUOTE_MINIMAL if spec.quoting else csv.QUOTE_NONE
        frames, keys, line_nos, dead = [], [], [], []
        with files.open_text(path, spec.encoding, errors="surrogateescape") as f:
            if spec.names is None:
                names, first = self._header(spec), 2
                f.readline()
            else:
                names, first = list(spec.names), 1
            for start, chunk in line_chunks(f, chunk_rows, first):
                counts = field_counts(chunk, spec.delimiter, spec.quoting)
                undecodable = undecodable_lines(chunk)
                good: list[int] = []
                for i, ln in enumerate(chunk):
                    raw = ln.rstrip("\r\n")
                    if undecodable[i]:
                        reason = ENCODING_ERROR
                        raw = escape_undecodable(raw)
                    elif not raw.strip():
                        reason = "blank line"
                    elif counts[i] != len(names):
                        reason = f"expected {len(names)} fields, found {counts[i]}"
                    else:
                        good.append(i)
                        continue
                    dead.append(DeadLetter(path, start + i, raw, reason))
                df = self._frame_of([chunk[i] for i in good], names, spec, quoting)
                k, reasons = validate_values(df[spec.key], "int", spec.key)
                ok = reasons == None  # noqa: E711
                for i in np.flatnonzero(~ok).tolist():
                    n = start + good[i]
                    dead.append(DeadLetter(path, n, chunk[good[i]].rstrip("\r\n"), reasons[i]))
                frames.append(df[ok])
                keys.append(np.asarray(k[ok], np.int64))
                line_nos.append(start + np.asarray(good, np.int64)[ok])
        dead.sort(key=lambda d: d.line)
        if not frames:
            empty = pd.DataFrame({c: pd.Series([], dtype=object) for c in names})
            return np.zeros(0, np.int64), empty, np.zeros(0, np.int64), dead
        df = pd.concat(frames).reset_index(drop=True)
        return np.concatenate(keys), df, np.concatenate(line_nos), dead

    @staticmethod
    def _frame_of(lines: list[str], names: list[str], spec: TableSpec, quoting: Any
                  ) -> pd.DataFrame:
        """The text columns of lines that each hold `len(names)` fields."""
        if lines:
            try:
                df = pd.read_csv(io.StringIO("".join(lines)), sep=spec.delimiter, header=None,
                                 names=names, dtype=str, na_filter=False, quoting=quoting,
                                 skip_blank_lines=False, engine="c")
                if len(df) == len(lines):
                    return df
            except Exception:  # noqa: BLE001 - e.g. a quote spanning lines: one at a time
                pass
        rows = [next(csv.reader([ln.rstrip("\r\n")], delimiter=spec.delimiter,
                                quoting=quoting)) for ln in lines]
        return pd.DataFrame(rows or None, columns=names, dtype=object)


class _CsvSource(Source):
    """A delimited log. Subclasses set the layout and turn parsed columns into events."""

    delimiter = ","
    encoding = "utf-8"
    fixed_names: tuple[str, ...] | None = None  # column names of a header-less file
    ints: tuple[str, ...] = ()
    floats: tuple[str, ...] = ()
    texts: tuple[str, ...] = ()
    enums: dict[str, dict[str, int]] = {}
    quoting = False
    ts_column = "timestamp"
    ts_scale = 1000.0  # timestamp unit -> ms

    def _layout(self, names: list[str], path: str) -> CsvLayout:
        required = [*self.ints, *self.floats, *self.texts, *self.enums]
        require_columns(names, required, path)
        if len(set(names)) != len(names):
            raise ValueError(f"{path}: duplicate column names in {names}")
        extras = [c for c in self.cfg.extra_columns if c in names and c not in required]
        return CsvLayout(
            tuple(names), self.ints, self.floats + tuple(extras), self.texts, self.enums,
            self.delimiter, self.quoting,
        )

    def _open(self, f: Any, path: str) -> tuple[Any, list[str], int]:
        """(line iterator, column names, line number of the first data line)."""
        if self.fixed_names is not None:
            return f, list(self.fixed_names), 1
        return f, read_header(f, self.delimiter), 2

    def read_chunks(
        self, file_index: int, path: str, chunk_rows: int = 50_000
    ) -> Iterator[tuple[EventChunk, list[DeadLetter]]]:
        with files.open_text(path, self.encoding, errors="surrogateescape") as f:
            lines, names, first = self._open(f, path)
            if not names:
                return
            layout = self._layout(names, path)
            for start, chunk in line_chunks(lines, chunk_rows, first):
                cols, line_no, dead = parse_lines(chunk, start, layout, path)
                raw_of = functools.partial(_raw_line, chunk, start)
                yield self._finish(cols, line_no, dead, path, file_index, raw_of)

    def _finish(
        self, cols: dict[str, np.ndarray], line_no: np.ndarray, dead: list[DeadLetter],
        path: str, file_index: int, raw_of: Callable[[int], str],
    ) -> tuple[EventChunk, list[DeadLetter]]:
        """Validated columns -> EventChunk. Rows whose timestamp is out of the int64 ms
        range, or outside `timestamp_range`, are dead letters."""
        ts, bad = _ms(cols[self.ts_column], self.ts_scale)
        lo, hi = self.timestamp_range
        implausible = ~bad & ((ts < lo) | (ts > hi))
        if bad.any() or implausible.any():
            reason = f"{self.ts_column}: timestamp out of range"
            dead = dead + [DeadLetter(path, int(n), raw_of(int(n)), reason) for n in line_no[bad]]
            span = f"[{iso_ms(lo)}, {iso_ms(hi)}]"
            dead += [
                DeadLetter(path, int(n), raw_of(int(n)),
                           f"{self.ts_column}: {iso_ms(t)} is outside the plausible range {span}")
                for n, t in zip(line_no[implausible].tolist(), ts[implausible].tolist(),
                                strict=True)
            ]
            dead.sort(key=lambda d: d.line)
            keep = ~(bad | implausible)
            cols = {k: v[keep] for k, v in cols.items()}
            line_no, ts = line_no[keep], ts[keep]
        ev = self._events(cols)
        for c in self.cfg.extra_columns:
            if c in cols and c not in ev and cols[c].dtype != object:
                ev[c] = cols[c]
        chunk = EventChunk(
            user_id=ev.pop("user_id"), item_id=ev.pop("item_id"), timestamp=ts,
            value=ev.pop("value"), file_index=np.full(len(ts), file_index, np.int32),
            line=line_no, columns=ev,
        )
        return chunk, dead

    def _events(self, cols: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """user_id, item_id, value and the named float columns, from the parsed columns."""
        raise NotImplementedError


class MovieLensSource(_CsvSource):
    """MovieLens-100K: `u.data`, `u.user` (age, gender, occupation, zip), `u.item`.

    Item features: `genre` = index of the first set genre flag in `u.genre` order
    (0 'unknown', 1 Action, ..., 18 Western; 0 when no flag is set), `year` = release
    year (PAD_ID when the date is missing).
    """

    kind = "movielens"
    delimiter = "\t"
    fixed_names = ("user_id", "item_id", "rating", "timestamp")
    ints = ("user_id", "item_id")
    floats = ("rating", "timestamp")

    def log_files(self) -> list[str]:
        return self._files(["u.data"])

    def _events(self, cols: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"user_id": cols["user_id"], "item_id": cols["item_id"],
                "value": cols["rating"], "rating": cols["rating"]}

    user_spec = TableSpec("u.user", "user_id", ("user_id", "age", "gender", "occupation", "zip"),
                          "|", quoting=False)
    item_spec = TableSpec(
        "u.item", "item_id",
        ("item_id", "title", "release_date", "video_release_date", "url",
         *(f"genre_{i}" for i in range(19))),
        "|", quoting=False, encoding="latin-1", derived=("genre", "year"),
    )

    def _side_codes(self, what: str, df: pd.DataFrame, names: list[str]) -> dict[str, np.ndarray]:
        if what == "user":
            return super()._side_codes(what, df, names)
        flags = df[[f"genre_{i}" for i in range(19)]].to_numpy() == "1"
        derived = {
            "genre": np.where(flags.any(axis=1), flags.argmax(axis=1), 0).astype(np.int64),
            "year": categorical_codes(df["release_date"].str.strip().str[-4:]),
        }
        return {n: derived[n] if n in derived else categorical_codes(df[n]) for n in names}


class KuaiRecSource(_CsvSource):
    """KuaiRec 2.0: `big_matrix.csv` (or `cfg.files`), `user_features.csv`,
    `item_categories.csv` (item feature `category` = first entry of `feat`)."""

    kind = "kuairec"
    ints = ("user_id", "video_id")
    floats = ("play_duration", "video_duration", "timestamp", "watch_ratio")

    def log_files(self) -> list[str]:
        return self._files(["big_matrix.csv"])

    def _events(self, cols: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"user_id": cols["user_id"], "item_id": cols["video_id"],
                "value": cols["watch_ratio"], "watch_ratio": cols["watch_ratio"],
                "play_duration": cols["play_duration"], "video_duration": cols["video_duration"]}

    user_spec = TableSpec("user_features.csv", "user_id")
    item_spec = TableSpec("item_categories.csv", "video_id", derived=("category",))

    def _side_codes(self, what: str, df: pd.DataFrame, names: list[str]) -> dict[str, np.ndarray]:
        if what == "item" and "category" in names:
            df = df.assign(category=df["feat"].str.strip("[] ").str.split(",").str[0])
        return super()._side_codes(what, df, names)


class KuaiRandSource(_CsvSource):
    """KuaiRand-1K logs, `user_features_1k.csv`, `video_features_basic_1k.csv` (item
    features by column name, plus `category` = first entry of `tag`)."""

    kind = "kuairand"
    ints = ("user_id", "video_id")
    floats = ("time_ms", "is_click", "is_like", "long_view", "is_hate", "play_time_ms",
              "duration_ms")
    ts_column = "time_ms"
    ts_scale = 1.0

    def log_files(self) -> list[str]:
        return self._files(
            ["log_standard_4_08_to_4_21_1k.csv", "log_standard_4_22_to_5_08_1k.csv"]
        )

    def _events(self, cols: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        play, dur = cols["play_time_ms"], cols["duration_ms"]
        ratio = np.divide(play, dur, out=np.zeros_like(play), where=dur != 0)
        out = {"user_id": cols["user_id"], "item_id": cols["video_id"], "value": cols["is_click"],
               "watch_ratio": ratio, "play_duration": play, "video_duration": dur}
        out.update({c: cols[c] for c in self.floats if c != "time_ms"})
        return out

    user_spec = TableSpec("user_features_1k.csv", "user_id")
    item_spec = TableSpec("video_features_basic_1k.csv", "video_id", derived=("category",))

    def _side_codes(self, what: str, df: pd.DataFrame, names: list[str]) -> dict[str, np.ndarray]:
        if what == "item" and "category" in names:
            df = df.assign(category=df["tag"].str.split(",").str[0])
        return super()._side_codes(what, df, names)


class TaobaoSource(_CsvSource):
    """Taobao UserBehavior: `user_id,item_id,category_id,behavior_type,timestamp`.

    Item feature `category` comes from the log itself: the files are scanned once and
    each item takes the category_id of its first row (rows that do not parse are skipped).
    """

    kind = "taobao"
    fixed_names = ("user_id", "item_id", "category_id", "behavior_type", "timestamp")
    ints = ("user_id", "item_id", "category_id")
    floats = ("timestamp",)
    enums = {"behavior_type": _BEHAVIOR}

    def log_files(self) -> list[str]:
        return self._files(["UserBehavior.csv"])

    def _events(self, cols: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        b = cols["behavior_type"]
        out = {"user_id": cols["user_id"], "item_id": cols["item_id"], "value": b, "behavior": b,
               "category_id": cols["category_id"]}
        out.update({f"is_{k}": (b == code).astype(np.float64) for k, code in _BEHAVIOR.items()})
        return out

    def _available(self, what: str) -> tuple[str, list[str]]:
        if what == "item":
            return f"{self.cfg.path} (taobao log)", ["category"]
        return super()._available(what)

    def item_table(self, names: list[str]) -> SideTable:
        if not names:
            return SideTable()
        self._check_names("item", names)
        parts = []
        for path in self.log_files():
            with files.open_text(path, errors="replace") as f:  # such rows do not parse
                for df in pd.read_csv(f, header=None, usecols=[1, 2], dtype=str, na_filter=False,
                                      on_bad_lines="skip", chunksize=1_000_000):
                    num = df.apply(pd.to_numeric, errors="coerce").dropna()
                    parts.append(num[(num >= 0).all(axis=1)].drop_duplicates(1))
        if not parts:
            return SideTable()
        table = pd.concat(parts).drop_duplicates(1).astype(np.int64)
        ids = table[1].to_numpy()
        return SideTable(self.cfg.path, ids, np.zeros(len(ids), np.int64),
                         {"category": table[2].to_numpy()})


class GenericSource(_CsvSource):
    """CSV / Parquet / JSONL with a column mapping (`cfg.columns`).

    Ids: integers stay as they are, a text of decimal digits is its integer value, any
    other text goes through `fingerprint64`. Timestamps are converted from
    `timestamp_unit` to ms. An empty `columns.value` gives every event the value 1.0;
    otherwise the value column is also kept under its own name. CSV without a header:
    columns are named "0", "1", ... . Parquet: the "line" is the 1-based row number and
    a dead letter's raw text is the JSON of the row's used columns; a timestamp column of
    Arrow timestamp type is converted to `timestamp_unit` first. JSONL: one object
    per line; configured `extra_columns` are required keys there (no header to check).
    """

    kind = "generic"
    quoting = True

    def __init__(self, cfg: SourceConfig, min_timestamp: int | None = None,
                 max_timestamp: int | None = None) -> None:
        super().__init__(cfg, min_timestamp, max_timestamp)
        m = cfg.columns
        self.delimiter = cfg.delimiter
        self.texts = (m.user_id, m.item_id)
        self.floats = (m.timestamp,) + ((m.value,) if m.value else ())
        self.ts_column = m.timestamp
        self.ts_scale = _UNIT_TO_MS[m.timestamp_unit]

    def log_files(self) -> list[str]:
        if self.cfg.files:
            return self._files([])
        ext = "." + self.cfg.format
        names = [n for n in files.list_dir(self.cfg.path) if n.endswith(ext)]
        if not names:
            raise FileNotFoundError(f"generic source: no *{ext} files in {self.cfg.path}")
        return [self._path(n) for n in names]

    def _open(self, f: Any, path: str) -> tuple[Any, list[str], int]:
        if self.cfg.has_header:
            return super()._open(f, path)
        first = f.readline()
        if not first:
            return f, [], 1
        k = len(next(csv.reader([first.rstrip("\r\n")], delimiter=self.delimiter)))
        return itertools.chain([first], f), [str(i) for i in range(k)], 1

    def _events(self, cols: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        m = self.cfg.columns

        def ids(a: np.ndarray) -> np.ndarray:
            return text_ids(a) if a.dtype == object else a

        value = cols[m.value] if m.value else np.ones(len(cols[m.timestamp]))
        out = {"user_id": ids(cols[m.user_id]), "item_id": ids(cols[m.item_id]), "value": value}
        if m.value and m.value not in ("user_id", "item_id", "timestamp", "value"):
            out[m.value] = value
        return out

    def read_chunks(
        self, file_index: int, path: str, chunk_rows: int = 50_000
    ) -> Iterator[tuple[EventChunk, list[DeadLetter]]]:
        if self.cfg.format == "csv":
            yield from super().read_chunks(file_index, path, chunk_rows)
            return
        m = self.cfg.columns
        kinds: dict[str, Any] = {m.user_id: "id", m.item_id: "id", m.timestamp: "float"}
        kinds.update({c: "float" for c in [m.value] if c})
        if self.cfg.format == "jsonl":
            kinds.update({c: "float" for c in self.cfg.extra_columns if c not in kinds})
            with files.open_text(path, errors="surrogateescape") as f:
                for start, lines in line_chunks(f, chunk_rows, 1):
                    df, nums, dead = json_records(lines, start, list(kinds), path)
                    yield self._frame(df, np.asarray(nums, np.int64), dead, kinds, path,
                                      file_index, functools.partial(_raw_line, lines, start))
            return
        import pyarrow.parquet as pq

        with files.open_binary(path) as fb:
            pf = pq.ParquetFile(fb)
            names = pf.schema_arrow.names
            require_columns(names, list(kinds), path)
            extras = [c for c in self.cfg.extra_columns if c in names and c not in kinds]
            kinds.update({c: "float" for c in extras})
            start = 1
            for batch in pf.iter_batches(batch_size=chunk_rows, columns=list(kinds)):
                n = batch.num_rows

                def raw_of(line: int, b: Any = batch, s: int = start) -> str:
                    return json.dumps(b.slice(line - s, 1).to_pylist()[0], default=str)

                df = batch.to_pandas()
                ts = df[m.timestamp]
                if pd.api.types.is_datetime64_any_dtype(ts):  # -> numbers in timestamp_unit
                    epoch = pd.Timestamp(0, tz=getattr(ts.dt, "tz", None))
                    df[m.timestamp] = (ts - epoch) / pd.Timedelta(1, unit=m.timestamp_unit)
                yield self._frame(df, np.arange(start, start + n), [], kinds, path, file_index,
                                  raw_of)
                start += n

    def _frame(
        self, df: pd.DataFrame, line_no: np.ndarray, dead: list[DeadLetter], kinds: dict[str, Any],
        path: str, file_index: int, raw_of: Callable[[int], str],
    ) -> tuple[EventChunk, list[DeadLetter]]:
        cols, reasons = validate_frame(df, kinds)
        for i in np.flatnonzero(reasons != None):  # noqa: E711
            dead.append(DeadLetter(path, int(line_no[i]), raw_of(int(line_no[i])), reasons[i]))
        dead.sort(key=lambda d: d.line)
        good = reasons == None  # noqa: E711
        return self._finish(cols, line_no[good], dead, path, file_index, raw_of)


class TaacSource(_CsvSource):
    """TAAC-2025 (TencentGR) `seq.jsonl`: one line per user, a JSON list of records
    `[user_id, item_id, user_feature, item_feature, action_type, timestamp]`.

    An item record (item_id set) is one event: value = `action_type` (0 exposure, 1
    click, 2 conversion in the 10M release; the rules decide polarity), timestamp in
    Unix seconds. The user-profile record (item_id, item_feature and action_type null,
    `user_feature` a dict) gives the user features; an item's first `item_feature` dict
    gives its item features. Feature names are the dicts' keys (`"103"`, ...), values
    the release's re-ids (0 = missing); a requested feature whose value is a list of ids
    (e.g. 106-108, 110) is refused, naming the line. A line that is not a JSON list, and
    each malformed record, is a dead letter naming the line and the record's index; the
    rest of a line's records are kept. Format: the organisers' data description; the
    2026 parquet release converts to it (see `docs/data_taac.md`).
    """

    kind = "taac"
    ts_scale = 1000.0
    _SCAN_LINES = 2_000  # lines read to list the available feature names

    def log_files(self) -> list[str]:
        return self._files(["seq.jsonl"])

    @staticmethod
    def _int(x: Any) -> bool:
        return isinstance(x, int) and not isinstance(x, bool)

    def _record_error(self, rec: Any) -> str | None:
        if not isinstance(rec, list) or len(rec) != 6:
            return "not a list of 6 fields [user_id, item_id, user_feature, item_feature, " \
                   "action_type, timestamp]"
        user, item, ufeat, ifeat, action, ts = rec
        if not self._int(user) or user < 1:
            return f"user_id: expected an integer >= 1, found {user!r}"
        if not isinstance(ts, (int, float)) or isinstance(ts, bool):
            return f"timestamp: expected a number of seconds, found {ts!r}"
        if item is None:
            if not isinstance(ufeat, dict):
                return "a profile record (item_id null) needs a user_feature dict"
            return None
        if not self._int(item) or item < 1:
            return f"item_id: expected an integer >= 1, found {item!r}"
        if not self._int(action) or action < 0:
            return f"action_type: expected an integer >= 0, found {action!r}"
        if ifeat is not None and not isinstance(ifeat, dict):
            return f"item_feature: expected a dict or null, found {type(ifeat).__name__}"
        return None

    def _lines(self, path: str) -> Iterator[tuple[int, str, list[Any] | None, str | None]]:
        """(line number, raw text, records or None, reason) for every non-blank line."""
        with files.open_text(path, "utf-8", errors="surrogateescape") as f:
            for start, chunk in line_chunks(f, 10_000, 1):
                for i, raw in enumerate(chunk):
                    raw = raw.rstrip("\r\n")
                    if not raw.strip():
                        yield start + i, raw, None, "blank line"
                        continue
                    try:
                        recs = json.loads(raw)
                    except ValueError as e:
                        yield start + i, raw, None, f"not JSON: {e}"
                        continue
                    if not isinstance(recs, list):
                        yield start + i, raw, None, "not a JSON list of records"
                        continue
                    yield start + i, raw, recs, None

    def read_chunks(
        self, file_index: int, path: str, chunk_rows: int = 50_000
    ) -> Iterator[tuple[EventChunk, list[DeadLetter]]]:
        cols: dict[str, list[Any]] = {"user_id": [], "item_id": [], "timestamp": [],
                                      "action_type": []}
        line_no: list[int] = []
        raws: dict[int, str] = {}
        dead: list[DeadLetter] = []

        def flush() -> tuple[EventChunk, list[DeadLetter]]:
            arrays = {"user_id": np.asarray(cols["user_id"], np.int64),
                      "item_id": np.asarray(cols["item_id"], np.int64),
                      "timestamp": np.asarray(cols["timestamp"], np.float64),
                      "action_type": np.asarray(cols["action_type"], np.float64)}
            out = self._finish(arrays, np.asarray(line_no, np.int64), sorted(
                dead, key=lambda d: d.line), path, file_index, raws.__getitem__)
            for v in cols.values():
                v.clear()
            line_no.clear()
            raws.clear()
            dead.clear()
            return out

        for n, raw, recs, reason in self._lines(path):
            if recs is None:
                if reason != "blank line":
                    dead.append(DeadLetter(path, n, raw, str(reason)))
                continue
            raws[n] = raw
            for k, rec in enumerate(recs):
                error = self._record_error(rec)
                if error is not None:
                    dead.append(DeadLetter(path, n, raw, f"record {k}: {error}"))
                elif rec[1] is not None:
                    cols["user_id"].append(rec[0])
                    cols["item_id"].append(rec[1])
                    cols["timestamp"].append(rec[5])
                    cols["action_type"].append(rec[4])
                    line_no.append(n)
            if len(line_no) >= chunk_rows:
                yield flush()
        if line_no or dead:
            yield flush()

    def _events(self, cols: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"user_id": cols["user_id"], "item_id": cols["item_id"],
                "value": cols["action_type"], "action_type": cols["action_type"]}

    def _feature_rows(self, what: str, names: list[str] | None, limit: int | None = None
                      ) -> tuple[str, list[int], list[int], list[dict[str, Any]], list[DeadLetter]]:
        """(file, ids, lines, feature dicts, dead letters) of the profile (`user`) or the
        first item record per item (`item`) in the log, `limit` lines at most."""
        path = self.log_files()[0]
        ids: list[int] = []
        lines: list[int] = []
        rows: list[dict[str, Any]] = []
        dead: list[DeadLetter] = []
        seen: set[int] = set()
        for n, _raw, recs, _ in itertools.islice(self._lines(path), limit):
            for rec in recs or []:
                if self._record_error(rec) is not None:
                    continue
                if what == "user" and rec[1] is None:
                    key, feats = rec[0], rec[2]
                elif what == "item" and rec[1] is not None and rec[1] not in seen:
                    key, feats = rec[1], rec[3] or {}
                    seen.add(key)
                else:
                    continue
                listed = [f for f in (names or []) if isinstance(feats.get(f), list)]
                if listed:
                    raise ValueError(
                        f"{path}:{n}: {what} feature {listed[0]!r} is a list of ids; only "
                        f"single-id features can be side features")
                ids.append(int(key))
                lines.append(n)
                rows.append(feats)
        return path, ids, lines, rows, dead

    def _available(self, what: str) -> tuple[str, list[str]]:
        path, _, _, rows, _ = self._feature_rows(what, None, self._SCAN_LINES)
        return path, sorted({k for r in rows for k in r})

    def _check_names(self, what: str, names: list[str]) -> None:
        self._feature_rows(what, names, self._SCAN_LINES)  # a list-valued one, by line
        super()._check_names(what, names)

    def _side_table(self, what: str, names: list[str]) -> SideTable:
        if not names:
            return SideTable()
        self._check_names(what, names)
        path, ids, lines, rows, dead = self._feature_rows(what, names)
        feats = {}
        for name in names:
            values = [r.get(name, 0) for r in rows]
            bad = [v for v in values if not self._int(v)]
            if bad:
                raise ValueError(f"{path}: {what} feature {name!r} has a non-integer value "
                                 f"{bad[0]!r}")
            feats[name] = np.asarray(values, np.int64)
        return SideTable(path, np.asarray(ids, np.int64), np.asarray(lines, np.int64), feats,
                         dead)


_KINDS: dict[str, type[Source]] = {
    "movielens": MovieLensSource,
    "kuairec": KuaiRecSource,
    "kuairand": KuaiRandSource,
    "taobao": TaobaoSource,
    "taac": TaacSource,
    "generic": GenericSource,
}


def make_source(cfg: SourceConfig, min_timestamp: int | None = None,
                max_timestamp: int | None = None) -> Source:
    """The adapter for `cfg.kind`, with the plausible event-time range (ms since the
    epoch; see `timestamp_bounds` for the defaults)."""
    if cfg.kind not in _KINDS:
        raise ValueError(f"source.kind: unknown {cfg.kind!r}; expected one of {sorted(_KINDS)}")
    return _KINDS[cfg.kind](cfg, min_timestamp, max_timestamp)


__all__ = [
    "DUPLICATE_ID", "GenericSource", "KuaiRandSource", "KuaiRecSource", "MovieLensSource",
    "SideTable", "Source", "TableSpec", "TaacSource", "TaobaoSource", "make_source",
]
