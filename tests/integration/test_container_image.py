"""The container image (deploy/container/Containerfile), built with buildah and smoke-tested against the lab. Slow:
the first run builds a Debian 13 (trixie, python3 3.13) base root filesystem with mmdebstrap or debootstrap (about a
minute, cached as a tarball under ~/.cache/agentkube/images/), then every run builds the image from this checkout
(pip installs the agent and its dependencies from PyPI: several minutes).

No image registry is reachable here, so the base comes from Debian packages and is `podman import`ed; the image is
built exactly as an operator builds it, `buildah bud -f deploy/container/Containerfile --build-arg BASE_IMAGE=...`
from the repository root. The smoke test mounts the image (`buildah from` + `buildah mount`) and runs its agent with
`chroot --userspec` as the image's non-root user, with the image's environment: a chroot shares the network
namespace, so the agent reaches the lab on 127.0.0.1. The lab's CA, token, kubeconfig and inventory are copied into
the image's root filesystem and the configuration points at those copies."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from agent_harness import new_service, wait_for

import agentkube
from agentkube_lab.lab import Lab

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
CONTAINERFILE = REPO / "deploy" / "container" / "Containerfile"
SUITE = "trixie"  # python3 3.13; bookworm's 3.11 is older than the agent's 3.12
BASE_PACKAGES = "python3,python3-venv,python3-pip,ca-certificates"
MIRROR = "http://deb.debian.org/debian"
IMAGE_UID = 10001
CONFIG_DIR = "/etc/agentkube"            # the image's configuration folder (root:agentkube 0750)
STATE_DIR = "/var/lib/agentkube"         # the image's volume


def _missing() -> str:
    if os.geteuid() != 0:
        return "building and mounting images with buildah needs root"
    for tool in ("buildah", "podman", "chroot", "mount"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install buildah podman)"
    if not (shutil.which("mmdebstrap") or shutil.which("debootstrap")):
        return "neither mmdebstrap nor debootstrap is installed (the base image is built from Debian packages)"
    return ""


if _missing():
    pytestmark = [pytestmark, pytest.mark.skip(reason=_missing())]


def _run(*argv: str, timeout: float = 600, check: bool = True, **kw: Any) -> subprocess.CompletedProcess:
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(argv[:4])}... exited {r.returncode}:\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}")
    return r


def image_cache() -> Path:
    default = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "agentkube" / "images"
    return Path(os.environ.get("AGENTKUBE_IMAGE_CACHE") or default)


def _build_base_tarball(tarball: Path) -> None:
    """A minimal Debian root filesystem with python3 and its venv module, as a tarball (written atomically)."""
    tarball.parent.mkdir(parents=True, exist_ok=True)
    partial = tarball.with_suffix(".partial.tar")
    if shutil.which("mmdebstrap"):
        argv = ["mmdebstrap", "--variant=minbase", f"--include={BASE_PACKAGES}", SUITE, str(partial), MIRROR]
        r = _run(*argv, timeout=1200, check=False)
    else:
        root = tarball.parent / "debootstrap-root"
        shutil.rmtree(root, ignore_errors=True)
        r = _run("debootstrap", "--variant=minbase", f"--include={BASE_PACKAGES}", SUITE, str(root), MIRROR,
                 timeout=1800, check=False)
        if r.returncode == 0:
            r = _run("tar", "-C", str(root), "--numeric-owner", "-cf", str(partial), ".", check=False)
        shutil.rmtree(root, ignore_errors=True)
    if r.returncode != 0:
        partial.unlink(missing_ok=True)
        pytest.skip(f"could not build a Debian {SUITE} root filesystem from {MIRROR} "
                    f"(is the mirror reachable?): {(r.stderr or r.stdout)[-600:]}")
    partial.rename(tarball)


@pytest.fixture(scope="module")
def base_image() -> str:
    """A local image made from Debian packages: the cached tarball, imported into podman's storage once."""
    tarball = image_cache() / f"debian-{SUITE}-python3.tar"
    if not tarball.exists():
        _build_base_tarball(tarball)
    stat = tarball.stat()
    tag = hashlib.sha256(f"{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    name = f"localhost/agentkube-test-base:{SUITE}-{tag}"
    if _run("podman", "image", "exists", name, check=False).returncode != 0:
        stale = _run("podman", "images", "--format", "{{.Repository}}:{{.Tag}}", check=False).stdout.split()
        for old in stale:  # imports of an earlier tarball
            if old.startswith(f"localhost/agentkube-test-base:{SUITE}-"):
                _run("podman", "rmi", "--force", old, check=False)
        _run("podman", "import", "--change", 'CMD ["/bin/bash"]', str(tarball), name)
    return name


@pytest.fixture(scope="module")
def image(base_image: str) -> Iterator[str]:
    """The image built from this checkout as the README says, with nothing prepared beforehand."""
    name = f"localhost/agentkube-kamaji:test-{os.getpid()}"
    _run("buildah", "bud", "--isolation", "chroot", "--volume", "/etc/ssl/certs:/etc/ssl/certs:ro",
         "--format", "docker", "-f", str(CONTAINERFILE.relative_to(REPO)), "--build-arg", f"BASE_IMAGE={base_image}",
         "-t", name, ".", cwd=REPO, timeout=1800)
    try:
        yield name
    finally:
        _run("buildah", "rmi", "--force", name, check=False)


@pytest.fixture(scope="module")
def config(image: str) -> dict[str, Any]:
    """The image's configuration (docker format: it keeps the HEALTHCHECK)."""
    return json.loads(_run("buildah", "inspect", "--type", "image", image).stdout)["Docker"]["config"]


@pytest.fixture(scope="module")
def rootfs(image: str) -> Iterator[Path]:
    """The image's root filesystem (a buildah working container, mounted), with /proc and /dev for chroot runs."""
    ctr = _run("buildah", "from", "--pull-never", image).stdout.strip()
    mounted: list[Path] = []
    try:
        mnt = Path(_run("buildah", "mount", ctr).stdout.strip())
        _run("mount", "-t", "proc", "proc", str(mnt / "proc"))
        mounted.append(mnt / "proc")
        _run("mount", "--rbind", "/dev", str(mnt / "dev"))
        _run("mount", "--make-rslave", str(mnt / "dev"))
        mounted.append(mnt / "dev")
        yield mnt
    finally:
        for path in reversed(mounted):
            _run("umount", "-R", str(path), check=False)
        _run("buildah", "umount", ctr, check=False)
        _run("buildah", "rm", ctr, check=False)


def image_env(config: dict[str, Any], **extra: str) -> dict[str, str]:
    """The environment a container of the image starts with (and nothing of this process)."""
    env = dict(item.split("=", 1) for item in config.get("Env") or [])
    env.update(extra)
    return env


def in_image(rootfs: Path, config: dict[str, Any], *argv: str, env: dict[str, str] | None = None,
             **kw: Any) -> subprocess.CompletedProcess:
    """argv run in the image's root filesystem as its user, with its environment (what `podman run` would do)."""
    return _run("chroot", f"--userspec={config['User']}", str(rootfs), *argv, env=env or image_env(config),
                check=False, **kw)


def test_the_image_is_configured_for_operators(config, rootfs):
    assert config["User"] == f"{IMAGE_UID}:{IMAGE_UID}"
    assert config["Entrypoint"] == ["agentkube"] and config["Cmd"] == ["run"]
    assert list(config["Volumes"]) == [STATE_DIR]
    assert "/healthz" in " ".join(config["Healthcheck"]["Test"])
    state = (rootfs / STATE_DIR.lstrip("/")).stat()
    assert (state.st_uid, state.st_mode & 0o777) == (IMAGE_UID, 0o700)
    # no lab extra, no source tree, no tests: only the virtualenv
    site = next((rootfs / "opt" / "agentkube" / "lib").glob("python3.*/site-packages"))
    assert not (site / "fakepve").exists() and not (site / "cel").exists()
    assert (site / "ansible_collections" / "kubernetes" / "core").is_dir()
    assert not (rootfs / "usr" / "src" / "agentkube").exists()
    assert not list(rootfs.glob("**/tests/integration/agent_harness.py"))


def test_the_image_agent_runs_as_the_non_root_user(config, rootfs):
    r = in_image(rootfs, config, "agentkube", "--version")
    assert r.returncode == 0 and r.stdout == f"agentkube {agentkube.__version__}\n", r.stderr
    r = in_image(rootfs, config, "python3", "-c", "import os, sys; print(os.getuid(), sys.version_info >= (3, 12))")
    assert r.stdout.split() == [str(IMAGE_UID), "True"], r.stderr


# ------------------------------------------------------------------------------------------------ against the lab
def _copy_into(rootfs: Path, src: Path, dest: str) -> str:
    """src copied into the image's root filesystem at dest, readable by the image's user only (0600)."""
    target = rootfs / dest.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, target)
    os.chown(target, IMAGE_UID, IMAGE_UID)
    os.chmod(target, 0o600)
    return dest


