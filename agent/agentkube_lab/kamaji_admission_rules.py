"""The library rules Kamaji's TenantControlPlane webhooks call, transcribed for the lab (no upstream code is copied;
each rule cites the file it follows):

- apimachinery's name checks and their messages (IsDNS1035Label, IsDNS1123Subdomain, IsWildcardDNS1123Subdomain):
  kubernetes/kubernetes staging/src/k8s.io/apimachinery/pkg/util/validation/validation.go;
- field errors and their aggregation: .../util/validation/field/errors.go, .../util/errors/errors.go;
- kubeadm's ValidateCertSANs: kubernetes/kubernetes cmd/kubeadm/app/apis/kubeadm/validation/validation.go
  (Kamaji v1.36.3 of k8s.io/kubernetes, go.mod);
- Go's net.ParseIP / net.ParseCIDR / IPNet.Contains / IP.String (src/net/ip.go, src/net/netip) and
  k8s.io/utils/net ParseIPSloppy (Go 1.16's parser: IPv4 octets may carry leading zeros);
- github.com/blang/semver v3.5.1 (semver.go): Parse, Compare, String, with its error messages;
- Go's %q quoting, which every message above uses for a bad value.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

# ---------------------------------------------------------------- Go's %q (strconv.Quote)
_GO_ESCAPES = {"\a": r"\a", "\b": r"\b", "\f": r"\f", "\n": r"\n", "\r": r"\r", "\t": r"\t", "\v": r"\v",
               "\\": "\\\\", '"': '\\"'}


def go_quote(value: str) -> str:
    """`fmt.Sprintf("%q", value)`: printable runes as they are, others escaped as Go escapes them."""
    out = []
    for ch in value:
        code = ord(ch)
        if ch in _GO_ESCAPES:
            out.append(_GO_ESCAPES[ch])
        elif ch.isprintable() and not 0xD800 <= code <= 0xDFFF:
            out.append(ch)
        elif code < 0x80:
            out.append(f"\\x{code:02x}")
        elif 0xD800 <= code <= 0xDFFF:
            out.append("\\ufffd")  # Go strings hold UTF-8; a lone surrogate arrives as U+FFFD
        elif code < 0x10000:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    return '"' + "".join(out) + '"'


def _byte_len(value: str) -> int:
    """Go's len(string): UTF-8 bytes, not characters."""
    return len(value.encode("utf-8", "surrogatepass"))


# ---------------------------------------------------------------- apimachinery util/validation/validation.go
DNS1123_LABEL_FMT = "[a-z0-9]([-a-z0-9]*[a-z0-9])?"
DNS1123_SUBDOMAIN_FMT = DNS1123_LABEL_FMT + "(\\." + DNS1123_LABEL_FMT + ")*"
DNS1123_SUBDOMAIN_MAX = 253
DNS1035_LABEL_FMT = "[a-z]([-a-z0-9]*[a-z0-9])?"
DNS1035_LABEL_MAX = 63
WILDCARD_DNS1123_SUBDOMAIN_FMT = "\\*\\." + DNS1123_SUBDOMAIN_FMT
_DNS1123_SUBDOMAIN_MSG = ("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or "
                          "'.', and must start and end with an alphanumeric character")
_DNS1035_LABEL_MSG = ("a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an "
                      "alphabetic character, and end with an alphanumeric character")
_WILDCARD_MSG = ("a wildcard DNS-1123 subdomain must start with '*.', followed by a valid DNS subdomain, which must "
                 "consist of lower case alphanumeric characters, '-' or '.' and end with an alphanumeric character")
# Go's regexp `^...$` matches the whole text (no multiline): fullmatch, never Python's `$`.
_DNS1123_SUBDOMAIN_RE = re.compile(DNS1123_SUBDOMAIN_FMT)
_DNS1035_LABEL_RE = re.compile(DNS1035_LABEL_FMT)
_WILDCARD_RE = re.compile(WILDCARD_DNS1123_SUBDOMAIN_FMT)


