"""`ModelKind`: the hooks a model family implements (see `tfnegseq.kinds`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

    from tfnegseq.config import Config


class ModelKind:
    """A model family. Subclass it, set the class attributes, implement the hooks.

    Attributes:
        name: str. The value of `model.kind` that selects it.
        config_class: type. Its `model:` section, a `tfnegseq.config.ModelSection`
            pydantic dataclass with `kind: Literal[name]`.
        samples_task: str. The `samples.task` its training data must have.
        metric_keys: tuple of str. The headline metrics (logged, summarised over seeds).
        cache_validation_input: bool. Whether early stopping's validation (and test)
            inputs are parsed once and kept in memory (`tfnegseq.validation`) rather
            than re-read at every validation: for small inputs that are costly to
            parse. Default False.
    """

    name: str = ""
    config_class: type = type(None)
    samples_task: str = "ctr"
    metric_keys: tuple[str, ...] = ()
    cache_validation_input: bool = False

    # ------------------------------------------------------------------ config
    def check_config(self, cfg: Config) -> None:
        """Rules across sections; raise `ValueError("model.key: ...")`. Default: none."""

    # ------------------------------------------------------------------ training
    def model_inputs(self, cfg: Config) -> list[str]:
        """The (looked-up) feature names the model reads."""
        raise NotImplementedError

    def make_datasets(self, cfg: Config, data_dir: str, processor: Any) -> tuple[Any, Any] | None:
        """`(train, evaluation)` tf.data inputs, or None (the default) for the CTR
        samples' `(features, label)` batches (`tfnegseq.data.input.make_datasets`)."""
        return None

    def build_model(self, cfg: Config, vocab_sizes: Mapping[str, int]) -> Any:
        """The Keras model for `cfg`; it owns its loss (compile takes no `loss`)."""
        raise NotImplementedError

    def build_optimizer(self, cfg: Config) -> Any:
        """Adam at `train.learning_rate`, or its lazy row-sparse form for
        `train.embedding_updates: row_sparse`."""
        import keras

        from tfnegseq.optimizers import RowSparseAdam

        if cfg.train.embedding_updates == "row_sparse":
            return RowSparseAdam(cfg.train.learning_rate)
        return keras.optimizers.Adam(cfg.train.learning_rate)

    # ------------------------------------------------------------------ evaluation
    def evaluation_keys(self, cfg: Config) -> tuple[str, ...]:
        """Input features passed through beside the model's outputs to `metrics`
        (`label` is always there)."""
        return ()

    def metrics(self, outputs: Mapping[str, np.ndarray]) -> dict[str, Any]:
        """Metrics from the concatenated outputs (model outputs + `label` + the
        `evaluation_keys`) of the whole evaluation split."""
        raise NotImplementedError

    # ------------------------------------------------------------------ export
    def export_module(self, model: Any, processor: Any, cfg: Config) -> tuple[Any, dict[str, Any], dict[str, Any]]:
        """`(tf.Module, {signature name: concrete function}, signature description)`
        for the SavedModel. TensorFlow only."""
        raise NotImplementedError(f"model kind {self.name!r} has no serving export")

    def warmup_records(self, model_name: str, examples: list[bytes], cfg: Config) -> list[bytes]:
        """Serialized `PredictionLog`s for `assets.extra/tf_serving_warmup_requests`."""
        return []

    def __repr__(self) -> str:
        return f"<ModelKind {self.name!r}>"
