"""`raw_id` and `feature_id` on hand-worked values.

The fingerprints are blake2b-8 of the UTF-8 text, big-endian, & (2**63 - 1), worked
out with `hashlib` alone (e.g. "u42" -> 4000246608237521823).
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from tfnegseq.ids import feature_id, raw_id
from tfnegseq.schema import PAD_ID

U42 = 4000246608237521823
M = 3923287086039162729
MINUS_3 = 5536901615870580601  # "-3"
ONE_E3 = 1000
THREE_HALVES = 4790415907376968848  # "3.5"
DIGITS_19 = 6773254040001601803  # "1234567890123456789"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("42", 42),
        (" 42\t", 42),  # stripped
        ("007", 7),
        ("u42", U42),
        (" u42 ", U42),  # the fingerprint of the stripped text
        ("-3", MINUS_3),  # an id has no sign: text, so a fingerprint
        ("123456789012345678", 123456789012345678),  # 18 digits: the value
        ("1234567890123456789", DIGITS_19),  # 19 digits: a fingerprint
        ("", PAD_ID),
        ("   ", PAD_ID),
        (7, 7),
        (np.int64(7), 7),
        (7.0, 7),
        (np.float64(7.0), 7),
        (0, 0),  # a real id
        (2**63 - 1, 2**63 - 1),
        (2**63, PAD_ID),
        (-1, PAD_ID),
        (7.5, PAD_ID),
        (float("nan"), PAD_ID),
        (float("inf"), PAD_ID),
        (True, PAD_ID),
        (np.bool_(True), PAD_ID),
        (None, PAD_ID),
    ],
)
def test_raw_id(value, expected) -> None:
    assert raw_id(value) == expected
    assert type(raw_id(value)) is int


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("M", M),
        (" M ", M),
        ("24", 24),
        (" 24 ", 24),
        ("+3", 3),
        ("-3", -3),  # a categorical integer may carry a sign
        ("3.0", 3),
        ("1e3", ONE_E3),
        ("3.5", THREE_HALVES),
        ("", PAD_ID),
        (None, PAD_ID),
        (float("nan"), PAD_ID),
        (7, 7),
        (-7, -7),
        (np.int64(7), 7),
        (3.0, 3),
        (True, 1),
    ],
)
def test_feature_id(value, expected) -> None:
    assert feature_id(value) == expected
    assert type(feature_id(value)) is int


def test_imports_neither_numpy_nor_pandas() -> None:
    code = (
        "import sys, tfnegseq.ids; "
        "print(sorted(m for m in ('numpy', 'pandas') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
