"""`agentkube run`: the agent service."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path

from agentkube.agent.loop import Agent
from agentkube.core.settings import ConfigError, load_settings, scrub_secret_env

log = logging.getLogger("agentkube")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run the agent (poll Fulcrum, run jobs, report)")
    p.add_argument("--config", type=Path, help="YAML configuration file (environment AGENTKUBE_* overrides it)")
    p.add_argument("--once", action="store_true", help="process all pending jobs, then exit")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(args.config)
    except ConfigError as e:
        print(f"agentkube: {e}", file=sys.stderr)
        return 2
    scrub_secret_env()
    agent = Agent(settings)
    install_signal_handlers(agent)
    return agent.run(once=args.once)


def install_signal_handlers(agent: Agent) -> None:
    """First SIGTERM/SIGINT: warm shutdown (stop claiming, grace period). Second: cancel running jobs."""
    def handler(signum: int, _frame: object) -> None:
        if agent.state.stopping:
            log.warning("second %s: canceling running jobs", signal.Signals(signum).name)
            agent.request_cancel()
        else:
            agent.state.stopping = True
            log.info("%s received: shutting down", signal.Signals(signum).name)
            agent.request_stop()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
