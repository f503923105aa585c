"""Column values of a log or side table: vectorised checks and encodings.

`validate_values` checks one column (a pandas Series of text or typed values) against
a kind and words a reason for every bad value; `validate_frame` does it for a frame.

| kind | accepted | value |
| "int" | a non-negative integer (exact beyond 2**53) | int64 |
| "float" | a finite number | float64 |
| "text" | non-empty text | stripped text |
| "id" | a non-negative integer, or non-empty text | `tfnegseq.ids.raw_id` |
| a mapping text -> code (an enum) | a known text | its int64 code |

A missing value (NaN, None, blank text) is bad for every kind. For "int", "float",
"text" and enums the accepted values are those of the typed read in
`tfnegseq.data.delimited`, whose rejects are worded here. `categorical_codes` and
`text_ids` encode whole columns through `tfnegseq.ids` (one call per distinct value),
so the Beam job and the serving client map a value the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from tfnegseq.ids import feature_id, raw_id
from tfnegseq.schema import PAD_ID

_TRUE = ["True", "TRUE", "true"]
_FALSE = ["False", "FALSE", "false"]


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
        table = np.array([raw_id(u) for u in uniques] + [PAD_ID], dtype=np.int64)
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


def categorical_codes(series: pd.Series) -> np.ndarray:
    """`tfnegseq.ids.feature_id` of every value (computed once per distinct value)."""
    codes, uniques = pd.factorize(series, use_na_sentinel=True)
    table = np.array([feature_id(u) for u in uniques] + [PAD_ID], dtype=np.int64)
    return table[codes]  # code -1 (missing) picks the trailing PAD_ID


def text_ids(values: np.ndarray) -> np.ndarray:
    """`tfnegseq.ids.raw_id` of every (non-empty, stripped) text id, computed once per
    distinct value; a missing value is 0."""
    codes, uniques = pd.factorize(values)
    table = np.array([raw_id(u) for u in uniques] + [0], dtype=np.int64)
    return table[codes]
