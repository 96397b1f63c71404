"""CNI downloads are pinned by an operator-set checksum (issue 10, item 10c), against the lab tenant and a
loopback mirror that counts its requests:
- a URL of the selected CNI without a well-formed checksum fails naming the variable, before anything is
  downloaded or applied;
- a pinned download is applied and cached (a re-run fetches nothing); a new URL or a new checksum is fetched
  again; content that does not match the checksum fails and is never applied.
Shares the lab tenant fixture and the role driver of test_tenant_baseline.py.
"""

from __future__ import annotations

import hashlib
import http.server
import threading
from collections import Counter

import pytest
import test_tenant_baseline
from kubeadm_lab_support import run_playbook
from test_tenant_baseline import INVENTORY, LAB_CNI, PLAY, PSA, _vars

pytestmark = pytest.mark.integration

lab = test_tenant_baseline.lab  # a lab tenant per test (function scope)
V1 = LAB_CNI.read_bytes()
V2 = V1 + b"\n# a newer revision of the stand-in\n"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture
def mirror(tmp_path):
    served = tmp_path / "mirror"
    served.mkdir()
    (served / "v1.yaml").write_bytes(V1)
    (served / "v2.yaml").write_bytes(V2)
    hits: Counter[str] = Counter()

    class Counting(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=str(served), **kw)

        def do_GET(self):
            hits[self.path] += 1
            super().do_GET()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Counting)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    server.hits = hits
    server.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield server
    server.shutdown()


def _run(lab, tmp_path, name: str, entries: list):
    return run_playbook(tmp_path / name, PLAY, INVENTORY, _vars(
        lab, download_dir=tmp_path / "downloads",
        tenant_baseline_cni_manifest_files={"calico": [], "cilium": []},
        tenant_baseline_cni_manifest_urls={"calico": entries, "cilium": []}))


@pytest.mark.parametrize("entry", [
    "{url}",                                           # a plain URL, as before the checksum
    {"url": "{url}"},                                  # no checksum
    {"url": "{url}", "checksum": ""},                 # the default's empty checksum
    {"url": "{url}", "checksum": "sha256:abc123"},    # not 64 hex digits
    {"url": "{url}", "checksum": "md5:" + "0" * 32},  # not sha256/sha512
    {"url": "{url}", "checksum": sha256(V1) + "\n"},  # whole strings only
], ids=["plain-url", "no-checksum", "empty", "short", "md5", "newline"])
def test_an_unpinned_download_fails_naming_the_variable_before_anything_is_touched(lab, tmp_path, mirror, entry):
    url = f"{mirror.url}/v1.yaml"
    entry = entry.format(url=url) if isinstance(entry, str) else {k: v.format(url=url) for k, v in entry.items()}
    run = _run(lab, tmp_path, "run", [entry])
    assert run.rc != 0
    assert "tenant_baseline_cni_manifest_urls.calico[0]: needs url and checksum" in run.stdout, run.stdout[-3000:]
    assert sum(mirror.hits.values()) == 0
    assert not (tmp_path / "downloads").exists()
    assert lab.get("ConfigMap", "agentkube-lab-cni", "kube-system") is None
    assert PSA + "enforce" not in (lab.get("Namespace", "default")["metadata"].get("labels") or {})


def test_a_pinned_download_is_cached_and_fetched_again_when_the_url_or_checksum_changes(lab, tmp_path, mirror):
    downloads = tmp_path / "downloads"
    v1 = {"url": f"{mirror.url}/v1.yaml", "checksum": sha256(V1)}

    first = _run(lab, tmp_path, "run1", [v1])
    assert first.rc == 0, first.stdout[-3000:]
    assert lab.get("ConfigMap", "agentkube-lab-cni", "kube-system") is not None
    assert mirror.hits["/v1.yaml"] == 1
    assert [p.read_bytes() for p in downloads.glob("calico-*.yaml")] == [V1]

    again = _run(lab, tmp_path, "run2", [v1])
    assert again.rc == 0, again.stdout[-3000:]
    assert mirror.hits["/v1.yaml"] == 1  # the cached copy matches its checksum: nothing fetched

    moved = _run(lab, tmp_path, "run3", [{"url": f"{mirror.url}/v2.yaml", "checksum": sha256(V2)}])
    assert moved.rc == 0, moved.stdout[-3000:]
    assert mirror.hits["/v2.yaml"] == 1
    assert sorted(p.read_bytes() for p in downloads.glob("calico-*.yaml")) == sorted([V1, V2])

    # The same URL with a new checksum is fetched again (a new cache name), and other content fails.
    repinned = _run(lab, tmp_path, "run4", [{"url": v1["url"], "checksum": sha256(V2)}])
    assert repinned.rc != 0
    assert mirror.hits["/v1.yaml"] == 2
    assert "Download the CNI manifests" in repinned.stdout and "checksum" in repinned.stdout.lower()
    assert sorted(p.read_bytes() for p in downloads.glob("calico-*.yaml")) == sorted([V1, V2])
