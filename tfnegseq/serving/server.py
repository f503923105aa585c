"""A local server that speaks TF Serving's REST API over SavedModels on disk.

Run `python -m tfnegseq.serving.server --model_base_path DIR [--model_name NAME]` (or
`--model_config_file models.config`); see `serving/README.md`. It serves
`GET /v1/models/NAME[/versions/N|/labels/L][/metadata]` and
`POST /v1/models/NAME[/versions/N|/labels/L]:predict` with the request parsing, reply
shapes, error messages and status codes of TF Serving's
`model_servers/http_rest_api_handler.cc`, `http_rest_api_util.cc`, `http_server.cc`
and `util/json_tensor.cc`. Deviations (all documented in `serving/README.md`): a
request body cap (413), 405 instead of libevent's 501 for methods it does not know,
JSON bodies on 404s outside `/v1/`, shapes checked against the signature before the
graph runs, input names in columnar-format errors, and no `:classify` / `:regress`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import concurrent.futures
import contextlib
import json
import logging
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any
from urllib.parse import unquote

import numpy as np
from aiohttp import web

from tfnegseq.serving._models import (
    ModelConfig,
    ModelRepository,
    ServingStatus,
    VersionPolicy,
    invalid_argument,
    parse_model_config,
)

logger = logging.getLogger(__name__)

DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024
_DRAIN_LIMIT = 64 * 1024 * 1024
# libevent (TF Serving's HTTP layer) accepts these methods and nothing else.
_ALLOWED_METHODS = frozenset({"GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS", "PATCH"})
# http_server.cc ToHTTPStatusCode().
HTTP_STATUS = {
    "OK": 200, "CANCELLED": 499, "UNKNOWN": 500, "INVALID_ARGUMENT": 400,
    "DEADLINE_EXCEEDED": 504, "NOT_FOUND": 404, "ALREADY_EXISTS": 409, "PERMISSION_DENIED": 403,
    "RESOURCE_EXHAUSTED": 429, "FAILED_PRECONDITION": 400, "ABORTED": 409, "OUT_OF_RANGE": 400,
    "UNIMPLEMENTED": 501, "INTERNAL": 500, "UNAVAILABLE": 503, "DATA_LOSS": 500,
    "UNAUTHENTICATED": 401,
}  # fmt: skip
# http_rest_api_util.h / .cc: the dispatcher's path filter and the two API regexes.
_V1_PATH = re.compile(r"/v1/.*", re.IGNORECASE)
_PREDICT_PATH = re.compile(
    r"/v1/models/([^/:]+)(?:(?:/versions/([0-9]+))|(?:/labels/([^/:]+)))?"
    r":(classify|regress|predict)",
    re.IGNORECASE,
)
_STATUS_PATH = re.compile(
    r"/v1/models(?:/([^/:]+))?(?:(?:/versions/([0-9]+))|(?:/labels/([^/:]+)))?(?:/(metadata))?",
    re.IGNORECASE,
)


class _BodyTooLarge(Exception):
    pass


def _error_body(message: str) -> bytes:
    return json.dumps({"error": message}).encode()


class RestApi:
    """Request dispatch of TF Serving's `HttpRestApiHandler` over a `ModelRepository`.

    Args:
        repository: ModelRepository. The loaded models.
        max_body_bytes: int. Larger request bodies get 413. Defaults to 16 MiB.
        num_threads: int or None. Inference threads. Defaults to max(4, CPUs).
    """

    def __init__(
        self,
        repository: ModelRepository,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        num_threads: int | None = None,
    ) -> None:
        self.repository = repository
        self.max_body_bytes = max_body_bytes
        self.executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=num_threads or max(4, os.cpu_count() or 1), thread_name_prefix="predict"
        )

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
            return HTTP_STATUS.get(e.code, 500), _error_body(e.message)

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
        doc = parse_json(body)
        requested = signature_name(doc)
        servable = self.repository.resolve(name, version, label)
        key = requested or "serving_default"
        if key not in servable.signature_defs:
            raise invalid_argument(f'Serving signature name: "{key}" not found in signature def')
        signature = servable.signature_defs[key]
        if not signature.inputs:
            raise invalid_argument(
                f"Failed to get input map for signature: {requested or 'DEFAULT'}"
            )
        inputs, row_format = tensors_from_request(doc, signature.inputs)
        check_shapes(inputs, signature.inputs, key)
        outputs = servable.run(key, inputs)
        return response_from_tensors(outputs, row_format)

    def _classify_or_regress(
        self, verb: str, name: str, version: int | None, label: str | None, body: bytes
    ) -> Any:
        doc_signature = signature_name(parse_json(body)) or "serving_default"
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

    # ----------------------------------------------------------------- aiohttp
    async def handle(self, request: web.Request) -> web.StreamResponse:
        """aiohttp handler for every method and path."""
        start = time.perf_counter()
        method, path = request.method, request.rel_url.raw_path
        force_close = False
        try:
            if method not in _ALLOWED_METHODS:
                status, payload = 405, _error_body(f"Method {method} is not allowed")
            else:
                body = await self._read_body(request)
                if not _V1_PATH.fullmatch(path):
                    message = f"The requested URL {path} was not found on this server."
                    status, payload = 404, _error_body(message)
                elif method == "POST":
                    loop = asyncio.get_running_loop()
                    status, payload = await loop.run_in_executor(
                        self.executor, self.process, method, path, body, ""
                    )
                else:
                    origin = request.headers.get("Origin", "")
                    status, payload = self.process(method, path, body, origin)
        except _BodyTooLarge as e:
            status, payload, force_close = 413, _error_body(str(e)), True
        except Exception as e:  # a bug here must not take the server down
            logger.exception("Unhandled error for %s %s", method, path)
            status, payload = 500, _error_body(f"Internal error: {type(e).__name__}: {e}")
        response = web.Response(status=status, body=payload, content_type="application/json")
        if force_close:
            response.force_close()
        logger.debug(
            '%s "%s %s" %d %dB %.1fms', request.remote, method, request.rel_url, status,
            len(payload), 1000 * (time.perf_counter() - start),
        )  # fmt: skip
        return response

    async def _read_body(self, request: web.Request) -> bytes:
        cap, size = self.max_body_bytes, 0
        declared = request.content_length or 0
        chunks = []
        if declared <= cap + _DRAIN_LIMIT:
            async for chunk in request.content.iter_any():
                size += len(chunk)
                if size <= cap:
                    chunks.append(chunk)
                elif size > cap + _DRAIN_LIMIT:
                    break
        if size > cap or declared > cap:
            raise _BodyTooLarge(
                f"Request body of {max(size, declared)} bytes exceeds the limit of {cap} bytes "
                "(--max_body_bytes)"
            )
        return b"".join(chunks)


# --------------------------------------------------------------------------- JSON <-> tensors
# A port of tensorflow_serving/util/json_tensor.cc: same checks, same messages.

# DataType enum value -> (DataTypeString name, numpy dtype, (min, max) for integers).
_DTYPES: dict[int, tuple[str, Any, tuple[int, int] | None]] = {
    1: ("float", np.float32, None), 2: ("double", np.float64, None),
    3: ("int32", np.int32, (-(2**31), 2**31 - 1)), 4: ("uint8", np.uint8, (0, 255)),
    5: ("int16", np.int16, (-(2**15), 2**15 - 1)), 6: ("int8", np.int8, (-128, 127)),
    7: ("string", object, None), 9: ("int64", np.int64, (-(2**63), 2**63 - 1)),
    10: ("bool", np.bool_, None), 22: ("uint32", np.uint32, (0, 2**32 - 1)),
    23: ("uint64", np.uint64, (0, 2**64 - 1)),
}  # fmt: skip
_DEBUG_ENCODER = json.JSONEncoder(separators=(",", ":"))


class _NumberTooBig(ValueError):
    pass


def _parse_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise _NumberTooBig("Number too big to be stored in double.")
    return value


def _parse_int(text: str) -> int | float:
    # rapidjson keeps integers that fit int64/uint64 and makes the rest doubles.
    if len(text) <= 21:
        value = int(text)
        if -(2**63) <= value < 2**64:
            return value
    return _parse_float(text)


_DECODER = json.JSONDecoder(parse_int=_parse_int, parse_float=_parse_float)


def parse_json(body: bytes) -> dict[str, Any]:
    """Parses a request body as TF Serving's `ParseJson` (NaN/Infinity allowed,
    trailing bytes after the document ignored, top level must be an object)."""
    if not body:
        raise invalid_argument("JSON Parse error: The document is empty")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise invalid_argument(f"JSON Parse error: Invalid encoding at offset: {e.start}") from None
    start = len(text) - len(text.lstrip(" \t\n\r"))
    try:
        doc, _ = _DECODER.raw_decode(text, start)
    except json.JSONDecodeError as e:
        raise invalid_argument(f"JSON Parse error: {e.msg} at offset: {e.pos}") from None
    except (_NumberTooBig, RecursionError, ValueError) as e:
        raise invalid_argument(f"JSON Parse error: {e}") from None
    if not isinstance(doc, dict):
        raise invalid_argument(f"JSON Value: {_debug(doc)} Is not object")
    return doc


def _debug(value: Any) -> str:
    """JSON text of `value`, cut at 256 characters (`JsonValueToDebugString`)."""
    out, size = [], 0
    for chunk in _DEBUG_ENCODER.iterencode(value):
        out.append(chunk)
        size += len(chunk)
        if size >= 256:
            break
    return "".join(out)[:256]


def _json_type(value: Any) -> str:
    """rapidjson's type name of a parsed JSON value (`JsonTypeString`)."""
    if value is None:
        return "Null"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, dict):
        return "Object"
    if isinstance(value, list):
        return "Array"
    return "String" if isinstance(value, str) else "Number"


