"""The lines of a text log: header, numbered chunks, undecodable bytes.

Line numbers are physical, 1-based lines of the file (universal newlines). Logs are
opened with `errors="surrogateescape"` (`tfnegseq.data.files.open_text`), so a byte the
file's encoding cannot decode stays in its line as one lone surrogate: such a line is
found by `undecodable_lines` and becomes a dead letter with reason `ENCODING_ERROR`,
its raw text written with `escape_undecodable`. Blank lines at the end of a file are
dropped by `line_chunks`; all other lines, blank ones included, are yielded for the
parsers to judge.
"""

from __future__ import annotations

import csv
import itertools
import re
from collections.abc import Iterable, Iterator
from typing import IO

import numpy as np

from tfnegseq.data.files import open_text

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
    """Raises ValueError naming the `needed` columns that `header` lacks."""
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
