"""Least-privilege NATS identities for Keel: `keel init --secure` (docs/security.md).

Every service gets its own NKEY user, and the server's authorization block lets each one publish and
subscribe only the subjects its code uses. The lists below were worked out against a real nats-server
(tests/integration/test_security_permissions.py proves every allow and every deny):

- run events are `keel.run.<workflow>.<run>.<emitter>.<type>`, so "the executor writes only executor
  events" is `keel.run.*.*.executor.*`. NATS wildcards match whole tokens only, which is why the emitter
  has a token of its own;
- a JetStream publish is a request whose reply goes to the publisher's inbox. Every service uses a
  private inbox prefix (`_INBOX_<service>`, see connection.py), so none can read another's replies;
- binding a provisioned durable needs `CONSUMER.INFO` and `CONSUMER.MSG.NEXT` on exactly that durable and
  `$JS.ACK.<stream>.<durable>.>` for acks, naks and in-progress heartbeats;
- a KV bucket is the stream `KV_<bucket>`: `$KV.<bucket>.>` to write, `STREAM.INFO` to bind, direct or
  message get to read;
- only the admin identity may create, update, delete or purge streams (`keel init`).

Seeds are written 0600 and never overwritten: re-running `--secure` keeps every existing identity (a
new seed would lock a running service out) and only rewrites the server config from the public keys.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import nkeys

from keel_contracts import subjects as s
from keel_contracts import timers as t
from keel_shared.connection import inbox_prefix
from keel_shared.settings import KeelSettings

JS_API = "$JS.API"

ADMIN = "admin"
DASHBOARD = "dashboard"
#: An operator's `keel` CLI (and the Python client): starts runs, answers and cancels them, reads them.
CLI = "cli"
#: The webhook ingress (`python -m keel_router.ingress`): turns signed webhooks into triggers.
INGRESS = "ingress"
#: Every identity `keel init --secure` creates, in the order the config lists them.
IDENTITIES: tuple[str, ...] = (ADMIN, s.ROUTER, s.EXECUTOR, s.APPROVAL, s.AUDIT, DASHBOARD, CLI, INGRESS)

AUTH_CONFIG_NAME = "nats-auth.conf"
SEEDS_DIR_NAME = "nkeys"


@dataclass(frozen=True)
class Permissions:
    publish_allow: tuple[str, ...]
    subscribe_allow: tuple[str, ...]
    publish_deny: tuple[str, ...] = ()
    subscribe_deny: tuple[str, ...] = ()


@dataclass(frozen=True)
class Identity:
    name: str
    public_key: str
    seed_file: Path


@dataclass(frozen=True)
class SecureLayout:
    """What `keel init --secure` wrote: the server's authorization include and one seed per identity."""

    root: Path
    auth_config: Path
    identities: dict[str, Identity] = field(default_factory=dict)

    def seed_file(self, name: str) -> Path:
        if name not in self.identities:
            raise KeyError(f"no NATS identity {name!r}: add it to keel_shared.security.IDENTITIES")
        return self.identities[name].seed_file


# --- subject helpers ---------------------------------------------------------------------------------
def _durable(stream: str, durable: str) -> list[str]:
    """Bind and pull one provisioned durable, and settle its messages (ack, nak, +WPI, +TERM)."""
    return [
        f"{JS_API}.CONSUMER.INFO.{stream}.{durable}",
        f"{JS_API}.CONSUMER.MSG.NEXT.{stream}.{durable}",
        f"$JS.ACK.{stream}.{durable}.>",
    ]


def _kv_read(bucket: str) -> list[str]:
    stream = f"KV_{bucket}"
    return [
        f"{JS_API}.STREAM.INFO.{stream}",
        f"{JS_API}.DIRECT.GET.{stream}.>",
        f"{JS_API}.STREAM.MSG.GET.{stream}",
    ]


def _kv_write(bucket: str) -> list[str]:
    return [*_kv_read(bucket), f"$KV.{bucket}.>"]


def _read_events() -> list[str]:
    # Batched direct get of a run's events (eventstore.EventStore.read): no consumer is created.
    return [f"{JS_API}.DIRECT.GET.{s.EVENTS_STREAM}"]