def _is_b64(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get("b64"), str)


def _leaf_converter(dtype: int) -> Callable[[Any], Any]:
    """Returns a function checking one JSON leaf against `dtype` (`AddValueToTensor`)."""
    if dtype not in _DTYPES:
        from tensorflow.core.framework import types_pb2

        type_name = (
            types_pb2.DataType.Name(dtype) if dtype in types_pb2.DataType.values() else dtype
        )
        raise ServingStatus("UNIMPLEMENTED", f"Conversion of JSON Value to type: {type_name}")
    name, _, bounds = _DTYPES[dtype]

    def type_error(value: Any) -> ServingStatus:
        return invalid_argument(
            f"JSON Value: {_debug(value)} Type: {_json_type(value)} is not of expected type: {name}"
        )

    def convert(value: Any) -> Any:
        kind = type(value)
        if bounds is not None:
            if kind is int and bounds[0] <= value <= bounds[1]:
                return value
        elif name in ("float", "double"):
            if kind is int or kind is float:
                return value
        elif name == "bool":
            if kind is bool:
                return value
        elif kind is str:
            return value.encode("utf-8", "surrogatepass")
        elif kind is dict:
            if not _is_b64(value):
                raise invalid_argument(
                    f"JSON Value: {_debug(value)} not formatted correctly for base64 data"
                )
            text = value["b64"]
            try:
                return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
            except ValueError:
                raise invalid_argument("Unable to base64 decode") from None
        raise type_error(value)

    return convert


