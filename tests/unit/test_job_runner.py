"""The job runner against real ansible-runner and small test playbooks."""

from __future__ import annotations

import base64
import json
import stat
import threading
from pathlib import Path

import pytest

from agentkube.adapters.job_runner import JobRunner, PlaybookRun, UnsafeIdent
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


def _files_of(runner, ident):
    return {p: p.read_text(errors="replace") for p in (runner.jobs_dir / ident).rglob("*") if p.is_file()}


def test_a_first_seen_kubeconfig_in_the_result_never_reaches_an_artifact(runner):
    pem_body = ["MIIC" + "Q" * 60, "R0VO" + "Z" * 60, "ENDLINE" + "w" * 40]
    pem = "-----BEGIN CERTIFICATE-----\n" + "\n".join(pem_body) + "\n-----END CERTIFICATE-----\n"
    ca_b64 = base64.b64encode(pem.encode()).decode()
    key_b64 = base64.b64encode(b"CLIENT-KEY-CANARY-1234567890").decode()
    kubeconfig = ("apiVersion: v1\nkind: Config\nclusters:\n- name: t\n  cluster:\n"
                  f"    certificate-authority-data: {ca_b64}\n    server: https://10.0.0.5:6443\nusers:\n"
                  f"- name: admin\n  user:\n    client-key-data: {key_b64}\n")
    assert len(runner.redactor) == 0  # nothing known before the run: the result teaches it
    out = runner.run(PlaybookRun("job-9", str(PLAYBOOKS / "return_secret.yml"),
                                 _vars(params={"kubeconfig": kubeconfig})))
    assert out.ok, out.error
    assert out.result == {"agentInstanceData": {"kubeconfig": kubeconfig}}  # Fulcrum gets it whole
    for path, text in _files_of(runner, "job-9").items():
        for canary in (kubeconfig, ca_b64, key_b64, "CLIENT-KEY-CANARY-1234567890", *pem_body):
            assert canary not in text, (path, canary[:20])
            assert json.dumps(canary)[1:-1] not in text, (path, canary[:20])


def test_extra_env_never_reaches_the_command_artifact_and_is_masked(tmp_path, caplog):
    canary = "EXTRA-ENV-CANARY-0x5eed"
    r = JobRunner(REPO, tmp_path / "jobs", Redactor(), extra_env={"K8S_AUTH_API_KEY": canary})
    caplog.set_level("INFO", logger="agentkube.events")
    try:
        out = r.run(PlaybookRun("job-10", str(PLAYBOOKS / "leak.yml"), _vars()))
    finally:
        r.close()
    assert out.ok, out.error
    files = _files_of(r, "job-10")
    assert "********" in (out.artifact_dir / "stdout").read_text()  # the child did get it (env printed, masked)
    for path, text in files.items():
        assert canary not in text, path
    command = json.loads((out.artifact_dir / "command").read_text())
    assert "env" not in command
    assert not (tmp_path / "jobs" / "job-10" / "exec-env.json").exists()
    assert canary not in caplog.text


@pytest.mark.parametrize("ident", ["../escape", "..", "a/b", "/abs", ".hidden", "x\n", ""])
def test_a_run_ident_never_leaves_the_jobs_directory(runner, tmp_path, ident):
    victim = tmp_path / "escape"
    victim.mkdir()
    (victim / "keep").write_text("x")
    with pytest.raises(UnsafeIdent):
        runner.run(PlaybookRun(ident, str(PLAYBOOKS / "succeed.yml"), _vars()))
    assert (victim / "keep").read_text() == "x"


def test_vars_reach_the_playbook_as_data_never_as_templates(runner, tmp_path):
    canary = tmp_path / "CANARY"
    payload = "{{ lookup('ansible.builtin.pipe', 'touch " + str(canary) + "') }}"
    out = runner.run(PlaybookRun("job-11", str(PLAYBOOKS / "succeed.yml"),
                                 {**_vars("create"), "agentkube_service": {"id": "svc-1", "name": payload}}))
    assert out.ok, out.error
    assert out.result["agentInstanceData"]["service"] == payload  # the very string, never evaluated
    assert not canary.exists()


def test_precedence_defaults_fulcrum_configuration_inventory_job(runner, tmp_path):
    """Fulcrum's agent configuration is an inventory source before the operator's inventory: the operator's
    group_vars override it, the job's variables override both; the configuration never outlives the run."""
    inventory = tmp_path / "inventory"
    (inventory / "group_vars").mkdir(parents=True)
    (inventory / "hosts.yml").write_text("all: {}\n")
    (inventory / "group_vars" / "all.yml").write_text("by_operator: inventory\nboth: inventory\n")
    playbook = tmp_path / "show.yml"
    playbook.write_text(
        "- hosts: localhost\n  gather_facts: false\n  tasks:\n"
        "    - ansible.builtin.set_stats:\n        per_host: false\n        data:\n          agentkube_result:\n"
        "            agentInstanceData: {fulcrum: '{{ from_fulcrum }}', both: '{{ both }}', op: '{{ by_operator }}',"
        " job: '{{ agentkube_tenant_name }}'}\n")
    out = runner.run(PlaybookRun("job-prec", str(playbook), {**_vars(), "agentkube_tenant_name": "from-job"},
                                 operator_vars={"from_fulcrum": "fulcrum", "both": "fulcrum",
                                                "agentkube_tenant_name": "fulcrum"},
                                 inventory=str(inventory / "hosts.yml")))
    assert out.ok, out.error
    assert out.result["agentInstanceData"] == {"fulcrum": "fulcrum", "both": "inventory", "op": "inventory",
                                               "job": "from-job"}
    assert not (tmp_path / "jobs" / "job-prec" / "fulcrum-config").exists()
