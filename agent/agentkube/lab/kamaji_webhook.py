"""Kamaji's validating webhook rules for TenantControlPlanes, as an admission hook of the lab store: the
version rules (internal/webhook/handlers/tcp_version.go) and the DataStore existence check
(tcp_datastore.go); a denial is answered like the apiserver answers a webhook denial
(403 Forbidden, `admission webhook "vtenantcontrolplane.kb.io" denied the request: ...`)."""

from __future__ import annotations

import re
from collections.abc import Callable

from agentkube.lab.kube_resources import TENANT_CONTROL_PLANE
from agentkube.lab.kube_store import AdmissionRequest, ApiError

WEBHOOK_NAME = "vtenantcontrolplane.kb.io"
_SEMVER = re.compile(r"^v?(?P<major>0|[1-9]\d*)\.(?P<minor>0|[1-9]\d*)\.(?P<patch>0|[1-9]\d*)"
                     r"(?:-[0-9A-Za-z.-]+)?(?:\+[0-9A-Za-z.-]+)?$")
_MAX = re.compile(r"^v?(?P<major>\d+)\.(?P<minor>\d+)(?:\.\d+)?$")


def denied(message: str, webhook: str = WEBHOOK_NAME) -> ApiError:
    """What kube-apiserver returns when a validating webhook (controller-runtime admission.Denied) says no."""
    return ApiError(403, "Forbidden", f'admission webhook "{webhook}" denied the request: {message}')


def parse_version(text: object) -> tuple[int, int] | None:
    """(major, minor) of a strict semantic version such as v1.35.7, or None; the patch is ignored, as Kamaji
    ignores it."""
    m = _SEMVER.match(text) if isinstance(text, str) else None
    return (int(m["major"]), int(m["minor"])) if m else None


class KamajiTcpWebhook:
    """No version above `max_version`, no downgrade, no skipped minor version; a named DataStore exists."""

    def __init__(self, max_version: str = "v1.36", datastore_exists: Callable[[str], bool] | None = None):
        m = _MAX.match(max_version)
        if not m:
            raise ValueError(f"max_version: expected vMAJOR.MINOR, got {max_version!r}")
        self.max = (int(m["major"]), int(m["minor"]))
        self.datastore_exists = datastore_exists

    def __call__(self, request: AdmissionRequest) -> None:
        if request.rtype != TENANT_CONTROL_PLANE or request.subresource or request.obj is None:
            return
        if request.operation == "CREATE":
            self.on_create(request.obj)
        elif request.operation == "UPDATE" and request.old is not None:
            self.on_update(request.obj, request.old)
        else:
            return
        self.check_datastores(request.obj, creating=request.operation == "CREATE")

    def check_datastores(self, obj: dict, creating: bool) -> None:
        if self.datastore_exists is None:
            return
        spec = obj.get("spec") or {}
        names = [spec["dataStore"]] if spec.get("dataStore") else []
        if not names and creating:
            seen: set[str] = set()
            for override in spec.get("dataStoreOverrides") or []:
                if override.get("resource") in seen:
                    raise denied("duplicate resource override in Spec.DataStoreOverrides")
                seen.add(override.get("resource"))
                names.append(override.get("dataStore") or "")
        for name in names:
            if not self.datastore_exists(name):
                raise denied(f"{name} DataStore does not exist")

    @staticmethod
    def _version(obj: dict) -> str:
        return ((obj.get("spec") or {}).get("kubernetes") or {}).get("version") or ""

    def on_create(self, obj: dict) -> None:
        version = parse_version(self._version(obj))
        if version is None:
            raise denied("unable to parse the desired Kubernetes version: No Major.Minor.Patch elements found")
        if version > self.max:
            raise denied("unable to create a TenantControlPlane with a Kubernetes version greater than the "
                         f"supported one, actually v{self.max[0]}.{self.max[1]}")

    def on_update(self, obj: dict, old: dict) -> None:
        if obj.get("metadata", {}).get("deletionTimestamp"):
            return
        old_version = parse_version(self._version(old))
        if old_version is None:
            raise denied("unable to parse the previous Kubernetes version: No Major.Minor.Patch elements found")
        new_version = parse_version(self._version(obj))
        if new_version is None:
            raise denied("unable to parse the desired Kubernetes version: No Major.Minor.Patch elements found")
        if new_version > self.max:
            raise denied(f"unable to upgrade to a version greater than the supported one "
                         f"(v{self.max[0]}.{self.max[1]})")
        if new_version < old_version:
            raise denied(f"unable to downgrade a TenantControlPlane from {old_version[0]}.{old_version[1]}.0 "
                         f"to {new_version[0]}.{new_version[1]}.0")
        if new_version[1] - old_version[1] > 1:
            raise denied("unable to upgrade to a minor version in a non-sequential mode")
