"""A small client for TF Serving's REST API (and the local server that speaks it).

The model's inputs are int64: raw ids and categorical values as the Beam job wrote
them. `feature_id` and `raw_id` map text the same way (integers stay integers, other
text becomes `tfnegseq.schema.fingerprint64`); `ServingClient.score` (a CTR export's
`serving_default`) and the sequential methods (`retrieve`, `score_sequence` and their
`_batch` forms: a sequential export's `retrieve` and `score` signatures,
`serving/README.md` "Sequential models") apply them.

Example:
    >>> client = ServingClient("http://127.0.0.1:8501", "recommender", label="stable")
    >>> client.predict(instances=[{"x": [1.0, 2.0, 3.0]}])  # doctest: +SKIP
    [[0.3, 0.7]]
    >>> client.score(7, [11, 12], [1, 3], [21], [2], candidates=[1, 2, 3],
    ...              profile={"gender": "M"})  # doctest: +SKIP
    [0.78, 0.83, 0.86]
    >>> sine = ServingClient("http://127.0.0.1:8501", "sine")
    >>> sine.retrieve([50, 172, 181, 174], [-1, 99, -1, 21])  # doctest: +SKIP
    ([64, 98, 313, ...], [4.21, 4.17, 4.02, ...])
    >>> sine.score_sequence([50, 172, 181], [1, 96, 258])  # doctest: +SKIP
    [1.93, -0.42, 2.71]
    >>> feature_id("M"), feature_id("24"), feature_id(None)
    (3923287086039162729, 24, -1)
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

import requests

from tfnegseq.ids import feature_id, raw_id
from tfnegseq.schema import PAD_ID
from tfnegseq.signatures import RETRIEVE_SIGNATURE, SCORE_SIGNATURE


class ServingError(Exception):
    """An error answer from the server, or a transport failure.

    Args:
        status: int or None. The HTTP status; None when no answer came back.
        message: str. The server's `error` message, or a description.
    """

    def __init__(self, status: int | None, message: str) -> None:
        super().__init__(f"{status}: {message}" if status is not None else message)
        self.status = status
        self.message = message


class ServingTimeout(ServingError):
    """No answer within the client's timeout (not retried)."""


class ServingUnavailable(ServingError):
    """The server could not be reached, after all retries."""


def to_json(value: Any) -> Any:
    """Plain Python / numpy data -> JSON-ready data; bytes become `{"b64": ...}`."""
    if isinstance(value, bytes):
        return {"b64": base64.b64encode(value).decode("ascii")}
    if isinstance(value, Mapping):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        return to_json(value.tolist())
    return value


