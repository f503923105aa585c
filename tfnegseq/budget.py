"""Exact sequence budgets: `floor(r * L)` positives and `floor((1 - r) * L)` negatives.

`MixedPolaritySequence` gives `floor(r * L)` slots to positives and
`floor((1 - r) * L)` to negatives. Binary floating point makes `0.29 * 100` come out as
28.999..., and rounding the product before the floor (the earlier code) made
`0.29999999 * 10` a 3. Here the ratio is read as the decimal its `str` shows (what the
user wrote in the YAML; for a numpy float32 its short form, e.g. "0.3") and the products
are floored exactly with `Fraction`. The config check (`samples.max_history`) and the
layer use this one function, so they agree.
"""

from __future__ import annotations

import math
from fractions import Fraction


def polarity_budget(ratio: float, length: int) -> tuple[int, int]:
    """(positive slots, negative slots) of a length-`length` mixed sequence.

    Example:
        polarity_budget(0.29, 100)        # (29, 71)
        polarity_budget(0.29999999, 10)   # (2, 7)
        polarity_budget(0.5, 101)         # (50, 50)
    """
    share = Fraction(str(ratio))
    return math.floor(share * int(length)), math.floor((1 - share) * int(length))
