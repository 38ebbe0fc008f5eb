"""Every NATS name Keel uses: streams, buckets, durable consumers and subjects.

Run events:  keel.run.<workflow>.<run_id>.<emitter>.<event_type>
  The workflow token lets a dashboard follow one workflow with a plain subject filter; the emitter token
  lets NATS permissions say "the executor may only write executor events" without listing event types
  (NATS wildcards match whole tokens only).
Commands:    keel.cmd.<service>.<command>.<run_id>
Triggers:    keel.trigger.<source>
Dead letters: keel.dlq.<service>.<reason>
Live feed:   keel.live.run.>  (RePublish of stored events only; never a core subscription on keel.run.>,
  which would also see publishes the stream rejected)

Who emits which event type, and which durable consumer delivers what, is declared in `topology`.
"""

import re
from typing import Final

TOKEN_RE: Final = re.compile(r"^[A-Za-z0-9_-]{1,128}$")

EVENTS_STREAM: Final = "KEEL_EVENTS"
COMMANDS_STREAM: Final = "KEEL_COMMANDS"
DLQ_STREAM: Final = "KEEL_DLQ"
RUNS_BUCKET: Final = "KEEL_RUNS"
CLAIMS_BUCKET: Final = "KEEL_CLAIMS"
WEBHOOK_REPLAY_BUCKET: Final = "KEEL_WEBHOOK_REPLAY"

EVENTS_ALL: Final = "keel.run.>"
LIVE_PREFIX: Final = "keel.live"
LIVE_ALL: Final = f"{LIVE_PREFIX}.run.>"
COMMANDS_ALL: Final = "keel.cmd.>"
TRIGGERS_ALL: Final = "keel.trigger.>"
DLQ_ALL: Final = "keel.dlq.>"

# Durable consumer names (provisioned by `keel init`, bound by the services).
ROUTER_TRIGGERS_DURABLE: Final = "router-triggers"
ROUTER_EVENTS_DURABLE: Final = "router-events"
EXECUTOR_DURABLE: Final = "executor"
APPROVAL_REQUESTS_DURABLE: Final = "approval-requests"
ROUTER_COMMANDS_DURABLE: Final = "router-commands"

ROUTER_COMMANDS_ALL: Final = "keel.cmd.router.>"

# Services, used as the emitter token of run events and as the actor of what they publish.
ROUTER: Final = "router"
EXECUTOR: Final = "executor"
APPROVAL: Final = "approval"
AUDIT: Final = "audit"
SERVICES: Final = (ROUTER, EXECUTOR, APPROVAL, AUDIT)


class InvalidToken(ValueError):
    """A value that must be a single subject token (no dots, spaces or wildcards) is not."""


def token(value: str, what: str) -> str:
    if not TOKEN_RE.fullmatch(value):
        raise InvalidToken(f"{what} must match [A-Za-z0-9_-]{{1,128}}, got {value!r}")
    return value


def event_subject(workflow: str, run_id: str, emitter: str, event_type: str) -> str:
    return f"keel.run.{workflow}.{run_id}.{emitter}.{event_type}"


def run_filter(workflow: str, run_id: str) -> str:
    """Every event of one run; also the subject filter of the run's optimistic-concurrency check."""
    return f"keel.run.{workflow}.{run_id}.>"


def any_workflow_run_filter(run_id: str) -> str:
    """Every event of one run when the caller does not know its workflow."""
    return f"keel.run.*.{run_id}.>"


def workflow_filter(workflow: str) -> str:
    return f"keel.run.{workflow}.>"


def emitter_filter(emitter: str) -> str:
    return f"keel.run.*.*.{emitter}.*"


def event_type_filter(emitter: str, event_type: str) -> str:
    """One type of event, of every run (e.g. every `run_started`)."""
    return f"keel.run.*.*.{emitter}.{event_type}"


def live_subject(event_subject_: str) -> str:
    return f"{LIVE_PREFIX}.{event_subject_.removeprefix('keel.')}"


def trigger_subject(source: str) -> str:
    return f"keel.trigger.{source}"


def router_input_subject(run_id: str) -> str:
    """Human input for one run (`keel run input`)."""
    return f"keel.cmd.router.input.{run_id}"


def router_cancel_subject(run_id: str) -> str:
    return f"keel.cmd.router.cancel.{run_id}"


def dlq_subject(service: str, reason: str) -> str:
    return f"keel.dlq.{service}.{reason}"


def parse_event_subject(subject: str) -> tuple[str, str, str, str]:
    """Split an event subject into (workflow, run_id, emitter, event_type)."""
    parts = subject.split(".")
    if len(parts) != 6 or parts[0] != "keel" or parts[1] != "run":
        raise ValueError(f"not a run event subject: {subject!r}")
    return parts[2], parts[3], parts[4], parts[5]
