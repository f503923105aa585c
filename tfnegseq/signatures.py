"""Names shared by the exported SavedModels, the scoring job and the server.

Every kind's export has `score_examples` (serialized tf.Examples in the Beam job's
format -> its outputs); `serving_default` takes raw ids as JSON-friendly tensors. No
TensorFlow here, so the scoring job and the server import these without the export.
"""

from __future__ import annotations

SERVING_SIGNATURE = "serving_default"
EXAMPLES_SIGNATURE = "score_examples"
EXAMPLES_INPUT = "examples"
OUTPUT = "probability"
WARMUP_FILE = "tf_serving_warmup_requests"
METADATA_FILE = "tfnegseq_export.json"
