"""Row-sparse (lazy Adam) embedding updates under the JAX backend (`tfnegseq/jax_sparse.py`).

Keras fixes its backend at import time, so the JAX checks (`check_*` below) run in one
subprocess with `KERAS_BACKEND=jax` and TensorFlow hidden (the GPU machine has none);
it records each check's outcome and every test asserts its own. References are numpy,
written from the update rule (lazy Adam for the tables, Adam for everything else) on
gradients from `jax.grad` of the model's loss, and Keras' dense Adam on the same model.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import subprocess
import sys
import textwrap
import time
import traceback

import keras
import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
LR, B1, B2, EPS = 0.05, 0.9, 0.999, 1e-7
H = 6  # history length; the model's sequence takes all of it (L = 2H, r = 0.5)


def numpy_adam_step(w, m, v, g, t, rows=None):
    """One Adam step at global step `t` in float64; with `rows`, only those rows change
    (lazy Adam). `g` is the dense gradient (repeats summed)."""
    w, m, v, g = (np.array(a, np.float64) for a in (w, m, v, g))
    at = slice(None) if rows is None else rows
    alpha = LR * np.sqrt(1 - B2**t) / (1 - B1**t)
    m[at] = B1 * m[at] + (1 - B1) * g[at]
    v[at] = B2 * v[at] + (1 - B2) * g[at] ** 2
    w[at] -= alpha * m[at] / (np.sqrt(v[at]) + EPS)
    return w, m, v


def assert_adam_close(actual, expected):
    """Weights, first and second moments (float32 against float64). The weights' atol
    1e-5 is 1/5000 of an Adam step here (LR 0.05): the step's gradient and this check's
    are two float32 computations, and where sqrt(v) is near EPS the step amplifies their
    rounding (2.3e-6 seen once in CI against the former 1e-6)."""
    for a, e, atol in zip(actual, expected, (1e-5, 1e-7, 1e-9), strict=True):
        np.testing.assert_allclose(np.asarray(a), e, rtol=1e-4, atol=atol)


# ---------------------------------------------------------------- checks (JAX backend)


def check_sparse_update(vocab):
    """`_sparse_update` under `jax.jit`, three steps with repeated ids, against numpy lazy
    Adam; the table has more rows than the 8 slices (scatter path, vocab 40) or not
    (masked path, vocab 6). Rows never named stay bit-identical, moments zero."""
    import jax

    from tfnegseq.jax_sparse import _sparse_update

    rng = np.random.default_rng(1)
    dim = 3
    w = rng.normal(size=(vocab, dim)).astype("float32")
    m, v = np.zeros_like(w), np.zeros_like(w)
    w0 = w.copy()
    steps = [np.array([1, 4, 4, 0, 1, 1, 5, 3]), np.array([2, 2, 2, 5, 1, 0, 0, 3]),
             np.array([4, 3, 3, 3, 3, 2, 1, 1])]
    update = jax.jit(_sparse_update, static_argnums=(6, 7, 8))
    named = set()
    for t, ids in enumerate(steps, start=1):
        ids = (ids % vocab).astype("int32")
        slot_grads = rng.normal(size=(len(ids), dim)).astype("float32")
        g = np.zeros((vocab, dim))
        np.add.at(g, ids, slot_grads)  # repeats summed
        expected = numpy_adam_step(w, m, v, g, t, rows=np.unique(ids))
        alpha = np.float32(LR * np.sqrt(1 - B2**t) / (1 - B1**t))
        w, m, v = (np.asarray(a) for a in update(w, m, v, ids, slot_grads, alpha, B1, B2, EPS))
        assert_adam_close((w, m, v), expected)
        named |= set(ids.tolist())
        never = sorted(set(range(vocab)) - named)
        np.testing.assert_array_equal(w[never], w0[never])
        assert not m[never].any() and not v[never].any()


def check_stateless_apply_skips_none_gradients():
    """What `train_step` relies on: Keras' `stateless_apply` with a None gradient returns
    that variable, its `m` and its `v` as given (the sparse update sets them), updates
    the others by Adam and advances `iterations` by exactly one."""
    from tfnegseq.optimizers import RowSparseAdam

    rng = np.random.default_rng(2)
    table = keras.Variable(rng.normal(size=(5, 3)).astype("float32"))
    kernel = keras.Variable(rng.normal(size=(3, 2)).astype("float32"))
    optimizer = RowSparseAdam(LR, beta_1=B1, beta_2=B2, epsilon=EPS)
    optimizer.build([table, kernel])
    opt_values = [rng.random(v.shape).astype(v.dtype) if v.dtype == "float32"
                  and len(v.shape) == 2 else np.asarray(v.value) for v in optimizer.variables]
    opt_values[optimizer.variables.index(optimizer.iterations)] = np.asarray(3, "int64")
    g = rng.normal(size=(3, 2)).astype("float32")
    new_vars, new_opt = optimizer.stateless_apply(opt_values, [None, g],
                                                  [table.value, kernel.value])
    at = {id(v): i for i, v in enumerate(optimizer.variables)}
    m_at, v_at = (at[id(s[0])] for s in (optimizer._momentums, optimizer._velocities))
    np.testing.assert_array_equal(np.asarray(new_vars[0]), np.asarray(table.value))
    np.testing.assert_array_equal(np.asarray(new_opt[m_at]), opt_values[m_at])
    np.testing.assert_array_equal(np.asarray(new_opt[v_at]), opt_values[v_at])
    k_m, k_v = (at[id(s[1])] for s in (optimizer._momentums, optimizer._velocities))
    expected = numpy_adam_step(kernel.value, opt_values[k_m], opt_values[k_v], g, 4)
    assert_adam_close((new_vars[1], new_opt[k_m], new_opt[k_v]), expected)
    assert int(new_opt[at[id(optimizer.iterations)]]) == 4


def _ctr_model(items, row_sparse, optimizer, **compile_kwargs):
    from tfnegseq.kinds.ctr.config import CtrModelConfig as ModelConfig
    from tfnegseq.models.ctr import CtrModel

    config = dataclasses.asdict(ModelConfig(
        polarity="tapf", sequence_length=2 * H, positive_ratio=0.5, embedding_dim=8,
        mlp_units=[8], attention_units=[8]))
    model = CtrModel({"item_id": items, "user_id": 5, "user_f": 3}, config,
                     side_features=["user_f"], row_sparse_gradients=row_sparse)
    model.compile(optimizer=optimizer,
                  **compile_kwargs)
    return model


def _ctr_batch(rng, n, lo, hi):
    """Full histories (no padding): the model looks up exactly these item ids."""
    x = {"user_id": rng.integers(1, 5, n), "item_id": rng.integers(lo, hi, n),
         "user_f": rng.integers(0, 3, n)}
    for side, first in (("pos", 1), ("neg", 2)):  # interleaved: pos 1, 3, ..; neg 2, 4, ..
        x[f"{side}_item_id"] = rng.integers(lo, hi, (n, H))
        x[f"{side}_order"] = np.tile(np.arange(first, 2 * H + 1, 2), (n, 1))
    return x, rng.integers(0, 2, n).astype("float32")


def _used_rows(x):
    items = np.concatenate([x["item_id"], x["pos_item_id"].ravel(), x["neg_item_id"].ravel()])
    return {"item_embedding": np.unique(items), "user_embedding": np.unique(x["user_id"]),
            "emb_user_f": np.unique(x["user_f"])}


def _gradients(model, x, y):
    """d loss / d trainable variables (dense, float64) at the model's current weights."""
    import jax

    values = [[v.value for v in vs] for vs in (model.trainable_variables,
                                                  model.non_trainable_variables,
                                                  model.metrics_variables,
                                                  model.optimizer.variables)]

    def loss(trainable):
        return model.compute_loss_and_updates(trainable, values[1], values[2], x, y, None,
                                              training=True, optimizer_variables=values[3])[0]

    return [np.asarray(g, np.float64) for g in jax.grad(loss)(values[0])]


