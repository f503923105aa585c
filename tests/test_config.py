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
                          "model.positive_ratio=0.25", "model.sequence_length=60",
                          "train.jit_compile=false",
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
    assert a.hash() != config_from_dict({"samples": {"max_history": 5},
                                         "model": {"sequence_length": 10}}).hash()


def test_empty_config_file_is_refused(tmp_path):
    p = tmp_path / "empty.yaml"
    p.write_text("# nothing but a comment\n")
    with pytest.raises(ConfigError, match=r"empty\.yaml: the file is empty"):
        load_config(p)


def test_a_directory_is_not_a_config(tmp_path):
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path)


@pytest.mark.parametrize("rule", ["x >= 1.2.3", "x >= 1e", "x >= --1", "x >= ."])
def test_malformed_numbers_in_rules_are_refused_naming_the_key(tmp_path, rule):
    p = write(tmp_path, {"rules": {"negative": ["x < 1", rule]}})
    with pytest.raises(ConfigError, match=r"c\.yaml: rules\.negative\[1\].*cannot parse"):
        load_config(p)


@pytest.mark.parametrize("data, match", [
    # 0.5 * 100 = 50 positives, but the samples keep only 40 of each polarity
    ({"samples": {"max_history": 40}}, r"model.sequence_length.*positives \(50.*max_history=40"),
    # 0.2 -> 80 negatives
    ({"samples": {"max_history": 60}, "model": {"positive_ratio": 0.2}}, r"negatives \(80"),
])
def test_sequence_budget_is_checked_against_max_history_at_load(tmp_path, data, match):
    with pytest.raises(ConfigError, match=match):
        load_config(write(tmp_path, data))


def test_sequence_budget_within_max_history_loads(tmp_path):
    cfg = load_config(write(tmp_path, {"samples": {"max_history": 30},
                                       "model": {"sequence_length": 60, "positive_ratio": 0.5}}))
    assert cfg.model.sequence_length == 60


@pytest.mark.parametrize("data, match", [
    ({"model": {"kind": "sine"}}, r"c\.yaml: model\.kind: must be one of \['cain', 'ctr', 'sequential'\]. Received: 'sine'"),
    ({"model": {"backbone": "longer"}}, r"c\.yaml: model\.backbone: must be one of .*'din'.*'mixformer'. Received: 'longer'"),
    ({"model": {"backbone": "hyformer", "ns_tokens": 3, "num_queries": 3}},
     r"c\.yaml: model\.num_queries: num_queries \+ ns_tokens \(3 \+ 3\) must divide embedding_dim=64"),
    ({"model": {"backbone": "mixformer", "ns_tokens": 3}}, r"c\.yaml: model\.ns_tokens: must divide embedding_dim=64"),
    ({"model": {"ns_tokens": 0}}, r"model\.ns_tokens: must be >= 1"),
    ({"model": {"kind": "ctr", "sine_interests": 4}}, r"unknown key 'model\.sine_interests'"),
    ({"model": {"mlp_units": [8, 0]}}, r"model\.mlp_units: every entry must be >= 1"),
])
def test_model_section_is_a_tagged_union_checked_at_load(tmp_path, data, match):
    with pytest.raises(ConfigError, match=match):
        load_config(write(tmp_path, data))


def test_unknown_key_lists_the_known_keys_of_that_section(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, {"train": {"epoch": 3}}))
    assert "unknown key 'train.epoch'" in str(e.value) and "'epochs'" in str(e.value)


def test_set_of_a_model_key_uses_the_kind_section(tmp_path):
    cfg = load_config(write(tmp_path, {}), ["model.backbone=transformer"])
    assert cfg.model.backbone == "transformer"
    with pytest.raises(ConfigError, match="unknown key 'model.nope'"):
        load_config(write(tmp_path, {}), ["model.nope=1"])


def test_training_refuses_samples_of_another_task(tmp_path):
    """The Beam job may build sequential samples under any model section; training
    refuses a kind whose samples task differs, before reading data."""
    from tfnegseq.config import require_trainable

    cfg = load_config(write(tmp_path, {"samples": {"task": "sequential"}}))
    with pytest.raises(ConfigError, match=r"samples\.task: model\.kind 'ctr' trains on 'ctr'"):
        require_trainable(cfg, "c.yaml")


@pytest.mark.parametrize("text, match", [
    ("name: 2024-05-01\n", r"name: expected a string. Received: datetime.date"),
    ("split: {valid_start: 2020-07-10, test_start: 2020-08-01}\n", r"split.valid_start: expected an integer"),
    ("train: {learning_rate: .nan}\n", r"train.learning_rate: must be > 0"),
    ("train: {learning_rate: .inf}\n", r"train.learning_rate: must be > 0"),
    ("model: {attention_units: []}\n", r"model.attention_units: needs at least one layer"),
    ("model: {sequence_length: 1, positive_ratio: 0.5}\n", r"model.sequence_length: .* no slot"),
])
def test_values_that_used_to_crash_later_are_refused_at_load(tmp_path, text, match):
    """Each of these loaded (or crashed with a TypeError traceback) before: YAML dates,
    NaN/inf learning rates, DIN without layers, a sequence with no slot."""
    p = tmp_path / "c.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_config(p)


def test_model_hash_ignores_what_a_resume_may_change():
    base = config_from_dict({})
    for free in ({"train": {"eval_split": "valid"}}, {"train": {"jit_compile": False}},
                 {"train": {"epochs": 9}}, {"simulate": {"seed": 3}}, {"name": "x"}):
        assert config_from_dict(free).model_hash() == base.model_hash(), free
    for bound in ({"train": {"learning_rate": 0.01}}, {"model": {"embedding_dim": 32}},
                  {"train": {"batch_size": 64}}, {"samples": {"max_history": 200}}):
        assert config_from_dict(bound).model_hash() != base.model_hash(), bound


def test_exponent_floats_without_a_dot_are_numbers(tmp_path):
    """PyYAML (YAML 1.1) reads `1e-3` as a string; the loader reads it as YAML 1.2 does,
    in files and in --set overrides, and a quoted "1e-3" stays a string."""
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  learning_rate: 1e-3\nmodel:\n  positive_ratio: 5E-1\n")
    cfg = load_config(p, ["train.batch_size=64"])
    assert cfg.train.learning_rate == 0.001 and cfg.model.positive_ratio == 0.5
    assert load_config(p, ["train.learning_rate=2.5e-4"]).train.learning_rate == 0.00025
    with pytest.raises(ConfigError, match="learning_rate: expected a number"):
        load_config(p, ['train.learning_rate="1e-3"'])
