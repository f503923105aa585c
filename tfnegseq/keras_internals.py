"""The only place tfnegseq imports private Keras names (`keras.src...`).

Keras 3.15's public API does not export these; each is needed for a reason below.
`tests/test_keras_internals.py` imports this module and checks each name still does what
we use it for, so a Keras upgrade that moves or changes one fails there, loudly, instead
of deep inside training.

- `AutocastScope`: embedding tables are read outside a mixed-precision model's autocast
  scope (`AutocastScope(None)`), so a bf16 policy never casts a whole float32 table to
  bf16 each step (`tfnegseq.embeddings`). Keras has no public switch for one read.
- `unpack_x_y_sample_weight`: the JAX row-sparse `train_step` (`tfnegseq.jax_sparse`)
  replaces Keras' own and must unpack a batch exactly as Keras does. The public
  `keras.utils.unpack_x_y_sample_weight` exists in some versions only; the private one
  is what the trainers themselves call.
- `scale_loss_for_distribution`: a model that computes its own loss (not through a
  `keras.losses.Loss`) must divide it by the replicas of a `tf.distribute` strategy, as
  Keras' losses do, so that the all-reduced gradients are those of the global batch
  mean (`train.distribution: mirrored`). A no-op outside a strategy and on JAX.
"""

from __future__ import annotations

from keras.src.backend import AutocastScope
from keras.src.losses.loss import scale_loss_for_distribution
from keras.src.trainers.data_adapters.data_adapter_utils import unpack_x_y_sample_weight

__all__ = ["AutocastScope", "scale_loss_for_distribution", "unpack_x_y_sample_weight"]
