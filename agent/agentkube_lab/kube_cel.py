"""CEL for the CRDs' x-kubernetes-validations, evaluated by cel-python (celpy), a maintained CEL implementation.

What the lab adds around celpy, each time to follow kube-apiserver (cel-go with Kubernetes' environment):
- a declaration check when a rule is compiled: every identifier must be a declared variable (`self`, `oldSelf`, a
  macro's variable) and every function or method one that the Kubernetes environment declares AND the lab
  implements (celpy's standard functions, plus kube_cel_library's isIP/ip/isCIDR/cidr/format). cel-go checks this
  when the CRD is created, so the apiserver refuses such a CRD; here compile() raises CelCompileError: an unknown
  function is never skipped;
- CEL's heterogeneous equality (cel-spec langdef "Equality"; cel-go common/types): values of different types are
  unequal rather than an error (`self.tlsConfig != null` on a map is true), numbers compare across int/uint/double;
- has(e.f) as cel-spec defines it (langdef "Field Selection", cel-go interpreter/attributes.go): an error in `e`
  is an error, not `false` as celpy's macro answers.
`uses_old_self` is found in the parsed expression, as cel-go's compiler does
(staging/src/k8s.io/apiextensions-apiserver/pkg/apiserver/schema/cel/compilation.go)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import celpy
import celpy.celtypes as ct
import lark
from celpy.adapter import json_to_cel
from celpy.evaluation import CELEvalError, Evaluator

from agentkube_lab import kube_cel_library as klib

logging.getLogger("celpy").setLevel(logging.WARNING)


class CelError(ValueError):
    """A rule that cannot be compiled, or an evaluation error (e.g. `no such key`)."""


class CelCompileError(CelError):
    """The rule would not compile in kube-apiserver's CEL environment (or uses a function the lab lacks)."""


class CelEvalError(CelError):
    """The rule compiled but its evaluation failed: the apiserver reports "<error> evaluating rule: ..."."""


# cel-go's standard declarations that celpy implements (cel-spec langdef "List of Standard Definitions").
_STD_GLOBAL = {"size", "int", "uint", "double", "string", "bytes", "bool", "duration", "timestamp", "type", "dyn",
               "has", "matches"}
_STD_MEMBER = {"size", "contains", "startsWith", "endsWith", "matches", "getDate", "getDayOfMonth", "getDayOfWeek",
               "getDayOfYear", "getFullYear", "getMonth", "getHours", "getMilliseconds", "getMinutes", "getSeconds"}
# Macros cel-go enables (parser/macro.go AllMacros); celpy's own "reduce"/"min" are not CEL and are refused.
_MACROS = {"all", "exists", "exists_one", "map", "filter"}
_GLOBAL = _STD_GLOBAL | set(klib.GLOBAL_FUNCTIONS)
_MEMBER = _STD_MEMBER | set(klib.MEMBER_FUNCTIONS)
# `format.named(...)`, `format.dns1123Label()`, `ip.isCanonical(...)`: qualified global names in Kubernetes' libs.
_QUALIFIED = set(klib.QUALIFIED_FUNCTIONS)


def _children(tree: lark.Tree) -> list[lark.Tree]:
    return [c for c in tree.children if isinstance(c, lark.Tree)]


def _only_child(tree: lark.Tree) -> lark.Tree | None:
    kids = _children(tree)
    return kids[0] if len(kids) == 1 and len(tree.children) == 1 else None


def _ident_name(tree: lark.Tree) -> str | None:
    """The name when `tree` is (a chain of single children down to) a bare identifier."""
    node: lark.Tree | None = tree
    while node is not None and node.data != "ident":
        node = _only_child(node)
    return str(node.children[0]) if node is not None else None


