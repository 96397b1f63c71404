"""`agentkube install --config-url URL [--output PATH] [--token-file F] [--ca-file F] [--owner USER]`: the other
half of Fulcrum Core's install command (POST /agents/{id}/install-command renders the agent type's cmdTemplate).

    AGENTKUBE_INSTALL_AUTH_TOKEN='<authToken>' agentkube install --config-url '<configUrl>'

Core's install URL (GET /agents/install/{token}/config) needs a bearer beside the install token in its path: Core
mints one with the install token (an agent-role token that expires with it, `{{.authToken}}` in the cmdTemplate).
It is read from the environment variable AGENTKUBE_INSTALL_AUTH_TOKEN, never from the command line, and dropped
from the environment once read.

The configuration Core renders (the agent type's configTemplate) is completed with what Core cannot render:
`fulcrum.url` (the API base of the install URL), `fulcrum.token_file` (--token-file: the agent token issued apart
with POST /tokens; the install flow has no long-lived agent token to give), `fulcrum.ca_file` (--ca-file). It is
validated as the agent's settings; only a valid configuration is written, atomically, mode 0600. The install
token is single use and expires after 5 minutes, so everything that can be checked is checked before fetching.
Neither the URL (it holds the token) nor a secret is printed or logged.

Exit status: 0 written, 1 the fetch failed or the configuration is invalid (nothing written), 2 bad arguments.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import pwd
import re
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import requests
import yaml

from agentkube.core.settings import ConfigError, load_settings

AUTH_TOKEN_ENV = "AGENTKUBE_INSTALL_AUTH_TOKEN"  # noqa: S105 - the name of the variable, not a token
DEFAULT_OUTPUT = Path("/etc/agentkube/agent.yaml")
DEFAULT_TOKEN_FILE = Path("/etc/agentkube/fulcrum-token")
# Core's install URL: PUBLIC_BASE_URL + /api/v1/agents/install/{token}/config
# (pkg/api/handlers_agent_install_token.go buildInstallURL); the API base is what precedes /agents/install/
_INSTALL_PATH = re.compile(r"(?P<base>.*)/agents/install/(?P<token>[^/]+)/config/?")


class InstallError(Exception):
    """A message for the operator; it never holds the URL or a token."""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "install",
        help="fetch the configuration Fulcrum rendered for this agent (its install command) and write it (0600)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config-url", required=True, metavar="URL",
                        help="Fulcrum's install URL (.../agents/install/<token>/config); it holds a single-use token")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, metavar="PATH",
                        help=f"where to write agent.yaml (default {DEFAULT_OUTPUT}, where the systemd unit reads it)")
    parser.add_argument("--token-file", type=Path, default=None, metavar="F",
                        help=f"file holding the agent's Fulcrum token (default: the rendered fulcrum.token_file, "
                             f"{DEFAULT_TOKEN_FILE})")
    parser.add_argument("--ca-file", type=Path, default=None, metavar="F",
                        help="CA bundle for Fulcrum's certificate (used for the fetch and written as fulcrum.ca_file)")
    parser.add_argument("--owner", default=None, metavar="USER",
                        help="give the file to this user (the service's User=, e.g. agentkube); needs root")
    parser.add_argument("--allow-insecure-http", action="store_true",
                        help="accept an http:// URL (the tokens then travel in clear) and write "
                             "fulcrum.allow_insecure_http: true")
    parser.add_argument("--timeout", type=float, default=30.0, metavar="S", help="HTTP timeout (default 30 s)")
    parser.set_defaults(func=run)


def api_base(url: str, allow_insecure_http: bool) -> str:
    """The Fulcrum API base of an install URL; InstallError (without the URL) when it is not one."""
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise InstallError("--config-url is not an http(s) URL")
    if parts.scheme == "http" and not allow_insecure_http:
        raise InstallError("--config-url must be https:// (--allow-insecure-http accepts plain http, which sends "
                           "the install token and its bearer in clear)")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise InstallError("--config-url must not carry a query, fragment or user info")
    m = _INSTALL_PATH.fullmatch(parts.path)
    if m is None:
        raise InstallError("--config-url is not a Fulcrum install URL (…/agents/install/<token>/config)")
    return f"{parts.scheme}://{parts.netloc}{m['base']}"


@contextlib.contextmanager
def _quiet_http() -> Iterator[None]:
    """urllib3 logs request lines (with the path, so the token) at debug level: not during the fetch."""
    logger = logging.getLogger("urllib3")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def fetch(url: str, bearer: str, verify: bool | str, timeout: float) -> str:
    """GET the rendered configuration. Messages name the host at most, never the path."""
    host = urlsplit(url).netloc
    try:
        with _quiet_http():
            resp = requests.get(url, headers={"Authorization": f"Bearer {bearer}", "Accept": "*/*"}, verify=verify,
                                timeout=timeout, allow_redirects=False)
    except requests.exceptions.SSLError:
        raise InstallError(f"TLS verification of {host} failed (--ca-file names a private CA)") from None
    except requests.exceptions.Timeout:
        raise InstallError(f"{host} did not answer within {timeout:g} s") from None
    except requests.exceptions.RequestException as e:
        raise InstallError(f"cannot reach {host}: {type(e).__name__}") from None
    if resp.status_code == 200:
        return resp.text
    if resp.status_code in (401, 403):
        raise InstallError(f"Fulcrum refused the install bearer ({resp.status_code}): {AUTH_TOKEN_ENV} must be the "
                           "authToken of the same install command, within its 5 minutes")
    if resp.status_code == 404:
        raise InstallError("Fulcrum answered 404: the install token is unknown, expired (5 minutes), already used "
                           "or revoked, or the agent type could not render its configuration (Core does not say "
                           "which); ask the admin to regenerate the install command")
    if 300 <= resp.status_code < 400:
        raise InstallError(f"Fulcrum answered a redirect ({resp.status_code}); not followed")
    raise InstallError(f"Fulcrum answered {resp.status_code}")


def complete(rendered: str, base: str, args: argparse.Namespace) -> dict:
    """The rendered YAML, parsed, with what Core cannot render."""
    try:
        data = yaml.safe_load(rendered)
    except yaml.YAMLError as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise InstallError(f"the configuration Fulcrum rendered is not YAML: {first}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise InstallError("the configuration Fulcrum rendered is not a YAML mapping")
    fulcrum = data.setdefault("fulcrum", {})
    if not isinstance(fulcrum, dict):
        raise InstallError("the configuration Fulcrum rendered has a `fulcrum` that is not a mapping")
    fulcrum.setdefault("url", base)
    if args.token_file is not None:
        fulcrum.pop("token", None)
        fulcrum["token_file"] = str(args.token_file.resolve())
    if args.ca_file is not None:
        fulcrum["ca_file"] = str(args.ca_file.resolve())
    if args.allow_insecure_http and str(fulcrum.get("url", "")).startswith("http://"):
        fulcrum["allow_insecure_http"] = True
    return data


@contextlib.contextmanager
def _without_agentkube_env() -> Iterator[None]:
    """Validate the file alone: AGENTKUBE_* variables of the installing shell would override it."""
    saved = {k: v for k, v in os.environ.items() if k.startswith("AGENTKUBE_")}
    for key in saved:
        del os.environ[key]
    try:
        yield
    finally:
        os.environ.update(saved)


def write_validated(data: dict, output: Path, owner: str | None) -> None:
    """Write to a 0600 temporary file beside the output, validate it as the agent loads it, then rename it over
    the output (atomic). Nothing is left behind when it does not validate."""
    text = ("# written by `agentkube install` from the configuration Fulcrum Core rendered for this agent\n"
            + yaml.safe_dump(data, sort_keys=False, default_flow_style=False))
    output.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{output.name}.", dir=output.parent)
    tmp = Path(tmp_name)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        with _without_agentkube_env():
            load_settings(tmp)
        if owner is not None:
            entry = pwd.getpwnam(owner)
            os.chown(tmp, entry.pw_uid, entry.pw_gid)
        os.replace(tmp, output)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def preflight(args: argparse.Namespace) -> None:
    """What can fail after the fetch is checked before it: the token is single use."""
    token_file = args.token_file or DEFAULT_TOKEN_FILE
    try:
        if not token_file.read_text(encoding="utf-8").strip():
            raise InstallError(f"token file {token_file} is empty")
    except OSError as e:
        raise InstallError(f"token file {token_file}: {e.strerror}: put the agent's Fulcrum token there (0600; "
                           "an admin issues it with POST /tokens) or pass --token-file") from None
    if args.ca_file is not None and not args.ca_file.is_file():
        raise InstallError(f"--ca-file {args.ca_file} does not exist")
    if args.owner is not None:
        try:
            pwd.getpwnam(args.owner)
        except KeyError:
            raise InstallError(f"--owner {args.owner}: no such user") from None
    parent = args.output.parent
    existing = next((p for p in (parent, *parent.parents) if p.exists()), None)
    if existing is None or not os.access(existing, os.W_OK | os.X_OK):
        raise InstallError(f"cannot write into {parent} (run as root for {DEFAULT_OUTPUT.parent})")


def next_steps(output: Path) -> str:
    return f"""\
