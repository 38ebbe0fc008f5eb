"""`keel`: the command line of Keel. Every command takes `--nats-url` (default: `KEEL_NATS_URL`, else
the embedded default's URL). `--json` output is one JSON document, documented in docs/cli.md."""

import asyncio
import contextlib
import getpass
import json
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from nats.errors import Error as NatsError

from keel_approval import cli as approval_cli
from keel_audit import cli as audit_cli
from keel_cli import render
from keel_cli.client import KeelClient, KeelError, TriggerRejected
from keel_cli.stack import Stack
from keel_contracts import subjects as s
from keel_contracts.runs import RunStatus
from keel_router.workflow import cli as workflow_cli
from keel_sandbox import cli as sandbox_cli
from keel_shared import decisions, schedules
from keel_shared.connection import connect
from keel_shared.natsserver import NatsServerError
from keel_shared.provisioning import provision
from keel_shared.security import CLI, init_secure
from keel_shared.settings import DEFAULT_NATS_URL, KeelSettings

app = typer.Typer(help="Keel: a durable control layer for AI agents that act on real systems.", no_args_is_help=True)
run_app = typer.Typer(help="Inspect one run.", no_args_is_help=True)
app.add_typer(run_app, name="run")
app.add_typer(workflow_cli.app, name="workflow", help="Validate and list workflow files.")
app.add_typer(sandbox_cli.app, name="sandbox", help="Serve the sandbox systems of record (tickets, CRM, billing...).")
approval_cli.mount(app)
# `keel audit ...` reads the log the audit service writes; --dir defaults to <KEEL_DATA_DIR>/audit
# (.keel/audit, the embedded stack's, when run from the repo). See docs/audit.md.
app.add_typer(audit_cli.app, name="audit")

T = TypeVar("T")

NatsUrl = Annotated[
    str,
    typer.Option("--nats-url", envvar="KEEL_NATS_URL", help="NATS server URL.", show_default=True),
]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print one JSON document.")]


def _run(coro_fn: Callable[[], Awaitable[T]]) -> T:
    try:
        return asyncio.run(coro_fn())  # type: ignore[arg-type]
    except TriggerRejected as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    except KeelError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    except (NatsError, OSError) as exc:  # the server went away mid-command
        typer.echo(f"error: NATS: {exc or type(exc).__name__}", err=True)
        raise typer.Exit(1) from None


def _json_object(text: str, option: str) -> dict[str, Any]:
    """The JSON object given to `option`, or a clear usage error (exit 2)."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        typer.echo(f"error: {option} is not valid JSON: {exc}", err=True)
        raise typer.Exit(2) from None
    if not isinstance(data, dict):
        typer.echo(f"error: {option} must be a JSON object", err=True)
        raise typer.Exit(2)
    return data


def _emit(doc: Any) -> None:
    typer.echo(json.dumps(doc, indent=2, default=str))


@app.command()
def init(
    nats_url: NatsUrl = DEFAULT_NATS_URL,
    secure: Annotated[
        bool,
        typer.Option(
            "--secure",
            help="Instead of provisioning: create one NKEY identity per service and the nats-server "
            "authorization config that limits each to its own subjects (docs/security.md).",
        ),
    ] = False,
    out: Annotated[Path, typer.Option(help="Where --secure writes nats-auth.conf and nkeys/*.nk.")] = Path(
        ".keel/secure"
    ),
) -> None:
    """Create or update Keel's streams, buckets and consumers (an admin step)."""
    if secure:
        layout = init_secure(out, KeelSettings())
        typer.echo(f"wrote {layout.auth_config} (include it in the nats-server config)")
        for name, identity in layout.identities.items():
            typer.echo(f"  {name:<10} {identity.public_key}  seed {identity.seed_file} (0600)")
        typer.echo("then: KEEL_NATS_NKEY_SEED_FILE=<admin seed> keel init   (provisioning needs the admin identity)")
        return

    async def go() -> None:
        settings = KeelSettings(nats_url=nats_url)
        try:
            nc = await connect(settings, "admin", retry_initial=False, quiet=True)
        except Exception as exc:
            raise KeelError(f"cannot connect to NATS at {nats_url}: {exc}") from exc
        try:
            changed = await provision(nc.jetstream(), settings)
        finally:
            await nc.close()
        for line in changed:
            typer.echo(f"changed: {line}")
        typer.echo(
            f"provisioned {s.EVENTS_STREAM}, {s.COMMANDS_STREAM}, {s.DLQ_STREAM}, {s.RUNS_BUCKET}, {s.CLAIMS_BUCKET}"
        )
        for what, keys in (("approval decision", decisions.KEYS), ("router schedule", schedules.KEYS)):
            signer = keys.ensure(settings)
            typer.echo(
                f"{what} key {signer.key_id}: {keys.key_path(settings)} (0600); its keyring "
                f"{keys.keyring_path(settings)}"
            )

    _run(go)