def _rewrite(value: Any, lab: Lab, rootfs: Path, collection: str) -> Any:
    """The lab's paths made paths inside the image: files of the lab's state directory copied under
    /etc/agentkube/lab/, folders to create under the volume, the checkout's project files to the image's own
    copy of the collection."""
    if isinstance(value, dict):
        return {k: _rewrite(v, lab, rootfs, collection) for k, v in value.items()}
    if isinstance(value, list):
        return [_rewrite(v, lab, rootfs, collection) for v in value]
    if not isinstance(value, str) or not value.startswith("/"):
        return value
    path = Path(value)
    if path.is_relative_to(lab.state_dir):
        rel = path.relative_to(lab.state_dir)
        if path.is_file():
            return _copy_into(rootfs, path, f"{CONFIG_DIR}/lab/{rel}")
        return f"{STATE_DIR}/lab/{rel}"
    from agentkube.core.project import project_dir

    if path.is_relative_to(project_dir()):
        inside = f"{collection}/{path.relative_to(project_dir())}"
        assert (rootfs / inside.lstrip("/")).exists(), f"the image lacks {inside}"
        return inside
    return value


def _write_private(rootfs: Path, dest: str, data: Any, header: str = "") -> str:
    target = rootfs / dest.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(header + yaml.safe_dump(data, sort_keys=False))
    os.chown(target, IMAGE_UID, IMAGE_UID)
    os.chmod(target, 0o600)
    return dest


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Iterator[Lab]:
    """Fulcrum, the Kamaji parent and Proxmox emulators on 127.0.0.1; the workers' join is off (no emulated
    workers: they need the worker root filesystem), as `agentkube demo` does without it."""
    with Lab(tmp_path_factory.mktemp("image-lab"), emulated_workers=False) as lab:
        yield lab


