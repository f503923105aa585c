"""The sample contract: every feature is named once, here.

The Beam writer (Arrow schema -> tf.Example via tfx-bsl), the TFMD `schema.pbtxt`,
the tf.data parse spec and the model / serving inputs are all derived from
`features(samples_config)`. Nothing else in the package lists features by hand.

CTR task, one sample per target event:

| feature | dtype | kind | meaning |
| `user_id`, `item_id` | int64 | scalar | raw ids of the impression |
| `timestamp` | int64 | scalar | ms since epoch |
| `order` | int64 | scalar | the target's rank in the user's timeline (1-based) |
| `label` | int64 | scalar | 0 / 1 |
| `pos_item_id`, `pos_order` | int64 | list <= max_history | recent positives, oldest first |
| `neg_item_id`, `neg_order` | int64 | list <= max_history | recent negatives, oldest first (`samples.negative_history`) |
| `life_item_id`, `life_order`, `life_polarity` | int64 | list <= lifelong_length | all events |
| `life_value` | float | list <= lifelong_length | engagement value of each |
| `life_item_<f>` | int64 | list <= lifelong_length | side feature `f` of each (`samples.lifelong_item_features`) |
| `user_<f>` / `item_<f>` | int64 | scalar | profile / side features (raw categorical ids) |

Sequential task (SINE protocol), one sample per user:

| `user_id` | int64 | scalar | |
| `seq_item_id`, `seq_order`, `seq_polarity`, `seq_timestamp` | int64 | list | events before the test target |
| `valid_index` | int64 | scalar | position in `seq_*` of the validation positive |
| `test_item_id` | int64 | scalar | the user's last positive (held out) |
| `valid_item_id` | int64 | scalar | the second-to-last positive (= seq_item_id[valid_index]) |

Ids are raw non-negative int64 (string ids through `fingerprint64`). Orders are
1-based so 0 never names an event. In padded tensors (tf.data, serving) a raw id of
`PAD_ID` (-1) marks an empty slot; the lookup maps it to row 0, so padding never
collides with a real id (raw id 0 is a real KuaiRec user).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from tfnegseq.config import SamplesConfig

PAD_ID = -1
ID_MASK = (1 << 63) - 1

ITEM_VOCAB = "item_id"
USER_VOCAB = "user_id"


def fingerprint64(value: str) -> int:
    """Stable 63-bit fingerprint of a string id: blake2b-8 big-endian & (2**63 - 1).

    Documented so that any client can map string ids the same way.
    """
    digest = hashlib.blake2b(value.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") & ID_MASK


@dataclass(frozen=True)
class Feature:
    """One feature of the sample contract.

    name: the tf.Example key. dtype: "int64" or "float32". kind: "scalar" or "list".
    max_len: longest list (lists only). vocab: the id vocabulary it is looked up in,
    or None for non-id features.
    """

    name: str
    dtype: Literal["int64", "float32"]
    kind: Literal["scalar", "list"]
    max_len: int = 0
    vocab: str | None = None

    @property
    def is_list(self) -> bool:
        return self.kind == "list"


def _ctr_features(cfg: SamplesConfig) -> list[Feature]:
    h = cfg.max_history
    out = [
        Feature("user_id", "int64", "scalar", vocab=USER_VOCAB),
        Feature("item_id", "int64", "scalar", vocab=ITEM_VOCAB),
        Feature("timestamp", "int64", "scalar"),
        Feature("order", "int64", "scalar"),
        Feature("label", "int64", "scalar"),
        Feature("pos_item_id", "int64", "list", h, ITEM_VOCAB),
        Feature("pos_order", "int64", "list", h),
        Feature("neg_item_id", "int64", "list", h, ITEM_VOCAB),
        Feature("neg_order", "int64", "list", h),
    ]
    n = cfg.lifelong_length
    if n > 0:
        out += [
            Feature("life_item_id", "int64", "list", n, ITEM_VOCAB),
            Feature("life_order", "int64", "list", n),
            Feature("life_polarity", "int64", "list", n),
            Feature("life_value", "float32", "list", n),
        ]
        out += [Feature(f"life_item_{f}", "int64", "list", n, f"item_{f}")
                for f in cfg.lifelong_item_features]
    out += _side_features(cfg)
    return out


def _side_features(cfg: SamplesConfig) -> list[Feature]:
    out = [Feature(f"user_{f}", "int64", "scalar", vocab=f"user_{f}") for f in cfg.user_features]
    out += [Feature(f"item_{f}", "int64", "scalar", vocab=f"item_{f}") for f in cfg.item_features]
    return out


def _sequential_features(cfg: SamplesConfig) -> list[Feature]:
    n = cfg.max_sequence
    return [
        Feature("user_id", "int64", "scalar", vocab=USER_VOCAB),
        Feature("seq_item_id", "int64", "list", n, ITEM_VOCAB),
        Feature("seq_order", "int64", "list", n),
        Feature("seq_polarity", "int64", "list", n),
        Feature("seq_timestamp", "int64", "list", n),
        Feature("valid_index", "int64", "scalar"),
        Feature("valid_item_id", "int64", "scalar", vocab=ITEM_VOCAB),
        Feature("test_item_id", "int64", "scalar", vocab=ITEM_VOCAB),
    ] + _side_features(cfg)


def features(cfg: SamplesConfig) -> list[Feature]:
    """All features of the samples that `cfg` describes, in a fixed order."""
    if cfg.task == "sequential":
        return _sequential_features(cfg)
    return _ctr_features(cfg)


def feature_map(cfg: SamplesConfig) -> dict[str, Feature]:
    return {f.name: f for f in features(cfg)}


def vocab_names(cfg: SamplesConfig) -> list[str]:
    """The id vocabularies the Beam job writes (one per distinct `Feature.vocab`)."""
    seen: list[str] = []
    for f in features(cfg):
        if f.vocab and f.vocab not in seen:
            seen.append(f.vocab)
    return seen


# ------------------------------------------------------------------ derived forms


def arrow_schema(cfg: SamplesConfig) -> Any:
    """pyarrow schema of a sample RecordBatch (lists as `list<int64>` / `list<float>`)."""
    import pyarrow as pa

    fields = []
    for f in features(cfg):
        t = pa.int64() if f.dtype == "int64" else pa.float32()
        fields.append(pa.field(f.name, pa.list_(t)))  # tfx-bsl encodes list columns
    return pa.schema(fields)


def tfmd_schema(cfg: SamplesConfig) -> Any:
    """TensorFlow Metadata `Schema` proto describing the written tf.Examples."""
    from tensorflow_metadata.proto.v0 import schema_pb2

    schema = schema_pb2.Schema()
    for f in features(cfg):
        feat = schema.feature.add()
        feat.name = f.name
        feat.type = schema_pb2.INT if f.dtype == "int64" else schema_pb2.FLOAT
        if f.is_list:
            feat.value_count.min = 0
            feat.value_count.max = f.max_len
        else:
            feat.shape.dim.add().size = 1
            feat.presence.min_fraction = 1.0
        if f.vocab:
            feat.annotation.tag.append(f"vocab:{f.vocab}")
    return schema


def parse_spec(cfg: SamplesConfig) -> dict[str, Any]:
    """`tf.io.parse_example` spec: scalars fixed, lists ragged (padded later)."""
    import tensorflow as tf

    spec: dict[str, Any] = {}
    for f in features(cfg):
        dt = tf.int64 if f.dtype == "int64" else tf.float32
        if f.is_list:
            spec[f.name] = tf.io.RaggedFeature(dtype=dt, row_splits_dtype=tf.int64)
        else:
            spec[f.name] = tf.io.FixedLenFeature([], dt)
    return spec