@app.command()
def up(
    data_dir: Annotated[Path, typer.Option(help="Where NATS, logs and local stores keep their data.")] = Path(".keel"),
    nats_port: Annotated[int, typer.Option(help="Port of the embedded nats-server (127.0.0.1).")] = 4244,
    http_port: Annotated[int, typer.Option(help="First HTTP port; services use the ones after it.")] = 8420,
    nats_url: Annotated[str | None, typer.Option(help="Use this NATS server instead of starting one.")] = None,
    executors: Annotated[int, typer.Option(min=1, max=32, help="Executor processes.")] = 1,
    sandbox: Annotated[
        bool, typer.Option(help="Also serve the sandbox systems of record the example workflows write to.")
    ] = True,
    workflows_dir: Annotated[Path, typer.Option(envvar="KEEL_WORKFLOWS_DIR")] = Path("workflows"),
    demo: Annotated[bool, typer.Option(help="Run the demo workflow once the stack is up.")] = False,
    exit_after_demo: Annotated[bool, typer.Option(help="Stop the stack after the demo.")] = False,
    secure: Annotated[
        bool, typer.Option("--secure", help="One NKEY identity per service, each limited to its subjects.")
    ] = False,
) -> None:
    """Run Keel on this machine: nats-server, streams, and every service, until Ctrl-C."""
    secure_dir = data_dir / "secure" if secure else None
    stack = Stack(
        data_dir, nats_port, http_port, nats_url, executors, workflows_dir, secure_dir=secure_dir, sandbox=sandbox
    )

    async def go() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await stack.start()
            health = await stack.wait_healthy()
            typer.echo("Keel is up:")
            for name, where in stack.describe():
                typer.echo(f"  {name:<11} {where}")
            unhealthy = [k for k, ok in health.items() if not ok]
            if unhealthy:
                typer.echo(f"warning: not healthy yet: {', '.join(unhealthy)}", err=True)
            typer.echo(f"Try: keel trigger demo --input '{{}}' --key k1 --wait   (KEEL_NATS_URL={stack.nats_url})")
            if demo:
                seed = {"nkeys_seed": str(stack.secure.seed_file(CLI))} if stack.secure else {}
                code = await _demo(stack.nats_url, **seed)
                if exit_after_demo:
                    return code
            typer.echo("Press Ctrl-C to stop.")
            await stack.supervise(stop)
            return 0
        finally:
            typer.echo("stopping Keel...")
            await asyncio.to_thread(stack.stop)
            typer.echo("stopped.")

    try:
        code = asyncio.run(go())
    except (NatsServerError, KeelError, NatsError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    raise typer.Exit(code)


async def _demo(nats_url: str, **options: Any) -> int:
    import time

    async with await KeelClient.connect(nats_url, **options) as keel:
        key = f"demo-{int(time.time())}"
        typer.echo(f"\nDemo: keel trigger demo --key {key} --wait")
        answer = await keel.trigger("demo", {"customer": "ACME", "amount": 42}, key, wait=True, timeout=60)
        again = await keel.trigger("demo", {"customer": "ACME", "amount": 42}, key)
        typer.echo(
            f"run {answer.run_id} finished: {answer.status}; a second trigger with the same key joined={again.joined}"
        )
        view = await keel.run(answer.run_id)
        if view is not None:
            for line in render.run_header(view):
                typer.echo("  " + line)
        for entry in await keel.timeline(answer.run_id):
            typer.echo("  " + render.timeline_line(entry))
        return 0 if answer.status == RunStatus.DONE else 1


@app.command()
def trigger(
    workflow: Annotated[str, typer.Argument(help="Workflow name.")],
    input_json: Annotated[str, typer.Option("--input", help="Trigger input, a JSON object.")] = "{}",
    key: Annotated[
        str | None, typer.Option("--key", help="Intent key: the same key always means the same run.")
    ] = None,
    source: Annotated[str, typer.Option(help="Trigger source (a subject token).")] = "cli",
    actor: Annotated[
        str | None,
        typer.Option("--actor", help="Who is asking (recorded on the run; they cannot approve its writes)."),
    ] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Wait until the run finishes.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for an answer (or the end with --wait).")] = 60.0,
    as_json: JsonFlag = False,
    nats_url: NatsUrl = DEFAULT_NATS_URL,
) -> None:
    """Start a run of WORKFLOW, or join the run its intent key already has."""
    data = _json_object(input_json, "--input")

    async def go() -> Any:
        async with await KeelClient.connect(nats_url) as keel:
            try:
                return await keel.trigger(workflow, data, key, source=source, wait=wait, timeout=timeout, actor=actor)
            except ValueError as exc:  # an invalid workflow or source token
                raise KeelError(str(exc)) from None

    answer = _run(go)
    if as_json:
        _emit(answer.to_json())
    else:
        typer.echo(f"run {answer.run_id} ({'joined existing run' if answer.joined else 'started'})")
        if answer.status:
            typer.echo(f"status {answer.status}: {answer.reason}")
    if wait and answer.status not in (None, RunStatus.DONE):
        raise typer.Exit(1)


@app.command()
def runs(
    state: Annotated[RunStatus | None, typer.Option("--state", help="Only runs in this state.")] = None,
    as_json: JsonFlag = False,
    nats_url: NatsUrl = DEFAULT_NATS_URL,
) -> None:
    """List runs and their current state."""

    async def go() -> Any:
        async with await KeelClient.connect(nats_url) as keel:
            return await keel.runs(state.value if state else None)

    views = _run(go)
    if as_json:
        _emit({"runs": [v.model_dump(mode="json") for v in views]})
        return
    for view in views:
        typer.echo(render.run_line(view))
    if not views:
        typer.echo("no runs" + (f" in state {state.value}" if state else ""))


@run_app.command("show")
def run_show(
    run_id: Annotated[str, typer.Argument(help="Run id.")],
    as_json: JsonFlag = False,
    nats_url: NatsUrl = DEFAULT_NATS_URL,
) -> None:
    """A run's state and its event timeline."""

    async def go() -> Any:
        async with await KeelClient.connect(nats_url) as keel:
            try:
                return await keel.run(run_id), await keel.timeline(run_id)
            except ValueError as exc:
                raise KeelError(str(exc)) from None

    view, timeline = _run(go)
    if view is None and not timeline:
        typer.echo(f"error: no run {run_id}", err=True)
        raise typer.Exit(1)
    if as_json:
        _emit(
            {
                "run": view.model_dump(mode="json") if view else None,
                "events": [e.to_json() for e in timeline],
            }
        )
        return
    if view is not None:
        for line in render.run_header(view):
            typer.echo(line)
    typer.echo("")
    for entry in timeline:
        typer.echo(render.timeline_line(entry))


def _operator() -> str:
    return os.environ.get("KEEL_OPERATOR") or getpass.getuser()


@run_app.command("input")
def run_input(
    run_id: Annotated[str, typer.Argument(help="Run id (parked in needs_human).")],
    input_json: Annotated[str, typer.Option("--json", help="The input, a JSON object.")],
    step: Annotated[str | None, typer.Option(help="Only if the run waits at this step.")] = None,
    by: Annotated[str | None, typer.Option(help="Who answers (default: $KEEL_OPERATOR, else the local user).")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the router's answer.")] = 30.0,
    as_json: Annotated[bool, typer.Option("--output-json", help="Print one JSON document.")] = False,
    nats_url: NatsUrl = DEFAULT_NATS_URL,
) -> None:
    """Give a parked run the input it waits for; invalid input is refused and the run stays parked."""
    data = _json_object(input_json, "--json")

    async def go() -> Any:
        async with await KeelClient.connect(nats_url) as keel:
            try:
                return await keel.human_input(
                    run_id, data, submitted_by=by or _operator(), step_id=step, timeout=timeout
                )
            except ValueError as exc:
                raise KeelError(str(exc)) from None

    answer = _run(go)
    if as_json:
        _emit(answer.to_json())
    elif answer.accepted:
        typer.echo(f"input accepted for step {answer.step_id}; run {run_id} continues")
    else:
        typer.echo(f"error: input refused; run {run_id} stays parked:", err=True)
        for problem in answer.problems:
            typer.echo(f"  {problem}", err=True)
    if not answer.accepted:
        raise typer.Exit(1)


@run_app.command("cancel")
def run_cancel(
    run_id: Annotated[str, typer.Argument(help="Run id.")],
    reason: Annotated[str, typer.Option(help="Why, recorded on the run.")] = "cancelled by an operator",
    by: Annotated[str | None, typer.Option(help="Who cancels (default: $KEEL_OPERATOR, else the local user).")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the router's answer.")] = 30.0,
    as_json: JsonFlag = False,
    nats_url: NatsUrl = DEFAULT_NATS_URL,
) -> None:
    """Cancel a run: no new step or write starts (a write already sent finishes; nothing follows it)."""

    async def go() -> Any:
        async with await KeelClient.connect(nats_url) as keel:
            try:
                return await keel.cancel(run_id, requested_by=by or _operator(), reason=reason, timeout=timeout)
            except ValueError as exc:
                raise KeelError(str(exc)) from None

    view = _run(go)
    if as_json:
        _emit(view.model_dump(mode="json"))
    else:
        typer.echo(f"run {run_id} is {view.status}: {view.reason}")
    if view.status != RunStatus.CANCELLED:
        raise typer.Exit(1)


@app.command()
def watch(
    run_id: Annotated[str | None, typer.Argument(help="Follow one run (default: every run).")] = None,
    workflow: Annotated[str | None, typer.Option(help="Follow every run of one workflow.")] = None,
    from_start: Annotated[bool, typer.Option(help="Replay stored events first.")] = False,
    after: Annotated[
        int | None, typer.Option(help="Resume after this stream sequence (the `seq` of the last event you saw).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON document per line.")] = False,
    nats_url: NatsUrl = DEFAULT_NATS_URL,
) -> None:
    """Print run events live, as they are stored."""
    if run_id and workflow:
        subject = s.run_filter(s.token(workflow, "workflow"), s.token(run_id, "run id"))
    elif run_id:
        subject = s.any_workflow_run_filter(s.token(run_id, "run id"))
    elif workflow:
        subject = s.workflow_filter(s.token(workflow, "workflow"))
    else:
        subject = s.EVENTS_ALL

    async def go() -> None:
        async with await KeelClient.connect(nats_url) as keel:
            async for entry in keel.watch(subject, from_start=from_start, after=after):
                typer.echo(json.dumps(entry.to_json(), default=str) if as_json else render.timeline_line(entry))
                sys.stdout.flush()

    with contextlib.suppress(KeyboardInterrupt):
        _run(go)


keys_app = typer.Typer(
    help="The signing keys of the approval service (decisions) and the router (writes) (docs/security.md).",
    no_args_is_help=True,
)
app.add_typer(keys_app, name="keys")


@keys_app.command("rotate-approval")
def keys_rotate_approval() -> None:
    """Give the approval service a new decision key. The old one is retired, not revoked: grants it signed
    before now still unlock their writes. Restart the approval service to sign with the new key; router
    and executors read the keyring again by themselves."""
    settings = KeelSettings()
    old, new = decisions.KEYS.rotate(settings)
    typer.echo(f"retired {old}, now signing with {new}; keyring {decisions.KEYS.keyring_path(settings)}")


@keys_app.command("rotate-router")
def keys_rotate_router() -> None:
    """Give the router a new key for signing the writes it schedules. The old one is retired, not revoked:
    writes it signed before now are still sent. Restart the router(s); executors read the keyring again by
    themselves."""
    settings = KeelSettings()
    old, new = schedules.KEYS.rotate(settings)
    typer.echo(f"retired {old}, now signing with {new}; keyring {schedules.KEYS.keyring_path(settings)}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
