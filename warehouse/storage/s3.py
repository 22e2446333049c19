"""An S3 bucket (or any S3-compatible endpoint) through one thread-safe boto3 client, and what
an AWS error says about the credentials (`credentials_problem`: the graphs, the task runner and
the operator tools say it the same way)."""

from __future__ import annotations

import builtins
import os
import shlex
from collections.abc import Iterator

from warehouse.core.errors import (
    ObjectNotFound,
    PreconditionFailed,
    StorageError,
    StoreUnavailable,
)
from warehouse.core.text import bounded, escape_controls
from warehouse.storage.base import ObjectInfo, ObjectVersion, Storage

#: CopyObject's limit; larger objects are copied with a multipart (UploadPartCopy) copy.
S3_COPY_LIMIT = 5 * 1024**3
#: Where the CloudFormation template is, for messages about a missing bucket.
_TEMPLATE = "infrastructure/templates/warehouse.yaml"

#: Error codes with which AWS refuses the credentials of a request (not its permissions): a key
#: that does not exist (deleted, mistyped, of another account or partition), a secret that does
#: not match it, a session token that is not valid. S3 says ``InvalidAccessKeyId``,
#: ``SignatureDoesNotMatch`` and ``InvalidToken``; query APIs (STS, SNS, CloudFormation)
#: ``InvalidClientTokenId``; JSON APIs (CloudWatch Logs, Batch, ECS)
#: ``UnrecognizedClientException``; EC2 ``AuthFailure``.
REFUSED_CREDENTIALS = frozenset(
    {
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "InvalidToken",
        "InvalidClientTokenId",
        "UnrecognizedClientException",
        "AuthFailure",
    }
)
#: Error codes of credentials that were valid and have expired (a session token, an SSO role's
#: credentials).
EXPIRED_CREDENTIALS = frozenset({"ExpiredToken", "ExpiredTokenException", "TokenRefreshRequired"})
#: What to do about refused or expired credentials, said after each such message.
_CREDENTIALS_ADVICE = (
    "check AWS_PROFILE (or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY) and, for an SSO "
    "profile, run `aws sso login{profile}`"
)
#: The longest AWS message quoted in a credentials problem.
_QUOTED_MESSAGE_CHARS = 200


def aws_text(text: object, limit: int = _QUOTED_MESSAGE_CHARS) -> str:
    """Quote what AWS or botocore says (an error, its message) on one line, bounded.

    Parameters
    ----------
    text : object
        The error, or its message.
    limit : int
        The most characters kept.

    Returns
    -------
    str
        Its text with control characters escaped (`warehouse.core.text.escape_controls`),
        cut to ``limit`` characters.
    """
    return bounded(escape_controls(str(text).strip()), limit)


def _profile_option() -> str:
    """`` --profile NAME`` when ``AWS_PROFILE`` names one (bounded, quoted for a shell), for the
    advice to run ``aws sso login``."""
    profile = aws_text(os.environ.get("AWS_PROFILE", ""), 64)
    return f" --profile {shlex.quote(profile)}" if profile else ""


def credentials_problem(exc: BaseException) -> str | None:
    """Say in one line what is wrong with the AWS credentials or region behind ``exc``, and what
    to do; None when ``exc`` is about something else (a permission, a missing bucket, ...).

    The one place that tells credentials from permissions: the S3 store, the task runner's
    notification and every operator tool ask it, so an invalid or expired key is never reported
    as "access denied" (which sends the operator to IAM instead of to ``aws sso login``).

    Parameters
    ----------
    exc : BaseException
        Anything a boto3 call raised: a ``botocore.exceptions.ClientError`` (the service
        answered; its error code decides) or a ``BotoCoreError`` raised before any request
        (no credentials, no region, an unknown profile, an SSO session that has expired).

    Returns
    -------
    str or None
        For example ``AWS refused the credentials (InvalidAccessKeyId: The AWS Access Key Id
        you provided does not exist in our records.): check AWS_PROFILE ...``.
    """
    from botocore import exceptions as aws

    advice = _CREDENTIALS_ADVICE.format(profile=_profile_option())
    if isinstance(exc, aws.ClientError):
        error = exc.response.get("Error", {}) if isinstance(exc.response, dict) else {}
        code = str(error.get("Code", ""))
        quoted = aws_text(f"{code}: {error.get('Message') or ''}".rstrip(": "))
        if code in EXPIRED_CREDENTIALS:
            return f"the AWS credentials have expired ({quoted}): {advice}, then try again"
        if code in REFUSED_CREDENTIALS:
            return f"AWS refused the credentials ({quoted}): {advice}"
        return None
    if isinstance(exc, aws.NoRegionError):
        return (
            "no AWS region is configured: set AWS_REGION (or AWS_DEFAULT_REGION), put a region "
            "in the AWS profile, or give the command's --region"
        )
    if isinstance(exc, aws.ProfileNotFound):
        return (
            f"the AWS profile in AWS_PROFILE does not exist ({aws_text(exc)}): check the name "
            "with `aws configure list-profiles`, or unset AWS_PROFILE"
        )
    if isinstance(exc, aws.NoCredentialsError):
        return (
            "no AWS credentials were found: set AWS_PROFILE (and run `aws sso login` for an SSO "
            "profile) or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY; on ECS and AWS Batch the "
            "task's role provides them"
        )
    if isinstance(exc, aws.TokenRetrievalError | aws.SSOError):
        return f"the AWS SSO session has expired or was never started ({aws_text(exc)}): {advice}"
    if isinstance(
        exc,
        aws.PartialCredentialsError
        | aws.CredentialRetrievalError
        | aws.RefreshWithMFAUnsupportedError
        | aws.InvalidConfigError,
    ):
        return f"the AWS credentials cannot be used ({aws_text(exc)}): {advice}"
    return None


