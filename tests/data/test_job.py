"""The build-samples driver (`tfnegseq.data.job.main`): arguments, config errors, output."""

import pytest

from tests.helpers_data import write_rows
from tfnegseq.data import job


def write_config(tmp_path, text=None):
    write_rows(tmp_path / "log", [(1, 10, 1, 2.5), (1, 11, 2, 0.3), (2, 10, 3, 2.5)])
    path = tmp_path / "job.yaml"
    path.write_text(text if text is not None else (
        f"source: {{kind: kuairec, path: {tmp_path / 'log'}}}\n"
        "samples: {max_history: 5}\n"
        "model: {sequence_length: 10}\n"
        "split: {kind: user, valid_fraction: 0.0, test_fraction: 0.0}\n"
        f"output: {{dir: {tmp_path / 'out'}, shards: 1}}\n"))
    return str(path)


def one_error_line(capsys):
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert "Traceback" not in captured.err + captured.out
    return lines[0]


@pytest.mark.parametrize("extra", [
    ["--sett", "output.dir=X"],
    ["--sett=output.dir=X"],
    ["--runnr", "DataflowRunner"],
    ["--se", "output.dir=X"],  # no abbreviations: `--se` is not `--set`
    ["stray"],
])
def test_an_unknown_argument_is_refused_with_one_line(tmp_path, capsys, extra):
    """Neither a build-samples argument nor a Beam pipeline option: exit 2, one line
    naming it, and nothing is built."""
    config = write_config(tmp_path)
    assert job.main(["--config", config, *extra]) == 2
    line = one_error_line(capsys)
    assert extra[0] in line and "unknown argument" in line
    assert not (tmp_path / "out").exists()


def test_beam_options_are_passed_through():
    ours, beam_args = job.parse_args([
        "--config", "c.yaml", "--set", "a.b=1", "--runner", "DirectRunner",
        "--direct_num_workers=2", "--direct_running_mode", "multi_processing",
        "--experiments=x", "--experiments", "y", "--project", "p", "--temp_location=gs://t",
    ])
    assert ours.config == "c.yaml" and ours.overrides == ["a.b=1"]
    assert beam_args == ["--runner", "DirectRunner", "--direct_num_workers=2",
                         "--direct_running_mode", "multi_processing", "--experiments=x",
                         "--experiments", "y", "--project", "p", "--temp_location=gs://t"]


@pytest.mark.parametrize("text, sets, says", [
    (None, ["output.dirr=x"], "unknown key 'output.dirr'"),
    ("source: {kind: kuairec, path: /no/such/dir}\n", [], "source.path: directory not found"),
    ("source: [1\n", [], "not valid YAML"),
    ("samples: {max_history: x, min_core: -1}\nsplit: {kind: nope}\n", [], "samples.max_history"),
    ("", [], "the file is empty"),
    (None, ["samples.item_features=[genre]"], "'genre'"),
])
def test_every_config_error_is_one_line_naming_the_file(tmp_path, capsys, text, sets, says):
    config = write_config(tmp_path, text)
    argv = ["--config", config] + [a for s in sets for a in ("--set", s)]
    assert job.main(argv) == 2
    line = one_error_line(capsys)
    assert line.startswith(f"error: {config}: ") and says in line
    assert "config:" not in line.replace(f"{config}:", "")


def test_a_missing_config_file_is_one_line(tmp_path, capsys):
    assert job.main(["--config", str(tmp_path / "nope.yaml")]) == 2
    line = one_error_line(capsys)
    assert line == f"error: {tmp_path / 'nope.yaml'}: config file not found"


def test_missing_log_file_is_one_line(tmp_path, capsys):
    config = write_config(tmp_path)
    (tmp_path / "log" / "big_matrix.csv").unlink()
    assert job.main(["--config", config]) == 2
    line = one_error_line(capsys)
    assert line.startswith(f"error: {config}: source") and "big_matrix.csv" in line


def test_a_local_run_prints_its_counters(tmp_path, capsys):
    config = write_config(tmp_path)
    assert job.main(["--config", config]) == 0
    out = capsys.readouterr().out
    assert "samples written to" in out
    counters = dict(line.split() for line in out.splitlines() if line.startswith("  "))
    assert counters["events_read"] == "3" and counters["samples_train"] == "3"


def test_rules_that_overlap_on_the_data_are_one_line(tmp_path, capsys):
    """Rules matching an event as both positive and negative are found inside the
    pipeline; the CLI reports them in one line naming the config, without Beam's
    traceback."""
    config = write_config(tmp_path)
    with open(config, "a") as f:
        f.write('rules: {positive: ["watch_ratio >= 1.0"], negative: ["watch_ratio >= 2.0"]}\n')
    assert job.main(["--config", config]) == 2
    line = one_error_line(capsys)
    assert line.startswith(f"error: {config}: rules.positive")
    assert "both hold for 2 event(s)" in line and line.endswith("make the rules disjoint")
