"""Helpers shared by the workflow tests (a plain module: a conftest name would clash across test dirs)."""

from pathlib import Path

import pytest

from keel_router.workflow import WorkflowError, load_workflow_text

REPO = Path(__file__).resolve().parents[3]
EXAMPLES = REPO / "docs" / "schemas" / "examples"


def problems_of(text: str, file: str = "wf.yaml") -> list[str]:
    """The located problem lines a workflow text produces (fails the test if it loads)."""
    with pytest.raises(WorkflowError) as info:
        load_workflow_text(text, file)
    return [str(p) for p in info.value.problems]