def _adam_state(model):
    opt = model.optimizer
    return [(np.asarray(var.value), np.asarray(opt._momentums[opt._get_variable_index(var)]),
             np.asarray(opt._velocities[opt._get_variable_index(var)]))
            for var in model.trainable_variables]


def check_ctr_training(items):
    """`CtrModel(row_sparse_gradients=True)` + RowSparseAdam, three jitted
    `train_on_batch` steps (x1: items [1, a), x2: [b, V), x3: [1, a); a < b):

    - every step equals numpy: lazy Adam on the rows the batch looked up for the item,
      user and side tables, plain Adam for every other variable (position embedding
      included), on `jax.grad` of the model's loss;
    - step 1 equals Keras' dense Adam on the default model from the same weights;
    - step 2: rows used in step 1 only stay where they were, dense Adam moves them;
    - rows never looked up (0 and [a, b)) are bit-identical to their start, moments 0;
    - `iterations` counts the steps.
    items 300: 104 item slices a batch < 300 rows (scatter path); items 40: masked path.
    """
    from tfnegseq.optimizers import RowSparseAdam

    a, b = (100, 150) if items == 300 else (16, 20)
    rng = np.random.default_rng(items)
    batches = [_ctr_batch(rng, 8, 1, a), _ctr_batch(rng, 8, b, items), _ctr_batch(rng, 8, 1, a)]
    sparse = _ctr_model(items, True, RowSparseAdam(LR, beta_1=B1, beta_2=B2, epsilon=EPS))
    dense = _ctr_model(items, False, keras.optimizers.Adam(LR, beta_1=B1, beta_2=B2,
                                                           epsilon=EPS))
    sparse(batches[0][0])
    dense(batches[0][0])
    dense.set_weights(sparse.get_weights())
    names = [var.path.split("/")[-2] for var in sparse.trainable_variables]
    tables = {i: n for i, n in enumerate(names) if n in ("item_embedding", "user_embedding",
                                                        "emb_user_f")}
    assert len(tables) == 3, names
    start = [np.asarray(var.value) for var in sparse.trainable_variables]
    named = {n: set() for n in tables.values()}
    for t, (x, y) in enumerate(batches, start=1):
        sparse.optimizer.build(sparse.trainable_variables)  # moments exist before step 1
        before = _adam_state(sparse)
        grads = _gradients(sparse, x, y)
        used = _used_rows(x)
        sparse_loss = sparse.train_on_batch(x, y)
        dense_loss = dense.train_on_batch(x, y)
        after = _adam_state(sparse)
        for i, ((w, m, v), g) in enumerate(zip(before, grads, strict=True)):
            rows = used[tables[i]] if i in tables else None
            assert_adam_close(after[i], numpy_adam_step(w, m, v, g, t, rows=rows))
        for i, name in tables.items():
            named[name] |= set(used[name].tolist())
            never = sorted(set(range(start[i].shape[0])) - named[name])
            np.testing.assert_array_equal(after[i][0][never], start[i][never])
            assert not after[i][1][never].any() and not after[i][2][never].any()
        assert int(sparse.optimizer.iterations) == t
        if t == 1:  # from zero moments lazy Adam is dense Adam, every variable
            np.testing.assert_allclose(sparse_loss, dense_loss, rtol=1e-6)
            for s, d in zip(sparse.get_weights(), dense.get_weights(), strict=True):
                np.testing.assert_allclose(s, d, rtol=1e-5, atol=1e-7)
            step1 = [w for w, _, _ in after]
        if t == 2:
            item = names.index("item_embedding")
            only1 = np.setdiff1d(_used_rows(batches[0][0])["item_embedding"],
                                 used["item_embedding"])
            assert len(only1) > 5
            np.testing.assert_array_equal(after[item][0][only1], step1[item][only1])
            moved = np.asarray(dense.item_embedding.embeddings)[only1] - step1[item][only1]
            assert np.abs(moved).max() > 1e-3  # dense Adam: moved by its momentum


