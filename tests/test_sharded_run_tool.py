"""infrastructure/tools/sharded_run.py against moto's AWS Batch (its simple backend: jobs run
no container, they succeed, or fail when MOTO_SIMPLE_BATCH_FAIL_AFTER says so)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import boto3
import pytest
from moto import mock_aws

from infrastructure.tools import sharded_run

ROOT = Path(__file__).resolve().parent.parent
TOOL = ROOT / "infrastructure" / "tools" / "sharded_run.py"
REGION = "eu-west-2"


@pytest.fixture
def batch(monkeypatch):
    """A Batch client on moto, with the stack's queue and job definitions for suffix ``dev``
    (as the template makes them: a Fargate compute environment, one queue, two definitions)."""
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    with mock_aws(config={"batch": {"use_docker": False}}):
        ec2 = boto3.client("ec2")
        vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
        subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.0.0/24")["Subnet"]["SubnetId"]
        group = ec2.create_security_group(GroupName="batch", Description="b", VpcId=vpc)["GroupId"]
        iam = boto3.client("iam")
        role = iam.create_role(
            RoleName="loader", AssumeRolePolicyDocument='{"Version": "2012-10-17"}'
        )["Role"]["Arn"]
        client = boto3.client("batch")
        environment = client.create_compute_environment(
            computeEnvironmentName="warehouse-dev-fargate",
            type="MANAGED",
            state="ENABLED",
            serviceRole=role,  # moto wants one; AWS uses its service-linked role without it
            computeResources={
                "type": "FARGATE",
                "maxvCpus": 64,
                "subnets": [subnet],
                "securityGroupIds": [group],
            },
        )["computeEnvironmentArn"]
        client.create_job_queue(
            jobQueueName="warehouse-dev",
            state="ENABLED",
            priority=1,
            computeEnvironmentOrder=[{"order": 1, "computeEnvironment": environment}],
        )
        for name, phase in (("clinical-phase", "clinical"), ("image-shards", "images")):
            client.register_job_definition(
                jobDefinitionName=f"warehouse-dev-{name}",
                type="container",
                platformCapabilities=["FARGATE"],
                containerProperties={
                    "image": "warehouse:v1",
                    "command": ["warehouseloader"],
                    "jobRoleArn": role,
                    "executionRoleArn": role,
                    "resourceRequirements": [
                        {"type": "VCPU", "value": "1"},
                        {"type": "MEMORY", "value": "2048"},
                    ],
                    "environment": [{"name": "WAREHOUSE_PHASE", "value": phase}],
                },
            )
        yield client


def _environment(job) -> dict[str, str]:
    overrides = job["container"].get("environment") or []
    return {item["name"]: item["value"] for item in overrides}


def test_a_sharded_run_is_a_clinical_job_then_an_array_job_depending_on_it(batch):
    clinical_id, shards_id = sharded_run.submit_run(batch, "dev", 16, "run-1")
    jobs = sharded_run.describe(batch, [clinical_id, shards_id])
    clinical, shards = jobs[clinical_id], jobs[shards_id]
    assert clinical["jobDefinition"].split("/")[-1].startswith("warehouse-dev-clinical-phase")
    assert shards["jobDefinition"].split("/")[-1].startswith("warehouse-dev-image-shards")
    assert [d["jobId"] for d in shards["dependsOn"]] == [clinical_id]
    assert shards["arrayProperties"]["size"] == 16
    assert _environment(clinical)["WAREHOUSE_RUN_ID"] == "run-1"
    assert _environment(shards)["WAREHOUSE_RUN_ID"] == "run-1"
    assert _environment(shards)["WAREHOUSE_SHARDS"] == "16"


def test_one_shard_is_one_job_of_the_image_phase(batch):
    _, shards_id = sharded_run.submit_run(batch, "dev", 1, "run-1")
    [job] = batch.describe_jobs(jobs=[shards_id])["jobs"]
    assert "size" not in (job.get("arrayProperties") or {})
    assert "WAREHOUSE_SHARDS" not in _environment(job)  # the definition's images phase: 0/1


def test_the_command_submits_and_waits_printing_progress(batch, capsys):
    assert sharded_run.main(["--suffix", "dev", "--shards", "4", "--poll-seconds", "0.2"]) == 0
    out = capsys.readouterr().out
    assert "clinical phase job" in out and "then 4 shard(s)" in out
    assert "clinical phase SUCCEEDED; shards SUCCEEDED" in out
    assert "succeeded: its report is reports/warehouseloader/latest.json" in out


def test_a_failed_job_makes_the_command_fail(batch, capsys, monkeypatch):
    monkeypatch.setenv("MOTO_SIMPLE_BATCH_FAIL_AFTER", "0")
    assert sharded_run.main(["--suffix", "dev", "--shards", "2", "--poll-seconds", "0.2"]) == 1
    out = capsys.readouterr().out
    assert "FAILED" in out and "did not complete" in out


def test_progress_line_counts_the_shards():
    clinical = {"status": "SUCCEEDED"}
    shards = {
        "status": "RUNNING",
        "arrayProperties": {"statusSummary": {"SUCCEEDED": 3, "RUNNING": 12, "FAILED": 1}},
    }
    assert sharded_run.progress_line(clinical, shards, 16) == (
        "clinical phase SUCCEEDED; shards RUNNING (3/16 succeeded, 12 running, 1 failed)"
    )


def test_a_missing_queue_is_an_error(batch, capsys):
    assert sharded_run.main(["--suffix", "prod", "--shards", "2", "--no-wait"]) == 1
    assert "error:" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [[], ["--suffix", "dev"], ["--suffix", "dev", "--shards", "0"]])
def test_bad_arguments(argv):
    with pytest.raises(SystemExit) as stop:
        sharded_run.parse_args(argv)
    assert stop.value.code == 2


def test_help_and_version():
    result = subprocess.run(
        [sys.executable, str(TOOL), "--help"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0
    for option in ("--suffix", "--shards", "--run-id", "--no-wait", "--poll-seconds"):
        assert option in result.stdout
    from warehouse import __version__

    version = subprocess.run(
        [sys.executable, str(TOOL), "--version"], capture_output=True, text=True, timeout=60
    )
    assert version.stdout.strip() == f"sharded_run.py {__version__}"


def test_the_template_defines_what_the_tool_submits_to():
    import yaml

    from tests.test_infrastructure import TEMPLATE, CloudFormationLoader

    template = yaml.load(TEMPLATE.read_text(), Loader=CloudFormationLoader)  # noqa: S506
    resources = template["Resources"]
    expected = sharded_run.names("${StackSuffix}")
    environment = resources["BatchComputeEnvironment"]["Properties"]
    assert environment["ComputeResources"]["Type"] == "FARGATE"
    queue = resources["BatchJobQueue"]["Properties"]
    assert queue["JobQueueName"] == {"Fn::Sub": expected["queue"]}
    assert queue["ComputeEnvironmentOrder"][0]["ComputeEnvironment"] == {
        "Ref": "BatchComputeEnvironment"
    }
    for name, key, phase in (
        ("ClinicalPhaseJobDefinition", "clinical", "clinical"),
        ("ImageShardsJobDefinition", "shards", "images"),
    ):
        definition = resources[name]["Properties"]
        assert definition["JobDefinitionName"] == {"Fn::Sub": expected[key]}
        assert definition["PlatformCapabilities"] == ["FARGATE"]
        container = definition["ContainerProperties"]
        # the Fargate tasks' role: the same permissions as the single Pipeline task
        assert container["JobRoleArn"] == {"Fn::GetAtt": ["WarehouseLoaderTaskRole", "Arn"]}
        env = {item["Name"]: item["Value"] for item in container["Environment"]}
        assert env["WAREHOUSE_PHASE"] == phase
        assert env["WAREHOUSE_BUCKET"] == {"Ref": "WarehouseBucket"}
    for name in (
        "BatchComputeEnvironment",
        "BatchJobQueue",
        "ClinicalPhaseJobDefinition",
        "ImageShardsJobDefinition",
    ):
        assert resources[name]["Condition"] == "HasBatch"
    etl = resources["EtlGroup"]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]
    [submit] = [s for s in etl if s.get("Sid") == "SubmitShardedRuns"]
    targets = " ".join(r["Fn::Sub"] for r in submit["Resource"])
    for key in ("queue", "clinical", "shards"):
        assert expected[key] in targets