def _kv_watch(bucket: str) -> list[str]:
    # A watch is an ordered push consumer on the bucket's stream; `$JS.FC` answers its flow control.
    stream = f"KV_{bucket}"
    return [
        *_kv_read(bucket),
        f"{JS_API}.CONSUMER.CREATE.{stream}",
        f"{JS_API}.CONSUMER.CREATE.{stream}.>",
        f"{JS_API}.CONSUMER.INFO.{stream}.*",
        f"{JS_API}.CONSUMER.DELETE.{stream}.*",
        f"$JS.FC.{stream}.>",
    ]


def _ordered_events_reader() -> list[str]:
    """Ephemeral ordered push consumers on KEEL_EVENTS (`keel watch`, awaiting a trigger's answer)."""
    return [
        f"{JS_API}.STREAM.INFO.{s.EVENTS_STREAM}",
        f"{JS_API}.CONSUMER.CREATE.{s.EVENTS_STREAM}",
        f"{JS_API}.CONSUMER.CREATE.{s.EVENTS_STREAM}.>",
        f"{JS_API}.CONSUMER.DELETE.{s.EVENTS_STREAM}.*",
        f"$JS.FC.{s.EVENTS_STREAM}.>",
    ]


def _durables_of_others(stream: str, durables: Iterable[str]) -> list[str]:
    """Whatever an identity may do to ephemeral consumers, it must not touch these provisioned ones."""
    # Spelled out per operation: `CONSUMER.*` would miss the two-token `MSG.NEXT`.
    out: list[str] = []
    for name in durables:
        out += [f"{JS_API}.CONSUMER.{op}.{stream}.{name}" for op in ("CREATE", "DELETE", "INFO", "MSG.NEXT")]
        out += [f"{JS_API}.CONSUMER.CREATE.{stream}.{name}.>", f"$JS.ACK.{stream}.{name}.>"]
    return out


def _inbox(name: str) -> str:
    return f"{inbox_prefix(name)}.>"


def _other_emitters(own: str | None) -> list[str]:
    return [s.emitter_filter(other) for other in s.SERVICES if other != own]


def _stream_admin() -> list[str]:
    return [f"{JS_API}.STREAM.{op}.>" for op in ("CREATE", "UPDATE", "DELETE", "PURGE")] + [
        f"{JS_API}.CONSUMER.DURABLE.CREATE.>"
    ]


