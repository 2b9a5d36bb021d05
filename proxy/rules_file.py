"""Reading rules.yaml into a :class:`~proxy.rules.RuleSet`.

The file is read and validated whole before the proxy serves (or before a reload replaces the rules in use);
any mistake is a :class:`~proxy.errors.ConfigError` naming the file, the line and the place, for example::

    rules.yaml:7: rules[2].set.postedBy: unknown value 'recuiter' (expected one of: recruiter, user_id, email)

The format, in brief (the shipped ``rules.yaml`` is commented in full)::

    report_only: false      # optional; true: log the writes, forward bodies unchanged (a rule may override)
    unlisted: forward       # optional; a route no entry names is forwarded (forward) or refused 403 (deny)
    public: [GET /healthz]  # optional; paths that need no session, "[METHOD ]/template"
    rules:                  # routes whose JSON body the proxy writes to
      - match: POST /api/v1/jobs/{id}/approve
        enforce: {approvedBy: recruiter}      # modes: set, default, enforce, reference
        set: {metadata.performedBy: user_id}  # values: recruiter, user_id, email
        roles: [admin, manager]               # optional; the caller needs one of them
        report_only: false                    # optional
    routes:                 # access-only entries: no fields, optional roles
      - match: POST /api/v1/team/invite
        roles: [admin]
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any, NoReturn, TypeAlias, cast

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from .errors import ConfigError
from .modes import MODES, Mode
from .rules import (
    ANY_METHOD,
    METHODS,
    VALUE_SOURCES,
    FieldRule,
    PublicPath,
    Route,
    Rule,
    RuleSet,
    Unlisted,
    ValueSource,
)


def load_rules(path: Path) -> RuleSet:
    """Read and validate a rules file; raise ConfigError naming the file and line of the first mistake."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: the rules file cannot be read: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: the rules file is not UTF-8 text") from None
    return parse_rules(text, str(path), path=path)


# libyaml's loader when installed (four times faster on a large file); both keep every node's line number.
_FAST_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def parse_rules(text: str, source: str = "rules.yaml", *, path: Path | None = None) -> RuleSet:
    """Validate the text of a rules file; ``source`` is the name used in error messages."""
    try:
        root = yaml.compose(text, Loader=_FAST_LOADER)
    except yaml.YAMLError:
        root = _compose_for_message(text, source)  # the pure-Python loader words its errors better
    if root is None:
        raise ConfigError(f"{source}: the rules file is empty; it must be a mapping with a 'rules' list")
    return _Reader(source).ruleset(root, path)


def _compose_for_message(text: str, source: str) -> Node | None:
    try:
        return yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark is not None else 1
        raise ConfigError(f"{source}:{line}: invalid YAML: {exc.problem}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: invalid YAML: {exc}") from None


# -- Reading the YAML node tree (nodes keep their line numbers) ----------------------------------------------

_TOP_KEYS = ("rules", "routes", "public", "unlisted", "report_only")
_MODE_KEYS = frozenset(Mode)  # StrEnum members: "set" in _MODE_KEYS, whatever the Python version
_RULE_KEYS = ("match", *(mode.value for mode in Mode), "roles", "report_only")
_ROUTE_KEYS = ("match", "roles")
_STR, _BOOL = "tag:yaml.org,2002:str", "tag:yaml.org,2002:bool"
_KINDS = {"null": "null", "bool": "true/false", "int": "a number", "float": "a number", "str": "text"}
_LITERAL = re.compile(r"[A-Za-z0-9\-._~!$&'()+,=:@]+")
_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_FIELD_PART = re.compile(r"[A-Za-z_$][A-Za-z0-9_$-]*")
_Keys: TypeAlias = dict[str, tuple[ScalarNode, Node]]


