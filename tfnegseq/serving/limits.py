"""What one request and one client may cost the local server.

`Limits` holds the caps and their defaults (the CLI's flags of the same names, see
`serving/README.md`); `check_request_size` refuses a predict whose rows, candidates or
history exceed them, before the graph runs; `run_in_chunks` scores a batch a bounded
number of rows at a time. The connection-level limits (body read timeout, idle
timeout, connection cap) are applied by `tfnegseq.serving.local_server`. TF Serving has
none of these (its REST server reads any body and runs any batch).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

import numpy as np

from tfnegseq.serving.status import invalid_argument


@dataclasses.dataclass(frozen=True)
class Limits:
    """Caps on the work per request and on slow or idle clients.

    Candidate inputs are the export's `item_id` and `item_<feature>` ([B, C]); history
    inputs are `pos_*` and `neg_*` ([B, W]). Other inputs are only counted in rows.

    Args:
        max_rows: int. Rows per predict (instances, or the first dimension of columnar
            inputs); more get 400. Defaults to 4096.
        max_candidates: int. Candidates per row (second dimension of candidate
            inputs); more get 400. Defaults to 4096.
        max_history: int. History length (second dimension of history inputs); more
            get 400. Defaults to 4096.
        chunk_rows: int. Rows per graph run: a bigger batch is scored in chunks of this
            many rows and the outputs concatenated. Defaults to 512.
        body_read_timeout: float. Seconds to receive a body once the headers are in;
            then 408 and the connection is closed. Defaults to 30.
        idle_timeout: float. Seconds a connection may go without a complete request
            head (a new connection, a slow one, or an idle keep-alive one) before it is
            closed. Defaults to 75.
        max_connections: int. Open connections; one more gets 503 and is closed.
            Defaults to 256.
    """

    max_rows: int = 4096
    max_candidates: int = 4096
    max_history: int = 4096
    chunk_rows: int = 512
    body_read_timeout: float = 30.0
    idle_timeout: float = 75.0
    max_connections: int = 256

    def __post_init__(self) -> None:
        for name in ("max_rows", "max_candidates", "max_history", "chunk_rows", "max_connections"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"`{name}` must be a positive integer. Received: {name}={value}")
        for name in ("body_read_timeout", "idle_timeout"):
            value = getattr(self, name)
            if not value > 0:
                raise ValueError(f"`{name}` must be positive. Received: {name}={value}")


def _kind(name: str) -> tuple[str, str] | None:
    """(what, flag) for a candidate or history input name, else None."""
    if name == "item_id" or name.startswith("item_"):
        return "candidates", "max_candidates"
    if name.startswith(("pos_", "neg_")):
        return "history entries", "max_history"
    return None


def check_request_size(arrays: Mapping[str, np.ndarray], limits: Limits) -> None:
    """Raises INVALID_ARGUMENT (400) naming the flag when a predict asks too much."""
    for name in sorted(arrays):
        shape = arrays[name].shape
        if shape and shape[0] > limits.max_rows:
            raise invalid_argument(
                f"Request has {shape[0]} rows (input '{name}'); the limit is "
                f"{limits.max_rows} (--max_rows)"
            )
        kind = _kind(name)
        if kind is not None and len(shape) >= 2:
            what, flag = kind
            limit = getattr(limits, flag)
            if shape[1] > limit:
                raise invalid_argument(
                    f"Input '{name}' has {shape[1]} {what} per row; the limit is {limit} (--{flag})"
                )


Run = Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]


def run_in_chunks(run: Run, inputs: Mapping[str, np.ndarray], chunk_rows: int) -> dict:
    """`run(inputs)`, a batch of at most `chunk_rows` rows at a time.

    Chunks only when every input has the same first dimension; when an output of the
    first chunk is not one row per input row, the batch is run whole instead.
    """
    rows = {a.shape[0] if a.ndim else -1 for a in inputs.values()}
    if len(rows) != 1 or (n := rows.pop()) <= chunk_rows:
        return run(inputs)
    parts = []
    for start in range(0, n, chunk_rows):
        chunk = {k: v[start : start + chunk_rows] for k, v in inputs.items()}
        outputs = run(chunk)
        size = min(chunk_rows, n - start)
        if any(v.ndim == 0 or v.shape[0] != size for v in outputs.values()):
            return run(inputs)
        parts.append(outputs)
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
