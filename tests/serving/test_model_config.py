"""`models.config` parsing (`tfnegseq.serving.model_config`): TF Serving's text-format
`ModelServerConfig`, read with protobuf's own parser; bad files fail with the file
name and what is wrong."""

from __future__ import annotations

import pathlib
import re

import pytest

from tfnegseq.serving.model_config import (
    ModelConfig,
    VersionPolicy,
    load_model_config,
    parse_model_config,
)

REPO = pathlib.Path(__file__).resolve().parents[2]
SHIPPED = REPO / "serving" / "models.config"


def test_shipped_models_config_parses_to_the_same_models() -> None:
    assert load_model_config(str(SHIPPED)) == [
        ModelConfig(
            "ctr",
            "/models/ctr",
            VersionPolicy("specific", versions=(1, 2)),
            {"stable": 1, "canary": 2},
        ),
        ModelConfig("sine", "/models/sine", VersionPolicy("latest", 1), {}),
        ModelConfig("cain", "/models/cain", VersionPolicy("latest", 1), {}),
    ]


def test_policies_and_the_field_forms_protobuf_text_format_allows() -> None:
    text = """
    # comments, `<>` messages, list values, separators and the fields the local server ignores
    model_config_list: {
      config: <
        name: 'a' base_path: "/m/a" model_platform: "tensorflow";
        model_version_policy { latest { num_versions: 3 } }
        logging_config { sampling_config { sampling_rate: 0.5 } }
      >,
      config { name: "b" base_path: "/m/b" model_version_policy { all {} } }
      config {
        name: "c" base_path: "/m/c"
        model_version_policy { specific { versions: [4, 2] } }
        version_labels [{ key: "x" value: 4 }, { key: "y" value: 2 }]
      }
      config { name: "d" base_path: "/m/d" model_version_policy { latest {} } }
    }
    """
    configs = {c.name: c for c in parse_model_config(text)}
    assert configs["a"].policy == VersionPolicy("latest", 3)
    assert configs["b"].policy == VersionPolicy("all")
    assert configs["c"].policy == VersionPolicy("specific", versions=(4, 2))
    assert configs["c"].version_labels == {"x": 4, "y": 2}
    assert configs["d"].policy == VersionPolicy("latest", 1)  # num_versions 0 -> 1, as TF Serving


BAD_FILES = [
    # id, text, what the message must say (a regex)
    (
        "unclosed_brace",
        'model_config_list { config { name: "a" base_path: "/a" }',
        r':\d+:\d+: Expected "}"',
    ),
    ("misspelt_field", 'model_config_list { config { nmae: "a" base_path: "/a" } }', r"nmae"),
    (
        "label_not_a_number",
        'model_config_list { config { name: "a" base_path: "/a" '
        'version_labels { key: "stable" value: "one" } } }',
        r"1:\d+.*value",
    ),
    (
        "negative_version_count",
        "model_config_list { config { name: 'a' base_path: '/a' "
        "model_version_policy { latest { num_versions: -1 } } } }",
        r"num_versions",
    ),  # fmt: skip
    ("no_base_path", 'model_config_list { config { name: "a" } }', r"base_path"),
    ("no_name", 'model_config_list { config { base_path: "/a" } }', r"name"),
    (
        "duplicate_names",
        'model_config_list { config { name: "a" base_path: "/a" } '
        'config { name: "a" base_path: "/b" } }',
        r"duplicate model name.*a",
    ),
    ("empty", "# nothing here\n", r"model_config_list"),
    ("top_level_config", 'config { name: "a" base_path: "/a" }', r"model_config_list"),
    ("not_text_proto", '{"model_config_list": []}', r"1:1"),
]


@pytest.mark.parametrize("text,message", [c[1:] for c in BAD_FILES], ids=[c[0] for c in BAD_FILES])
def test_bad_config_file_error_names_the_file_and_the_problem(
    tmp_path: pathlib.Path, text: str, message: str
) -> None:
    path = tmp_path / "bad_models.config"
    path.write_text(text + "\n")
    with pytest.raises(ValueError) as info:
        load_model_config(str(path))
    error = str(info.value)
    assert error.startswith(f"{path}:"), error
    assert re.search(message, error), error


def test_cli_reports_a_bad_config_file_and_exits_2(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tfnegseq.serving.server import main

    path = tmp_path / "models.config"
    path.write_text('model_config_list { config { nmae: "a" } }\n')
    with pytest.raises(SystemExit) as info:
        main(["--model_config_file", str(path)])
    assert info.value.code == 2
    error = capsys.readouterr().err
    assert str(path) in error and "nmae" in error


def test_missing_config_file_is_an_os_error_naming_it(tmp_path: pathlib.Path) -> None:
    with pytest.raises(OSError, match="nope.config"):
        load_model_config(str(tmp_path / "nope.config"))


def test_version_policies_select_and_parse_the_cli_form() -> None:
    assert VersionPolicy("latest", 2).select([1, 5, 3]) == {3, 5}
    assert VersionPolicy("all").select([1, 5]) == {1, 5}
    assert VersionPolicy.parse("specific:1,3").select([1, 2]) == {1}
    assert VersionPolicy.parse("latest:2") == VersionPolicy("latest", 2)
    with pytest.raises(ValueError, match="`model_version_policy` must be"):
        VersionPolicy.parse("newest")
