"""`agentkube render <what>`: print what the agent would hand to the playbooks, without touching anything.

`render tcp --properties FILE [--service-name N --service-id ID] [--config FILE]` prints the
TenantControlPlane the kamaji_tcp role applies (YAML on stdout only; logs and errors on stderr).
More subcommands (e.g. `render job`) register next to `tcp` in RENDERERS.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import yaml

from agentkube.cli.input_files import InputFileError
from agentkube.cli.render_job_cmd import register_job
from agentkube.cli.validate_cmd import add_input_arguments, load_settings, load_spec
from agentkube.core.naming import tenant_name
from agentkube.core.tcp_manifest import render_tcp
from agentkube.core.tenant_spec import SpecError

log = logging.getLogger(__name__)

EXAMPLE_SERVICE_ID = "00000000-0000-0000-0000-000000000000"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("render", help="print what the agent would apply or write")
    what = parser.add_subparsers(dest="render_what", required=True, metavar="{tcp,job}")
    for register_renderer in RENDERERS:
        register_renderer(what)


def register_tcp(what: argparse._SubParsersAction) -> None:
    parser = what.add_parser("tcp", help="the Kamaji TenantControlPlane for a tenant spec")
    add_input_arguments(parser)
    add_service_arguments(parser)
    parser.set_defaults(func=run_tcp)


def add_service_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--service-name", help="Fulcrum service name, any form (default: the file's stem)")
    parser.add_argument("--service-id", help=f"Fulcrum service id (default: {EXAMPLE_SERVICE_ID})")


def service_identity(args: argparse.Namespace) -> tuple[str, str]:
    """(name, id) from the arguments, with logged defaults."""
    name = args.service_name
    if not name:
        name = Path(args.properties).stem
        log.info("no --service-name: using %r", name)
    service_id = args.service_id
    if not service_id:
        service_id = EXAMPLE_SERVICE_ID
        log.info("no --service-id: using %s", service_id)
    return name, service_id


def run_tcp(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(args.config)
        spec = load_spec(args.properties, settings)
        name, service_id = service_identity(args)
        log.info("tenant %s in namespace %s", tenant_name(name, service_id), settings.namespace)
        manifest = render_tcp(spec, name, service_id, settings)
    except SpecError as e:
        for path, message in e.errors:
            print(f"{path}: {message}", file=sys.stderr)
        return 1
    except (InputFileError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    sys.stdout.write(yaml.safe_dump(manifest, sort_keys=False, default_flow_style=False))
    return 0


RENDERERS = [register_tcp, register_job]
