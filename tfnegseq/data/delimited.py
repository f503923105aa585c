"""Parsing chunks of delimited (CSV / TSV) lines into typed columns and dead letters.

A `CsvLayout` says which columns a file has and how each used one is parsed.
`parse_lines` parses one chunk of lines (from `tfnegseq.data.lines.line_chunks`):

1. Field counts are taken per line (`str.count`, or `csv` when quotes occur); blank lines,
   lines with the wrong count and lines with a byte the encoding cannot decode (files
   are read with `errors="surrogateescape"`) become dead letters.
2. Fast path: the other lines go through one typed `pandas.read_csv` call (C engine,
   int64 / float64 / text dtypes, only "" as NA) and vectorised checks (ids
   non-negative, numbers finite and present, texts non-empty, enum values known). Rows
   failing a check become dead letters, worded by the validator
   (`tfnegseq.data.values.validate_values`).
3. Only when the typed read raises (a value that does not parse) is the block halved
   and retried, down to blocks of `_BLOCK` lines, which are read as text and validated
   column by column (`validate_values`, same acceptance as the typed read). Their good
   lines are parsed again with the typed read, so a good line gets the same values
   whatever its neighbours are, and only the bad lines of a chunk are dropped.

Line numbers are physical, 1-based lines of the file (universal newlines).
Quoted fields may not contain line breaks.
"""

from __future__ import annotations

import csv
import io
import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from tfnegseq.data.events import DeadLetter
from tfnegseq.data.lines import ENCODING_ERROR, escape_undecodable, undecodable_lines
from tfnegseq.data.values import validate_values


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
    text with the bytes escaped), whatever its fields. Returns (columns of the good rows,
    their line numbers, dead letters in line order).
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
