"""Source adapters: raw public-dataset files -> canonical `EventChunk`s.

`make_source(cfg)` returns the adapter for `cfg.kind`; the Beam job calls
`log_files()`, then `read_chunks(i, path)` for each file and `user_profiles` /
`item_features` for side features. Every data row of a log becomes either an event
(a row of a chunk) or a `DeadLetter` (file, 1-based physical line, raw text, reason):
wrong field count, bad or negative id, missing / unparsable / non-finite number,
unknown enum value, out-of-range timestamp, a timestamp outside the plausible range
(`timestamp_bounds`: by default 1970-01-01 to the job's start plus one day), blank
line, a byte the file's encoding cannot decode (reason "encoding"). Blank lines at the very end of
a file are skipped. Parsing is vectorised per chunk (see `tfnegseq.data._csv`).

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
value is `PAD_ID` (see `_csv.categorical`). Duplicate keys in a feature table: the last
row wins; rows whose key is not a non-negative integer are skipped.
"""

from __future__ import annotations

import csv
import datetime
import functools
import itertools
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pandas as pd

from tfnegseq.config import SourceConfig
from tfnegseq.data import _csv
from tfnegseq.data.events import DeadLetter, EventChunk

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
        return _csv.join(self.cfg.path, name)

    def _files(self, default: list[str]) -> list[str]:
        names = list(self.cfg.files) or default
        paths = [self._path(n) for n in names]
        missing = [p for p in paths if not _csv.exists(p)]
        if missing:
            found = _csv.list_dir(self.cfg.path) if _csv.exists(self.cfg.path) else "(no directory)"
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

    def user_profiles(self, names: list[str]) -> dict[int, dict[str, int]]:
        """user_id -> {feature: int} for the named features ({} when `names` is empty)."""
        if names:
            raise ValueError(f"{self.kind} source has no user features; requested {names}")
        return {}

    def item_features(self, names: list[str]) -> dict[int, dict[str, int]]:
        """item_id -> {feature: int} for the named features ({} when `names` is empty)."""
        if names:
            raise ValueError(f"{self.kind} source has no item features; requested {names}")
        return {}

    def _table(
        self, name: str, key: str, features: list[str], what: str,
        derived: tuple[str, ...] = (), **read: Any,
    ) -> tuple[np.ndarray, pd.DataFrame]:
        """(keys, text columns) of a feature file; unknown names raise ValueError."""
        path = self._path(name)
        with _csv.open_text(path, read.pop("encoding", "utf-8")) as f:
            df = pd.read_csv(f, dtype=str, na_filter=False, **read)
        df.columns = [str(c).strip() for c in df.columns]
        available = [c for c in df.columns if c != key] + list(derived)
        for n in features:
            if n not in available:
                raise ValueError(
                    f"unknown {what} feature {n!r} in {path}; available: {sorted(available)}"
                )
        keys, reasons = _csv.validate_values(df[key], "int", key)
        ok = reasons == None  # noqa: E711
        return keys[ok], df[ok].reset_index(drop=True)

    def _codes(self, df: pd.DataFrame, names: list[str]) -> dict[str, np.ndarray]:
        return {n: _csv.categorical_codes(df[n]) for n in names}


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

    def _layout(self, names: list[str], path: str) -> _csv.CsvLayout:
        required = [*self.ints, *self.floats, *self.texts, *self.enums]
        _csv.require_columns(names, required, path)
        if len(set(names)) != len(names):
            raise ValueError(f"{path}: duplicate column names in {names}")
        extras = [c for c in self.cfg.extra_columns if c in names and c not in required]
        return _csv.CsvLayout(
            tuple(names), self.ints, self.floats + tuple(extras), self.texts, self.enums,
            self.delimiter, self.quoting,
        )

    def _open(self, f: Any, path: str) -> tuple[Any, list[str], int]:
        """(line iterator, column names, line number of the first data line)."""
        if self.fixed_names is not None:
            return f, list(self.fixed_names), 1
        return f, _csv.read_header(f, self.delimiter), 2

    def read_chunks(
        self, file_index: int, path: str, chunk_rows: int = 50_000
    ) -> Iterator[tuple[EventChunk, list[DeadLetter]]]:
        with _csv.open_text(path, self.encoding, errors="surrogateescape") as f:
            lines, names, first = self._open(f, path)
            if not names:
                return
            layout = self._layout(names, path)
            for start, chunk in _csv.line_chunks(lines, chunk_rows, first):
                cols, line_no, dead = _csv.parse_lines(chunk, start, layout, path)
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

    def user_profiles(self, names: list[str]) -> dict[int, dict[str, int]]:
        if not names:
            return {}
        cols = ["user_id", "age", "gender", "occupation", "zip"]
        keys, df = self._table("u.user", "user_id", names, "user", sep="|", header=None,
                               names=cols, quoting=3)
        return _feature_dict(keys, self._codes(df, names))

    def item_features(self, names: list[str]) -> dict[int, dict[str, int]]:
        if not names:
            return {}
        cols = ["item_id", "title", "release_date", "video_release_date", "url"]
        cols += [f"genre_{i}" for i in range(19)]
        keys, df = self._table("u.item", "item_id", names, "item", ("genre", "year"), sep="|",
                               header=None, names=cols, quoting=3, encoding="latin-1")
        flags = df[[f"genre_{i}" for i in range(19)]].to_numpy() == "1"
        derived = {
            "genre": np.where(flags.any(axis=1), flags.argmax(axis=1), 0).astype(np.int64),
            "year": _csv.categorical_codes(df["release_date"].str.strip().str[-4:]),
        }
        return _feature_dict(keys, {n: derived[n] for n in names})


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

    def user_profiles(self, names: list[str]) -> dict[int, dict[str, int]]:
        if not names:
            return {}
        keys, df = self._table("user_features.csv", "user_id", names, "user")
        return _feature_dict(keys, self._codes(df, names))

    def item_features(self, names: list[str]) -> dict[int, dict[str, int]]:
        if not names:
            return {}
        keys, df = self._table("item_categories.csv", "video_id", names, "item", ("category",))
        first = df["feat"].str.strip("[] ").str.split(",").str[0]
        df = df.assign(category=first)
        return _feature_dict(keys, self._codes(df, names))


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

    def user_profiles(self, names: list[str]) -> dict[int, dict[str, int]]:
        if not names:
            return {}
        keys, df = self._table("user_features_1k.csv", "user_id", names, "user")
        return _feature_dict(keys, self._codes(df, names))

    def item_features(self, names: list[str]) -> dict[int, dict[str, int]]:
        if not names:
            return {}
        keys, df = self._table("video_features_basic_1k.csv", "video_id", names, "item",
                               ("category",))
        if "category" in names:
            df = df.assign(category=df["tag"].str.split(",").str[0])
        return _feature_dict(keys, self._codes(df, names))


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

    def item_features(self, names: list[str]) -> dict[int, dict[str, int]]:
        if not names:
            return {}
        bad = [n for n in names if n != "category"]
        if bad:
            raise ValueError(f"unknown item feature {bad[0]!r} in {self.cfg.path} (taobao log); "
                             "available: ['category']")
        parts = []
        for path in self.log_files():
            with _csv.open_text(path, errors="replace") as f:  # such rows do not parse
                for df in pd.read_csv(f, header=None, usecols=[1, 2], dtype=str, na_filter=False,
                                      on_bad_lines="skip", chunksize=1_000_000):
                    num = df.apply(pd.to_numeric, errors="coerce").dropna()
                    parts.append(num[(num >= 0).all(axis=1)].drop_duplicates(1))
        if not parts:
            return {}
        table = pd.concat(parts).drop_duplicates(1).astype(np.int64)
        return _feature_dict(table[1].to_numpy(), {"category": table[2].to_numpy()})


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
        names = [n for n in _csv.list_dir(self.cfg.path) if n.endswith(ext)]
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
            return _csv.text_ids(a) if a.dtype == object else a

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
            with _csv.open_text(path, errors="surrogateescape") as f:
                for start, lines in _csv.line_chunks(f, chunk_rows, 1):
                    df, nums, dead = _csv.json_records(lines, start, list(kinds), path)
                    yield self._frame(df, np.asarray(nums, np.int64), dead, kinds, path,
                                      file_index, functools.partial(_raw_line, lines, start))
            return
        import pyarrow.parquet as pq

        with _csv.open_binary(path) as fb:
            pf = pq.ParquetFile(fb)
            names = pf.schema_arrow.names
            _csv.require_columns(names, list(kinds), path)
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
        cols, reasons = _csv.validate_frame(df, kinds)
        for i in np.flatnonzero(reasons != None):  # noqa: E711
            dead.append(DeadLetter(path, int(line_no[i]), raw_of(int(line_no[i])), reasons[i]))
        dead.sort(key=lambda d: d.line)
        good = reasons == None  # noqa: E711
        return self._finish(cols, line_no[good], dead, path, file_index, raw_of)


_KINDS: dict[str, type[Source]] = {
    "movielens": MovieLensSource,
    "kuairec": KuaiRecSource,
    "kuairand": KuaiRandSource,
    "taobao": TaobaoSource,
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
    "GenericSource", "KuaiRandSource", "KuaiRecSource", "MovieLensSource", "Source",
    "TaobaoSource", "make_source",
]
