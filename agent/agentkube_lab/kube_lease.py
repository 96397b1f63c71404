"""coordination.k8s.io/v1 Lease: what kube-apiserver does to a Lease's spec on every write, between decoding and
storage. The fields and their Go types are those of k8s.io/api/coordination/v1/types.go (LeaseSpec:
holderIdentity *string, leaseDurationSeconds *int32, acquireTime/renewTime *metav1.MicroTime,
leaseTransitions *int32, strategy *CoordinatedLeaseStrategy, preferredHolder *string). Optimistic concurrency
(409 Conflict on a stale resourceVersion, 409 AlreadyExists, PUT without resourceVersion, create on PUT) is the
store's generic rule (kube_store.ObjectStore.replace, with the Lease strategy's flags in kube_resources.LEASE)."""

from __future__ import annotations

import datetime as dt
import re

from agentkube_lab.kube_resources import ResourceType
from agentkube_lab.kube_store import ApiError, bad_request, invalid

# staging/src/k8s.io/apimachinery/pkg/apis/meta/v1/micro_time.go: RFC3339Micro = "2006-01-02T15:04:05.000000Z07:00",
# parsed with Go's time.Parse, whose ".000000" takes exactly six fractional digits; written back in UTC
_MICRO_TIME = re.compile(r"\A(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})\.(\d{6})(Z|[+-]\d{2}:\d{2})\Z")
_INT32 = (-(2**31), 2**31 - 1)
# pkg/apis/coordination/validation/validation.go: validLeaseStrategies (coordination.OldestEmulationVersion)
_LEASE_STRATEGIES = ("OldestEmulationVersion",)
# staging/src/k8s.io/apimachinery/pkg/util/validation/validation.go: IsQualifiedName ([prefix/]name)
_QUALIFIED_NAME = re.compile(r"\A[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?\Z")
_DNS1123_SUBDOMAIN = re.compile(r"\A[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\Z")


def _cannot_handle(detail: str) -> ApiError:
    # the decoder's error, as the apiserver wraps it (staging/src/k8s.io/apiserver/pkg/endpoints/handlers/rest.go
    # transformDecodeError): 400 BadRequest
    return bad_request(f'Lease in version "v1" cannot be handled as a Lease: {detail}')


def _parse_micro_time(field: str, value: object) -> str:
    if not isinstance(value, str):
        raise _cannot_handle(f"json: cannot unmarshal {type(value).__name__} into Go struct field "
                             f"LeaseSpec.spec.{field} of type string")
    match = _MICRO_TIME.match(value)
    try:
        if match is None:
            raise ValueError(value)
        y, mo, d, h, mi, s, us, zone = match.groups()
        tz = dt.UTC if zone == "Z" else dt.timezone(
            (1 if zone[0] == "+" else -1) * dt.timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6])))
        parsed = dt.datetime(int(y), int(mo), int(d), int(h), int(mi), int(s), int(us), tzinfo=tz)
    except ValueError as e:
        raise _cannot_handle(f'parsing time "{value}" as "2006-01-02T15:04:05.000000Z07:00": cannot parse '
                             f'"{value}"') from e
    return parsed.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _check_decode(spec: dict) -> None:
    """The JSON decoding of LeaseSpec: a null is an unset pointer (omitted on output), int32 fields take JSON
    integers in range, string fields strings, MicroTimes RFC3339Micro (stored normalised to UTC)."""
    for key in [k for k, v in spec.items() if v is None]:
        del spec[key]
    for field in ("leaseDurationSeconds", "leaseTransitions"):
        if field in spec:
            value = spec[field]
            if isinstance(value, bool) or not isinstance(value, int) or not _INT32[0] <= value <= _INT32[1]:
                kind = "number" if isinstance(value, int | float) and not isinstance(value, bool) else \
                    type(value).__name__
                raise _cannot_handle(f"json: cannot unmarshal {kind} into Go struct field "
                                     f"LeaseSpec.spec.{field} of type int32")
    for field in ("holderIdentity", "strategy", "preferredHolder"):
        if field in spec and not isinstance(spec[field], str):
            raise _cannot_handle(f"json: cannot unmarshal {type(spec[field]).__name__} into Go struct field "
                                 f"LeaseSpec.spec.{field} of type string")
    for field in ("acquireTime", "renewTime"):
        if field in spec:
            spec[field] = _parse_micro_time(field, spec[field])


def _validate_spec(spec: dict) -> list[dict]:
    """pkg/apis/coordination/validation/validation.go, ValidateLeaseSpec (for create and update alike)."""
    causes: list[dict] = []
    duration = spec.get("leaseDurationSeconds")
    if duration is not None and duration <= 0:
        causes.append({"reason": "FieldValueInvalid", "field": "spec.leaseDurationSeconds",
                       "message": f"Invalid value: {duration}: must be greater than 0"})
    transitions = spec.get("leaseTransitions")
    if transitions is not None and transitions < 0:
        causes.append({"reason": "FieldValueInvalid", "field": "spec.leaseTransitions",
                       "message": f"Invalid value: {transitions}: must be greater than or equal to 0"})
    strategy = spec.get("strategy")
    if strategy is not None:
        # ValidateCoordinatedLeaseStrategy is called with fldPath spec.strategy and adds .strategy itself
        path = "spec.strategy.strategy"
        if "/" not in strategy:
            if strategy not in _LEASE_STRATEGIES:
                causes.append({"reason": "FieldValueNotSupported", "field": path,
                               "message": f'Unsupported value: "{strategy}": supported values: '
                                          + ", ".join(f'"{s}"' for s in _LEASE_STRATEGIES)})
        else:
            prefix, _, name = strategy.partition("/")
            if "/" in name or not _QUALIFIED_NAME.match(name) or not prefix or len(prefix) > 253 \
                    or not _DNS1123_SUBDOMAIN.match(prefix):
                causes.append({"reason": "FieldValueInvalid", "field": path,
                               "message": f'Invalid value: "{strategy}": a qualified name must consist of '
                                          "alphanumeric characters, '-', '_' or '.', and must start and end with "
                                          "an alphanumeric character, with an optional DNS subdomain prefix and "
                                          "'/'"})
    if spec.get("preferredHolder") and not strategy:
        causes.append({"reason": "FieldValueForbidden", "field": "spec.preferredHolder",
                       "message": "Forbidden: may only be specified if `strategy` is defined"})
    # holderIdentity has no length or format rule upstream: any string is stored
    return causes


def decode_and_validate_lease(rtype: ResourceType, obj: dict) -> None:
    """Mutates `obj` (normalised MicroTimes, nulls dropped); raises 400 for what the decoder refuses and
    422 Invalid (pkg/registry/coordination/lease/strategy.go Validate/ValidateUpdate -> ValidateLease)."""
    spec = obj.get("spec")
    if spec is None:
        obj.pop("spec", None)
        return
    if not isinstance(spec, dict):
        raise _cannot_handle(f"json: cannot unmarshal {type(spec).__name__} into Go struct field Lease.spec of "
                             "type v1.LeaseSpec")
    _check_decode(spec)
    causes = _validate_spec(spec)
    if causes:
        raise invalid(rtype, (obj.get("metadata") or {}).get("name", ""), causes)
