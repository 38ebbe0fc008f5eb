"""``keel audit ...``: verify, prove, keys, checkpoint, show. Mounted by the main CLI as a sub-app.

Exit codes of ``verify``, ``prove`` and ``show``: 0 valid, 2 tampered, 3 incomplete, 1 error.
The log is read from an audit directory (default: ``$KEEL_AUDIT_DIR``, else ``<KEEL_DATA_DIR>/audit``,
which is ``.keel/audit``, the embedded stack's, when run from the repo) or, with ``--bucket``, from the
JetStream object store the service writes when ``KEEL_AUDIT_STORE=object_store``. See docs/audit.md.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated

import typer

from keel_audit.checkpoint import Checkpoint
from keel_audit.config import audit_dir, signing_key_file
from keel_audit.erasure import DirectoryPayloadStore
from keel_audit.errors import AuditError, RecordNotFoundError
from keel_audit.keyring import Keyring, KeyringFile, KeyringStore
from keel_audit.objstore import LoopBridge, ObjectStoreSegmentStore, background_loop
from keel_audit.proofs import prove_inclusion, verify_inclusion_proof
from keel_audit.reconstruct import run_records
from keel_audit.runreport import collect, render_text
from keel_audit.signing import Signer, encode_public_key, load_signer, write_private_key
from keel_audit.store import AuditDirectory, DirectorySegmentStore, SegmentStore
from keel_audit.verify import Kind, Problem, Severity, Verdict, verify_log
from keel_audit.writer import SegmentWriter
from keel_contracts.subjects import EVENTS_STREAM
from keel_shared import decisions, keyrings
from keel_shared.connection import connect
from keel_shared.settings import DEFAULT_NATS_URL, KeelSettings

app = typer.Typer(name="audit", help="Verify, prove and read the signed audit log.", no_args_is_help=True)
keys_app = typer.Typer(help="Manage audit signing keys.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")

DirOption = Annotated[
    Path | None,
    typer.Option(
        "--dir",
        envvar="KEEL_AUDIT_DIR",
        help="Audit directory (segments/, keyring.json, payloads/); default <KEEL_DATA_DIR>/audit, "
        "i.e. .keel/audit, the embedded stack's.",
        show_default=False,
    ),
]
BucketOption = Annotated[
    str | None,
    typer.Option("--bucket", help="Read segments and keyring from this JetStream object store bucket instead."),
]
NatsUrlOption = Annotated[str, typer.Option("--nats-url", envvar="KEEL_NATS_URL", help="NATS server (with --bucket).")]
KeyringOption = Annotated[
    Path | None,
    typer.Option("--keyring", help="Trusted keyring (an out-of-band copy); default: the one in --dir."),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


def default_dir() -> Path:
    """The audit directory the service writes with the same environment (``.keel/audit`` by default)."""
    return audit_dir(KeelSettings())


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(int(Verdict.ERROR))


@dataclass(frozen=True, slots=True)
class _Log:
    """Where one command reads the log: segments, the keyring published next to them, payloads."""

    store: SegmentStore
    published_keyring: KeyringStore
    layout: AuditDirectory
    where: str

    def keyring(self, path: Path | None) -> tuple[Keyring, bool]:
        """The keyring and whether it came from outside the log's own storage."""
        keyring = KeyringFile(path).load() if path is not None else self.published_keyring.load()
        if keyring is None:
            raise AuditError(f"no keyring at {path or self.where}")
        return keyring, path is not None

    def payloads(self, path: Path | None = None) -> DirectoryPayloadStore | None:
        directory = path or self.layout.payloads
        return DirectoryPayloadStore(directory) if directory.is_dir() else None


@contextmanager
def _open_log(directory: Path | None, bucket: str | None = None, nats_url: str = DEFAULT_NATS_URL) -> Iterator[_Log]:
    layout = AuditDirectory(directory or default_dir())
    if bucket is None:
        yield _Log(DirectorySegmentStore(layout.segments), KeyringFile(layout.keyring), layout, str(layout.root))
        return
    with background_loop() as loop:
        bridge = LoopBridge(loop)
        settings = KeelSettings(nats_url=nats_url)
        try:
            nc = bridge.call(lambda: connect(settings, "audit-cli", retry_initial=False, quiet=True))
        except Exception as exc:
            raise AuditError(f"cannot connect to NATS at {nats_url}: {exc}") from exc
        try:
            store = ObjectStoreSegmentStore(nc.jetstream(), bucket, bridge)
            yield _Log(store, store.keyring(), layout, f"object store bucket {bucket}")
        finally:
            bridge.call(nc.close)