def _shape_of(value: Any) -> list[int]:
    """`GetDenseTensorShape`: sizes along the first element of each nested list."""
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return shape


def _fill(value: Any, level: int, shape: list[int], convert: Callable, out: list) -> None:
    """`FillTensorProto`: appends the leaves of `value`, checking it is dense."""
    rank = len(shape)
    if not isinstance(value, list):
        if level != rank:
            raise invalid_argument(
                f"JSON Value: {_debug(value)} found at incorrect level: {level + 1} in the JSON "
                f"DOM. Expected at level: {rank}"
            )
        out.append(convert(value))
        return
    if level >= rank:
        raise invalid_argument(f"Encountered list at unexpected level: {level} expected < {rank}")
    if len(value) != shape[level]:
        raise invalid_argument(
            f"Encountered list at unexpected size: {len(value)} at level: {level} "
            f"expected size: {shape[level]}"
        )
    for item in value:
        _fill(item, level + 1, shape, convert, out)


def _to_array(values: list, shape: list[int], dtype: int) -> np.ndarray:
    array = np.empty(len(values), dtype=_DTYPES[dtype][1])
    with np.errstate(over="ignore"):  # 1e300 -> float32 inf, as rapidjson's GetFloat()
        array[:] = values
    return array.reshape(shape)


def _shape_str(shape: Any) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


def signature_name(doc: Mapping[str, Any]) -> str:
    """The request's `signature_name` ("" when absent); 400 when it is not a string."""
    name = doc.get("signature_name", "")
    if not isinstance(name, str):
        raise invalid_argument(
            f"JSON Value: {_debug(doc)} not formatted correctly. 'signature_name' key must be a "
            "string value."
        )
    return name


