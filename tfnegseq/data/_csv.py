"""Private helpers of `tfnegseq.data.sources`: file access and chunked, validated parsing.

Parsing a chunk of delimited lines (`parse_lines`):

1. Field counts are taken per line (`str.count`, or `csv` when quotes occur); blank lines,
   lines with the wrong count and lines with a byte the encoding cannot decode (files
   are read with `errors="surrogateescape"`) become dead letters.
2. Fast path: the other lines go through one typed `pandas.read_csv` call (C engine,
   int64 / float64 / text dtypes, only "" as NA) and vectorised checks (ids
   non-negative, numbers finite and present, texts non-empty, enum values known). Rows
   failing a check become dead letters, worded by the validator (`validate_values`).
3. Only when the typed read raises (a value that does not parse) is the block halved
   and retried, down to blocks of `_BLOCK` lines, which are read as text and validated
   column by column (`validate_values`, same acceptance as the typed read). Their good
   lines are parsed again with the typed read, so a good line gets the same values
   whatever its neighbours are, and only the bad lines of a chunk are dropped.

Line numbers are physical, 1-based lines of the file (universal newlines). Blank lines
at the end of a file are skipped; blank lines anywhere else are dead letters.
Quoted fields may not contain line breaks.
"""

from __future__ import annotations

import csv
import io
import itertools
import os
import posixpath
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import IO, Any

import numpy as np
import pandas as pd

from tfnegseq.data.events import DeadLetter
from tfnegseq.schema import PAD_ID, fingerprint64

_INT_LIMIT = float(2**63)
_DIGITS = re.compile(r"[0-9]{1,18}")
_INT_TEXT = re.compile(r"[+-]?[0-9]{1,18}")
_TRUE = ["True", "TRUE", "true"]
_FALSE = ["False", "FALSE", "false"]

# ------------------------------------------------------------------------ file access


def is_remote(path: str) -> bool:
    """True for URLs such as `gs://bucket/x` (read through `tf.io.gfile`)."""
    return "://" in path


def join(directory: str, name: str) -> str:
    """`directory/name`, with `/` for remote paths."""
    if is_remote(directory):
        return posixpath.join(directory, name)
    return os.path.join(directory, name)


def exists(path: str) -> bool:
    if is_remote(path):
        import tensorflow as tf

        return bool(tf.io.gfile.exists(path))
    return os.path.exists(path)


def list_dir(path: str) -> list[str]:
    """File names in a directory (local or remote), sorted."""
    if is_remote(path):
        import tensorflow as tf

        return sorted(n.rstrip("/") for n in tf.io.gfile.listdir(path))
    return sorted(os.listdir(path))


