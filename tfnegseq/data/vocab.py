"""Id vocabularies written by the Beam job, and the lookups built from them.

`<data_dir>/vocab/<name>.tsv` holds `raw_id<TAB>count` lines sorted by count (desc),
then id. A `Vocabulary` keeps the ids that pass `VocabConfig` (`min_count`, then the
`max_size` most frequent) and maps raw ids to embedding rows:

    row 0                      padding (raw id `PAD_ID` = -1)
    rows 1 .. oov_buckets      out-of-vocabulary ids: row 1 + (raw id mod oov_buckets),
                               a floor modulo (negative ids included)
    rows oov_buckets+1 ..      the kept ids, most frequent first

The counts come from the training split only (`tfnegseq.data.beam.BuildSamplesFn`), so
an id first seen in validation or test data is out of vocabulary.

That is `keras.layers.IntegerLookup(mask_token=-1, num_oov_indices=oov_buckets)` with
its default `oov_method="floormod"` (Keras 3.15: `tf.math.floormod(id, oov_buckets)`
for integer keys; FarmHash64 only for strings or `oov_method="farmhash"`), a
TensorFlow-backed preprocessing layer: it runs in the tf.data input pipeline (under
any Keras backend) and inside the exported serving graph, never inside a model's
backend-agnostic layers.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from tfnegseq.config import VocabConfig
from tfnegseq.schema import PAD_ID


def read_vocab_file(path: str) -> tuple[np.ndarray, np.ndarray]:
    """(ids int64, counts int64) from a vocabulary TSV; errors name the file and line."""
    if "://" in path:
        import tensorflow as tf

        with tf.io.gfile.GFile(path) as f:
            text = f.read()
    else:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    ids, counts = [], []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line:
            continue
        parts = line.split("\t")
        try:
            ids.append(int(parts[0]))
            counts.append(int(parts[1]))
        except (ValueError, IndexError) as e:
            raise ValueError(f"{path}:{n}: expected 'id<TAB>count', got {line!r}") from e
    return np.asarray(ids, np.int64), np.asarray(counts, np.int64)


@dataclass
class Vocabulary:
    name: str
    ids: np.ndarray  # kept raw ids, most frequent first
    oov_buckets: int

    @classmethod
    def load(cls, data_dir: str, name: str, cfg: VocabConfig) -> Vocabulary:
        path = os.path.join(data_dir, "vocab", f"{name}.tsv")
        if "://" not in path and not os.path.exists(path):
            raise FileNotFoundError(
                f"vocabulary {name!r} not found at {path}; run the Beam job "
                "(python -m beam_jobs.build_samples) for this data first"
            )
        ids, counts = read_vocab_file(path)
        return cls.from_counts(name, ids, counts, cfg)

    @classmethod
    def from_counts(cls, name: str, ids: np.ndarray, counts: np.ndarray,
                    cfg: VocabConfig) -> Vocabulary:
        order = np.lexsort((ids, -counts))
        ids, counts = ids[order], counts[order]
        keep = (counts >= cfg.min_count) & (ids != PAD_ID)
        ids = ids[keep]
        if cfg.max_size:
            ids = ids[: cfg.max_size]
        return cls(name, ids, cfg.oov_buckets)

    @property
    def size(self) -> int:
        """Embedding rows needed: padding + OOV buckets + kept ids."""
        return 1 + self.oov_buckets + len(self.ids)

    def lookup_layer(self):
        """A `keras.layers.IntegerLookup` mapping raw ids to rows (see module doc)."""
        import keras

        return keras.layers.IntegerLookup(
            vocabulary=self.ids,
            mask_token=PAD_ID,
            num_oov_indices=self.oov_buckets,
            vocabulary_dtype="int64",
            output_mode="int",
            name=f"lookup_{self.name}",
        )

    def lookup_numpy(self, raw: np.ndarray) -> np.ndarray:
        """The rows `lookup_layer()` gives, computed in numpy (any shape, int64)."""
        raw = np.asarray(raw, np.int64)
        flat = raw.ravel()
        out = 1 + np.mod(flat, self.oov_buckets)  # floor modulo, like tf.math.floormod
        if len(self.ids):
            order = np.argsort(self.ids, kind="stable")
            pos = np.minimum(np.searchsorted(self.ids, flat, sorter=order), len(order) - 1)
            hit = self.ids[order[pos]] == flat
            out = np.where(hit, self.oov_buckets + 1 + order[pos], out)
        out[flat == PAD_ID] = 0
        return out.reshape(raw.shape)


def load_vocabularies(data_dir: str, names: list[str], cfg: VocabConfig) -> dict[str, Vocabulary]:
    return {n: Vocabulary.load(data_dir, n, cfg) for n in names}