Start the agent with systemd (deploy/systemd/README.md):
  install -m 0644 agentkube.service /etc/systemd/system/agentkube.service
  systemctl daemon-reload && systemctl enable --now agentkube
  journalctl -u agentkube -f
or in a container (deploy/container/):
  podman run -d --name agentkube -v {output.parent}:{output.parent}:ro -v agentkube-state:/var/lib/agentkube \\
    agentkube-kamaji run --config {output}
or in the foreground:
  agentkube run --config {output}"""


def run(args: argparse.Namespace) -> int:
    bearer = os.environ.pop(AUTH_TOKEN_ENV, "").strip()
    try:
        base = api_base(args.config_url, args.allow_insecure_http)
        if not bearer:
            raise InstallError(f"{AUTH_TOKEN_ENV} is not set: Fulcrum's install command sets it to the install "
                               "bearer (authToken) in front of `agentkube install`")
        preflight(args)
        verify: bool | str = str(args.ca_file) if args.ca_file else True
        rendered = fetch(args.config_url, bearer, verify, args.timeout)
        data = complete(rendered, base, args)
        write_validated(data, args.output, args.owner)
    except InstallError as e:
        print(f"agentkube install: {e}", file=sys.stderr)
        return 1
    except ConfigError as e:
        print(f"agentkube install: the configuration does not validate, nothing written:\n{e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"agentkube install: writing {args.output}: {e.strerror or e}", file=sys.stderr)
        return 1
    print(f"wrote {args.output} (mode 0600) for Fulcrum at {base}")
    print(next_steps(args.output))
    return 0
