"""Model kinds: one registry entry per model family.

A kind brings everything that differs between families, so `train`, `evaluate`,
`export`, the scoring job and the server look the kind up and never branch on it:

| hook | what it says |
| --- | --- |
| `config_class` | its `model:` section (a `ModelSection` subclass; the tagged union) |
| `samples_task` | which samples the Beam job must have built (`samples.task`) |
| `check_config` | rules across sections, checked at load |
| `make_datasets` | the training and evaluation `tf.data` inputs (default None: the CTR samples) |
| `build_model` | the Keras model (which owns its loss) for a config and vocabulary sizes |
| `build_optimizer` | its optimizer (default: Adam, or lazy row-sparse Adam) |
| `evaluation_keys` / `metrics` | what evaluation passes through beside the outputs, and the metrics computed from them |
| `model_inputs` | the features the model reads |
| `export_module` / `warmup_records` | serving signatures of the SavedModel and their warm-up requests |

Built-in kinds are imported on first use (`_BUILTIN`), so loading a config imports
neither Keras nor TensorFlow. A new family is one package with a `ModelKind` subclass
and one `register_kind(...)` call (see `tests/test_kinds.py`, which adds a popularity
model without touching this package's other modules).
"""

from __future__ import annotations

import importlib

from tfnegseq.kinds.base import ModelKind

__all__ = ["ModelKind", "get_kind", "kind_names", "register_kind", "unregister_kind"]

# name -> module whose import registers it (imported on first use)
_BUILTIN = {"ctr": "tfnegseq.kinds.ctr", "sequential": "tfnegseq.kinds.sequential",
            "cain": "tfnegseq.kinds.cain"}
_KINDS: dict[str, ModelKind] = {}


def register_kind(kind: ModelKind) -> ModelKind:
    """Adds `kind` under `kind.name`; refuses a second kind of the same name."""
    if not isinstance(kind, ModelKind):
        raise TypeError(f"expected a ModelKind instance. Received: {kind!r}")
    existing = _KINDS.get(kind.name)
    if existing is not None and existing is not kind:
        raise ValueError(f"model kind {kind.name!r} is already registered ({existing!r})")
    _KINDS[kind.name] = kind
    return kind


def unregister_kind(name: str) -> None:
    """Removes a registered kind (tests that add a toy kind clean up with it)."""
    _KINDS.pop(name, None)


def kind_names() -> list[str]:
    """Every kind a config may name: built-in and registered."""
    return sorted(set(_BUILTIN) | set(_KINDS))


def get_kind(name: str) -> ModelKind:
    """The kind called `name`; `KeyError` naming the known kinds otherwise."""
    if name not in _KINDS and name in _BUILTIN:
        importlib.import_module(_BUILTIN[name])
    try:
        return _KINDS[name]
    except KeyError:
        raise KeyError(f"unknown model kind {name!r}; known kinds: {kind_names()}") from None
