"""The AWS side: the CloudFormation template (cfn-lint, content), create.py on moto, the image."""

import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import boto3
import pytest
import yaml
from moto import mock_aws

from infrastructure import create
from infrastructure.tools import get_inventory

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "infrastructure" / "templates" / "warehouse.yaml"
REGION = "eu-west-2"
ACCOUNT = "123456789012"
GRAPHS = {  # task definition family suffix -> container name and command
    "Pipeline": "warehouseloader",
    "SubmittingCentres": "submittingcentres",
    "DataProcessing": "dataprocess",
}


# ------------------------------------------------------------------ the template


class CloudFormationLoader(yaml.SafeLoader):
    """YAML loader that reads CloudFormation short tags (!Ref X -> {"Ref": "X"})."""


def _tag(loader, suffix, node):
    name = "Ref" if suffix == "Ref" else f"Fn::{suffix}"
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
        if suffix == "GetAtt":
            value = value.split(".", 1)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    return {name: value}


CloudFormationLoader.add_multi_constructor("!", _tag)


@pytest.fixture(scope="module")
def template():
    return yaml.load(TEMPLATE.read_text(), Loader=CloudFormationLoader)  # noqa: S506


def resource(template, name, kind):
    res = template["Resources"][name]
    assert res["Type"] == kind
    return res["Properties"]


def statements(policies):
    return [s for policy in policies for s in policy["PolicyDocument"]["Statement"]]


def as_list(value):
    return value if isinstance(value, list) else [value]


