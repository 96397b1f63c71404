"""`agentkube render job`: write everything the agent would pass to the playbook for a job (the job's variables,
and the operator settings from Fulcrum's agent configuration, validated as the agent validates them), so an
operator can run the same playbook by hand when the agent or Fulcrum is down (break-glass).

    agentkube render job --service-id ID --action create [--config agent.yaml] --out DIR
    agentkube render job --job-json job.json --out DIR          # a job as Fulcrum returns it (JobRes)

It prints the command to type: absolute paths to the installed project's playbook and ansible.cfg, the agent's own
ansible-playbook, and the files written, so it works from any folder. The files are written by the agent's own
writer (every value is data, never a template). Vault references are resolved through Fulcrum only with
--resolve-secrets, and only where the agent resolves them (top-level operator settings, properties the service type
marks secret); otherwise they stay `vault://...` strings in the files.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from agentkube.adapters.fulcrum_client import FulcrumClient, FulcrumError
from agentkube.adapters.job_runner import CONFIG_INVENTORY, playbook_arguments, write_config_inventory, write_vars_file
from agentkube.adapters.project_roles import role_variables
from agentkube.core import shipped
from agentkube.core.job_vars import JobInputError, build_job_vars, job_secret_paths, resolve_vault
from agentkube.core.jobs import Job
from agentkube.core.operator_config import ConfigurationError, operator_vars
from agentkube.core.project import project_dir
from agentkube.core.settings import ConfigError, Settings, load_settings


def register_job(what: argparse._SubParsersAction) -> None:
    parser = what.add_parser("job", help="the vars file and inventory the agent would use for a job (break-glass)")
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--service-id", help="read the service from Fulcrum (needs the agent's configuration)")
    src.add_argument("--job-json", type=Path, help="a job as Fulcrum returns it (GET /jobs/pending item)")
    parser.add_argument("--action", default=None, help="the action (default: the job's, or 'update')")
    parser.add_argument("--config", type=Path, help="agent configuration file (environment AGENTKUBE_* too)")
    parser.add_argument("--out", type=Path, required=True, help="folder to write job-vars.yml into (0600)")
    parser.add_argument("--resolve-secrets", action="store_true",
                        help="resolve vault:// references through Fulcrum into the file")
    parser.set_defaults(func=run_job)


def _settings(path: Path | None, need_fulcrum: bool) -> Settings | None:
    try:
        return load_settings(path)
    except ConfigError:
        if need_fulcrum:
            raise
        return None


def _job_from_service(client: FulcrumClient, service_id: str, action: str) -> Job:
    for svc in client.list_services():
        if svc.get("id") == service_id:
            params = svc.get("properties") if action in ("create", "update") else None
            return Job.from_api({"id": f"break-glass-{action}", "action": action, "params": params,
                                 "serviceId": service_id, "service": svc})
    raise FulcrumError(f"service {service_id} is not one of this agent's services")


def run_job(args: argparse.Namespace) -> int:
    try:
        settings = _settings(args.config, need_fulcrum=bool(args.service_id or args.resolve_secrets))
        client = None
        if settings is not None and (args.service_id or args.resolve_secrets):
            token = settings.fulcrum.token.get_secret_value() if settings.fulcrum.token else ""
            client = FulcrumClient(settings.fulcrum.url, token, verify=settings.fulcrum.verify,
                                   timeout_s=settings.fulcrum.timeout_s, retry_attempts=2)
        if args.service_id:
            assert client is not None
            job = _job_from_service(client, args.service_id, args.action or "update")
        else:
            raw = json.loads(args.job_json.read_text(encoding="utf-8"))
            if not isinstance(raw, dict):
                raise ValueError(f"{args.job_json}: a job is a JSON object")
            if args.action:
                raw["action"] = args.action
            job = Job.from_api(raw)
        validate = settings.tenancy.validate_spec if settings else True
        variables = build_job_vars(job, validate, settings.tenancy.limits if settings else None)
        operator: dict = {}  # Fulcrum's agent configuration, checked as the agent checks it
        if client is not None:
            project = settings.runner.project_dir if settings else project_dir()
            operator = operator_vars(client.get_me().get("configuration"), shipped.configuration_schema(),
                                     role_variables(project))
        if args.resolve_secrets and client is not None:
            variables = resolve_vault(variables, job_secret_paths(shipped.property_schema()), client.resolve_secret)
            operator = resolve_vault(operator, {(key,) for key in operator}, client.resolve_secret)
        args.out.mkdir(parents=True, exist_ok=True, mode=0o700)
        job_vars = write_vars_file(args.out / "job-vars.yml", variables)
        config_inventory = write_config_inventory(args.out / CONFIG_INVENTORY, operator) if operator else None
    except (ConfigError, ConfigurationError, FulcrumError, JobInputError, OSError, ValueError, KeyError, TypeError,
            RecursionError) as e:
        print(f"agentkube render job: {e}", file=sys.stderr)
        return 1
    print(f"wrote {job_vars}" + (f" and {config_inventory.parent}" if config_inventory else ""), file=sys.stderr)
    print(break_glass_command(settings, job.action, job_vars, config_inventory))
    return 0


def break_glass_command(settings: Settings | None, action: str, job_vars: Path, config_inventory: Path | None) -> str:
    """The ansible-playbook command the agent would run, with absolute paths: it works from any folder."""
    project = settings.runner.project_dir if settings else project_dir()
    playbook = Path((settings.runner.action_map() if settings else {}).get(action, f"playbooks/{action}.yml"))
    inventory = settings.runner.inventory if settings and settings.runner.inventory else \
        project / "inventories" / "example"
    arguments = playbook_arguments(job_vars.absolute(), Path(inventory).absolute(),
                                   config_inventory.absolute() if config_inventory else None)
    ansible_playbook = Path(sys.executable).parent / "ansible-playbook"  # the agent's own
    return shlex.join([f"ANSIBLE_CONFIG={project / 'ansible.cfg'}", str(ansible_playbook), *arguments,
                       str(playbook if playbook.is_absolute() else project / playbook)])
