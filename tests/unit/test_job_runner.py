"""The job runner against real ansible-runner and small test playbooks."""

from __future__ import annotations

import json
import stat
import threading
from pathlib import Path

import pytest

from agentkube.adapters.job_runner import JobRunner, PlaybookRun
from agentkube.core.redaction import Redactor

REPO = Path(__file__).resolve().parents[2]
PLAYBOOKS = REPO / "tests" / "playbooks"


def _vars(action: str = "custom", params: dict | None = None) -> dict:
    return {
        "agentkube_job": {"id": "job-1", "action": action},
        "agentkube_service": {"id": "svc-1", "name": "Svc", "groupId": "g1"},
        "agentkube_tenant_name": "svc-abcdef",
        "agentkube_previous": {"before": 1},
        "agentkube_params": params or {},
    }


@pytest.fixture
def runner(tmp_path):
    r = JobRunner(REPO, tmp_path / "jobs", Redactor(), keep_artifacts=3)
    yield r
    r.close()


def test_result_comes_from_set_stats(runner):
    out = runner.run(PlaybookRun("job-1", str(PLAYBOOKS / "succeed.yml"), _vars("create")))
    assert out.ok, out.error
    assert out.result == {
        "agentInstanceId": "kamaji-tenants/svc-abcdef",
        "agentInstanceData": {"action": "create", "service": "Svc", "previous": {"before": 1}},
    }


def test_failure_names_the_task_and_message(runner):
    out = runner.run(PlaybookRun("job-2", str(PLAYBOOKS / "fail.yml"), _vars()))
    assert out.status == "failed"
    assert out.error == "task 'Clone the worker VMs' failed on localhost: storage vmstore is full"


def test_a_rescued_failure_reports_the_rescue_message(runner):
    out = runner.run(PlaybookRun("job-2b", str(PLAYBOOKS / "rescued.yml"), _vars()))
    assert out.status == "failed"
    assert out.error == ("task 'Explain the timeout' failed on localhost: TenantControlPlane t1 did not become "
                         "Ready within 300s: last status NotReady (EtcdUnreachable)")


def test_vars_file_is_private_and_gone_after_the_run(runner, tmp_path):
    seen = {}

    def watch():
        vf = tmp_path / "jobs" / "job-3" / "job-vars.yml"
        for _ in range(400):
            if vf.exists():
                seen["mode"] = stat.S_IMODE(vf.stat().st_mode)
                return
            threading.Event().wait(0.01)

    t = threading.Thread(target=watch)
    t.start()
    out = runner.run(PlaybookRun("job-3", str(PLAYBOOKS / "sleep.yml"), _vars(params={"sleep_s": 1})))
    t.join()
    assert out.ok
    assert seen.get("mode") == 0o600
    assert not list((tmp_path / "jobs" / "job-3").glob("*-vars.yml"))
    command = json.loads((out.artifact_dir / "command").read_text())
    assert "job-vars.yml" in " ".join(command["command"])  # passed as a file, never as values


def test_timeout_cancels_and_says_so(runner):
    run = PlaybookRun("job-4", str(PLAYBOOKS / "sleep.yml"), _vars(params={"sleep_s": 30}), timeout_s=2)
    out = runner.run(run)
    assert out.status == "timeout"
    assert "timed out after 2s" in out.error and "Sleep" in out.error


def test_idle_timeout(runner):
    run = PlaybookRun("job-5", str(PLAYBOOKS / "sleep.yml"), _vars(params={"sleep_s": 30}), idle_timeout_s=2)
    out = runner.run(run)
    assert out.status == "idle"
    assert "no event for 2s" in out.error


def test_cancel_event(runner):
    cancel = threading.Event()
    threading.Timer(1.5, cancel.set).start()
    out = runner.run(PlaybookRun("job-6", str(PLAYBOOKS / "sleep.yml"), _vars(params={"sleep_s": 30})), cancel)
    assert out.status == "canceled"


def test_secrets_are_scrubbed_from_artifacts_and_logs(runner, caplog):
    canary = "CANARY-s3cr3t-value-4242"
    runner.redactor.add(canary)
    caplog.set_level("INFO", logger="agentkube.events")
    out = runner.run(PlaybookRun("job-7", str(PLAYBOOKS / "leak.yml"), _vars(params={"password": canary})))
    assert out.ok, out.error
    runner.close()  # drain the event log queue
    files = [p for p in (runner.jobs_dir / "job-7").rglob("*") if p.is_file()]
    assert any(p.name == "stdout" for p in files)
    for p in files:
        assert canary not in p.read_text(errors="replace"), p
    assert "********" in (out.artifact_dir / "stdout").read_text()
    assert canary not in caplog.text
    assert "Print the params" in caplog.text


def test_a_known_secret_in_the_result_is_reported_whole_but_masked_on_disk(runner):
    kubeconfig = "apiVersion: v1\nkind: Config\ncurrent-context: KUBECONFIG-CANARY-77"
    runner.redactor.add(kubeconfig)  # e.g. the previous run's result
    run = PlaybookRun("job-8", str(PLAYBOOKS / "return_secret.yml"), _vars(params={"kubeconfig": kubeconfig}))
    out = runner.run(run)
    assert out.ok, out.error
    assert out.result == {"agentInstanceData": {"kubeconfig": kubeconfig}}
    for p in (runner.jobs_dir / "job-8").rglob("*"):
        if p.is_file():
            assert "KUBECONFIG-CANARY-77" not in p.read_text(errors="replace"), p


def test_rotation_keeps_the_newest_job_dirs(runner):
    for i in range(5):
        runner.run(PlaybookRun(f"rot-{i}", str(PLAYBOOKS / "succeed.yml"), _vars()))
    kept = sorted(d.name for d in runner.jobs_dir.iterdir())
    assert kept == ["rot-2", "rot-3", "rot-4"]
