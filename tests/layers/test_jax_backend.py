"""Runs every layer under the JAX backend (eager and `jax.jit`) against the numpy references.

Keras fixes its backend at import time, so the checks run in a subprocess with
`KERAS_BACKEND=jax`; they reuse the backend-agnostic `check_*` functions of the test
helpers modules (`tests/helpers_*.py`), which set the weights through the named
sublayers and compare with the numpy transcriptions of the equations.
"""

from __future__ import annotations

import textwrap

import pytest

from tests.helpers import run_under_jax

SCRIPT = textwrap.dedent(
    """
    import keras

    assert keras.backend.backend() == "jax", keras.backend.backend()
    from tests import helpers_attention as ha
    from tests import helpers_polarity as hp
    from tests import helpers_transformer as ht
    from tests import helpers_unified as hu
    from tests.helpers import assert_config_round_trip, eager_call, xla_call
    from tfnegseq.layers.attention import DinAttention
    from tfnegseq.layers.polarity import (
        MixedPolaritySequence,
        PolarityBiasEmbedding,
        TargetAwarePolarityFusion,
    )
    from tfnegseq.layers.transformer import TransformerEncoder
    from tfnegseq.layers.unified import HyFormerEncoder, MixFormerEncoder, OneTransEncoder

    for call in (eager_call, xla_call):  # xla_call is jax.jit over stateless_call
        for mode in ("interleaved", "grouped"):
            for ratio, length in ((0.5, 8), (0.3, 10), (1.0, 5), (0.0, 4)):
                hp.check_mixed_sequence(mode, ratio, length, seed=length, call=call)
        hp.check_pbe(seed=1, call=call)
        for row in sorted(hp.TAPF_ROWS):
            hp.check_tapf(row, seed=3, call=call)
        hp.check_tapf("full", seed=4, call=call, polarity_dim=3)
        ha.check_din(seed=1, call=call)
        ha.check_din(seed=2, units=(7,), activation="relu", call=call)
        ht.check_transformer(seed=1, call=call)
        ht.check_transformer(seed=2, num_layers=1, num_heads=1, call=call)
        hu.check_onetrans(seed=1, num_layers=3, call=call)
        hu.check_onetrans(seed=2, num_layers=2, pyramid=False, call=call)
        hu.check_hyformer(seed=1, call=call)
        hu.check_mixformer(seed=1, call=call)

    from tests.helpers_embeddings import check_take_rows_adam_step

    check_take_rows_adam_step(seed=0)  # the model's embedding lookup and Adam on JAX
    from tests.helpers_optimizers import check_dense_gradients_get_plain_adam

    check_dense_gradients_get_plain_adam(seed=0)  # RowSparseAdam is Adam under JAX

    # mixed_bfloat16: references that round to bf16 where the layers do (JAX's own
    # bf16 rounding included), within a few bf16 ulps.
    hp.check_mixed_sequence("interleaved", 0.5, 8, seed=5, dtype="mixed_bfloat16")
    hp.check_pbe_bf16(seed=5)
    hp.check_tapf_bf16("full", seed=5)
    ha.check_din_bf16(seed=5)
    ht.check_transformer_bf16(seed=5)

    for layer in (
        MixedPolaritySequence(6, 0.5, mode="grouped"),
        PolarityBiasEmbedding(),
        TargetAwarePolarityFusion(use_gating=False),
        DinAttention(units=(4, 2)),
        TransformerEncoder(1, 2, 8),
        OneTransEncoder(2, 2, 8, pyramid=False),
        HyFormerEncoder(2, 2, 8, num_queries=3),
        MixFormerEncoder(1, 2, 8),
    ):
        assert_config_round_trip(layer)
    print("JAX_BACKEND_OK")
    """
)


@pytest.mark.slow  # every layer under JAX, eager and jit, in a subprocess: about 2 minutes
def test_layers_under_jax_backend():
    result = run_under_jax(SCRIPT)
    assert "JAX_BACKEND_OK" in result.stdout