def tensors_from_request(doc: Mapping[str, Any], infos: Mapping[str, Any]) -> tuple[dict, bool]:
    """Builds the input arrays from `instances` or `inputs`; returns (arrays, row_format)."""
    if "instances" in doc:
        if "inputs" in doc:
            raise invalid_argument(
                f"JSON Value: {_debug(doc)} Not formatted correctly expecting only one of "
                "'inputs' or 'instances' keys to exist "
            )
        instances = doc["instances"]
        if not isinstance(instances, list):
            raise invalid_argument(
                f"JSON Value: {_debug(doc)} Expecting 'instances' to be an list/array"
            )
        if not instances:
            raise invalid_argument(f"JSON Value: {_debug(doc)} No values in 'instances' array")
        return _from_instances(instances, infos), True
    if "inputs" in doc:
        return _from_inputs(doc["inputs"], infos), False
    raise invalid_argument("Missing 'inputs' or 'instances' key")


def _from_instances(instances: list, infos: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """`FillTensorMapFromInstancesList`: one tensor per input, batched over instances."""
    names = sorted(infos)
    if not isinstance(instances[0], dict) and len(names) > 1:
        raise invalid_argument(
            "instances is a plain list, but expecting list of objects as multiple input tensors "
            "required as per tensorinfo_map"
        )
    objects = isinstance(instances[0], dict) and not _is_b64(instances[0])
    values: dict[str, list] = {}
    shapes: dict[str, list[int]] = {}
    converters = {name: _leaf_converter(infos[name].dtype) for name in names}

    def add(item: Any, name: str) -> None:  # AddInstanceItem
        if name not in infos:
            raise invalid_argument(f"JSON object: does not have named input: {name}")
        shape, out = _shape_of(item), values.setdefault(name, [])
        before = len(out)
        _fill(item, 0, shape, converters[name], out)
        if name not in shapes:
            shapes[name] = shape
        elif (size := len(out) - before) != int(np.prod(shapes[name])):
            raise invalid_argument(
                f"Expecting tensor size: {int(np.prod(shapes[name]))} but got: {size}"
            )
        elif shape != shapes[name]:
            raise invalid_argument(
                f"Expecting shape {_shape_str(shapes[name])} but got: {_shape_str(shape)}"
            )

    for i, elem in enumerate(instances):
        is_object = isinstance(elem, dict) and not _is_b64(elem)
        if objects != is_object:
            got = "list" if objects else "object"
            want = "object" if objects else "value/list"
            raise invalid_argument(f"Expecting {want} but got {got} at item {i} of input list")
        for key, item in elem.items() if objects else [(names[0], elem)]:
            try:
                add(item, key)
            except ServingStatus as e:
                where = f"{i} key: {key}" if objects else f"{i}"
                raise invalid_argument(
                    f"Failed to process element: {where} of 'instances' list. "
                    f"Error: {e.code}: {e.message}"
                ) from None
        if objects and set(elem) != set(names):
            raise invalid_argument(
                f"Failed to process element: {i} of 'instances' list. JSON object: {_debug(elem)} "
                f"keys must be equal to: {','.join(names)}"
            )
    return {
        name: _to_array(values[name], [len(instances), *shapes[name]], infos[name].dtype)
        for name in names
    }


def _from_inputs(value: Any, infos: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """`FillTensorMapFromInputsMap`, naming the input in errors (TF Serving does not)."""
    if not isinstance(value, dict) or _is_b64(value):
        if len(infos) > 1:
            raise invalid_argument(
                "inputs is a plain value/list, but expecting an object as multiple input tensors "
                "required as per tensorinfo_map"
            )
        value = {next(iter(infos)): value}
    arrays = {}
    for name in sorted(infos):
        if name not in value:
            raise invalid_argument(f"Missing named input: {name} in 'inputs' object.")
        shape, out = _shape_of(value[name]), list[Any]()
        try:
            _fill(value[name], 0, shape, _leaf_converter(infos[name].dtype), out)
        except ServingStatus as e:
            raise ServingStatus(
                e.code,
                f"Failed to process input: {name} of 'inputs' object. Error: {e.code}: {e.message}",
            ) from None
        arrays[name] = _to_array(out, shape, infos[name].dtype)
    return arrays


def check_shapes(arrays: Mapping[str, np.ndarray], infos: Mapping[str, Any], key: str) -> None:
    """Rejects inputs whose rank or fixed sizes differ from the signature (local check)."""
    for name, array in arrays.items():
        shape = infos[name].tensor_shape
        if shape.unknown_rank:
            continue
        dims = [d.size for d in shape.dim]
        if len(dims) != array.ndim or any(
            0 <= d != a for d, a in zip(dims, array.shape, strict=True)
        ):
            raise invalid_argument(
                f"Input '{name}' has shape {_shape_str(array.shape)}, but signature '{key}' "
                f"expects {_shape_str(dims)} (-1: any size)"
            )


def _json_values(name: str, array: np.ndarray) -> Any:
    """Output tensor -> nested lists; float32 keeps its shortest decimal form, DT_STRING
    outputs named `*_bytes` become `{"b64": ...}` (`AddSingleValueAndAdvance`)."""
    if array.dtype in (np.float32, np.float16):
        return array.astype(str).astype(np.float64).tolist()
    if array.dtype.kind in "OS":
        as_bytes = name.endswith("_bytes")

        def text(x: Any) -> Any:
            if isinstance(x, list):
                return [text(v) for v in x]
            if as_bytes:
                return {"b64": base64.b64encode(x).decode()}
            return x.decode("utf-8", "replace")

        return text(array.tolist())
    return array.tolist()


def response_from_tensors(outputs: Mapping[str, np.ndarray], row_format: bool) -> Any:
    """`MakeJsonFromTensors`: `{"predictions": ...}` (row) or `{"outputs": ...}`."""
    names = sorted(outputs)
    if not names:
        raise invalid_argument("Cannot convert empty tensor map to JSON")
    values = {name: _json_values(name, outputs[name]) for name in names}
    if not row_format:
        return {"outputs": values[names[0]] if len(names) == 1 else values}
    batch = None
    for name in names:
        if outputs[name].ndim == 0:
            raise invalid_argument(f"Tensor name: {name} has no shape information ")
        if batch is not None and outputs[name].shape[0] != batch:
            raise invalid_argument(
                f"Tensor name: {name} has inconsistent batch size: {outputs[name].shape[0]} "
                f"expecting: {batch}"
            )
        batch = outputs[name].shape[0]
    if len(names) == 1:
        return {"predictions": values[names[0]]}
    return {"predictions": [{n: values[n][i] for n in names} for i in range(batch or 0)]}


# --------------------------------------------------------------------------- running


def build_repository(
    model_base_path: str | None = None,
    model_name: str = "default",
    model_config_file: str | None = None,
    version_labels: Mapping[str, int] | None = None,
    model_version_policy: str | None = None,
    file_system_poll_wait_seconds: float = 2.0,
    max_num_load_retries: int = 5,
) -> ModelRepository:
    """Builds (without loading) the repository the CLI flags describe.

    With `model_base_path`, one model named `model_name`; its policy defaults to
    `latest` (TF Serving's default), or `all` when `version_labels` are given. With
    `model_config_file`, the models, policies and labels of that file.
    """
    if (model_base_path is None) == (model_config_file is None):
        raise ValueError("Give exactly one of `model_base_path` and `model_config_file`.")
    if model_config_file is not None:
        if version_labels or model_version_policy:
            raise ValueError(
                "With `model_config_file`, set version_labels and model_version_policy in the file."
            )
        with open(model_config_file, encoding="utf-8") as f:
            configs = parse_model_config(f.read())
    else:
        assert model_base_path is not None
        policy = VersionPolicy.parse(
            model_version_policy or ("all" if version_labels else "latest")
        )
        configs = [ModelConfig(model_name, model_base_path, policy, dict(version_labels or {}))]
    return ModelRepository(configs, file_system_poll_wait_seconds, max_num_load_retries)


class LocalServer:
    """The REST server on an asyncio loop; `start()`/`stop()` run on that loop.

    Args:
        repository: ModelRepository. Started (loaded) by `start()`.
        host: str. Interface to bind. Defaults to "127.0.0.1".
        port: int. Port; 0 picks a free one (see `self.port`). Defaults to 8501.
        max_body_bytes: int. Request body cap. Defaults to 16 MiB.
        num_threads: int or None. Inference threads. Defaults to max(4, CPUs).
        shutdown_timeout: float. Seconds to wait for in-flight requests on stop.
            Defaults to 30.
    """

    def __init__(
        self,
        repository: ModelRepository,
        host: str = "127.0.0.1",
        port: int = 8501,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        num_threads: int | None = None,
        shutdown_timeout: float = 30.0,
    ) -> None:
        self.api = RestApi(repository, max_body_bytes, num_threads)
        self.host, self.port = host, port
        app = web.Application()
        app.router.add_route("*", r"/{tail:[\s\S]*}", self.api.handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=shutdown_timeout)

    @property
    def url(self) -> str:
        """Base URL, e.g. `http://127.0.0.1:8501`."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        """Loads the models (in a thread), then binds and starts serving."""
        await asyncio.get_running_loop().run_in_executor(None, self.api.repository.start)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]
        logger.info("Exporting HTTP/REST API at:%s:%d ...", self.host, self.port)

    async def stop(self) -> None:
        """Stops accepting, finishes in-flight requests, stops polling."""
        await self._runner.cleanup()
        self.api.executor.shutdown(wait=True)
        self.api.repository.stop()


def stop_gracefully(proc: Any, timeout: float = 30.0) -> int:
    """SIGTERM a server subprocess, wait up to `timeout` s (then kill); returns its exit
    code. Closes its stderr pipe if it has one."""
    import signal
    import subprocess

    try:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return int(proc.returncode)
    finally:
        if proc.stderr is not None:
            proc.stderr.close()


@contextlib.contextmanager
def serve_in_thread(
    model_base_path: str | None = None,
    model_name: str = "default",
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    **repository_kwargs: Any,
) -> Iterator[LocalServer]:
    """Runs a `LocalServer` on a background thread for the `with` block.

    Keyword arguments other than those named go to `build_repository`. Yields the
    started server (`server.url`, `server.port`); stops it gracefully on exit.

    Example:
        >>> with serve_in_thread("/models/ctr", "ctr") as server:  # doctest: +SKIP
        ...     requests.get(f"{server.url}/v1/models/ctr").json()
    """
    repository = build_repository(model_base_path, model_name, **repository_kwargs)
    server = LocalServer(repository, host, port, max_body_bytes)
    loop = asyncio.new_event_loop()
    started: concurrent.futures.Future[None] = concurrent.futures.Future()
    stop = asyncio.Event()

    async def run() -> None:
        try:
            await server.start()
        except BaseException as e:
            started.set_exception(e)
            return
        started.set_result(None)
        await stop.wait()
        await server.stop()

    thread = threading.Thread(target=loop.run_until_complete, args=(run(),), daemon=True)
    thread.start()
    try:
        started.result()
        yield server
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(timeout=60)
        loop.close()


def _parse_labels(text: str) -> dict[str, int]:
    try:
        return {k.strip(): int(v) for k, v in (p.split("=") for p in text.split(",") if p)}
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"`version_labels` must look like stable=1,canary=2. Received: {text}"
        ) from None


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the process exit code."""
    p = argparse.ArgumentParser(prog="python -m tfnegseq.serving.server", description=__doc__)
    p.add_argument("--model_base_path", help="directory of <version>/saved_model.pb")
    p.add_argument("--model_name", default="default", help="model name (default: default)")
    p.add_argument("--model_config_file", help="TF Serving models.config (text proto)")
    p.add_argument("--port", "--rest_api_port", type=int, default=8501, dest="port")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default loopback)")
    p.add_argument("--max_body_bytes", type=int, default=DEFAULT_MAX_BODY_BYTES)
    p.add_argument("--file_system_poll_wait_seconds", type=float, default=2.0)
    p.add_argument("--version_labels", type=_parse_labels, help="e.g. stable=1,canary=2")
    p.add_argument("--model_version_policy", help="latest[:N] | all | specific:1,2")
    p.add_argument("--max_num_load_retries", type=int, default=5)
    p.add_argument("--rest_api_num_threads", type=int, default=None)
    p.add_argument("--log_level", default="INFO", help="DEBUG logs one line per request")
    args = p.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(message)s"
    )
    try:
        repository = build_repository(
            args.model_base_path, args.model_name, args.model_config_file, args.version_labels,
            args.model_version_policy, args.file_system_poll_wait_seconds,
            args.max_num_load_retries,
        )  # fmt: skip
    except (ValueError, OSError) as e:
        p.error(str(e))
    server = LocalServer(
        repository, args.host, args.port, args.max_body_bytes, args.rest_api_num_threads
    )

    async def run() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await server.start()
        await stop.wait()
        logger.info("Shutting down: finishing in-flight requests")
        await server.stop()

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
