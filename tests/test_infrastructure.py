"""The AWS side: the CloudFormation template (cfn-lint, content), create.py on moto, the image."""

import hashlib
import io
import json
import re
import shutil
import subprocess
import sys
import warnings
from fnmatch import fnmatchcase
from pathlib import Path

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from botocore.exceptions import ClientError
from moto import mock_aws
from moto.cloudformation import parsing as moto_parsing

from infrastructure import create
from infrastructure.tools import get_inventory
from tests import builders
from tests.builders import clinical, image
from warehouse.core.config import settings_from_env
from warehouse.listing.inventory import INVENTORY_CONFIG_ID, open_inventory
from warehouse.storage.local import LocalStorage

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


# ------------------------------------------------------------------ policy evaluation
# A small model of IAM evaluation, enough to ask "may this principal do this action on this
# key?" of the template's policy documents: wildcards in actions and resources, the condition
# operators the template uses, an explicit deny winning over any allow. Template references
# stay symbolic: !GetAtt WarehouseBucket.Arn is "${WarehouseBucket.Arn}", !Ref Topic "${Topic}".

WAREHOUSE = "${WarehouseBucket.Arn}"
PROCESSED = "${ProcessedBucket.Arn}"
UPLOADER = "site-a"  # the IAM user name ${aws:username} stands for
OPERATOR_ARN = f"arn:aws:iam::{ACCOUNT}:user/operator"
UPLOADER_ARN = f"arn:aws:iam::{ACCOUNT}:user/{UPLOADER}"

# One sample key for each part of the bucket layout.
CONFIG = "config.json"
RAW_DATA = "raw-site-a/2026-11-25/data/Covid1_data.json"
RAW_IMAGE = "raw-site-b/2026-11-25/images/IM0001.dcm"
TRAINING = "training/data/Covid1/data_2026-11-25.json"
VALIDATION = "validation/xray/P1/1.2.3/1.2.3.4/IM0001.dcm"
CATALOGUE = "catalogue/images/2026-11-25T09-22-50Z.parquet"
LOADER_REPORT = "reports/warehouseloader/latest.json"
DATAPROCESS_REPORT = "reports/dataprocess/2026-11-25T09-22-50Z.json"
OTHER_REPORT = "reports/submittingcentres/latest.json"
FEEDBACK = "feedback/raw-site-a/latest.json"
LOCK = "locks/warehouseloader.json"
FOLDER_STATE = "state/raw-folders.json"
CATALOGUE_INDEX = "catalogue/index/latest.json"
ELSEWHERE = "notes/readme.txt"
WAREHOUSE_KEYS = [
    CONFIG,
    RAW_DATA,
    RAW_IMAGE,
    TRAINING,
    VALIDATION,
    CATALOGUE,
    CATALOGUE_INDEX,
    FOLDER_STATE,
    LOADER_REPORT,
    DATAPROCESS_REPORT,
    OTHER_REPORT,
    FEEDBACK,
    LOCK,
    ELSEWHERE,
]
PROCESSED_KEYS = ["latest.csv", "2026-11-25T09-22-50Z/patients.parquet"]
OBJECT_WRITES = [
    "s3:PutObject",
    "s3:DeleteObject",
    "s3:DeleteObjectVersion",
    "s3:PutObjectAcl",
    "s3:PutObjectTagging",
    "s3:RestoreObject",
    "s3:AbortMultipartUpload",
]


def rendered(value, username: str = UPLOADER) -> str:
    """A template value as the string IAM would compare, template references kept symbolic."""
    if isinstance(value, dict):
        if "Fn::GetAtt" in value:
            text = "${" + ".".join(value["Fn::GetAtt"]) + "}"
        elif "Ref" in value:
            text = "${" + value["Ref"] + "}"
        elif "Fn::Sub" in value:
            text = value["Fn::Sub"].replace("${!", "${")  # ${!x} is Sub's escape for ${x}
        else:
            raise AssertionError(f"value not modelled: {value}")
    else:
        text = str(value)
    return text.replace("${aws:username}", username)


def condition_holds(condition: dict, context: dict, username: str) -> bool:
    for operator, tests in condition.items():
        for key, expected in tests.items():
            values = [rendered(v, username) for v in as_list(expected)]
            present, actual = key in context, context.get(key)
            if operator == "Null":
                holds = (not present) == (values == ["true"])
            elif operator in ("Bool", "StringEquals", "ArnEquals"):
                holds = present and actual in values
            elif operator in ("StringLike", "ArnLike"):
                holds = present and any(fnmatchcase(actual, v) for v in values)
            elif operator == "StringNotEquals":  # a negated operator holds when the key is absent
                holds = not present or actual not in values
            elif operator == "ArnNotLike":
                holds = not present or not any(fnmatchcase(actual, v) for v in values)
            else:
                raise AssertionError(f"condition operator not modelled: {operator}")
            if not holds:
                return False
    return True


def applies(statement: dict, action: str, resource: str, context: dict, username: str) -> bool:
    assert not {"NotAction", "NotResource", "NotPrincipal"} & set(statement)
    if not any(fnmatchcase(action.lower(), a.lower()) for a in as_list(statement["Action"])):
        return False
    if not any(
        fnmatchcase(resource, rendered(r, username)) for r in as_list(statement["Resource"])
    ):
        return False
    return condition_holds(statement.get("Condition", {}), context, username)


def effects(
    policy: list[dict], action: str, resource: str, context=None, username: str = UPLOADER
) -> set[str]:
    """The effects of the statements that apply to one request (over HTTPS unless told)."""
    context = {"aws:SecureTransport": "true", **(context or {})}
    return {s["Effect"] for s in policy if applies(s, action, resource, context, username)}


def allows(policy: list[dict], action: str, resource: str, context=None, **kwargs) -> bool:
    found = effects(policy, action, resource, context, **kwargs)
    return "Allow" in found and "Deny" not in found


def denies(policy: list[dict], action: str, resource: str, context=None, **kwargs) -> bool:
    return "Deny" in effects(policy, action, resource, context, **kwargs)


def grants(policy: list[dict]) -> dict[str, set[str]]:
    """Each allowed action with the resources it is allowed on."""
    result: dict[str, set[str]] = {}
    for statement in policy:
        assert statement["Effect"] == "Allow"
        for action in as_list(statement["Action"]):
            result.setdefault(action, set()).update(
                rendered(r) for r in as_list(statement["Resource"])
            )
    return result


def role_policy(template, name: str) -> list[dict]:
    return statements(resource(template, name, "AWS::IAM::Role")["Policies"])


def bucket_policy(template) -> list[dict]:
    policy = resource(template, "WarehouseBucketPolicy", "AWS::S3::BucketPolicy")
    return policy["PolicyDocument"]["Statement"]


def on_warehouse(key: str) -> str:
    return f"{WAREHOUSE}/{key}"


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
    assert params["ImageRepository"]["Default"] == ""


def test_image_tag_is_required_and_never_latest(template):
    image_tag = template["Parameters"]["ImageTag"]
    assert "Default" not in image_tag  # tags are immutable: a default could name no new image
    pattern = re.compile(image_tag["AllowedPattern"])
    for good in ("v1.4.0", "2026-11-25", "release_7", "latest-2026-11-25"):
        assert pattern.match(good), good
    for bad in ("latest", "", "-v1", "v1/2", "a" * 129):
        assert not pattern.match(bad), bad


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
    inventory, _reconcile = bucket["InventoryConfigurations"]
    assert inventory["Id"] == get_inventory.CONFIG_ID == "daily-full-inventory"
    assert inventory["ScheduleFrequency"] == "Daily"
    assert inventory["Enabled"] is True
    assert inventory["Destination"]["Format"] == "CSV"
    assert inventory["Destination"]["BucketArn"] == {"Fn::GetAtt": ["InventoryBucket", "Arn"]}
    # No destination prefix: S3 delivers under <bucket>/daily-full-inventory/ (clinical-data 1.1)
    assert "Prefix" not in inventory["Destination"]
    assert inventory["OptionalFields"] == ["Size", "LastModifiedDate"]


INVENTORY = "${InventoryBucket.Arn}"
RECONCILE_PREFIX = "reconcile"


def reconcile_inventory(template) -> dict:
    bucket = resource(template, "WarehouseBucket", "AWS::S3::Bucket")
    [found] = [c for c in bucket["InventoryConfigurations"] if c["Id"] == INVENTORY_CONFIG_ID]
    return found


