"""SSH host public keys as a guest's .pub file holds them (`<type> <base64> [comment]`), checked before pinning."""

from __future__ import annotations

import base64
import binascii
import struct


class HostKeyError(ValueError):
    pass


def parse_public_key(content: str, key_type: str) -> str:
    """`<type> <base64>` of the one key in `content` (a .pub file), or HostKeyError. The base64 blob must decode to
    an SSH key whose own type string (RFC 4253 section 6.6: a length-prefixed string first) is `key_type`: a file
    with two lines, junk or another type is refused, so nothing but one key line ever reaches known_hosts."""
    lines = [line for line in str(content).splitlines() if line.strip()]
    if len(lines) != 1:
        raise HostKeyError(f"expected one {key_type} public key line, found {len(lines)} lines")
    fields = lines[0].split()
    if len(fields) < 2 or fields[0] != key_type:
        raise HostKeyError(f"not a {key_type} public key (starts with {fields[0][:20]!r})")
    try:
        blob = base64.b64decode(fields[1], validate=True)
        (length,) = struct.unpack(">I", blob[:4])
        inner = blob[4:4 + length].decode("ascii")
    except (binascii.Error, struct.error, UnicodeDecodeError):
        raise HostKeyError(f"the {key_type} public key is not valid base64 key data") from None
    if inner != key_type:
        raise HostKeyError(f"the key data is of type {inner[:20]!r}, not {key_type}")
    return f"{fields[0]} {fields[1]}"
