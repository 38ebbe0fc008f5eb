"""The workflows the router knows: every valid file in the workflows directory.

An invalid file is reported and skipped, never fatal: one broken workflow must not stop the others.
A trigger for a workflow the catalog does not know makes it look at the directory again, so a file
added while the router runs is picked up without a restart.
"""

import time
from pathlib import Path

from keel_router.workflow.errors import WorkflowError
from keel_router.workflow.loader import load_workflow, workflow_files
from keel_router.workflow.models import Workflow
from keel_shared.logging import get_logger

log = get_logger(__name__)


class WorkflowCatalog:
    def __init__(self, directory: Path, rescan_interval: float = 2.0) -> None:
        self._dir = directory
        self._workflows: dict[str, Workflow] = {}
        self._mtimes: dict[Path, float] = {}
        self._last_scan = 0.0
        self._rescan_interval = rescan_interval
        self.problems: dict[Path, str] = {}

    @classmethod
    def of(cls, workflows: dict[str, Workflow]) -> "WorkflowCatalog":
        catalog = cls(Path(), rescan_interval=float("inf"))
        catalog._workflows = dict(workflows)
        catalog._last_scan = time.monotonic()
        return catalog

    def scan(self) -> None:
        self._last_scan = time.monotonic()
        if not self._dir.is_dir():
            log.warning("workflows_dir_missing", dir=str(self._dir))
            return
        seen: set[Path] = set()
        for path in workflow_files(self._dir):
            seen.add(path)
            mtime = path.stat().st_mtime
            if self._mtimes.get(path) == mtime:
                continue
            self._mtimes[path] = mtime
            try:
                wf = load_workflow(path)
            except WorkflowError as exc:
                self.problems[path] = str(exc)
                log.error("workflow_invalid", file=str(path), problems=str(exc))
                continue
            self.problems.pop(path, None)
            other = next((p for p, w in self._by_file().items() if w.name == wf.name and p != path), None)
            if other is not None:
                self.problems[path] = f"workflow name {wf.name!r} is already defined in {other}"
                log.error("workflow_duplicate", file=str(path), name=wf.name, other=str(other))
                continue
            self._workflows[wf.name] = wf
            log.info("workflow_loaded", name=wf.name, version=wf.version, file=str(path))
        for gone in set(self._mtimes) - seen:
            del self._mtimes[gone]
            self._workflows = {n: w for n, w in self._workflows.items() if w.source != gone}

    def _by_file(self) -> dict[Path, Workflow]:
        return {w.source: w for w in self._workflows.values() if w.source is not None}

    def get(self, name: str) -> Workflow | None:
        wf = self._workflows.get(name)
        if wf is None and time.monotonic() - self._last_scan >= self._rescan_interval:
            self.scan()
            wf = self._workflows.get(name)
        return wf

    def names(self) -> list[str]:
        return sorted(self._workflows)