def test_warehouse_bucket_has_the_daily_parquet_inventory_a_reconcile_reads(template):
    inventory = reconcile_inventory(template)
    assert inventory["Enabled"] is True
    assert inventory["ScheduleFrequency"] == "Daily"
    assert inventory["IncludedObjectVersions"] == "Current"
    assert inventory["OptionalFields"] == ["Size", "LastModifiedDate"]
    destination = inventory["Destination"]
    assert destination["Format"] == "Parquet"
    assert destination["BucketArn"] == {"Fn::GetAtt": ["InventoryBucket", "Arn"]}
    assert destination["BucketAccountId"] == {"Ref": "AWS::AccountId"}
    # Its own prefix: apart from the CSV reports, which S3 delivers at the bucket's root.
    assert destination["Prefix"] == RECONCILE_PREFIX


def test_s3_may_deliver_the_reconcile_inventory(template):
    policy = resource(template, "InventoryBucketPolicy", "AWS::S3::BucketPolicy")
    statements_ = policy["PolicyDocument"]["Statement"]
    key = (
        f"{RECONCILE_PREFIX}/warehouse-{ACCOUNT}-prod/{INVENTORY_CONFIG_ID}/"
        "2026-11-20T01-00Z/manifest.json"
    )
    delivery = {
        "aws:SourceArn": "arn:${AWS::Partition}:s3:::${BucketNamePrefix}-${AWS::AccountId}-"
        "${StackSuffix}",
        "aws:SourceAccount": "${AWS::AccountId}",
        "s3:x-amz-acl": "bucket-owner-full-control",
    }
    assert allows(statements_, "s3:PutObject", f"{INVENTORY}/{key}", delivery)
    other = {**delivery, "aws:SourceArn": "arn:aws:s3:::someone-elses-bucket"}
    assert not allows(statements_, "s3:PutObject", f"{INVENTORY}/{key}", other)


@pytest.mark.parametrize(
    ("family", "inventory"),
    [("Pipeline", True), ("SubmittingCentres", False), ("DataProcessing", False)],
)
def test_the_loaders_task_is_told_where_the_inventory_is(template, family, inventory):
    task = resource(template, f"{family}TaskDefinition", "AWS::ECS::TaskDefinition")
    env = {e["Name"]: e["Value"] for e in task["ContainerDefinitions"][0]["Environment"]}
    expected = {"Fn::Sub": f"s3://${{InventoryBucket}}/{RECONCILE_PREFIX}"}
    assert env.get("WAREHOUSE_INVENTORY") == (expected if inventory else None)


def test_a_sharded_runs_clinical_phase_is_told_where_the_inventory_is(template):
    # The clinical phase lists for the whole run; the shards never list.
    def environment(name):
        container = template["Resources"][name]["Properties"]["ContainerProperties"]
        return {e["Name"]: e["Value"] for e in container["Environment"]}

    assert environment("ClinicalPhaseJobDefinition")["WAREHOUSE_INVENTORY"] == {
        "Fn::Sub": f"s3://${{InventoryBucket}}/{RECONCILE_PREFIX}"
    }
    assert "WAREHOUSE_INVENTORY" not in environment("ImageShardsJobDefinition")


def test_only_the_loader_reads_the_reconcile_inventory_and_nothing_else_there(template):
    manifest = f"{RECONCILE_PREFIX}/warehouse-{ACCOUNT}-prod/{INVENTORY_CONFIG_ID}/x/manifest.json"
    data = f"{RECONCILE_PREFIX}/warehouse-{ACCOUNT}-prod/{INVENTORY_CONFIG_ID}/data/a.parquet"
    csv = f"warehouse-{ACCOUNT}-prod/daily-full-inventory/data/a.csv.gz"
    loader = role_policy(template, "WarehouseLoaderTaskRole")
    for key in (manifest, data):
        assert allows(loader, "s3:GetObject", f"{INVENTORY}/{key}")
        for action in OBJECT_WRITES:
            assert not allows(loader, action, f"{INVENTORY}/{key}"), action
    assert not allows(loader, "s3:GetObject", f"{INVENTORY}/{csv}")
    for prefix, allowed in [
        (f"{RECONCILE_PREFIX}/warehouse-{ACCOUNT}-prod/", True),
        (f"{RECONCILE_PREFIX}/warehouse-{ACCOUNT}-prod/{INVENTORY_CONFIG_ID}/", True),
        ("", False),
        (None, False),
        (f"warehouse-{ACCOUNT}-prod/", False),
    ]:
        context = {} if prefix is None else {"s3:prefix": prefix}
        assert allows(loader, "s3:ListBucket", INVENTORY, context) is allowed, prefix
    for name in ("SubmittingCentresTaskRole", "DataProcessTaskRole"):
        policy = role_policy(template, name)
        assert not allows(policy, "s3:GetObject", f"{INVENTORY}/{data}")
        assert not allows(policy, "s3:ListBucket", INVENTORY, {"s3:prefix": "reconcile/"})


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


def test_uploaders_write_their_raw_prefix_and_read_their_feedback_only(template):
    group = resource(template, "UploadersGroup", "AWS::IAM::Group")
    policy = statements(group["Policies"])
    assert grants(policy) == {
        "s3:GetBucketLocation": {WAREHOUSE},
        "s3:ListBucket": {WAREHOUSE},  # with an s3:prefix condition, below
        "s3:PutObject": {f"{WAREHOUSE}/raw-site-a/*"},
        "s3:AbortMultipartUpload": {f"{WAREHOUSE}/raw-site-a/*"},
        "s3:ListMultipartUploadParts": {f"{WAREHOUSE}/raw-site-a/*"},
        "s3:GetObject": {f"{WAREHOUSE}/feedback/raw-site-a/*"},
    }
    for key in WAREHOUSE_KEYS:
        own = {"s3:PutObject", "s3:AbortMultipartUpload"} if key == RAW_DATA else set()
        for action in OBJECT_WRITES:
            assert allows(policy, action, on_warehouse(key)) is (action in own), (action, key)
    assert not allows(policy, "s3:PutObject", on_warehouse("raw-site-ab/2026-11-25/data/x.json"))
    # The loader's feedback on site-a's uploads, and nothing else of the bucket.
    for feedback in (FEEDBACK, "feedback/raw-site-a/2026-11-25T09-22-50Z.json"):
        assert allows(policy, "s3:GetObject", on_warehouse(feedback))
    for key in WAREHOUSE_KEYS:
        if key != FEEDBACK:
            assert not allows(policy, "s3:GetObject", on_warehouse(key)), key
    for other in ("feedback/raw-site-b/latest.json", "feedback/raw-site-ab/latest.json"):
        assert not allows(policy, "s3:GetObject", on_warehouse(other))
    assert not allows(policy, "s3:GetObject", on_warehouse(FEEDBACK), username="site-b")


@pytest.mark.parametrize(
    ("prefix", "allowed"),
    [
        ("raw-site-a/", True),
        ("raw-site-a/2026-11-25/", True),
        ("feedback/raw-site-a/", True),
        ("feedback/raw-site-a/2026", True),
        (None, False),  # the whole bucket
        ("", False),
        ("raw-site-a", False),  # would also list raw-site-ab/
        ("raw-site-b/", False),
        ("feedback/", False),
        ("feedback/raw-site-a", False),
        ("training/", False),
        ("reports/", False),
    ],
)
def test_uploaders_list_only_their_own_prefixes(template, prefix, allowed):
    policy = statements(resource(template, "UploadersGroup", "AWS::IAM::Group")["Policies"])
    context = {} if prefix is None else {"s3:prefix": prefix}
    assert allows(policy, "s3:ListBucket", WAREHOUSE, context) is allowed


# What each graph may do with each sample key: the brief of the three task roles.
TASK_ROLES = {
    "WarehouseLoaderTaskRole": {
        "family": "Pipeline",
        "read": {
            CONFIG,
            RAW_DATA,
            RAW_IMAGE,
            TRAINING,
            VALIDATION,
            CATALOGUE,
            CATALOGUE_INDEX,
            FOLDER_STATE,
            LOADER_REPORT,
            LOCK,
        },
        "write": {
            TRAINING,
            VALIDATION,
            CATALOGUE,
            CATALOGUE_INDEX,
            FOLDER_STATE,
            LOADER_REPORT,
            FEEDBACK,
            LOCK,
        },
        "delete": {LOCK},
        "write_processed": False,
    },
    "SubmittingCentresTaskRole": {
        "family": "SubmittingCentres",
        "read": {CONFIG, RAW_DATA, RAW_IMAGE},
        "write": set(),
        "delete": set(),
        "write_processed": False,
    },
    "DataProcessTaskRole": {
        "family": "DataProcessing",
        # the run lease it shares with the loader (no batch of a half-filed run)
        "read": {CONFIG, TRAINING, VALIDATION, CATALOGUE, CATALOGUE_INDEX, LOADER_REPORT, LOCK},
        "write": {DATAPROCESS_REPORT, CATALOGUE_INDEX, LOCK},
        "delete": {LOCK},
        "write_processed": True,
        "read_processed": True,  # the last batch's rows and catalogue
    },
}


