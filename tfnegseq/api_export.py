"""The one registration decorator used by every tfnegseq layer and model."""

from __future__ import annotations

import keras

PACKAGE = "tfnegseq"


def register(cls):
    """Registers `cls` for Keras serialization under the `tfnegseq` package."""
    return keras.saving.register_keras_serializable(package=PACKAGE)(cls)
