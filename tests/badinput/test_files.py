"""Hostile workflow and policy files: the loader (keel_router.workflow.loader / policy), `keel workflow
validate`, the router's workflow catalog and the router's start with a broken policy file.

Documents are generated from the real workflows and the default policy by replacing, deleting or adding
nodes (wrong types, hostile text, template syntax in inputs and conditions, nesting, huge values) and
written as YAML or JSON; raw texts add alias bombs, self-referencing aliases, deep flow nesting, huge
files, foreign tags, several documents, control characters, byte order marks, lone surrogates and bytes
that are not UTF-8. Every one is either valid or refused with `WorkflowError` whose problems each name the
file, the line (whenever the problem is inside the document) and the field; never another exception,
never a hang. Templates in a loaded workflow stay data until a run renders them.
"""

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from keel_router.catalog import WorkflowCatalog
from keel_router.workflow import Policy, WorkflowError, load_policy, load_policy_text, load_workflow, load_workflow_text
from keel_router.workflow.cli import app as workflow_cli
from keel_router.workflow.loader import MAX_DEPTH, MAX_FILE_BYTES, MAX_NODES
from tests.badinput.strategies import HOSTILE_FRAGMENTS, hostile_text, json_values
from tests.conftest import ROOT, TEST_WORKFLOWS

WORKFLOW_FILES = sorted([*(ROOT / "workflows").glob("*.yaml"), *TEST_WORKFLOWS.glob("*.yaml")])
WORKFLOWS = [yaml.safe_load(path.read_text()) for path in WORKFLOW_FILES]
POLICY = Policy().model_dump(mode="json")

#: Template syntax where the router reads expressions: step inputs, choice variables, waits.
TEMPLATES = st.sampled_from(
    [
        "${input}",
        "${input.__class__}",
        "${steps.a.__globals__}",
        "${ input.x | attr('y') }",
        "${",
        "$${x}",
        "${}",
        "${a..b}",
        "${input.x}${run.id}",
        "{{ 7*7 }}",
        "{% import os %}",
        "#{7*7}",
        "${" + "a." * 500 + "a}",
    ]
)
HOSTILE_VALUES: st.SearchStrategy[Any] = st.one_of(
    hostile_text,
    TEMPLATES,
    json_values,
    st.sampled_from([None, True, -1, 0, 2**64, 1e308, -1e-308, "", [], {}, [[[[[]]]]], {"": None}]),
    st.integers(1, 60).map(lambda depth: json.loads("[" * depth + "]" * depth)),
    st.integers(1, 50_000).map(lambda n: "x" * n),
).map(copy.deepcopy)  # a mutation may later change what it was given: never a shared constant


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(doc, dict):
        for key, value in doc.items():
            out += _paths(value, (*prefix, key))
    elif isinstance(doc, list):
        for index, value in enumerate(doc):
            out += _paths(value, (*prefix, index))
    return out


@st.composite
def mutated(draw: st.DrawFn, documents: list[Any]) -> Any:
    """A valid document with one to three of its nodes replaced, deleted or given a sibling."""
    doc = json.loads(json.dumps(draw(st.sampled_from(documents))))
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(_paths(doc)))
        if not path:
            doc = draw(HOSTILE_VALUES) if draw(st.booleans()) else doc
            continue
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        if not isinstance(parent, dict | list):
            continue
        action = draw(st.sampled_from(["replace", "replace", "delete", "add"]))
        if action == "replace":
            parent[path[-1]] = draw(HOSTILE_VALUES)
        elif action == "delete":
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[draw(st.one_of(hostile_text, st.sampled_from(["kind", "next", "<<", "retry", "end"])))] = draw(
                HOSTILE_VALUES
            )
        else:
            parent.append(draw(HOSTILE_VALUES))
    return doc


def as_text(doc: Any, form: str) -> str:
    if form == "json":
        return json.dumps(doc, ensure_ascii=False)
    return yaml.safe_dump(doc, allow_unicode=True, sort_keys=False, width=10_000)


def _bomb(levels: int, width: int) -> str:
    lines = ["a0: &a0 [x]"]
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [{', '.join(f'*a{i - 1}' for _ in range(width))}]")
    lines.append(f"name: *a{levels - 1}")
    return "\n".join(lines) + "\n"


