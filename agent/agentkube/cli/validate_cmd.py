"""`agentkube validate --properties FILE [--config FILE]`: check a tenant spec without touching anything.

Prints every error as '<field path>: <message>', one per line, and exits 1; prints 'valid' and exits 0 when
the spec is valid. The version window is the operator's (`kamaji_tcp_min_version`/`_max_version` in the
--config file, group_vars form), else the default.
"""

from __future__ import annotations

import argparse
import sys

from pydantic import ValidationError

from agentkube.cli.input_files import InputFileError, load_mapping
from agentkube.core.tcp_manifest import TcpSettings
from agentkube.core.tenant_spec import SpecError, TenantSpec, validate_tenant_spec


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "validate", help="check a tenant spec (service properties) and print every error with its field"
    )
    add_input_arguments(parser)
    parser.set_defaults(func=run)


def add_input_arguments(parser: argparse.ArgumentParser) -> None:
    """--properties and --config, shared with `agentkube render`."""
    parser.add_argument("--properties", required=True, metavar="FILE", help="tenant spec, YAML or JSON")
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="operator settings as role variables (kamaji_tcp_namespace: ...), e.g. a group_vars file",
    )


def load_settings(path: str | None) -> TcpSettings:
    """Operator settings from a --config file; defaults when none. Raises InputFileError naming the var."""
    if not path:
        return TcpSettings()
    try:
        return TcpSettings.from_vars(load_mapping(path, "config"))
    except ValidationError as e:
        problems = "; ".join(
            f"kamaji_tcp_{'.'.join(str(p) for p in err['loc'])}: {err['msg'].removeprefix('Value error, ')}"
            for err in e.errors()
        )
        raise InputFileError(f"config file {path}: {problems}") from None


def load_spec(properties: str, settings: TcpSettings) -> TenantSpec:
    """The validated tenant spec of a properties file; raises InputFileError or SpecError."""
    min_minor, max_minor = settings.window
    data = load_mapping(properties, "properties")
    return validate_tenant_spec(data, min_minor=min_minor, max_minor=max_minor)


def run(args: argparse.Namespace) -> int:
    try:
        load_spec(args.properties, load_settings(args.config))
    except InputFileError as e:
        print(e, file=sys.stderr)
        return 1
    except SpecError as e:
        for path, message in e.errors:
            print(f"{path}: {message}")
        return 1
    print("valid")
    return 0
