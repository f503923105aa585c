"""Initializer helpers shared by the layers."""

from __future__ import annotations

import keras


def fresh(initializer):
    """A new instance of `initializer` for one weight.

    A Keras 3 initializer created without a seed draws one default seed when it is
    constructed and reuses it on every call, so one instance shared by several
    sublayers gives every same-shaped kernel the same initial values (two Transformer
    blocks started identical). A copy from the config draws its own seed; a seeded
    initializer stays seeded (the same values, as asked).
    """
    return keras.initializers.get(keras.initializers.serialize(initializer))
