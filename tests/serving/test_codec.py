"""The REST codec (`tfnegseq.serving.codec`) without a server: JSON bodies -> arrays
against a signature's TensorInfos, arrays -> replies, and the client mistakes that
must be INVALID_ARGUMENT (HTTP 400), never another exception (HTTP 500)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.serving.conftest import nested
from tfnegseq.serving import codec
from tfnegseq.serving.status import ServingStatus


def infos(**shapes: tuple[int, list[int]]) -> dict:
    """name=(dtype enum, dims) -> TensorInfo protos, as in a SignatureDef."""
    from tensorflow.core.protobuf import meta_graph_pb2

    out = {}
    for name, (dtype, dims) in shapes.items():
        info = meta_graph_pb2.TensorInfo(name=f"{name}:0", dtype=dtype)
        for d in dims:
            info.tensor_shape.dim.add(size=d)
        out[name] = info
    return out


INT64, FLOAT = 9, 1
SIGNATURE = infos(user_id=(INT64, [-1]), item_id=(INT64, [-1, -1]))


def test_row_and_columnar_requests_give_the_same_arrays() -> None:
    rows = codec.parse_json(b'{"instances": [{"user_id": 7, "item_id": [1, 2]}]}')
    cols = codec.parse_json(b'{"inputs": {"user_id": [7], "item_id": [[1, 2]]}}')
    (a, row_format), (b, columnar) = (
        codec.tensors_from_request(rows, SIGNATURE),
        codec.tensors_from_request(cols, SIGNATURE),
    )
    assert row_format and not columnar
    for name in SIGNATURE:
        np.testing.assert_array_equal(a[name], b[name])
        assert a[name].dtype == np.int64
    codec.check_shapes(a, SIGNATURE, "serving_default")


def test_replies_in_both_formats() -> None:
    outputs = {"probability": np.array([[0.25, 0.5]], np.float32)}
    assert codec.response_from_tensors(outputs, True) == {"predictions": [[0.25, 0.5]]}
    assert codec.response_from_tensors(outputs, False) == {"outputs": [[0.25, 0.5]]}


@pytest.mark.parametrize(
    "body",
    [
        {"instances": [{"user_id": 7, "item_id": nested(1, 64)}]},  # 65 with the batch
        {"inputs": {"user_id": [7], "item_id": nested(1, 65)}},
        {"inputs": {"user_id": [7], "item_id": nested(1, 900)}},  # deep, yet parsed
    ],
    ids=["row_64", "columnar_65", "columnar_900"],
)
def test_nesting_past_64_dimensions_is_invalid_argument(body: dict) -> None:
    with pytest.raises(ServingStatus) as info:
        codec.tensors_from_request(body, SIGNATURE)
    assert info.value.code == "INVALID_ARGUMENT"
    assert "at most 64 dimensions" in info.value.message


def test_nesting_deeper_than_the_parser_goes_is_invalid_argument() -> None:
    with pytest.raises(ServingStatus, match="JSON Parse error") as info:
        codec.parse_json(b'{"inputs": ' + b"[" * 50000 + b"]" * 50000 + b"}")
    assert info.value.code == "INVALID_ARGUMENT"


def test_64_dimensions_are_accepted_by_the_codec() -> None:
    signature = infos(x=(FLOAT, [-1] * 64))
    arrays, _ = codec.tensors_from_request({"inputs": {"x": nested(1.5, 64)}}, signature)
    assert arrays["x"].ndim == 64
