"""NORMSEARCH_STORAGE_URI: its forms, the filesystem it opens, and the probe that fails a bad one
in one line naming the setting (against a local S3-compatible server, moto's)."""

from __future__ import annotations

import socket
import time

import pytest
from pydantic import ValidationError

from service.settings import Settings
from service.storage import SETTING, StorageError, check_uri, local_storage, open_storage, probe
from tests.support.s3 import BUCKET, s3_server


@pytest.fixture(scope="module")
def s3():
    with s3_server() as server:
        yield server


@pytest.mark.parametrize(
    "uri",
    [
        "/mnt/normsearch/experiments",
        "relative/dir",
        "file:///mnt/normsearch",
        "s3://bucket",
        "s3://bucket/a/prefix",
        "s3://bucket/p?endpoint_override=minio:9000&scheme=http&region=eu-west-1",
    ],
)
def test_accepted_forms(uri):
    assert check_uri(uri) == uri
    assert Settings(storage_uri=uri).storage_uri == uri


@pytest.mark.parametrize(
    ("uri", "says"),
    [
        ("ftp://host/path", "unknown scheme 'ftp://'"),
        ("gs://bucket/path", "unknown scheme 'gs://'"),
        ("s3://KEY:s3cr3tvalue@bucket/p", "must not hold credentials"),
        ("s3:///prefix-without-bucket", "names its bucket"),
        ("s3://bucket/p?endpoint=host:9000", "unknown s3:// option 'endpoint'"),
        ("s3://bucket/p?scheme=ftp", "scheme= option is http or https"),
        ("s3://bucket/p?endpoint_override=", "endpoint_override= option is empty"),
        ("file://host/path", "file:///ABSOLUTE/PATH"),
    ],
)
def test_refused_forms_say_why(uri, says):
    with pytest.raises(ValueError, match=says):
        check_uri(uri)
    with pytest.raises(ValidationError, match="storage_uri") as caught:
        Settings(storage_uri=uri)
    assert "s3cr3tvalue" not in str(caught.value)  # the settings never echo a refused value
    with pytest.raises(StorageError, match=SETTING):
        open_storage(uri)


def test_credentials_never_reach_the_error_message():
    with pytest.raises(StorageError) as caught:
        open_storage("s3://KEY:s3cr3tvalue@bucket/p")
    assert "s3cr3tvalue" not in str(caught.value)


def test_unset_or_empty_is_none():
    assert Settings().storage_uri is None
    assert Settings(storage_uri="  ").storage_uri is None


def test_s3_uri_opens_the_bucket_path_with_the_endpoint(s3):
    storage = open_storage(s3.uri("runs/x/"))
    assert storage.remote and storage.root == f"{BUCKET}/runs/x"
    assert storage.uri() == f"s3://{BUCKET}/runs/x"
    assert storage.child("job", "run-1").uri() == f"s3://{BUCKET}/runs/x/job/run-1"
    probe(storage)  # creates nothing but a prefix; the marker is deleted again
    assert s3.files("runs") == []
    with storage.filesystem.open_output_stream(storage.join("t", "result.json")) as out:
        out.write(b"{}")
    assert storage.read_bytes(storage.join("t", "result.json")) == b"{}"
    assert storage.read_bytes(storage.join("t", "missing")) is None
    assert storage.subdirectories(storage.root) == [storage.join("t")]
    assert storage.subdirectories(storage.join("none")) == []


def test_a_path_opens_a_local_filesystem(tmp_path):
    storage = open_storage(str(tmp_path / "shared"))
    assert not storage.remote and storage.ray_filesystem is None
    assert storage.root == str((tmp_path / "shared").resolve())
    assert open_storage(f"file://{tmp_path}/shared").root == storage.root
    probe(storage)
    assert (tmp_path / "shared").is_dir() and not list((tmp_path / "shared").iterdir())


def test_a_missing_bucket_fails_in_one_line_naming_the_setting_and_the_bucket(s3):
    with pytest.raises(StorageError) as caught:
        probe(open_storage(s3.uri("p", bucket="no-such-bucket")))
    message = str(caught.value)
    assert message.startswith(f"{SETTING} s3://no-such-bucket/p:")
    assert "bucket 'no-such-bucket' does not exist" in message and "\n" not in message


def test_an_unreachable_server_fails_in_seconds(s3):
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    started = time.monotonic()
    with pytest.raises(StorageError, match=f"^{SETTING} s3://{BUCKET}/p: cannot write there"):
        probe(open_storage(f"s3://{BUCKET}/p?endpoint_override=127.0.0.1:{port}&scheme=http"))
    assert time.monotonic() - started < 30


def test_a_path_that_cannot_be_a_directory_fails_naming_the_setting(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(StorageError, match=f"^{SETTING} .*file/sub: cannot write there"):
        probe(local_storage(tmp_path / "file" / "sub"))
