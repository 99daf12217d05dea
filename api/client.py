"""A typed Python client of the normsearch REST API (``/api/v1``), on httpx.

    with NormsearchClient("http://127.0.0.1:8000", token) as client:
        job = client.submit({"model": {"arch": "resnet20"}, "dataset": {"kind": "digits"}})
        job = client.wait(job.id, on_update=lambda j: print(j.status, j.progress))
        if job.status == JobStatus.succeeded:
            client.download_all(job.id, "out/")

Answers are the API's own response models (``api.schemas``). An error answer raises
``ApiError`` (its ``status``, ``code``, ``message`` and ``field`` come from the error body); a
server that cannot be reached raises ``ServerUnreachable`` (an ``ApiError`` naming the URL).

The client reads no environment variables: the command line (``cli.remote``) reads
``NORMSEARCH_URL`` / ``NORMSEARCH_TOKEN`` and passes them in. Tests pass an ``httpx.Client`` of
their own (``fastapi.testclient.TestClient`` is one) as ``http``.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

import httpx
from pydantic import BaseModel, TypeAdapter

from api.schemas import FINISHED_JOB_STATUSES as FINISHED_STATUSES
from api.schemas import (
    ArtifactKind,
    ArtifactOut,
    JobDetail,
    JobPage,
    JobStatus,
    MetricHistory,
    RatioHistory,
    TrialOut,
    UserOut,
    Vocabulary,
)

API_PREFIX = "/api/v1"
DEFAULT_TIMEOUT_S = 30.0
# What ``download_all`` writes: file name -> (route below /jobs/{id}, query).
ALL_OUTPUTS: dict[str, tuple[str, dict[str, str]]] = {
    "plan.json": ("recommendation", {"format": "json"}),
    "plan.yaml": ("recommendation", {"format": "yaml"}),
    "checkpoint.zip": ("checkpoint", {}),
    "report.json": ("report", {}),
}
# ... and, when the job has them (jobs from before these kinds do not): file name -> kind.
SEARCH_OUTPUTS: dict[str, ArtifactKind] = {
    "search_plan.json": ArtifactKind.search_plan_json,
    "search_checkpoint.zip": ArtifactKind.search_checkpoint,
}

_TRIALS = TypeAdapter(list[TrialOut])
_ARTIFACTS = TypeAdapter(list[ArtifactOut])


class ApiError(Exception):
    """The API answered with an error (``status`` is its HTTP status), or did not answer."""

    def __init__(
        self,
        status: int | None,
        code: str,
        message: str,
        field: str | None = None,
        errors: list[dict[str, str]] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.errors = list(errors or [])

    @property
    def is_input_error(self) -> bool:
        """A 4xx answer: the request (spec, id, token, job state) is at fault, not the server."""
        return self.status is not None and 400 <= self.status < 500

    def __str__(self) -> str:
        where = f" ({self.field})" if self.field and self.field not in self.message else ""
        return f"{self.message}{where}"

    def __repr__(self) -> str:
        name = type(self).__name__
        return f"{name}(status={self.status!r}, code={self.code!r}, message={self.message!r})"

    @classmethod
    def from_response(cls, response: httpx.Response) -> ApiError:
        """Built from an error body ``{code, message, field?, errors?}`` (any other body: its
        first characters, or the reason phrase)."""
        try:
            body = response.json()
        except ValueError:
            body = None
        if isinstance(body, Mapping) and isinstance(body.get("message"), str):
            errors = body.get("errors")
            return cls(
                response.status_code,
                str(body.get("code") or f"http_{response.status_code}"),
                body["message"],
                body.get("field") if isinstance(body.get("field"), str) else None,
                errors if isinstance(errors, list) else None,
            )
        try:
            text = response.text.strip()[:200]
        except httpx.ResponseNotRead:
            text = ""
        message = text or response.reason_phrase or f"HTTP {response.status_code}"
        return cls(
            response.status_code,
            f"http_{response.status_code}",
            f"HTTP {response.status_code} from {response.request.url}: {message}",
        )


class ServerUnreachable(ApiError):
    """No answer: the server is down, the URL is wrong, or it did not answer in time."""

    def __init__(self, url: str, reason: str, *, code: str = "unreachable") -> None:
        super().__init__(None, code, f"cannot reach the normsearch server at {url}: {reason}")
        self.url = url


class ChecksumMismatch(ApiError):
    """A downloaded file's SHA-256 differs from the one the server stored (X-Content-SHA256)."""

    def __init__(self, path: Path, expected: str, actual: str) -> None:
        super().__init__(
            None,
            "checksum_mismatch",
            f"{path}: SHA-256 {actual} differs from the server's {expected}; download again",
        )


