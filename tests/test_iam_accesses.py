"""Every request a graph makes is one its task role allows.

The graphs run on a local warehouse through a store that records each request as the S3 action
it would be (a read is ``s3:GetObject``, a write ``s3:PutObject``, a listing ``s3:ListBucket``
with its prefix, a copy a read and a write); each is then checked against the template's task
role with the policy evaluator of `tests.test_infrastructure`. The runs cover what a stack does
over time: a first (full) run, a daily run, a reconcile, a run's lease, ``dataprocess`` with and
without a previous batch and as a reconcile, and ``submittingcentres``. What starts the graphs
and says how they ended is checked the same way: each task a schedule or rule starts (and each
role it passes) against the role it assumes, each notification against the topic's policy.
"""

from __future__ import annotations

import datetime as dt
import threading

import pytest
import yaml

from tests import builders
from tests.test_dataprocess import run_graph as run_dataprocess
from tests.test_infrastructure import (
    PROCESSED,
    TEMPLATE,
    WAREHOUSE,
    CloudFormationLoader,
    allows,
    rendered,
    role_policy,
)
from tests.test_scale import _age_folder_state, _uploads
from tests.test_submittingcentres import run_graph as run_submittingcentres
from tests.test_warehouseloader import SPLIT
from warehouse.catalogue import index as catalogue_index
from warehouse.storage.wrappers import DelegatingStorage

OLD = "2021-01-01"


class AccessRecorder(DelegatingStorage):
    """A store that records each request as ``(S3 action, resource ARN, context)``."""

    def __init__(self, inner, arn: str, log: list | None = None):
        self.inner = inner
        self.url = inner.url
        self.arn = arn
        self.log: list[tuple[str, str, dict]] = [] if log is None else log
        self._lock = threading.Lock()

    def _object(self, action: str, key: str) -> None:
        with self._lock:
            self.log.append((action, f"{self.arn}/{key}", {}))

    def _listing(self, prefix: str) -> None:
        with self._lock:
            self.log.append(("s3:ListBucket", self.arn, {"s3:prefix": prefix}))

    def check_store(self):
        with self._lock:
            self.log.append(("s3:ListBucket", self.arn, {}))  # HeadBucket needs ListBucket
        return self.inner.check_store()

    def list(self, prefix):
        self._listing(prefix)
        return self.inner.list(prefix)

    def list_after(self, prefix, start_after):
        self._listing(prefix)
        return self.inner.list_after(prefix, start_after)

    def list_folders(self, prefix):
        self._listing(prefix)
        return self.inner.list_folders(prefix)

    def read(self, key):
        self._object("s3:GetObject", key)
        return self.inner.read(key)

    def read_range(self, key, start, end):
        self._object("s3:GetObject", key)
        return self.inner.read_range(key, start, end)

    def read_with_token(self, key):
        self._object("s3:GetObject", key)
        return self.inner.read_with_token(key)

    def write(self, key, data, content_type="application/json"):
        self._object("s3:PutObject", key)
        self.inner.write(key, data, content_type)

    def write_file(self, key, path, content_type="application/json"):
        self._object("s3:PutObject", key)
        self.inner.write_file(key, path, content_type)

    def write_if_absent(self, key, data, content_type="application/json"):
        self._object("s3:PutObject", key)
        return self.inner.write_if_absent(key, data, content_type)

    def write_if_match(self, key, data, token, content_type="application/json"):
        self._object("s3:PutObject", key)
        return self.inner.write_if_match(key, data, token, content_type)

    def copy(self, source_key, target_key, size=None):
        self._object("s3:GetObject", source_key)
        self._object("s3:PutObject", target_key)
        self.inner.copy(source_key, target_key, size)

    def delete_if_match(self, key, token):
        self._object("s3:DeleteObject", key)
        self.inner.delete_if_match(key, token)

    def processed(self):
        return AccessRecorder(self.inner.processed(), PROCESSED, self.log)


@pytest.fixture(scope="module")
def stack():
    """The stack's template, read as CloudFormation reads it."""
    return yaml.load(TEMPLATE.read_text(), Loader=CloudFormationLoader)  # noqa: S506


def refused(template, role: str, log: list) -> list[tuple[str, str, dict]]:
    """The requests of ``log`` that the task role ``role`` does not allow."""
    policy = role_policy(template, role)
    return sorted(
        {(a, r, tuple(sorted(c.items()))) for a, r, c in log if not allows(policy, a, r, c)}
    )


@pytest.fixture
def warehouse(local_store):
    """A warehouse with a closed upload folder and a new one of today, loaded daily."""
    files = {"config.json": builders.config(["raw-a"], split=[SPLIT])}
    files.update(_uploads(OLD, ("Covid1", "Covid2"), 6))
    builders.put_tree(local_store, files)
    return local_store


