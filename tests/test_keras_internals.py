"""The private Keras names tfnegseq uses still exist and still do what we use them for.

A Keras upgrade that moves or changes one fails here, with the name in the message,
instead of deep inside a training step.
"""

import keras
import numpy as np
import pytest

from tfnegseq import keras_internals


def test_autocast_scope_none_reads_a_float32_variable_as_float32():
    """Inside a mixed_bfloat16 layer's call Keras reads float variables as bf16; the
    `AutocastScope(None)` that `EmbeddingTables.read` enters must keep float32."""
    seen = {}

    class Probe(keras.layers.Layer):
        def build(self, shape):
            self.table = self.add_weight(shape=(4, 2), initializer="ones", dtype="float32")

        def call(self, x):
            seen["autocast"] = keras.backend.standardize_dtype(self.table.value.dtype)
            with keras_internals.AutocastScope(None):
                seen["outside"] = keras.backend.standardize_dtype(self.table.value.dtype)
            return x

    Probe(dtype="mixed_bfloat16")(np.zeros((1, 2), "float32"))
    assert seen == {"autocast": "bfloat16", "outside": "float32"}, (
        "keras.src.backend.AutocastScope changed: tfnegseq.embeddings relies on it")


@pytest.mark.parametrize("data, expected", [
    ((1,), (1, None, None)),
    ((1, 2), (1, 2, None)),
    ((1, 2, 3), (1, 2, 3)),
])
def test_unpack_x_y_sample_weight(data, expected):
    assert keras_internals.unpack_x_y_sample_weight(data) == expected, (
        "keras.src...data_adapter_utils.unpack_x_y_sample_weight changed: "
        "tfnegseq.jax_sparse relies on it")
