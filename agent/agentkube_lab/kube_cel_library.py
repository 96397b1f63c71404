"""Kubernetes' CEL library functions the lab's CEL (kube_cel) offers, transcribed from
kubernetes/kubernetes staging/src/k8s.io/apiserver/pkg/cel/library/ (the file is named beside each function):
- ip.go: isIP(string), ip(string), ip.isCanonical(string), <IP>.family()/isUnspecified()/isLoopback()/
  isLinkLocalMulticast()/isLinkLocalUnicast()/isGlobalUnicast();
- cidr.go: isCIDR(string), cidr(string), <CIDR>.containsIP()/containsCIDR()/ip()/prefixLength()/masked();
- format.go: format.named(string) -> ?Format, format.<name>() -> Format, <Format>.validate(string) -> ?list<string>,
  for the Kubernetes name formats (dns1123Label, dns1123Subdomain, dns1035Label and their *Prefix forms); the
  other formats (qualifiedName, labelValue, uri, uuid, byte, date, datetime) are not emulated: format.<name>() for
  them does not compile here, and format.named() of them is an evaluation error, never a silent pass;
- the optional type's hasValue()/value()/orValue() (cel-go ext/optional), as far as format's results need them.
Not offered (a rule using them does not compile in the lab): lists.go, regex.go, urls.go, quantity.go, the strings
extension, string(<IP>)/string(<CIDR>)."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any

import celpy.celtypes as ct
from celpy.evaluation import CELEvalError


@dataclass(frozen=True)
class Namespace:
    """`format` and `ip` as the qualifier of a qualified function name (format.named, ip.isCanonical)."""

    name: str


@dataclass(frozen=True)
class IP:
    addr: ipaddress.IPv4Address | ipaddress.IPv6Address

    def __str__(self) -> str:
        return str(self.addr)


@dataclass(frozen=True)
class CIDR:
    addr: ipaddress.IPv4Address | ipaddress.IPv6Address
    bits: int

    def network(self) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        return ipaddress.ip_network(f"{self.addr}/{self.bits}", strict=False)

    def __str__(self) -> str:
        return f"{self.addr}/{self.bits}"


@dataclass(frozen=True)
class Optional:
    """cel-go's optional value (optional.of / optional.none)."""

    value: Any = None
    present: bool = False


def _string(arg: Any) -> str:
    if not isinstance(arg, ct.StringType):
        raise TypeError(f"no such overload for {type(arg).__name__}")
    return str(arg)