def check_fit_steps_per_execution():
    """`fit` (model variables purged during the epoch) with `steps_per_execution=2` equals
    two `train_on_batch` steps from the same weights; `iterations` is 2 and the epoch's
    loss is the mean of the two steps'. (An eager `run_eagerly=True` model gives the same
    too, to float rounding; left out of the test for its 15 s first step.)"""
    from tfnegseq.optimizers import RowSparseAdam

    rng = np.random.default_rng(7)
    (x1, y1), (x2, y2) = _ctr_batch(rng, 8, 1, 100), _ctr_batch(rng, 8, 150, 300)
    x = {k: np.concatenate([x1[k], x2[k]]) for k in x1}
    fitted = _ctr_model(300, True, RowSparseAdam(LR), steps_per_execution=2)
    stepped = _ctr_model(300, True, RowSparseAdam(LR))
    fitted(x1)
    stepped(x1)
    stepped.set_weights(fitted.get_weights())
    history = fitted.fit(x, np.concatenate([y1, y2]), batch_size=8, epochs=1, shuffle=False,
                         verbose=0)
    losses = [stepped.train_on_batch(x1, y1), stepped.train_on_batch(x2, y2)]
    np.testing.assert_allclose(history.history["loss"][0], np.mean(losses), rtol=1e-5)
    assert int(fitted.optimizer.iterations) == int(stepped.optimizer.iterations) == 2
    for f, s in zip(fitted.get_weights(), stepped.get_weights(), strict=True):
        np.testing.assert_allclose(f, s, rtol=1e-5, atol=1e-7)


