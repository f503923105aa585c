"""Typed config: YAML loading, --set overrides, refusal of bad configs at load."""

import pytest
import yaml

from tfnegseq.config import (
    Condition,
    Config,
    ConfigError,
    config_from_dict,
    load_config,
    require_source,
)


def write(tmp_path, data, name="c.yaml"):
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data))
    return p


def test_defaults_live_in_the_dataclasses(tmp_path):
    cfg = load_config(write(tmp_path, {}))
    assert cfg == Config()
    assert cfg.samples.max_history == 100 and cfg.samples.before == "timestamp"


def test_shipped_configs_load():
    for name in ("configs/synthetic.yaml", "configs/movielens_100k.yaml"):
        cfg = load_config(name)
        assert cfg.model.embedding_dim == 64 and cfg.model.sequence_length == 100


def test_set_overrides_use_yaml_types(tmp_path):
    p = write(tmp_path, {"samples": {"max_history": 20}})
    cfg = load_config(p, ["samples.max_history=50", "split.kind=last_k", "split.k=2",
                          "model.positive_ratio=0.25", "train.jit_compile=false",
                          "samples.user_features=[age, gender]", "name=007"])
    assert cfg.samples.max_history == 50
    assert cfg.split.kind == "last_k" and cfg.split.k == 2
    assert cfg.model.positive_ratio == 0.25 and cfg.train.jit_compile is False
    assert cfg.samples.user_features == ["age", "gender"]
    assert cfg.name == "007"  # a string key keeps the literal text


@pytest.mark.parametrize("data, key", [
    ({"samples": {"max_hist": 5}}, "samples.max_hist"),
    ({"sampels": {}}, "sampels"),
    ({"model": {"tapf": {"x": 1}}}, "model.tapf"),
])
def test_unknown_keys_are_refused_with_file_and_key(tmp_path, data, key):
    p = write(tmp_path, data)
    with pytest.raises(ConfigError, match=key) as e:
        load_config(p)
    assert str(p) in str(e.value)


@pytest.mark.parametrize("data, key", [
    ({"samples": {"max_history": "many"}}, "samples.max_history"),
    ({"samples": {"max_history": 1.5}}, "samples.max_history"),
    ({"train": {"jit_compile": "yes"}}, "train.jit_compile"),
    ({"samples": {"before": "earlier"}}, "samples.before"),
    ({"samples": {"user_features": "age"}}, "samples.user_features"),
    ({"split": "temporal"}, "split"),
])
def test_wrong_types_are_refused(tmp_path, data, key):
    with pytest.raises(ConfigError, match=key):
        load_config(write(tmp_path, data))


@pytest.mark.parametrize("data, match", [
    ({"model": {"positive_ratio": 1.5}}, r"model.*positive_ratio.*\[0, 1\].*1.5"),
    ({"split": {"test_fraction": -0.1}}, r"split.*test_fraction"),
    ({"split": {"valid_fraction": 0.6, "test_fraction": 0.6}}, r"valid_fraction \+ test_fraction"),
    ({"samples": {"max_history": -1}}, r"samples.*max_history.*>= 0"),
    ({"samples": {"lifelong_length": -5}}, r"lifelong_length"),
    ({"train": {"learning_rate": 0}}, r"learning_rate"),
    ({"model": {"num_heads": 3}}, r"num_heads"),
    ({"rules": {"positive": ["watch_ratio >> 2"]}}, r"rules.positive\[0\].*cannot parse"),
    ({"split": {"valid_start": 5}}, r"both valid_start and test_start"),
])
def test_impossible_values_are_refused(tmp_path, data, match):
    with pytest.raises(ConfigError, match=match):
        load_config(write(tmp_path, data))


def test_set_errors_name_the_key(tmp_path):
    p = write(tmp_path, {})
    with pytest.raises(ConfigError, match="samples.nope"):
        load_config(p, ["samples.nope=1"])
    with pytest.raises(ConfigError, match="key.path=value"):
        load_config(p, ["samples.max_history"])
    with pytest.raises(ConfigError, match="samples.max_history"):
        load_config(p, ["samples.max_history=abc"])


def test_missing_input_path_is_refused(tmp_path):
    cfg = config_from_dict({"source": {"path": str(tmp_path / "absent")}})
    with pytest.raises(ConfigError, match="source.path.*absent"):
        require_source(cfg)
    with pytest.raises(ConfigError, match="source.path"):
        require_source(config_from_dict({}))
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "none.yaml")


def test_condition_parsing():
    c = Condition.parse("play_duration < 3000", "x")
    assert (c.column, c.op, c.value) == ("play_duration", "<", 3000.0)
    assert str(Condition.parse("watch_ratio>=2.0", "x")) == "watch_ratio >= 2"


def test_hash_depends_only_on_data_sections():
    a = config_from_dict({})
    assert a.hash() == config_from_dict({"model": {"backbone": "transformer"}}).hash()
    assert a.hash() != config_from_dict({"samples": {"max_history": 5}}).hash()