@pytest.mark.parametrize("name", sorted(TASK_ROLES))
def test_each_task_role_reads_and_writes_only_its_graphs_prefixes(template, name):
    expected = TASK_ROLES[name]
    role = resource(template, name, "AWS::IAM::Role")
    [trust] = role["AssumeRolePolicyDocument"]["Statement"]
    assert trust["Principal"] == {"Service": "ecs-tasks.amazonaws.com"}
    assert trust["Condition"]["StringEquals"]["aws:SourceAccount"] == {"Ref": "AWS::AccountId"}
    policy = role_policy(template, name)
    for key in WAREHOUSE_KEYS:
        resource_arn = on_warehouse(key)
        assert allows(policy, "s3:GetObject", resource_arn) is (key in expected["read"]), key
        assert allows(policy, "s3:PutObject", resource_arn) is (key in expected["write"]), key
        assert allows(policy, "s3:DeleteObject", resource_arn) is (key in expected["delete"]), key
        for action in ("s3:DeleteObjectVersion", "s3:PutObjectAcl", "s3:PutObjectTagging"):
            assert not allows(policy, action, resource_arn), (action, key)
    assert allows(policy, "s3:ListBucket", WAREHOUSE)
    for key in PROCESSED_KEYS:
        assert allows(policy, "s3:PutObject", f"{PROCESSED}/{key}") is expected["write_processed"]
        assert allows(policy, "s3:GetObject", f"{PROCESSED}/{key}") is expected.get(
            "read_processed", False
        )
    assert allows(policy, "sns:Publish", "${Topic}")
    assert grants(policy)["sns:Publish"] == {"${Topic}"}
    assert not any("*" in action for action in grants(policy))


def test_task_role_grants_action_by_action(template):
    w = WAREHOUSE
    assert grants(role_policy(template, "WarehouseLoaderTaskRole")) == {
        "s3:ListBucket": {w, INVENTORY},  # the inventory bucket under reconcile/ only
        "s3:GetObject": {
            f"{INVENTORY}/reconcile/*",
            f"{w}/config.json",
            f"{w}/raw-*",
            f"{w}/training/*",
            f"{w}/validation/*",
            f"{w}/catalogue/*",
            f"{w}/state/*",  # the upload folders' state
            f"{w}/reports/warehouseloader/*",
            f"{w}/locks/*",
        },
        "s3:PutObject": {
            f"{w}/training/*",
            f"{w}/validation/*",
            f"{w}/catalogue/*",
            f"{w}/state/*",
            f"{w}/reports/warehouseloader/*",
            f"{w}/feedback/*",
            f"{w}/locks/*",
        },
        "s3:AbortMultipartUpload": {f"{w}/training/*", f"{w}/validation/*"},  # large copies
        "s3:DeleteObject": {f"{w}/locks/*"},  # the run lease
        "sns:Publish": {"${Topic}"},
    }
    assert grants(role_policy(template, "SubmittingCentresTaskRole")) == {
        "s3:ListBucket": {w},
        "s3:GetObject": {f"{w}/config.json", f"{w}/raw-*"},
        "sns:Publish": {"${Topic}"},
    }
    assert grants(role_policy(template, "DataProcessTaskRole")) == {
        "s3:ListBucket": {w, PROCESSED},
        "s3:GetObject": {
            f"{PROCESSED}/*",  # the last batch: what a batch reuses
            f"{w}/config.json",
            f"{w}/training/*",
            f"{w}/validation/*",
            f"{w}/catalogue/*",
            f"{w}/reports/warehouseloader/*",
            f"{w}/reports/dataprocess/latest.json",  # its memo: its changes' base
            f"{w}/locks/*",  # the run lease it shares with the loader
        },
        "s3:PutObject": {
            f"{PROCESSED}/*",
            f"{w}/reports/dataprocess/*",
            f"{w}/catalogue/index/*",  # the catalogue's index, from the merge
            f"{w}/locks/*",
        },
        "s3:DeleteObject": {f"{w}/locks/*"},
        "sns:Publish": {"${Topic}"},
    }


@pytest.mark.parametrize("name", sorted(TASK_ROLES))
@pytest.mark.parametrize("key", [CONFIG, RAW_DATA, RAW_IMAGE, "raw-x/config.json"])
def test_no_task_role_writes_raw_or_config(template, name, key):
    policy = role_policy(template, name)
    for action in OBJECT_WRITES:
        assert not allows(policy, action, on_warehouse(key)), action


def test_submittingcentres_writes_nothing_anywhere(template):
    policy = role_policy(template, "SubmittingCentresTaskRole")
    assert set(grants(policy)) == {"s3:ListBucket", "s3:GetObject", "sns:Publish"}
    objects = [on_warehouse(k) for k in WAREHOUSE_KEYS] + [
        f"{PROCESSED}/{k}" for k in PROCESSED_KEYS
    ]
    for resource_arn in objects:
        for action in OBJECT_WRITES:
            assert not allows(policy, action, resource_arn), (action, resource_arn)


def test_dataprocess_cannot_touch_the_loaders_side(template):
    policy = role_policy(template, "DataProcessTaskRole")
    for key in (TRAINING, VALIDATION, CATALOGUE, LOADER_REPORT, FEEDBACK):
        for action in OBJECT_WRITES:
            assert not allows(policy, action, on_warehouse(key)), (action, key)
    assert allows(policy, "s3:PutObject", on_warehouse(DATAPROCESS_REPORT))


def test_execution_role_pulls_the_stack_repository_and_writes_the_stack_log_group(template):
    execution = resource(template, "ExecutionRole", "AWS::IAM::Role")
    assert grants(statements(execution["Policies"])) == {
        "ecr:GetAuthorizationToken": {"*"},  # the only ECR action without a resource
        "ecr:BatchCheckLayerAvailability": {"${Repository.Arn}"},
        "ecr:GetDownloadUrlForLayer": {"${Repository.Arn}"},
        "ecr:BatchGetImage": {"${Repository.Arn}"},
        "logs:CreateLogStream": {"${LogGroup.Arn}"},
        "logs:PutLogEvents": {"${LogGroup.Arn}"},
    }


def test_repository_tags_are_immutable(template):
    repository = resource(template, "Repository", "AWS::ECR::Repository")
    assert repository["ImageTagMutability"] == "IMMUTABLE"


@pytest.mark.parametrize(
    "headers",
    [
        {"s3:x-amz-server-side-encryption-customer-algorithm": "AES256"},  # SSE-C
        {"s3:x-amz-server-side-encryption": "aws:kms"},  # the account's AWS managed key
        {
            "s3:x-amz-server-side-encryption": "aws:kms",
            "s3:x-amz-server-side-encryption-aws-kms-key-id": (
                f"arn:aws:kms:{REGION}:{ACCOUNT}:key/1234abcd-12ab-34cd-56ef-1234567890ab"
            ),
        },
        {"s3:x-amz-server-side-encryption": "aws:kms:dsse"},
    ],
)
def test_bucket_refuses_uploads_the_tasks_could_not_decrypt(template, headers):
    policy = bucket_policy(template)
    for principal in (UPLOADER_ARN, OPERATOR_ARN, "${WarehouseLoaderTaskRole.Arn}"):
        for key in (RAW_DATA, TRAINING, CONFIG):
            context = {**headers, "aws:PrincipalArn": principal}
            assert denies(policy, "s3:PutObject", on_warehouse(key), context), (principal, key)


@pytest.mark.parametrize("headers", [{}, {"s3:x-amz-server-side-encryption": "AES256"}])
def test_bucket_accepts_uploads_under_its_default_encryption(template, headers):
    uploaders = statements(resource(template, "UploadersGroup", "AWS::IAM::Group")["Policies"])
    context = {**headers, "aws:PrincipalArn": UPLOADER_ARN}
    assert not denies(bucket_policy(template), "s3:PutObject", on_warehouse(RAW_DATA), context)
    assert allows(
        uploaders + bucket_policy(template), "s3:PutObject", on_warehouse(RAW_DATA), context
    )