def check_training_refuses_clipnorm():
    """The refusal reaches the user from `train_on_batch` (raised while tracing)."""
    from tfnegseq.optimizers import RowSparseAdam

    x, y = _ctr_batch(np.random.default_rng(0), 4, 1, 50)
    model = _ctr_model(50, True, RowSparseAdam(LR, clipnorm=1.0))
    try:
        model.train_on_batch(x, y)
    except ValueError as error:
        assert "clipnorm" in str(error), error
    else:
        raise AssertionError("clipnorm was not refused")


def check_mixed_bfloat16():
    """Under mixed_bfloat16 the step runs, the table stays float32, the rows the batch
    looked up move and the others stay bit-identical."""
    from tfnegseq.optimizers import RowSparseAdam

    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        x, y = _ctr_batch(np.random.default_rng(3), 8, 1, 100)
        model = _ctr_model(300, True, RowSparseAdam(LR))
        model(x)
        table0 = np.asarray(model.item_embedding.embeddings)
        assert np.isfinite(model.train_on_batch(x, y))
        table1 = np.asarray(model.item_embedding.embeddings)
        assert table1.dtype == np.float32
        unused = np.setdiff1d(np.arange(300), _used_rows(x)["item_embedding"])
        np.testing.assert_array_equal(table1[unused], table0[unused])
        assert np.abs(table1 - table0).max() > 1e-3
    finally:
        keras.mixed_precision.set_global_policy("float32")


CHECKS = {
    "stateless_apply_skips_none": check_stateless_apply_skips_none_gradients,
    "sparse_update_scatter": lambda: check_sparse_update(40),
    "sparse_update_masked": lambda: check_sparse_update(6),
    "ctr_training_scatter": lambda: check_ctr_training(300),
    "ctr_training_masked": lambda: check_ctr_training(40),
    "fit_steps_per_execution": check_fit_steps_per_execution,
    "training_refuses_clipnorm": check_training_refuses_clipnorm,
    "mixed_bfloat16": check_mixed_bfloat16,
}


def run_checks(path):
    """Run every check under the current backend; write {name: "ok" | traceback}."""
    assert keras.backend.backend() == "jax", keras.backend.backend()
    results = {}
    for name, check in CHECKS.items():
        start = time.perf_counter()
        try:
            check()
            results[name] = "ok"
        except Exception:  # reported by the test of that name
            results[name] = traceback.format_exc()
        print(f"{name}: {time.perf_counter() - start:.1f} s")
    results["tensorflow_imported"] = "tensorflow" in sys.modules
    pathlib.Path(path).write_text(json.dumps(results))


