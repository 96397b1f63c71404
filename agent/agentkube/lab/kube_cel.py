"""A small subset of CEL, enough for the x-kubernetes-validations rules in Kamaji's CRDs: literals, field
selection, has(), size(), isIP(), isCIDR(), .all()/.exists() macros, comparison, !, &&, ||, ?:.
Anything outside it raises CelError (the caller then skips the rule rather than guess)."""

from __future__ import annotations

import ipaddress
import re
from typing import Any

_TOKEN = re.compile(r"""\s*(?:
    (?P<num>\d+)
  | (?P<str>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")
  | (?P<op>==|!=|<=|>=|&&|\|\||[!<>?:().,\[\]])
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
)""", re.VERBOSE)


class CelError(ValueError):
    """An expression outside the supported subset, or an evaluation error (e.g. a missing field)."""


def _tokens(text: str) -> list[tuple[str, str]]:
    pos, out = 0, []
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise CelError(f"unsupported syntax at {text[pos:]!r}")
        kind = m.lastgroup or ""
        out.append((kind, m.group(kind)))
        pos = m.end()
    return out


class _Parser:
    """Parses into nested tuples: ("lit", v), ("id", n), ("sel", e, f), ("has", e, f), ("call", f, args),
    ("method", e, f, args), ("macro", e, f, var, body), ("idx", e, i), ("not", e), ("bin", op, a, b),
    ("cond", c, a, b)."""

    def __init__(self, text: str):
        self.toks, self.i = _tokens(text), 0

    def peek(self) -> tuple[str, str] | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self, value: str | None = None) -> tuple[str, str]:
        tok = self.peek()
        if tok is None or (value is not None and tok[1] != value):
            raise CelError(f"expected {value!r}, got {tok!r}")
        self.i += 1
        return tok

    def parse(self) -> tuple:
        expr = self.expr()
        if self.peek() is not None:
            raise CelError(f"unexpected {self.peek()!r}")
        return expr

    def expr(self) -> tuple:
        cond = self.binary(0)
        if self.peek() == ("op", "?"):
            self.take("?")
            a = self.expr()
            self.take(":")
            return ("cond", cond, a, self.expr())
        return cond

    _LEVELS = (("||",), ("&&",), ("==", "!=", "<", ">", "<=", ">="))

    def binary(self, level: int) -> tuple:
        if level == len(self._LEVELS):
            return self.unary()
        left = self.binary(level + 1)
        while (tok := self.peek()) and tok[0] == "op" and tok[1] in self._LEVELS[level]:
            self.take()
            left = ("bin", tok[1], left, self.binary(level + 1))
        return left

    def unary(self) -> tuple:
        if self.peek() == ("op", "!"):
            self.take()
            return ("not", self.unary())
        return self.postfix(self.primary())

    def args(self) -> list[tuple]:
        self.take("(")
        out = []
        while self.peek() != ("op", ")"):
            out.append(self.expr())
            if self.peek() == ("op", ","):
                self.take(",")
        self.take(")")
        return out

    def postfix(self, expr: tuple) -> tuple:
        while (tok := self.peek()) and tok[1] in (".", "["):
            self.take()
            if tok[1] == "[":
                expr = ("idx", expr, self.expr())
                self.take("]")
                continue
            name = self.take()[1]
            if self.peek() == ("op", "("):
                if name in ("all", "exists"):
                    self.take("(")
                    var = self.take()[1]
                    self.take(",")
                    body = self.expr()
                    self.take(")")
                    expr = ("macro", expr, name, var, body)
                else:
                    expr = ("method", expr, name, self.args())
            else:
                expr = ("sel", expr, name)
        return expr

    def primary(self) -> tuple:
        kind, value = self.take()
        if kind == "num":
            return ("lit", int(value))
        if kind == "str":
            return ("lit", value[1:-1].encode().decode("unicode_escape"))
        if value == "(":
            inner = self.expr()
            self.take(")")
            return inner
        if kind == "ident":
            if value in ("true", "false", "null"):
                return ("lit", {"true": True, "false": False, "null": None}[value])
            if self.peek() == ("op", "("):
                if value == "has":
                    self.take("(")
                    target = self.postfix(self.primary())
                    self.take(")")
                    if target[0] != "sel":
                        raise CelError("has() needs a field selection")
                    return ("has", target[1], target[2])
                return ("call", value, self.args())
            return ("id", value)
        raise CelError(f"unexpected token {value!r}")