def test_the_loaders_runs_ask_only_what_its_role_allows(stack, warehouse):
    store = AccessRecorder(warehouse, WAREHOUSE)
    code, state = builders.run_loader(store, workers=4)  # the first run: full
    assert code == 0 and state.mode == "full"
    _age_folder_state(warehouse, days=3)
    today = dt.datetime.now(dt.UTC).date().isoformat()
    builders.put_tree(warehouse, _uploads(today, ("Covid1", "Covid3"), 4, first=6))
    code, state = builders.run_loader(store, workers=4)
    assert code == 0 and state.mode == "daily" and state.report.counts["images copied"] == 4
    code, state = builders.run_loader(store, workers=4, reconcile=True)
    assert code == 0 and state.mode == "full"

    keys = {resource for _, resource, _ in store.log}
    # the runs did read and write the loader's own state: the test sees what it checks
    assert f"{WAREHOUSE}/state/raw-folders.json" in keys
    assert any(k.startswith(f"{WAREHOUSE}/catalogue/images/") for k in keys)
    assert any(k.startswith(f"{WAREHOUSE}/locks/") for k in keys)
    assert refused(stack, "WarehouseLoaderTaskRole", store.log) == []


def test_dataprocess_runs_ask_only_what_its_role_allows(stack, warehouse, monkeypatch):
    monkeypatch.setattr(catalogue_index, "PART_SETTLE", dt.timedelta(0))  # (an index is written)
    code, _ = builders.run_loader(warehouse, workers=4)
    assert code == 0
    store = AccessRecorder(warehouse, WAREHOUSE)
    for settings in ({}, {}, {"reconcile": True}):  # first batch, one after it, a reconcile
        code, _ = run_dataprocess(store, **settings)
        assert code == 0

    keys = {resource for _, resource, _ in store.log}
    assert f"{PROCESSED}/latest.csv" in keys
    assert any(k.startswith(f"{WAREHOUSE}/catalogue/index/") for k in keys)
    assert any(k.startswith(f"{PROCESSED}/") and "/rows/" in k for k in keys)
    assert refused(stack, "DataProcessTaskRole", store.log) == []


def test_submittingcentres_asks_only_what_its_role_allows(stack, warehouse):
    store = AccessRecorder(warehouse, WAREHOUSE)
    code, _ = run_submittingcentres(store)
    assert code == 0
    assert store.log
    assert refused(stack, "SubmittingCentresTaskRole", store.log) == []


ACCOUNT_ARN = "arn:${{AWS::Partition}}:{service}:${{AWS::Region}}:${{AWS::AccountId}}"


def started_tasks(template) -> list[tuple[str, str, str, dict]]:
    """Each request a schedule or rule makes to start its task.

    ``(role, action, resource, context)``: RunTask of a revision of the task definition, and
    PassRole of its task role and execution role.
    """
    targets = []
    for found in template["Resources"].values():
        if found["Type"] == "AWS::Scheduler::Schedule":
            targets.append(found["Properties"]["Target"])
        elif found["Type"] == "AWS::Events::Rule":
            targets.extend(t for t in found["Properties"]["Targets"] if "EcsParameters" in t)
    requests = []
    for target in targets:
        [role, _] = target["RoleArn"]["Fn::GetAtt"]
        definition = template["Resources"][target["EcsParameters"]["TaskDefinitionArn"]["Ref"]]
        family = rendered(definition["Properties"]["Family"])
        revision = f"{ACCOUNT_ARN.format(service='ecs')}:task-definition/{family}:12"
        requests.append((role, "ecs:RunTask", revision, {"ecs:cluster": rendered(target["Arn"])}))
        for key in ("TaskRoleArn", "ExecutionRoleArn"):
            passed = rendered(definition["Properties"][key])
            context = {"iam:PassedToService": "ecs-tasks.amazonaws.com"}
            requests.append((role, "iam:PassRole", passed, context))
    return requests


def test_the_schedules_and_rules_start_their_tasks_with_what_their_role_allows(stack):
    requests = started_tasks(stack)
    started = {r for _, action, r, _ in requests if action == "ecs:RunTask"}
    assert {r.split("/")[-1] for r in started} == {
        "warehouse-${StackSuffix}-Pipeline:12",
        "warehouse-${StackSuffix}-DataProcessing:12",
    }
    assert len(requests) == 9  # two schedules and one rule, three requests each
    for role, action, resource_arn, context in requests:
        assert allows(role_policy(stack, role), action, resource_arn, context), (
            action,
            resource_arn,
        )


def test_the_failure_rule_and_the_alarm_may_publish_to_the_topic(stack):
    statements = stack["Resources"]["TopicPolicy"]["Properties"]["PolicyDocument"]["Statement"]
    requests = []
    for name, found in stack["Resources"].items():
        if found["Type"] == "AWS::Events::Rule":
            for target in found["Properties"]["Targets"]:
                if target["Arn"] == {"Ref": "Topic"}:
                    requests.append(("events.amazonaws.com", "${" + name + ".Arn}"))
        elif found["Type"] == "AWS::CloudWatch::Alarm":
            assert found["Properties"]["AlarmActions"] == [{"Ref": "Topic"}]
            alarm = rendered(found["Properties"]["AlarmName"])
            arn = f"{ACCOUNT_ARN.format(service='cloudwatch')}:alarm:{alarm}"
            requests.append(("cloudwatch.amazonaws.com", arn))
    assert {service for service, _ in requests} == {
        "events.amazonaws.com",
        "cloudwatch.amazonaws.com",
    }
    for service, source in requests:
        by_service = [s for s in statements if s["Principal"] == {"Service": service}]
        assert allows(by_service, "sns:Publish", "${Topic}", {"aws:SourceArn": source}), source