class _Checker:
    """Walks celpy's parse tree like cel-go's checker would for declarations (not for types)."""

    def __init__(self, variables: set[str]):
        self.variables = variables
        self.uses: set[str] = set()

    def check(self, tree: lark.Tree, scope: frozenset[str]) -> None:
        kind = tree.data
        if kind == "ident":
            name = str(tree.children[0])
            if name not in scope:
                raise CelCompileError(f"undeclared reference to '{name}'")
            self.uses.add(name)
            return
        if kind == "ident_arg":
            name = str(tree.children[0])
            args = _children(tree.children[1]) if len(tree.children) > 1 and tree.children[1] is not None else []
            if name == "has":
                if len(args) != 1 or not self._field_selection(args[0]):
                    raise CelCompileError("invalid argument to has() macro")
            elif name not in _GLOBAL:
                raise CelCompileError(f"undeclared reference to '{name}' (not in the lab's CEL environment)")
            for arg in args:
                self.check(arg, scope)
            return
        if kind == "member_dot_arg":
            target, method = tree.children[0], str(tree.children[1])
            exprs = tree.children[2] if len(tree.children) > 2 else None
            args = _children(exprs) if isinstance(exprs, lark.Tree) else []
            namespace = _ident_name(target)
            if namespace is not None and namespace not in scope and f"{namespace}.{method}" in _QUALIFIED:
                for arg in args:
                    self.check(arg, scope)
                return
            if method in _MACROS:
                var = _ident_name(args[0]) if args else None
                if var is None or len(args) != (3 if method == "map" and len(args) == 3 else 2):
                    raise CelCompileError(f"invalid arguments to the {method}() macro")
                self.check(target, scope)
                for arg in args[1:]:
                    self.check(arg, scope | {var})
                return
            if method not in _MEMBER:
                raise CelCompileError(f"undeclared reference to '{method}' (not in the lab's CEL environment)")
            self.check(target, scope)
            for arg in args:
                self.check(arg, scope)
            return
        if kind in ("dot_ident", "dot_ident_arg", "member_object"):
            raise CelCompileError(f"unsupported construct {kind} (no message types in a CRD's CEL environment)")
        for child in _children(tree):
            self.check(child, scope)

    @staticmethod
    def _field_selection(arg: lark.Tree) -> bool:
        node: lark.Tree | None = arg
        while node is not None and node.data != "member_dot":
            node = _only_child(node)
        return node is not None


def _selection(tree: lark.Tree) -> lark.Tree:
    node = tree
    while node.data != "member_dot":
        node = _children(node)[0]
    return node


class _KubeEvaluator(Evaluator):
    def macro_has_eval(self, exprlist: lark.Tree) -> Any:
        """has(e.f): an error in `e` is the result; on a map, whether the key is present (cel-spec)."""
        selection = _selection(_children(exprlist)[0])
        operand = self.visit(selection.children[0])
        if isinstance(operand, CELEvalError):
            return operand
        if isinstance(operand, ct.MapType):
            return ct.BoolType(ct.StringType(str(selection.children[1])) in operand)
        return CELEvalError(f"invalid type for field selection: {type(operand).__name__}", TypeError, None)


class _Runner(celpy.InterpretedRunner):
    def evaluate(self, context: Any) -> Any:
        return _KubeEvaluator(ast=self.ast, activation=self.new_activation()).evaluate(context)


_ENV = celpy.Environment(runner_class=_Runner)


def _eq(a: Any, b: Any) -> Any:
    """CEL heterogeneous equality (cel-spec langdef "Equality"; cel-go common/types/*.go Equal)."""
    for v in (a, b):
        if isinstance(v, CELEvalError):
            return v
    return ct.BoolType(_equal(a, b))


def _equal(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, ct.BoolType) or isinstance(b, ct.BoolType):
        return isinstance(a, ct.BoolType) and isinstance(b, ct.BoolType) and bool(a) == bool(b)
    numbers = (ct.IntType, ct.UintType, ct.DoubleType)
    if isinstance(a, numbers) or isinstance(b, numbers):
        if not (isinstance(a, numbers) and isinstance(b, numbers)):
            return False
        if isinstance(a, ct.DoubleType) or isinstance(b, ct.DoubleType):
            return float(a) == float(b)
        return int(a) == int(b)
    if isinstance(a, ct.ListType) and isinstance(b, ct.ListType):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, ct.MapType) and isinstance(b, ct.MapType):
        return set(a) == set(b) and all(_equal(a[k], b[k]) for k in a)
    if type(a) is not type(b):
        return False
    return bool(a == b)


