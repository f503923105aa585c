"""The REST codec: JSON request bodies -> input arrays, output arrays -> JSON replies.

A port of TF Serving's `util/json_tensor.cc` (same checks, same messages) plus the
request-level parts of `model_servers/http_rest_api_handler.cc`: `parse_json` reads a
body, `signature_name` and `tensors_from_request` read a predict request in row
(`instances`) or columnar (`inputs`) format against a signature's `TensorInfo`s,
`check_shapes` compares the arrays with the signature (a local addition), and
`response_from_tensors` builds `{"predictions": ...}` or `{"outputs": ...}`. Pure
functions: no server, no TensorFlow at import time; every client mistake raises
`ServingStatus` (`INVALID_ARGUMENT` -> HTTP 400).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from tfnegseq.serving.status import ServingStatus, invalid_argument

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
# numpy's limit on ndarray dimensions (TensorFlow allows 254): deeper JSON lists get 400.
MAX_DIMS = 64


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


def _shape_of(value: Any, batched: bool = False) -> list[int]:
    """`GetDenseTensorShape`: sizes along the first element of each nested list.

    Refuses nesting that would give a tensor of more than `MAX_DIMS` dimensions
    (counting the batch dimension of a row-format instance when `batched`), before
    any recursion over the value.
    """
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        if len(shape) + batched > MAX_DIMS:
            raise invalid_argument(
                f"JSON Value nested more than {MAX_DIMS - batched} lists deep: tensors have at "
                f"most {MAX_DIMS} dimensions{' (with the batch)' if batched else ''}"
            )
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
        shape, out = _shape_of(item, batched=True), values.setdefault(name, [])
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
