"""Remote commands: talk to a running normsearch server through its REST API (``api.client``).

    normsearch submit SPEC.yaml [--wait] [--idempotency-key K]
    normsearch ls [--status S] [--limit N]
    normsearch status ID
    normsearch cancel ID | retry ID
    normsearch download ID --out DIR

Every command takes ``--url`` (env ``NORMSEARCH_URL``, default http://127.0.0.1:8000) and
``--token`` (env ``NORMSEARCH_TOKEN``; never printed). An error answer prints one line on stderr,
``error: <message>``, and exits 2 when the request was at fault (4xx) or the server cannot be
reached, 1 for a server error;
``submit --wait`` exits 0 when the job succeeded and 1 when it failed or was cancelled.

The commands build their client with ``make_client`` (tests replace it to talk to an in-process
app). This module imports ``api.cli`` lazily: ``api.cli`` imports it while being imported.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

from api.client import ApiError, NormsearchClient, ServerUnreachable, WaitTimeout
from api.schemas import JobDetail, JobStatus
from cli.errors import EXPECTED_FAILURE, error_line, fail
from cli.render import (
    artifacts_table,
    bn_trend_table,
    console,
    err_console,
    events_table,
    job_summary_table,
    jobs_table,
    output_width,
    print_report,
    print_wide,
    size_text,
    status_text,
    verdict_lines,
    when_text,
)
from cli.specfile import load_spec_file

DEFAULT_URL = "http://127.0.0.1:8000"


UrlOption = Annotated[
    str,
    typer.Option("--url", envvar="NORMSEARCH_URL", help="The normsearch server.", show_envvar=True),
]
TokenOption = Annotated[
    str | None,
    typer.Option(
        "--token",
        envvar="NORMSEARCH_TOKEN",
        help="API token (`normsearch token create`).",
        show_default=False,
        show_envvar=True,
    ),
]
JobIdArgument = Annotated[str, typer.Argument(help="The job's id.", show_default=False)]


def make_client(url: str, token: str | None) -> NormsearchClient:
    """The client every command uses (the seam tests replace)."""
    return NormsearchClient(url, token)


def _fail(message: str, *, code: int) -> typer.Exit:
    return fail(message, code=code)


def report_api_error(error: ApiError) -> typer.Exit:
    """Print an API error as one ``error:`` line (one per field at fault when several are); the
    exit to raise: 2 for 4xx, else 1."""
    fields = [e for e in error.errors if isinstance(e, dict) and e.get("field")]
    if len(fields) > 1:
        for item in fields:
            error_line(f"{item['field']}: {item.get('message', '')}")
    else:
        message = error.message
        if error.field and error.field not in message:
            message += f" (field {error.field})"
        if error.status == 401:
            message += " (check --token / NORMSEARCH_TOKEN; `normsearch token create` makes one)"
        error_line(message)
    return typer.Exit(code=EXPECTED_FAILURE if error.is_input_error else 1)


@contextmanager
def remote(url: str, token: str | None) -> Iterator[NormsearchClient]:
    """A client for one command; API errors become a message and an exit code."""
    if not token:
        raise _fail(
            "no API token: pass --token or set NORMSEARCH_TOKEN (`normsearch token create` on "
            "the server makes one)",
            code=2,
        )
    try:
        client = make_client(url, token)
    except ValueError as error:  # a malformed URL
        raise _fail(str(error), code=2) from None
    try:
        with client:
            yield client
    except ServerUnreachable as error:
        raise fail(
            f"{error.message} (is the server running? set --url or NORMSEARCH_URL)"
        ) from None
    except ApiError as error:
        raise report_api_error(error) from None


def follow_job(client: NormsearchClient, job_id: str, *, poll_s: float, timeout_s: float | None):
    """Wait for the job with a live progress bar, printing each lifecycle event once."""
    printed: set[int] = set()
    with Progress(
        TextColumn("[bold]{task.fields[job]}[/bold]"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as progress:
        task = progress.add_task("job", total=1.0, job=job_id[:12], status="")

        def on_update(job: JobDetail) -> None:
            for event in job.events:
                if event.id not in printed:
                    printed.add(event.id)
                    message = f": {escape(event.message)}" if event.message else ""
                    progress.console.print(
                        f"{when_text(event.at)}  {status_text(event.to_status)}{message}"
                    )
            progress.update(task, completed=job.progress, status=status_text(job.status))

        job = client.wait(job_id, poll_s=poll_s, timeout_s=timeout_s, on_update=on_update)
        if job.status == JobStatus.succeeded:
            progress.update(task, completed=1.0)
    return job


# --------------------------------------------------------------------------- commands
def submit(
    spec_file: Annotated[Path, typer.Argument(help="Job spec (YAML or JSON).", show_default=False)],
    wait: Annotated[
        bool, typer.Option("--wait", help="Follow the job until it finishes; show the result.")
    ] = False,
    idempotency_key: Annotated[
        str | None,
        typer.Option(help="Submit safely again: the same key returns the first job."),
    ] = None,
    name: Annotated[
        str | None,
        typer.Option(help="A label for the job (at most 100 characters; `ls` shows it)."),
    ] = None,
    poll: Annotated[
        float, typer.Option(min=0.1, help="With --wait: seconds between polls without events.")
    ] = 2.0,
    timeout: Annotated[
        float | None, typer.Option(min=1, help="With --wait: give up after this many seconds.")
    ] = None,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
) -> None:
    """Validate a job spec here, then queue it on the server (exit 1 with --wait when the job
    fails or is cancelled)."""
    spec = load_spec_file(spec_file)
    with remote(url, token) as client:
        job = client.submit(spec, idempotency_key=idempotency_key, name=name)
        console.print(f"job {job.id} {status_text(job.status)}")
        if not wait:
            console.print(f"follow it with: normsearch status {job.id}")
            return
        try:
            job = follow_job(client, job.id, poll_s=poll, timeout_s=timeout)
        except KeyboardInterrupt:
            err_console.print(
                f"stopped waiting; job {job.id} goes on on the server "
                f"(`normsearch cancel {job.id}` stops it)"
            )
            raise typer.Exit(code=130) from None
        except WaitTimeout as error:
            raise _fail(str(error), code=1) from None
        if job.status != JobStatus.succeeded:
            reason = f": {job.error}" if job.error else ""
            raise _fail(f"job {job.id} {job.status}{reason}", code=1)
        print_report(client.report(job.id))
        console.print(f"download the outputs with: normsearch download {job.id} --out DIR")


def list_jobs(
    status: Annotated[
        list[JobStatus] | None,
        typer.Option("--status", "-s", help="Only jobs in this status (repeatable)."),
    ] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, max=200, help="At most.")] = 20,
    offset: Annotated[int, typer.Option(min=0, help="Skip this many (paging).")] = 0,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
) -> None:
    """List your jobs, newest first."""
    with remote(url, token) as client:
        page = client.list_jobs([s.value for s in status or []] or None, limit=limit, offset=offset)
    if not page.items:
        console.print("no jobs" if page.total == 0 else f"no jobs past offset {offset}")
        return
    shown = f"{offset + 1}-{offset + len(page.items)} of {page.total}"
    # The result column is long ("plan 0.981 ± 0.004 (4 seeds, final epoch)"): one line per
    # job in a log file too.
    table = jobs_table(page.items, title=f"jobs ({shown})", width=output_width(180))
    print_wide(table, needed=180)


def status(job_id: JobIdArgument, url: UrlOption = DEFAULT_URL, token: TokenOption = None) -> None:
    """A job's state, its lifecycle events and its outputs."""
    with remote(url, token) as client:
        job = client.get_job(job_id)
        report = _report_or_none(client, job)
    console.print(job_summary_table(job))
    if job.events:
        console.print(events_table(job))
    if job.artifacts:
        console.print(artifacts_table(job))
    if report is not None:
        for line in verdict_lines(report.get("verification")):
            console.print(line)
        by_batch_size = (report.get("recommendation") or {}).get("by_batch_size") or {}
        trend = bn_trend_table(by_batch_size) if by_batch_size else None
        if trend is not None:
            console.print(trend)


