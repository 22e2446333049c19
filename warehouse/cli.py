"""The front door: one command, ``warehouse``, with a subcommand for each graph and tool.

    warehouse load --bucket file://demo/bucket --dry-run
    warehouse centres --bucket file://demo/bucket
    warehouse dataprocess --bucket file://demo/bucket
    warehouse select --bucket file://demo/bucket --group training --modality xray
    warehouse status --bucket file://demo/bucket
    warehouse logs --help

The flags of the common settings (`SETTING_FLAGS`) set the environment variables the graphs
read (`settings_environment`), so a flag and its variable are one setting, checked by the same
rules (`warehouse.core.config.settings_from_env`); a flag given wins over the variable. Each
subcommand then runs the existing command (its ``main``), whose exit code passes through
unchanged. Nothing here imports bonobo until a graph is run.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Mapping, Sequence

from warehouse import __version__

PROG = "warehouse"

#: Flag -> (its destination, the environment variable it sets, help). Values are passed on
#: as written: the settings rules check them (an invalid value: exit 2, the variable's message).
SETTING_FLAGS: dict[str, tuple[str, str, str]] = {
    "--bucket": (
        "bucket",
        "WAREHOUSE_BUCKET",
        "the warehouse: name, s3://name or file://path",
    ),
    "--workers": ("workers", "WAREHOUSE_WORKERS", "storage requests in flight (default 32)"),
    "--processes": (
        "processes",
        "WAREHOUSE_PROCESSES",
        "processes for the loader's image work (a number or auto)",
    ),
    "--log-format": ("log_format", "WAREHOUSE_LOG_FORMAT", "text or json"),
}
#: Switches -> (destination, the environment variable set to ``true``, help).
SETTING_SWITCHES: dict[str, tuple[str, str, str]] = {
    "--dry-run": ("dry_run", "DRY_RUN", "run everything, write nothing"),
    "--reconcile": (
        "reconcile",
        "WAREHOUSE_RECONCILE",
        "look at everything, not only at what can be new (the weekly run)",
    ),
}

#: Subcommand -> (module, help, the settings it takes, or None: its arguments are passed on).
_GRAPHS_SETTINGS = ("--bucket", "--workers", "--log-format", "--dry-run")
COMMANDS: dict[str, tuple[str, str, tuple[str, ...] | None]] = {
    "load": (
        "warehouse.warehouseloader",
        "load the raw uploads into the warehouse (warehouseloader)",
        (*_GRAPHS_SETTINGS, "--processes", "--reconcile"),
    ),
    "centres": (
        "warehouse.submittingcentres",
        "print the SubmittingCentre values of the configured prefixes (submittingcentres)",
        _GRAPHS_SETTINGS,
    ),
    "dataprocess": (
        "warehouse.dataprocess",
        "write the dashboard tables, the catalogue and the pages (dataprocess)",
        (*_GRAPHS_SETTINGS, "--reconcile"),
    ),
    "select": (
        "warehouse.select",
        "select images from the catalogue, count and download them (warehouse-select; "
        "its own flags follow)",
        ("--bucket", "--workers"),
    ),
    "status": (
        "warehouse.status",
        "the state of a warehouse: last runs, the lease, the latest batch, problems by site",
        ("--bucket",),
    ),
    "create-stack": (
        "infrastructure.create",
        "create or update the CloudFormation stack (warehouse-create-stack)",
        None,
    ),
    "logs": ("infrastructure.tools.get_logs", "download a task's log stream", None),
    "inventory": (
        "infrastructure.tools.get_inventory",
        "download the newest S3 inventory",
        None,
    ),
    "batch-delete": (
        "infrastructure.tools.batchdelete",
        "delete keys from the warehouse bucket",
        None,
    ),
    "sharded-run": (
        "infrastructure.tools.sharded_run",
        "a sharded loader run on AWS Batch",
        None,
    ),
}
#: Subcommands whose own command line takes further arguments (passed on as given; its
#: ``--help`` is the command's own).
_PASSES_ARGUMENTS = {"select"}


def command_parser() -> argparse.ArgumentParser:
    """Build the command line (``warehouse --help``, ``warehouse <command> --help``)."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="The imaging data warehouse: run its graphs, select images, see its state, "
        "and the operator tools.",
        epilog="Setting flags set the environment variable named in each command's --help "
        "(a flag wins over the variable). Exit codes are the command's own (README, "
        "'Commands and exit codes').",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="command", required=True)
    for name, (module, text, settings) in COMMANDS.items():
        if settings is None:
            sub = commands.add_parser(name, help=text, description=text, add_help=False)
            sub.add_argument("arguments", nargs=argparse.REMAINDER)
            continue
        sub = commands.add_parser(
            name,
            help=text,
            description=text,
            add_help=name not in _PASSES_ARGUMENTS,
            allow_abbrev=False,
            epilog=f"runs {module}; its exit code passes through",
        )
        if name == "status":
            sub.add_argument("--json", action="store_true", help="one JSON document, for machines")
        for flag in settings:
            if flag in SETTING_FLAGS:
                dest, variable, flag_help = SETTING_FLAGS[flag]
                sub.add_argument(flag, dest=dest, metavar=variable, help=flag_help)
            else:
                dest, variable, flag_help = SETTING_SWITCHES[flag]
                sub.add_argument(
                    flag, dest=dest, action="store_true", help=f"{flag_help} ({variable}=true)"
                )
    return parser


def settings_environment(args: argparse.Namespace) -> dict[str, str]:
    """Return the environment variables the setting flags given in ``args`` stand for.

    A flag not given sets nothing (the environment's value, or the default, holds); a switch
    given sets its variable to ``true``. Values are not checked here: the graph checks them as
    it checks the environment.
    """
    environment = {}
    for dest, variable, _ in SETTING_FLAGS.values():
        value = getattr(args, dest, None)
        if value is not None:
            environment[variable] = value
    for dest, variable, _ in SETTING_SWITCHES.values():
        if getattr(args, dest, False):
            environment[variable] = "true"
    return environment


def run(
    command: str, argv: Sequence[str], environment: Mapping[str, str] | None = None
) -> int | None:
    """Run ``command`` (a key of `COMMANDS`) with ``argv``; return its ``main``'s exit code.

    ``environment`` is put into ``os.environ`` first.
    """
    os.environ.update(environment or {})
    module = importlib.import_module(COMMANDS[command][0])
    program = sys.argv[:1]
    sys.argv[:1] = [f"{PROG} {command}"]  # a tool's usage line names it as it was called
    try:
        return module.main(list(argv))
    finally:
        sys.argv[:1] = program


def main(argv: Sequence[str] | None = None) -> int | None:
    """Command line entry point (``warehouse``)."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments and COMMANDS.get(arguments[0], ("", "", ()))[2] is None:
        return run(arguments[0], arguments[1:])  # a tool: its command line, whole and in order
    parser = command_parser()
    args, rest = parser.parse_known_args(arguments)
    if args.command not in _PASSES_ARGUMENTS and rest:
        parser.parse_args(arguments)  # says which argument is not known, exits 2
    if args.command == "status" and args.json:
        rest = ["--json"]
    return run(args.command, rest, settings_environment(args))


if __name__ == "__main__":
    sys.exit(main())
