"""Training on several devices or hosts: `train.distribution` (docs/distributed.md).

The engines are the backends' own, nothing home-made:

- TensorFlow backend, `mirrored`: `tf.distribute.MirroredStrategy` over the local GPUs,
  or over `train.cpu_devices` logical CPU devices when there is no GPU (or when asked).
  The model, its optimizer and `compile` are created in the strategy's scope; Keras'
  `fit` splits each global batch (`train.batch_size`) into one slice per replica, runs
  the step on every replica and all-reduces the gradients; `predict` gathers the
  replicas' outputs in order, so evaluation sees the whole split.
- TensorFlow backend, `multi_worker`: refused when the config is loaded (Keras 3's `fit`
  fails under `MultiWorkerMirroredStrategy`, keras-team/keras#20585; still so on keras
  3.15.1 / TensorFlow 2.21). Several hosts train on JAX instead.
- JAX backend, `data_parallel`: `keras.distribution.DataParallel` over every device of
  every process: variables replicated, each global batch split over the devices. One
  process per host; the hosts find each other through Keras' environment variables
  `KERAS_DISTRIBUTION_JOB_ADDRESSES` (the coordinator's `host:port` first),
  `KERAS_DISTRIBUTION_NUM_PROCESSES` and `KERAS_DISTRIBUTION_PROCESS_ID` (read here and
  passed to `jax.distributed.initialize` directly, for its timeouts; on CPU the
  collectives run over gloo). With several processes each reads its own training files
  (file `i` goes to process `i % P`) in batches of `batch_size / P`, repeated, for the
  same steps per epoch on every process; each backs up to its own directory; the chief
  evaluates the whole split with a plain copy of the trained model and writes the run.
- JAX backend, `model_parallel`: `keras.distribution.ModelParallel` on a
  `(devices / model_shards, model_shards)` mesh named `("batch", "model")`: the item
  embedding table's rows are split over the "model" axis, every other variable is
  replicated, and the batch is split over the "batch" axis.

TensorFlow-specific code lives here, with the input and export modules; layers and
models never import this.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from typing import Any

from tfnegseq.config import Config, ConfigError

log = logging.getLogger("tfnegseq.distribute")

TF_DISTRIBUTIONS = ("mirrored",)
JAX_DISTRIBUTIONS = ("data_parallel", "model_parallel")
# The item embedding table's variable path in every model kind (the `Embedding` layer
# named "item_embedding", under the model's name; LayoutMap matches the whole path with
# re.fullmatch): what model_parallel shards by rows.
ITEM_TABLE_PATTERN = r".*/item_embedding/embeddings"


@dataclasses.dataclass
class Plan:
    """How one process trains: the device setup of `train.distribution`.

    Attributes:
        name: `train.distribution`.
        replicas: model replicas over all processes (the global batch is split in as
            many slices; 1 without distribution).
        num_processes, process_id: the multi-host layout (1 and 0 on one host).
        strategy: the `tf.distribute` strategy (TensorFlow backend), else None.
        devices: the devices used, as strings (for the log and metrics.json).
    """

    name: str = "none"
    replicas: int = 1
    num_processes: int = 1
    process_id: int = 0
    strategy: Any = None
    devices: tuple[str, ...] = ()

    @property
    def is_chief(self) -> bool:
        """Whether this process writes the run's files (process 0)."""
        return self.process_id == 0

    @property
    def multi_process(self) -> bool:
        return self.num_processes > 1

    def scope(self) -> contextlib.AbstractContextManager[Any]:
        """Where the model, optimizer and `compile` must be created."""
        if self.strategy is not None:
            return self.strategy.scope()  # type: ignore[no-any-return]
        return contextlib.nullcontext()

    def jit_compile(self, tc: Any) -> bool:
        """`train.jit_compile`, except under a `tf.distribute` strategy: a step compiled
        whole by XLA there reads the other replicas' variables from its own device and
        fails ("Trying to access resource ... located in device CPU:1 from device
        CPU:0"); Keras' own `jit_compile="auto"` turns XLA off under tf.distribute too."""
        if self.strategy is not None and tc.jit_compile:
            log.warning("train.distribution=%s: the training step runs without XLA "
                        "(jit_compile is not supported under tf.distribute)", self.name)
            return False
        return bool(tc.jit_compile)

    def describe(self) -> dict[str, Any]:
        return {"distribution": self.name, "replicas": self.replicas,
                "num_processes": self.num_processes, "process_id": self.process_id,
                "devices": list(self.devices)}