class WaitTimeout(TimeoutError):
    """``wait`` gave up before the job finished; ``job`` is its last known state."""

    def __init__(self, job: JobDetail, timeout_s: float) -> None:
        super().__init__(
            f"job {job.id} is still {job.status} ({job.progress:.0%}) after {timeout_s:g} s"
        )
        self.job = job


class ServerEvent(tuple[str, Any]):
    """One Server-Sent Event as ``(event, data)`` (``data`` JSON-decoded where it is JSON);
    ``id`` is the event's id (resumable with ``events(..., last_event_id=)``) or None."""

    id: str | None

    def __new__(cls, event: str, data: Any, id: str | None = None) -> ServerEvent:  # noqa: A002
        self = super().__new__(cls, (event, data))
        self.id = id
        return self

    @property
    def event(self) -> str:
        return self[0]

    @property
    def data(self) -> Any:
        return self[1]


def parse_sse(lines: Iterable[str]) -> Iterator[ServerEvent]:
    """Server-Sent Events from a text stream's lines (the HTML standard's parsing rules:
    ``event:``/``data:``/``id:`` fields, a blank line ends an event, ``:`` lines are comments)."""
    event, data, last_id = "", [], None
    for raw in lines:
        line = raw.rstrip("\r\n")
        if not line:
            if data:
                text = "\n".join(data)
                try:
                    value: Any = json.loads(text)
                except ValueError:
                    value = text
                yield ServerEvent(event or "message", value, last_id)
            event, data = "", []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "event":
            event = value
        elif name == "data":
            data.append(value)
        elif name == "id" and "\0" not in value:
            last_id = value or None


def _q(job_id: str) -> str:
    """A job id as one path segment (whatever it holds)."""
    return quote(str(job_id), safe="")


