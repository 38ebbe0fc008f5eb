"""`keel workflow validate` and `keel workflow list`."""

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner
from workflow_testkit import EXAMPLES

from keel_router.workflow.cli import app

runner = CliRunner()


def test_validate_prints_ok_for_each_valid_file() -> None:
    result = runner.invoke(app, ["validate", str(EXAMPLES / "refund.yaml"), str(EXAMPLES / "access_change.yaml")])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == ["ok refund (11 steps)", "ok access_change (10 steps)"]


def test_validate_prints_located_errors_and_exits_1(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: w\nsteps:\n  - id: a\n    kind: tool\n    tool: t\n    next: nowhere\n")
    result = runner.invoke(app, ["validate", str(EXAMPLES / "refund.yaml"), str(bad)])
    assert result.exit_code == 1
    assert result.stdout.splitlines() == ["ok refund (11 steps)"]
    assert result.stderr.splitlines() == [f"{bad}:6:5: steps[0].next: unknown step 'nowhere'"]


def test_list_reads_the_directory_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for f in EXAMPLES.glob("*.yaml"):
        shutil.copy(f, tmp_path / f.name)
    monkeypatch.setenv("KEEL_WORKFLOWS_DIR", str(tmp_path))
    result = runner.invoke(app, ["list"])
    assert result.exit_code == 0, result.output
    names = [line.split()[0] for line in result.stdout.splitlines()]
    assert names == ["access_change", "refund", "slack_to_ticket"]
    as_json = json.loads(runner.invoke(app, ["list", "--json", "--dir", str(tmp_path)]).stdout)
    assert [(r["name"], r["steps"]) for r in as_json] == [
        ("access_change", 10),
        ("refund", 11),
        ("slack_to_ticket", 6),
    ]
    assert all(len(r["digest"]) == 64 for r in as_json)


def test_list_defaults_to_workflows_in_the_current_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KEEL_WORKFLOWS_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "workflows").mkdir()
    result = runner.invoke(app, ["list"])
    assert result.exit_code == 0 and "no workflows in workflows" in result.stdout
    (tmp_path / "workflows" / "x.yaml").write_text("name: x\nsteps: []\n")
    result = runner.invoke(app, ["list"])
    assert result.exit_code == 1 and "x.yaml:2:1: steps:" in result.stderr
