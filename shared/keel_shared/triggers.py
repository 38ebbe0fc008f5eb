"""Building and publishing a trigger: the one way runs start, used by the CLI, the Python client and
the webhook ingress alike."""

from pydantic import JsonValue

from keel_contracts import subjects as s
from keel_contracts.commands import TriggerRun, TriggerRunBody
from keel_contracts.envelope import new_id, run_id_for


def build_trigger(
    workflow: str,
    input: dict[str, JsonValue],
    intent_key: str | None = None,
    *,
    source: str = "cli",
    tenant: str = "default",
    actor: str | None = None,
    trigger_id: str | None = None,
) -> TriggerRun:
    """A trigger for `workflow`. Without an intent key every trigger is its own intent (a new run)."""
    tid = trigger_id or new_id()
    key = intent_key if intent_key is not None else f"trigger-{tid}"
    s.token(workflow, "workflow")
    s.token(source, "source")
    return TriggerRun(
        id=tid,
        run_id=run_id_for(tenant, workflow, key),
        workflow=workflow,
        tenant=tenant,
        correlation_id=tid,
        actor=actor or f"trigger:{source}",
        dedupe_key=f"trigger:{source}:{tid}",
        body=TriggerRunBody(intent_key=key, source=source, input=input),
    )
