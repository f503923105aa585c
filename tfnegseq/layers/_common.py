"""Helpers shared by the layers: initializer copies, argument checks."""

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


def check_int(name: str, value, low: int = 1) -> None:
    """Raises ValueError unless `value` is an integer (not a bool) >= `low`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"`{name}` must be an integer >= {low}. Received: {name}={value}")


def check_block_args(num_layers, num_heads, ff_dim, dropout) -> None:
    """The arguments every stack of attention blocks validates."""
    for name, value in (("num_layers", num_layers), ("num_heads", num_heads),
                        ("ff_dim", ff_dim)):
        check_int(name, value)
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"`dropout` must be in [0, 1). Received: dropout={dropout}")
