"""Least-privilege NATS identities for Keel: `keel init --secure` (docs/security.md).

Every service gets its own NKEY user, and the server's authorization block lets each one publish and
subscribe only the subjects its code uses. The lists are rendered from the topology table
(`keel_contracts.topology`) and were worked out against a real nats-server
(tests/integration/test_security_permissions.py proves every allow and every deny):

- run events are `keel.run.<workflow>.<run>.<emitter>.<type>`, so "the executor writes only step
  outcomes" is one allow per type it emits (`keel.run.*.*.executor.step_succeeded`, ...). NATS wildcards
  match whole tokens only, which is why the emitter and the type have tokens of their own;
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
from keel_contracts import topology
from keel_shared.connection import inbox_prefix
from keel_shared.settings import KeelSettings

JS_API = "$JS.API"

# The identities are the topology table's (re-exported: callers name them from here).
ADMIN = topology.ADMIN
DASHBOARD = topology.DASHBOARD
CLI = topology.CLI
INGRESS = topology.INGRESS
IDENTITIES: tuple[str, ...] = topology.IDENTITIES

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


def _stream_read(stream: str) -> list[str]:
    return [
        f"{JS_API}.STREAM.INFO.{stream}",
        f"{JS_API}.DIRECT.GET.{stream}.>",
        f"{JS_API}.STREAM.MSG.GET.{stream}",
    ]


def _stream_watch(stream: str) -> list[str]:
    # A watch is an ordered push consumer on the stream; `$JS.FC` answers its flow control.
    return [
        *_stream_read(stream),
        f"{JS_API}.CONSUMER.CREATE.{stream}",
        f"{JS_API}.CONSUMER.CREATE.{stream}.>",
        f"{JS_API}.CONSUMER.INFO.{stream}.*",
        f"{JS_API}.CONSUMER.DELETE.{stream}.*",
        f"$JS.FC.{stream}.>",
    ]


def _kv_read(bucket: str) -> list[str]:
    return _stream_read(f"KV_{bucket}")


def _kv_write(bucket: str) -> list[str]:
    return [*_kv_read(bucket), f"$KV.{bucket}.>"]


def _read_events() -> list[str]:
    # Batched direct get of a run's events (eventstore.EventStore.read): no consumer is created.
    return [f"{JS_API}.DIRECT.GET.{s.EVENTS_STREAM}"]


def _kv_watch(bucket: str) -> list[str]:
    return _stream_watch(f"KV_{bucket}")


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


def _stream_admin() -> list[str]:
    return [f"{JS_API}.STREAM.{op}.>" for op in ("CREATE", "UPDATE", "DELETE", "PURGE")] + [
        f"{JS_API}.CONSUMER.DURABLE.CREATE.>"
    ]


def _events_of(identity: str) -> list[str]:
    """One allow per event type the identity emits: the type is the subject's last token, so the server
    refuses any other type, even under the identity's own emitter token (decision 026)."""
    return [route.subject for route in topology.emitted_by(identity)]


def _others_events(identity: str) -> list[str]:
    """Every other emitter's events (spelled out as denies, so the intent survives a careless allow)."""
    return [s.emitter_filter(other) for other in s.SERVICES if other != identity]


def _scan_events() -> list[str]:
    # The audit service's ordered reader: an ephemeral, unfiltered pull consumer it creates, pulls and deletes.
    return [
        f"{JS_API}.STREAM.INFO.{s.EVENTS_STREAM}",
        f"{JS_API}.CONSUMER.CREATE.{s.EVENTS_STREAM}.*",
        f"{JS_API}.CONSUMER.INFO.{s.EVENTS_STREAM}.*",
        f"{JS_API}.CONSUMER.MSG.NEXT.{s.EVENTS_STREAM}.*",
        f"{JS_API}.CONSUMER.DELETE.{s.EVENTS_STREAM}.*",
    ]


def _audit_bucket(bucket: str) -> list[str]:
    # Its own write-once segment bucket (KEEL_AUDIT_STORE=object_store).
    return [f"$O.{bucket}.>", *_stream_watch(f"OBJ_{bucket}")]


def _rendered(identity: str, settings: KeelSettings) -> Permissions:
    """An identity's NATS permissions, from the topology table: the events it emits, the commands it
    sends, the durables it binds and its `Access`; everything else another service's is denied."""
    access = topology.ACCESS[identity]
    own_durables = topology.durables_of(identity)
    others = [d for d in topology.DURABLES if d.consumer != identity]
    allow: list[str] = [*_events_of(identity)]
    allow += [command.subject for command in topology.commands_of(identity)]
    if access.dead_letters:
        allow.append(s.dlq_subject(identity, "*"))
    for spec in own_durables:
        allow += _durable(spec.stream, spec.name)
    if access.reads_runs:
        allow += _read_events()
    if access.follows_events:
        allow += _ordered_events_reader()
    if access.scans_events:
        allow += _scan_events()
    for bucket in access.kv_write:
        allow += _kv_write(bucket)
    for bucket in access.kv_watch:
        allow += _kv_watch(bucket)
    if identity == s.AUDIT:
        allow += _audit_bucket(settings.audit_bucket)
    sends = {command.subject for command in topology.commands_of(identity)}
    deny: list[str] = []
    if not topology.emitted_by(identity) and not sends and not access.dead_letters:
        deny.append("keel.>")  # it reads; it never writes anything of Keel's
    else:
        deny += _others_events(identity) if topology.emitted_by(identity) else [s.EVENTS_ALL]
        if s.TRIGGERS_ALL not in sends:
            deny.append(s.TRIGGERS_ALL)
        if s.ROUTER_COMMANDS_ALL not in sends:
            deny.append(s.COMMANDS_ALL)
        if not any(c.stream == t.TIMERS_STREAM for c in topology.commands_of(identity)):
            deny.append(t.TIMERS_SCHEDULE_ALL)
    if s.RUNS_BUCKET not in access.kv_write:
        deny.append(f"$KV.{s.RUNS_BUCKET}.>")
    for stream in {d.stream for d in others if d.stream == s.EVENTS_STREAM}:
        deny += _durables_of_others(stream, [d.name for d in others if d.stream == stream])
    if access.follows_events:
        # Ordered consumers may be created, but its own durables stay as `keel init` made them.
        deny += [
            f"{JS_API}.CONSUMER.{op}.{spec.stream}.{spec.name}{tail}"
            for spec in own_durables
            if spec.stream == s.EVENTS_STREAM
            for op, tail in (("CREATE", ""), ("CREATE", ".>"), ("DELETE", ""))
        ]
    deny += _stream_admin()
    return Permissions(
        publish_allow=tuple(allow),
        subscribe_allow=(_inbox(identity), *access.subscribes),
        publish_deny=tuple(dict.fromkeys(deny)),
    )


def permissions(settings: KeelSettings | None = None) -> dict[str, Permissions]:
    """Each identity's allow and deny lists, rendered from the topology table. Denies win over allows in
    NATS; they are spelled out for the forbidden subjects that matter most, so the intent survives a
    careless allow added later."""
    settings = settings or KeelSettings()
    out = {ADMIN: Permissions(publish_allow=(">",), subscribe_allow=(">",))}
    for identity in IDENTITIES:
        if identity != ADMIN:
            out[identity] = _rendered(identity, settings)
    return out


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