@app.command()
def verify(
    directory: DirOption = None,
    bucket: BucketOption = None,
    nats_url: NatsUrlOption = DEFAULT_NATS_URL,
    from_checkpoint: Annotated[
        Path | None,
        typer.Option("--from-checkpoint", help="Trusted checkpoint the log must reach and match."),
    ] = None,
    keyring_path: KeyringOption = None,
    payloads: Annotated[
        Path | None,
        typer.Option("--payloads", help="Erasable payload store to check (default: <dir>/payloads)."),
    ] = None,
    max_age: Annotated[
        float | None,
        typer.Option("--max-age", help="Seconds after which an old newest segment is INCOMPLETE."),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Check every record, root, chain link, signature, key window and the tail; exit 0/2/3 (1: error)."""
    try:
        with _open_log(directory, bucket, nats_url) as log:
            where = log.where
            keyring, independent = log.keyring(keyring_path)
            checkpoint = Checkpoint.load(from_checkpoint) if from_checkpoint else None
            report = verify_log(
                log.store,
                keyring,
                checkpoint=checkpoint,
                payloads=log.payloads(payloads),
                max_age=None if max_age is None else timedelta(seconds=max_age),
                now=datetime.now(UTC),
            )
    except AuditError as exc:
        raise _fail(str(exc)) from exc
    if not independent:
        report.problems.append(
            Problem(
                Kind.KEYRING_NOT_INDEPENDENT,
                Severity.WARNING,
                "the keyring was read from the audit directory itself; pass --keyring with a copy "
                "obtained out of band, or whoever can write the directory can re-sign it",
            )
        )
    if as_json:
        typer.echo(json.dumps(report.to_json(), indent=2))
    else:
        typer.echo(f"Verifying audit log in {where} (stream {keyring.stream})")
        for problem in report.problems:
            where = "" if problem.segment is None else f"[segment {problem.segment}] "
            typer.echo(f"  {problem.severity.value.upper():<10} {problem.kind.value:<24} {where}{problem.message}")
        head = report.head
        typer.echo(f"{report.segments} segments, {report.records} records ({report.events} events)")
        if head is not None:
            typer.echo(
                f"Head: segment {head.segment_index}, stream seq {head.last_seq}, "
                f"tree size {head.tree_size}, sealed {head.closed_at} by key {head.key_id}"
            )
        typer.echo(f"Verdict: {report.verdict.name}")
    raise typer.Exit(report.exit_code)


@app.command()
def prove(
    record: Annotated[str, typer.Argument(help="A record id, or the stream sequence of an event.")],
    directory: DirOption = None,
    bucket: BucketOption = None,
    nats_url: NatsUrlOption = DEFAULT_NATS_URL,
    keyring_path: KeyringOption = None,
    as_json: JsonOption = False,
) -> None:
    """Print an inclusion proof of one record against the newest seal, and check it."""
    try:
        with _open_log(directory, bucket, nats_url) as log:
            keyring, _ = log.keyring(keyring_path)
            proof = prove_inclusion(log.store, record)
    except RecordNotFoundError as exc:
        raise _fail(str(exc)) from exc
    except AuditError as exc:
        raise _fail(str(exc)) from exc
    problems = verify_inclusion_proof(proof, keyring)
    if as_json:
        typer.echo(json.dumps({"proof": proof.to_json(), "valid": not problems, "problems": problems}, indent=2))
    else:
        typer.echo(f"Record:     {proof.record}")
        typer.echo(f"Leaf:       {proof.leaf_index} of tree size {proof.tree_size} (segment {proof.segment_index})")
        for step, sibling in enumerate(proof.path):
            typer.echo(f"Path[{step:>2}]:  {sibling}")
        typer.echo("Proof:      " + ("valid" if not problems else "INVALID: " + "; ".join(problems)))
    raise typer.Exit(int(Verdict.VALID if not problems else Verdict.TAMPERED))


@keys_app.command("generate")
def keys_generate(
    out: Annotated[Path, typer.Option("--out", help="Where to write the PEM private key (must not exist).")],
) -> None:
    """Generate an Ed25519 signing key (PKCS#8 PEM, mode 0600) and print its id and public key."""
    signer = Signer.generate()
    try:
        write_private_key(signer, out)
    except FileExistsError as exc:
        raise _fail(f"{out} exists; refusing to replace a key") from exc
    except OSError as exc:
        raise _fail(f"cannot write {out}: {exc}") from exc
    typer.echo(f"key_id:     {signer.key_id}")
    typer.echo(f"public_key: {encode_public_key(signer.public_key)}")


@keys_app.command("rotate")
def keys_rotate(
    current: Annotated[Path, typer.Option("--current", help="The key the log is signed with now (PEM).")],
    new: Annotated[Path, typer.Option("--new", help="The key to sign with from now on (PEM; `keys generate`).")],
    directory: DirOption = None,
) -> None:
    """Switch the log to a new signing key: a key_change record, signed by the current key, announces the
    new one, and the published keyring retires the old key at that segment. Run it while the audit
    service is stopped (one writer per log), then start the service with KEEL_AUDIT_SIGNING_KEY_FILE
    pointing at the new key."""
    root = directory or default_dir()
    layout = AuditDirectory(root)
    try:
        old_signer, new_signer = load_signer(path=current), load_signer(path=new)
        writer = SegmentWriter(
            DirectorySegmentStore(layout.segments),
            old_signer,
            stream=EVENTS_STREAM,
            keyring=KeyringFile(layout.keyring),
            payloads=DirectoryPayloadStore(layout.payloads),
        )
        sealed = writer.rotate(new_signer)
    except (AuditError, OSError, ValueError) as exc:
        raise _fail(f"cannot rotate the key of {root}: {exc}") from exc
    typer.echo(f"rotated {old_signer.key_id} -> {new_signer.key_id} in segment {sealed.index}")
    typer.echo(f"now start the audit service with KEEL_AUDIT_SIGNING_KEY_FILE={new}")


@app.command()
def erase(
    record_id: Annotated[str, typer.Argument(help="The record whose clear sensitive payload is to be erased.")],
    reason: Annotated[str, typer.Option("--reason", help="Why (recorded in the log).")],
    requested_by: Annotated[str, typer.Option("--by", help="Who asked for the erasure (recorded in the log).")],
    key: Annotated[Path | None, typer.Option("--key", help="The log's current signing key (PEM).")] = None,
    directory: DirOption = None,
) -> None:
    """Erase the clear payload of a redacted record: an `erasure` record is sealed first (signed, with
    who and why), then the payload is deleted; the salted hashes stay, so the log still verifies. Run it
    while the audit service is stopped (one writer per log)."""
    root = directory or default_dir()
    layout = AuditDirectory(root)
    try:
        signer = load_signer(path=key or signing_key_file(KeelSettings()))
        writer = SegmentWriter(
            DirectorySegmentStore(layout.segments),
            signer,
            stream=EVENTS_STREAM,
            keyring=KeyringFile(layout.keyring),
            payloads=DirectoryPayloadStore(layout.payloads),
        )
        sealed = writer.erase(record_id, reason=reason, requested_by=requested_by)
    except (AuditError, OSError, ValueError) as exc:
        raise _fail(f"cannot erase {record_id}: {exc}") from exc
    typer.echo(f"erased the clear payload of {record_id}; the erasure is recorded in segment {sealed.index}")


@app.command()
def checkpoint(
    directory: DirOption = None,
    bucket: BucketOption = None,
    nats_url: NatsUrlOption = DEFAULT_NATS_URL,
    out: Annotated[Path, typer.Option("--out", help="Where to write the checkpoint (must not exist).")] = Path(
        "checkpoint.json"
    ),
    key: Annotated[Path | None, typer.Option("--key", help="Sign the checkpoint with this key.")] = None,
    keyring_path: KeyringOption = None,
) -> None:
    """Verify the log and write a checkpoint of its newest segment (refused if the log is tampered)."""
    try:
        with _open_log(directory, bucket, nats_url) as log:
            keyring, _ = log.keyring(keyring_path)
            report = verify_log(log.store, keyring)
        if report.verdict is Verdict.TAMPERED or report.head is None:
            raise AuditError(f"log verdict is {report.verdict.name}; no checkpoint written (run verify)")
        head = report.head
        point = Checkpoint(
            stream=keyring.stream,
            segment_index=head.segment_index,
            last_seq=head.last_seq,
            tree_size=head.tree_size,
            tree_root=head.tree_root,
            segment_digest=head.digest,
        )
        if key is not None:
            point = point.signed_by(load_signer(key))
        point.save(out)
    except AuditError as exc:
        raise _fail(str(exc)) from exc
    typer.echo(f"checkpoint: segment {head.segment_index}, stream seq {head.last_seq}, tree size {head.tree_size}")


@app.command()
def show(
    run_id: Annotated[str, typer.Argument(help="The run id (4th token of the run's subjects).")],
    directory: DirOption = None,
    bucket: BucketOption = None,
    nats_url: NatsUrlOption = DEFAULT_NATS_URL,
    keyring_path: KeyringOption = None,
    approval_keyring: Annotated[
        Path | None,
        typer.Option(
            "--approval-keyring",
            help="The approval keyring to check decisions' signatures with (default: KEEL_APPROVAL_KEYRING_FILE; "
            "without either, signatures are reported as not checked).",
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Rebuild one run from the segments alone: trigger, decisions and why, attempts, approvals, writes,
    final state, and whether every record of it verified. Exit 0 verified, 2 tampered, 3 incomplete,
    1 no such run (or an error)."""
    ring = approval_keyring or KeelSettings().approval_keyring_file
    if ring is not None and not ring.exists():
        raise _fail(f"no approval keyring at {ring}")
    try:
        with _open_log(directory, bucket, nats_url) as log:
            keyring, _ = log.keyring(keyring_path)
            rows = list(run_records(log.store, keyring, run_id, payloads=log.payloads()))
            # The records of the run can all check out while a segment that held more of them is gone:
            # the verdict includes the whole log's.
            log_verdict = verify_log(log.store, keyring).verdict
    except AuditError as exc:
        raise _fail(str(exc)) from exc
    try:
        verifier = None if ring is None else keyrings.load_keyring(ring, decisions.PURPOSE)
    except keyrings.KeyringError as exc:
        raise _fail(str(exc)) from exc
    report = collect(run_id, rows, log_verdict, verifier)
    if not report.events:
        raise _fail(f"no records of run {run_id} in the audit log")
    doc = report.to_json()
    if as_json:
        typer.echo(json.dumps(doc, indent=2))
    else:
        for line in render_text(doc):
            typer.echo(line)
    raise typer.Exit(doc["exit_code"])
