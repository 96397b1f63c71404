"""Top layer: the `agentkube` command line. Each subcommand lives in its own module with a
`register(subparsers)` function that adds its parser and sets `func(args) -> int`."""

from __future__ import annotations

import argparse
import importlib
import sys

from agentkube import __version__
from agentkube.cli.log_format import configure

DESCRIPTION = """\
agentkube runs Kubernetes tenant clusters for Fulcrum Core: it takes Fulcrum's jobs and runs the Ansible
playbooks that render Kamaji TenantControlPlanes, clone Proxmox VE worker VMs and join them with kubeadm, then
reports results, heartbeats and metrics back to Fulcrum."""

EPILOG = """\
common commands:
  agentkube run --config agent.yaml        the agent service (AGENTKUBE_* environment variables override the file)
  agentkube run --once                     process what is pending, report, exit
  agentkube render job --service-id ID --action create --config agent.yaml --out DIR
                                           break-glass: the variables the agent would pass, and the command to run
  agentkube validate --properties spec.yaml
                                           check a tenant spec, every error with its field
  agentkube demo                           the whole story against the lab (needs the 'lab' extra)

`agentkube COMMAND --help` describes each command. Exit status: 0 ok (also when jobs failed: Fulcrum gets the
failure), 2 invalid configuration or rejected token, 3 the agent stopped (Fulcrum unreachable, not the active
instance)."""

SUBCOMMAND_MODULES = (
    "agentkube.cli.run_cmd",
    "agentkube.cli.lab_cmd",
    "agentkube.cli.demo_cmd",
    "agentkube.cli.render_cmd",
    "agentkube.cli.validate_cmd",
    "agentkube.cli.install_cmd",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="agentkube", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"agentkube {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging on stderr")
    parser.add_argument("--log-format", choices=("text", "json"), default="text",
                        help="stderr logs as text lines or one JSON object per line")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:  # a subcommand not built yet
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure(args.log_format, args.verbose)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