@pytest.mark.parametrize("action", ["s3:PutObject", "s3:DeleteObject", "s3:DeleteObjectVersion"])
@pytest.mark.parametrize("key", [LOADER_REPORT, DATAPROCESS_REPORT, OTHER_REPORT])
def test_only_the_task_roles_write_reports(template, action, key):
    policy = bucket_policy(template)
    for principal in (
        OPERATOR_ARN,
        UPLOADER_ARN,
        f"arn:aws:iam::{ACCOUNT}:root",
        "${SubmittingCentresTaskRole.Arn}",  # writes no report, so may not either
    ):
        assert denies(policy, action, on_warehouse(key), {"aws:PrincipalArn": principal}), principal
    for principal in ("${WarehouseLoaderTaskRole.Arn}", "${DataProcessTaskRole.Arn}"):
        assert not denies(policy, action, on_warehouse(key), {"aws:PrincipalArn": principal})
    # the denial is about reports/ only
    assert not denies(policy, action, on_warehouse(TRAINING), {"aws:PrincipalArn": OPERATOR_ARN})


@pytest.mark.parametrize(
    ("graph", "key"),
    [("WarehouseLoaderTaskRole", LOADER_REPORT), ("DataProcessTaskRole", DATAPROCESS_REPORT)],
)
def test_a_graph_still_writes_its_own_report_through_the_bucket_policy(template, graph, key):
    policy = role_policy(template, graph) + bucket_policy(template)
    context = {"aws:PrincipalArn": "${" + graph + ".Arn}"}
    assert allows(policy, "s3:PutObject", on_warehouse(key), context)


def test_bucket_is_https_only_and_its_denials_name_no_principal(template):
    policy = bucket_policy(template)
    for statement in policy:
        assert statement["Effect"] == "Deny" and statement["Principal"] == "*"
    for action, target in [("s3:GetObject", on_warehouse(RAW_DATA)), ("s3:ListBucket", WAREHOUSE)]:
        assert denies(policy, action, target, {"aws:SecureTransport": "false"})
        assert not denies(policy, action, target, {"aws:SecureTransport": "true"})


def test_etl_group_can_run_the_tasks_and_never_write_raw_or_reports(template):
    group = resource(template, "EtlGroup", "AWS::IAM::Group")
    allowed = statements(group["Policies"])
    actions = {a for s in allowed for a in as_list(s["Action"])}
    assert {"ecs:RunTask", "iam:PassRole", "logs:GetLogEvents", "s3:GetObject"} <= actions
    writable = {
        "${WarehouseBucket.Arn}/config.json",
        "${WarehouseBucket.Arn}/training/*",
        "${WarehouseBucket.Arn}/validation/*",
        "${ProcessedBucket.Arn}/*",
    }  # reports/ is refused by the bucket policy anyway
    for statement in allowed:
        if {"s3:PutObject", "s3:DeleteObject"} & set(as_list(statement["Action"])):
            assert {target["Fn::Sub"] for target in statement["Resource"]} <= writable
    [pass_role] = [s for s in allowed if s["Action"] == "iam:PassRole"]
    assert (
        pass_role["Condition"]["StringEquals"]["iam:PassedToService"] == "ecs-tasks.amazonaws.com"
    )
    assert {rendered(r) for r in pass_role["Resource"]} == {
        "${WarehouseLoaderTaskRole.Arn}",
        "${SubmittingCentresTaskRole.Arn}",
        "${DataProcessTaskRole.Arn}",
        "${ExecutionRole.Arn}",
    }


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
    [role] = [name for name, graph in TASK_ROLES.items() if graph["family"] == family]
    assert task["TaskRoleArn"] == {"Fn::GetAtt": [role, "Arn"]}
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
        "WarehouseLoaderTaskRoleArn",
        "SubmittingCentresTaskRoleArn",
        "DataProcessTaskRoleArn",
        "ExecutionRoleArn",
    } <= set(template["Outputs"])
    assert "TaskRoleArn" not in template["Outputs"]  # one role per graph now


# ------------------------------------------------------------------ schedules and alerts
# Small models of what AWS does with the template's schedules, rules and alarm: an EventBridge
# event pattern, an input transformer, a CloudWatch Logs JSON filter pattern and an alarm's
# evaluation, each written from the services' documentation for the forms the template uses
# (anything else stops the test). Template references get concrete values.

SUFFIX = "prod"
CLUSTER_ARN = f"arn:aws:ecs:{REGION}:{ACCOUNT}:cluster/warehouse-{SUFFIX}"
TOPIC_ARN = f"arn:aws:sns:{REGION}:{ACCOUNT}:warehouse-{SUFFIX}-notifications"
LOG_GROUP = f"/ecs/warehouse-{SUFFIX}-pipeline"
CONCRETE = {
    "AWS::Partition": "aws",
    "AWS::Region": REGION,
    "AWS::AccountId": ACCOUNT,
    "StackSuffix": SUFFIX,
    "Cluster.Arn": CLUSTER_ARN,
    "Topic": TOPIC_ARN,
    "LogGroup": LOG_GROUP,
}


def concrete(value):
    """A template value with its references replaced by the values of a stack ``prod``."""
    if isinstance(value, list):
        return [concrete(v) for v in value]
    if isinstance(value, dict):
        if {"Ref", "Fn::GetAtt", "Fn::Sub"} & set(value):
            text = rendered(value)
            for name, known in CONCRETE.items():
                text = text.replace("${" + name + "}", known)
            assert "${" not in text, f"no concrete value for {text}"
            return text
        return {k: concrete(v) for k, v in value.items()}
    return value


def _found(nodes: list, key: str) -> list:
    """The values of ``key`` in ``nodes``, arrays flattened (EventBridge matches each element)."""
    values = []
    for node in nodes:
        if isinstance(node, dict) and key in node:
            value = node[key]
            values.extend(value if isinstance(value, list) else [value])
    return values


def _filter_holds(rule, values: list) -> bool:
    if not isinstance(rule, dict):
        return rule in values
    [(operator, operand)] = rule.items()
    if operator == "exists":
        return bool(values) is operand
    if operator == "anything-but":
        excluded = as_list(operand)
        return any(v not in excluded for v in values)
    if operator == "wildcard":
        regex = re.compile(".*".join(re.escape(part) for part in operand.split("*")), re.S)
        return any(isinstance(v, str) and regex.fullmatch(v) for v in values)
    if operator == "prefix":
        return any(isinstance(v, str) and v.startswith(operand) for v in values)
    raise AssertionError(f"event pattern operator not modelled: {operator}")


def _pattern_holds(pattern: dict, nodes: list) -> bool:
    for key, expected in pattern.items():
        if key == "$or":
            if not any(_pattern_holds(alternative, nodes) for alternative in expected):
                return False
        elif isinstance(expected, dict):
            inner = [v for v in _found(nodes, key) if isinstance(v, dict)]
            if not inner or not _pattern_holds(expected, inner):
                return False
        else:
            leaves = [v for v in _found(nodes, key) if not isinstance(v, dict)]
            if not any(_filter_holds(rule, leaves) for rule in expected):
                return False
    return True


def event_matches(pattern: dict, event: dict) -> bool:
    """Whether an EventBridge rule with this (concrete) event pattern receives ``event``."""
    return _pattern_holds(pattern, [event])


MISSING = object()


def json_path(document, path: str):
    """``$.a.b[0].c`` of a document, or MISSING."""
    assert path.startswith("$.")
    node = document
    for part in re.findall(r"[^.\[\]]+|\[\d+\]", path[2:]):
        if part.startswith("["):
            index = int(part[1:-1])
            if not isinstance(node, list) or index >= len(node):
                return MISSING
            node = node[index]
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            return MISSING
    return node


def transformed(transformer: dict, event: dict):
    """What an input transformer delivers for ``event``, parsed as JSON.

    A placeholder outside quotes is replaced by its value as JSON; inside quotes, by its text,
    which the template must only do with values that need no escaping.
    """
    values = {name: json_path(event, path) for name, path in transformer["InputPathsMap"].items()}
    template, out, in_string, i = transformer["InputTemplate"], [], False, 0
    while i < len(template):
        char = template[i]
        name = re.match(r"<([\w.-]+)>", template[i:])
        if name and name.group(1) in values:
            value = values[name.group(1)]
            if in_string:
                text = "" if value is MISSING else str(value)
                assert json.dumps(text)[1:-1] == text, f"{text!r} needs escaping inside quotes"
            else:
                assert value is not MISSING, f"<{name.group(1)}> has no value outside quotes"
                text = json.dumps(value)
            out.append(text)
            i += len(name.group(0))
            continue
        if char == '"' and (i == 0 or template[i - 1] != "\\"):
            in_string = not in_string
        out.append(char)
        i += 1
    return json.loads("".join(out))


