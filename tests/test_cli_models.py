"""`tailor pull | import | list | show | rm` through the real command line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import tailorlm.cli.models  # noqa: F401  (registers the verbs on `app`)
from tailorlm.cli import app
from tests.tiny import make_tiny_model


def tailor(*args: str) -> subprocess.CompletedProcess[str]:
    """Run `tailor ARGS` as the console script does (`tailorlm.cli:main`), in a fresh process."""
    return subprocess.run(
        [sys.executable, "-c", "from tailorlm.cli import main; main()", *args],
        capture_output=True, text=True, timeout=120,
    )


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def test_import_list_show_rm(tmp_path: Path, runner: CliRunner) -> None:
    src = make_tiny_model("llama", tmp_path / "src")
    done = tailor("import", str(src), "--name", "tiny")
    assert done.returncode == 0, done.stderr
    assert "imported tiny" in done.stderr

    listed = runner.invoke(app, ["list"])
    assert listed.exit_code == 0
    row = next(line for line in listed.stdout.splitlines() if line.strip().startswith("tiny"))
    assert "LlamaForCausalLM" in row and "115.0K" in row and "256" in row and "float32" in row
    assert [m["name"] for m in json.loads(runner.invoke(app, ["list", "--json"]).stdout)] == ["tiny"]

    shown = runner.invoke(app, ["show", "tiny", "--json"])
    manifest = json.loads(shown.stdout)
    assert manifest["parameters"] == 115_008 and "model.safetensors" in manifest["files"]
    table = runner.invoke(app, ["show", "tiny"]).stdout
    assert manifest["files"]["model.safetensors"]["sha256"] in table  # full digest, not cut

    assert runner.invoke(app, ["rm", "tiny"]).exit_code == 0
    assert json.loads(runner.invoke(app, ["list", "--json"]).stdout) == []


def test_import_twice_needs_force(tmp_path: Path, runner: CliRunner) -> None:
    src = make_tiny_model("llama", tmp_path / "src")
    assert runner.invoke(app, ["import", str(src), "--name", "tiny"]).exit_code == 0
    again = runner.invoke(app, ["import", str(src), "--name", "tiny"])
    assert again.exit_code != 0 and "--force" in again.exception.message
    assert runner.invoke(app, ["import", str(src), "--name", "tiny", "--force"]).exit_code == 0


@pytest.mark.parametrize(
    "args, expected",
    [
        (["show", "no-such-model"], "error: model no-such-model is not in the store"),
        (["rm", "../etc"], "error: invalid model name"),
    ],
)
def test_errors_are_one_line(args: list[str], expected: str) -> None:
    done = tailor(*args)
    assert done.returncode != 0
    assert done.stderr.startswith(expected)
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
    assert done.stdout == ""
