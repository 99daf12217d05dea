"""Where Ray Tune keeps its experiments (trial checkpoints, experiment state, result logs).

``NORMSEARCH_STORAGE_URI`` names a place every Ray node reaches: a filesystem path that every node
mounts at the same place (NFS, CephFS, ...; also ``file://PATH``) or an S3 bucket,
``s3://BUCKET/PREFIX``, with an S3-compatible server's address given the pyarrow way
(``?endpoint_override=HOST:PORT&scheme=http``; also ``region``). Unset, the experiments stay in
each run's work directory under the runs directory, as before. Credentials never go in the URI
(it is shown in errors and logs): pyarrow reads the standard AWS variables
(``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``), the AWS config files or
the instance's role, on every node for itself (a pickled filesystem carries no key).

Everything that reads an experiment back goes through ``ExperimentStorage.filesystem`` (a
``pyarrow.fs`` filesystem), never ``pathlib``; the artifacts the API serves stay in the runs
directory. ``check_uri`` (syntax only, for ``Settings``) runs in the API too, so pyarrow is
imported only where a filesystem is opened.
"""

from __future__ import annotations

import posixpath
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

if TYPE_CHECKING:
    import pyarrow.fs

SETTING = "NORMSEARCH_STORAGE_URI"
SCHEMES = ("s3", "file")
# The query keys of an s3:// URI: pyarrow's S3FileSystem options of the same names.
S3_OPTIONS = ("endpoint_override", "scheme", "region")
# Bounds on one S3 request, so that an unreachable endpoint fails a job in seconds, not hours.
CONNECT_TIMEOUT_S = 5.0
REQUEST_TIMEOUT_S = 60.0
S3_ATTEMPTS = 3


class StorageError(RuntimeError):
    """The storage ``NORMSEARCH_STORAGE_URI`` names cannot be used; the message is one line
    that names the setting."""


def _one_line(text: Any) -> str:
    return " ".join(str(text).split())


def check_uri(value: str) -> str:
    """``value`` checked for its form only (no network): a path, ``file://PATH`` or
    ``s3://BUCKET[/PREFIX][?endpoint_override=..&scheme=http|https&region=..]``, with no
    credentials in it. Raises ``ValueError`` saying what is wrong."""
    value = value.strip()
    if not value:
        raise ValueError("is empty")
    if "://" not in value:
        return value  # a filesystem path
    parts = urlsplit(value)
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise ValueError(
            f"unknown scheme {parts.scheme + '://'!r}; use a filesystem path every Ray node "
            "mounts, file://PATH or s3://BUCKET/PREFIX"
        )
    if parts.username is not None or parts.password is not None:
        raise ValueError(
            "must not hold credentials; give them in AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY"
        )
    if parts.fragment:
        raise ValueError("must have no #fragment")
    if scheme == "file":
        if parts.netloc or parts.query or not parts.path.startswith("/"):
            raise ValueError("a file:// URI is file:///ABSOLUTE/PATH, with no host or query")
        return value
    if not parts.hostname:
        raise ValueError("an s3:// URI names its bucket: s3://BUCKET/PREFIX")
    options = _s3_options(parts.query)
    if options.get("scheme", "https") not in ("http", "https"):
        raise ValueError("its scheme= option is http or https")
    return value


def _s3_options(query: str) -> dict[str, str]:
    options: dict[str, str] = {}
    for key, item in parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query)):
        if key not in S3_OPTIONS:
            raise ValueError(f"unknown s3:// option {key!r}; known: {', '.join(S3_OPTIONS)}")
        if not item:
            raise ValueError(f"its {key}= option is empty")
        options[key] = item
    return options


def display_uri(value: str) -> str:
    """``value`` without credentials or query (what errors and logs show)."""
    if "://" not in value:
        return value
    parts = urlsplit(value.split("?", 1)[0])
    host = parts.netloc.rpartition("@")[2]
    return f"{parts.scheme}://{host}{parts.path}"


