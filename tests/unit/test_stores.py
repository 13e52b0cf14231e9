"""Choosing a store from its URL, and the parts of ``S3Store`` that need no server: argument
checks, keeping credentials out of ``repr`` and errors, and how S3 errors are translated
(driven by botocore's ``Stubber``, so the responses are exactly what S3 sends)."""

from __future__ import annotations

import traceback
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from botocore.stub import Stubber

from gateway.errors import http_status
from storage.errors import ObjectNotFound, StorageUnavailable
from storage.filestore import FileStore
from storage.s3 import MIN_PART_SIZE, S3Store
from storage.stores import open_store

ACCESS_KEY = "AKIAUNITTESTEXAMPLE1"
SECRET_KEY = "unit-test-secret-0123456789abcdef"


@pytest.mark.parametrize(
    ("url", "root"),
    [
        ("file:///srv/callvault/objects", Path("/srv/callvault/objects")),
        ("file://./var/objects", Path("var/objects")),
        ("file:var/objects", Path("var/objects")),
        ("file://localhost/srv/objects", Path("/srv/objects")),
    ],
)
def test_file_urls_open_a_file_store(url: str, root: Path) -> None:
    store = open_store(url)
    assert isinstance(store, FileStore)
    assert store.root == root


def test_file_urls_round_trip_path_as_uri(tmp_path: Path) -> None:
    root = tmp_path / "data dir" / "objekte-ä%"
    store = open_store(root.as_uri())  # how the settings build the default
    assert isinstance(store, FileStore)
    assert store.root == root


@pytest.mark.parametrize(
    ("url", "bucket", "prefix"),
    [
        ("s3://recordings", "recordings", ""),
        ("s3://recordings/", "recordings", ""),
        ("s3://recordings/eu/callvault", "recordings", "eu/callvault/"),
        ("s3://recordings/eu/", "recordings", "eu/"),
    ],
)
def test_s3_urls_open_an_s3_store(url: str, bucket: str, prefix: str) -> None:
    store = open_store(url, endpoint_url="http://127.0.0.1:8333", part_size=MIN_PART_SIZE)
    assert isinstance(store, S3Store)
    assert (store.bucket, store.prefix, store.part_size) == (bucket, prefix, MIN_PART_SIZE)


@pytest.mark.parametrize(
    "url",
    [
        "http://example.com/objects",
        "objects",
        "file://",
        "file:///srv/objects?x=1",
        "s3://",
        "s3://UPPER",
        "s3://ab",
        "s3://bucket/../up",
        "s3://bucket/p?x=1",
    ],
)
def test_bad_store_urls_are_refused(url: str) -> None:
    with pytest.raises(ValueError):
        open_store(url)


@pytest.mark.parametrize(
    "options",
    [
        {"part_size": MIN_PART_SIZE - 1},
        {"access_key": ACCESS_KEY},
        {"secret_key": SECRET_KEY},
        {"endpoint_url": "127.0.0.1:8333"},
        {"max_workers": 0},
    ],
)
def test_s3_store_arguments_are_checked(options: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        S3Store("recordings", **options)  # type: ignore[arg-type]


def test_s3_store_never_shows_its_credentials() -> None:
    store = S3Store(
        "recordings",
        "eu",
        endpoint_url="http://127.0.0.1:8333",
        access_key=ACCESS_KEY,
        secret_key=SECRET_KEY,
    )
    shown = repr(store) + str(store) + repr(vars(store))
    assert SECRET_KEY not in shown
    assert ACCESS_KEY not in shown
    assert repr(store) == (
        "S3Store(bucket='recordings', prefix='eu/', endpoint_url='http://127.0.0.1:8333')"
    )


@pytest.fixture
async def stubbed() -> AsyncIterator[tuple[S3Store, Stubber]]:
    store = S3Store(
        "recordings",
        "eu",
        endpoint_url="http://127.0.0.1:9",  # never reached: the stubber answers
        access_key=ACCESS_KEY,
        secret_key=SECRET_KEY,
        max_attempts=1,
    )
    stubber = Stubber(store._client())
    stubber.activate()
    try:
        yield store, stubber
    finally:
        stubber.deactivate()
        await store.close()


def error_text(error: BaseException) -> str:
    return "".join(traceback.format_exception(error)) + repr(error)


async def test_server_text_is_scrubbed_of_credentials(
    stubbed: tuple[S3Store, Stubber],
) -> None:
    store, stubber = stubbed
    stubber.add_client_error(
        "list_objects_v2",
        service_error_code="AccessDenied",
        service_message=f"key {ACCESS_KEY} with secret {SECRET_KEY} may not list",
        http_status_code=403,
    )
    with pytest.raises(StorageUnavailable) as caught:
        await store.check()
    assert caught.value.store_code == "AccessDenied"
    text = error_text(caught.value)
    assert SECRET_KEY not in text
    assert ACCESS_KEY not in text
    assert "may not list" in text
    assert "s3://recordings/eu/" in text


async def test_no_such_key_on_read_is_object_not_found(stubbed: tuple[S3Store, Stubber]) -> None:
    store, stubber = stubbed
    stubber.add_client_error("get_object", service_error_code="NoSuchKey", http_status_code=404)
    with pytest.raises(ObjectNotFound):
        await anext(store.read("acme/x"))


async def test_head_404_is_absent_but_head_403_is_an_error(
    stubbed: tuple[S3Store, Stubber],
) -> None:
    store, stubber = stubbed
    # HEAD responses have no body, so botocore's code is the bare status.
    stubber.add_client_error("head_object", service_error_code="404", http_status_code=404)
    assert not await store.exists("acme/x")
    stubber.add_client_error("head_object", service_error_code="403", http_status_code=403)
    with pytest.raises(StorageUnavailable) as caught:
        await store.exists("acme/x")
    assert caught.value.store_code == "403"


async def test_slow_down_keeps_its_code(stubbed: tuple[S3Store, Stubber]) -> None:
    store, stubber = stubbed
    stubber.add_client_error("put_object", service_error_code="SlowDown", http_status_code=503)
    with pytest.raises(StorageUnavailable) as caught:
        await store.put("acme/x", b"x")
    assert caught.value.store_code == "SlowDown"
    assert http_status(caught.value) == 503