def task_stopped(
    container: str,
    *,
    exit_code: int | None = 0,
    reason: str | None = None,
    environment: list[dict] | None = None,
    **detail,
) -> dict:
    """An ECS Task State Change event, shaped as the ECS documentation shows it, of a stopped
    task; ``detail`` replaces fields of its detail (``group``, ``stopCode``, ``lastStatus``...).
    """
    family = {v: k for k, v in GRAPHS.items()}[container]
    task_arn = f"arn:aws:ecs:{REGION}:{ACCOUNT}:task/warehouse-{SUFFIX}/0123456789abcdef"
    status = detail.get("lastStatus", "STOPPED")
    state = {"name": container, "lastStatus": status, "taskArn": task_arn}
    if exit_code is not None:
        state["exitCode"] = exit_code
    if reason is not None:
        state["reason"] = reason
    override = {"name": container} | ({"environment": environment} if environment else {})
    return {
        "version": "0",
        "id": "3317b2af-7005-947d-b652-f55e762e571a",
        "detail-type": "ECS Task State Change",
        "source": "aws.ecs",
        "account": ACCOUNT,
        "time": "2026-11-25T02:41:07Z",
        "region": REGION,
        "resources": [task_arn],
        "detail": {
            "clusterArn": CLUSTER_ARN,
            "containers": [state],
            "group": "warehouse-daily",
            "lastStatus": status,
            "desiredStatus": "STOPPED",
            "launchType": "FARGATE",
            "overrides": {"containerOverrides": [override]},
            "stopCode": "EssentialContainerExited",
            "stoppedReason": "Essential container in task exited",
            "taskArn": task_arn,
            "taskDefinitionArn": f"arn:aws:ecs:{REGION}:{ACCOUNT}:task-definition/"
            f"warehouse-{SUFFIX}-{family}:3",
        }
        | detail,
    }


def reconcile_setting(environment: list[dict]) -> bool:
    """What the product reads from a container's environment overrides."""
    env = {"WAREHOUSE_BUCKET": "file:///warehouse"} | {e["name"]: e["value"] for e in environment}
    return settings_from_env(env).reconcile


def schedule(template, name: str) -> dict:
    return resource(template, name, "AWS::Scheduler::Schedule")


def cron_days(expression: str) -> set[str]:
    """The days of the week of a Scheduler cron expression.

    Its fields: minutes, hours, day of month, month, day of week, year.
    """
    fields = re.fullmatch(r"cron\((.+)\)", expression).group(1).split()
    assert len(fields) == 6 and fields[2] == "?" and fields[3] == "*", expression
    week = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"]
    days = set()
    for part in fields[4].split(","):
        first, _, last = part.partition("-")
        days.update(week[week.index(first) : week.index(last or first) + 1])
    return days


def test_the_schedules_run_the_loader_daily_and_the_reconcile_weekly(template):
    params = template["Parameters"]
    daily, weekly = params["DailySchedule"]["Default"], params["ReconcileSchedule"]["Default"]
    # a loader run every day, and never two at once (the second would exit 3: the run lease)
    assert cron_days(daily) | cron_days(weekly) == {"SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"}
    assert not cron_days(daily) & cron_days(weekly)
    assert cron_days(weekly) == {"SUN"}
    for name in ("DailySchedule", "ReconcileSchedule"):
        pattern = re.compile(params[name]["AllowedPattern"])
        assert pattern.match(params[name]["Default"])
        for bad in ("rate(1 day)", "0 2 * * *", "cron()"):
            assert not pattern.match(bad), bad
    assert params["ScheduleState"]["AllowedValues"] == ["ENABLED", "DISABLED"]
    loader = resource(template, "PipelineTaskDefinition", "AWS::ECS::TaskDefinition")
    [container] = loader["ContainerDefinitions"]
    for name, expression, reconcile in [
        ("DailyLoaderRun", "DailySchedule", False),
        ("WeeklyReconcileRun", "ReconcileSchedule", True),
    ]:
        assert template["Resources"][name]["Condition"] == "HasTaskNetwork"
        run = schedule(template, name)
        assert run["ScheduleExpression"] == {"Ref": expression}
        assert run["ScheduleExpressionTimezone"] == {"Ref": "ScheduleTimezone"}
        assert run["State"] == {"Ref": "ScheduleState"}
        assert run["FlexibleTimeWindow"] == {"Mode": "OFF"}
        target = run["Target"]
        assert target["Arn"] == {"Fn::GetAtt": ["Cluster", "Arn"]}
        assert target["RoleArn"] == {"Fn::GetAtt": ["RunTasksRole", "Arn"]}
        ecs = target["EcsParameters"]
        assert ecs["TaskDefinitionArn"] == {"Ref": "PipelineTaskDefinition"}
        assert ecs["LaunchType"] == "FARGATE"
        assert ecs["NetworkConfiguration"] == {
            "AwsvpcConfiguration": {
                "Subnets": {"Ref": "TaskSubnets"},
                "SecurityGroups": {"Ref": "TaskSecurityGroups"},
                "AssignPublicIp": {"Ref": "TaskAssignPublicIp"},
            }
        }
        [override] = json.loads(target["Input"])["containerOverrides"]
        assert override["name"] == container["Name"]
        assert [e["name"] for e in override["environment"]] == ["WAREHOUSE_RECONCILE"]
        assert reconcile_setting(override["environment"]) is reconcile
    daily_run, weekly_run = (
        schedule(template, "DailyLoaderRun"),
        schedule(template, "WeeklyReconcileRun"),
    )
    groups = {r["Target"]["EcsParameters"]["Group"] for r in (daily_run, weekly_run)}
    assert groups == {"warehouse-daily", "warehouse-reconcile"}


def test_scheduled_tasks_need_subnets_and_security_groups(template):
    params = template["Parameters"]
    for name in ("TaskSubnets", "TaskSecurityGroups"):
        assert params[name]["Type"] == "CommaDelimitedList"
        assert params[name]["Default"] == ""  # no schedule unless the network is given
    assert template["Conditions"]["HasTaskNetwork"] == {
        "Fn::Not": [{"Fn::Equals": [{"Fn::Join": ["", {"Ref": "TaskSubnets"}]}, ""]}]
    }
    rule = template["Rules"]["TaskNetwork"]
    assert rule["RuleCondition"] == template["Conditions"]["HasTaskNetwork"]
    [assertion] = rule["Assertions"]
    assert assertion["Assert"] == {
        "Fn::Not": [{"Fn::Equals": [{"Fn::Join": ["", {"Ref": "TaskSecurityGroups"}]}, ""]}]
    }


def chain_rule(template) -> tuple[dict, dict]:
    rule = resource(template, "DataProcessAfterLoader", "AWS::Events::Rule")
    [target] = rule["Targets"]
    return concrete(rule["EventPattern"]), target


def loader_run(schedule_name: str, template, **kwargs) -> dict:
    """The stop event of a loader task a schedule started, with the schedule's overrides."""
    target = schedule(template, schedule_name)["Target"]
    [override] = json.loads(target["Input"])["containerOverrides"]
    group = target["EcsParameters"]["Group"]
    return task_stopped(
        "warehouseloader", **{"group": group, "environment": override["environment"]} | kwargs
    )


@pytest.mark.parametrize(
    ("schedule_name", "reconcile"), [("DailyLoaderRun", False), ("WeeklyReconcileRun", True)]
)
def test_dataprocess_follows_a_scheduled_loader_run_that_completes(
    template, schedule_name, reconcile
):
    pattern, target = chain_rule(template)
    completed = loader_run(schedule_name, template)
    assert event_matches(pattern, completed)
    assert target["Arn"] == {"Fn::GetAtt": ["Cluster", "Arn"]}
    assert target["RoleArn"] == {"Fn::GetAtt": ["RunTasksRole", "Arn"]}
    ecs = target["EcsParameters"]
    assert ecs["TaskDefinitionArn"] == {"Ref": "DataProcessingTaskDefinition"}
    assert ecs["LaunchType"] == "FARGATE"
    assert ecs["NetworkConfiguration"]["AwsVpcConfiguration"]["Subnets"] == {"Ref": "TaskSubnets"}
    # dataprocess runs as a reconcile exactly when the loader did
    [override] = transformed(target["InputTransformer"], completed)["containerOverrides"]
    dataprocess = resource(template, "DataProcessingTaskDefinition", "AWS::ECS::TaskDefinition")
    assert override["name"] == dataprocess["ContainerDefinitions"][0]["Name"]
    assert reconcile_setting(override["environment"]) is reconcile


