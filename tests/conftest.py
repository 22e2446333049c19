"""Shared fixtures: fake AWS credentials for every test, and a moto S3 server on loopback."""

from __future__ import annotations

import uuid

import boto3
import pytest
from moto.server import ThreadedMotoServer

from tests.fake_aws import use_fake_aws
from warehouse.storage.local import LocalStorage
from warehouse.storage.s3 import S3Storage


@pytest.fixture(autouse=True)
def _fake_aws(monkeypatch, tmp_path):
    """No test can reach a real AWS account: fake credentials, no profile, no endpoint."""
    use_fake_aws(monkeypatch, tmp_path)


@pytest.fixture(scope="session")
def moto_server():
    """A moto server on 127.0.0.1 (a free port), for end-to-end runs over real HTTP."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_endpoint(moto_server, monkeypatch):
    """Point boto3 (in this process and in subprocesses) at the moto server."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server)
    return moto_server


@pytest.fixture
def s3_bucket(s3_endpoint):
    """A fresh bucket (and its ``-processed`` store) on the moto server; returns its name."""
    name = f"warehouse-{uuid.uuid4().hex[:12]}"
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    client.create_bucket(Bucket=name)
    client.create_bucket(Bucket=f"{name}-processed")
    return name


@pytest.fixture
def local_store(tmp_path):
    """A local directory laid out like a bucket (and its ``-processed`` store)."""
    (tmp_path / "bucket").mkdir()
    (tmp_path / "bucket-processed").mkdir()
    return LocalStorage(tmp_path / "bucket")


@pytest.fixture
def s3_store(s3_bucket):
    """A fresh bucket on the moto server, through the product's S3 store."""
    return S3Storage(s3_bucket, workers=8)


@pytest.fixture(params=["local", "s3"])
def store(request):
    """The same test on a local directory and on S3 over HTTP (moto server on 127.0.0.1)."""
    return request.getfixturevalue(f"{request.param}_store")