def permissions(settings: KeelSettings | None = None) -> dict[str, Permissions]:
    """Each identity's allow and deny lists. Denies win over allows in NATS; they are spelled out for
    the forbidden subjects that matter most, so the intent survives a careless allow added later."""
    settings = settings or KeelSettings()
    events_durables = (s.ROUTER_EVENTS_DURABLE, s.APPROVAL_REQUESTS_DURABLE, s.EXECUTOR_DURABLE)
    audit_bucket = settings.audit_bucket
    audit_stream = f"OBJ_{audit_bucket}"
    return {
        ADMIN: Permissions(publish_allow=(">",), subscribe_allow=(">",)),
        s.ROUTER: Permissions(
            publish_allow=(
                s.emitter_filter(s.ROUTER),
                # Its own timers (three tokens after the prefix; approval expiries have four, so the
                # router cannot schedule or cancel those).
                t.ROUTER_TIMERS_FIRE.replace(".fire.", ".sched."),
                s.dlq_subject(s.ROUTER, "*"),
                *_durable(s.COMMANDS_STREAM, s.ROUTER_TRIGGERS_DURABLE),
                *_durable(s.COMMANDS_STREAM, s.ROUTER_COMMANDS_DURABLE),
                *_durable(s.EVENTS_STREAM, s.ROUTER_EVENTS_DURABLE),
                *_durable(t.TIMERS_STREAM, t.ROUTER_TIMERS_DURABLE),
                *_read_events(),
                # It counts runs in flight from their start and end events (keel_router.admission).
                *_ordered_events_reader(),
                *_kv_write(s.RUNS_BUCKET),
            ),
            publish_deny=(
                *_other_emitters(s.ROUTER),
                *_stream_admin(),
                *_durables_of_others(s.EVENTS_STREAM, (s.APPROVAL_REQUESTS_DURABLE, s.EXECUTOR_DURABLE)),
                # Ordered consumers may be created, but its provisioned durable stays as `keel init` made it.
                *(
                    f"{JS_API}.CONSUMER.{op}.{s.EVENTS_STREAM}.{s.ROUTER_EVENTS_DURABLE}{tail}"
                    for op, tail in (("CREATE", ""), ("CREATE", ".>"), ("DELETE", ""))
                ),
            ),
            subscribe_allow=(_inbox(s.ROUTER),),
        ),
        s.EXECUTOR: Permissions(
            publish_allow=(
                s.emitter_filter(s.EXECUTOR),
                s.dlq_subject(s.EXECUTOR, "*"),
                # Its work is the router's step_scheduled and run_started events (decisions 023, 025).
                *_durable(s.EVENTS_STREAM, s.EXECUTOR_DURABLE),
                # Before recording an outcome it looks for one already stored (a retry after a crash), and
                # before a write for the run's cancellation.
                *_read_events(),
                *_kv_write(s.CLAIMS_BUCKET),
            ),
            # Never a router event (run state), never an approval decision, never a trigger or command.
            publish_deny=(
                *_other_emitters(s.EXECUTOR),
                s.COMMANDS_ALL,
                s.TRIGGERS_ALL,
                *_durables_of_others(s.EVENTS_STREAM, (s.ROUTER_EVENTS_DURABLE, s.APPROVAL_REQUESTS_DURABLE)),
                *_stream_admin(),
            ),
            subscribe_allow=(_inbox(s.EXECUTOR),),
        ),
        s.APPROVAL: Permissions(
            publish_allow=(
                s.emitter_filter(s.APPROVAL),
                t.APPROVAL_TIMERS_FIRE.replace(".fire.", ".sched."),
                s.dlq_subject(s.APPROVAL, "*"),
                *_durable(s.EVENTS_STREAM, s.APPROVAL_REQUESTS_DURABLE),
                *_durable(t.TIMERS_STREAM, t.APPROVAL_TIMERS_DURABLE),
                # Rebuilding a lost approval store from the stream reads the approval events back.
                *_read_events(),
            ),
            publish_deny=(*_other_emitters(s.APPROVAL), s.COMMANDS_ALL, s.TRIGGERS_ALL, *_stream_admin()),
            subscribe_allow=(_inbox(s.APPROVAL),),
        ),
        s.AUDIT: Permissions(
            publish_allow=(
                # Its ordered reader: an ephemeral, unfiltered pull consumer it creates, pulls and deletes.
                f"{JS_API}.STREAM.INFO.{s.EVENTS_STREAM}",
                f"{JS_API}.CONSUMER.CREATE.{s.EVENTS_STREAM}.*",
                f"{JS_API}.CONSUMER.INFO.{s.EVENTS_STREAM}.*",
                f"{JS_API}.CONSUMER.MSG.NEXT.{s.EVENTS_STREAM}.*",
                f"{JS_API}.CONSUMER.DELETE.{s.EVENTS_STREAM}.*",
                # Its own write-once segment bucket (KEEL_AUDIT_STORE=object_store).
                f"$O.{audit_bucket}.>",
                f"{JS_API}.STREAM.INFO.{audit_stream}",
                f"{JS_API}.DIRECT.GET.{audit_stream}.>",
                f"{JS_API}.STREAM.MSG.GET.{audit_stream}",
                f"{JS_API}.CONSUMER.CREATE.{audit_stream}",
                f"{JS_API}.CONSUMER.CREATE.{audit_stream}.>",
                f"{JS_API}.CONSUMER.DELETE.{audit_stream}.*",
                f"$JS.FC.{audit_stream}.>",
            ),
            publish_deny=(
                # It reads the log; it never writes run events, commands or timers.
                s.EVENTS_ALL,
                s.COMMANDS_ALL,
                s.TRIGGERS_ALL,
                t.TIMERS_SCHEDULE_ALL,
                *_durables_of_others(s.EVENTS_STREAM, events_durables),
                *_stream_admin(),
            ),
            subscribe_allow=(_inbox(s.AUDIT),),
        ),
        DASHBOARD: Permissions(
            publish_allow=(*_kv_watch(s.RUNS_BUCKET), *_read_events()),
            publish_deny=(f"$KV.{s.RUNS_BUCKET}.>", "keel.>", *_stream_admin()),
            subscribe_allow=(s.LIVE_ALL, _inbox(DASHBOARD)),
        ),
        CLI: Permissions(
            publish_allow=(
                s.TRIGGERS_ALL,
                s.ROUTER_COMMANDS_ALL,
                *_ordered_events_reader(),
                *_read_events(),
                *_kv_watch(s.RUNS_BUCKET),
            ),
            publish_deny=(
                s.EVENTS_ALL,
                f"$KV.{s.RUNS_BUCKET}.>",
                *_durables_of_others(s.EVENTS_STREAM, events_durables),
                *_stream_admin(),
            ),
            # The router's dead letters name a refused trigger or command: the CLI watches for its own.
            subscribe_allow=(_inbox(CLI), s.dlq_subject(s.ROUTER, "*"), s.LIVE_ALL),
        ),
        INGRESS: Permissions(
            publish_allow=(
                s.TRIGGERS_ALL,
                # It answers a webhook once the router started or joined the run (or refused the trigger).
                *_ordered_events_reader(),
                *_kv_write(s.WEBHOOK_REPLAY_BUCKET),
            ),
            publish_deny=(
                s.EVENTS_ALL,
                s.COMMANDS_ALL,
                t.TIMERS_SCHEDULE_ALL,
                *_durables_of_others(s.EVENTS_STREAM, events_durables),
                *_stream_admin(),
            ),
            subscribe_allow=(_inbox(INGRESS), s.dlq_subject(s.ROUTER, "*")),
        ),
    }