RAW_TEXTS: list[tuple[str, str]] = [
    ("alias bomb", _bomb(10, 9)),
    ("wide alias bomb", _bomb(3, 400)),
    ("alias to itself", "name: &n [*n]\nsteps: []\n"),
    ("deep flow nesting", "name: w\nsteps: " + "[" * 10_000 + "]" * 10_000 + "\n"),
    (
        "deep block nesting",
        "".join(f"{'  ' * i}k{i}:\n" for i in range(MAX_DEPTH + 5)) + "  " * (MAX_DEPTH + 5) + "x\n",
    ),
    ("too many nodes", "name: w\nsteps: [" + ", ".join("1" for _ in range(MAX_NODES + 10)) + "]\n"),
    ("over the size limit", "name: w\ndescription: '" + "x" * (MAX_FILE_BYTES + 10) + "'\nsteps: []\n"),
    ("python tag", "name: !!python/object/apply:os.system ['true']\nsteps: []\n"),
    ("custom tag", "name: !Ref w\nsteps: []\n"),
    ("binary tag", "name: !!binary aGVsbG8=\nsteps: []\n"),
    ("two documents", "name: a\nsteps: []\n---\nname: b\nsteps: []\n"),
    ("empty", ""),
    ("only a comment", "# nothing\n"),
    ("scalar document", "just text\n"),
    ("list document", "- 1\n- 2\n"),
    ("NUL", "name: w\x00\nsteps: []\n"),
    ("control characters", "name: \x1b[2J\x07\nsteps: []\n"),
    ("byte order mark", "\ufeffname: w\nsteps: []\n"),
    ("lone surrogate", "name: w\ud800\nsteps: []\n"),
    ("tab indentation", "name: w\nsteps:\n\t- id: a\n"),
    ("duplicate keys", "name: a\nname: b\nsteps: []\n"),
    ("merge of a scalar", "base: &b 1\nname: w\nsteps:\n  - <<: *b\n"),
    ("huge integer", "name: w\nversion: " + "9" * 5000 + "\nsteps: []\n"),
    ("float overflow", "name: w\nversion: 1e999\nsteps: []\n"),
    ("unterminated quote", "name: 'w\nsteps: []\n"),
    ("template as step id", "name: w\nsteps:\n  - id: ${input}\n    kind: succeed\n"),
    (
        "template injection in a choice",
        "name: w\nsteps:\n  - id: c\n    kind: choice\n    choices:\n"
        "      - {variable: '{{ 7*7 }}', equals: 1, next: d}\n    default: d\n  - {id: d, kind: succeed}\n",
    ),
    (
        "template injection in an input",
        "name: w\nsteps:\n  - id: a\n    kind: tool\n    tool: demo.echo\n"
        "    input: {x: '${input.__class__.__init__}', y: '${'}\n    end: true\n",
    ),
    # Found by the suite: a quoted key once printed as several lines, forging `keel workflow validate` output.
    ("control characters in a key", '"bad\\nwf.yaml:1:1: ok\\x1b[31m\\u202e": 1\nname: w\nsteps: []\n'),
    ("very long key", "name: w\n" + "k" * 100_000 + ": 1\nsteps: []\n"),
    ("unicode everywhere", "name: " + json.dumps("".join(HOSTILE_FRAGMENTS)) + "\nsteps: []\n"),
]


def assert_refused_clearly(load: Any, text: str, file: str = "bad.yaml") -> None:
    """`load(text, file)` returns a model or raises WorkflowError with located problems, nothing else."""
    try:
        load(text, file)
    except WorkflowError as exc:
        assert exc.problems, "a WorkflowError without problems"
        for problem in exc.problems:
            assert problem.file == file, problem
            assert problem.field and problem.message, problem
            if problem.field not in ("<document>", "<directory>"):
                assert problem.line is not None, f"no line for a problem inside the document: {problem}"
            assert str(problem).startswith(f"{file}:"), problem
            assert "\n" not in str(problem), f"a problem is one line: {problem}"


@pytest.mark.parametrize(("why", "text"), RAW_TEXTS, ids=[why for why, _ in RAW_TEXTS])
def test_hostile_raw_texts_are_refused_with_located_problems(why: str, text: str) -> None:
    for load in (load_workflow_text, load_policy_text):
        with pytest.raises(WorkflowError):
            load(text, "bad.yaml")
        assert_refused_clearly(load, text)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=mutated(WORKFLOWS), form=st.sampled_from(["yaml", "json"]))