class S3Storage(Storage):
    """An S3 bucket (or any S3-compatible endpoint) through one thread-safe boto3 client.

    The client uses botocore's adaptive retries and a connection pool sized to the workers;
    ``AWS_ENDPOINT_URL`` and the other standard AWS variables are honoured by botocore.
    """

    def __init__(
        self,
        bucket: str,
        *,
        client=None,
        probe=None,
        workers: int = 32,
        copy_limit=S3_COPY_LIMIT,
    ):
        self.bucket = bucket
        self.url = f"s3://{bucket}"
        self.workers = workers
        self.copy_limit = copy_limit
        from botocore.exceptions import BotoCoreError

        try:
            self.client = client or make_s3_client(workers)
            #: The client of `check_store`: short timeouts, one attempt (the given client
            #: itself when one is given).
            self.probe = probe or (client if client is not None else probe_client(self.client))
        except BotoCoreError as exc:  # such as an AWS_PROFILE that names no profile
            problem = credentials_problem(exc) or aws_text(exc)
            raise StoreUnavailable(f"cannot use bucket {bucket}: {problem}") from None

    def _error(self, exc: Exception, action: str, key: str = "") -> StorageError:
        from botocore.exceptions import ClientError

        where = f"{self.url}/{key}" if key else self.url
        problem = credentials_problem(exc)
        if problem is not None:
            return StorageError(f"cannot {action} {where}: {problem}")
        if isinstance(exc, ClientError):
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            if code in ("NoSuchKey", "404", "NotFound"):
                return ObjectNotFound(f"{where} does not exist")
            if code == "NoSuchBucket":
                return StorageError(f"bucket {self.bucket} does not exist")
            return StorageError(f"cannot {action} {where}: {code} {error.get('Message', '')}")
        return StorageError(f"cannot {action} {where}: {exc}")

    def _paginate(self, **kwargs) -> Iterator[dict]:
        from botocore.exceptions import BotoCoreError, ClientError

        paginator = self.client.get_paginator("list_objects_v2")
        try:
            yield from paginator.paginate(Bucket=self.bucket, **kwargs)
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, "list", kwargs.get("Prefix", "")) from None

    @staticmethod
    def _info(item: dict) -> ObjectInfo:
        return ObjectInfo(
            item["Key"], int(item["Size"]), item["LastModified"], etag=item.get("ETag")
        )

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        for page in self._paginate(Prefix=prefix):
            for item in page.get("Contents", ()):
                yield self._info(item)

    def list_after(self, prefix: str, start_after: str | None) -> Iterator[ObjectInfo]:
        after = {"StartAfter": start_after} if start_after else {}
        for page in self._paginate(Prefix=prefix, **after):
            for item in page.get("Contents", ()):
                yield self._info(item)

    def list_folders(self, prefix: str) -> tuple[builtins.list[str], builtins.list[ObjectInfo]]:
        folders: list[str] = []
        objects: list[ObjectInfo] = []
        for page in self._paginate(Prefix=prefix, Delimiter="/"):
            folders.extend(p["Prefix"] for p in page.get("CommonPrefixes", ()))
            objects.extend(self._info(item) for item in page.get("Contents", ()))
        return folders, objects

    def read(self, key: str) -> bytes:
        return self._get(key)

    def read_range(self, key: str, start: int, end: int) -> bytes:
        if end <= start:
            return b""
        return self._get(key, Range=f"bytes={start}-{end - 1}")

    def list_versions(self, prefix: str) -> Iterator[ObjectVersion]:
        from botocore.exceptions import BotoCoreError, ClientError

        paginator = self.client.get_paginator("list_object_versions")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                for item in page.get("Versions", ()):
                    if item.get("IsLatest"):  # a deleted object's newest is a delete marker
                        version = item.get("VersionId")
                        yield ObjectVersion(
                            item["Key"],
                            int(item["Size"]),
                            str(item.get("ETag", "")).strip('"') or None,
                            None if version in (None, "null") else str(version),
                        )
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, "list the versions of", prefix) from None

    def read_pinned(
        self,
        key: str,
        start: int,
        end: int,
        *,
        version_id: str | None = None,
        etag: str | None = None,
    ) -> bytes:
        from botocore.exceptions import BotoCoreError, ClientError

        if end <= start:
            return b""
        pins = {"VersionId": version_id} if version_id is not None else {}
        if etag is not None:
            pins["IfMatch"] = f'"{etag}"'
        where = f"{self.url}/{key}" + (f" (version {version_id})" if version_id else "")
        try:
            response = self.client.get_object(
                Bucket=self.bucket, Key=key, Range=f"bytes={start}-{end - 1}", **pins
            )
            return response["Body"].read()
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code == "InvalidRange":
                return b""
            if code in ("PreconditionFailed", "412"):
                raise PreconditionFailed(f"{where} has changed (its ETag is not {etag})") from None
            if code in ("NoSuchKey", "NoSuchVersion", "404", "NotFound", "InvalidArgument"):
                raise ObjectNotFound(f"{where} does not exist") from None
            raise self._error(exc, "read", key) from None
        except BotoCoreError as exc:
            raise self._error(exc, "read", key) from None

    def _get(self, key: str, **kwargs) -> bytes:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            response = self.client.get_object(Bucket=self.bucket, Key=key, **kwargs)
            return response["Body"].read()
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "InvalidRange":
                return b""
            raise self._error(exc, "read", key) from None
        except BotoCoreError as exc:
            raise self._error(exc, "read", key) from None

    def write(self, key: str, data: bytes, content_type: str = "application/json") -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=content_type)
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, "write", key) from None

    def write_file(self, key: str, path: str, content_type: str = "application/json") -> None:
        from boto3.s3.transfer import TransferConfig
        from botocore.exceptions import BotoCoreError, ClientError

        config = TransferConfig(multipart_chunksize=64 * 1024**2, max_concurrency=4)
        extra = {"ContentType": content_type}
        try:
            self.client.upload_file(path, self.bucket, key, ExtraArgs=extra, Config=config)
        except (ClientError, BotoCoreError, OSError) as exc:
            raise self._error(exc, "write", key) from None

    def copy(self, source_key: str, target_key: str, size: int | None = None) -> None:
        from boto3.s3.transfer import TransferConfig
        from botocore.exceptions import BotoCoreError, ClientError

        source = {"Bucket": self.bucket, "Key": source_key}
        try:
            if size is not None and size <= self.copy_limit:
                # One server-side request; the size from the listing spares a HEAD.
                self.client.copy_object(Bucket=self.bucket, Key=target_key, CopySource=source)
            else:
                config = TransferConfig(
                    multipart_threshold=self.copy_limit,
                    multipart_chunksize=max(self.copy_limit // 8, 5 * 1024**2),
                    max_concurrency=4,
                )
                self.client.copy(source, self.bucket, target_key, Config=config)
        except (ClientError, BotoCoreError) as exc:
            error = self._error(exc, "copy to", target_key)
            if isinstance(error, ObjectNotFound):  # only the source has to exist
                error = ObjectNotFound(f"{self.url}/{source_key} does not exist")
            raise error from None

    def processed(self) -> S3Storage:
        return S3Storage(
            self.bucket + "-processed", client=self.client, probe=self.probe, workers=self.workers
        )

    def check_store(self) -> None:
        """One HeadBucket through a client with short timeouts and no retries, so that an
        endpoint that cannot be reached is said within seconds, not after the SDK's retries.

        A HeadBucket error has no body, so S3's 403 (or 400) does not say whether the
        credentials or the permissions were refused: only then, one ListObjectsV2 of one key
        (`_refusal`), whose error does, tells which."""
        from botocore.exceptions import (
            BotoCoreError,
            ClientError,
            ConnectTimeoutError,
            EndpointConnectionError,
            ReadTimeoutError,
        )

        try:
            self.probe.head_bucket(Bucket=self.bucket)
        except (EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError) as exc:
            raise StoreUnavailable(
                f"cannot reach the S3 endpoint {self.client.meta.endpoint_url} for bucket "
                f"{self.bucket} ({exc}); check AWS_ENDPOINT_URL, the region and the network"
            ) from None
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in ("404", "NoSuchBucket", "NotFound"):
                raise StoreUnavailable(
                    f"bucket {self.bucket} does not exist: create it with "
                    f"`aws s3 mb s3://{self.bucket}` (the CloudFormation template {_TEMPLATE} "
                    "makes the warehouse bucket and its -processed bucket)"
                ) from None
            problem = credentials_problem(exc)
            if problem is None and code in ("400", "403"):  # a HEAD's error has no code
                problem = self._refusal()
            if problem is not None:
                raise StoreUnavailable(f"cannot use bucket {self.bucket}: {problem}") from None
            if code in ("403", "AccessDenied", "Forbidden"):
                raise StoreUnavailable(
                    f"cannot use bucket {self.bucket}: access denied (HeadBucket needs "
                    "s3:ListBucket on it)"
                ) from None
            raise StoreUnavailable(str(self._error(exc, "use", ""))) from None
        except BotoCoreError as exc:
            raise StoreUnavailable(str(self._error(exc, "use", ""))) from None

    def _refusal(self) -> str | None:
        """Why S3 refused a HeadBucket, when the credentials are the reason: one
        ListObjectsV2 of at most one key, whose error body carries the code (None when it
        does not say the credentials, or succeeds)."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.probe.list_objects_v2(Bucket=self.bucket, MaxKeys=1)
        except (ClientError, BotoCoreError) as exc:
            return credentials_problem(exc)
        return None

    # -- conditional operations (the run lease)

    def read_with_token(self, key: str) -> tuple[bytes, str]:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            response = self.client.get_object(Bucket=self.bucket, Key=key)
            return response["Body"].read(), response["ETag"]
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, "read", key) from None

    def _conditional(self, call, action: str, key: str, **kwargs) -> dict:
        """One conditional request; a failed condition raises `PreconditionFailed`."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return call(Bucket=self.bucket, Key=key, **kwargs)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            where = f"{self.url}/{key}"
            if code in ("PreconditionFailed", "412"):
                state = "already exists" if "IfNoneMatch" in kwargs else "has changed"
                raise PreconditionFailed(f"{where} {state}") from None
            if code in ("ConditionalRequestConflict", "409"):
                raise PreconditionFailed(f"{where} is being changed by another request") from None
            if code in ("NoSuchKey", "404"):
                raise PreconditionFailed(f"{where} does not exist") from None
            raise self._error(exc, action, key) from None
        except BotoCoreError as exc:
            raise self._error(exc, action, key) from None

    def write_if_absent(self, key: str, data: bytes, content_type: str = "application/json") -> str:
        response = self._conditional(
            self.client.put_object,
            "write",
            key,
            Body=data,
            ContentType=content_type,
            IfNoneMatch="*",
        )
        return response["ETag"]

    def write_if_match(
        self, key: str, data: bytes, token: str, content_type: str = "application/json"
    ) -> str:
        response = self._conditional(
            self.client.put_object, "write", key, Body=data, ContentType=content_type, IfMatch=token
        )
        return response["ETag"]

    def delete_if_match(self, key: str, token: str) -> None:
        self._conditional(self.client.delete_object, "delete", key, IfMatch=token)


#: The store probe's limits: it must answer within seconds when the endpoint cannot be reached.
PROBE_CONNECT_SECONDS = 2
PROBE_READ_SECONDS = 2


def probe_client(client):
    """A client of the same endpoint and region as ``client``, with short timeouts and a
    single attempt: for the one request that checks a store before a run starts."""
    import boto3
    from botocore.config import Config

    config = Config(
        retries={"mode": "standard", "total_max_attempts": 1},
        connect_timeout=PROBE_CONNECT_SECONDS,
        read_timeout=PROBE_READ_SECONDS,
    )
    return boto3.session.Session().client(
        "s3",
        endpoint_url=client.meta.endpoint_url,
        region_name=client.meta.region_name,
        config=config,
    )


def make_s3_client(workers: int = 32):
    """A boto3 S3 client with adaptive retries and a connection pool for ``workers`` threads."""
    import boto3
    from botocore.config import Config

    config = Config(
        retries={"mode": "adaptive", "max_attempts": 10},
        # Every pooled node (header reads, copies, metadata writes, clinical reads) may run
        # `workers` requests at once on the one shared client.
        max_pool_connections=4 * workers + 8,
        connect_timeout=10,
        read_timeout=60,
    )
    return boto3.session.Session().client("s3", config=config)
