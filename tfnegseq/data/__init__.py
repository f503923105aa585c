"""Data: simulator, source adapters, rules, sample building, Beam transforms, tf.data input."""
