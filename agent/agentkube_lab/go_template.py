"""The subset of Go's text/template that the shipped install templates use, as Fulcrum Core runs it
(pkg/domain/agent_type_template.go executeTemplate: `template.New(name).Option("missingkey=error")`, then
Execute on the agent's configuration, a map[string]any decoded from JSON).

Implemented (semantics of Go's text/template, package documentation and exec.go):
- text outside actions, copied as is (text/template never escapes anything);
- `{{.key}}`: a key of the data map (Go: evalField on a map). A missing key renders `<no value>` under the default
  `missingkey` option and fails under `missingkey=error` (Core's choice) with `map has no entry for key "key"`;
  a present key holding nil (JSON null) renders `<no value>` in both (printValue of an invalid value);
- `{{printf "FORMAT" .key}}` with FORMAT made of text and the verbs `%v`, `%s`, `%q`, `%d` (fmt semantics; `%q` of a
  string is strconv.Quote, whose escapes are all valid in a YAML double-quoted scalar);
- trim markers `{{- ` and ` -}}` (they eat the white space on their side), comments `{{/* ... */}}`.

Values print as fmt's %v prints them: strings as they are, booleans `true`/`false`, numbers as float64 (every
JSON number is a float64 in a map[string]any: 8006 prints `8006`, 10000000 prints `1e+07`), maps and lists as
Go's `map[k:v]` and `[a b]`.

Anything else (`if`, `range`, `with`, pipelines, variables, other functions, nested fields) raises
TemplateUnsupported: the emulator refuses what it does not implement rather than render it wrongly.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from agentkube_lab.fulcrum_properties import go_type

NO_VALUE = "<no value>"


class TemplateError(Exception):
    """Go's parse or exec error."""


class TemplateUnsupported(TemplateError):
    """A construct Go accepts that this subset does not implement."""


@dataclass(frozen=True)
class _Field:
    key: str
    pos: int


@dataclass(frozen=True)
class _Printf:
    fmt: str
    args: tuple[_Field, ...]
    pos: int


_ACTION = re.compile(r"\{\{(-\s)?(.*?)(\s-)?\}\}", re.S)
_FIELD = re.compile(r"\.([A-Za-z_][A-Za-z0-9_]*)")
_STRING = r'"(?:[^"\\\n]|\\.)*"'
_PRINTF = re.compile(rf"printf\s+({_STRING})((?:\s+\.[A-Za-z_][A-Za-z0-9_]*)*)")
_KEYWORDS = ("if", "else", "end", "range", "with", "define", "template", "block", "break", "continue")


def _unquote_go(literal: str) -> str:
    """A Go interpreted string literal (the subset: \\\\, \\", \\n, \\t)."""
    body = literal[1:-1]
    out, i = [], 0
    simple = {"\\": "\\", '"': '"', "n": "\n", "t": "\t", "r": "\r"}
    while i < len(body):
        c = body[i]
        if c == "\\":
            nxt = body[i + 1]
            if nxt not in simple:
                raise TemplateUnsupported(f"escape \\{nxt} in a string literal is not implemented")
            out.append(simple[nxt])
            i += 2
            continue
        out.append(c)
        i += 1
    return "".join(out)


class Template:
    """A parsed template: `Template(name, text).execute(data, missingkey="error")`."""

    def __init__(self, name: str, text: str):
        self.name = name
        self.nodes: list[str | _Field | _Printf] = []
        pos = 0
        trim_next = False
        for m in _ACTION.finditer(text):
            literal = text[pos:m.start()]
            if trim_next:
                literal = literal.lstrip(" \t\r\n")
            if m.group(1):
                literal = literal.rstrip(" \t\r\n")
            if literal:
                self.nodes.append(literal)
            trim_next = bool(m.group(3))
            pos = m.end()
            self._action(m.group(2).strip(), text.count("\n", 0, m.start()) + 1)
        rest = text[pos:]
        if "{{" in rest:
            line = text.count("\n", 0, pos + rest.index("{{")) + 1
            raise TemplateError(f"template: {name}:{line}: unclosed action")
        if trim_next:
            rest = rest.lstrip(" \t\r\n")
        if rest:
            self.nodes.append(rest)

    def _action(self, body: str, line: int) -> None:
        if body.startswith("/*"):
            if not body.endswith("*/"):
                raise TemplateError(f"template: {self.name}:{line}: unclosed comment")
            return
        if m := _FIELD.fullmatch(body):
            self.nodes.append(_Field(m.group(1), line))
            return
        if m := _PRINTF.fullmatch(body):
            args = tuple(_Field(k, line) for k in re.findall(r"\.([A-Za-z_][A-Za-z0-9_]*)", m.group(2)))
            self.nodes.append(_Printf(_unquote_go(m.group(1)), args, line))
            return
        word = body.split(None, 1)[0] if body.split() else ""
        if not body:
            raise TemplateError(f"template: {self.name}:{line}: missing value for command")
        kind = word if word in _KEYWORDS else "this action"
        raise TemplateUnsupported(f"template: {self.name}:{line}: {kind} ({{{{{body}}}}}) is not implemented by the "
                                  "emulator's text/template subset")

    def keys(self) -> set[str]:
        """The data keys the template reads."""
        out: set[str] = set()
        for node in self.nodes:
            if isinstance(node, _Field):
                out.add(node.key)
            elif isinstance(node, _Printf):
                out.update(a.key for a in node.args)
        return out

    def execute(self, data: dict[str, Any], missingkey: str = "default") -> str:
        if missingkey not in ("default", "invalid", "zero", "error"):
            raise TemplateError(f'unrecognized option "missingkey={missingkey}"')
        if missingkey == "zero":
            raise TemplateUnsupported("missingkey=zero is not implemented")
        out: list[str] = []
        for node in self.nodes:
            if isinstance(node, str):
                out.append(node)
            elif isinstance(node, _Field):
                out.append(go_sprint(self._lookup(node, data, missingkey)))
            else:
                out.append(_printf(node.fmt, [self._lookup(a, data, missingkey) for a in node.args]))
        return "".join(out)

    def _lookup(self, node: _Field, data: dict[str, Any], missingkey: str) -> Any:
        if node.key in data:
            return data[node.key]
        if missingkey == "error":
            raise TemplateError(f'template: {self.name}:{node.pos}: executing "{self.name}" at <.{node.key}>: '
                                f'map has no entry for key "{node.key}"')
        return _Missing


