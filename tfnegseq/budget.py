"""Exact sequence budgets: `floor(ratio * length)` for the ratio the user wrote.

`MixedPolaritySequence` gives `floor(r * L)` slots to positives and
`floor((1 - r) * L)` to negatives. Binary floating point makes `0.29 * 100` come out as
28.999..., and rounding before the floor (the earlier fix) made `0.2999999 * 10` a 3.
Here the float is read back as the shortest decimal that prints it (`repr`), which is
what the user wrote in the YAML, and the product is floored exactly with `Fraction`.
"""

from __future__ import annotations

from fractions import Fraction


def floor_share(ratio: float, length: int) -> int:
    """`floor(ratio * length)` computed exactly on the decimal `repr(ratio)`.

    Example:
        floor_share(0.29, 100)       # 29
        floor_share(0.2999999, 10)   # 2
        floor_share(1 - 0.7, 10)     # 3 (1 - 0.7 prints as 0.30000000000000004)
    """
    return int(Fraction(repr(float(ratio))) * int(length) // 1)


def polarity_budget(ratio: float, length: int) -> tuple[int, int]:
    """(positive slots, negative slots) of a length-`length` mixed sequence: the
    negatives' share is `1 - r` taken exactly, so the two never exceed `length`."""
    positives = floor_share(ratio, length)
    exact = Fraction(repr(float(ratio)))
    negatives = int((1 - exact) * int(length) // 1)
    return positives, negatives
