"""The control plane's upgrade plan: which versions to apply, one minor at a time, or why not.

Kamaji's webhook refuses a downgrade, a skipped minor version and anything above its maximum; the kamaji_tcp
role calls `plan_upgrade` (through the `agentkube_tcp_upgrade_plan` filter) before it touches the TCP, so a
refusal leaves the live object as it was.

Intermediate versions: upgrading 1.33.x to 1.35.y steps through 1.34. The patch of each intermediate minor
comes from the operator's `upgrade_path` map (role variable `kamaji_tcp_upgrade_path`, minor -> version, e.g.
{"1.34": "v1.34.1"}): a known-good patch the operator has validated (kubelet packages and VM templates exist
for it). A minor missing from the map is refused rather than guessed. The desired version's own minor always
uses the desired version.
"""

from __future__ import annotations

from typing import Any

from agentkube.core.tenant_spec import parse_version

Minor = tuple[int, int]


class UpgradeRefused(ValueError):
    """The version change is not allowed; the message says why and what to do."""


def _fmt_minor(minor: Minor) -> str:
    return f"{minor[0]}.{minor[1]}"


def normalise_upgrade_path(upgrade_path: dict[Any, Any] | None) -> dict[Minor, str]:
    """{'1.34': 'v1.34.1', 'v1.35': 'v1.35.7'} -> {(1, 34): 'v1.34.1', ...}; each value must be a version of
    its key's minor (which also catches an unquoted YAML key like 1.30 read as the float 1.3)."""
    out: dict[Minor, str] = {}
    for key, version in (upgrade_path or {}).items():
        label = str(key).removeprefix("v")
        try:
            major, minor, _ = parse_version(str(version))
        except ValueError as e:
            raise UpgradeRefused(f"upgrade path entry {key!r}: {e}") from None
        if label != _fmt_minor((major, minor)):
            raise UpgradeRefused(
                f"upgrade path entry {key!r}: {version} is not a {label} version "
                "(quote the keys in YAML: \"1.30\", not 1.30)"
            )
        out[(major, minor)] = str(version)
    return out


def plan_upgrade(
    current: str,
    desired: str,
    *,
    min_minor: Minor,
    max_minor: Minor,
    upgrade_path: dict[Any, Any] | None = None,
    step_minors: bool = True,
) -> list[str]:
    """The versions to apply, in order, from `current` to `desired` ([] when equal); the last is `desired`.

    Raises UpgradeRefused for a downgrade, a version outside [min_minor, max_minor], a change of major
    version, a skipped minor when `step_minors` is False, or an intermediate minor missing from
    `upgrade_path`.
    """
    try:
        cur = parse_version(current)
    except ValueError as e:
        raise UpgradeRefused(f"live version: {e}") from None
    try:
        want = parse_version(desired)
    except ValueError as e:
        raise UpgradeRefused(f"desired version: {e}") from None
    if cur == want:
        return []
    window = f"v{_fmt_minor(min_minor)} to v{_fmt_minor(max_minor)}"
    if not (min_minor <= want[:2] <= max_minor):
        raise UpgradeRefused(f"{desired} is outside the supported window {window}")
    if want < cur:
        raise UpgradeRefused(f"downgrade from {current} to {desired} is not supported")
    if want[0] != cur[0]:
        raise UpgradeRefused(f"a change of major version ({current} to {desired}) is not supported")
    skipped = [(cur[0], m) for m in range(cur[1] + 1, want[1])]
    if not skipped:
        return [desired]
    names = ", ".join(_fmt_minor(m) for m in skipped)
    if not step_minors:
        raise UpgradeRefused(
            f"{current} to {desired} skips minor version(s) {names}; upgrade one minor at a time "
            "(or enable stepping: kamaji_tcp_upgrade_step_minors)"
        )
    path = normalise_upgrade_path(upgrade_path)
    missing = [m for m in skipped if m not in path]
    if missing:
        raise UpgradeRefused(
            f"{current} to {desired} steps through {names}, but no version is known for "
            f"{', '.join(_fmt_minor(m) for m in missing)}: add it to kamaji_tcp_upgrade_path"
        )
    return [path[m] for m in skipped] + [desired]
