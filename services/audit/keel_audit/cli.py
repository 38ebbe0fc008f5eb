"""``keel audit ...``: verify, prove, keys, checkpoint, show. Mounted by the main CLI as a sub-app.

Exit codes of ``verify`` (and ``prove``): 0 valid, 2 tampered, 3 incomplete, 1 error.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import typer

from keel_audit.checkpoint import Checkpoint
from keel_audit.erasure import DirectoryPayloadStore
from keel_audit.errors import AuditError, RecordNotFoundError
from keel_audit.keyring import Keyring, KeyringFile
from keel_audit.proofs import prove_inclusion, verify_inclusion_proof
from keel_audit.reconstruct import run_records
from keel_audit.signing import Signer, encode_public_key, load_signer, write_private_key
from keel_audit.store import AuditDirectory, DirectorySegmentStore
from keel_audit.verify import Kind, Problem, Severity, Verdict, verify_log

app = typer.Typer(name="audit", help="Verify, prove and read the signed audit log.", no_args_is_help=True)
keys_app = typer.Typer(help="Manage audit signing keys.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")

DirOption = Annotated[
    Path,
    typer.Option("--dir", envvar="KEEL_AUDIT_DIR", help="Audit directory (segments/, keyring.json, payloads/)."),
]
KeyringOption = Annotated[
    Path | None,
    typer.Option("--keyring", help="Trusted keyring (an out-of-band copy); default: the one in --dir."),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
DEFAULT_DIR = Path(".keel/audit")


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(int(Verdict.ERROR))


def _keyring(layout: AuditDirectory, path: Path | None) -> tuple[Keyring, bool]:
    """The keyring and whether it came from outside the audit directory."""
    keyring = KeyringFile(path or layout.keyring).load()
    if keyring is None:
        raise AuditError(f"no keyring at {path or layout.keyring}")
    return keyring, path is not None


@app.command()
def verify(
    directory: DirOption = DEFAULT_DIR,
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
    layout = AuditDirectory(directory)
    try:
        keyring, independent = _keyring(layout, keyring_path)
        checkpoint = Checkpoint.load(from_checkpoint) if from_checkpoint else None
        payload_dir = payloads or layout.payloads
        report = verify_log(
            DirectorySegmentStore(layout.segments),
            keyring,
            checkpoint=checkpoint,
            payloads=DirectoryPayloadStore(payload_dir) if payload_dir.is_dir() else None,
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
        typer.echo(f"Verifying audit log in {directory} (stream {keyring.stream})")
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
    directory: DirOption = DEFAULT_DIR,
    keyring_path: KeyringOption = None,
    as_json: JsonOption = False,
) -> None:
    """Print an inclusion proof of one record against the newest seal, and check it."""
    layout = AuditDirectory(directory)
    try:
        keyring, _ = _keyring(layout, keyring_path)
        proof = prove_inclusion(DirectorySegmentStore(layout.segments), record)
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


@app.command()
def checkpoint(
    directory: DirOption = DEFAULT_DIR,
    out: Annotated[Path, typer.Option("--out", help="Where to write the checkpoint (must not exist).")] = Path(
        "checkpoint.json"
    ),
    key: Annotated[Path | None, typer.Option("--key", help="Sign the checkpoint with this key.")] = None,
    keyring_path: KeyringOption = None,
) -> None:
    """Verify the log and write a checkpoint of its newest segment (refused if the log is tampered)."""
    layout = AuditDirectory(directory)
    try:
        keyring, _ = _keyring(layout, keyring_path)
        report = verify_log(DirectorySegmentStore(layout.segments), keyring)
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
    directory: DirOption = DEFAULT_DIR,
    keyring_path: KeyringOption = None,
    as_json: JsonOption = False,
) -> None:
    """Print the records of one run as a timeline, each marked verified or not."""
    layout = AuditDirectory(directory)
    try:
        keyring, _ = _keyring(layout, keyring_path)
        payloads = DirectoryPayloadStore(layout.payloads) if layout.payloads.is_dir() else None
        rows = list(run_records(DirectorySegmentStore(layout.segments), keyring, run_id, payloads=payloads))
    except AuditError as exc:
        raise _fail(str(exc)) from exc
    if as_json:
        out: list[dict[str, Any]] = [
            {
                "leaf_index": r.leaf_index,
                "segment": r.segment_index,
                "verified": r.verified,
                "payload": r.payload,
                "record": r.record,
            }
            for r in rows
        ]
        typer.echo(json.dumps(out, indent=2))
    else:
        if not rows:
            typer.echo(f"no records of run {run_id}")
        for r in rows:
            mark = "ok " if r.verified else "BAD"
            seq = "" if r.seq is None else str(r.seq)
            typer.echo(f"{mark} {seq:>8}  {r.time or '':<27}  {r.event_type:<28}  {json.dumps(r.body, sort_keys=True)}")
    raise typer.Exit(0 if all(r.verified for r in rows) else int(Verdict.TAMPERED))