@dataclass(frozen=True)
class ExperimentStorage:
    """A directory on a ``pyarrow.fs`` filesystem: ``root`` is its path there (no scheme);
    ``scheme`` is ``s3`` for a bucket, empty for a local or shared filesystem."""

    filesystem: pyarrow.fs.FileSystem
    root: str
    scheme: str = ""

    @property
    def remote(self) -> bool:
        return bool(self.scheme)

    @property
    def ray_filesystem(self) -> pyarrow.fs.FileSystem | None:
        """What ``storage_filesystem`` Ray Tune gets: None on a local path (Ray's own default)."""
        return self.filesystem if self.remote else None

    def join(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    def child(self, *parts: str) -> ExperimentStorage:
        return ExperimentStorage(self.filesystem, self.join(*parts), self.scheme)

    def uri(self, path: str | None = None) -> str:
        """``path`` (default: the root) as users read it: ``s3://bucket/...`` or the path."""
        path = self.root if path is None else path
        return f"{self.scheme}://{path}" if self.scheme else path

    def read_bytes(self, path: str) -> bytes | None:
        """The file at ``path``, or None when there is none."""
        return read_bytes(self.filesystem, path)

    def subdirectories(self, path: str) -> list[str]:
        """The directories right under ``path`` (none when it does not exist), sorted."""
        import pyarrow.fs as pafs

        selector = pafs.FileSelector(path, allow_not_found=True, recursive=False)
        infos = self.filesystem.get_file_info(selector)
        return sorted(info.path for info in infos if info.type == pafs.FileType.Directory)


def read_bytes(filesystem: pyarrow.fs.FileSystem, path: str) -> bytes | None:
    """The file at ``path`` on ``filesystem``, or None when there is none."""
    try:
        with filesystem.open_input_stream(path) as stream:
            return stream.read()
    except FileNotFoundError:
        return None


def local_storage(path: Path | str) -> ExperimentStorage:
    """A local (or mounted) directory as storage."""
    import pyarrow.fs as pafs

    return ExperimentStorage(pafs.LocalFileSystem(), str(Path(path).expanduser().resolve()))


def open_storage(uri: str) -> ExperimentStorage:
    """The storage ``uri`` names (``check_uri``'s forms); no request is made yet (``probe``).
    Raises ``StorageError`` naming the setting for a URI of another form."""
    try:
        uri = check_uri(uri)
    except ValueError as error:
        raise StorageError(f"{SETTING} {display_uri(uri)!r} {error}") from None
    if "://" not in uri:
        return local_storage(uri)
    parts = urlsplit(uri)
    if parts.scheme.lower() == "file":
        return local_storage(parts.path)
    import pyarrow.fs as pafs

    options = _s3_options(parts.query)
    filesystem = pafs.S3FileSystem(
        endpoint_override=options.get("endpoint_override"),
        scheme=options.get("scheme", "https"),
        region=options.get("region"),
        connect_timeout=CONNECT_TIMEOUT_S,
        request_timeout=REQUEST_TIMEOUT_S,
        retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=S3_ATTEMPTS),
    )
    root = posixpath.join(parts.hostname or "", parts.path.strip("/")).rstrip("/")
    return ExperimentStorage(filesystem, root, "s3")


def probe(storage: ExperimentStorage) -> None:
    """Check that ``storage`` is there and writable (creating its directory, writing and
    deleting a small file): ``StorageError`` naming the setting and the reason when not, in
    seconds (``CONNECT_TIMEOUT_S``, ``S3_ATTEMPTS``) for an unreachable server."""
    import pyarrow.fs as pafs

    shown = storage.uri()
    filesystem = storage.filesystem
    try:
        if storage.remote:
            bucket = storage.root.split("/", 1)[0]
            if filesystem.get_file_info(bucket).type == pafs.FileType.NotFound:
                raise StorageError(f"{SETTING} {shown}: bucket {bucket!r} does not exist")
        filesystem.create_dir(storage.root, recursive=True)
        marker = storage.join(f".normsearch-probe-{uuid.uuid4().hex}")
        with filesystem.open_output_stream(marker) as stream:
            stream.write(b"normsearch")
        filesystem.delete_file(marker)
    except StorageError:
        raise
    except (OSError, ValueError) as error:
        raise StorageError(f"{SETTING} {shown}: cannot write there: {_one_line(error)}") from None
