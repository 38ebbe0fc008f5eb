"""`keel workflow validate FILE...` and `keel workflow list` (mounted by the keel CLI as `workflow`)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer

from .errors import WorkflowError
from .loader import load_workflow, load_workflows

app = typer.Typer(help="Validate and list workflow files.", no_args_is_help=True)

DEFAULT_DIR_ENV = "KEEL_WORKFLOWS_DIR"


def default_dir() -> Path:
    return Path(os.environ.get(DEFAULT_DIR_ENV) or "workflows")


@app.command()
def validate(
    files: Annotated[list[Path], typer.Argument(help="Workflow YAML files", show_default=False)],
) -> None:
    """Check workflow files: prints `ok NAME (N steps)` per valid file, located errors otherwise."""
    failed = False
    for path in files:
        try:
            workflow = load_workflow(path)
        except WorkflowError as exc:
            failed = True
            for problem in exc.problems:
                typer.echo(str(problem), err=True)
            continue
        typer.echo(f"ok {workflow.name} ({len(workflow.steps)} steps)")
    if failed:
        raise typer.Exit(1)


@app.command("list")
def list_workflows(
    directory: Annotated[
        Path | None,
        typer.Option("--dir", help=f"Directory of workflow files (default ${DEFAULT_DIR_ENV} or ./workflows)"),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
) -> None:
    """List the workflows in a directory (every file must be valid)."""
    directory = directory or default_dir()
    try:
        workflows = load_workflows(directory)
    except WorkflowError as exc:
        for problem in exc.problems:
            typer.echo(str(problem), err=True)
        raise typer.Exit(1) from None
    ordered = sorted(workflows.values(), key=lambda w: w.name)
    rows = [
        {
            "name": wf.name,
            "version": wf.version,
            "steps": len(wf.steps),
            "file": str(wf.source) if wf.source else None,
            "description": next(iter((wf.description or "").strip().splitlines()), ""),
            "digest": wf.digest(),
        }
        for wf in ordered
    ]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        typer.echo(f"no workflows in {directory}")
        return
    width = max(len(wf.name) for wf in ordered)
    for r in rows:
        line = f"{r['name']:<{width}}  v{r['version']:<3} {r['steps']:>3} steps  {r['file']}"
        typer.echo(f"{line}  {r['description']}".rstrip())
