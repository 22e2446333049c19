"""AWS that refuses keys, for the tests of credentials said as credentials.

Moto checking every request's signature and permissions as IAM does, access keys of moto IAM
users, and an environment with no credentials and no region at all.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator

import boto3
from moto.core import enable_iam_authentication

from tests.fake_aws import FAKE_ENV


@contextlib.contextmanager
def keys_checked() -> Iterator[None]:
    """Make moto check every request's credentials until the end of the block.

    Its mocks and conftest's threaded server alike (they run in this process): a key it does
    not know is refused (S3: ``InvalidAccessKeyId``; query APIs: ``InvalidClientTokenId``), a
    wrong secret is ``SignatureDoesNotMatch``, and a known key may do only what its user's
    policies allow.
    """
    with enable_iam_authentication():
        yield


def user_key(endpoint: str | None, name: str, actions: list[str] | None = None) -> dict:
    """Create a moto IAM user with an access key (call it before `keys_checked`).

    Parameters
    ----------
    endpoint : str or None
        The moto server (None: the in-process mock).
    name : str
        The user name.
    actions : list of str, optional
        Actions its inline policy allows on every resource; none: the user may do nothing.

    Returns
    -------
    dict
        ``AccessKeyId`` and ``SecretAccessKey``.
    """
    iam = boto3.client("iam", region_name="us-east-1", endpoint_url=endpoint)
    iam.create_user(UserName=name)
    if actions:
        document = {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": actions, "Resource": "*"}],
        }
        iam.put_user_policy(UserName=name, PolicyName="p", PolicyDocument=json.dumps(document))
    key = iam.create_access_key(UserName=name)["AccessKey"]
    return {"AccessKeyId": key["AccessKeyId"], "SecretAccessKey": key["SecretAccessKey"]}


def use_key(monkeypatch, key: dict) -> None:
    """Make ``key`` the environment's credentials (no session token)."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("AWS_SECURITY_TOKEN", raising=False)


def no_credentials(monkeypatch, *, region: bool = True) -> None:
    """Leave no credentials anywhere (with ``region`` False, no region either).

    No key in the environment, the AWS config and credentials files empty (conftest points
    both at an empty file), no profile, and no instance metadata service to ask (it would be a
    network call).
    """
    for name in FAKE_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.delenv("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", raising=False)
    monkeypatch.delenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", raising=False)
    if region:
        monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-2")
