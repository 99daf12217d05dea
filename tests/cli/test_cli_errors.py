"""Every ``normsearch`` command fails the same way: one ``error:`` line on stderr, exit status 2,
no traceback and no box, for a bad argument and for each expected failure (a missing or
unreachable database, a bad spec file, an unreachable server); and its help is whole."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import typer
from typer.testing import CliRunner

from cli.errors import one_line
from cli.main import app

# A narrow terminal: a message that rich wrapped would show up as several lines.
runner = CliRunner(env={"COLUMNS": "60"})
UNREACHABLE_SERVER = "http://127.0.0.1:9"  # the discard port: nothing listens there
UNREACHABLE_DATABASE = "postgresql+psycopg://nobody:secret@127.0.0.1:1/none"


def leaf_commands(group=None, path=()) -> list[tuple[str, ...]]:
    """Every command of the app, as the words that call it (``("token", "create")``)."""
    group = group or typer.main.get_command(app)
    found = []
    for name, command in sorted(group.commands.items()):
        if getattr(command, "commands", None):
            found += leaf_commands(command, (*path, name))
        else:
            found.append((*path, name))
    return found


def assert_one_error_line(result, *needles: str) -> str:
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert "Traceback" not in result.output and "╭" not in result.output, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    (line,) = lines
    assert line.startswith("error: "), line
    for needle in needles:
        assert needle in line, line
    return line


def test_the_app_has_the_commands_this_file_exercises():
    assert set(leaf_commands()) == {
        ("run",), ("demo",), ("schema",), ("serve",), ("worker",), ("up",), ("submit",),
        ("ls",), ("status",), ("cancel",), ("retry",), ("download",), ("db", "upgrade"),
        ("db", "current"), ("token", "create"), ("token", "list"), ("token", "revoke"),
    }  # fmt: skip


@pytest.mark.parametrize("command", leaf_commands(), ids=" ".join)
def test_a_bad_option_is_one_line_naming_the_help_and_exit_2(command):
    result = runner.invoke(app, [*command, "--no-such-option"])
    line = assert_one_error_line(result, "--no-such-option")
    assert f"{' '.join(command)} --help` shows the usage" in line


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["demo", "--epochs", "0"], "--epochs"),
        (["ls", "--limit", "0"], "--limit"),
        (["ls", "--status", "bogus"], "bogus"),
        (["token", "revoke", "abc", "--user", "u"], "token_id"),
        (["download", "abc"], "--out"),
        (["serve", "--port", "99999"], "--port"),
        (["worker", "--concurrency", "2", "--pool", "solo"], "solo pool"),
        (["demo", "--arch", "resnet999"], "unknown arch"),
    ],
    ids=lambda value: value if isinstance(value, str) else " ".join(value),
)
def test_a_bad_value_is_one_line_and_exit_2(args, needle):
    assert_one_error_line(runner.invoke(app, args), needle)


def test_a_bad_spec_file_is_one_line_per_problem_without_library_prefixes(tmp_path):
    missing = tmp_path / "missing.yaml"
    broken = tmp_path / "broken.yaml"
    broken.write_text("model: [\n")
    not_a_mapping = tmp_path / "list.yaml"
    not_a_mapping.write_text("- 1\n")
    invalid = tmp_path / "invalid.yaml"
    invalid.write_text(
        "model: {arch: resnet20}\ndataset: {kind: mnist1d, num_samples: 55}\n"  # not ×10
    )
    for command in (["run"], ["submit", "--token", "t"], ["up", "--submit"]):
        assert_one_error_line(runner.invoke(app, [*command, str(missing)]), "does not exist")
        line = assert_one_error_line(runner.invoke(app, [*command, str(broken)]), "line 2")
        assert "<unicode string>" not in line
        assert_one_error_line(runner.invoke(app, [*command, str(not_a_mapping)]), "mapping")
        line = assert_one_error_line(
            runner.invoke(app, [*command, str(invalid)]), f"{invalid}: dataset: mnist1d"
        )
        assert "Value error" not in line


def test_a_job_that_cannot_run_is_one_line_naming_its_reason(tmp_path):
    """``run``'s job failures (here a model over the size limit, refused before Ray starts) are
    the reason the service would record, not a traceback."""
    spec = tmp_path / "huge.yaml"
    spec.write_text(
        "model: {arch: mlp, kwargs: {hidden: [40000, 40000]}}\ndataset: {kind: digits}\n"
    )
    line = assert_one_error_line(
        runner.invoke(app, ["run", str(spec), "--out", str(tmp_path / "out")]), "too large"
    )
    assert "NORMSEARCH_MAX_MODEL_PARAMS" in line


@pytest.mark.parametrize(
    "args",
    [
        ["ls"],
        ["status", "abc"],
        ["cancel", "abc"],
        ["retry", "abc"],
        ["download", "abc", "--out", "dl"],
    ],
    ids=" ".join,
)
def test_an_unreachable_server_is_one_line_and_exit_2(args):
    result = runner.invoke(app, [*args, "--url", UNREACHABLE_SERVER, "--token", "t"])
    assert_one_error_line(result, "cannot reach", UNREACHABLE_SERVER, "NORMSEARCH_URL")
    none = runner.invoke(app, [*args, "--url", UNREACHABLE_SERVER], env={"NORMSEARCH_TOKEN": ""})
    assert_one_error_line(none, "no API token")


def test_submit_to_an_unreachable_server_is_one_line(tmp_path):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"model": {"arch": "resnet20"}, "dataset": {"kind": "digits"}}))
    result = runner.invoke(app, ["submit", str(spec), "--url", UNREACHABLE_SERVER, "--token", "t"])
    assert_one_error_line(result, "cannot reach")


def test_a_missing_or_unreachable_database_is_one_line_and_hides_the_password(tmp_path):
    missing = f"sqlite:///{tmp_path / 'none.db'}"
    for args in (["token", "create", "--user", "u"], ["token", "list", "--user", "u"]):
        assert_one_error_line(runner.invoke(app, [*args, "--url", missing]), "no database at")
        line = assert_one_error_line(
            runner.invoke(app, [*args, "--url", UNREACHABLE_DATABASE]), "cannot open"
        )
        assert "secret" not in line
        assert_one_error_line(runner.invoke(app, [*args, "--url", "bogus://x"]), "bogus")
    for args in (["db", "upgrade"], ["db", "current"]):
        line = assert_one_error_line(
            runner.invoke(app, [*args, "--url", UNREACHABLE_DATABASE]), "127.0.0.1:1"
        )
        assert "secret" not in line
        assert_one_error_line(runner.invoke(app, [*args, "--url", "bogus://x"]), "bogus")


def test_a_real_process_prints_the_same_one_line(tmp_path):
    """``python -m cli`` as a user runs it (no test runner between it and the terminal)."""
    env = {**os.environ, "COLUMNS": "40", "PYTHONPATH": os.getcwd()}
    done = subprocess.run(
        [sys.executable, "-m", "cli", "ls", "--limit", "0"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith("error: Invalid value for '--limit'")
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    helped = subprocess.run(
        [sys.executable, "-m", "cli", "--help"], capture_output=True, text=True, env=env
    )
    assert helped.returncode == 0 and "normsearch" in helped.stdout


def test_each_command_lists_its_whole_first_sentence():
    """The command list shows a docstring's whole first paragraph (typer kept its line breaks,
    which cut sentences in the middle)."""
    group = typer.main.get_command(app)
    help_text = runner.invoke(app, ["--help"], env={"COLUMNS": "200"}).output
    joined = one_line(help_text.replace("│", " "))
    for name, command in group.commands.items():
        first = one_line(command.help.split("\n\n")[0])
        assert command.short_help == first, name
        assert first in joined, name


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        ("NORMSEARCH_STORAGE_URI", "ftp://host/runs", "unknown scheme 'ftp://'"),
        ("NORMSEARCH_STORAGE_URI", "s3://KEY:s3cr3tvalue@bucket/p", "must not hold credentials"),
        ("NORMSEARCH_MAX_SEEDS", "many", "valid integer"),
    ],
)
def test_a_bad_setting_is_one_line_naming_the_variable(monkeypatch, variable, value, says):
    from service.settings import get_settings

    monkeypatch.setenv(variable, value)
    get_settings.cache_clear()
    try:
        spec = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "mlp_digits.yaml")
        result = runner.invoke(app, ["run", spec, "--out", "unused"])
    finally:
        get_settings.cache_clear()
    line = assert_one_error_line(result, f"error: invalid setting {variable}: ", says)
    assert "s3cr3tvalue" not in result.output and "Value error" not in line