class _Reader:
    def __init__(self, source: str) -> None:
        self.source = source

    def ruleset(self, root: Node, path: Path | None) -> RuleSet:
        if not isinstance(root, MappingNode):
            self.fail(root, "", f"the top level must be a mapping with a 'rules' list, got {_kind(root)}")
        top = self.mapping(root, "", _TOP_KEYS)
        if "rules" not in top:
            self.fail(root, "", "missing key 'rules' (a list of rules, may be empty: rules: [])")
        report_only = self.flag(top, "report_only", "report_only", False)
        unlisted = self.choice(top, "unlisted", ("forward", "deny"), "forward")
        rules = tuple(
            self.rule(n, f"rules[{i}]", report_only) for i, n in enumerate(self.items(top, "rules"))
        )
        routes = tuple(self.route(n, f"routes[{i}]") for i, n in enumerate(self.items(top, "routes")))
        public = tuple(self.public(n, f"public[{i}]") for i, n in enumerate(self.items(top, "public")))
        return RuleSet(
            rules,
            routes,
            public,
            unlisted=cast(Unlisted, unlisted),
            report_only=report_only,
            path=path,
            source=self.source,
        )

    def rule(self, node: Node, where: str, file_report_only: bool) -> Rule:
        keys = self.mapping(node, where, _RULE_KEYS)
        method, template, line = self.match(keys, where, node)
        fields = self.fields(keys, where)
        if not fields:
            self.fail(
                node,
                where,
                "a rule needs at least one field under set, default, enforce or reference "
                "(list a route without fields under 'routes')",
            )
        return Rule(
            method,
            template,
            fields,
            roles=self.roles(keys, where),
            report_only=self.flag(keys, "report_only", f"{where}.report_only", file_report_only),
            line=line,
        )

    def route(self, node: Node, where: str) -> Route:
        keys = self.mapping(node, where, _ROUTE_KEYS)
        method, template, line = self.match(keys, where, node)
        return Route(method, template, roles=self.roles(keys, where), line=line)

    def public(self, node: Node, where: str) -> PublicPath:
        text = self.text(node, where)
        parts = text.split()
        if len(parts) == 1:
            parts.insert(0, ANY_METHOD)
        if len(parts) != 2:
            self.fail(node, where, f"expected '[METHOD ]/template' such as 'GET /healthz', got {text!r}")
        return PublicPath(
            self.method(parts[0], node, where), self.template(parts[1], node, where), node.start_mark.line + 1
        )

    def match(self, keys: _Keys, where: str, node: Node) -> tuple[str, str, int]:
        if "match" not in keys:
            self.fail(node, where, "missing key 'match' (such as match: POST /api/v1/jobs/create)")
        value = keys["match"][1]
        text = self.text(value, f"{where}.match")
        parts = text.split()
        if len(parts) != 2:
            self.fail(
                value,
                f"{where}.match",
                f"expected 'METHOD /template' such as 'POST /api/v1/jobs', got {text!r}",
            )
        method = self.method(parts[0], value, f"{where}.match")
        return method, self.template(parts[1], value, f"{where}.match"), value.start_mark.line + 1

    def method(self, text: str, node: Node, where: str) -> str:
        method = text.upper()
        if method in ("*", "ANY"):
            return ANY_METHOD
        if method not in METHODS:
            self.fail(
                node, where, f"unknown method {text!r} (expected one of: {', '.join(METHODS)}, or * for any)"
            )
        return method

    def template(self, text: str, node: Node, where: str) -> str:
        problem = _template_problem(text)
        if problem is not None:
            self.fail(node, where, f"bad template {text!r}: {problem}")
        return text

    def fields(self, keys: _Keys, where: str) -> tuple[FieldRule, ...]:
        found: dict[tuple[str, ...], tuple[str, int]] = {}
        fields: list[FieldRule] = []
        for mode in Mode:
            if mode not in keys:
                continue
            for name, (key, value) in self.mapping(keys[mode][1], f"{where}.{mode}", None).items():
                place = f"{where}.{mode}.{name}"
                path = self.field_path(name, key, place)
                source = self.source_name(value, place, mode)
                self.check_conflicts(path, found, key, place)
                found[path] = (f"{mode}.{name}", key.start_mark.line + 1)
                fields.append(FieldRule(path, mode, source))
        return tuple(fields)

    def field_path(self, name: str, key: ScalarNode, place: str) -> tuple[str, ...]:
        parts = tuple(name.split("."))
        if key.tag != _STR or not all(_FIELD_PART.fullmatch(part) for part in parts):
            self.fail(
                key,
                place,
                "a field is a JSON key name, or names joined by dots (such as metadata.performedBy)",
            )
        return parts

    def source_name(self, value: Node, place: str, mode: Mode) -> ValueSource:
        text = self.text(value, place)
        if text not in VALUE_SOURCES:
            self.fail(value, place, f"unknown value {text!r} (expected one of: {', '.join(VALUE_SOURCES)})")
        allowed = MODES[mode].values
        if text not in allowed:
            choices = " or ".join(repr(v) for v in VALUE_SOURCES if v in allowed)
            self.fail(value, place, f"a {mode} field takes {choices} as its value, got {text!r}")
        return text

    def check_conflicts(
        self, path: tuple[str, ...], found: dict[tuple[str, ...], tuple[str, int]], key: Node, place: str
    ) -> None:
        for other, (label, line) in found.items():
            if other == path:
                self.fail(key, place, f"the field is already given as {label} (line {line})")
            shorter, longer = sorted((other, path), key=len)
            if longer[: len(shorter)] == shorter:
                self.fail(key, place, f"conflicts with {label} (line {line}): one is inside the other")

    def roles(self, keys: _Keys, where: str) -> frozenset[str]:
        if "roles" not in keys:
            return frozenset()
        node = keys["roles"][1]
        if not isinstance(node, SequenceNode):
            self.fail(
                node, f"{where}.roles", f"expected a list of role names such as [admin], got {_kind(node)}"
            )
        roles = [self.text(item, f"{where}.roles[{i}]", "a role name") for i, item in enumerate(node.value)]
        for i, role in enumerate(roles):
            if not role.strip():
                self.fail(node.value[i], f"{where}.roles[{i}]", "a role name cannot be empty")
        return frozenset(roles)

    def items(self, keys: _Keys, name: str) -> list[Node]:
        if name not in keys:
            return []
        node = keys[name][1]
        if isinstance(node, ScalarNode) and node.tag == "tag:yaml.org,2002:null":
            return []
        if not isinstance(node, SequenceNode):
            self.fail(node, name, f"expected a list, got {_kind(node)}")
        return list(node.value)

    def flag(self, keys: _Keys, name: str, where: str, default: bool) -> bool:
        if name not in keys:
            return default
        node = keys[name][1]
        if not isinstance(node, ScalarNode) or node.tag != _BOOL:
            self.fail(node, where, f"expected true or false, got {_kind(node)}")
        return bool(yaml.constructor.SafeConstructor.bool_values[node.value.lower()])

    def choice(self, keys: _Keys, name: str, choices: tuple[str, ...], default: str) -> str:
        if name not in keys:
            return default
        node = keys[name][1]
        value = self.text(node, name)
        if value not in choices:
            self.fail(node, name, f"unknown value {value!r} (expected one of: {', '.join(choices)})")
        return value

    def mapping(self, node: Node, where: str, allowed: tuple[str, ...] | None) -> _Keys:
        if not isinstance(node, MappingNode):
            self.fail(node, where, f"expected a mapping, got {_kind(node)}")
        keys: _Keys = {}
        for key, value in node.value:
            if not isinstance(key, ScalarNode):
                self.fail(key, where, f"a key must be a name, got {_kind(key)}")
            place = f"{where}.{key.value}" if where else key.value
            if key.value in keys:
                self.fail(
                    key,
                    place,
                    f"duplicate key (first given at line {keys[key.value][0].start_mark.line + 1})",
                )
            if allowed is _ROUTE_KEYS and key.value in _MODE_KEYS:
                self.fail(key, place, "a routes entry has no fields; put an entry with fields under 'rules'")
            if allowed is not None and key.value not in allowed:
                self.fail(key, place, _unknown_key(key.value, allowed))
            keys[key.value] = (key, value)
        return keys

    def text(self, node: Node, where: str, expected: str = "text") -> str:
        if not isinstance(node, ScalarNode) or node.tag != _STR:
            self.fail(node, where, f"expected {expected}, got {_kind(node)}")
        return str(node.value)

    def fail(self, node: Node, where: str, what: str) -> NoReturn:
        place = f"{where}: " if where else ""
        raise ConfigError(f"{self.source}:{node.start_mark.line + 1}: {place}{what}")


def _kind(node: Node) -> str:
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    kind = _KINDS.get(node.tag.rsplit(":", 1)[-1], "a value")
    return f"{kind} {node.value!r}" if kind == "text" else kind


def _unknown_key(name: str, allowed: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(name, allowed, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown key{hint} (expected one of: {', '.join(allowed)})"


def _template_problem(template: str) -> str | None:
    if not template.startswith("/"):
        return "it must start with '/'"
    if template == "/":
        return None
    names: set[str] = set()
    for segment in template[1:].split("/"):
        if not segment:
            return "it has an empty segment (a doubled or trailing '/')"
        if segment in (".", ".."):
            return f"it has a dot segment {segment!r}"
        param = _PARAM.fullmatch(segment)
        if param is not None:
            if param.group(1) in names:
                return f"the name {{{param.group(1)}}} appears twice"
            names.add(param.group(1))
        elif not _LITERAL.fullmatch(segment):
            return (
                f"segment {segment!r} is neither a {{name}} nor plain text "
                "(letters, digits and - . _ ~ ! $ & ' ( ) + , = : @; no percent-escapes)"
            )
    return None