def test_template_passes_cfn_lint():
    cfn_lint = shutil.which("cfn-lint", path=str(Path(sys.executable).parent)) or shutil.which(
        "cfn-lint"
    )
    assert cfn_lint, "cfn-lint is not installed (make venv-dev)"
    result = subprocess.run([cfn_lint, str(TEMPLATE)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_template_fits_an_inline_template_body():
    assert len(TEMPLATE.read_bytes()) <= create.TEMPLATE_BODY_LIMIT


def test_parameters(template):
    params = template["Parameters"]
    suffix = re.compile(params["StackSuffix"]["AllowedPattern"])
    for good in ("dev", "staging", "prod"):
        assert suffix.match(good) and create.SUFFIX_PATTERN.match(good)
    for bad in ("Dev", "", "prod-1", "a" * 13):
        assert not suffix.match(bad) and not create.SUFFIX_PATTERN.match(bad)
    assert params["ImageTag"]["Default"] == "latest"
    assert params["ImageRepository"]["Default"] == ""


def test_warehouse_bucket_is_versioned_encrypted_private_with_daily_inventory(template):
    bucket = resource(template, "WarehouseBucket", "AWS::S3::Bucket")
    assert template["Resources"]["WarehouseBucket"]["DeletionPolicy"] == "Retain"
    assert bucket["BucketName"] == {
        "Fn::Sub": "${BucketNamePrefix}-${AWS::AccountId}-${StackSuffix}"
    }
    assert bucket["VersioningConfiguration"] == {"Status": "Enabled"}
    [rule] = bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert rule["ServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    assert all(bucket["PublicAccessBlockConfiguration"].values())
    assert len(bucket["PublicAccessBlockConfiguration"]) == 4
    [inventory] = bucket["InventoryConfigurations"]
    assert inventory["Id"] == get_inventory.CONFIG_ID == "daily-full-inventory"
    assert inventory["ScheduleFrequency"] == "Daily"
    assert inventory["Enabled"] is True
    assert inventory["Destination"]["Format"] == "CSV"
    assert inventory["Destination"]["BucketArn"] == {"Fn::GetAtt": ["InventoryBucket", "Arn"]}
    # No destination prefix: S3 delivers under <bucket>/daily-full-inventory/ (clinical-data 1.1)
    assert "Prefix" not in inventory["Destination"]
    assert inventory["OptionalFields"] == ["Size", "LastModifiedDate"]


@pytest.mark.parametrize(
    ("name", "suffix"), [("ProcessedBucket", "processed"), ("InventoryBucket", "inventory")]
)
def test_side_buckets_are_named_after_the_warehouse_bucket(template, name, suffix):
    bucket = resource(template, name, "AWS::S3::Bucket")
    assert bucket["BucketName"] == {
        "Fn::Sub": f"${{BucketNamePrefix}}-${{AWS::AccountId}}-${{StackSuffix}}-{suffix}"
    }
    assert all(bucket["PublicAccessBlockConfiguration"].values())
    assert bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"]


def test_inventory_bucket_accepts_deliveries_from_s3_for_the_warehouse_bucket_only(template):
    policy = resource(template, "InventoryBucketPolicy", "AWS::S3::BucketPolicy")
    [allow] = [s for s in policy["PolicyDocument"]["Statement"] if s["Effect"] == "Allow"]
    assert allow["Principal"] == {"Service": "s3.amazonaws.com"}
    assert allow["Action"] == "s3:PutObject"
    source = allow["Condition"]["ArnLike"]["aws:SourceArn"]["Fn::Sub"]
    assert source.endswith(":s3:::${BucketNamePrefix}-${AWS::AccountId}-${StackSuffix}")
    assert allow["Condition"]["StringEquals"]["aws:SourceAccount"] == {"Ref": "AWS::AccountId"}


def test_uploaders_may_write_only_under_their_own_raw_prefix(template):
    group = resource(template, "UploadersGroup", "AWS::IAM::Group")
    allowed = statements(group["Policies"])
    writes = [s for s in allowed if any(a.startswith("s3:Put") for a in as_list(s["Action"]))]
    assert len(writes) == 1
    assert writes[0]["Resource"] == {"Fn::Sub": "${WarehouseBucket.Arn}/raw-${!aws:username}/*"}
    for statement in allowed:
        assert statement["Effect"] == "Allow"
        for action in as_list(statement["Action"]):
            assert "*" not in action and "Delete" not in action and action != "s3:GetObject"
    [listing] = [s for s in allowed if s["Action"] == "s3:ListBucket"]
    assert listing["Condition"]["StringLike"]["s3:prefix"] == [
        "raw-${aws:username}/*",
        "raw-${aws:username}/",
    ]


def test_task_role_is_least_privilege(template):
    role = resource(template, "TaskRole", "AWS::IAM::Role")
    [trust] = role["AssumeRolePolicyDocument"]["Statement"]
    assert trust["Principal"] == {"Service": "ecs-tasks.amazonaws.com"}
    allowed = statements(role["Policies"])
    actions = {a for s in allowed for a in as_list(s["Action"])}
    assert actions == {
        "s3:ListBucket",
        "s3:GetObject",
        "s3:PutObject",
        "s3:AbortMultipartUpload",
        "sns:Publish",
    }
    [write] = [s for s in allowed if "s3:PutObject" in as_list(s["Action"])]
    targets = [r["Fn::Sub"] for r in write["Resource"]]
    assert targets == [
        "${WarehouseBucket.Arn}/training/*",
        "${WarehouseBucket.Arn}/validation/*",
        "${WarehouseBucket.Arn}/reports/*",
        "${ProcessedBucket.Arn}/*",
    ]  # never raw-*, never config.json
    [publish] = [s for s in allowed if s["Action"] == "sns:Publish"]
    assert publish["Resource"] == {"Ref": "Topic"}


def test_etl_group_can_run_the_tasks_and_never_write_raw(template):
    group = resource(template, "EtlGroup", "AWS::IAM::Group")
    allowed = statements(group["Policies"])
    actions = {a for s in allowed for a in as_list(s["Action"])}
    assert {"ecs:RunTask", "iam:PassRole", "logs:GetLogEvents", "s3:GetObject"} <= actions
    writable = {
        "${WarehouseBucket.Arn}/config.json",
        "${WarehouseBucket.Arn}/training/*",
        "${WarehouseBucket.Arn}/validation/*",
        "${WarehouseBucket.Arn}/reports/*",
        "${ProcessedBucket.Arn}/*",
    }
    for statement in allowed:
        if {"s3:PutObject", "s3:DeleteObject"} & set(as_list(statement["Action"])):
            assert {target["Fn::Sub"] for target in statement["Resource"]} <= writable
    [pass_role] = [s for s in allowed if s["Action"] == "iam:PassRole"]
    assert (
        pass_role["Condition"]["StringEquals"]["iam:PassedToService"] == "ecs-tasks.amazonaws.com"
    )


def test_log_group_cluster_and_topic(template):
    logs = resource(template, "LogGroup", "AWS::Logs::LogGroup")
    assert logs["LogGroupName"] == {"Fn::Sub": "/ecs/warehouse-${StackSuffix}-pipeline"}
    assert logs["RetentionInDays"] == {"Ref": "LogRetentionDays"}
    cluster = resource(template, "Cluster", "AWS::ECS::Cluster")
    assert {"Name": "containerInsights", "Value": "enabled"} in cluster["ClusterSettings"]
    resource(template, "Topic", "AWS::SNS::Topic")
    execution = resource(template, "ExecutionRole", "AWS::IAM::Role")
    [logs_statement] = [s for s in statements(execution["Policies"]) if s["Sid"] == "WriteLogs"]
    assert logs_statement["Resource"] == {"Fn::GetAtt": ["LogGroup", "Arn"]}


@pytest.mark.parametrize(("family", "command"), sorted(GRAPHS.items()))
def test_fargate_task_definitions(template, family, command):
    task = resource(template, f"{family}TaskDefinition", "AWS::ECS::TaskDefinition")
    assert task["Family"] == {"Fn::Sub": f"warehouse-${{StackSuffix}}-{family}"}
    assert task["RequiresCompatibilities"] == ["FARGATE"]
    assert task["NetworkMode"] == "awsvpc"
    assert task["TaskRoleArn"] == {"Fn::GetAtt": ["TaskRole", "Arn"]}
    assert task["ExecutionRoleArn"] == {"Fn::GetAtt": ["ExecutionRole", "Arn"]}
    [container] = task["ContainerDefinitions"]
    assert container["Name"] == command
    assert container["Command"] == [command]
    assert (ROOT / "bin" / command).exists()
    env = {e["Name"]: e["Value"] for e in container["Environment"]}
    assert env["WAREHOUSE_BUCKET"] == {"Ref": "WarehouseBucket"}
    assert env["TOPIC_ARN"] == {"Ref": "Topic"}
    log = container["LogConfiguration"]
    assert log["LogDriver"] == "awslogs"
    assert log["Options"]["awslogs-group"] == {"Ref": "LogGroup"}
    images = container["Image"]["Fn::If"][1:]
    assert [i["Fn::Sub"] for i in images] == [
        "${Repository.RepositoryUri}:${ImageTag}",
        "${ImageRepository}:${ImageTag}",
    ]  # the tag is a parameter: no commit hash baked in
    assert container["LinuxParameters"]["InitProcessEnabled"] is True


def test_outputs_give_the_operator_everything(template):
    assert {
        "WarehouseBucketName",
        "ProcessedBucketName",
        "InventoryBucketName",
        "UploadersGroupName",
        "EtlGroupName",
        "RepositoryUri",
        "ClusterName",
        "PipelineTaskDefinitionArn",
        "SubmittingCentresTaskDefinitionArn",
        "DataProcessingTaskDefinitionArn",
        "LogGroupName",
        "TopicArn",
    } <= set(template["Outputs"])


def test_no_commit_hash_in_the_template():
    assert not re.search(r"\b[0-9a-f]{40}\b", TEMPLATE.read_text())


# ------------------------------------------------------------------ create.py


@pytest.fixture
def aws(monkeypatch, tmp_path):
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    with warnings.catch_warnings():
        # moto's CloudFormation skips AWS::IAM::Group and AWS::S3::BucketPolicy, with a warning
        warnings.filterwarnings("ignore", message="Tried to parse", category=UserWarning)
        with mock_aws():
            yield


def test_create_help():
    result = subprocess.run(
        [sys.executable, str(ROOT / "infrastructure" / "create.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    for option in ("--suffix", "--region", "--template", "--parameter"):
        assert option in result.stdout


@pytest.mark.parametrize("argv", [[], ["--suffix", "Prod"], ["--suffix", "dev", "-p", "NoEquals"]])
def test_create_rejects_bad_arguments(argv):
    with pytest.raises(SystemExit) as exit_info:
        create.parse_args(argv)
    assert exit_info.value.code == 2


def test_stack_parameters_keep_previous_values_on_update():
    keys = ["StackSuffix", "ImageTag", "NotificationEmail", "Secret", "NewParameter"]
    given = {"StackSuffix": "dev", "ImageTag": "v2"}
    assert create.stack_parameters(given, keys, None) == [
        {"ParameterKey": "StackSuffix", "ParameterValue": "dev"},
        {"ParameterKey": "ImageTag", "ParameterValue": "v2"},
    ]
    previous = {
        "StackSuffix": "dev",
        "ImageTag": "v1",
        "NotificationEmail": "a@b",
        "Secret": "****",
    }
    assert create.stack_parameters(given, keys, previous)[2:] == [
        {"ParameterKey": "NotificationEmail", "ParameterValue": "a@b"},
        {"ParameterKey": "Secret", "UsePreviousValue": True},
    ]
    with pytest.raises(ValueError, match="Typo"):
        create.stack_parameters({"Typo": "x"}, keys, None)


def test_create_then_update_the_stack(aws, capsys):
    argv = ["--suffix", "dev", "--region", REGION, "--poll-seconds", "1"]

    assert create.main([*argv, "-p", "LogRetentionDays=30"]) == 0

    out = capsys.readouterr().out
    bucket = f"warehouse-{ACCOUNT}-dev"
    assert "Creating stack warehouse-dev..." in out
    assert "Stack warehouse-dev: CREATE_COMPLETE" in out
    assert re.search(rf"^WarehouseBucketName +{bucket}$", out, re.M)
    assert re.search(r"^LogGroupName +/ecs/warehouse-dev-pipeline$", out, re.M)
    assert re.search(r"^ImageUri +\S+/warehouse-dev:latest$", out, re.M)
    names = {b["Name"] for b in boto3.client("s3").list_buckets()["Buckets"]}
    assert names == {bucket, f"{bucket}-processed", f"{bucket}-inventory"}
    families = boto3.client("ecs").list_task_definition_families()["families"]
    assert set(families) == {f"warehouse-dev-{family}" for family in GRAPHS}
    topic = f"arn:aws:sns:{REGION}:{ACCOUNT}:warehouse-dev-notifications"
    assert topic in {t["TopicArn"] for t in boto3.client("sns").list_topics()["Topics"]}

    assert create.main([*argv, "--parameter", "ImageTag=v2"]) == 0

    out = capsys.readouterr().out
    assert "Updating stack warehouse-dev..." in out
    assert re.search(r"^ImageUri +\S+/warehouse-dev:v2$", out, re.M)
    stack = boto3.client("cloudformation").describe_stacks(StackName="warehouse-dev")["Stacks"][0]
    values = {p["ParameterKey"]: p["ParameterValue"] for p in stack["Parameters"]}
    assert values["LogRetentionDays"] == "30"  # kept from the creation, not reset to 90
    assert values["ImageTag"] == "v2"


def test_update_without_changes_is_a_success(aws, capsys, monkeypatch):
    assert create.main(["--suffix", "dev", "--poll-seconds", "1"]) == 0
    make_client = boto3.client

    class Response:
        status_code = 400

    def no_updates(**_):
        error = {"Error": {"Code": "ValidationError", "Message": "No updates are to be performed."}}
        return Response(), error

    def client_without_changes(*args, **kwargs):
        made = make_client(*args, **kwargs)
        made.meta.events.register("before-call.cloudformation.UpdateStack", no_updates)
        return made

    monkeypatch.setattr(create.boto3, "client", client_without_changes)
    capsys.readouterr()

    assert create.main(["--suffix", "dev", "--poll-seconds", "1"]) == 0
    out = capsys.readouterr().out
    assert "Stack warehouse-dev is up to date" in out
    assert "WarehouseBucketName" in out


def test_unknown_parameter_and_suffix_override_are_errors(aws, capsys):
    assert create.main(["--suffix", "dev", "-p", "Nope=1"]) == 1
    assert "not parameters of the template: Nope" in capsys.readouterr().err
    assert create.main(["--suffix", "dev", "-p", "StackSuffix=prod"]) == 1
    assert "--suffix" in capsys.readouterr().err


class FailedStackClient:
    """A CloudFormation client whose stack creation failed earlier."""

    def get_template_summary(self, TemplateBody):  # noqa: N803 (boto3's parameter names)
        return {"Parameters": [{"ParameterKey": "StackSuffix"}]}

    def describe_stacks(self, StackName):  # noqa: N803
        return {"Stacks": [{"StackName": StackName, "StackStatus": "ROLLBACK_COMPLETE"}]}


def test_a_failed_creation_must_be_deleted_first():
    with pytest.raises(
        RuntimeError, match="ROLLBACK_COMPLETE.*delete-stack --stack-name warehouse-dev"
    ):
        create.deploy(FailedStackClient(), "warehouse-dev", "{}", {"StackSuffix": "dev"})


# ------------------------------------------------------------------ image


def test_dockerfile_builds_a_slim_non_root_runtime_image():
    text = (ROOT / "Dockerfile").read_text()
    instructions = [
        line.strip()
        for line in text.replace("\\\n", " ").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert instructions[0] == "FROM python:3.11-slim"
    assert "RUN pip install --no-cache-dir -r requirements.txt" in instructions
    assert not any("requirements-dev" in i for i in instructions)
    assert "COPY warehouse/ warehouse/" in instructions
    assert "COPY bin/ bin/" in instructions
    assert not any(i.startswith(("COPY . ", "ADD ")) for i in instructions)
    users = [i.split()[1] for i in instructions if i.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
    assert "ENV PATH=/app/bin:$PATH" in instructions
    assert instructions[-1] == 'CMD ["warehouseloader"]'
    assert not any(re.match(r"RUN .*(git clone|curl|wget)", i) for i in instructions)


def test_dockerignore_keeps_the_context_small():
    patterns = {
        line.strip().rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".venv", "tests", ".git", "demo", "requirements-dev.txt"} <= patterns
    assert not {"warehouse", "bin", "requirements.txt"} & patterns