# --- config rendering ----------------------------------------------------------------------------------
def _quoted(items: Iterable[str]) -> str:
    return ", ".join(f'"{item}"' for item in items)


def _rule(allow: tuple[str, ...], deny: tuple[str, ...]) -> str:
    parts = [f"allow: [{_quoted(allow)}]"]
    if deny:
        parts.append(f"deny: [{_quoted(deny)}]")
    return "{ " + ", ".join(parts) + " }"


def authorization_config(public_keys: Mapping[str, str], settings: KeelSettings | None = None) -> str:
    """The server's `authorization {}` block for these identities (name -> NKEY public key)."""
    perms = permissions(settings)
    lines = [
        "# Generated by `keel init --secure`: one NKEY user per Keel identity, each allowed only its own",
        "# subjects (docs/security.md). Holds public keys only; the seeds stay with their services.",
        "authorization {",
        "  users = [",
    ]
    for name in IDENTITIES:
        if name not in public_keys:
            continue
        p = perms[name]
        lines += [
            f"    # {name}",
            f'    {{ nkey: "{public_keys[name]}", permissions: {{',
            f"        publish: {_rule(p.publish_allow, p.publish_deny)}",
            f"        subscribe: {_rule(p.subscribe_allow, p.subscribe_deny)}",
            "    } }",
        ]
    lines += ["  ]", "}"]
    return "\n".join(lines) + "\n"


# --- key material ----------------------------------------------------------------------------------------
def new_user_seed() -> bytes:
    return bytes(nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER))


def public_key_of(seed: bytes) -> str:
    return str(nkeys.from_seed(bytearray(seed.strip())).public_key.decode())


def _write_private(path: Path, data: bytes) -> None:
    # Created 0600 from the start (never world-readable, not even for an instant), then fsynced.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, stat.S_IRUSR | stat.S_IWUSR)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def init_secure(out_dir: Path, settings: KeelSettings | None = None) -> SecureLayout:
    """Create missing identities under `out_dir/nkeys/<name>.nk` and (re)write `out_dir/nats-auth.conf`."""
    seeds = out_dir / SEEDS_DIR_NAME
    seeds.mkdir(parents=True, exist_ok=True)
    seeds.chmod(0o700)
    identities: dict[str, Identity] = {}
    for name in IDENTITIES:
        path = seeds / f"{name}.nk"
        if not path.exists():
            _write_private(path, new_user_seed() + b"\n")
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise PermissionError(f"{path} is readable by others (mode {mode:o}); chmod 600 it")
        identities[name] = Identity(name, public_key_of(path.read_bytes()), path)
    auth = out_dir / AUTH_CONFIG_NAME
    auth.write_text(authorization_config({n: i.public_key for n, i in identities.items()}, settings))
    return SecureLayout(out_dir, auth, identities)
