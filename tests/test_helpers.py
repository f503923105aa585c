"""Tests for tests/helpers.py's bfloat16 emulation: `to_bf16`, `bf16_matmul`, `bf16_ulp`,
`assert_bf16_close`."""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers import assert_bf16_close, bf16_matmul, bf16_ulp, to_bf16


def test_to_bf16_hand_worked_values():
    cases = {
        1.0: 1.0,  # 0x3F800000: already a bf16
        1 + 2**-8: 1.0,  # 0x3F808000: a tie, kept mantissa even -> down
        1 + 3 * 2**-8: 1 + 2**-6,  # 0x3F818000: a tie, kept mantissa odd -> up (carry)
        1 + 2**-8 + 2**-23: 1 + 2**-7,  # 0x3F808001: just above the tie -> up
        1 + 2**-8 - 2**-23: 1.0,  # 0x3F807FFF: just below the tie -> down
        257.0: 256.0,  # ulp 2 above 256: a tie, even -> 256
        259.0: 260.0,  # a tie between 258 (odd mantissa) and 260 -> 260
        257.5: 258.0,
        -1.9990234375: -2.0,  # mantissa all ones rounds up into the exponent
        3.1415927: 3.140625,  # 0x40490FDB -> 0x4049
        -2.7182817: -2.71875,  # 0xC02DF854 -> 0xC02E
        0.1: 0.10009765625,  # 0x3DCCCCCD -> 0x3DCD
        3.3895313892515355e38: 3.3895313892515355e38,  # the largest bf16
        3.4028234663852886e38: np.inf,  # the largest float32 rounds past it
        1e-45: 0.0,  # the smallest float32 subnormal
    }
    x = np.array(list(cases), np.float32)
    got = to_bf16(x)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, np.array(list(cases.values()), np.float32))
    np.testing.assert_array_equal(to_bf16(got), got)  # idempotent
    special = to_bf16(np.array([np.nan, np.inf, -np.inf, -0.0], np.float32))
    assert np.isnan(special[0]) and special[1] == np.inf and special[2] == -np.inf
    assert special[3] == 0 and np.signbit(special[3])
    bits = np.array([0x7F800001, 0xFF800001], np.uint32).view(np.float32)  # low-payload NaNs
    assert np.isnan(to_bf16(bits)).all()


def test_to_bf16_matches_ml_dtypes():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    rng = np.random.default_rng(40)
    bits = rng.integers(0, 2**32, 200_000, dtype=np.uint64).astype(np.uint32)
    bits[::7] = (bits[::7] & 0xFFFF0000) | 0x8000  # many exact ties
    x = bits.view(np.float32)
    with np.errstate(invalid="ignore"):  # NaN inputs
        want = x.astype(ml_dtypes.bfloat16).astype(np.float32)
    np.testing.assert_array_equal(to_bf16(x), want)  # NaNs compare equal here


def test_bf16_ulp_and_assert_bf16_close():
    np.testing.assert_array_equal(
        bf16_ulp(np.array([1.0, 1.99, 2.0, -0.75, 3.0], np.float32)),
        np.array([2**-7, 2**-7, 2**-6, 2**-8, 2**-6], np.float32),
    )
    assert_bf16_close(np.float32(1 + 2**-6), np.float32(1.0), ulps=2)
    with pytest.raises(AssertionError, match="differ by more than 2 bf16 ulps"):
        assert_bf16_close(np.float32(1 + 3 * 2**-7), np.float32(1.0), ulps=2)
    # Measured against `scale` where a sum cancels: 1 ulp of 4 is 2**-5.
    assert_bf16_close(np.float32(2**-5), np.float32(0.0), ulps=1, scale=np.float32(4.0))


def test_bf16_matmul_rounds_once_after_accumulating():
    """1 + 3 * 2**-9 is 0.75 bf16 ulps above 1: rounded once it becomes 1 + 2**-7; a
    running bf16 sum would drop each 2**-9 (half an ulp, a tie to even) and stay at 1."""
    a = np.array([[1.0, 2**-9, 2**-9, 2**-9]], np.float32)
    b = np.ones((4, 2), np.float32)
    got = bf16_matmul(a, b)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, np.full((1, 2), 1 + 2**-7, np.float32))