def _report_or_none(client: NormsearchClient, job: JobDetail) -> dict | None:
    """A succeeded job's report.json (the verdict and the BN trend of ``status``); None when the
    job has none to show (not succeeded, or its report is missing)."""
    if job.status != JobStatus.succeeded:
        return None
    try:
        return client.report(job.id)
    except ApiError as error:
        if error.status in (404, 409):
            return None
        raise


def cancel(job_id: JobIdArgument, url: UrlOption = DEFAULT_URL, token: TokenOption = None) -> None:
    """Cancel a queued or running job (a running one reads cancelling until its worker has
    stopped the trials, then cancelled)."""
    with remote(url, token) as client:
        job = client.cancel(job_id)
    console.print(f"job {job.id} {status_text(job.status)}")
    if job.status == JobStatus.cancelling:
        console.print(
            f"its worker is stopping the trials; `normsearch status {job.id}` shows cancelled "
            "once it has"
        )


def retry(job_id: JobIdArgument, url: UrlOption = DEFAULT_URL, token: TokenOption = None) -> None:
    """Run a failed or cancelled job again, from the start."""
    with remote(url, token) as client:
        job = client.retry(job_id)
    console.print(f"job {job.id} {status_text(job.status)} (run {job.run})")


def download(
    job_id: JobIdArgument,
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Directory to write into.", show_default=False)
    ],
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
) -> None:
    """Download a succeeded job's plan.json, plan.yaml and checkpoint.zip (the configuration the
    verdict chose), report.json, and search_plan.json and search_checkpoint.zip (what the search
    itself produced), each checked against the server's SHA-256 of the file."""
    with remote(url, token) as client:
        written = client.download_all(job_id, out)
    for path in written.values():
        console.print(f"wrote {escape(str(path))} ({size_text(path.stat().st_size)})")


def register(app: typer.Typer) -> None:
    """Add this module's commands to the ``normsearch`` app."""
    app.command("submit")(submit)
    app.command("ls")(list_jobs)
    app.command("status")(status)
    app.command("cancel")(cancel)
    app.command("retry")(retry)
    app.command("download")(download)