class ServingClient:
    """Addresses one model (by name, and optionally version or label) over REST.

    Args:
        base_url: str. Server root, e.g. `http://127.0.0.1:8501`.
        model_name: str. The model's name.
        version: int or None. A version to pin. Defaults to None (latest).
        label: str or None. A version label (e.g. "stable"). Defaults to None.
        timeout: float. Seconds to wait for each attempt. Defaults to 5.0.
        retries: int. Extra attempts after a connection error or a 503; never after
            another status or a read timeout. Defaults to 2.
        backoff: float. Sleep before retry k is `backoff * 2**k` seconds.
            Defaults to 0.1.
        session: requests.Session or None. Defaults to a new session.
    """

    def __init__(
        self,
        base_url: str,
        model_name: str,
        version: int | None = None,
        label: str | None = None,
        timeout: float = 5.0,
        retries: int = 2,
        backoff: float = 0.1,
        session: requests.Session | None = None,
    ) -> None:
        if version is not None and label is not None:
            raise ValueError(
                f"Give `version` or `label`, not both. Received: version={version}, label={label}"
            )
        if retries < 0:
            raise ValueError(f"`retries` must be >= 0. Received: retries={retries}")
        self.base_url = base_url.rstrip("/")
        self.model_name = model_name
        self.version = version
        self.label = label
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.session = session or requests.Session()

    @property
    def model_url(self) -> str:
        """`.../v1/models/NAME[/versions/N|/labels/L]`."""
        url = f"{self.base_url}/v1/models/{quote(self.model_name, safe='')}"
        if self.version is not None:
            url += f"/versions/{int(self.version)}"
        elif self.label is not None:
            url += f"/labels/{quote(self.label, safe='')}"
        return url

    def status(self) -> dict[str, Any]:
        """`GET .../NAME[...]`: the `model_version_status` reply."""
        return self._request("GET", self.model_url)

    def metadata(self) -> dict[str, Any]:
        """`GET .../metadata`: `model_spec` and the signature defs."""
        return self._request("GET", f"{self.model_url}/metadata")

    def predict(
        self,
        instances: Sequence[Any] | None = None,
        inputs: Any = None,
        signature_name: str | None = None,
    ) -> Any:
        """`POST ...:predict` in row (`instances`) or columnar (`inputs`) format.

        Returns:
            The `predictions` (row format) or `outputs` (columnar format) value.
        """
        if (instances is None) == (inputs is None):
            raise ValueError("Give exactly one of `instances` (row) and `inputs` (columnar).")
        body: dict[str, Any] = {}
        if signature_name is not None:
            body["signature_name"] = signature_name
        if instances is not None:
            body["instances"] = to_json(list(instances))
        else:
            body["inputs"] = to_json(inputs)
        reply = self._request("POST", f"{self.model_url}:predict", body)
        return reply["predictions"] if instances is not None else reply["outputs"]

    def score(
        self,
        user_id: int,
        pos_items: Sequence[int],
        pos_orders: Sequence[int],
        neg_items: Sequence[int],
        neg_orders: Sequence[int],
        candidates: Sequence[int],
        profile: Mapping[str, int] | None = None,
        item_features: Mapping[str, Sequence[int]] | None = None,
    ) -> list[float]:
        """Scores candidates for one user with the recommender's `serving_default`.

        Histories are sent as they are (any length up to the trained maximum; the
        model pads). `profile` maps the config's `samples.user_features` names to raw
        values and is sent as `user_<name>`; `item_features` maps the config's
        `samples.item_features` names to one raw value per candidate, sent as
        `item_<name>` (e.g. `{"category": [3, 7]}` -> `item_category`). The export needs
        every one of them. Text values go through `feature_id` (so `{"gender": "M"}`
        sends `fingerprint64("M")`), text ids through `raw_id`; integers are sent as
        they are.

        Args:
            user_id: int or str. The user's raw id.
            pos_items: the user's recent positives (raw item ids), oldest first.
            pos_orders: their ranks in the user's timeline.
            neg_items: the user's recent negatives, oldest first.
            neg_orders: their ranks.
            candidates: raw item ids to score (at least one).
            profile: dict or None. `samples.user_features` name -> value.
                Defaults to None (no profile inputs).
            item_features: dict or None. `samples.item_features` name -> one value per
                candidate. Defaults to None.

        Returns:
            One probability per candidate.
        """
        if len(pos_items) != len(pos_orders) or len(neg_items) != len(neg_orders):
            raise ValueError(
                "Each history needs one order per item. Received: "
                f"{len(pos_items)} pos items, {len(pos_orders)} pos orders, "
                f"{len(neg_items)} neg items, {len(neg_orders)} neg orders"
            )
        instance: dict[str, Any] = {
            "user_id": raw_id(user_id),
            "pos_item_id": [raw_id(i) for i in pos_items],
            "pos_order": [int(o) for o in pos_orders],
            "neg_item_id": [raw_id(i) for i in neg_items],
            "neg_order": [int(o) for o in neg_orders],
            "item_id": [raw_id(i) for i in candidates],
        }
        for name, value in (profile or {}).items():
            instance[f"user_{name}"] = feature_id(value)
        for name, values in (item_features or {}).items():
            if len(values) != len(candidates):
                raise ValueError(
                    f"item feature {name!r} needs one value per candidate. Received: "
                    f"{len(values)} values for {len(candidates)} candidates"
                )
            instance[f"item_{name}"] = [feature_id(v) for v in values]
        prediction = self.predict(instances=[instance])[0]
        if isinstance(prediction, dict):
            prediction = prediction["probability"]
        return [float(p) for p in prediction]

    # ------------------------------------------------------------------ sequential
    def retrieve(
        self,
        pos_items: Sequence[Any],
        neg_items: Sequence[Any] | None = None,
        signature_name: str = RETRIEVE_SIGNATURE,
    ) -> tuple[list[int], list[float]]:
        """The top K catalogue items for one user, from a sequential export's `retrieve`.

        Sent in row format (`{"signature_name": "retrieve", "instances": [...]}`). Ids
        go through `raw_id` (text ids -> `fingerprint64`; None -> -1). The export leaves
        every item of `pos_items` out and reads the most recent `model.max_length`
        positives; slots it could not fill (id -1: the user has seen nearly the whole
        catalogue) are dropped, so fewer than K items may come back.

        Args:
            pos_items: the user's positives (raw item ids), oldest first; may be empty
                (scored as a user without history).
            neg_items: the nearest passive negative of each positive (same length), -1
                or None where it has none; None sends no negatives at all (the
                baselines ignore them; SINE reads them, eq. 4-5). Defaults to None.
            signature_name: str. Defaults to "retrieve".

        Returns:
            `(item_ids, scores)`: raw ids and the model's scores, best first.

        Raises:
            ValueError: `neg_items` is not one entry per positive.
            ServingError: the server's answer (e.g. 400 `pos_item_id is not
                left-padded` when `pos_items` holds -1 after a real id).
        """
        pos, neg = _history(pos_items, neg_items)
        reply = self.predict(
            instances=[{"pos_item_id": pos, "neg_item_id": neg}], signature_name=signature_name
        )
        return _top_items(reply[0]["item_id"], reply[0]["score"])

    def retrieve_batch(
        self,
        pos_items: Sequence[Sequence[Any]],
        neg_items: Sequence[Sequence[Any] | None] | None = None,
        signature_name: str = RETRIEVE_SIGNATURE,
    ) -> list[tuple[list[int], list[float]]]:
        """`retrieve` for several users in one columnar request (histories left-padded
        with -1 to the longest).

        Args:
            pos_items: one list of positives per user (as `retrieve`).
            neg_items: one list (or None) per user, or None. Defaults to None.
            signature_name: str. Defaults to "retrieve".

        Returns:
            One `(item_ids, scores)` per user, in order.
        """
        inputs = _histories(pos_items, neg_items)
        reply = self.predict(inputs=inputs, signature_name=signature_name)
        return [
            _top_items(ids, scores)
            for ids, scores in zip(reply["item_id"], reply["score"], strict=True)
        ]

    def score_sequence(
        self,
        pos_items: Sequence[Any],
        candidates: Sequence[Any],
        neg_items: Sequence[Any] | None = None,
        signature_name: str = SCORE_SIGNATURE,
    ) -> list[float]:
        """Scores candidates for one user with a sequential export's `score` signature.

        Sent in row format. History as in `retrieve`; candidates through `raw_id`.

        Args:
            pos_items: the user's positives (raw item ids), oldest first.
            candidates: raw item ids to score (at least one).
            neg_items: as in `retrieve`. Defaults to None.
            signature_name: str. Defaults to "score".

        Returns:
            One score per candidate (the model's own: higher is better, not a
            probability; a -1 candidate scores the padding row).
        """
        pos, neg = _history(pos_items, neg_items)
        instance = {
            "pos_item_id": pos,
            "neg_item_id": neg,
            "item_id": [raw_id(i) for i in candidates],
        }
        prediction = self.predict(instances=[instance], signature_name=signature_name)[0]
        if isinstance(prediction, dict):
            prediction = prediction["score"]
        return [float(s) for s in prediction]

    def score_sequence_batch(
        self,
        pos_items: Sequence[Sequence[Any]],
        candidates: Sequence[Sequence[Any]],
        neg_items: Sequence[Sequence[Any] | None] | None = None,
        signature_name: str = SCORE_SIGNATURE,
    ) -> list[list[float]]:
        """`score_sequence` for several users in one columnar request: histories
        left-padded, candidate lists right-padded with -1 to the longest (the padded
        columns' scores are dropped).

        Args:
            pos_items: one list of positives per user.
            candidates: one list of raw item ids per user.
            neg_items: one list (or None) per user, or None. Defaults to None.
            signature_name: str. Defaults to "score".

        Returns:
            One list of scores per user, one score per candidate.

        Raises:
            ValueError: `candidates` is not one list per user.
        """
        if len(candidates) != len(pos_items):
            raise ValueError(
                "`candidates` needs one list per user. Received: "
                f"{len(pos_items)} users, {len(candidates)} candidate lists"
            )
        inputs = _histories(pos_items, neg_items)
        rows = [[raw_id(i) for i in c] for c in candidates]
        width = max((len(r) for r in rows), default=0)
        inputs["item_id"] = [r + [PAD_ID] * (width - len(r)) for r in rows]
        reply = self.predict(inputs=inputs, signature_name=signature_name)
        if isinstance(reply, dict):
            reply = reply["score"]
        return [[float(s) for s in out[: len(r)]] for out, r in zip(reply, rows, strict=True)]

    def close(self) -> None:
        """Closes the HTTP session."""
        self.session.close()

    def __enter__(self) -> ServingClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(self, method: str, url: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if data is not None else {}
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            try:
                response = self.session.request(
                    method, url, data=data, headers=headers, timeout=self.timeout
                )
            except requests.ConnectionError as e:  # includes ConnectTimeout
                if last:
                    raise ServingUnavailable(None, f"{method} {url}: {e}") from e
            except requests.Timeout as e:
                raise ServingTimeout(None, f"{method} {url}: no answer in {self.timeout}s") from e
            else:
                if response.status_code == 200:
                    return response.json()
                if response.status_code != 503 or last:
                    raise ServingError(response.status_code, _error_message(response))
            time.sleep(self.backoff * 2**attempt)
        raise AssertionError("unreachable")


def _history(
    pos_items: Sequence[Any], neg_items: Sequence[Any] | None
) -> tuple[list[int], list[int]]:
    """One user's `(pos_item_id, neg_item_id)` rows as raw ids; at least one slot (an
    empty history is one padding slot, which the export reads as no history)."""
    pos = [raw_id(i) for i in pos_items]
    if neg_items is None:
        neg = [PAD_ID] * len(pos)
    else:
        if len(neg_items) != len(pos):
            raise ValueError(
                "`neg_items` needs one entry per positive (-1 or None where a positive has "
                f"no passive negative). Received: {len(pos)} positives, "
                f"{len(neg_items)} negatives"
            )
        neg = [raw_id(i) for i in neg_items]
    return (pos, neg) if pos else ([PAD_ID], [PAD_ID])


def _histories(
    pos_items: Sequence[Sequence[Any]], neg_items: Sequence[Sequence[Any] | None] | None
) -> dict[str, list[list[int]]]:
    """Columnar `pos_item_id` / `neg_item_id` [B, W], left-padded with -1."""
    if neg_items is None:
        neg_items = [None] * len(pos_items)
    if len(neg_items) != len(pos_items):
        raise ValueError(
            "`neg_items` needs one entry (a list or None) per user. Received: "
            f"{len(pos_items)} users, {len(neg_items)} negative lists"
        )
    rows = [_history(p, n) for p, n in zip(pos_items, neg_items, strict=True)]
    width = max((len(p) for p, _ in rows), default=1)
    return {
        name: [[PAD_ID] * (width - len(r[i])) + r[i] for r in rows]
        for i, name in ((0, "pos_item_id"), (1, "neg_item_id"))
    }


def _top_items(ids: Sequence[Any], scores: Sequence[Any]) -> tuple[list[int], list[float]]:
    """A `retrieve` row without its unfilled slots (id -1)."""
    kept = [(int(i), float(s)) for i, s in zip(ids, scores, strict=True) if int(i) != PAD_ID]
    return [i for i, _ in kept], [s for _, s in kept]


def _error_message(response: requests.Response) -> str:
    try:
        payload = response.json()
    except ValueError:
        return response.text or response.reason or ""
    if isinstance(payload, dict) and "error" in payload:
        return str(payload["error"])
    return response.text
