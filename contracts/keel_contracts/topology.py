"""Keel's messaging topology, declared once: who emits every event, where every message is stored, which
durable consumer delivers what to whom, and what each NATS identity may publish and consume.

Everything that used to restate this derives from the tables below (decision 026):
- `keel_shared.provisioning` creates exactly the durables of `DURABLES` (stream, filter subjects, ack
  settings);
- `keel_shared.security` renders each identity's NATS permissions from `EVENTS`, `COMMANDS`, `DURABLES`
  and `ACCESS`, one publish allow per event type the identity emits (the type is the subject's last token,
  so the server enforces "the executor may write step outcomes and nothing else");
- every service binds its consumers by durable name, taking their stream and filter subjects from here;
- the AsyncAPI documents (`python -m keel_dashboard.asyncapi`) and the bad-input inventory are built from it;
- every reader of run events checks `emitter_problem` (`keel_contracts.codec.decode_event` with the
  subject), so an event stored under the wrong emitter token, or by
  nobody's rightful emitter, is never folded, even if NATS permissions were misconfigured.

A test (tests/unit/contracts/test_topology.py) proves that provisioned consumers, rendered permissions and
the services' subscribers equal these tables.
"""

from dataclasses import dataclass
from typing import Final

from keel_contracts import subjects as s
from keel_contracts import timers as t
from keel_contracts.approvals import (
    ApprovalDenied,
    ApprovalExpired,
    ApprovalGranted,
    ApprovalRequested,
    ApprovalWithdrawn,
)
from keel_contracts.commands import CancelRun, HumanInput, TriggerRun
from keel_contracts.envelope import Message
from keel_contracts.events import (
    HumanInputReceived,
    HumanInputRejected,
    HumanInputRequested,
    RetryScheduled,
    RouteDecided,
    RunBlocked,
    RunCancelled,
    RunCompleted,
    RunFailed,
    RunStarted,
    StepFailed,
    StepScheduled,
    StepSucceeded,
    TriggerJoined,
    WaitStarted,
)
from keel_contracts.timers import TimerFired

#: Identities that are not services emitting run events, but connect to NATS all the same.
ADMIN: Final = "admin"
DASHBOARD: Final = "dashboard"
#: An operator's `keel` CLI (and the Python client): starts runs, answers and cancels them, reads them.
CLI: Final = "cli"
#: The webhook ingress: turns signed webhooks into triggers.
INGRESS: Final = "ingress"
#: Every NATS identity, in the order `keel init --secure` lists them.
IDENTITIES: Final = (ADMIN, s.ROUTER, s.EXECUTOR, s.APPROVAL, s.AUDIT, DASHBOARD, CLI, INGRESS)


@dataclass(frozen=True)
class EventRoute:
    """One run event type: its contract and the one service that may emit it."""

    model: type[Message]
    emitter: str

    @property
    def type(self) -> str:
        return str(self.model.model_fields["type"].default)

    @property
    def subject(self) -> str:
        """Where every event of this type is stored, for any workflow and run."""
        return s.event_type_filter(self.emitter, self.type)


#: Every run event type, each with its only rightful emitter. All live in KEEL_EVENTS.
EVENTS: Final[tuple[EventRoute, ...]] = (
    EventRoute(RunStarted, s.ROUTER),
    EventRoute(TriggerJoined, s.ROUTER),
    EventRoute(StepScheduled, s.ROUTER),
    EventRoute(RetryScheduled, s.ROUTER),
    EventRoute(RouteDecided, s.ROUTER),
    EventRoute(RunCompleted, s.ROUTER),
    EventRoute(RunFailed, s.ROUTER),
    EventRoute(HumanInputRequested, s.ROUTER),
    EventRoute(HumanInputReceived, s.ROUTER),
    EventRoute(HumanInputRejected, s.ROUTER),
    EventRoute(WaitStarted, s.ROUTER),
    EventRoute(RunBlocked, s.ROUTER),
    EventRoute(RunCancelled, s.ROUTER),
    EventRoute(ApprovalRequested, s.ROUTER),
    # The run that asked for an approval ended before anyone decided it (decision 026).
    EventRoute(ApprovalWithdrawn, s.ROUTER),
    EventRoute(StepSucceeded, s.EXECUTOR),
    EventRoute(StepFailed, s.EXECUTOR),
    EventRoute(ApprovalGranted, s.APPROVAL),
    EventRoute(ApprovalDenied, s.APPROVAL),
    EventRoute(ApprovalExpired, s.APPROVAL),
)

