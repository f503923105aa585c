"""Raw values -> the int64 ids the model sees: `raw_id` for user / item ids, `feature_id`
for categorical side-feature values.

The Beam job (`tfnegseq.data.values`, once per distinct value of a column) and the
serving client (`tfnegseq.serving.client`, per request) both call these, so a value is
mapped the same way at training and at serving time. Text that is not an integer goes
through `tfnegseq.schema.fingerprint64`; a missing value is `PAD_ID` (-1).

Plain Python (no numpy / pandas import), so the client stays importable without them.
numpy scalars are handled through the `numbers` ABCs (`np.int64` is `Integral`,
`np.float64` is `Real`; `np.bool_` is neither).

Example:
    >>> raw_id("42"), raw_id(7.0), raw_id(-3), raw_id("")
    (42, 7, -1, -1)
    >>> feature_id("M"), feature_id("24"), feature_id("3.0"), feature_id(None)
    (3923287086039162729, 24, 3, -1)
"""

from __future__ import annotations

import math
import numbers
import re
from typing import Any

from tfnegseq.schema import PAD_ID, fingerprint64

# An id is decimal digits; a categorical integer may carry a sign. Both at most 18
# digits, so the value fits int64 without an overflow check.
_ID_TEXT = re.compile(r"[0-9]{1,18}")
_INT_TEXT = re.compile(r"[+-]?[0-9]{1,18}")


def raw_id(value: Any) -> int:
    """A user or item id as the Beam job writes it.

    Non-negative integers (and integral floats) as they are; text is stripped, then up
    to 18 decimal digits are its value and other text (e.g. `"u42"`) is its
    `tfnegseq.schema.fingerprint64`. Anything else (a negative number, empty text,
    None) is `PAD_ID` (-1): no id, which the model treats as padding.

    Args:
        value: int, str or float. The id as it appears in the dataset's files.

    Returns:
        The int64 the model was trained on.
    """
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return PAD_ID
        return int(text) if _ID_TEXT.fullmatch(text) else fingerprint64(text)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return PAD_ID
    number: Any = value  # typeshed's `numbers.Real` supports neither `int()` nor `0 <=`
    if not isinstance(number, numbers.Integral) and not (
        0 <= number < float(2**63) and number == int(number)
    ):
        return PAD_ID
    return int(number) if 0 <= number < 2**63 else PAD_ID


def feature_id(value: Any) -> int:
    """A profile or side-feature value (`user_<f>`, `item_<f>`) as the Beam job writes it.

    Integers stay integers; integer text is its value (`"24"` -> 24, `"3.0"` -> 3);
    other text is `tfnegseq.schema.fingerprint64` of the stripped text (`"M"`,
    `"technician"`, `"full_active"`); a missing value (None, NaN, empty text) is
    `PAD_ID` (-1). Send these, not the text: the model's inputs are int64.

    Args:
        value: int, str, float or None. The value as it appears in the dataset's files.

    Returns:
        The int64 the model was trained on.
    """
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return PAD_ID
    if isinstance(value, numbers.Integral):
        return int(value)
    text = str(value).strip()
    if not text:
        return PAD_ID
    if _INT_TEXT.fullmatch(text):
        return int(text)
    try:
        number = float(text)
    except ValueError:
        return fingerprint64(text)
    if math.isfinite(number) and number == int(number) and abs(number) < 2**62:
        return int(number)
    return fingerprint64(text)