def max_len_error(length: int) -> str:
    return f"must be no more than {length} characters"


def regex_error(msg: str, fmt: str, *examples: str) -> str:
    if not examples:
        return f"{msg} (regex used for validation is '{fmt}')"
    return msg + " (e.g. " + " or ".join(f"'{e}', " for e in examples) + f"regex used for validation is '{fmt}')"


def _ascii_fullmatch(pattern: re.Pattern[str], value: str) -> bool:
    return value.isascii() and pattern.fullmatch(value) is not None


def is_dns1123_subdomain(value: str) -> list[str]:
    errs = []
    if _byte_len(value) > DNS1123_SUBDOMAIN_MAX:
        errs.append(max_len_error(DNS1123_SUBDOMAIN_MAX))
    if not _ascii_fullmatch(_DNS1123_SUBDOMAIN_RE, value):
        errs.append(regex_error(_DNS1123_SUBDOMAIN_MSG, DNS1123_SUBDOMAIN_FMT, "example.com"))
    return errs


def is_wildcard_dns1123_subdomain(value: str) -> list[str]:
    errs = []
    if _byte_len(value) > DNS1123_SUBDOMAIN_MAX:
        errs.append(max_len_error(DNS1123_SUBDOMAIN_MAX))
    if not _ascii_fullmatch(_WILDCARD_RE, value):
        errs.append(regex_error(_WILDCARD_MSG, WILDCARD_DNS1123_SUBDOMAIN_FMT, "*.example.com"))
    return errs


def is_dns1035_label(value: str) -> list[str]:
    errs = []
    if _byte_len(value) > DNS1035_LABEL_MAX:
        errs.append(max_len_error(DNS1035_LABEL_MAX))
    if not _ascii_fullmatch(_DNS1035_LABEL_RE, value):
        errs.append(regex_error(_DNS1035_LABEL_MSG, DNS1035_LABEL_FMT, "my-name", "abc-123"))
    return errs


# ---------------------------------------------------------------- field errors (util/validation/field/errors.go)
def field_invalid(path: str, value: str, detail: str) -> str:
    """`field.Invalid(path, value, detail).Error()` for a string value."""
    return f"{path}: Invalid value: {go_quote(value)}: {detail}"


def aggregate(messages: list[str]) -> str:
    """`ErrorList.ToAggregate().Error()` (util/errors/errors.go): duplicates dropped, one message as it is,
    several as "[a, b]"."""
    seen: list[str] = []
    for m in messages:
        if m not in seen:
            seen.append(m)
    return seen[0] if len(seen) == 1 else "[" + ", ".join(seen) + "]"


# ---------------------------------------------------------------- Go net: ParseIP, ParseCIDR, Contains, String
_V4_IN_V6 = bytes(10) + b"\xff\xff"


def go_parse_ip(text: str) -> bytes | None:
    """net.ParseIP: the 16-byte form, or None. netip.ParseAddr rules: no leading zeros in IPv4 octets, no zone."""
    if not isinstance(text, str) or "%" in text or not text.isascii():
        return None
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    return _as16(addr)