def check_backend(cfg: Config, backend: str) -> None:
    """Refuses a distribution that the running Keras backend does not have."""
    name = cfg.train.distribution
    if name in TF_DISTRIBUTIONS and backend != "tensorflow":
        raise ConfigError(
            f"train.distribution: {name!r} is a TensorFlow strategy; the Keras backend is "
            f"{backend!r} (use data_parallel or model_parallel there, or set "
            "KERAS_BACKEND=tensorflow)")
    if name in JAX_DISTRIBUTIONS and backend != "jax":
        raise ConfigError(
            f"train.distribution: {name!r} is a keras.distribution layout for the JAX "
            f"backend; the Keras backend is {backend!r} (set KERAS_BACKEND=jax, or use "
            "mirrored on TensorFlow)")
    if name in JAX_DISTRIBUTIONS and cfg.train.embedding_updates == "row_sparse":
        raise ConfigError(
            f"train.embedding_updates: row_sparse is not supported with "
            f"train.distribution: {name}: the JAX row-sparse step (tfnegseq/jax_sparse.py) "
            "updates the table rows of one device's batch and is not written for sharded "
            "arrays; use embedding_updates: dense")


def per_replica_batch(cfg: Config, replicas: int) -> int:
    """`train.batch_size / replicas`; refused unless it divides evenly."""
    batch = cfg.train.batch_size
    if batch % replicas:
        raise ConfigError(
            f"train.batch_size: the global batch ({batch}) must divide evenly over the "
            f"{replicas} replicas of train.distribution: {cfg.train.distribution}")
    return batch // replicas


def setup(cfg: Config) -> Plan:
    """Starts the devices (and processes) of `train.distribution`: call it before the
    backend runs anything (logical CPU devices and `jax.distributed` must be set first).
    Returns the `Plan`; raises `ConfigError` for a layout that cannot run here."""
    import keras

    backend = keras.backend.backend()
    check_backend(cfg, backend)
    name = cfg.train.distribution
    if backend == "tensorflow":
        plan = _setup_tensorflow(cfg)
    elif backend == "jax":
        plan = _setup_jax(cfg)
    else:
        if name != "none":
            raise ConfigError(f"train.distribution: {name!r} is not available on the "
                              f"{backend!r} backend")
        plan = Plan()
    if plan.name != "none":
        per_replica_batch(cfg, plan.replicas)
        log.info("train.distribution=%s: %d replicas over %d process(es), global batch %d, "
                 "%d per replica; devices %s", plan.name, plan.replicas, plan.num_processes,
                 cfg.train.batch_size, cfg.train.batch_size // plan.replicas,
                 ", ".join(plan.devices))
    return plan


# ---------------------------------------------------------------------- TensorFlow
def _logical_cpus(count: int) -> list[Any]:
    """Splits the first physical CPU into `count` logical devices (before TensorFlow's
    runtime starts); returns the logical CPUs."""
    import tensorflow as tf

    cpus = tf.config.list_physical_devices("CPU")
    try:
        tf.config.set_logical_device_configuration(
            cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(count)])
    except RuntimeError:
        pass  # already started: fine if it was started with this split
    logical = tf.config.list_logical_devices("CPU")
    if len(logical) != count:
        raise ConfigError(
            f"train.cpu_devices: {count} logical CPU devices must be set before TensorFlow "
            f"starts, but it already runs with {len(logical)}; start training in a fresh "
            "process (python -m tfnegseq.train)")
    return logical


def _setup_tensorflow(cfg: Config) -> Plan:
    import tensorflow as tf

    tc = cfg.train
    if tc.cpu_devices:
        cpus = _logical_cpus(tc.cpu_devices)
    if tc.distribution == "none":
        return Plan()
    gpus = tf.config.list_logical_devices("GPU")
    if tc.cpu_devices or not gpus:
        devices = [d.name for d in cpus] if tc.cpu_devices else ["/cpu:0"]
    else:
        devices = [d.name for d in gpus]
    strategy = tf.distribute.MirroredStrategy(devices)
    return Plan(name=tc.distribution, replicas=strategy.num_replicas_in_sync,
                strategy=strategy, devices=tuple(devices))