class _GFileRaw(io.RawIOBase):
    """Raw binary stream over a `tf.io.gfile.GFile` (so `io.TextIOWrapper` can decode it)."""

    def __init__(self, f: Any) -> None:
        self._f = f

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        data = self._f.read(len(b))
        b[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self._f.close()
        super().close()


def open_binary(path: str) -> IO[bytes]:
    """Opens a file for binary reading: builtin `open`, or `tf.io.gfile.GFile` for URLs."""
    if is_remote(path):
        import tensorflow as tf

        return tf.io.gfile.GFile(path, "rb")
    return open(path, "rb")


def open_text(path: str, encoding: str = "utf-8", errors: str = "strict") -> IO[str]:
    """Opens a text file (universal newlines): builtin `open`, or `GFile` for URLs.

    `errors` is the codec error handler; logs are read with "surrogateescape", which
    keeps each undecodable byte as one lone surrogate (see `undecodable_lines`).
    """
    if is_remote(path):
        import tensorflow as tf

        raw = io.BufferedReader(_GFileRaw(tf.io.gfile.GFile(path, "rb")), 1 << 20)
        return io.TextIOWrapper(raw, encoding=encoding, errors=errors)
    return open(path, encoding=encoding, errors=errors)


ENCODING_ERROR = "encoding"  # the dead-letter reason of a line with undecodable bytes
_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")  # what "surrogateescape" makes of a byte


def undecodable_lines(lines: list[str]) -> np.ndarray:
    """Mask of lines holding a byte the file's encoding could not decode (read with
    `errors="surrogateescape"`). One regex search over the chunk when all is well."""
    if _ESCAPED_BYTE.search("".join(lines)) is None:
        return np.zeros(len(lines), dtype=bool)
    return np.fromiter((_ESCAPED_BYTE.search(ln) is not None for ln in lines), bool, len(lines))


def escape_undecodable(line: str) -> str:
    """A line's text with each undecodable byte written as `\\xNN` (for a dead letter)."""
    return _ESCAPED_BYTE.sub(lambda m: f"\\x{ord(m.group()) - 0xDC00:02x}", line)


def read_header(f: IO[str], delimiter: str) -> list[str]:
    """Column names from the first line (a leading BOM is removed)."""
    line = f.readline()
    if not line:
        return []
    names = next(csv.reader([line.lstrip("\ufeff").rstrip("\r\n")], delimiter=delimiter))
    return [n.strip() for n in names]


def require_columns(header: list[str], needed: list[str], path: str) -> None:
    missing = [c for c in needed if c not in header]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; the file has columns {header}")


def line_chunks(
    f: Iterable[str], chunk_rows: int, first_line: int
) -> Iterator[tuple[int, list[str]]]:
    """(line number of the first line, lines) for every chunk of about `chunk_rows` lines.

    Blank lines at the end of the file are dropped (held back until a non-blank line
    follows, so a chunk boundary does not matter); all other lines are yielded.
    """
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1. Received: {chunk_rows}")
    held: list[str] = []
    start = first_line
    while True:
        block = list(itertools.islice(f, chunk_rows))
        if not block:
            return
        lines = held + block if held else block
        k = len(lines)
        while k and not lines[k - 1].strip():
            k -= 1
        held = lines[k:]
        if k:
            yield start, lines[:k]
            start += k


# ------------------------------------------------------------------------ validation


class _Raw:
    """raw[i]: the i-th original value of a series (fetched only for the rows reported)."""

    def __init__(self, series: pd.Series) -> None:
        self._s = series

    def __getitem__(self, i: Any) -> Any:
        return self._s.iloc[int(i)]


def _reasons_for(bad: np.ndarray, out: np.ndarray, make: Any, raw: Any) -> None:
    for i in np.flatnonzero(bad & (out == None)):  # noqa: E711 (element-wise)
        out[i] = make(raw[i])


def validate_values(series: pd.Series, kind: Any, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Checks one column of text or typed values.

    kind: "int" (non-negative integer), "float" (finite number), "text" (non-empty),
    "id" (non-negative integer, or a non-empty text id: digits -> int, other -> fingerprint)
    or a mapping text -> code (an enum).
    Returns (values, reasons): reasons[i] is None for a good value, else a message.
    """
    n = len(series)
    reasons = np.full(n, None, dtype=object)
    raw = _Raw(series)
    is_text = series.dtype == object or pd.api.types.is_string_dtype(series.dtype)
    missing = series.isna().to_numpy()
    if pd.api.types.is_string_dtype(series.dtype) and series.dtype != object:
        missing = missing | (series.str.strip() == "").to_numpy(dtype=bool, na_value=False)
    elif is_text:
        missing = missing | np.array([isinstance(v, str) and not v.strip() for v in series], bool)
    _reasons_for(missing, reasons, lambda v: f"{name}: missing value", raw)
    if isinstance(kind, Mapping):
        text = series.astype(str).str.strip()
        codes = text.map(kind).to_numpy(dtype=np.float64, na_value=np.nan)
        bad = np.isnan(codes)
        allowed = sorted(kind)
        _reasons_for(
            bad, reasons, lambda v: f"{name}: unknown value {v!r}; expected one of {allowed}", raw
        )
        return np.nan_to_num(codes).astype(np.int64), reasons
    if kind == "text" and is_text:
        return series.astype(str).str.strip().to_numpy(dtype=object), reasons
    if kind == "id" and is_text:
        codes, uniques = pd.factorize(series, use_na_sentinel=True)
        table = np.array([_id_of(u) for u in uniques] + [-1], dtype=np.int64)
        ids = table[codes]
        _reasons_for(ids < 0, reasons, lambda v: f"{name}: not a valid id: {v!r}", raw)
        return np.maximum(ids, 0), reasons
    if is_text:  # the C parser reads these as booleans
        series = series.mask(series.isin(_TRUE), "1").mask(series.isin(_FALSE), "0")
    num = pd.to_numeric(series, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    with np.errstate(invalid="ignore"):
        if kind == "float":
            _reasons_for(np.isnan(num), reasons, lambda v: f"{name}: not a number: {v!r}", raw)
            _reasons_for(np.isinf(num), reasons, lambda v: f"{name}: not finite: {v!r}", raw)
            return num, reasons
        bad = ~(num >= 0) | (num != np.floor(num))
        for i in np.flatnonzero(~bad & (num >= 2.0**53)):  # beyond float precision: exact check
            bad[i] = not 0 <= _exact_int(raw[i]) < 2**63
        _reasons_for(bad, reasons, lambda v: f"{name}: not a non-negative integer: {v!r}", raw)
        ok = reasons == None  # noqa: E711
        out = np.zeros(n, dtype=np.int64)
        out[ok] = num[ok].astype(np.int64)
    if not is_text and pd.api.types.is_integer_dtype(series.dtype):
        out[ok] = series.to_numpy()[ok]  # exact beyond 2**53
    else:
        for i in np.flatnonzero(ok & (num >= 2.0**53)):
            out[i] = _exact_int(raw[i])
    return out, reasons


def _exact_int(value: Any) -> int | float:
    """The exact integer of a text or number (inf when it is not one)."""
    try:
        return int(value.strip()) if isinstance(value, str) else int(value)
    except (ValueError, OverflowError):
        pass
    try:
        f = float(value)
        return int(f) if f == int(f) else float("inf")
    except (ValueError, OverflowError):
        return float("inf")


def _id_of(value: Any) -> int:
    """`to_id` of a text, or a non-negative integral number as is; -1 if not an id."""
    if isinstance(value, str):
        return to_id(value.strip()) if value.strip() else -1
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.number)):
        return -1
    if isinstance(value, (float, np.floating)):
        if not (0 <= value < _INT_LIMIT) or value != int(value):
            return -1
    return int(value) if 0 <= value < 2**63 else -1


def to_id(text: str) -> int:
    """A text id: a string of decimal digits is its integer value, others fingerprint64."""
    if _DIGITS.fullmatch(text):
        return int(text)
    return fingerprint64(text)


def categorical(value: Any) -> int:
    """A categorical feature value as an int.

    Integers (and integral floats such as `3.0`) stay integers; other text maps through
    `fingerprint64`; a missing value (None, NaN, empty text) is `PAD_ID`.
    """
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return PAD_ID
    if isinstance(value, (int, np.integer)):
        return int(value)
    text = str(value).strip()
    if not text:
        return PAD_ID
    if _INT_TEXT.fullmatch(text):
        return int(text)
    try:
        f = float(text)
    except ValueError:
        return fingerprint64(text)
    if np.isfinite(f) and f == int(f) and abs(f) < 2**62:
        return int(f)
    return fingerprint64(text)


def categorical_codes(series: pd.Series) -> np.ndarray:
    """`categorical` of every value (computed once per distinct value)."""
    codes, uniques = pd.factorize(series, use_na_sentinel=True)
    table = np.array([categorical(u) for u in uniques] + [PAD_ID], dtype=np.int64)
    return table[codes]  # code -1 (missing) picks the trailing PAD_ID


# ---------------------------------------------------------------------------- chunks


@dataclass(frozen=True)
class CsvLayout:
    """Columns of a delimited file and how each used column is parsed.

    names: every column in file order. ints / floats / texts: used columns parsed as
    non-negative int64 / finite float64 / non-empty stripped text. enums: used text
    columns with a fixed vocabulary, parsed to int64 codes.
    """

    names: tuple[str, ...]
    ints: tuple[str, ...] = ()
    floats: tuple[str, ...] = ()
    texts: tuple[str, ...] = ()
    enums: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    delimiter: str = ","
    quoting: bool = False

    @property
    def used(self) -> list[str]:
        used = set(self.ints) | set(self.floats) | set(self.texts) | set(self.enums)
        return [n for n in self.names if n in used]

    def kind(self, name: str) -> Any:
        if name in self.ints:
            return "int"
        if name in self.floats:
            return "float"
        return self.enums.get(name, "text")


_BLOCK = 2048  # a block that fails the typed read is halved down to this many lines
_MAX_FAILING = 4  # ... while no more than this many blocks fail


def _read(text: str, layout: CsvLayout, typed: bool) -> pd.DataFrame:
    """One `read_csv` of the used columns: typed (empty -> NaN) or all as raw text."""
    dtype: dict[str, Any] = {c: str for c in layout.used}
    na: dict[str, Any] = {"na_filter": False}
    if typed:
        dtype |= {c: np.int64 for c in layout.ints} | {c: np.float64 for c in layout.floats}
        na = {"keep_default_na": False, "na_values": [""]}
    with np.errstate(all="ignore"):
        return pd.read_csv(
            io.StringIO(text), sep=layout.delimiter, header=None, names=list(layout.names),
            usecols=layout.used, dtype=dtype, engine="c", skip_blank_lines=False,
            quoting=csv.QUOTE_MINIMAL if layout.quoting else csv.QUOTE_NONE, **na,
        )


def field_counts(lines: list[str], delimiter: str, quoting: bool) -> np.ndarray:
    """The number of fields of each line (a blank line has 1); quoted fields are
    honoured when `quoting` is set."""
    return _field_counts(lines, CsvLayout((), delimiter=delimiter, quoting=quoting))


def read_lines(path: str, wanted: set[int], encoding: str = "utf-8") -> dict[int, str]:
    """The raw text (newline removed, undecodable bytes as `\\xNN`) of the wanted
    1-based physical lines of a text file, in one streaming pass."""
    out: dict[int, str] = {}
    if not wanted:
        return out
    last = max(wanted)
    with open_text(path, encoding, errors="surrogateescape") as f:
        for n, line in enumerate(f, start=1):
            if n in wanted:
                out[n] = escape_undecodable(line.rstrip("\r\n"))
            if n >= last:
                break
    return out


def _field_counts(lines: list[str], layout: CsvLayout) -> np.ndarray:
    d = layout.delimiter
    if layout.quoting and any('"' in ln for ln in lines):
        counts = (len(next(csv.reader([ln.rstrip("\r\n")], delimiter=d), [])) for ln in lines)
        return np.fromiter(counts, np.int64, len(lines))
    return np.fromiter(map(str.count, lines, itertools.repeat(d)), np.int64, len(lines)) + 1


def _typed(text: str, n: int, layout: CsvLayout) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The fast path: typed read + vectorised checks.

    Returns (columns, mask of rows with a bad value: missing or non-finite number,
    negative id, empty text, unknown enum value). Raises when a value does not parse.
    """
    df = _read(text, layout, typed=True)
    if len(df) != n:
        raise ValueError(f"read {len(df)} rows, expected {n}")
    out: dict[str, np.ndarray] = {}
    bad = np.zeros(n, dtype=bool)
    for c in layout.used:
        s = df[c]
        if c in layout.ints:
            a = s.to_numpy(dtype=np.int64)
            bad |= a < 0
        elif c in layout.floats:
            a = s.to_numpy(dtype=np.float64)
            bad |= ~np.isfinite(a)
        else:
            s = s.fillna("").str.strip()
            if c in layout.enums:
                codes = s.map(layout.enums[c])
                bad |= codes.isna().to_numpy()
                a = codes.fillna(0).to_numpy(dtype=np.int64)
            else:
                a = s.to_numpy(dtype=object)
                bad |= a == ""
        out[c] = a
    return out, bad


def _empty(layout: CsvLayout) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for c in layout.used:
        k = layout.kind(c)
        out[c] = np.zeros(0, np.float64 if k == "float" else object if k == "text" else np.int64)
    return out


def _letter(path: str, line: int, raw: str, reason: str) -> DeadLetter:
    return DeadLetter(path, line, raw.rstrip("\r\n"), reason)


def _reasons(lines: list[str], layout: CsvLayout) -> list[str | None]:
    """The validator's verdict (None = good) for lines with the right field count."""
    try:
        df = _read("".join(lines), layout, typed=False)
        if len(df) != len(lines):
            raise ValueError(f"read {len(df)} rows from {len(lines)} lines")
    except Exception as e:  # noqa: BLE001 - e.g. a quote spanning lines: narrow it down
        if len(lines) == 1:
            return [f"unparsable row: {e}"]
        half = len(lines) // 2
        return _reasons(lines[:half], layout) + _reasons(lines[half:], layout)
    bad = np.full(len(lines), None, dtype=object)
    for c in layout.used:
        _, reasons = validate_values(df[c], layout.kind(c), c)
        take = (bad == None) & (reasons != None)  # noqa: E711
        bad[take] = reasons[take]
    return list(bad)


def parse_lines(
    lines: list[str], start: int, layout: CsvLayout, path: str
) -> tuple[dict[str, np.ndarray], np.ndarray, list[DeadLetter]]:
    """Parses lines `start, start+1, ...` of `path`.

    A line with an undecodable byte is a dead letter (reason `ENCODING_ERROR`, its raw
    text with the bytes escaped), whatever its fields. Returns (columns of the good rows, their line numbers, dead letters in line order).
    """
    counts = _field_counts(lines, layout)
    undecodable = undecodable_lines(lines)
    idx = np.flatnonzero((counts == len(layout.names)) & ~undecodable)
    dead = {
        int(i): _letter(path, start + int(i), lines[i], "blank line" if not lines[i].strip()
                        else f"expected {len(layout.names)} fields, found {counts[i]}")
        for i in np.flatnonzero(counts != len(layout.names))
    }
    for i in np.flatnonzero(undecodable).tolist():
        dead[i] = _letter(path, start + i, escape_undecodable(lines[i]), ENCODING_ERROR)
    cols, idx = _parse_block(lines, idx, layout, start, path, dead)
    letters = [dead[i] for i in sorted(dead)]
    return cols, start + idx, letters


def _join(lines: list[str], idx: np.ndarray) -> str:
    if len(idx) == len(lines):
        return "".join(lines)
    return "".join([lines[i] for i in idx.tolist()])


def _parse_block(
    lines: list[str], idx: np.ndarray, layout: CsvLayout, start: int, path: str,
    dead: dict[int, DeadLetter],
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Parses lines[idx] (all with the right field count); bad ones go to `dead`.

    When the typed read raises, failing blocks are halved and the halves retried, down
    to `_BLOCK` lines, while at most `_MAX_FAILING` blocks fail (a few bad lines are
    found with a few reads; many bad lines stop the search early). The failing blocks
    are then validated line by line.
    """
    pieces: list[tuple[dict[str, np.ndarray], np.ndarray]] = []
    failing = [idx] if len(idx) else []
    while True:
        retry = []
        for block in failing:
            try:
                parsed = _typed(_join(lines, block), len(block), layout)
            except Exception:  # noqa: BLE001 - a value that does not parse: narrow it down
                retry.append(block)
                continue
            pieces.append(_accept(lines, block, *parsed, layout, start, path, dead))
        if len(retry) > _MAX_FAILING or all(len(b) <= _BLOCK for b in retry):
            break
        failing = [h for b in retry for h in ((b,) if len(b) <= _BLOCK else _halves(b))]
    for block in retry:
        good = []
        rows = block.tolist()
        for i, reason in zip(rows, _reasons([lines[i] for i in rows], layout), strict=True):
            if reason is None:
                good.append(i)
            else:
                dead[i] = _letter(path, start + i, lines[i], reason)
        pieces.append(_parse_good(lines, good, layout, start, path, dead))
    if not pieces:
        return _empty(layout), np.zeros(0, np.int64)
    if len(pieces) == 1:
        return pieces[0]
    order = np.argsort(np.concatenate([p[1] for p in pieces]), kind="stable")
    cols = {c: np.concatenate([p[0][c] for p in pieces])[order] for c in layout.used}
    return cols, np.concatenate([p[1] for p in pieces])[order]


def _halves(block: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return block[: len(block) // 2], block[len(block) // 2 :]


def _accept(
    lines: list[str], idx: np.ndarray, cols: dict[str, np.ndarray], bad: np.ndarray,
    layout: CsvLayout, start: int, path: str, dead: dict[int, DeadLetter],
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """A typed read of lines[idx]: rows failing its checks become dead letters."""
    if bad.any():  # the validator words the reasons
        bad_idx = idx[bad].tolist()
        for i, reason in zip(bad_idx, _reasons([lines[i] for i in bad_idx], layout), strict=True):
            dead[i] = _letter(path, start + i, lines[i], reason or "bad value")
        cols, idx = {c: v[~bad] for c, v in cols.items()}, idx[~bad]
    return cols, np.asarray(idx, dtype=np.int64)


def _parse_good(
    lines: list[str], good: list[int], layout: CsvLayout, start: int, path: str,
    dead: dict[int, DeadLetter],
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Typed parse of the validated lines; a line it still rejects becomes a dead letter."""
    if not good:
        return _empty(layout), np.zeros(0, np.int64)
    try:
        cols, bad = _typed("".join([lines[i] for i in good]), len(good), layout)
        if not bad.any():
            return cols, np.asarray(good, dtype=np.int64)
    except Exception:  # noqa: BLE001 - last resort below: one line at a time
        pass
    parts, kept = [], []
    for i in good:
        try:
            one, bad = _typed(lines[i], 1, layout)
            if bad[0]:
                raise ValueError("a value is missing or not finite")
            parts.append(one)
            kept.append(i)
        except Exception as e:  # noqa: BLE001
            dead[i] = _letter(path, start + i, lines[i], f"unparsable row: {e}")
    if not parts:
        return _empty(layout), np.zeros(0, np.int64)
    cols = {c: np.concatenate([p[c] for p in parts]) for c in layout.used}
    return cols, np.asarray(kept, dtype=np.int64)


# ---------------------------------------------------------------------------- frames


def text_ids(values: np.ndarray) -> np.ndarray:
    """`to_id` of every text (computed once per distinct value)."""
    codes, uniques = pd.factorize(values)
    table = np.array([to_id(u) for u in uniques] + [0], dtype=np.int64)
    return table[codes]


def validate_frame(
    df: pd.DataFrame, kinds: dict[str, Any]
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """`validate_values` of each column of `df` (kinds: column -> kind).

    Returns (columns restricted to the good rows, reasons): reasons[i] is the first
    failing column's message for row i, or None for a good row.
    """
    values: dict[str, np.ndarray] = {}
    reasons = np.full(len(df), None, dtype=object)
    for c, kind in kinds.items():
        values[c], r = validate_values(df[c], kind, c)
        take = (reasons == None) & (r != None)  # noqa: E711
        reasons[take] = r[take]
    good = reasons == None  # noqa: E711
    return {c: v[good] for c, v in values.items()}, reasons


def json_records(
    lines: list[str], start: int, needed: list[str], path: str
) -> tuple[pd.DataFrame, list[int], list[DeadLetter]]:
    """Parses JSON-object lines: (frame of `needed` keys, their line numbers, dead letters)."""
    import json

    recs: list[dict[str, Any]] = []
    nums: list[int] = []
    dead: list[DeadLetter] = []
    undecodable = undecodable_lines(lines)
    for i, ln in enumerate(lines):
        raw = ln.rstrip("\r\n")
        if undecodable[i]:
            dead.append(DeadLetter(path, start + i, escape_undecodable(raw), ENCODING_ERROR))
            continue
        if not raw.strip():
            dead.append(DeadLetter(path, start + i, raw, "blank line"))
            continue
        try:
            rec = json.loads(raw)
        except ValueError as e:
            dead.append(DeadLetter(path, start + i, raw, f"invalid JSON: {e}"))
            continue
        if not isinstance(rec, dict):
            dead.append(DeadLetter(path, start + i, raw, "not a JSON object"))
            continue
        nested = [k for k in needed if isinstance(rec.get(k), (dict, list))]
        if nested:
            dead.append(DeadLetter(path, start + i, raw, f"{nested[0]}: not a scalar value"))
            continue
        recs.append(rec)
        nums.append(start + i)
    df = pd.DataFrame.from_records(recs, columns=needed) if recs else pd.DataFrame(
        {c: pd.Series([], dtype=object) for c in needed})
    return df, nums, dead
