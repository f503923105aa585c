"""Parsing chunks of JSON Lines (one JSON object per line) into a frame and dead letters.

`json_records` keeps the needed keys of every line that is a JSON object with scalar
values there; a line with an undecodable byte (reason `ENCODING_ERROR`), a blank line,
invalid JSON, a JSON value that is not an object, or a needed key holding an object or
a list is a dead letter. A missing key is NaN in the frame: the values themselves are
checked afterwards (`tfnegseq.data.values.validate_frame`).
"""

from __future__ import annotations

import json
from typing import Any

import pandas as pd

from tfnegseq.data.events import DeadLetter
from tfnegseq.data.lines import ENCODING_ERROR, escape_undecodable, undecodable_lines


def json_records(
    lines: list[str], start: int, needed: list[str], path: str
) -> tuple[pd.DataFrame, list[int], list[DeadLetter]]:
    """Parses JSON-object lines: (frame of `needed` keys, their line numbers, dead letters)."""
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
