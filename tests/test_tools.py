"""Operator tools in infrastructure/tools/, against moto."""

import csv
import gzip
import hashlib
import io
import json
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import boto3
import pytest
from moto import mock_aws

from infrastructure.tools import batchdelete, get_inventory, get_logs
from tests.aws_keys import keys_checked, no_credentials

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ROOT / "infrastructure" / "tools"
REGION = "eu-west-2"


@pytest.fixture
def aws(monkeypatch, tmp_path):
    """Fake credentials in eu-west-2, moto active, files written under tmp_path."""
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.chdir(tmp_path)
    with mock_aws():
        yield


@pytest.mark.parametrize(
    ("tool", "options"),
    [
        ("get_logs.py", ["--log-stream", "--latest", "--suffix", "--log-group", "--output"]),
        ("get_inventory.py", ["--bucket", "--inventory-bucket", "--output"]),
        ("batchdelete.py", ["--bucket", "--dry-run", "--batch-size", "keys_file"]),
    ],
)
def test_help_lists_the_options(tool, options):
    result = subprocess.run(
        [sys.executable, str(TOOLS / tool), "-h"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    for option in options:
        assert option in result.stdout


@pytest.mark.parametrize(
    "script",
    [TOOLS / "get_logs.py", TOOLS / "get_inventory.py", TOOLS / "batchdelete.py"]
    + [ROOT / "infrastructure" / "create.py"],
    ids=lambda path: path.name,
)
def test_version_is_the_package_version(script):
    from warehouse import __version__

    result = subprocess.run(
        [sys.executable, str(script), "--version"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{script.name} {__version__}\n"


# ------------------------------------------------------------------ get_logs


NOW_MS = int(time.time() * 1000) - 3_600_000  # CloudWatch refuses events older than 14 days


def put_events(client, group, stream, count, start_ms=NOW_MS):
    client.create_log_stream(logGroupName=group, logStreamName=stream)
    events = [{"timestamp": start_ms + i, "message": f"line {i}"} for i in range(count)]
    client.put_log_events(logGroupName=group, logStreamName=stream, logEvents=events)


def test_get_logs_follows_every_page(aws, tmp_path):
    client = boto3.client("logs")
    group = get_logs.log_group_name("dev")
    client.create_log_group(logGroupName=group)
    put_events(client, group, "pipeline/warehouseloader/abc", 25)
    calls = []
    client.meta.events.register("before-call.logs.GetLogEvents", lambda **kw: calls.append(1))

    events = get_logs.fetch_events(client, group, "pipeline/warehouseloader/abc", page_size=10)

    assert [e["message"] for e in events] == [f"line {i}" for i in range(25)]
    assert len(calls) == 4  # 10 + 10 + 5, then the unchanged token ends the loop
    expected_time = datetime.fromtimestamp(NOW_MS / 1000, UTC).isoformat()
    assert events[0]["time"] == expected_time


def test_get_logs_command_writes_json(aws, tmp_path, capsys):
    client = boto3.client("logs")
    group = "/ecs/warehouse-dev-pipeline"
    client.create_log_group(logGroupName=group)
    put_events(client, group, "pipeline/warehouseloader/abc", 7)

    argv = ["--suffix", "dev", "--log-stream", "pipeline/warehouseloader/abc", "--page-size", "3"]
    assert get_logs.main(argv) == 0

    written = tmp_path / "pipeline_warehouseloader_abc.json"
    document = json.loads(written.read_text())
    assert document["logGroupName"] == group
    assert document["logStreamName"] == "pipeline/warehouseloader/abc"
    assert [e["message"] for e in document["events"]] == [f"line {i}" for i in range(7)]
    assert "7 events" in capsys.readouterr().out


def test_get_logs_latest_stream_and_prefix(aws, tmp_path):
    client = boto3.client("logs")
    group = "/ecs/warehouse-dev-pipeline"
    client.create_log_group(logGroupName=group)
    put_events(client, group, "dataprocess/dataprocess/old", 2, start_ms=NOW_MS)
    put_events(client, group, "pipeline/warehouseloader/new", 3, start_ms=NOW_MS + 60_000)

    assert get_logs.latest_stream(client, group) == "pipeline/warehouseloader/new"
    assert get_logs.latest_stream(client, group, "dataprocess/") == "dataprocess/dataprocess/old"

    out = tmp_path / "latest.json"
    assert get_logs.main(["--log-group", group, "--latest", "-o", str(out)]) == 0
    assert len(json.loads(out.read_text())["events"]) == 3


def test_get_logs_missing_group_is_an_error(aws, capsys):
    assert get_logs.main(["--suffix", "nope", "--latest"]) == 1
    assert "error:" in capsys.readouterr().err


def test_get_logs_rejects_bad_page_size():
    with pytest.raises(SystemExit):
        get_logs.parse_args(["--suffix", "dev", "--latest", "--page-size", "0"])


# ------------------------------------------------------------------ get_inventory

BUCKET = "warehouse-123456789012-dev"
INVENTORY = f"{BUCKET}-inventory"
ROWS = [
    ("raw-site/2021-02-15/data/Covid1_data.json", "1500", "2021-02-15T10:00:00.000Z"),
    ("raw-site/2021-02-15/images/a b+c.dcm", "2048", "2021-02-15T10:01:00.000Z"),
    ("training/data/Covid1/data_2021-02-15.json", "1500", "2021-02-16T01:00:00.000Z"),
    ("réf/ü,comma.json", "10", "2021-02-16T01:00:00.000Z"),
]


def encode_key(key):
    """Encode a key the way S3 writes it in a CSV inventory (form URL encoding)."""
    from urllib.parse import quote_plus

    return quote_plus(key, safe="/")


def put_delivery(client, stamp, fragments, schema="Bucket, Key, Size, LastModifiedDate"):
    """Write one inventory delivery (fragments + manifest + hive symlink) like S3 does."""
    base = f"{BUCKET}/daily-full-inventory"
    files = []
    for i, rows in enumerate(fragments):
        text = io.StringIO()
        csv.writer(text, lineterminator="\n").writerows(rows)
        body = gzip.compress(text.getvalue().encode("utf-8"))
        key = f"{base}/data/{stamp}-{i}.csv.gz"
        client.put_object(Bucket=INVENTORY, Key=key, Body=body)
        files.append({"key": key, "size": len(body), "MD5checksum": hashlib.md5(body).hexdigest()})
    manifest = {
        "sourceBucket": BUCKET,
        "destinationBucket": f"arn:aws:s3:::{INVENTORY}",
        "fileFormat": "CSV",
        "fileSchema": schema,
        "files": files,
    }
    client.put_object(
        Bucket=INVENTORY, Key=f"{base}/{stamp}/manifest.json", Body=json.dumps(manifest)
    )
    hive = stamp.replace("T", "-").rstrip("Z")
    symlink = "\n".join(f"s3://{INVENTORY}/{f['key']}" for f in files)
    client.put_object(Bucket=INVENTORY, Key=f"{base}/hive/dt={hive}/symlink.txt", Body=symlink)


def inventory_rows(rows):
    return [(BUCKET, encode_key(key), size, modified) for key, size, modified in rows]


def test_get_inventory_takes_the_latest_delivery_and_decodes_keys(aws, tmp_path):
    client = boto3.client("s3")
    client.create_bucket(Bucket=INVENTORY, CreateBucketConfiguration={"LocationConstraint": REGION})
    put_delivery(client, "2026-11-23T01-00Z", [inventory_rows(ROWS[:1])])
    put_delivery(client, "2026-11-24T01-00Z", [inventory_rows(ROWS[:2]), inventory_rows(ROWS[2:])])

    out = tmp_path / "inventory.csv"
    assert get_inventory.main(["--bucket", BUCKET, "-o", str(out)]) == 0

    with out.open(newline="", encoding="utf-8") as handle:
        written = list(csv.reader(handle))
    assert written[0] == ["bucket", "key", "size", "last_modified"]
    assert written[1:] == [[BUCKET, *row] for row in ROWS]


def test_get_inventory_follows_the_manifest_column_order(aws):
    client = boto3.client("s3")
    client.create_bucket(Bucket=INVENTORY, CreateBucketConfiguration={"LocationConstraint": REGION})
    key, size, modified = ROWS[1]
    row = [BUCKET, encode_key(key), "STANDARD", modified, size]
    put_delivery(
        client, "2026-11-24T01-00Z", [[row]], "Bucket, Key, StorageClass, LastModifiedDate, Size"
    )

    out = io.StringIO()
    manifest_key, count = get_inventory.download_inventory(client, BUCKET, out)

    assert manifest_key == f"{BUCKET}/daily-full-inventory/2026-11-24T01-00Z/manifest.json"
    assert count == 1
    assert (
        out.getvalue().splitlines()[1]
        == f"{BUCKET},raw-site/2021-02-15/images/a b+c.dcm,{size},{modified}"
    )


def test_get_inventory_detects_a_corrupt_fragment(aws):
    client = boto3.client("s3")
    client.create_bucket(Bucket=INVENTORY, CreateBucketConfiguration={"LocationConstraint": REGION})
    put_delivery(client, "2026-11-24T01-00Z", [inventory_rows(ROWS)])
    fragment = f"{BUCKET}/daily-full-inventory/data/2026-11-24T01-00Z-0.csv.gz"
    client.put_object(Bucket=INVENTORY, Key=fragment, Body=gzip.compress(b"x,y\n"))

    with pytest.raises(ValueError, match="MD5 mismatch"):
        get_inventory.download_inventory(client, BUCKET, io.StringIO())


def test_get_inventory_missing_bucket_is_an_error(aws, capsys):
    assert get_inventory.main(["--bucket", "no-such-bucket"]) == 1
    assert "NoSuchBucket" in capsys.readouterr().err


def test_get_inventory_without_delivery_is_an_error(aws, capsys):
    client = boto3.client("s3")
    client.create_bucket(Bucket=INVENTORY, CreateBucketConfiguration={"LocationConstraint": REGION})
    assert get_inventory.main(["--bucket", BUCKET]) == 1
    assert "no inventory delivered yet" in capsys.readouterr().err


# ------------------------------------------------------------------ batchdelete


def test_read_keys_keeps_spaces_and_drops_blanks_and_repeats():
    lines = ["a key \n", "\n", "b\r\n", "a key \n", "   \n", "c"]
    assert batchdelete.read_keys(lines) == ["a key ", "b", "c"]


def test_batchdelete_deletes_more_than_one_batch(aws, tmp_path, capsys, monkeypatch):
    client = boto3.client("s3")
    client.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
    keys = [f"training/data/Covid{i}/data_2021-02-15.json" for i in range(1_050)]
    for key in keys:
        client.put_object(Bucket=BUCKET, Key=key, Body=b"")
    client.put_object(Bucket=BUCKET, Key="config.json", Body=b"{}")
    listing = tmp_path / "keys.txt"
    listing.write_text("\n".join(keys) + "\n")
    requests = []
    make_client = boto3.client

    def counting_client(*args, **kwargs):
        made = make_client(*args, **kwargs)
        made.meta.events.register(
            "before-parameter-build.s3.DeleteObjects",
            lambda params, **_: requests.append(len(params["Delete"]["Objects"])),
        )
        return made

    monkeypatch.setattr(batchdelete.boto3, "client", counting_client)
    assert batchdelete.main(["--bucket", BUCKET, str(listing)]) == 0

    assert requests == [1000, 50]
    remaining = client.list_objects_v2(Bucket=BUCKET)
    assert [o["Key"] for o in remaining["Contents"]] == ["config.json"]
    assert "1050 of 1050 keys deleted" in capsys.readouterr().out


def test_batchdelete_dry_run_deletes_nothing(aws, tmp_path, capsys):
    client = boto3.client("s3")
    client.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
    client.put_object(Bucket=BUCKET, Key="reports/a.json", Body=b"")
    listing = tmp_path / "keys.txt"
    listing.write_text("reports/a.json\nreports/b.json\n")

    assert batchdelete.main(["--bucket", BUCKET, str(listing), "--dry-run"]) == 0

    out = capsys.readouterr().out
    assert f"would delete s3://{BUCKET}/reports/a.json" in out
    assert "2 of 2 keys would be deleted" in out
    assert client.list_objects_v2(Bucket=BUCKET)["KeyCount"] == 1


class RefusingS3:
    """Stands in for an S3 client that refuses the first key of every batch."""

    def delete_objects(self, Bucket, Delete):  # noqa: N803 (boto3's parameter names)
        first = Delete["Objects"][0]["Key"]
        return {"Errors": [{"Key": first, "Code": "AccessDenied", "Message": "Access Denied"}]}


def test_batchdelete_reports_errors_and_fails(tmp_path, monkeypatch, capsys):
    deleted, errors = batchdelete.delete_keys(RefusingS3(), BUCKET, ["a", "b", "c"], batch_size=2)
    assert deleted == 1
    assert [e["Key"] for e in errors] == ["a", "c"]

    listing = tmp_path / "keys.txt"
    listing.write_text("a\nb\n")
    monkeypatch.setattr(batchdelete.boto3, "client", lambda *a, **k: RefusingS3())
    assert batchdelete.main(["--bucket", BUCKET, str(listing)]) == 1
    captured = capsys.readouterr()
    assert "error: a: AccessDenied Access Denied" in captured.err
    assert "1 of 2 keys deleted" in captured.out


def test_batchdelete_missing_bucket_is_an_error(aws, tmp_path, capsys):
    listing = tmp_path / "keys.txt"
    listing.write_text("a\n")
    assert batchdelete.main(["--bucket", "no-such-bucket", str(listing)]) == 1
    assert "NoSuchBucket" in capsys.readouterr().err


def test_batchdelete_rejects_oversized_batches():
    with pytest.raises(SystemExit):
        batchdelete.parse_args(["--bucket", BUCKET, "keys.txt", "--batch-size", "1001"])


# ------------------------------------------------------------------ credentials and region
# Every operator tool says a missing region, missing or refused credentials in one line (exit 2),
# never with a traceback; any other AWS error is one line too (exit 1).

#: Each tool, run as an operator runs it, with arguments that make it call AWS at once.
TOOL_RUNS = {
    "create.py": [
        str(ROOT / "infrastructure" / "create.py"),
        "--suffix",
        "dev",
        "-p",
        "ImageTag=v1",
    ],
    "get_logs.py": [str(TOOLS / "get_logs.py"), "--suffix", "dev", "--latest"],
    "get_inventory.py": [str(TOOLS / "get_inventory.py"), "--bucket", BUCKET],
    "batchdelete.py": [str(TOOLS / "batchdelete.py"), "--bucket", BUCKET, "keys.txt"],
    "sharded_run.py": [str(TOOLS / "sharded_run.py"), "--suffix", "dev", "--shards", "2"],
}
#: The tools whose service is regional: with no region, boto3 cannot even build their client
#: (S3's tools can: S3 answers in any region, so there the credentials are missing first).
REGIONAL = ("create.py", "get_logs.py", "sharded_run.py")


def run_tool(name: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """Run a tool as an operator does, in a folder with a ``keys.txt``.

    A separate process, with the environment as the test left it.
    """
    (tmp_path / "keys.txt").write_text("training/a.json\n")
    return subprocess.run(
        [sys.executable, *TOOL_RUNS[name]],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )


def said_in_one_line(result: subprocess.CompletedProcess) -> str:
    """The one line a tool wrote on stderr (and that it wrote nothing else there)."""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


@pytest.mark.parametrize("name", sorted(TOOL_RUNS))
def test_no_credentials_and_no_region_is_one_line_exit_2(name, tmp_path, monkeypatch):
    no_credentials(monkeypatch, region=False)
    result = run_tool(name, tmp_path)
    line = said_in_one_line(result)
    assert result.returncode == 2
    if name in REGIONAL:
        assert line == (
            "error: no AWS region is configured: set AWS_REGION (or AWS_DEFAULT_REGION), put a "
            "region in the AWS profile, or give the command's --region"
        )
    else:
        assert line.startswith("error: no AWS credentials were found: set AWS_PROFILE ")


@pytest.mark.parametrize("name", sorted(TOOL_RUNS))
def test_no_credentials_is_one_line_exit_2(name, tmp_path, monkeypatch):
    no_credentials(monkeypatch)
    result = run_tool(name, tmp_path)
    assert said_in_one_line(result).startswith("error: no AWS credentials were found: ")
    assert result.returncode == 2


@pytest.mark.parametrize("name", sorted(TOOL_RUNS))
def test_a_profile_that_does_not_exist_is_one_line_exit_2(name, tmp_path, monkeypatch):
    no_credentials(monkeypatch)
    monkeypatch.setenv("AWS_PROFILE", "prod-typo")
    result = run_tool(name, tmp_path)
    assert said_in_one_line(result).startswith(
        "error: the AWS profile in AWS_PROFILE does not exist (The config profile (prod-typo) "
    )
    assert result.returncode == 2


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("create.py", "InvalidClientTokenId"),  # CloudFormation, a query API
        ("get_inventory.py", "InvalidAccessKeyId"),  # S3
        ("batchdelete.py", "InvalidAccessKeyId"),
    ],
)
def test_a_key_aws_refuses_is_one_line_exit_2(name, code, tmp_path, s3_endpoint):
    # (a moto server that checks keys: the test's fake key is one it does not know)
    with keys_checked():
        result = run_tool(name, tmp_path)
    line = said_in_one_line(result)
    assert line.startswith(f"error: AWS refused the credentials ({code}: ")
    assert line.endswith("and, for an SSO profile, run `aws sso login`")
    assert result.returncode == 2


def test_an_expired_session_is_one_line_exit_2_for_the_json_services(monkeypatch, capsys):
    """CloudWatch Logs and Batch answer bad credentials with codes of their own.

    Moto's server answers them in the query APIs' XML, so their answer is stubbed here.
    """
    from botocore.stub import Stubber

    from infrastructure.tools import sharded_run

    def stubbed(service, method, code):
        def make(*_args, **kwargs):
            client = boto3.session.Session().client(service, region_name=REGION)
            stubber = Stubber(client)
            stubber.add_client_error(method, code, "The security token is expired", 400)
            stubber.activate()
            return client

        return make

    expired = stubbed("logs", "describe_log_streams", "ExpiredTokenException")
    monkeypatch.setattr(get_logs.boto3, "client", expired)
    assert get_logs.main(["--suffix", "dev", "--latest"]) == 2
    refused = stubbed("batch", "submit_job", "UnrecognizedClientException")
    monkeypatch.setattr(sharded_run.boto3, "client", refused)
    assert sharded_run.main(["--suffix", "dev", "--shards", "2"]) == 2
    expired, refused = capsys.readouterr().err.splitlines()
    assert expired.startswith("error: the AWS credentials have expired (ExpiredTokenException: ")
    assert refused.startswith("error: AWS refused the credentials (UnrecognizedClientException: ")


def test_other_aws_errors_stay_exit_1_in_one_line(tmp_path, monkeypatch):
    # an endpoint that cannot be reached: a BotoCoreError, which used to be a traceback
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    result = run_tool("get_inventory.py", tmp_path)
    assert said_in_one_line(result).startswith("error: Could not connect to the endpoint URL: ")
    assert result.returncode == 1