# ---------------------------------------------------------------------- JAX
def _setup_jax(cfg: Config) -> Plan:
    tc = cfg.train
    if tc.cpu_devices:
        _force_host_devices(tc.cpu_devices)
    if tc.distribution == "none":
        return Plan()
    import jax
    import keras

    num_processes = int(os.environ.get("KERAS_DISTRIBUTION_NUM_PROCESSES", "1") or 1)
    if num_processes > 1:
        _start_processes(num_processes)
    devices = jax.devices()
    if tc.distribution == "data_parallel":
        distribution = keras.distribution.DataParallel(
            devices=devices, auto_shard_dataset=False)
        replicas = len(devices)
    else:
        shards = tc.model_shards
        if len(devices) % shards:
            raise ConfigError(
                f"train.model_shards: {shards} does not divide the {len(devices)} devices "
                "(the mesh is devices / model_shards by model_shards)")
        mesh = keras.distribution.DeviceMesh(
            (len(devices) // shards, shards), ["batch", "model"], devices)
        layout_map = keras.distribution.LayoutMap(mesh)
        layout_map[ITEM_TABLE_PATTERN] = ("model", None)  # rows over "model"
        distribution = keras.distribution.ModelParallel(
            layout_map=layout_map, batch_dim_name="batch", auto_shard_dataset=False)
        replicas = len(devices) // shards
    keras.distribution.set_distribution(distribution)
    return Plan(name=tc.distribution, replicas=replicas, num_processes=jax.process_count(),
                process_id=jax.process_index(), devices=tuple(str(d) for d in devices))


_STARTED: list[int] = []  # jax.distributed starts once per process (run_seeds reuses it)
# Seconds a process waits for a dead peer's heartbeat, and at exit for the others, before
# it aborts (jax's defaults: 100 s and 300 s); a job scheduler then restarts the group.
HEARTBEAT_TIMEOUT_S = int(os.environ.get("TFNEGSEQ_HEARTBEAT_TIMEOUT", "30"))
SHUTDOWN_TIMEOUT_S = int(os.environ.get("TFNEGSEQ_SHUTDOWN_TIMEOUT", "300"))


def _start_processes(num_processes: int) -> None:
    """`jax.distributed.initialize` from Keras' KERAS_DISTRIBUTION_* variables (what
    `keras.distribution.initialize` reads), called directly for its timeouts. Must come
    before anything starts JAX's backend."""
    import jax

    if _STARTED:
        return
    addresses = os.environ.get("KERAS_DISTRIBUTION_JOB_ADDRESSES", "")
    process_id = os.environ.get("KERAS_DISTRIBUTION_PROCESS_ID", "")
    if not addresses or not process_id.isdigit():
        raise ConfigError(
            "train.distribution: KERAS_DISTRIBUTION_NUM_PROCESSES="
            f"{num_processes} needs KERAS_DISTRIBUTION_JOB_ADDRESSES (the coordinator's "
            "host:port first) and KERAS_DISTRIBUTION_PROCESS_ID (0.."
            f"{num_processes - 1}). Received: {addresses!r} and {process_id!r}")
    if int(process_id) >= num_processes:
        raise ConfigError(f"KERAS_DISTRIBUTION_PROCESS_ID: must be < {num_processes}. "
                          f"Received: {process_id}")
    # gloo: CPU collectives across processes (jax's default since 0.4.3x; said here
    # for older versions); a GPU uses NCCL whatever this says
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=addresses.split(",")[0].strip(),
        num_processes=num_processes, process_id=int(process_id),
        heartbeat_timeout_seconds=HEARTBEAT_TIMEOUT_S,
        shutdown_timeout_seconds=SHUTDOWN_TIMEOUT_S)
    _STARTED.append(num_processes)


def _force_host_devices(count: int) -> None:
    """`XLA_FLAGS=--xla_force_host_platform_device_count=count` before JAX starts."""
    import jax

    flag = f"--xla_force_host_platform_device_count={count}"
    flags = os.environ.get("XLA_FLAGS", "")
    if flag not in flags.split():
        os.environ["XLA_FLAGS"] = " ".join(
            [f for f in flags.split() if not f.startswith(
                "--xla_force_host_platform_device_count")] + [flag])
    cpus = jax.devices("cpu")
    if len(cpus) != count:
        raise ConfigError(
            f"train.cpu_devices: {count} host devices must be set before JAX starts, but "
            f"it already runs with {len(cpus)}; start training in a fresh process "
            "(python -m tfnegseq.train), or set XLA_FLAGS="
            f"--xla_force_host_platform_device_count={count}")


def check_vocabularies(plan: Plan, cfg: Config, vocab_sizes: dict[str, int]) -> None:
    """model_parallel splits the item table's rows evenly over `model_shards` devices.
    The CTR kinds pad the table to a multiple of it (`CtrModel(item_rows_multiple)`);
    other kinds, whose table is also their catalogue, are refused (naming the numbers)
    when the rows do not divide."""
    if plan.name != "model_parallel":
        return
    from tfnegseq import kinds

    if kinds.get_kind(cfg.model.kind).samples_task == "ctr":
        return
    rows = vocab_sizes.get("item_id")
    if rows is not None and rows % cfg.train.model_shards:
        raise ConfigError(
            f"train.model_shards: the item table's {rows} rows do not split evenly over "
            f"{cfg.train.model_shards} devices (jax shards a dimension in equal parts); "
            f"change vocab.oov_buckets by {-rows % cfg.train.model_shards} (or "
            "model_shards) so that they do")


def process_input(plan: Plan, cfg: Config, kind: Any, data_dir: str,
                  processor: Any) -> tuple[Any, int]:
    """One process's training input under multi-process data parallelism: its own files
    (`tfnegseq.data.input.input_shard`), batches of `batch_size / P`, repeated; and the
    steps per epoch, the same on every process (`train.steps_per_epoch`, else the
    split's examples / batch_size from the samples' manifest)."""
    from tfnegseq.data.input import input_shard, make_datasets, manifest_examples

    tc = cfg.train
    if tc.early_stopping_metric:
        raise ConfigError(
            "train.early_stopping_metric: not available with several processes yet "
            "(validation would have to run in step on every process); train a fixed "
            "number of epochs")
    if plan.name == "model_parallel":
        raise ConfigError(
            "train.distribution: model_parallel runs in one process (over its devices); "
            "for several processes use data_parallel")
    steps = tc.steps_per_epoch
    if not steps:
        examples = manifest_examples(data_dir, "train")
        if not examples:
            raise ConfigError(
                "train.steps_per_epoch: must be set with several processes when the "
                f"samples' manifest does not count the training examples ({data_dir})")
        steps = examples // tc.batch_size
    local = dataclasses.replace(cfg, train=dataclasses.replace(
        tc, batch_size=tc.batch_size // plan.num_processes))
    with input_shard(plan.process_id, plan.num_processes):
        train_ds, _ = (kind.make_datasets(local, data_dir, processor)
                       or make_datasets(local, data_dir, processor))
    return train_ds, steps


def backup_callback(plan: Plan, directory: str) -> Any:
    """`keras.callbacks.BackupAndRestore` into `directory`; with several processes, one
    directory per process (Keras' callback has no chief: each process saves its own
    copy). Both checkpoints are kept (`double_checkpoint`): a process killed while
    Keras rewrites the weights file in place (or one whose peer died mid-save) leaves a
    truncated file, and Keras then resumes from the previous epoch's copy. The backup
    is not deleted when `fit` returns (`delete_checkpoint=False`): `tfnegseq.train`
    removes it once the run's `metrics.json` is written, so a run killed while it scores
    the test split resumes after its last epoch instead of training again from 0."""
    import keras

    if not plan.multi_process:
        return keras.callbacks.BackupAndRestore(directory, double_checkpoint=True,
                                                delete_checkpoint=False)
    return keras.callbacks.BackupAndRestore(
        os.path.join(directory, f"process_{plan.process_id}"), double_checkpoint=True,
        delete_checkpoint=False)


def host_values(variables: list[Any]) -> list[Any]:
    """Variables' values as numpy on every process (gathered across processes where a
    variable is sharded over devices of other processes; every process must call it)."""
    import numpy as np

    out = []
    for v in variables:
        value = v.value
        if getattr(value, "is_fully_addressable", True):
            out.append(np.asarray(value))
        else:
            from jax.experimental import multihost_utils

            out.append(np.asarray(multihost_utils.process_allgather(value, tiled=True)))
    return out


def sharded_variables(model: Any) -> dict[str, str]:
    """`{variable path: partition spec}` of the variables split over devices (JAX), for
    the run's metrics.json: what model_parallel actually sharded."""
    out = {}
    for v in model.weights:
        spec = getattr(getattr(v.value, "sharding", None), "spec", None)
        if spec is not None and any(axis is not None for axis in spec):
            out[v.path] = str(tuple(spec))
    return out


def trained_state(model: Any) -> tuple[list[Any], list[Any]]:
    """The model's weights and its optimizer's state as numpy (gathered across
    processes where sharded: every process must call it), and no `keras.distribution`
    from here on (`end_distribution`)."""
    state = host_values(model.weights), host_values(model.optimizer.variables)
    end_distribution()
    return state


def local_copy(state: tuple[list[Any], list[Any]], build: Any) -> Any:
    """A plain model on this process's devices: `build()` (a built, compiled model of
    the same structure) given the `trained_state` weights and optimizer state (so the
    saved model resumes and reports its steps as the original)."""
    weights, optimizer_state = state
    copy = build()
    copy.set_weights(weights)
    copy.optimizer.build(copy.trainable_variables)
    for variable, value in zip(copy.optimizer.variables, optimizer_state, strict=True):
        variable.assign(value)
    return copy


def end_distribution() -> None:
    """No `keras.distribution` from here on in this process (JAX): what follows training
    (evaluation, saving) runs on the process's own devices."""
    import keras

    if keras.backend.backend() == "jax":
        keras.distribution.set_distribution(None)


def wait_for_all(name: str) -> None:
    """A barrier over every process (JAX multi-process): none goes on before all
    arrive."""
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(f"tfnegseq: {name}")
