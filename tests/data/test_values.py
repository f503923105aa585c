"""Column checks and encodings (`tfnegseq.data.values`) on hand-worked columns."""

from __future__ import annotations

import numpy as np
import pandas as pd

from tfnegseq.data.values import categorical_codes, text_ids, validate_frame, validate_values
from tfnegseq.schema import PAD_ID, fingerprint64


def test_categorical_codes() -> None:
    """Side-feature columns map through `feature_id`, once per distinct value."""
    col = pd.Series(["full_active", " 12 ", "3.0", "", None, "1.5", "full_active"])
    assert categorical_codes(col).tolist() == [
        fingerprint64("full_active"), 12, 3, PAD_ID, PAD_ID, fingerprint64("1.5"),
        fingerprint64("full_active"),
    ]


def test_id_column() -> None:
    """Kind "id": digits are the value, other text its fingerprint; bad rows read 0."""
    col = pd.Series(["42", " u7 ", "  ", None, "u7"], dtype=object)
    ids, reasons = validate_values(col, "id", "user")
    assert ids.tolist() == [42, fingerprint64("u7"), 0, 0, fingerprint64("u7")]
    assert reasons.tolist() == [None, None, "user: missing value", "user: missing value", None]
    ids, reasons = validate_values(pd.Series([7, -1, 2.5, True], dtype=object), "id", "item")
    assert ids.tolist() == [7, 0, 0, 0]
    assert reasons.tolist() == [
        None, "item: not a valid id: -1", "item: not a valid id: 2.5",
        "item: not a valid id: True",
    ]


def test_text_ids() -> None:
    assert text_ids(np.array(["7", "u7", "7"], dtype=object)).tolist() == [
        7, fingerprint64("u7"), 7,
    ]


def test_validate_frame_keeps_the_first_reason() -> None:
    df = pd.DataFrame({"u": ["1", "x", ""], "t": ["5", "inf", "nope"]})
    cols, reasons = validate_frame(df, {"u": "int", "t": "float"})
    assert cols["u"].tolist() == [1] and cols["t"].tolist() == [5.0]
    assert reasons.tolist() == [
        None, "u: not a non-negative integer: 'x'", "u: missing value",
    ]