EMITTER_OF: Final[dict[str, str]] = {route.type: route.emitter for route in EVENTS}


def event(event_type: str) -> EventRoute:
    return next(route for route in EVENTS if route.type == event_type)


def emitted_by(emitter: str) -> tuple[EventRoute, ...]:
    return tuple(route for route in EVENTS if route.emitter == emitter)


def subject_of(message: Message) -> str:
    """Where the rightful emitter of this event's type stores it."""
    return s.event_subject(message.workflow, message.run_id, EMITTER_OF[message.type], message.type)


def event_subjects(*event_types: str) -> tuple[str, ...]:
    return tuple(event(name).subject for name in event_types)


def emitter_problem(subject: str, event_type: str | None) -> str | None:
    """Why an event of `event_type` stored on `subject` must not be believed, or None when subject and
    type agree with the table. A type this version does not know is not judged here (decoding says so)."""
    try:
        _, _, emitter, subject_type = s.parse_event_subject(subject)
    except ValueError:
        return "not a run event subject"
    if event_type is not None and subject_type != event_type:
        return f"the subject says {subject_type!r}, the event says it is {event_type!r}"
    rightful = EMITTER_OF.get(subject_type)
    if rightful is None:
        return None
    if emitter != rightful:
        return f"{subject_type} is emitted by {rightful} only, this one is under {emitter!r}"
    return None


@dataclass(frozen=True)
class CommandRoute:
    """A command or trigger: its contract, where it is published, and who may publish it."""

    name: str
    models: tuple[type[Message], ...]
    subject: str
    stream: str
    publishers: tuple[str, ...]


COMMANDS: Final[tuple[CommandRoute, ...]] = (
    CommandRoute("trigger", (TriggerRun,), s.TRIGGERS_ALL, s.COMMANDS_STREAM, (CLI, INGRESS)),
    CommandRoute("router_command", (HumanInput, CancelRun), s.ROUTER_COMMANDS_ALL, s.COMMANDS_STREAM, (CLI,)),
    # Durable timers are commands a service sends itself, later: each schedules only its own.
    CommandRoute(
        "router_timer", (TimerFired,), t.ROUTER_TIMERS_FIRE.replace(".fire.", ".sched."), t.TIMERS_STREAM, (s.ROUTER,)
    ),
    CommandRoute(
        "approval_timer",
        (TimerFired,),
        t.APPROVAL_TIMERS_FIRE.replace(".fire.", ".sched."),
        t.TIMERS_STREAM,
        (s.APPROVAL,),
    ),
)


@dataclass(frozen=True)
class Durable:
    """A durable consumer `keel init` provisions and exactly one service binds.

    Every durable acknowledges explicitly, with `KEEL_ACK_WAIT_SECONDS` as its ack wait (long work renews
    it with in-progress heartbeats), and no server-side `max_deliver`: the consume guard dead-letters a
    message after `KEEL_MAX_DELIVERIES` (decision 005)."""

    name: str
    stream: str
    consumer: str
    filter_subjects: tuple[str, ...]
    description: str
    max_ack_pending: int = 1000


#: The events the router reacts to: attempt outcomes and approval decisions. Its own events it knows.
ROUTER_REACTS_TO: Final = ("step_succeeded", "step_failed", "approval_granted", "approval_denied", "approval_expired")
#: What the approval service consumes from the run stream: requests, and withdrawals of them.
APPROVAL_CONSUMES: Final = ("approval_requested", "approval_withdrawn")