def _as16(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bytes:
    return _V4_IN_V6 + addr.packed if addr.version == 4 else addr.packed


def parse_ip_sloppy(text: str) -> bytes | None:
    """k8s.io/utils/net ParseIPSloppy (Go 1.16's net.ParseIP): like go_parse_ip, but an IPv4 octet may carry
    leading zeros (read as decimal) and an IPv6 group leading zeros beyond four digits."""
    if not isinstance(text, str) or "%" in text or not text.isascii():
        return None
    if ":" not in text:
        v4 = _sloppy_v4(text)
        return _V4_IN_V6 + v4 if v4 is not None else None
    groups = text.split(":")
    if "." in groups[-1]:  # an embedded IPv4 address ends the text
        v4 = _sloppy_v4(groups[-1])
        if v4 is None:
            return None
        groups[-1] = str(ipaddress.IPv4Address(v4))
    groups = [g if "." in g or not g else g.lstrip("0") or "0" for g in groups]
    try:
        return ipaddress.IPv6Address(":".join(groups)).packed
    except ValueError:
        return None


def _sloppy_v4(text: str) -> bytes | None:
    parts = text.split(".")
    if len(parts) != 4 or not all(p and p.isdigit() and p.isascii() for p in parts):
        return None
    values = [int(p) for p in parts]
    return bytes(values) if all(v <= 0xFF for v in values) else None


def ip_to4(ip16: bytes) -> bytes | None:
    """IP.To4: the 4-byte form of an IPv4 or IPv4-mapped address."""
    if len(ip16) == 4:
        return ip16
    return ip16[12:] if ip16[:12] == _V4_IN_V6 else None


def ip_string(ip16: bytes) -> str:
    """IP.String: dotted quad for IPv4 (and IPv4-mapped), RFC 5952 text for IPv6."""
    v4 = ip_to4(ip16)
    return str(ipaddress.IPv4Address(v4)) if v4 is not None else str(ipaddress.IPv6Address(ip16))


class GoParseError(ValueError):
    """net.ParseError: "invalid CIDR address: <text>"."""


@dataclass(frozen=True)
class IPNet:
    ip: bytes    # 4 bytes for an IPv4 CIDR, 16 for IPv6
    mask: bytes  # 4 or 16 bytes

    def contains(self, ip16: bytes) -> bool:
        """IPNet.Contains (with networkNumberAndMask)."""
        nn = ip_to4(self.ip)
        if nn is None:
            nn = self.ip
            if len(nn) != 16:
                return False
        mask = self.mask
        if len(mask) == 4 and len(nn) != 4:
            return False
        if len(mask) == 16 and len(nn) == 4:
            mask = mask[12:]
        ip = ip_to4(ip16) or ip16
        if len(ip) != len(nn):
            return False
        return all(n & m == i & m for n, m, i in zip(nn, mask, ip, strict=True))


def go_parse_cidr(text: str) -> tuple[bytes, IPNet]:
    """net.ParseCIDR: (the address as written, 16 bytes; its network), or GoParseError."""
    addr_text, sep, bits_text = text.partition("/") if isinstance(text, str) else ("", "", "")
    ip16 = go_parse_ip(addr_text) if sep else None
    if ip16 is None:
        raise GoParseError(f"invalid CIDR address: {text}")
    bitlen = 32 if "." in addr_text and ":" not in addr_text else 128
    digits = len(bits_text) - len(bits_text.lstrip("0123456789"))
    if digits == 0 or digits != len(bits_text) or not bits_text.isascii() or int(bits_text) > bitlen:
        raise GoParseError(f"invalid CIDR address: {text}")
    ones = int(bits_text)
    mask_int = ((1 << ones) - 1) << (bitlen - ones)
    mask = mask_int.to_bytes(bitlen // 8, "big")
    ip = ip16[12:] if bitlen == 32 else ip16  # IP.Mask drops the v4-in-v6 prefix for a 4-byte mask
    return ip16, IPNet(bytes(a & b for a, b in zip(ip, mask, strict=True)), mask)


# ---------------------------------------------------------------- blang/semver v3.5.1
class SemVerError(ValueError):
    pass


_NUMBERS = "0123456789"
_ALPHANUM = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-" + _NUMBERS
_UINT64_MAX = (1 << 64) - 1


def _contains_only(s: str, charset: str) -> bool:
    return all(c in charset for c in s)


def _parse_uint(s: str) -> int:
    """strconv.ParseUint(s, 10, 64) for a string of digits (possibly empty)."""
    if not s:
        raise SemVerError(f'strconv.ParseUint: parsing "{s}": invalid syntax')
    n = int(s)
    if n > _UINT64_MAX:
        raise SemVerError(f"strconv.ParseUint: parsing {go_quote(s)}: value out of range")
    return n


@dataclass(frozen=True)
class SemVer:
    major: int
    minor: int
    patch: int
    pre: tuple[int | str, ...] = ()
    build: tuple[str, ...] = ()

    def __str__(self) -> str:
        out = f"{self.major}.{self.minor}.{self.patch}"
        if self.pre:
            out += "-" + ".".join(str(p) for p in self.pre)
        if self.build:
            out += "+" + ".".join(self.build)
        return out

    def with_patch(self, patch: int) -> SemVer:
        return SemVer(self.major, self.minor, patch, self.pre, self.build)

    def compare(self, other: SemVer) -> int:
        for a, b in ((self.major, other.major), (self.minor, other.minor), (self.patch, other.patch)):
            if a != b:
                return 1 if a > b else -1
        if not self.pre and not other.pre:
            return 0
        if not self.pre:
            return 1
        if not other.pre:
            return -1
        for a, b in zip(self.pre, other.pre, strict=False):
            c = _compare_pre(a, b)
            if c:
                return c
        if len(self.pre) == len(other.pre):
            return 0
        return -1 if len(self.pre) < len(other.pre) else 1


def _compare_pre(a: int | str, b: int | str) -> int:
    if isinstance(a, int) and not isinstance(b, int):
        return -1
    if not isinstance(a, int) and isinstance(b, int):
        return 1
    if a == b:
        return 0
    return 1 if a > b else -1  # type: ignore[operator]  # both ints or both strings (byte order for ASCII)


def _leading_zero(s: str) -> bool:
    return len(s) > 1 and s[0] == "0"


def semver_parse(text: str) -> SemVer:
    """semver.Parse (also semver.New and semver.Make), with its messages."""
    if not text:
        raise SemVerError("Version string empty")
    parts = text.split(".", 2)
    if len(parts) != 3:
        raise SemVerError("No Major.Minor.Patch elements found")
    nums = []
    for what, part in (("major", parts[0]), ("minor", parts[1])):
        if not _contains_only(part, _NUMBERS):
            raise SemVerError(f"Invalid character(s) found in {what} number {go_quote(part)}")
        if _leading_zero(part):
            raise SemVerError(f"{what.capitalize()} number must not contain leading zeroes {go_quote(part)}")
        nums.append(_parse_uint(part))
    patch_text, build, pre = parts[2], [], []
    if "+" in patch_text:
        patch_text, build_text = patch_text.split("+", 1)
        build = build_text.split(".")
    if "-" in patch_text:
        patch_text, pre_text = patch_text.split("-", 1)
        pre = pre_text.split(".")
    if not _contains_only(patch_text, _NUMBERS):
        raise SemVerError(f"Invalid character(s) found in patch number {go_quote(patch_text)}")
    if _leading_zero(patch_text):
        raise SemVerError(f"Patch number must not contain leading zeroes {go_quote(patch_text)}")
    patch = _parse_uint(patch_text)
    pre_values: list[int | str] = []
    for p in pre:
        if not p:
            raise SemVerError("Prerelease is empty")
        if _contains_only(p, _NUMBERS):
            if _leading_zero(p):
                raise SemVerError(f"Numeric PreRelease version must not contain leading zeroes {go_quote(p)}")
            pre_values.append(_parse_uint(p))
        elif _contains_only(p, _ALPHANUM):
            pre_values.append(p)
        else:
            raise SemVerError(f"Invalid character(s) found in prerelease {go_quote(p)}")
    for b in build:
        if not b:
            raise SemVerError("Build meta data is empty")
        if not _contains_only(b, _ALPHANUM):
            raise SemVerError(f"Invalid character(s) found in build meta data {go_quote(b)}")
    return SemVer(nums[0], nums[1], patch, tuple(pre_values), tuple(build))
