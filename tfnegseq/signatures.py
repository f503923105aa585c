"""Names shared by the exported SavedModels, the scoring job and the server.

The CTR kind's export has `score_examples` (serialized tf.Examples in the Beam job's
format -> its outputs) and `serving_default` (raw ids as JSON-friendly tensors); the
sequential kind's has `score` and `retrieve` (`tfnegseq.kinds.sequential.export`). No
TensorFlow at import time, so the scoring job and the server import these without the
export.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

SERVING_SIGNATURE = "serving_default"
EXAMPLES_SIGNATURE = "score_examples"
EXAMPLES_INPUT = "examples"
OUTPUT = "probability"
# the sequential kind's signatures (its export and `tfnegseq.serving.client`)
SCORE_SIGNATURE = "score"
RETRIEVE_SIGNATURE = "retrieve"
WARMUP_FILE = "tf_serving_warmup_requests"
METADATA_FILE = "tfnegseq_export.json"


def warmup_record(model_name: str, signature: str, inputs: Mapping[str, Any]) -> bytes:
    """One serialized `PredictionLog` (a `PredictRequest` of `signature` with `inputs`,
    numpy arrays) for `assets.extra/tf_serving_warmup_requests`. Uses the
    `tensorflow_serving.apis` protos (package `tensorflow-serving-api`); TensorFlow is
    imported here, not with this module."""
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature
    for name, value in inputs.items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
    log_ = prediction_log_pb2.PredictionLog(
        predict_log=prediction_log_pb2.PredictLog(request=request))
    return log_.SerializeToString()