DURABLES: Final[tuple[Durable, ...]] = (
    Durable(
        s.ROUTER_TRIGGERS_DURABLE,
        s.COMMANDS_STREAM,
        s.ROUTER,
        (s.TRIGGERS_ALL,),
        "Start a run for an intent, or join the run the intent already has",
    ),
    Durable(
        s.ROUTER_EVENTS_DURABLE,
        s.EVENTS_STREAM,
        s.ROUTER,
        event_subjects(*ROUTER_REACTS_TO),
        "An attempt finished, or an approval was decided: decide what the run does next",
    ),
    # Not `keel.timer.fire.>`: approval expiries share the stream and have their own durable.
    Durable(
        t.ROUTER_TIMERS_DURABLE,
        t.TIMERS_STREAM,
        s.ROUTER,
        (t.ROUTER_TIMERS_FIRE,),
        "A durable timer fired: a retry's backoff passed, a wait ended, a human step's deadline came",
    ),
    Durable(
        s.ROUTER_COMMANDS_DURABLE,
        s.COMMANDS_STREAM,
        s.ROUTER,
        (s.ROUTER_COMMANDS_ALL,),
        "Human input for a parked run (`keel run input`), or its cancellation (`keel run cancel`)",
    ),
    # Executors run what the router scheduled: its step_scheduled events (decision 023) and the first step
    # a run_started carries (decision 025).
    Durable(
        s.EXECUTOR_DURABLE,
        s.EVENTS_STREAM,
        s.EXECUTOR,
        event_subjects("step_scheduled", "run_started"),
        "Run the attempt of a tool step the router scheduled (a step_scheduled event, or the first step a "
        "run_started carries) and record its outcome on the run",
        max_ack_pending=1024,
    ),
    Durable(
        s.APPROVAL_REQUESTS_DURABLE,
        s.EVENTS_STREAM,
        s.APPROVAL,
        event_subjects(*APPROVAL_CONSUMES),
        "A run asks for approval (record it, show it, schedule its expiry), or withdraws its request",
    ),
    Durable(
        t.APPROVAL_TIMERS_DURABLE,
        t.TIMERS_STREAM,
        s.APPROVAL,
        (t.APPROVAL_TIMERS_FIRE,),
        "An approval's expiry is due: expire it (and escalate) unless it was decided",
    ),
)


def durable(name: str) -> Durable:
    return next(d for d in DURABLES if d.name == name)


def durables_of(consumer: str) -> tuple[Durable, ...]:
    return tuple(d for d in DURABLES if d.consumer == consumer)


@dataclass(frozen=True)
class Access:
    """What one identity may do besides emitting its events, publishing its commands and binding its
    durables (those follow from the tables above). `keel_shared.security` renders it as NATS permissions."""

    #: Batched direct gets of run events (reading one run, never creating a consumer).
    reads_runs: bool = False
    #: Ephemeral ordered consumers on KEEL_EVENTS (`keel watch`, a trigger's answer, counting runs).
    follows_events: bool = False
    #: Its own unfiltered cursor over KEEL_EVENTS (the audit service's reader).
    scans_events: bool = False
    kv_write: tuple[str, ...] = ()
    kv_watch: tuple[str, ...] = ()
    #: Core subscriptions beyond its private inbox.
    subscribes: tuple[str, ...] = ()
    #: Dead-letter subjects: every service dead-letters what it refuses under its own name.
    dead_letters: bool = False


ACCESS: Final[dict[str, Access]] = {
    s.ROUTER: Access(reads_runs=True, follows_events=True, kv_write=(s.RUNS_BUCKET,), dead_letters=True),
    # Before recording an outcome it looks for one already stored, and before a write for the cancellation.
    s.EXECUTOR: Access(reads_runs=True, kv_write=(s.CLAIMS_BUCKET,), dead_letters=True),
    # Rebuilding a lost approval store reads the approval events back.
    s.APPROVAL: Access(reads_runs=True, dead_letters=True),
    s.AUDIT: Access(scans_events=True),
    DASHBOARD: Access(reads_runs=True, kv_watch=(s.RUNS_BUCKET,), subscribes=(s.LIVE_ALL,)),
    # The router's dead letters name a refused trigger or command: the CLI watches for its own.
    CLI: Access(
        reads_runs=True,
        follows_events=True,
        kv_watch=(s.RUNS_BUCKET,),
        subscribes=(s.dlq_subject(s.ROUTER, "*"), s.LIVE_ALL),
    ),
    INGRESS: Access(
        follows_events=True, kv_write=(s.WEBHOOK_REPLAY_BUCKET,), subscribes=(s.dlq_subject(s.ROUTER, "*"),)
    ),
}


def commands_of(identity: str) -> tuple[CommandRoute, ...]:
    return tuple(c for c in COMMANDS if identity in c.publishers)
