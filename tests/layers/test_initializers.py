"""Every kernel of a layer starts from its own random draw.

A Keras 3 initializer built without a seed draws one seed when it is constructed and
reuses it on every call, so one instance handed to several sublayers gives every
same-shaped kernel identical initial values (SINE's query, key and value projections
were the same matrix, and its two feed-forward kernels too). Each case below builds a
layer whose defaults create at least two same-shaped kernels and checks that no two
are equal, and that each is a plausible Glorot draw (not zeros).
"""

from __future__ import annotations

import itertools

import keras
import numpy as np
import pytest

from tfnegseq.layers import (
    DinAttention,
    PersonalizedExtractorGeneration,
    SubInterestSelfAttention,
)

D = 8


def _sine_block():
    layer = SubInterestSelfAttention(num_heads=1)  # q, k, v, out: [d, 1, d] / [1, d, d]
    layer(np.zeros((2, 5, D), "float32"), np.ones((2, 5), bool))
    return layer


def _din():
    layer = DinAttention(units=(D, D))  # hidden_1 [D, D]; hidden_0 [4d, D] with d = 2
    layer(np.zeros((2, 5, 2), "float32"), np.zeros((2, 2), "float32"))
    return layer


def _peg():
    layer = PersonalizedExtractorGeneration([(3, 4, 2), (3, 4, 2)], units=D)  # two of each
    layer(np.zeros((2, 6), "float32"))
    return layer


CASES = {"SubInterestSelfAttention": _sine_block, "DinAttention": _din,
         "PersonalizedExtractorGeneration": _peg}


def kernels(layer):
    return {w.path: keras.ops.convert_to_numpy(w) for w in layer.weights
            if len(w.shape) >= 2 and "kernel" in w.path}


@pytest.mark.parametrize("case", sorted(CASES))
def test_same_shaped_kernels_start_different(case):
    values = kernels(CASES[case]())
    pairs = [(a, b) for a, b in itertools.combinations(sorted(values), 2)
             if values[a].shape == values[b].shape]
    assert pairs, f"{case}: the case must build two same-shaped kernels"
    for a, b in pairs:
        assert not np.array_equal(values[a], values[b]), f"{a} and {b} start identical"
    for path, value in values.items():
        assert np.std(value) > 0, f"{path} starts constant"


def test_a_seeded_initializer_stays_reproducible():
    """`fresh` copies a seeded initializer with its seed: two layers built with the same
    seeded initializer start equal (the values asked for)."""
    def build():
        layer = SubInterestSelfAttention(
            num_heads=1, kernel_initializer=keras.initializers.GlorotUniform(seed=3))
        layer(np.zeros((1, 3, D), "float32"), np.ones((1, 3), bool))
        return list(kernels(layer).values())  # the paths differ by the layers' names

    first, second = build(), build()
    assert len(first) == len(second) == 6
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)