@pytest.mark.parametrize(
    "event",
    [
        pytest.param(dict(exit_code=1), id="the loader could not complete"),
        pytest.param(dict(exit_code=3), id="another run held the lease"),
        pytest.param(dict(exit_code=143, stopCode="UserInitiated"), id="stopped"),
        pytest.param(
            dict(exit_code=137, reason="OutOfMemoryError: Container killed due to memory usage"),
            id="killed for memory",
        ),
        pytest.param(dict(exit_code=None, stopCode="TaskFailedToStart"), id="never started"),
        pytest.param(dict(lastStatus="RUNNING"), id="still running"),
        pytest.param(dict(clusterArn=CLUSTER_ARN.replace(SUFFIX, "dev")), id="another stack"),
        pytest.param(dict(group="family:warehouse-prod-Pipeline"), id="started by hand"),
    ],
)
def test_dataprocess_does_not_follow_other_loader_stops(template, event):
    pattern, _ = chain_rule(template)
    assert not event_matches(pattern, loader_run("DailyLoaderRun", template, **event))


@pytest.mark.parametrize("group", ["warehouse-after-loader", "warehouse-daily"])
def test_a_dataprocess_run_starts_nothing(template, group):
    pattern, target = chain_rule(template)
    assert target["EcsParameters"]["Group"] == "warehouse-after-loader"
    for graph in ("dataprocess", "submittingcentres"):
        assert not event_matches(pattern, task_stopped(graph, group=group))


def failure_rule(template) -> tuple[dict, dict]:
    rule = resource(template, "TaskFailedRule", "AWS::Events::Rule")
    assert "Condition" not in template["Resources"]["TaskFailedRule"]  # manual runs too
    [target] = rule["Targets"]
    return concrete(rule["EventPattern"]), target


PULL_FAILED = (
    "CannotPullContainerError: pull image manifest has been retried 5 time(s): failed to "
    'resolve ref "123456789012.dkr.ecr.eu-west-2.amazonaws.com/warehouse-prod:v9": not found'
)


@pytest.mark.parametrize(
    ("container", "event", "says"),
    [
        ("warehouseloader", dict(exit_code=1), "exit code 1"),
        (
            "warehouseloader",
            dict(exit_code=3, group="family:warehouse-prod-Pipeline"),
            "exit code 3",
        ),
        ("dataprocess", dict(exit_code=2, group="warehouse-after-loader"), "exit code 2"),
        ("submittingcentres", dict(exit_code=143, stopCode="UserInitiated"), "exit code 143"),
        (
            "warehouseloader",
            dict(exit_code=137, reason="OutOfMemoryError: Container killed due to memory usage"),
            "OutOfMemoryError",
        ),
        (
            "dataprocess",
            dict(exit_code=None, reason="OutOfMemoryError: Container killed due to memory usage"),
            "OutOfMemoryError",
        ),
        (
            "warehouseloader",
            dict(exit_code=None, stopCode="TaskFailedToStart", stoppedReason=PULL_FAILED),
            PULL_FAILED,
        ),
    ],
)
def test_a_task_that_fails_notifies_the_topic_with_a_readable_message(
    template, container, event, says
):
    pattern, target = failure_rule(template)
    stopped = task_stopped(container, **event)
    assert event_matches(pattern, stopped)
    assert concrete(target["Arn"]) == TOPIC_ARN
    message = transformed(concrete(target["InputTransformer"]), stopped)
    assert message["problem"].startswith(f"warehouse-{SUFFIX}: {container} stopped")
    assert f"({stopped['detail']['stopCode']})" in message["problem"]
    said = [message["problem"], message["stoppedReason"], message["container"].get("reason", "")]
    assert any(says in text for text in said), message
    assert message["task"] == stopped["detail"]["taskArn"]  # its id names the log stream
    assert message["group"] == stopped["detail"]["group"]
    assert message["container"]["name"] == container
    assert message["logs"] == LOG_GROUP


@pytest.mark.parametrize("container", sorted(GRAPHS.values()))
def test_a_task_that_completes_notifies_nothing(template, container):
    pattern, _ = failure_rule(template)
    assert not event_matches(pattern, task_stopped(container, exit_code=0))
    assert not event_matches(pattern, task_stopped(container, exit_code=None, lastStatus="RUNNING"))
    other = task_stopped(container, exit_code=1, clusterArn=CLUSTER_ARN.replace(SUFFIX, "dev"))
    assert not event_matches(pattern, other)


def test_the_topic_lets_the_failure_rule_and_the_stacks_alarms_publish(template):
    policy = resource(template, "TopicPolicy", "AWS::SNS::TopicPolicy")
    assert policy["Topics"] == [{"Ref": "Topic"}]
    allowed = policy["PolicyDocument"]["Statement"]
    by_service = {s["Principal"]["Service"]: [s] for s in allowed}
    assert set(by_service) == {"events.amazonaws.com", "cloudwatch.amazonaws.com"}
    assert grants(allowed) == {"sns:Publish": {"${Topic}"}}
    events = by_service["events.amazonaws.com"]
    assert allows(events, "sns:Publish", "${Topic}", {"aws:SourceArn": "${TaskFailedRule.Arn}"})
    assert not allows(events, "sns:Publish", "${Topic}", {"aws:SourceArn": "${OtherRule.Arn}"})
    assert not allows(events, "sns:Publish", "${Topic}")
    alarm = resource(template, "NoLoaderRunAlarm", "AWS::CloudWatch::Alarm")
    alarm_arn = (
        "arn:${AWS::Partition}:cloudwatch:${AWS::Region}:${AWS::AccountId}:alarm:"
        + rendered(alarm["AlarmName"])
    )
    cloudwatch = by_service["cloudwatch.amazonaws.com"]
    assert allows(cloudwatch, "sns:Publish", "${Topic}", {"aws:SourceArn": alarm_arn})
    elsewhere = alarm_arn.replace("warehouse-${StackSuffix}", "someone-else")
    assert not allows(cloudwatch, "sns:Publish", "${Topic}", {"aws:SourceArn": elsewhere})
    assert alarm["AlarmActions"] == alarm["OKActions"] == [{"Ref": "Topic"}]


def test_the_run_tasks_role_starts_the_loader_and_dataprocess_and_nothing_else(template):
    assert template["Resources"]["RunTasksRole"]["Condition"] == "HasTaskNetwork"
    role = resource(template, "RunTasksRole", "AWS::IAM::Role")
    [trust] = role["AssumeRolePolicyDocument"]["Statement"]
    assert trust["Principal"] == {"Service": ["scheduler.amazonaws.com", "events.amazonaws.com"]}
    assert trust["Condition"] == {"StringEquals": {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}}
    policy = role_policy(template, "RunTasksRole")
    definitions = "arn:${AWS::Partition}:ecs:${AWS::Region}:${AWS::AccountId}:task-definition"
    assert grants(policy) == {
        "ecs:RunTask": {
            f"{definitions}/warehouse-${{StackSuffix}}-Pipeline:*",
            f"{definitions}/warehouse-${{StackSuffix}}-DataProcessing:*",
        },
        "iam:PassRole": {
            "${WarehouseLoaderTaskRole.Arn}",
            "${DataProcessTaskRole.Arn}",
            "${ExecutionRole.Arn}",
        },
    }
    on_cluster = {"ecs:cluster": "${Cluster.Arn}"}
    centres = f"{definitions}/warehouse-${{StackSuffix}}-SubmittingCentres:4"
    assert not allows(policy, "ecs:RunTask", centres, on_cluster)
    loader = f"{definitions}/warehouse-${{StackSuffix}}-Pipeline:4"
    assert allows(policy, "ecs:RunTask", loader, on_cluster)
    assert not allows(policy, "ecs:RunTask", loader, {"ecs:cluster": "arn:aws:ecs:x:1:cluster/y"})
    to_ecs = {"iam:PassedToService": "ecs-tasks.amazonaws.com"}
    assert not allows(policy, "iam:PassRole", "${SubmittingCentresTaskRole.Arn}", to_ecs)
    assert not allows(
        policy,
        "iam:PassRole",
        "${ExecutionRole.Arn}",
        {"iam:PassedToService": "lambda.amazonaws.com"},
    )


# A completed loader run's summary, in the JSON the Pipeline task logs: the one line the metric
# filter counts. CloudWatch Logs JSON filter patterns, the forms the template uses.
FILTER_TERM = re.compile(
    r"\(\s*\$\.(?P<field>\w+)\s*(?:=\s*(?P<value>\"[^\"*]*\"|-?\d+)|IS\s+(?P<is>NULL|TRUE|FALSE))\s*\)"
)


def log_event_matches(filter_pattern: str, message: str) -> bool:
    """Whether a CloudWatch Logs JSON filter pattern ``{ (term) && ... }`` matches a log event."""
    body = filter_pattern.strip()
    assert body.startswith("{") and body.endswith("}") and "||" not in body
    terms = [term.strip() for term in body[1:-1].split("&&")]
    try:
        record = json.loads(message)
    except ValueError:
        return False  # a JSON pattern matches JSON events only
    if not isinstance(record, dict):
        return False
    for term in terms:
        found = FILTER_TERM.fullmatch(term)
        assert found, f"filter term not modelled: {term}"
        if found["field"] not in record:
            return False
        value = record[found["field"]]
        if found["is"] is not None:
            if value is not {"NULL": None, "TRUE": True, "FALSE": False}[found["is"]]:
                return False
        elif found["value"].startswith('"'):
            if value != found["value"][1:-1]:
                return False
        elif isinstance(value, bool) or not isinstance(value, int | float):
            return False
        elif value != int(found["value"]):
            return False
    return True


