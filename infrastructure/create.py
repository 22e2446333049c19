#!/usr/bin/env python3
"""Create or update the warehouse CloudFormation stack, wait for it, and print its outputs.

Usage::

    python infrastructure/create.py --suffix dev --region eu-west-2 --parameter ImageTag=v1.4.0
    python infrastructure/create.py --suffix prod --parameter ImageTag=v1.5.0

The stack is named ``warehouse-<suffix>`` and built from ``templates/warehouse.yaml``. A stack
that does not exist is created, and every parameter without a default (``ImageTag``: the image
tags are immutable, so there is no ``latest``) must then be given; one that exists is updated,
keeping the previous value of every parameter not given on the command line ("No updates are to
be performed" counts as success).
The AWS credentials, region and endpoint come from the usual places (profile, environment,
``AWS_ENDPOINT_URL``), ``--region`` winning.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import boto3
from botocore.exceptions import BotoCoreError, ClientError, WaiterError

from infrastructure.tools.aws_errors import aws_error_exit
from warehouse import __version__

TEMPLATE = Path(__file__).resolve().parent / "templates" / "warehouse.yaml"
SUFFIX_PATTERN = re.compile(r"^[a-z][a-z0-9]{0,11}$")  # same rule as the template's StackSuffix
TEMPLATE_BODY_LIMIT = 51_200  # CloudFormation's limit for an inline TemplateBody
CAPABILITIES = ["CAPABILITY_NAMED_IAM"]
NO_UPDATES = "No updates are to be performed"
NO_ECHO = "****"  # how describe_stacks shows a NoEcho parameter


def stack_name(suffix: str) -> str:
    """Return the stack name for a suffix: ``warehouse-<suffix>``.

    Parameters
    ----------
    suffix : str
        The environment, such as ``dev``.

    Returns
    -------
    str
        The stack name.
    """
    return f"warehouse-{suffix}"


def suffix_argument(value: str) -> str:
    """Validate ``--suffix`` (argparse type).

    Parameters
    ----------
    value : str
        The value given.

    Returns
    -------
    str
        The value, when valid.

    Raises
    ------
    argparse.ArgumentTypeError
        When it is not 1-12 lower-case letters or digits starting with a letter.
    """
    if not SUFFIX_PATTERN.match(value):
        raise argparse.ArgumentTypeError(
            f"{value!r}: use 1-12 lower-case letters or digits, starting with a letter (dev, prod)"
        )
    return value


def parameter_argument(value: str) -> tuple[str, str]:
    """Parse ``--parameter Key=Value`` (argparse type).

    Parameters
    ----------
    value : str
        ``Key=Value``; the value may be empty or contain ``=``.

    Returns
    -------
    tuple of str
        The key and the value.

    Raises
    ------
    argparse.ArgumentTypeError
        When there is no ``=`` or no key.
    """
    key, sep, val = value.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"{value!r}: expected Key=Value")
    return key.strip(), val


def stack_parameters(
    given: dict[str, str], template_keys: list[str], previous: dict[str, str] | None
) -> list[dict]:
    """Build the ``Parameters`` list for create_stack / update_stack.

    Parameters
    ----------
    given : dict
        Values from the command line (including ``StackSuffix``).
    template_keys : list of str
        The parameters the template declares.
    previous : dict or None
        The existing stack's parameter values (as ``describe_stacks`` shows them); ``None``
        when creating.

    Returns
    -------
    list of dict
        The given values, then, on update, the previous value of every other template
        parameter the stack already has, so an update never resets them to their defaults.
        A hidden (NoEcho, shown as ``****``) value is kept with ``UsePreviousValue``.

    Raises
    ------
    ValueError
        When a given key is not a parameter of the template.
    """
    unknown = sorted(set(given) - set(template_keys))
    if unknown:
        raise ValueError(f"not parameters of the template: {', '.join(unknown)}")
    result: list[dict] = [{"ParameterKey": k, "ParameterValue": v} for k, v in given.items()]
    for key in template_keys:
        if previous is None or key in given or key not in previous:
            continue
        if previous[key] == NO_ECHO:
            result.append({"ParameterKey": key, "UsePreviousValue": True})
        else:
            result.append({"ParameterKey": key, "ParameterValue": previous[key]})
    return result


def missing_parameters(summary: list[dict], given: dict[str, str]) -> list[str]:
    """Return the template parameters a new stack needs but was not given.

    Parameters
    ----------
    summary : list of dict
        The ``Parameters`` of ``get_template_summary``.
    given : dict
        Values from the command line.

    Returns
    -------
    list of str
        The keys without a ``DefaultValue`` that are not in ``given``, in template order.
    """
    return [
        p["ParameterKey"]
        for p in summary
        if "DefaultValue" not in p and p["ParameterKey"] not in given
    ]


def describe_stack(client, name: str) -> dict | None:
    """Return the stack's description, or ``None`` when it does not exist.

    Parameters
    ----------
    client : botocore.client.CloudFormation
        The CloudFormation client.
    name : str
        The stack name.

    Returns
    -------
    dict or None
        The stack as ``describe_stacks`` returns it.
    """
    try:
        return client.describe_stacks(StackName=name)["Stacks"][0]
    except ClientError as error:
        if "does not exist" in str(error):
            return None
        raise


def failure_reasons(client, name: str, limit: int = 10) -> list[str]:
    """Return the latest ``*_FAILED`` events of a stack, newest first, as text lines.

    Parameters
    ----------
    client : botocore.client.CloudFormation
        The CloudFormation client.
    name : str
        The stack name.
    limit : int
        How many lines at most.

    Returns
    -------
    list of str
        ``LogicalId (Type): reason`` lines.
    """
    lines = []
    for event in client.describe_stack_events(StackName=name).get("StackEvents", []):
        if event.get("ResourceStatus", "").endswith("FAILED"):
            lines.append(
                f"{event['LogicalResourceId']} ({event.get('ResourceType', '?')}): "
                f"{event.get('ResourceStatusReason', 'no reason given')}"
            )
        if len(lines) >= limit:
            break
    return lines


def deploy(
    client, name: str, template_body: str, given: dict[str, str], poll_seconds: int = 15
) -> dict:
    """Create or update a stack and wait until CloudFormation has finished.

    Parameters
    ----------
    client : botocore.client.CloudFormation
        The CloudFormation client.
    name : str
        The stack name.
    template_body : str
        The template text.
    given : dict
        Parameter values to set; others keep their previous value on update.
    poll_seconds : int
        Delay between status checks while waiting.

    Returns
    -------
    dict
        The stack as ``describe_stacks`` returns it once complete.

    Raises
    ------
    RuntimeError
        When the stack cannot be updated (a failed creation must be deleted first), or the
        operation failed; the message includes the failed resources' reasons.
    ValueError
        When a given key is not a parameter of the template, or a new stack lacks a parameter
        that has no default.
    """
    summary = client.get_template_summary(TemplateBody=template_body).get("Parameters", [])
    template_keys = [p["ParameterKey"] for p in summary]
    existing = describe_stack(client, name)
    common = {"StackName": name, "TemplateBody": template_body, "Capabilities": CAPABILITIES}
    tags = [{"Key": "warehouse:stack-suffix", "Value": given.get("StackSuffix", name)}]
    waiter_config = {"Delay": poll_seconds, "MaxAttempts": max(1, 3 * 3600 // poll_seconds)}

    if existing is None:
        parameters = stack_parameters(given, template_keys, None)
        missing = missing_parameters(summary, given)
        if missing:
            flags = " ".join(f"--parameter {key}=..." for key in missing)
            raise ValueError(f"a new stack needs {', '.join(missing)} (no default): {flags}")
        client.create_stack(**common, Parameters=parameters, Tags=tags)
        print(f"Creating stack {name}...", flush=True)
        waiter = client.get_waiter("stack_create_complete")
    else:
        status = existing["StackStatus"]
        if status in ("ROLLBACK_COMPLETE", "ROLLBACK_FAILED", "DELETE_FAILED"):
            raise RuntimeError(
                f"stack {name} is {status} and cannot be updated; delete it first: "
                f"aws cloudformation delete-stack --stack-name {name}"
            )
        previous = {p["ParameterKey"]: p["ParameterValue"] for p in existing.get("Parameters", [])}
        parameters = stack_parameters(given, template_keys, previous)
        try:
            client.update_stack(**common, Parameters=parameters, Tags=tags)
        except ClientError as error:
            if NO_UPDATES in str(error):
                print(f"Stack {name} is up to date: {NO_UPDATES.lower()}.", flush=True)
                return _stack_after(client, name)
            raise
        print(f"Updating stack {name}...", flush=True)
        waiter = client.get_waiter("stack_update_complete")

    try:
        waiter.wait(StackName=name, WaiterConfig=waiter_config)
    except WaiterError as error:
        reasons = "\n  ".join(failure_reasons(client, name)) or str(error)
        raise RuntimeError(f"stack {name} did not complete:\n  {reasons}") from error
    return _stack_after(client, name)


def _stack_after(client, name: str) -> dict:
    """Return the stack's description once `deploy` is done with it.

    Raises RuntimeError when the stack is gone (deleted meanwhile by someone else), rather
    than returning a description of nothing.
    """
    stack = describe_stack(client, name)
    if stack is None:
        raise RuntimeError(f"stack {name} no longer exists: it was deleted while deploying")
    return stack


def format_outputs(stack: dict) -> str:
    """Format a stack's outputs as aligned ``Key  Value`` lines.

    Parameters
    ----------
    stack : dict
        The stack as ``describe_stacks`` returns it.

    Returns
    -------
    str
        One line per output, sorted by key.
    """
    outputs = sorted(stack.get("Outputs", []), key=lambda o: o["OutputKey"])
    width = max((len(o["OutputKey"]) for o in outputs), default=0)
    return "\n".join(f"{o['OutputKey']:<{width}}  {o['OutputValue']}" for o in outputs)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line.

    Parameters
    ----------
    argv : list of str, optional
        The arguments; ``sys.argv[1:]`` when omitted.

    Returns
    -------
    argparse.Namespace
        ``suffix``, ``region``, ``template``, ``parameter``, ``stack_name``, ``poll_seconds``.
    """
    parser = argparse.ArgumentParser(
        description="Create or update the warehouse stack (warehouse-<suffix>), wait for it to "
        "complete and print its outputs.",
    )
    parser.add_argument(
        "--suffix",
        required=True,
        type=suffix_argument,
        help="environment: dev, staging, prod... (1-12 lower-case letters/digits)",
    )
    parser.add_argument("--region", help="AWS region (default: from the AWS configuration)")
    parser.add_argument(
        "--template", type=Path, default=TEMPLATE, help=f"template file (default: {TEMPLATE})"
    )
    parser.add_argument(
        "--parameter",
        "-p",
        action="append",
        default=[],
        type=parameter_argument,
        metavar="KEY=VALUE",
        help="template parameter, repeatable (ImageTag=v1.4.0, NotificationEmail=ops@...); "
        "ImageTag is required when the stack is created",
    )
    parser.add_argument(
        "--stack-name", help="override the stack name (default: warehouse-<suffix>)"
    )
    parser.add_argument(
        "--poll-seconds", type=int, default=15, help="seconds between status checks (default 15)"
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Create or update the stack and print its outputs.

    Parameters
    ----------
    argv : list of str, optional
        The arguments; ``sys.argv[1:]`` when omitted.

    Returns
    -------
    int
        0 on success, 1 when the stack could not be created or updated, 2 when the AWS
        credentials or region are missing or refused (said in one line).
    """
    options = parse_args(argv)
    body = options.template.read_text(encoding="utf-8")
    if len(body.encode("utf-8")) > TEMPLATE_BODY_LIMIT:
        print(f"error: {options.template} is over {TEMPLATE_BODY_LIMIT} bytes", file=sys.stderr)
        return 1
    given = dict(options.parameter)
    if given.setdefault("StackSuffix", options.suffix) != options.suffix:
        print("error: give the suffix with --suffix, not --parameter StackSuffix", file=sys.stderr)
        return 1
    name = options.stack_name or stack_name(options.suffix)
    try:
        client = boto3.client("cloudformation", region_name=options.region)
        stack = deploy(client, name, body, given, poll_seconds=options.poll_seconds)
    except (RuntimeError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except (BotoCoreError, ClientError) as error:
        return aws_error_exit(error)
    print(f"Stack {name}: {stack['StackStatus']}")
    print(format_outputs(stack))
    return 0


if __name__ == "__main__":
    sys.exit(main())