def test_mutated_workflows_load_or_are_refused_with_file_line_and_field(doc: Any, form: str) -> None:
    assert_refused_clearly(load_workflow_text, as_text(doc, form), "wf.yaml")


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=mutated([POLICY]), form=st.sampled_from(["yaml", "json"]))
def test_mutated_policies_load_or_are_refused_with_file_line_and_field(doc: Any, form: str) -> None:
    assert_refused_clearly(load_policy_text, as_text(doc, form), "policy.yaml")


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=2048))
def test_files_of_any_bytes_are_refused_or_loaded_from_disk(
    tmp_path_factory: pytest.TempPathFactory, data: bytes
) -> None:
    path = tmp_path_factory.mktemp("bytes") / "any.yaml"
    path.write_bytes(data)
    for load in (load_workflow, load_policy):
        try:
            load(path)
        except WorkflowError as exc:
            assert all(p.file == str(path) for p in exc.problems), exc


def test_templates_in_a_loaded_workflow_stay_data() -> None:
    text = (
        "name: w\nsteps:\n  - id: a\n    kind: tool\n    tool: demo.echo\n"
        "    input: {literal: '$${input} {{ 7*7 }} {% x %} #{1}', ref: '${input.x}'}\n    end: true\n"
    )
    step = load_workflow_text(text, "w.yaml").steps[0]
    assert step.input == {"literal": "$${input} {{ 7*7 }} {% x %} #{1}", "ref": "${input.x}"}  # type: ignore[union-attr]


def hostile_files(directory: Path) -> list[Path]:
    files = []
    for index, (_, text) in enumerate(RAW_TEXTS):
        path = directory / f"raw{index}.yaml"
        path.write_bytes(text.encode("utf-8", "surrogatepass"))
        files.append(path)
    (directory / "latin1.yaml").write_bytes("name: caf\xe9\nsteps: []\n".encode("latin-1"))
    files.append(directory / "latin1.yaml")
    return files


def test_keel_workflow_validate_prints_located_problems_for_every_hostile_file(tmp_path: Path) -> None:
    files = hostile_files(tmp_path)
    good = ROOT / "workflows" / "demo.yaml"
    result = CliRunner().invoke(workflow_cli, ["validate", str(good), *map(str, files)])
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert result.stdout.splitlines() == ["ok demo (3 steps)"]
    named = {line.split(":", 1)[0] for line in result.stderr.splitlines()}
    assert named == {str(path) for path in files}, result.stderr[:2000]


def test_the_keel_command_refuses_hostile_files_without_a_traceback(tmp_path: Path) -> None:
    files = [str(p) for p in hostile_files(tmp_path)[:6]]
    done = subprocess.run(
        [str(Path(sys.executable).parent / "keel"), "workflow", "validate", *files],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert {line.split(":", 1)[0] for line in done.stderr.splitlines()} == set(files), done.stderr[-3000:]


def test_the_router_catalog_skips_hostile_files_and_keeps_the_good_ones(tmp_path: Path) -> None:
    hostile_files(tmp_path)
    (tmp_path / "demo.yaml").write_text((ROOT / "workflows" / "demo.yaml").read_text())
    catalog = WorkflowCatalog(tmp_path)
    catalog.scan()
    assert catalog.names() == ["demo"]
    assert len(catalog.problems) == len(RAW_TEXTS) + 1


def test_the_router_refuses_to_start_with_a_hostile_policy_file_and_says_where(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("version: 1\nrequire_approval: {money: [finance]}\ncaps: &c {max_steps_per_run: *c}\n")
    env = {
        "KEEL_POLICY_FILE": str(policy),
        "KEEL_WORKFLOWS_DIR": str(ROOT / "workflows"),
        "KEEL_NATS_URL": "nats://127.0.0.1:1",  # never reached: the policy is read first
        "KEEL_DATA_DIR": str(tmp_path / "data"),
        "PATH": "",
    }
    done = subprocess.run(
        [sys.executable, "-m", "keel_router"], capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert f"{policy}:3:" in done.stderr and "refers to itself" in done.stderr, done.stderr[-3000:]