def _normalized_base(url: str) -> str:
    base = url.strip().rstrip("/")
    if not base.startswith(("http://", "https://")):
        raise ValueError(f"the server URL must start with http:// or https://, got {url!r}")
    return base[: -len(API_PREFIX)] if base.endswith(API_PREFIX) else base


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class NormsearchClient:
    """The REST API as methods. ``base_url`` is the server (``http://host:8000``; a trailing
    ``/api/v1`` is accepted), ``token`` an API token (``normsearch token create``). Pass ``http``
    (an ``httpx.Client``, e.g. a FastAPI TestClient) or ``transport`` to control how requests are
    sent; a client passed in is not closed by this one."""

    def __init__(
        self,
        base_url: str,
        token: str | None,
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        transport: httpx.BaseTransport | None = None,
        http: httpx.Client | None = None,
    ) -> None:
        self.base_url = _normalized_base(base_url)
        self.api_url = self.base_url + API_PREFIX
        self.timeout = timeout
        self._token = token
        self._owns_http = http is None
        self._http = http or httpx.Client(timeout=timeout, transport=transport)

    def __repr__(self) -> str:  # never shows the token
        return f"NormsearchClient({self.base_url!r})"

    # ----------------------------------------------------------------------- plumbing
    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> NormsearchClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _headers(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        headers.update(extra or {})
        return headers

    def _url(self, path: str) -> str:
        return self.api_url + path

    def _unreachable(self, error: httpx.TransportError) -> ServerUnreachable:
        if isinstance(error, httpx.TimeoutException):
            return ServerUnreachable(
                self.base_url, f"no answer in time ({type(error).__name__})", code="timeout"
            )
        reason = str(error) or type(error).__name__
        return ServerUnreachable(self.base_url, reason)

    def _request(
        self,
        method: str,
        path: str,
        *,
        params: Any = None,
        json_body: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        try:
            response = self._http.request(
                method,
                self._url(path),
                params=params,
                json=json_body,
                headers=self._headers(headers),
                # A client passed in keeps its own timeouts.
                **({"timeout": self.timeout} if self._owns_http else {}),
            )
        except httpx.TransportError as error:
            raise self._unreachable(error) from None
        if response.is_error:
            raise ApiError.from_response(response)
        return response

    @contextmanager
    def _stream(
        self, path: str, *, params: Any = None, headers: Mapping[str, str] | None = None,
        timeout: httpx.Timeout | float | None = None,
    ) -> Iterator[httpx.Response]:  # fmt: skip
        try:
            with self._http.stream(
                "GET",
                self._url(path),
                params=params,
                headers=self._headers(headers),
                **({"timeout": timeout} if timeout is not None else {}),
            ) as response:
                if response.is_error:
                    response.read()
                    raise ApiError.from_response(response)
                yield response
        except httpx.TransportError as error:
            raise self._unreachable(error) from None

    def _get_model(self, path: str, model: type[BaseModel], params: Any = None) -> Any:
        return model.model_validate(self._request("GET", path, params=params).json())

    # ----------------------------------------------------------------------- identity
    def me(self) -> UserOut:
        """The token's user (a cheap check of URL and token)."""
        return self._get_model("/me", UserOut)

    def vocabulary(self) -> Vocabulary:
        """The statuses, artifact kinds and normalizers the server speaks."""
        return self._get_model("/vocabulary", Vocabulary)

    # ----------------------------------------------------------------------- jobs
    def submit(
        self,
        spec: Mapping[str, Any] | BaseModel,
        idempotency_key: str | None = None,
        *,
        name: str | None = None,
    ) -> JobDetail:
        """Queue a search job (``spec``: a dict or a ``service.spec.JobSpec``; ``name``: an
        optional label). With an ``idempotency_key`` a repeated call returns the first job
        instead of a new one."""
        body = spec.model_dump(mode="json") if isinstance(spec, BaseModel) else dict(spec)
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        params = {"name": name} if name else None
        response = self._request("POST", "/jobs", params=params, json_body=body, headers=headers)
        return JobDetail.model_validate(response.json())

    def list_jobs(
        self,
        status: JobStatus | str | Iterable[JobStatus | str] | None = None,
        *,
        sort: str = "-created_at",
        limit: int = 50,
        offset: int = 0,
    ) -> JobPage:
        """One page of your jobs, optionally only those in ``status`` (one or several)."""
        params: list[tuple[str, str | int]] = [("sort", sort), ("limit", limit), ("offset", offset)]
        if status is not None:
            statuses = [status] if isinstance(status, str) else list(status)
            params += [("status", s) for s in statuses]
        return self._get_model("/jobs", JobPage, params)

    def get_job(self, job_id: str) -> JobDetail:
        return self._get_model(f"/jobs/{_q(job_id)}", JobDetail)

    def cancel(self, job_id: str) -> JobDetail:
        """Cancel a queued or running job (409 ``ApiError`` when it has finished)."""
        return JobDetail.model_validate(self._request("POST", f"/jobs/{_q(job_id)}/cancel").json())

    def retry(self, job_id: str) -> JobDetail:
        """Queue a failed or cancelled job again, as a fresh run."""
        return JobDetail.model_validate(self._request("POST", f"/jobs/{_q(job_id)}/retry").json())

    def delete(self, job_id: str) -> None:
        """Delete a finished job with its history and files."""
        self._request("DELETE", f"/jobs/{_q(job_id)}")

    # ----------------------------------------------------------------------- history
    def trials(self, job_id: str) -> list[TrialOut]:
        return _TRIALS.validate_python(self._request("GET", f"/jobs/{_q(job_id)}/trials").json())

    def ratios(
        self,
        job_id: str,
        trial: int | None = None,
        layers: Iterable[str] | None = None,
        after: int | None = None,
        max_points: int | None = None,
    ) -> RatioHistory:
        """Per-layer switch ratios per step; ``after`` is a cursor (a trial's ``last_step``)."""
        params: list[tuple[str, str | int]] = []
        if trial is not None:
            params.append(("trial", trial))
        params += [("layer", name) for name in layers or ()]
        if after is not None:
            params.append(("after", after))
        if max_points is not None:
            params.append(("max_points", max_points))
        return self._get_model(f"/jobs/{_q(job_id)}/ratios", RatioHistory, params)

    def metrics(
        self,
        job_id: str,
        trial: int | None = None,
        names: Iterable[str] | None = None,
        after: int | None = None,
    ) -> MetricHistory:
        params: list[tuple[str, str | int]] = []
        if trial is not None:
            params.append(("trial", trial))
        params += [("name", name) for name in names or ()]
        if after is not None:
            params.append(("after", after))
        return self._get_model(f"/jobs/{_q(job_id)}/metrics", MetricHistory, params)

    def events(
        self,
        job_id: str,
        *,
        last_event_id: int | str | None = None,
        read_timeout_s: float | None = None,
    ) -> Iterator[ServerEvent]:
        """The job's live events until it finishes: ``(event, data)`` pairs, ``event`` one of
        ``status`` (a lifecycle event), ``progress`` ({status, progress}), ``ratios``
        ({trial_id: newest step}) and ``end`` ({status}). ``last_event_id`` resumes after that
        status event. ``read_timeout_s``: longest silence accepted (default: none)."""
        headers = {"Accept": "text/event-stream"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = str(last_event_id)
        timeout = httpx.Timeout(self.timeout, read=read_timeout_s)
        with self._stream(
            f"/jobs/{_q(job_id)}/events", headers=headers, timeout=timeout
        ) as response:
            try:
                yield from parse_sse(response.iter_lines())
            except httpx.TransportError as error:
                raise self._unreachable(error) from None

    def wait(
        self,
        job_id: str,
        poll_s: float = 2.0,
        timeout_s: float | None = None,
        on_update: Callable[[JobDetail], None] | None = None,
        *,
        follow: bool = True,
    ) -> JobDetail:
        """Block until the job has finished and return it. Follows the event stream (``follow``)
        and falls back to polling every ``poll_s`` when the stream is unavailable;
        ``on_update(job)`` is called with the job whenever its status or progress changes.
        Raises ``WaitTimeout`` after ``timeout_s``."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        seen: tuple[str, float, int] | None = None

        def refresh() -> JobDetail:
            nonlocal seen
            job = self.get_job(job_id)
            state = (job.status, job.progress, len(job.events))
            if on_update is not None and state != seen:
                on_update(job)
            seen = state
            return job

        def remaining() -> float | None:
            return None if deadline is None else deadline - time.monotonic()

        job = refresh()
        while job.status not in FINISHED_STATUSES:
            left = remaining()
            if left is not None and left <= 0:
                raise WaitTimeout(job, timeout_s or 0.0)
            pause = poll_s if left is None else max(0.0, min(poll_s, left))
            if follow:
                try:
                    job = self._follow_events(job_id, refresh, left)
                    if job.status in FINISHED_STATUSES:
                        break
                except ServerUnreachable as error:
                    if error.code == "timeout":  # a quiet stream: look, then listen again
                        job = refresh()
                        continue
                    # The stream broke (a restart, a proxy); refresh() raises if the server
                    # is really gone.
                except ApiError as error:
                    if error.status in (401, 403, 404):
                        raise
                    follow = False  # no event stream here (a proxy?): poll instead
            time.sleep(pause)
            job = refresh()
        return job

    def _follow_events(
        self, job_id: str, refresh: Callable[[], JobDetail], left: float | None
    ) -> JobDetail:
        """Listen until the stream ends (the job finished) or ``left`` seconds have passed."""
        # The server only speaks on change: a read timeout just means "nothing new yet".
        silence = 60.0 if left is None else max(0.1, min(60.0, left))
        job = None
        with closing(self.events(job_id, read_timeout_s=silence)) as stream:
            for event, _data in stream:
                if event in ("status", "progress", "end"):
                    job = refresh()
                    if job.status in FINISHED_STATUSES:
                        return job
        return job if job is not None else refresh()

    # ----------------------------------------------------------------------- outputs
    def artifacts(self, job_id: str) -> list[ArtifactOut]:
        return _ARTIFACTS.validate_python(
            self._request("GET", f"/jobs/{_q(job_id)}/artifacts").json()
        )

    def report(self, job_id: str) -> dict[str, Any]:
        """The finished job's report.json (recommendation, trials, verification) as a dict."""
        return self._request("GET", f"/jobs/{_q(job_id)}/report").json()

    def _download(
        self,
        path: str,
        dest: str | os.PathLike[str],
        *,
        params: Any = None,
    ) -> Path:
        """Stream a file to ``dest`` (written atomically) and check the SHA-256 of the whole
        file against the ``X-Content-SHA256`` it came with (the digest the artifact list
        shows)."""
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
        tmp = Path(tmp_name)
        try:
            with (
                os.fdopen(fd, "wb") as fh,
                self._stream(path, params=params, headers={"Accept": "*/*"}) as response,
            ):
                expected = response.headers.get("X-Content-SHA256")
                try:
                    for chunk in response.iter_bytes(1 << 20):
                        fh.write(chunk)
                except httpx.TransportError as error:
                    raise self._unreachable(error) from None
            if expected:
                actual = _sha256_file(tmp)
                if actual != expected.strip().lower():
                    raise ChecksumMismatch(dest, expected, str(actual))
            os.replace(tmp, dest)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return dest

    def download_recommendation(
        self, job_id: str, fmt: Literal["json", "yaml"] = "json", dest=None
    ) -> Path:
        """The plan of the configuration the verdict chose (``sn_core.NormalizerPlan``) as
        plan.json / plan.yaml; its metadata says which configuration and whether it was
        verified."""
        dest = dest if dest is not None else f"plan.{fmt}"
        return self._download(f"/jobs/{_q(job_id)}/recommendation", dest, params={"format": fmt})

    def download_checkpoint(self, job_id: str, dest="checkpoint.zip") -> Path:
        """The checkpoint zip: a trained model of the configuration the verdict chose
        (``sn_core.load_finalized`` reads it; ``plan.metadata["checkpoint"]`` says which run)."""
        return self._download(f"/jobs/{_q(job_id)}/checkpoint", dest)

    def download_search_checkpoint(self, job_id: str, dest="search_checkpoint.zip") -> Path:
        """The search checkpoint zip: the best search trial finalized with its own choices."""
        return self._download(f"/jobs/{_q(job_id)}/search-checkpoint", dest)

    def download_report(self, job_id: str, dest="report.json") -> Path:
        return self._download(f"/jobs/{_q(job_id)}/report", dest)

    def download_artifact(self, job_id: str, kind: ArtifactKind | str, dest) -> Path:
        """Any stored output by kind (an ``ArtifactKind``: plan_json, plan_yaml, report_json,
        ratios_csv, ratios_png, checkpoint, search_plan_json, search_checkpoint)."""
        return self._download(f"/jobs/{_q(job_id)}/artifacts/{kind}", dest)

    def download_all(self, job_id: str, out_dir: str | os.PathLike[str]) -> dict[str, Path]:
        """plan.json, plan.yaml, checkpoint.zip and report.json into ``out_dir``, and
        search_plan.json and search_checkpoint.zip when the job has them."""
        out = Path(out_dir)
        written = {}
        for name, (route, params) in ALL_OUTPUTS.items():
            written[name] = self._download(f"/jobs/{_q(job_id)}/{route}", out / name, params=params)
        kinds = {artifact.kind for artifact in self.artifacts(job_id)}
        for name, kind in SEARCH_OUTPUTS.items():
            if kind in kinds:
                written[name] = self.download_artifact(job_id, kind, out / name)
        return written