def _parse_addr(raw: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """Go's netip.ParseAddr, then ip.go parseIPAddr: no zone, no IPv4-mapped IPv6. Python's ipaddress already
    refuses leading zeros in IPv4 octets, as netip does."""
    if "%" in raw:  # netip accepts a zone; ip.go refuses it ("with zone value is not allowed")
        raise ValueError(f'IP address "{raw}" with zone value is not allowed')
    try:
        addr = ipaddress.ip_address(raw)
    except ValueError as e:
        raise ValueError(f'IP Address "{raw}" parse error during conversion from string: {e}') from e
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        raise ValueError(f'IPv4-mapped IPv6 address "{raw}" is not allowed')
    return addr


def _parse_cidr(raw: str) -> CIDR:
    """Go's netip.ParsePrefix (net/netip/netip.go: last '/', no zone, bits without sign or leading zero, in range;
    host bits may be set), then cidr.go parseCIDR: no IPv4-mapped IPv6."""
    head, slash, bits_text = raw.rpartition("/")
    if not slash:
        raise ValueError(f'netip.ParsePrefix("{raw}"): no \'/\'')
    if "%" in head:
        raise ValueError(f'netip.ParsePrefix("{raw}"): IPv6 zones cannot be present in a prefix')
    try:
        addr = ipaddress.ip_address(head)
    except ValueError as e:
        raise ValueError(f'netip.ParsePrefix("{raw}"): {e}') from e
    if not re.fullmatch(r"0|[1-9][0-9]*", bits_text):
        raise ValueError(f'netip.ParsePrefix("{raw}"): bad bits after slash: "{bits_text}"')
    bits = int(bits_text)
    if bits > addr.max_prefixlen:
        raise ValueError(f'netip.ParsePrefix("{raw}"): prefix length out of range')
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        raise ValueError(f'IPv4-mapped IPv6 address "{raw}" is not allowed')
    return CIDR(addr, bits)


# --- ip.go ---------------------------------------------------------------------------------------------------

def is_ip(arg: Any) -> ct.BoolType:  # ip.go isIP
    try:
        _parse_addr(_string(arg))
    except ValueError:
        return ct.BoolType(False)
    return ct.BoolType(True)


def _ip(arg: Any) -> Any:  # ip.go stringToIP; cidr.go cidrToIP (the member ip() of a CIDR)
    if isinstance(arg, CIDR):
        return IP(arg.addr)
    try:
        return IP(_parse_addr(_string(arg)))
    except ValueError as e:
        return CELEvalError(str(e), ValueError, None)


def _is_canonical(namespace: Any, arg: Any) -> Any:  # ip.go ipIsCanonical
    if namespace != Namespace("ip"):
        raise TypeError("isCanonical is ip.isCanonical(<string>)")
    raw = _string(arg)
    try:
        return ct.BoolType(str(_parse_addr(raw)) == raw)
    except ValueError as e:
        return CELEvalError(str(e), ValueError, None)


def _ip_method(test: Any) -> Any:
    def method(arg: Any) -> ct.BoolType:
        if not isinstance(arg, IP):
            raise TypeError(f"no such overload for {type(arg).__name__}")
        return ct.BoolType(test(arg.addr))
    return method


def _family(arg: Any) -> ct.IntType:  # ip.go family
    if not isinstance(arg, IP):
        raise TypeError(f"no such overload for {type(arg).__name__}")
    return ct.IntType(arg.addr.version)


def _link_local_multicast(addr: Any) -> bool:  # Go netip: 224.0.0.0/24, ff02::/16
    net = "224.0.0.0/24" if addr.version == 4 else "ff02::/16"
    return addr in ipaddress.ip_network(net)


def _global_unicast(addr: Any) -> bool:
    """Go netip Addr.IsGlobalUnicast: not unspecified, not the IPv4 broadcast, not loopback, multicast or
    link-local unicast (private ranges count as global unicast, unlike Python's is_global)."""
    if addr.version == 4 and addr == ipaddress.IPv4Address("255.255.255.255"):
        return False
    return not (addr.is_unspecified or addr.is_loopback or addr.is_multicast or addr.is_link_local)


# --- cidr.go -------------------------------------------------------------------------------------------------

def is_cidr(arg: Any) -> ct.BoolType:  # cidr.go isCIDR
    try:
        _parse_cidr(_string(arg))
    except ValueError:
        return ct.BoolType(False)
    return ct.BoolType(True)


def _cidr(arg: Any) -> Any:  # cidr.go stringToCIDR
    try:
        return _parse_cidr(_string(arg))
    except ValueError as e:
        return CELEvalError(f"network address parse error during conversion from string: {e}", ValueError, None)


def _contains_ip(cidr: Any, other: Any) -> Any:  # cidr.go cidrContainsIP / cidrContainsIPString
    if not isinstance(cidr, CIDR):
        raise TypeError("containsIP needs a CIDR")
    ip = other if isinstance(other, IP) else _ip(other)
    if isinstance(ip, CELEvalError):
        return ip
    return ct.BoolType(ip.addr.version == cidr.addr.version and ip.addr in cidr.network())


def _contains_cidr(cidr: Any, other: Any) -> Any:  # cidr.go cidrContainsCIDR / cidrContainsCIDRString
    if not isinstance(cidr, CIDR):
        raise TypeError("containsCIDR needs a CIDR")
    inner = other if isinstance(other, CIDR) else _cidr(other)
    if isinstance(inner, CELEvalError):
        return inner
    if inner.addr.version != cidr.addr.version:
        return ct.BoolType(False)
    same_prefix = ipaddress.ip_network(f"{inner.addr}/{cidr.bits}", strict=False) == cidr.network()
    return ct.BoolType(same_prefix and cidr.bits <= inner.bits)


def _prefix_length(cidr: Any) -> ct.IntType:  # cidr.go prefixLength
    if not isinstance(cidr, CIDR):
        raise TypeError("prefixLength needs a CIDR")
    return ct.IntType(cidr.bits)


def _masked(cidr: Any) -> CIDR:  # cidr.go masked
    if not isinstance(cidr, CIDR):
        raise TypeError("masked needs a CIDR")
    return CIDR(cidr.network().network_address, cidr.bits)


# --- format.go (validators from k8s.io/apimachinery/pkg/util/validation/validation.go and
#     k8s.io/apimachinery/pkg/api/validation/generic.go) ----------------------------------------------------------

_DNS1123_LABEL = "[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS1123_SUBDOMAIN = _DNS1123_LABEL + "(\\." + _DNS1123_LABEL + ")*"
_DNS1035_LABEL = "[a-z]([-a-z0-9]*[a-z0-9])?"


def _regex_error(msg: str, fmt: str, *examples: str) -> str:  # validation.go RegexError
    if not examples:
        return f"{msg} (regex used for validation is '{fmt}')"
    shown = " or ".join(f"'{e}', " for e in examples)
    return f"{msg} (e.g. {shown}regex used for validation is '{fmt}')"


def _checker(fmt: str, max_len: int, msg: str, *examples: str) -> Any:
    pattern = re.compile(fmt)

    def check(value: str) -> list[str]:
        errs = []
        if len(value.encode()) > max_len:
            errs.append(f"must be no more than {max_len} characters")  # validation.go MaxLenError
        if not pattern.fullmatch(value):
            errs.append(_regex_error(msg, fmt, *examples))
        return errs
    return check


_IS_DNS1123_LABEL = _checker(_DNS1123_LABEL, 63, "a lowercase RFC 1123 label must consist of lower case alphanumeric "
                             "characters or '-', and must start and end with an alphanumeric character",
                             "my-name", "123-abc")
_IS_DNS1123_SUBDOMAIN = _checker(_DNS1123_SUBDOMAIN, 253, "a lowercase RFC 1123 subdomain must consist of lower case "
                                 "alphanumeric characters, '-' or '.', and must start and end with an alphanumeric "
                                 "character", "example.com")
_IS_DNS1035_LABEL = _checker(_DNS1035_LABEL, 63, "a DNS-1035 label must consist of lower case alphanumeric "
                             "characters or '-', start with an alphabetic character, and end with an alphanumeric "
                             "character", "my-name", "abc-123")


def _mask_trailing_dash(name: str) -> str:  # api/validation/generic.go maskTrailingDash
    return name[:-2] + "a" if len(name) > 1 and name.endswith("-") else name


def _prefixed(check: Any) -> Any:  # generic.go NameIsDNSLabel(name, prefix=true) & co.
    return lambda value: check(_mask_trailing_dash(value))


@dataclass(frozen=True)
class Format:
    name: str
    validate: Any


FORMATS = {  # format.go ConstantFormats (the emulated ones)
    "dns1123Label": Format("DNS1123Label", _IS_DNS1123_LABEL),
    "dns1123Subdomain": Format("DNS1123Subdomain", _IS_DNS1123_SUBDOMAIN),
    "dns1035Label": Format("DNS1035Label", _IS_DNS1035_LABEL),
    "dns1123LabelPrefix": Format("DNS1123LabelPrefix", _prefixed(_IS_DNS1123_LABEL)),
    "dns1123SubdomainPrefix": Format("DNS1123SubdomainPrefix", _prefixed(_IS_DNS1123_SUBDOMAIN)),
    "dns1035LabelPrefix": Format("DNS1035LabelPrefix", _prefixed(_IS_DNS1035_LABEL)),
}
_NOT_EMULATED = {"qualifiedName", "labelValue", "uri", "uuid", "byte", "date", "datetime"}


def _named(namespace: Any, name: Any) -> Any:  # format.go "format.named"
    if namespace != Namespace("format"):
        raise TypeError("named is format.named(<string>)")
    key = _string(name)
    if key in _NOT_EMULATED:
        return CELEvalError(f"format {key!r} is not emulated by the lab", NotImplementedError, None)
    return Optional(FORMATS[key], True) if key in FORMATS else Optional()


def _constant(key: str) -> Any:  # format.go format.<name>()
    def get(namespace: Any) -> Format:
        if namespace != Namespace("format"):
            raise TypeError(f"{key} is format.{key}()")
        return FORMATS[key]
    return get


def _validate(fmt: Any, value: Any) -> Optional:  # format.go formatValidate
    if not isinstance(fmt, Format):
        raise TypeError("validate needs a Format")
    errs = fmt.validate(_string(value))
    return Optional(ct.ListType([ct.StringType(e) for e in errs]), True) if errs else Optional()


# --- optional values (cel-go ext/optional, as format's results need) ------------------------------------------

def _has_value(opt: Any) -> ct.BoolType:
    if not isinstance(opt, Optional):
        raise TypeError("hasValue needs an optional")
    return ct.BoolType(opt.present)


def _value(opt: Any) -> Any:
    if not isinstance(opt, Optional):
        raise TypeError("value needs an optional")
    return opt.value if opt.present else CELEvalError("optional.none() dereference", ValueError, None)


def _or_value(opt: Any, default: Any) -> Any:
    if not isinstance(opt, Optional):
        raise TypeError("orValue needs an optional")
    return opt.value if opt.present else default


GLOBAL_FUNCTIONS = ("isIP", "ip", "isCIDR", "cidr")
MEMBER_FUNCTIONS = ("family", "isUnspecified", "isLoopback", "isLinkLocalMulticast", "isLinkLocalUnicast",
                    "isGlobalUnicast", "containsIP", "containsCIDR", "ip", "prefixLength", "masked", "validate",
                    "hasValue", "value", "orValue")
QUALIFIED_FUNCTIONS = ("ip.isCanonical", "format.named", *(f"format.{k}" for k in FORMATS))
NAMESPACES = {"format": Namespace("format"), "ip": Namespace("ip")}

CELPY_FUNCTIONS: dict[str, Any] = {
    "isIP": is_ip, "ip": _ip, "isCanonical": _is_canonical, "family": _family,
    "isUnspecified": _ip_method(lambda a: a.is_unspecified),
    "isLoopback": _ip_method(lambda a: a.is_loopback),
    "isLinkLocalMulticast": _ip_method(_link_local_multicast),
    "isLinkLocalUnicast": _ip_method(lambda a: a.is_link_local),
    "isGlobalUnicast": _ip_method(_global_unicast),
    "isCIDR": is_cidr, "cidr": _cidr, "containsIP": _contains_ip, "containsCIDR": _contains_cidr,
    "prefixLength": _prefix_length, "masked": _masked,
    "named": _named, "validate": _validate, **{k: _constant(k) for k in FORMATS},
    "hasValue": _has_value, "value": _value, "orValue": _or_value,
}
