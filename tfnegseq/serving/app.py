"""The REST API's dispatch: URL routing, model status, metadata and predict.

`RestApi.process(method, path, body)` answers one request with `(http_status,
json_body)` the way TF Serving's `HttpRestApiHandler::ProcessRequest`
(`model_servers/http_rest_api_handler.cc`, `http_rest_api_util.cc`) does: the same
URL patterns, status and metadata replies, and error messages; predicts are capped and
run in chunks of rows and examples by `tfnegseq.serving.limits`. No HTTP here: the
transport (`tfnegseq.serving.local_server`) reads bodies, checks methods and runs
predicts on its threads; the JSON <-> tensor work is `tfnegseq.serving.codec`.
"""

from __future__ import annotations

import functools
import json
import re
from typing import Any
from urllib.parse import unquote

from tfnegseq.serving import codec
from tfnegseq.serving._models import ModelRepository
from tfnegseq.serving.limits import (
    Limits,
    candidates_per_run,
    check_request_size,
    request_examples,
    rows_per_run,
    run_in_chunks,
)
from tfnegseq.serving.scheduler import GraphScheduler
from tfnegseq.serving.status import ServingStatus, error_body, invalid_argument

# http_rest_api_util.h / .cc: the dispatcher's path filter and the two API regexes.
V1_PATH = re.compile(r"/v1/.*", re.IGNORECASE)
_PREDICT_PATH = re.compile(
    r"/v1/models/([^/:]+)(?:(?:/versions/([0-9]+))|(?:/labels/([^/:]+)))?"
    r":(classify|regress|predict)",
    re.IGNORECASE,
)
_STATUS_PATH = re.compile(
    r"/v1/models(?:/([^/:]+))?(?:(?:/versions/([0-9]+))|(?:/labels/([^/:]+)))?(?:/(metadata))?",
    re.IGNORECASE,
)


class RestApi:
    """Request dispatch of TF Serving's `HttpRestApiHandler` over a `ModelRepository`.

    Args:
        repository: ModelRepository. The loaded models.
        limits: Limits or None. Caps on rows, candidates, history and examples per
            predict, the rows and examples per graph run, and the graph runs at once
            (`graph_lanes`). Defaults to `Limits()`.
    """

    def __init__(self, repository: ModelRepository, limits: Limits | None = None) -> None:
        self.repository = repository
        self.limits = limits or Limits()
        self.scheduler = GraphScheduler(self.limits.graph_lanes)

    def process(self, method: str, path: str, body: bytes, origin: str = "") -> tuple[int, bytes]:
        """Answers one request: `(http_status, json_body)`, as `ProcessRequest`."""
        try:
            if method == "OPTIONS":
                if re.search("https?://", origin):
                    return 200, b""
                raise ServingStatus(
                    "FAILED_PRECONDITION", "Origin header is missing in CORS preflight"
                )
            return 200, json.dumps(self._dispatch(method, path, body)).encode()
        except ServingStatus as e:
            return e.http_status, error_body(e.message)

    def _dispatch(self, method: str, path: str, body: bytes) -> Any:
        regex = {"POST": _PREDICT_PATH, "GET": _STATUS_PATH}.get(method)
        match = regex.fullmatch(path) if regex else None
        if match is None:
            raise invalid_argument(f"Malformed request: {method} {path}")
        name, version_str, label, verb = match.groups()
        name = unquote(name or "")
        version = None
        if version_str:
            digits = version_str.lstrip("0") or "0"
            version = int(digits) if len(digits) <= 19 else 2**63
            if version >= 2**63:
                raise invalid_argument(f"Failed to convert version: {version_str} to numeric.")
        label = unquote(label) if label else None
        if method == "POST":
            if verb == "predict":
                return self._predict(name, version, label, body)
            if verb in ("classify", "regress"):
                return self._classify_or_regress(verb, name, version, label, body)
            raise invalid_argument(f"Malformed request: {method} {path}")
        if not name:
            raise invalid_argument("Missing model name in request.")
        if verb == "metadata":  # case-sensitive, unlike the path regex (as TF Serving)
            return self._metadata(name, version, label)
        # GetModelStatusImpl ignores a label and reports every version.
        return {
            "model_version_status": [
                {
                    "version": str(v),
                    "state": s.state,
                    "status": {"error_code": s.error_code, "error_message": s.error_message},
                }
                for v, s in self.repository.status(name, version)
            ]
        }

    def _metadata(self, name: str, version: int | None, label: str | None) -> Any:
        from google.protobuf import json_format

        servable = self.repository.resolve(name, version, label)
        signatures = {
            key: json_format.MessageToDict(
                sig, always_print_fields_with_no_presence=True, preserving_proto_field_name=True
            )
            for key, sig in servable.signature_defs.items()
        }
        return {
            "model_spec": {"name": name, "signature_name": "", "version": str(servable.version)},
            "metadata": {"signature_def": {"signature_def": signatures}},
        }

    def _predict(self, name: str, version: int | None, label: str | None, body: bytes) -> Any:
        doc = codec.parse_json(body)
        requested = codec.signature_name(doc)
        servable = self.repository.resolve(name, version, label)
        key = requested or "serving_default"
        if key not in servable.signature_defs:
            raise invalid_argument(f'Serving signature name: "{key}" not found in signature def')
        signature = servable.signature_defs[key]
        if not signature.inputs:
            raise invalid_argument(
                f"Failed to get input map for signature: {requested or 'DEFAULT'}"
            )
        inputs, row_format = codec.tensors_from_request(doc, signature.inputs)
        codec.check_shapes(inputs, signature.inputs, key)
        check_request_size(inputs, self.limits)
        light = request_examples(inputs) <= self.limits.chunk_examples
        run = self.scheduler.wrap(functools.partial(servable.run, key), light)
        outputs = run_in_chunks(run, inputs, rows_per_run(inputs, self.limits),
                                candidates_per_run(inputs, self.limits))
        return codec.response_from_tensors(outputs, row_format)

    def _classify_or_regress(
        self, verb: str, name: str, version: int | None, label: str | None, body: bytes
    ) -> Any:
        doc_signature = codec.signature_name(codec.parse_json(body)) or "serving_default"
        servable = self.repository.resolve(name, version, label)
        signature = servable.signature_defs.get(doc_signature)
        if signature is None:
            raise invalid_argument(f"No signature was found with the name: {doc_signature}")
        kind = "classification" if verb == "classify" else "regression"
        expected = f"tensorflow/serving/{verb}"
        if signature.method_name != expected:
            raise invalid_argument(
                f"Expected {kind} signature method_name to be {expected}. "
                f"Was: {signature.method_name}"
            )
        raise ServingStatus("UNIMPLEMENTED", f":{verb} is not implemented by the local server")
