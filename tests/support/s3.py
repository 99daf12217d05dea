"""A local S3-compatible server for the s3:// storage tests: moto's, in a thread of the test
process on a free loopback port, with one bucket and the AWS variables every client (the test,
the Ray workers it starts) reads its credentials from."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

BUCKET = "normsearch-test"
# Credentials moto accepts (any); no real account is ever reached: the endpoint is loopback.
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "normsearch-test-key",
    "AWS_SECRET_ACCESS_KEY": "normsearch-test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}


@dataclass(frozen=True)
class S3Server:
    endpoint: str  # host:port

    def uri(self, prefix: str, bucket: str = BUCKET) -> str:
        """The NORMSEARCH_STORAGE_URI of ``bucket/prefix`` on this server."""
        return f"s3://{bucket}/{prefix}?endpoint_override={self.endpoint}&scheme=http"

    def filesystem(self, **options):
        import pyarrow.fs as pafs

        return pafs.S3FileSystem(endpoint_override=self.endpoint, scheme="http", **options)

    def files(self, prefix: str) -> list[str]:
        """Every object under ``BUCKET/prefix``, as paths relative to it."""
        import pyarrow.fs as pafs

        base = f"{BUCKET}/{prefix}".rstrip("/")
        selector = pafs.FileSelector(base, recursive=True, allow_not_found=True)
        infos = self.filesystem().get_file_info(selector)
        return sorted(
            info.path[len(base) + 1 :] for info in infos if info.type == pafs.FileType.File
        )


@contextlib.contextmanager
def s3_server() -> Iterator[S3Server]:
    """A running moto server with ``BUCKET`` created, the AWS variables set meanwhile."""
    from moto.server import ThreadedMotoServer

    with pytest.MonkeyPatch.context() as patch:
        for name, value in AWS_ENV.items():
            patch.setenv(name, value)
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        try:
            host, port = server.get_host_and_port()
            s3 = S3Server(f"{host}:{port}")
            s3.filesystem(allow_bucket_creation=True).create_dir(BUCKET)
            yield s3
        finally:
            server.stop()
