"""Canonical events: what every source adapter produces.

Events travel in column chunks (`EventChunk`, a struct of numpy arrays) rather than
one Python object per row: a 1M-row log is a few hundred chunks, which keeps the
Beam job's per-element overhead small.

Columns of a chunk:
    user_id, item_id: int64, raw ids (non-negative; string ids via
        `tfnegseq.schema.fingerprint64`).
    timestamp: int64, milliseconds since the epoch.
    value: float64, the engagement value (watch ratio, rating, play time, ...).
    file_index: int32, position of the source file in the adapter's file list.
    line: int64, 1-based line (or row) number in that file. (file_index, line) is the
        input order that breaks timestamp ties.
    columns: extra float64 columns by name, for the label / polarity rules
        (e.g. `watch_ratio`, `play_duration`, `rating`).
    label, polarity: int8, filled by `tfnegseq.data.rules.apply_rules`
        (polarity +1 positive, -1 negative, 0 neutral).

A `DeadLetter` records a row that could not be used: file, line, raw text, reason.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

CORE_DTYPES: dict[str, type] = {
    "user_id": np.int64,
    "item_id": np.int64,
    "timestamp": np.int64,
    "value": np.float64,
    "file_index": np.int32,
    "line": np.int64,
    "label": np.int8,
    "polarity": np.int8,
}


@dataclass(frozen=True)
class DeadLetter:
    file: str
    line: int
    raw: str
    reason: str

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass
class EventChunk:
    user_id: np.ndarray
    item_id: np.ndarray
    timestamp: np.ndarray
    value: np.ndarray
    file_index: np.ndarray
    line: np.ndarray
    columns: dict[str, np.ndarray] = field(default_factory=dict)
    label: np.ndarray | None = None
    polarity: np.ndarray | None = None

    def __post_init__(self) -> None:
        for name, dt in CORE_DTYPES.items():
            v = getattr(self, name)
            if v is not None:
                setattr(self, name, np.asarray(v, dtype=dt))
        self.columns = {k: np.asarray(v, dtype=np.float64) for k, v in self.columns.items()}
        n = len(self.user_id)
        for name in CORE_DTYPES:
            v = getattr(self, name)
            if v is not None and len(v) != n:
                raise ValueError(f"EventChunk column {name!r} has {len(v)} rows, expected {n}")
        for k, v in self.columns.items():
            if len(v) != n:
                raise ValueError(f"EventChunk column {k!r} has {len(v)} rows, expected {n}")

    def __len__(self) -> int:
        return len(self.user_id)

    def column(self, name: str) -> np.ndarray:
        """A column by name: a core one (as float64) or one of `columns`."""
        if name in self.columns:
            return self.columns[name]
        if name in ("user_id", "item_id", "timestamp", "value"):
            return getattr(self, name).astype(np.float64)
        raise KeyError(name)

    def take(self, index: np.ndarray) -> EventChunk:
        """Rows at `index` (an int array or a boolean mask)."""
        def pick(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else a[index]

        return EventChunk(
            user_id=self.user_id[index],
            item_id=self.item_id[index],
            timestamp=self.timestamp[index],
            value=self.value[index],
            file_index=self.file_index[index],
            line=self.line[index],
            columns={k: v[index] for k, v in self.columns.items()},
            label=pick(self.label),
            polarity=pick(self.polarity),
        )

    @staticmethod
    def concat(chunks: list[EventChunk]) -> EventChunk:
        chunks = [c for c in chunks if len(c)] or chunks[:1]
        if not chunks:
            return EventChunk.empty()
        keys = sorted(set().union(*(c.columns.keys() for c in chunks)))

        def cat(name: str) -> np.ndarray | None:
            parts = [getattr(c, name) for c in chunks]
            if any(p is None for p in parts):
                return None
            return np.concatenate(parts)

        def core(name: str) -> np.ndarray:
            return np.concatenate([getattr(c, name) for c in chunks])

        return EventChunk(
            user_id=core("user_id"),
            item_id=core("item_id"),
            timestamp=core("timestamp"),
            value=core("value"),
            file_index=core("file_index"),
            line=core("line"),
            columns={
                k: np.concatenate(
                    [c.columns.get(k, np.full(len(c), np.nan)) for c in chunks]
                )
                for k in keys
            },
            label=cat("label"),
            polarity=cat("polarity"),
        )

    @staticmethod
    def empty(columns: list[str] | None = None) -> EventChunk:
        z = np.zeros(0)
        return EventChunk(z, z, z, z, z, z, {k: z for k in columns or []})

    def split_by_user(self) -> list[tuple[int, EventChunk]]:
        """[(user_id, rows of that user in input order)], one entry per user."""
        if not len(self):
            return []
        order = np.argsort(self.user_id, kind="stable")
        users = self.user_id[order]
        cuts = np.flatnonzero(np.diff(users)) + 1
        out = []
        for idx in np.split(order, cuts):
            out.append((int(self.user_id[idx[0]]), self.take(idx)))
        return out