@pytest.fixture(scope="module")
def image_config(lab: Lab, rootfs: Path) -> str:
    """The lab's agent configuration and inventory inside the image, pointing at copies of the lab's files."""
    site = next((rootfs / "opt" / "agentkube" / "lib").glob("python3.*/site-packages"))
    collection = "/" + str(site.relative_to(rootfs) / "ansible_collections" / "agentkube" / "kamaji")
    group_vars = yaml.safe_load((lab.inventory_dir / "group_vars" / "all.yml").read_text())
    assert group_vars["agentkube_join_workers"] is False
    inventory = f"{CONFIG_DIR}/lab/inventory"
    _copy_into(rootfs, lab.inventory_dir / "hosts.yml", f"{inventory}/hosts.yml")
    _write_private(rootfs, f"{inventory}/group_vars/all.yml", _rewrite(group_vars, lab, rootfs, collection))
    cfg = _rewrite(lab.agent_config(), lab, rootfs, collection)
    cfg["runner"]["inventory"] = f"{inventory}/hosts.yml"
    del cfg["agent"]["state_dir"]  # the image's default: $XDG_STATE_HOME/agentkube, the volume
    cfg["health"] = {"port": 0}
    for host_path in (str(lab.state_dir), str(REPO)):  # nothing of this machine's files is left
        assert host_path not in yaml.safe_dump(cfg), cfg
    return _write_private(rootfs, f"{CONFIG_DIR}/agent.yaml", cfg)


def test_the_image_agent_completes_a_create_job_in_the_lab(lab, rootfs, config, image_config):
    """One job end to end: the image's agent claims the create job of a new service, runs the real create playbook
    from the image's collection (TenantControlPlane on the Kamaji emulator, a worker VM cloned in fakepve, no join)
    and reports it Completed."""
    svc = new_service(lab, "Image Smoke")
    (job,) = [j for j in lab.fulcrum.jobs if j["serviceId"] == svc["id"]]
    assert job["status"] == "Pending"
    r = in_image(rootfs, config, *config["Entrypoint"], "run", "--once", "--config", image_config, timeout=900)
    done = lab.fulcrum.get_job(job["id"])
    assert r.returncode == 0 and done["status"] == "Completed", (done, r.stdout[-3000:], r.stderr[-6000:])
    assert lab.fulcrum.get_service(svc["id"])["status"] == "Stopped"  # create -> Stopped
    tcps = lab.kube.list("kamaji.clastix.io/v1alpha1", "TenantControlPlane")
    assert len(tcps) == 1, tcps
    # the agent ran as the image's user, with its state (journal, job folders) in the volume
    state = rootfs / STATE_DIR.lstrip("/")
    owned = {p.stat().st_uid for p in [state, *state.rglob("*")]}
    assert owned == {IMAGE_UID}, owned
    assert (state / "jobs" / job["id"]).is_dir(), sorted(state.iterdir())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _agent_in_image(rootfs: Path, config: dict[str, Any], image_config: str, env: dict[str, str]) -> Iterator[None]:
    proc = subprocess.Popen(["chroot", f"--userspec={config['User']}", str(rootfs), *config["Entrypoint"], "run",
                             "--config", image_config], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        yield
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_the_image_healthcheck_follows_the_agent(lab, rootfs, config, image_config):
    """The image's HEALTHCHECK command, run as the container runtime would: unhealthy while no agent serves
    /healthz, healthy once the agent runs (its port given by AGENTKUBE_HEALTH__PORT, which the check follows)."""
    check = config["Healthcheck"]["Test"]
    assert check[0] == "CMD"
    env = image_env(config, AGENTKUBE_HEALTH__PORT=str(_free_port()))
    assert in_image(rootfs, config, *check[1:], env=env, timeout=30).returncode != 0
    with _agent_in_image(rootfs, config, image_config, env):
        wait_for(lambda: in_image(rootfs, config, *check[1:], env=env, timeout=30).returncode == 0, timeout=120,
                 interval=1, what="the image's healthcheck to pass")
    # the agent is stopped: nothing listens any more
    assert in_image(rootfs, config, *check[1:], env=env, timeout=30).returncode != 0