def _ne(a: Any, b: Any) -> Any:
    result = _eq(a, b)
    return result if isinstance(result, CELEvalError) else ct.BoolType(not result)


def _logic(stop: bool) -> Any:
    """&& (stop=False) and || (stop=True), commutative over errors as in cel-spec langdef "Logical Operators"
    (cel-go interpreter/interpretable.go evalAnd/evalOr): the deciding value wins over an error on either side;
    otherwise the left error is the result."""
    def op(a: Any, b: Any) -> Any:
        for v in (a, b):
            if isinstance(v, ct.BoolType) and bool(v) == stop:
                return ct.BoolType(stop)
        for v in (a, b):
            if isinstance(v, CELEvalError):
                return v
            if not isinstance(v, ct.BoolType):
                return CELEvalError(f"no such overload: {type(v).__name__} in a logical operator", TypeError, None)
        return ct.BoolType(not stop)
    return op


def _conditional(cond: Any, left: Any, right: Any) -> Any:
    """c ? a : b; an error (or a non-bool) in the condition is the result (cel-go evalConditional)."""
    if isinstance(cond, CELEvalError):
        return cond
    if not isinstance(cond, ct.BoolType):
        return CELEvalError(f"no such overload: {type(cond).__name__} as a condition", TypeError, None)
    return left if cond else right


_FUNCTIONS = {"_==_": _eq, "_!=_": _ne, "_&&_": _logic(False), "_||_": _logic(True), "_?_:_": _conditional,
              **klib.CELPY_FUNCTIONS}


def _to_python(value: Any) -> Any:
    if isinstance(value, ct.BoolType):
        return bool(value)
    if isinstance(value, ct.IntType | ct.UintType):
        return int(value)
    if isinstance(value, ct.DoubleType):
        return float(value)
    if isinstance(value, ct.StringType):
        return str(value)
    if isinstance(value, ct.ListType):
        return [_to_python(v) for v in value]
    if isinstance(value, ct.MapType):
        return {_to_python(k): _to_python(v) for k, v in value.items()}
    return value


@dataclass
class Program:
    expression: str
    runner: Any
    uses_old_self: bool

    def evaluate(self, env: dict[str, Any]) -> Any:
        """Evaluates with `env` (JSON-like values); raises CelEvalError on an evaluation error."""
        activation = {name: json_to_cel(value) for name, value in env.items()}
        activation.update(klib.NAMESPACES)
        try:
            result = self.runner.evaluate(activation)
        except CELEvalError as e:
            raise CelEvalError(_message(e)) from e
        except (TypeError, ValueError, KeyError, AttributeError) as e:  # celpy lets some escape unwrapped
            raise CelEvalError(f"no such overload: {e}") from e
        if isinstance(result, CELEvalError):
            raise CelEvalError(_message(result))
        return _to_python(result)


def _message(error: CELEvalError) -> str:
    text = str(error.args[0]) if error.args else str(error)
    if text.startswith("no such member in mapping: "):  # cel-go says "no such key: <name>"
        return "no such key: " + text.removeprefix("no such member in mapping: ").strip("'")
    if text.startswith("found no matching overload") or text == "no such overload":
        return f"no such overload ({text})"
    return text


def compile_rule(expression: str, variables: tuple[str, ...] = ("self", "oldSelf")) -> Program:
    """Parses and checks a rule; raises CelCompileError where kube-apiserver would refuse the CRD."""
    try:
        ast = _ENV.compile(expression)
    except celpy.CELParseError as e:
        raise CelCompileError(f"syntax error: {e}") from e
    checker = _Checker(set(variables))
    checker.check(ast, frozenset(variables))
    return Program(expression, _ENV.program(ast, functions=_FUNCTIONS), "oldSelf" in checker.uses)


def evaluate(expression: str, env: dict[str, Any]) -> Any:
    """Compiles (with the variables in `env`) and evaluates in one go."""
    return compile_rule(expression, tuple(env)).evaluate(env)