def metric_filter(template) -> dict:
    return resource(template, "LoaderRunsCompleted", "AWS::Logs::MetricFilter")


def test_the_metric_filter_reads_the_loaders_log_group(template):
    found = metric_filter(template)
    assert found["LogGroupName"] == {"Ref": "LogGroup"}
    loader = resource(template, "PipelineTaskDefinition", "AWS::ECS::TaskDefinition")
    [container] = loader["ContainerDefinitions"]
    assert container["LogConfiguration"]["Options"]["awslogs-group"] == {"Ref": "LogGroup"}
    env = {e["Name"]: e["Value"] for e in container["Environment"]}
    assert env["WAREHOUSE_LOG_FORMAT"] == "json"  # its summary is one JSON line
    [transformation] = found["MetricTransformations"]
    assert transformation["MetricValue"] == "1"
    assert "DefaultValue" not in transformation  # an hour without a run has no data point


def test_the_alarm_fires_after_26_hours_without_a_completed_loader_run(template):
    assert template["Resources"]["NoLoaderRunAlarm"]["Condition"] == "SchedulesOn"
    alarm = resource(template, "NoLoaderRunAlarm", "AWS::CloudWatch::Alarm")
    [transformation] = metric_filter(template)["MetricTransformations"]
    assert alarm["Namespace"] == transformation["MetricNamespace"]
    assert alarm["MetricName"] == transformation["MetricName"]
    assert alarm["Statistic"] == "Sum"
    assert alarm["ComparisonOperator"] == "LessThanThreshold" and alarm["Threshold"] == 1
    assert alarm["TreatMissingData"] == "breaching"  # no run at all is no data at all
    assert alarm["DatapointsToAlarm"] == alarm["EvaluationPeriods"]
    assert alarm["Period"] * alarm["EvaluationPeriods"] == 26 * 3600
    # CloudWatch limits an alarm's range to 1 day for periods under an hour, 7 days otherwise
    assert alarm["Period"] >= 3600

    def fires(completed_at: list[float], now: float) -> bool:
        """Whether the alarm is in ALARM at hour ``now``, runs having completed at those hours.

        It reads the last EvaluationPeriods whole periods; a period without a run has no data.
        """
        hours = alarm["Period"] // 3600
        last = int(now // hours) * hours
        breaching = 0
        for start in range(last - alarm["EvaluationPeriods"] * hours, last, hours):
            count = sum(1 for t in completed_at if start <= t < start + hours)
            if count == 0 or count < alarm["Threshold"]:  # missing data is breaching
                breaching += 1
        return breaching >= alarm["DatapointsToAlarm"]

    assert not fires([0.5], now=24.9)
    assert not fires([0.5], now=26.9)  # its hour, [0, 1), is still one of the last 26
    assert fires([0.5], now=27.0)
    assert fires([], now=100.0)
    assert not fires([0.5, 24.5, 48.5, 72.5], now=97.0)  # a run a day


def _uploads(root: Path, *, with_config: bool = True) -> None:
    files = {
        f"raw-a/2021-01-01/data/Covid{n}_data.json": clinical(f"Covid{n}", "A Trust")
        for n in range(3)
    }
    for n in range(3):
        for instance in range(4):
            name, data = image(f"Covid{n}", "DX", instance=instance)
            files[f"raw-a/2021-01-02/images/{name}"] = data
    if with_config:
        files["config.json"] = builders.config(["raw-a"], split=["A Trust"])
    root.mkdir()
    (root.parent / f"{root.name}-processed").mkdir()
    builders.put_tree(LocalStorage(root), files)


def run_task_command(template, command: str, root: Path, **extra) -> tuple[int, list[str]]:
    """Run a container command (``bin/<graph>``) as its task definition sets it up; return its
    exit code and its log lines (standard output and error: each line is one log event).
    """
    family = {v: k for k, v in GRAPHS.items()}[command]
    task = resource(template, f"{family}TaskDefinition", "AWS::ECS::TaskDefinition")
    [container] = task["ContainerDefinitions"]
    literal = {
        e["Name"]: e["Value"] for e in container["Environment"] if isinstance(e["Value"], str)
    }
    env = builders.graph_env(**literal, WAREHOUSE_BUCKET=f"file://{root}", TOPIC_ARN="", **extra)
    result = subprocess.run(
        [sys.executable, str(ROOT / "bin" / command)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    return result.returncode, result.stdout.splitlines() + result.stderr.splitlines()


@pytest.mark.parametrize("processes", ["1", "2"])
def test_the_metric_filter_counts_one_line_for_a_completed_loader_run(
    template, tmp_path, processes
):
    root = tmp_path / "bucket"
    _uploads(root)
    code, lines = run_task_command(template, "warehouseloader", root, WAREHOUSE_PROCESSES=processes)
    assert code == 0, "\n".join(lines)
    pattern = metric_filter(template)["FilterPattern"]
    [counted] = [line for line in lines if log_event_matches(pattern, line)]
    summary = json.loads(counted)
    report = json.loads(LocalStorage(root).read("reports/warehouseloader/latest.json"))
    assert summary["run_id"] == report["run_id"] and report["completed"] is True
    assert summary["counts"]["images copied"] == 12
    # the wrapper's own last line says the same for every graph: it is not what is counted
    assert lines[-1].startswith("Pipeline run in ") and lines[-1].endswith("exited with code 0.")
    assert lines[-1] != counted


def test_the_metric_filter_counts_no_line_of_a_run_that_did_not_complete(template, tmp_path):
    root = tmp_path / "bucket"
    _uploads(root, with_config=False)
    code, lines = run_task_command(template, "warehouseloader", root)
    assert code == 2, "\n".join(lines)
    pattern = metric_filter(template)["FilterPattern"]
    assert any('"event": "summary"' in line for line in lines)  # it did print its summary
    assert not [line for line in lines if log_event_matches(pattern, line)]


def test_the_metric_filter_counts_no_line_of_another_graph(template, tmp_path):
    root = tmp_path / "bucket"
    _uploads(root)
    assert run_task_command(template, "warehouseloader", root)[0] == 0
    pattern = metric_filter(template)["FilterPattern"]
    for command in ("dataprocess", "submittingcentres"):
        # as the loader logs, in JSON: a completed run of another graph is not counted
        code, lines = run_task_command(template, command, root, WAREHOUSE_LOG_FORMAT="json")
        assert code == 0, "\n".join(lines)
        assert any('"event": "summary"' in line for line in lines)
        assert not [line for line in lines if log_event_matches(pattern, line)], command


def test_no_commit_hash_in_the_template():
    assert not re.search(r"\b[0-9a-f]{40}\b", TEMPLATE.read_text())


# ------------------------------------------------------------------ create.py


def _update_only_resources_the_stack_has(monkeypatch):
    """Update only the resources whose condition holds, as CloudFormation does.

    moto updates a resource whose condition is false (which it never created) when a parameter
    it names changes, and fails on an EventBridge rule.
    """
    update = moto_parsing.parse_and_update_resource

    def update_if_created(logical_id, resource_json, resources_map, *args, **kwargs):
        condition = resource_json.get("Condition")
        if condition is not None and not resources_map.lazy_condition_map[condition]:
            return None
        return update(logical_id, resource_json, resources_map, *args, **kwargs)

    monkeypatch.setattr(moto_parsing, "parse_and_update_resource", update_if_created)


@pytest.fixture
def aws(monkeypatch, tmp_path):
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    _update_only_resources_the_stack_has(monkeypatch)
    with warnings.catch_warnings():
        # moto's CloudFormation skips AWS::IAM::Group and AWS::S3::BucketPolicy, with a warning
        warnings.filterwarnings("ignore", message="Tried to parse", category=UserWarning)
        with mock_aws():
            yield


def test_the_inventory_the_template_configures_is_the_one_the_loader_reads(template, aws):
    """The template's configuration, set on moto with the S3 API, and a report delivered where
    that configuration sends it (moto never produces one): the loader's WAREHOUSE_INVENTORY
    finds it.
    """
    bucket, destination = f"warehouse-{ACCOUNT}-prod", f"warehouse-{ACCOUNT}-prod-inventory"
    s3 = boto3.client("s3")
    for name in (bucket, destination):
        s3.create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": REGION})
    configured = reconcile_inventory(template)
    s3.put_bucket_inventory_configuration(
        Bucket=bucket,
        Id=configured["Id"],
        InventoryConfiguration={
            "Id": configured["Id"],
            "IsEnabled": configured["Enabled"],
            "IncludedObjectVersions": configured["IncludedObjectVersions"],
            "Schedule": {"Frequency": configured["ScheduleFrequency"]},
            "OptionalFields": configured["OptionalFields"],
            "Destination": {
                "S3BucketDestination": {
                    "Bucket": f"arn:aws:s3:::{destination}",
                    "AccountId": ACCOUNT,
                    "Format": configured["Destination"]["Format"],
                    "Prefix": configured["Destination"]["Prefix"],
                }
            },
        },
    )
    stored = s3.get_bucket_inventory_configuration(Bucket=bucket, Id=configured["Id"])
    target = stored["InventoryConfiguration"]["Destination"]["S3BucketDestination"]
    assert target["Format"] == "Parquet"
    folder = f"{target['Prefix']}/{bucket}/{configured['Id']}/"
    data = io.BytesIO()
    table = pa.table(
        {
            "bucket": [bucket],
            "key": ["training/data/Covid1/data_2026-11-19.json"],
            "size": pa.array([812], pa.int64()),
            "last_modified_date": pa.array([1_763_600_000_000], pa.int64()).cast(
                pa.timestamp("ms", tz="UTC")
            ),
        }
    )
    pq.write_table(table, data)
    s3.put_object(Bucket=destination, Key=f"{folder}data/part.parquet", Body=data.getvalue())
    manifest = json.dumps(
        {
            "sourceBucket": bucket,
            "destinationBucket": target["Bucket"],
            "creationTimestamp": "1763600400000",
            "fileFormat": target["Format"],
            "fileSchema": "message s3.inventory { required binary bucket (UTF8); required "
            "binary key (UTF8); optional int64 size; optional int64 last_modified_date "
            "(TIMESTAMP_MILLIS); }",
            "files": [
                {
                    "key": f"{folder}data/part.parquet",
                    "size": len(data.getvalue()),
                    "MD5checksum": hashlib.md5(data.getvalue(), usedforsecurity=False).hexdigest(),
                }
            ],
        }
    ).encode()
    stamp = f"{folder}2025-11-20T01-00Z/"
    s3.put_object(Bucket=destination, Key=f"{stamp}manifest.json", Body=manifest)
    checksum = hashlib.md5(manifest, usedforsecurity=False).hexdigest().encode()
    s3.put_object(Bucket=destination, Key=f"{stamp}manifest.checksum", Body=checksum)

    task = resource(template, "PipelineTaskDefinition", "AWS::ECS::TaskDefinition")
    env = {e["Name"]: e["Value"] for e in task["ContainerDefinitions"][0]["Environment"]}
    url = env["WAREHOUSE_INVENTORY"]["Fn::Sub"].replace("${InventoryBucket}", destination)
    found = open_inventory(url, bucket, workers=2)
    assert [(i.key, i.size) for i in found.records(["training/"])] == [
        ("training/data/Covid1/data_2026-11-19.json", 812)
    ]


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

    assert create.main([*argv, "-p", "LogRetentionDays=30", "-p", "ImageTag=v1.0.0"]) == 0

    out = capsys.readouterr().out
    bucket = f"warehouse-{ACCOUNT}-dev"
    assert "Creating stack warehouse-dev..." in out
    assert "Stack warehouse-dev: CREATE_COMPLETE" in out
    assert re.search(rf"^WarehouseBucketName +{bucket}$", out, re.M)
    assert re.search(r"^LogGroupName +/ecs/warehouse-dev-pipeline$", out, re.M)
    assert re.search(r"^ImageUri +\S+/warehouse-dev:v1\.0\.0$", out, re.M)
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


def _rules_by_target() -> dict[str, dict]:
    events = boto3.client("events")
    found = {}
    for rule in events.list_rules()["Rules"]:
        for target in events.list_targets_by_rule(Rule=rule["Name"])["Targets"]:
            found[target["Id"]] = {"rule": rule, "target": target}
    return found


def test_the_stack_runs_itself_only_when_given_a_network(aws):
    argv = ["--suffix", "dev", "--region", REGION, "--poll-seconds", "1", "-p", "ImageTag=v1"]
    assert create.main(argv) == 0
    roles = {r["RoleName"] for r in boto3.client("iam").list_roles()["Roles"]}
    assert "warehouse-dev-run-tasks" not in roles
    assert set(_rules_by_target()) == {"topic"}  # failed tasks are said even without schedules

    network = ["-p", "TaskSubnets=subnet-0a1b,subnet-2c3d", "-p", "TaskSecurityGroups=sg-0e4f"]
    assert create.main([*argv, *network]) == 0
    roles = {r["RoleName"] for r in boto3.client("iam").list_roles()["Roles"]}
    assert "warehouse-dev-run-tasks" in roles
    rules = _rules_by_target()
    assert set(rules) == {"topic", "dataprocess"}
    topic = f"arn:aws:sns:{REGION}:{ACCOUNT}:warehouse-dev-notifications"
    assert rules["topic"]["target"]["Arn"] == topic
    chained = rules["dataprocess"]["target"]
    assert (
        chained["EcsParameters"]["TaskDefinitionArn"]
        .split("/")[-1]
        .startswith("warehouse-dev-DataProcessing:")
    )
    assert chained["RoleArn"].endswith(":role/warehouse-dev-run-tasks")
    pattern = json.loads(rules["dataprocess"]["rule"]["EventPattern"])
    assert pattern["detail"]["clusterArn"] == [
        f"arn:aws:ecs:{REGION}:{ACCOUNT}:cluster/warehouse-dev"
    ]


def test_update_without_changes_is_a_success(aws, capsys, monkeypatch):
    assert create.main(["--suffix", "dev", "--poll-seconds", "1", "-p", "ImageTag=v1"]) == 0
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


def test_a_new_stack_needs_an_image_tag(aws, capsys):
    assert create.main(["--suffix", "dev", "--poll-seconds", "1"]) == 1
    assert "needs ImageTag (no default): --parameter ImageTag=..." in capsys.readouterr().err
    assert create.describe_stack(boto3.client("cloudformation"), "warehouse-dev") is None
    assert create.main(["--suffix", "dev", "--poll-seconds", "1", "-p", "ImageTag=v1"]) == 0
    # an update keeps the tag the stack already has
    assert create.main(["--suffix", "dev", "--poll-seconds", "1", "-p", "TaskCpu=2048"]) == 0
    stack = boto3.client("cloudformation").describe_stacks(StackName="warehouse-dev")["Stacks"][0]
    assert {p["ParameterKey"]: p["ParameterValue"] for p in stack["Parameters"]}["ImageTag"] == "v1"


def test_missing_parameters_are_those_without_a_default():
    summary = [
        {"ParameterKey": "StackSuffix"},
        {"ParameterKey": "ImageTag"},
        {"ParameterKey": "TaskCpu", "DefaultValue": "1024"},
        {"ParameterKey": "NotificationEmail", "DefaultValue": ""},
    ]
    assert create.missing_parameters(summary, {"StackSuffix": "dev"}) == ["ImageTag"]
    assert create.missing_parameters(summary, {"StackSuffix": "dev", "ImageTag": "v1"}) == []


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


class StackDeletedMeanwhileClient:
    """A CloudFormation client with nothing to update, and a stack deleted meanwhile.

    Someone else deletes the stack before the command reads it back.
    """

    def __init__(self):
        self.described = 0

    def get_template_summary(self, TemplateBody):  # noqa: N803 (boto3's parameter names)
        return {"Parameters": [{"ParameterKey": "StackSuffix"}]}

    def describe_stacks(self, StackName):  # noqa: N803
        self.described += 1
        if self.described > 1:
            error = {"Error": {"Code": "ValidationError", "Message": "Stack does not exist"}}
            raise ClientError(error, "DescribeStacks")
        return {"Stacks": [{"StackName": StackName, "StackStatus": "UPDATE_COMPLETE"}]}

    def update_stack(self, **_):
        error = {"Error": {"Code": "ValidationError", "Message": "No updates are to be performed."}}
        raise ClientError(error, "UpdateStack")


def test_a_stack_deleted_while_deploying_is_an_error_not_a_missing_description():
    client = StackDeletedMeanwhileClient()
    with pytest.raises(RuntimeError, match="warehouse-dev no longer exists"):
        create.deploy(client, "warehouse-dev", "{}", {"StackSuffix": "dev"})
    assert client.described == 2


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