class _MissingType:
    pass


_Missing = _MissingType()


def go_float(value: float) -> str:
    """strconv.FormatFloat(v, 'g', -1, 64), which fmt's %v uses for a float64."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == 0:
        return "-0" if math.copysign(1, value) < 0 else "0"
    digits_repr = repr(float(value))  # the shortest digits that round-trip, as Go's shortest formatting
    mantissa, _, exp_text = digits_repr.lower().partition("e")
    sign = "-" if mantissa.startswith("-") else ""
    mantissa = mantissa.lstrip("-")
    int_part, _, frac = mantissa.partition(".")
    frac = frac.rstrip("0") if frac != "0" else ""
    digits = (int_part + frac).lstrip("0")
    exp = int(exp_text or 0) + len(int_part) - 1
    if int_part == "0":  # 0.00123 -> leading zeros of the fraction
        lead = len(frac) - len(frac.lstrip("0"))
        exp = int(exp_text or 0) - lead - 1
    digits = digits.rstrip("0") or "0"
    # strconv's %g with the shortest precision decides with precision 6: %e when exp < -4 or exp >= 6
    eprec = 6
    if exp < -4 or exp >= eprec:
        mant = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        return f"{sign}{mant}e{'-' if exp < 0 else '+'}{abs(exp):02d}"
    if exp >= 0:
        whole = digits[: exp + 1].ljust(exp + 1, "0")
        rest = digits[exp + 1:]
        return sign + whole + ("." + rest if rest else "")
    return sign + "0." + "0" * (-exp - 1) + digits


def go_sprint(value: Any) -> str:
    """fmt.Sprint of a value decoded from JSON into `any`, as text/template's printValue prints it."""
    if value is _Missing or value is None:
        return NO_VALUE
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return go_float(float(value))
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        return "map[" + " ".join(f"{k}:{_inner(value[k])}" for k in sorted(value)) + "]"
    if isinstance(value, list):
        return "[" + " ".join(_inner(v) for v in value) + "]"
    raise TemplateUnsupported(f"printing a {type(value).__name__} is not implemented")


def _inner(value: Any) -> str:
    return "<nil>" if value is None else go_sprint(value)


def go_quote(text: str) -> str:
    """strconv.Quote: Go escapes, printable runes kept."""
    out = ['"']
    for ch in text:
        code = ord(ch)
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif ch in "\a\b\f\n\r\t\v":
            out.append({"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t",
                        "\v": "\\v"}[ch])
        elif ch.isprintable() or ch == " ":
            out.append(ch)
        elif code < 0x80:
            out.append(f"\\x{code:02x}")
        elif code < 0x10000:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    out.append('"')
    return "".join(out)


def _printf(fmt: str, args: list[Any]) -> str:
    """fmt.Sprintf with the verbs %v %s %q %d and %%; Go's error strings for a bad verb or argument."""
    out: list[str] = []
    i, n = 0, 0
    while i < len(fmt):
        c = fmt[i]
        if c != "%":
            out.append(c)
            i += 1
            continue
        if i + 1 >= len(fmt):
            out.append("%!(NOVERB)")
            break
        verb = fmt[i + 1]
        i += 2
        if verb == "%":
            out.append("%")
            continue
        if verb not in "vsqd":
            raise TemplateUnsupported(f"printf verb %{verb} is not implemented")
        if n >= len(args):
            out.append(f"%!{verb}(MISSING)")
            continue
        value = args[n]
        n += 1
        if value is _Missing or value is None:
            out.append(f"%!{verb}(<nil>)" if verb != "v" else "<nil>")
        elif verb == "v" or (verb == "s" and isinstance(value, str)):
            out.append(go_sprint(value))
        elif verb == "q" and isinstance(value, str):
            out.append(go_quote(value))
        elif verb == "d" and isinstance(value, (int, float)) and not isinstance(value, bool):
            out.append(f"%!d(float64={go_float(float(value))})")  # JSON numbers are float64: %d refuses them
        else:
            out.append(f"%!{verb}({go_type(value)}={go_sprint(value)})")
    if n < len(args):
        extra = ", ".join(f"{go_type(a)}={go_sprint(a)}" for a in args[n:])
        out.append(f"%!(EXTRA {extra})")
    return "".join(out)


def render(name: str, text: str, data: dict[str, Any], missingkey: str = "default") -> str:
    """Parse and execute in one step, as Core's executeTemplate does."""
    return Template(name, text).execute(data, missingkey=missingkey)