# ------------------------------------------------------------------------------ tests

RUNNER = textwrap.dedent(
    """
    import sys

    class NoTensorFlow:  # the GPU machine has no TensorFlow: importing it must not matter
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "tensorflow":
                raise ModuleNotFoundError(f"No module named {name!r} (hidden by the test)")
            return None

    sys.meta_path.insert(0, NoTensorFlow())
    from tests import test_jax_sparse

    test_jax_sparse.run_checks(sys.argv[1])
    """
)


@pytest.fixture(scope="module")
def jax_results(tmp_path_factory):
    path = tmp_path_factory.mktemp("jax_sparse") / "results.json"
    env = dict(os.environ)
    env.update({
        "KERAS_BACKEND": "jax",
        "JAX_PLATFORMS": "cpu",
        "CUDA_VISIBLE_DEVICES": "",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])),
    })
    result = subprocess.run([sys.executable, "-c", RUNNER, str(path)], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return json.loads(path.read_text())


@pytest.mark.parametrize("name", [n for n in CHECKS if n.startswith("sparse_update")])
def test_sparse_update_is_lazy_adam(jax_results, name):
    """Scatter path (table larger than the slices) and masked path vs numpy lazy Adam."""
    assert jax_results[name] == "ok", jax_results[name]


@pytest.mark.parametrize("name", ["ctr_training_scatter", "ctr_training_masked"])
def test_ctr_model_row_sparse_training_under_jax(jax_results, name):
    """Three jitted steps: numpy lazy/dense Adam per variable, Keras dense Adam on step 1,
    lazy (not dense) on step 2, untouched rows bit-identical, `iterations` counts."""
    assert jax_results[name] == "ok", jax_results[name]


def test_stateless_apply_leaves_none_gradient_variables_and_moments(jax_results):
    assert jax_results["stateless_apply_skips_none"] == "ok", jax_results[
        "stateless_apply_skips_none"]


def test_fit_with_steps_per_execution_equals_train_on_batch_steps(jax_results):
    assert jax_results["fit_steps_per_execution"] == "ok", jax_results["fit_steps_per_execution"]


def test_mixed_bfloat16_keeps_float32_tables(jax_results):
    assert jax_results["mixed_bfloat16"] == "ok", jax_results["mixed_bfloat16"]


def test_training_refuses_clipnorm_and_needs_no_tensorflow(jax_results):
    assert jax_results["training_refuses_clipnorm"] == "ok", jax_results[
        "training_refuses_clipnorm"]
    assert jax_results["tensorflow_imported"] is False


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: keras.optimizers.Adam(amsgrad=True), "amsgrad"),
        (lambda: keras.optimizers.Adam(weight_decay=0.01), "weight_decay"),
        (lambda: keras.optimizers.Adam(clipnorm=1.0), "clipnorm"),
        (lambda: keras.optimizers.Adam(global_clipnorm=1.0), "global_clipnorm"),
        (lambda: keras.optimizers.Adam(use_ema=True), "EMA"),
        (lambda: keras.optimizers.Adam(gradient_accumulation_steps=2),
         "gradient_accumulation_steps"),
        (lambda: keras.optimizers.SGD(), "need RowSparseAdam"),
    ],
    ids=["amsgrad", "weight_decay", "clipnorm", "global_clipnorm", "ema", "accumulation",
         "sgd"],
)
def test_check_optimizer_refuses_updates_it_cannot_make_lazy(make, match):
    from tfnegseq.jax_sparse import check_optimizer

    with pytest.raises(ValueError, match=match):
        check_optimizer(make())


def test_check_optimizer_accepts_row_sparse_adam_and_plain_adam():
    from tfnegseq.jax_sparse import check_optimizer
    from tfnegseq.optimizers import RowSparseAdam

    check_optimizer(RowSparseAdam(1e-3))
    check_optimizer(keras.optimizers.Adam(1e-3))
