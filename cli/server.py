"""Server processes: ``normsearch serve`` (the API), ``normsearch worker`` (a Celery worker) and
``normsearch up`` (both, supervised, on a SQLite database and a SQLite broker: no servers).

Settings come from ``NORMSEARCH_*`` environment variables; options override a few of them. Heavy
modules (uvicorn, Celery's worker, the embedded supervisor) are imported inside the commands.
"""

from __future__ import annotations

import signal
import threading
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from cli.errors import fail
from cli.specfile import load_spec_file

API_FACTORY = "api.app:create_app"

HostOption = Annotated[
    str | None, typer.Option(help="Bind address (default: NORMSEARCH_API_HOST, 127.0.0.1).")
]
PortOption = Annotated[
    int | None,
    typer.Option(min=1, max=65535, help="Port (default: NORMSEARCH_API_PORT, 8000)."),
]


class Pool(StrEnum):
    solo = "solo"
    prefork = "prefork"
    threads = "threads"


def serve(
    host: HostOption = None,
    port: PortOption = None,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
    factory: Annotated[str, typer.Option(hidden=True, help="ASGI app factory.")] = API_FACTORY,
) -> None:
    """Run the HTTP API (uvicorn). Apply the migrations first (`normsearch db upgrade`)."""
    import uvicorn

    from service.settings import get_settings

    settings = get_settings()
    uvicorn.run(
        factory,
        factory=True,
        host=host if host is not None else settings.api_host,
        port=port if port is not None else settings.api_port,
        log_level=log_level,
        # Open event streams must not hold a shutdown (SIGTERM) up for long.
        timeout_graceful_shutdown=10,
    )


def worker(
    concurrency: Annotated[
        int,
        typer.Option(
            min=1,
            help="Searches run at once by this worker (each search parallelises its trials "
            "with Ray); more than 1 needs --pool prefork or threads.",
        ),
    ] = 1,
    pool: Annotated[
        Pool | None,
        typer.Option(help="Celery pool (default: solo for one search at a time, else prefork)."),
    ] = None,
    hostname: Annotated[
        str | None, typer.Option(help="Worker node name (Celery's default: celery@HOST).")
    ] = None,
    loglevel: Annotated[str, typer.Option(help="Celery log level.")] = "INFO",
) -> None:
    """Run a Celery worker on the search queue (broker: NORMSEARCH_BROKER_URL)."""
    from service.celery_app import SEARCH_QUEUE, make_celery
    from service.settings import get_settings

    chosen = pool or (Pool.solo if concurrency == 1 else Pool.prefork)
    if chosen is Pool.solo and concurrency != 1:
        raise typer.BadParameter("the solo pool runs one search at a time", param_hint="--pool")
    argv = [
        "worker",
        f"--pool={chosen.value}",
        f"--concurrency={concurrency}",
        "--queues",
        SEARCH_QUEUE,
        f"--loglevel={loglevel}",
        # No worker-to-worker chatter: searches are independent and long.
        "--without-gossip",
        "--without-mingle",
    ]
    if hostname:
        argv += ["--hostname", hostname]
    settings = get_settings()
    if settings.storage_uri:  # every job would fail on it: say so now, in one line
        from service.storage import StorageError, open_storage, probe

        try:
            probe(open_storage(settings.storage_uri))
        except StorageError as error:
            raise fail(str(error)) from None
    make_celery(settings).worker_main(argv)


