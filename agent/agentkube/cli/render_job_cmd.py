"""`agentkube render job`: write the exact vars file (and the inventory path) the agent would use for a job,
so an operator can run the same playbook by hand when the agent or Fulcrum is down (break-glass).

    agentkube render job --service-id ID --action create [--config agent.yaml] --out DIR
    agentkube render job --job-json job.json --out DIR          # a job as Fulcrum returns it (JobRes)

It prints the `ansible-playbook` command to type. The file is written by the agent's own writer (every value is
data, never a template). Vault references are resolved through Fulcrum only with --resolve-secrets, and only in
properties the service type marks secret; otherwise they stay `vault://...` strings in the file.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from agentkube.adapters.fulcrum_client import FulcrumClient, FulcrumError
from agentkube.adapters.job_runner import write_vars_file
from agentkube.core import shipped
from agentkube.core.job_vars import JobInputError, build_job_vars, job_secret_paths, substitute_vault, vault_refs
from agentkube.core.jobs import Job
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
        window = settings.tenancy.window() if settings else None
        validate = settings.tenancy.validate_spec if settings else True
        variables = build_job_vars(job, window, validate, settings.tenancy.limits if settings else None)
        if args.resolve_secrets and client is not None:
            paths = job_secret_paths(shipped.property_schema())
            resolved = {ref: client.resolve_secret(ref) for ref in sorted(vault_refs(variables, paths))}
            variables = substitute_vault(variables, paths, resolved)
        args.out.mkdir(parents=True, exist_ok=True, mode=0o700)
        vars_file = write_vars_file(args.out / "job-vars.yml", variables)
    except (ConfigError, FulcrumError, JobInputError, OSError, ValueError, KeyError, TypeError, RecursionError) as e:
        print(f"agentkube render job: {e}", file=sys.stderr)
        return 1
    playbook = (settings.runner.action_map() if settings else {}).get(job.action, f"playbooks/{job.action}.yml")
    inventory = settings.runner.inventory if settings and settings.runner.inventory else Path("inventories/example")
    print(f"wrote {vars_file}", file=sys.stderr)
    print(shlex.join(["ansible-playbook", "-i", str(inventory), playbook, "-e", f"@{vars_file}"]))
    return 0