def _is_ip(value: Any) -> bool:
    try:
        ipaddress.ip_address(value)
        return True
    except ValueError:
        return False


def _is_cidr(value: Any) -> bool:
    try:
        return "/" in value and bool(ipaddress.ip_network(value, strict=False))
    except ValueError:
        return False


_FUNCS = {"size": len, "isIP": _is_ip, "isCIDR": _is_cidr}


def _eval(node: tuple, env: dict[str, Any]) -> Any:
    kind = node[0]
    if kind == "lit":
        return node[1]
    if kind == "id":
        if node[1] not in env:
            raise CelError(f"undeclared reference to {node[1]!r}")
        return env[node[1]]
    if kind == "sel":
        base = _eval(node[1], env)
        if not isinstance(base, dict) or node[2] not in base:
            raise CelError(f"no such key: {node[2]}")
        return base[node[2]]
    if kind == "has":
        try:
            base = _eval(node[1], env)
        except CelError:
            return False
        return isinstance(base, dict) and node[2] in base
    if kind == "idx":
        base, index = _eval(node[1], env), _eval(node[2], env)
        try:
            return base[index]
        except (KeyError, IndexError, TypeError) as e:
            raise CelError(f"bad index {index!r}") from e
    if kind == "call":
        if node[1] not in _FUNCS:
            raise CelError(f"unsupported function {node[1]}")
        args = [_eval(a, env) for a in node[2]]
        try:
            return _FUNCS[node[1]](*args)
        except TypeError as e:
            raise CelError(str(e)) from e
    if kind == "method":
        if node[2] not in _FUNCS:
            raise CelError(f"unsupported method {node[2]}")
        return _FUNCS[node[2]](_eval(node[1], env), *[_eval(a, env) for a in node[3]])
    if kind == "macro":
        items = _eval(node[1], env)
        if not isinstance(items, list | dict):
            raise CelError(f"{node[2]}() needs a list or map")
        results = (_truth(_eval(node[4], {**env, node[3]: item})) for item in items)
        return all(results) if node[2] == "all" else any(results)
    if kind == "not":
        return not _truth(_eval(node[1], env))
    if kind == "cond":
        return _eval(node[2] if _truth(_eval(node[1], env)) else node[3], env)
    if kind == "bin":
        return _binary(node[1], node[2], node[3], env)
    raise CelError(f"unsupported expression {kind}")


def _truth(value: Any) -> bool:
    if not isinstance(value, bool):
        raise CelError(f"expected a bool, got {value!r}")
    return value


def _binary(op: str, a: tuple, b: tuple, env: dict[str, Any]) -> Any:
    if op in ("&&", "||"):
        stop = op == "||"  # the value that decides the result
        error: CelError | None = None
        try:
            if _truth(_eval(a, env)) == stop:
                return stop
        except CelError as e:
            error = e
        right = _truth(_eval(b, env))
        if right == stop:
            return stop
        if error is not None:
            raise error
        return not stop
    left, right = _eval(a, env), _eval(b, env)
    if op == "==":
        return left == right
    if op == "!=":
        return left != right
    try:
        return {"<": left < right, ">": left > right, "<=": left <= right, ">=": left >= right}[op]
    except TypeError as e:
        raise CelError(str(e)) from e


def evaluate(expression: str, env: dict[str, Any]) -> Any:
    return _eval(_Parser(expression).parse(), env)