def up(
    host: HostOption = None,
    port: PortOption = None,
    runs_dir: Annotated[
        Path | None,
        typer.Option(
            help="Where the database, the broker, the logs and the searches live "
            "(default: NORMSEARCH_RUNS_DIR, runs)."
        ),
    ] = None,
    ready_timeout: Annotated[
        float, typer.Option(min=1, help="Seconds to wait for the API to answer.")
    ] = 120.0,
    factory: Annotated[str, typer.Option(hidden=True, help="ASGI app factory.")] = API_FACTORY,
    submit: Annotated[
        Path | None,
        typer.Option(
            help="Once up, submit this job spec as user 'demo' (token saved to RUNS/demo-token), "
            "follow it to the end and print the recommendation; then keep serving."
        ),
    ] = None,
    exit_when_done: Annotated[
        bool, typer.Option(help="With --submit: stop once the job has finished.")
    ] = False,
) -> None:
    """Run the whole service on this machine with nothing to install: a SQLite database and a
    SQLite-backed Celery broker under the runs directory, migrations applied, the API and one
    worker (restarted, with back-off, whenever it dies). Ctrl-C stops it."""
    from cli.embedded import EmbeddedError, EmbeddedStack, embedded_config

    spec = None
    if submit is not None:
        spec = load_spec_file(submit)  # a bad spec fails before anything starts
    config = embedded_config(runs_dir=runs_dir, host=host, port=port)
    log_dir = config.runs_dir / "logs"
    stack = EmbeddedStack(config, app_factory=factory, log_dir=log_dir)
    stop = threading.Event()
    previous = {
        sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)
    }
    failure = None
    outcome: dict[str, int] = {}
    try:
        typer.echo(
            f"normsearch up: runs {config.runs_dir}, database {_shown(config.database_url)}, "
            f"broker {_shown(config.broker_url)}, logs {log_dir}/{{api,worker}}.log"
        )
        try:
            stack.start(ready_timeout_s=ready_timeout, cancel=stop)
        except EmbeddedError as error:
            raise fail(f"normsearch up: {error}") from None
        if not stop.is_set():
            typer.secho(f"normsearch is up at {config.base_url}  (Ctrl-C to stop)", bold=True)
            if spec is not None:
                demo = threading.Thread(
                    target=_run_demo,
                    args=(config, spec, stop, outcome, exit_when_done),
                    name="normsearch-demo",
                    daemon=True,
                )
                demo.start()
            failure = stack.supervise(stop)
    finally:
        stack.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if failure is not None:
        typer.secho(f"normsearch up: {failure}; stopped", fg="red", err=True)
        raise typer.Exit(code=1)
    typer.echo("normsearch up: stopped")
    if outcome.get("exit_code"):
        raise typer.Exit(code=outcome["exit_code"])


DEMO_USER = "demo"
DEMO_TOKEN_FILE = "demo-token"


def demo_token(config) -> str:
    """The demo user's token: reused from RUNS/demo-token (mode 600) or created and saved."""
    from service import auth
    from service.db import make_engine, make_session_factory

    path = Path(config.runs_dir) / DEMO_TOKEN_FILE
    engine = make_engine(config.database_url)
    try:
        with make_session_factory(engine)() as session, session.begin():
            if path.is_file():
                raw = path.read_text().strip()
                if auth.authenticate(session, raw) is not None:
                    return raw
            user = auth.get_or_create_user(session, name=DEMO_USER)
            raw, _ = auth.create_token(session, user=user, name="make demo")
    finally:
        engine.dispose()
    path.touch(mode=0o600)
    path.write_text(raw + "\n")
    return raw


def _run_demo(config, spec, stop: threading.Event, outcome: dict, exit_when_done: bool) -> None:
    """Submit ``spec`` through the API like any client, follow it, print the result."""
    from api.client import ApiError
    from api.schemas import JobStatus
    from cli.remote import follow_job, make_client
    from cli.render import console, print_lines, print_report

    code = 1
    try:
        token = demo_token(config)
        with make_client(config.base_url, token) as client:
            job = client.submit(spec)
            console.print(f"submitted job {job.id} ({job.arch} on {job.dataset})")
            job = follow_job(client, job.id, poll_s=2.0, timeout_s=None)
            if job.status == JobStatus.succeeded:
                print_report(client.report(job.id))
                code = 0
            else:
                console.print(f"[red]job {job.id} {job.status}[/red]: {job.error or ''}")
        token_path = Path(config.runs_dir) / DEMO_TOKEN_FILE
        # Plain lines, never wrapped (by rich or otherwise): each command is on a line of its
        # own, so that it pastes whole from a narrow terminal or a log file.
        print_lines(
            "",
            f"web UI: {config.base_url}/#/jobs/{job.id}",
            f"API: {config.base_url}/api/v1 (OpenAPI: {config.base_url}/api/v1/openapi.json)",
            f"token of user '{DEMO_USER}' (in {token_path}); to use it from this shell:",
            f"  export NORMSEARCH_TOKEN=$(cat {token_path})",
            "outputs:",
            f"  normsearch download {job.id} --out out/demo --url {config.base_url}",
        )
    except ApiError as error:
        console.print(f"[red]demo failed[/red]: {error}")
    except Exception as error:  # the server keeps serving; say what went wrong
        console.print(f"[red]demo failed[/red]: {type(error).__name__}: {error}")
    outcome["exit_code"] = code
    if exit_when_done:
        stop.set()
    else:
        console.print("serving until Ctrl-C")


def _shown(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a SQLAlchemy URL (e.g. redis://): shown as given
        return url


def register(app: typer.Typer) -> None:
    """Add this module's commands to the ``normsearch`` app."""
    app.command()(serve)
    app.command()(worker)
    app.command()(up)
