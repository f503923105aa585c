"""Label and polarity rules: `apply_rules(chunk, rules)` fills `label` and `polarity`.

Each of `rules.label`, `rules.positive` and `rules.negative` is a list of conditions
`column OP number` (`tfnegseq.config.Condition`) that must all hold (AND). Columns are
those of the chunk: `user_id`, `item_id`, `timestamp` (ms), `value` and the adapter's
named columns (`watch_ratio`, `play_duration`, `rating`, ...). A NaN value satisfies no
condition.

    polarity = +1 where every `positive` condition holds,
               -1 where every `negative` condition holds,
                0 otherwise (neutral).
    label    = every `label` condition holds; with an empty `label` list, label =
               (polarity == +1).

An empty `positive` or `negative` list matches no event. An event matching both the
positive and the negative rules is a configuration error (ValueError naming both rule
lists): the rules must be disjoint, there is no precedence.

Presets: `KUAIREC_RULES`, `SINE_RULES`, `MOVIELENS_RULES` (see their comments).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from tfnegseq.config import Condition, RulesConfig
from tfnegseq.data.events import EventChunk

_OPS = {
    ">=": np.greater_equal,
    "<=": np.less_equal,
    ">": np.greater,
    "<": np.less,
    "==": np.equal,
    "!=": np.not_equal,
}

# KuaiRec (issue: mixed-polarity CTR models): watched at least twice through is
# positive and the label, everything else is an (implicit) negative.
KUAIREC_RULES = RulesConfig(
    label=["watch_ratio >= 2.0"],
    positive=["watch_ratio >= 2.0"],
    negative=["watch_ratio < 2.0"],
)

# SINE protocol on short-video logs: positive when more than half of the video was
# played; passive negative when it was skipped within 3 s (and not a positive, which
# keeps the classes disjoint for videos shorter than 6 s); neutral in between.
# label = positive.
SINE_RULES = RulesConfig(
    label=[],
    positive=["watch_ratio > 0.5"],
    negative=["play_duration < 3000", "watch_ratio <= 0.5"],
)

# MovieLens: rating 4-5 positive (and the label), 1-2 negative, 3 neutral.
MOVIELENS_RULES = RulesConfig(
    label=["rating >= 4"],
    positive=["rating >= 4"],
    negative=["rating <= 2"],
)

PRESETS: dict[str, RulesConfig] = {
    "kuairec": KUAIREC_RULES,
    "sine": SINE_RULES,
    "movielens": MOVIELENS_RULES,
}


def _available(chunk: EventChunk) -> list[str]:
    return ["user_id", "item_id", "timestamp", "value", *sorted(chunk.columns)]


def _match(chunk: EventChunk, conditions: list[str], name: str) -> np.ndarray:
    """Rows of `chunk` where every condition of `rules.<name>` holds (none if empty)."""
    if not conditions:
        return np.zeros(len(chunk), dtype=bool)
    mask = np.ones(len(chunk), dtype=bool)
    for i, text in enumerate(conditions):
        where = f"rules.{name}[{i}]"
        cond = Condition.parse(text, where)
        try:
            col = chunk.column(cond.column)
        except KeyError:
            raise ValueError(
                f"{where} {text!r} names column {cond.column!r}, which the source does not "
                f"provide; available columns: {_available(chunk)}"
            ) from None
        with np.errstate(invalid="ignore"):
            mask &= _OPS[cond.op](col, cond.value)
    return mask


class RulesError(ValueError):
    """The configured rules do not fit the data (an event matched by both the positive
    and the negative rules): the user's mistake, reported in one line by the CLI."""


def apply_rules(chunk: EventChunk, rules: RulesConfig) -> EventChunk:
    """The chunk with `label` (int8 0/1) and `polarity` (int8 +1 / -1 / 0) filled.

    Returns a new `EventChunk` sharing the other arrays. Raises ValueError for a rule
    naming a missing column or for an event matched by both positive and negative rules.
    """
    pos = _match(chunk, rules.positive, "positive")
    neg = _match(chunk, rules.negative, "negative")
    both = pos & neg
    if both.any():
        i = int(np.flatnonzero(both)[0])
        raise RulesError(
            f"rules.positive {rules.positive} and rules.negative {rules.negative} both hold "
            f"for {int(both.sum())} event(s), e.g. user {chunk.user_id[i]} item "
            f"{chunk.item_id[i]} (file {chunk.file_index[i]}, line {chunk.line[i]}); "
            "make the rules disjoint"
        )
    polarity = pos.astype(np.int8) - neg.astype(np.int8)
    label = _match(chunk, rules.label, "label") if rules.label else pos
    return dataclasses.replace(chunk, label=label.astype(np.int8), polarity=polarity)
