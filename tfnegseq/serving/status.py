"""TF Serving's status codes: the error a request gets and the HTTP status it maps to.

`ServingStatus` carries an absl status code name (`INVALID_ARGUMENT`, `NOT_FOUND`, ...)
and the message the client sees as `{"error": message}`; `HTTP_STATUS` maps the code
to the HTTP status as `model_servers/http_server.cc` `ToHTTPStatusCode()` does.
"""

from __future__ import annotations

import json

# absl::StatusCode names, indexed by their numeric value (also tf.errors codes).
STATUS_CODES = (
    "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
    "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
    "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
    "UNAUTHENTICATED",
)  # fmt: skip

# http_server.cc ToHTTPStatusCode().
HTTP_STATUS = {
    "OK": 200, "CANCELLED": 499, "UNKNOWN": 500, "INVALID_ARGUMENT": 400,
    "DEADLINE_EXCEEDED": 504, "NOT_FOUND": 404, "ALREADY_EXISTS": 409, "PERMISSION_DENIED": 403,
    "RESOURCE_EXHAUSTED": 429, "FAILED_PRECONDITION": 400, "ABORTED": 409, "OUT_OF_RANGE": 400,
    "UNIMPLEMENTED": 501, "INTERNAL": 500, "UNAVAILABLE": 503, "DATA_LOSS": 500,
    "UNAUTHENTICATED": 401,
}  # fmt: skip


class ServingStatus(Exception):
    """An error with a TF Serving (absl) status code, e.g. `INVALID_ARGUMENT`.

    Args:
        code: str. The absl status code name.
        message: str. The message sent to the client as `{"error": message}`.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message

    @property
    def http_status(self) -> int:
        """The HTTP status TF Serving answers with (500 for an unknown code)."""
        return HTTP_STATUS.get(self.code, 500)


def invalid_argument(message: str) -> ServingStatus:
    """Returns an `INVALID_ARGUMENT` status (HTTP 400)."""
    return ServingStatus("INVALID_ARGUMENT", message)


def error_body(message: str) -> bytes:
    """The JSON body of an error reply: `{"error": message}`."""
    return json.dumps({"error": message}).encode()
