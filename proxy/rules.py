"""rules.yaml: which routes get which attribution fields, who may call them, and what needs no session.

The file is read and validated by :mod:`proxy.rules_file`; this module holds what it produces.

Matching (``RuleSet.match``): the path is split into segments; a literal template segment matches the same
text in any letter case, a ``{name}`` matches exactly one non-empty segment. When several templates match one
path, the most specific wins: comparing segments from left to right, the first place where one template has a
literal and the other a ``{name}`` decides for the literal. For the same template, an entry for the request's
method beats one for ``*`` (every method), and HEAD falls back to the GET entry. Two entries with the same
method and the same template shape (``{id}`` and ``{jobId}`` count as the same) are a duplicate and refused;
templates that merely overlap are allowed and listed by ``RuleSet.overlaps``.

Templates are compiled into one trie keyed by segment (literals lowercased, one wildcard child per node), so a
lookup costs the same with ten rules or ten thousand.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, NoReturn, TypeAlias, get_args

from .errors import ConfigError
from .modes import MODES, Mode

ValueSource = Literal["recruiter", "user_id", "email"]
Unlisted = Literal["forward", "deny"]

VALUE_SOURCES: tuple[ValueSource, ...] = get_args(ValueSource)
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
#: The method of an entry that applies to every method (also spelled ``ANY`` in the file).
ANY_METHOD = "*"


@dataclass(frozen=True, slots=True)
class FieldRule:
    """One attribution field: where in the body (``("metadata", "performedBy")``), how, and with what."""

    path: tuple[str, ...]
    mode: Mode
    value: ValueSource

    @property
    def name(self) -> str:
        return ".".join(self.path)


@dataclass(frozen=True, slots=True)
class Rule:
    """A route whose JSON body the proxy writes to; ``report_only`` is the effective value."""

    method: str
    template: str
    fields: tuple[FieldRule, ...]
    roles: frozenset[str] = frozenset()
    report_only: bool = False
    line: int = 0
    #: "METHOD /template": the rule's name in metrics, audit records and ``explain`` (made once, not per request).
    label: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "label", f"{self.method} {self.template}")

    @property
    def needs_recruiter(self) -> bool:
        """Whether the caller's BPOC recruiter ID (or the agency's directory) is needed to apply this rule."""
        return any(f.value == "recruiter" or MODES[f.mode].consults_roster for f in self.fields)

    @property
    def consults_roster(self) -> bool:
        """Whether a mode of this rule checks client values against the agency's active recruiters."""
        return any(MODES[f.mode].consults_roster for f in self.fields)


@dataclass(frozen=True, slots=True)
class Route:
    """A ``routes`` entry: a route named for access only (it may require roles; it writes nothing)."""

    method: str
    template: str
    roles: frozenset[str] = frozenset()
    line: int = 0
    #: "METHOD /template", as a Rule's.
    label: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "label", f"{self.method} {self.template}")


@dataclass(frozen=True, slots=True)
class PublicPath:
    """A ``public`` entry: requests it matches need no session."""

    method: str
    template: str
    line: int = 0


@dataclass(frozen=True, slots=True)
class Match:
    """The entry a request matched: exactly one of ``rule`` and ``route`` is set.

    ``params`` maps each ``{name}`` of the template to the path segment as the client sent it (original case,
    remaining percent-escapes kept).
    """

    rule: Rule | None
    route: Route | None
    params: dict[str, str] = field(default_factory=dict)

    @property
    def roles(self) -> frozenset[str]:
        entry = self.rule or self.route
        return entry.roles if entry is not None else frozenset()

    @property
    def label(self) -> str:
        """The matched entry's "METHOD /template"."""
        entry = self.rule or self.route
        assert entry is not None  # exactly one is set
        return entry.label


Entry: TypeAlias = Rule | Route | PublicPath


class RuleSet:
    """The validated rules, compiled for matching; built by :func:`~proxy.rules_file.load_rules`
    or :func:`~proxy.rules_file.parse_rules`."""

    def __init__(
        self,
        rules: tuple[Rule, ...] = (),
        routes: tuple[Route, ...] = (),
        public: tuple[PublicPath, ...] = (),
        *,
        unlisted: Unlisted = "forward",
        report_only: bool = False,
        path: Path | None = None,
        source: str | None = None,
    ) -> None:
        self.path = path
        self.source = source or (str(path) if path is not None else "rules.yaml")
        self.rules = rules
        self.routes = routes
        self.public = public
        self.unlisted: Unlisted = unlisted
        self.report_only = report_only
        items: list[tuple[Entry, str]] = [(r, f"rules[{i}]") for i, r in enumerate(rules)]
        items += [(r, f"routes[{i}]") for i, r in enumerate(routes)]
        self._entries = [_compile(item, label, i) for i, (item, label) in enumerate(items)]
        self._public = [_compile(p, f"public[{i}]", i) for i, p in enumerate(public)]
        self._trie = _Trie()
        for entry in self._entries:
            if (first := self._trie.add(entry)) is not None:
                self._fail(
                    entry,
                    "match",
                    f"duplicate route {_show(entry)}: {first.label} (line {first.line}) has it",
                )
        self._public_trie = _Trie()
        for entry in self._public:
            self._add_public(entry)

    def _add_public(self, entry: _Compiled) -> None:
        if (first := self._public_trie.add(entry)) is not None:
            self._fail(entry, "", f"duplicate public path {_show(entry)}: {first.label} has it")
        for other in self._trie.overlapping(entry.method, entry.shape):
            if isinstance(other.item, Rule) or (isinstance(other.item, Route) and other.item.roles):
                self._fail(
                    entry,
                    "",
                    f"{_show(entry)} can match the same requests as {other.label} (line {other.line}) "
                    f"{_show(other)}, which needs a session (it has fields or roles), so it cannot be public",
                )

    def match(self, method: str, path: str) -> Match | None:
        """The entry for a request, or None for an unlisted route. ``path`` must come from ``normalise_path``.

        The method is compared in upper case, so ``post`` cannot slip past a POST rule.
        """
        entry = self._trie.find(method.upper(), path)
        if entry is None:
            return None
        params = _params(entry, path)
        if isinstance(entry.item, Rule):
            return Match(entry.item, None, params)
        assert isinstance(entry.item, Route)  # the rules trie holds rules and routes only
        return Match(None, entry.item, params)

    def is_public(self, method: str, path: str) -> bool:
        """Whether the request needs no session (a ``public`` entry matches it)."""
        return bool(self._public) and self._public_trie.find(method.upper(), path) is not None

    def overlaps(self) -> list[str]:
        """One line per pair of entries that can both match some request, saying which one wins."""
        lines: list[str] = []
        for entry in self._entries:
            for other in self._trie.overlapping(entry.method, entry.shape):
                if other.index <= entry.index:
                    continue
                method, sample = _sample(entry, other)
                winner = self._trie.find(method, sample)
                won = f"{winner.label} {_show(winner)}" if winner is not None else "neither"
                lines.append(
                    f"{self.source}:{entry.line}: {entry.label} {_show(entry)} overlaps {other.label} "
                    f"{_show(other)} (line {other.line}): for {method} {sample}, {won} wins"
                )
        return lines

    def describe(self) -> list[str]:
        """A summary for ``bpoc-proxy check``: the policy, then one line per entry."""
        policy = "forwarded" if self.unlisted == "forward" else "refused (403)"
        lines = [
            f"{self.source}: {len(self.rules)} rules, {len(self.routes)} routes, "
            f"{len(self.public)} public paths; unlisted routes are {policy}; "
            f"report_only: {'on' if self.report_only else 'off'}"
        ]
        for rule in self.rules:
            fields = ", ".join(f"{f.name} ({f.mode} {f.value})" for f in rule.fields)
            lines.append(f"rule   {rule.method} {rule.template} -> {fields}{_roles(rule.roles)}{_flag(rule)}")
        for route in self.routes:
            lines.append(f"route  {route.method} {route.template} -> no fields{_roles(route.roles)}")
        for public in self.public:
            lines.append(f"public {public.method} {public.template} -> no session needed")
        return lines

    def _fail(self, entry: _Compiled, key: str, what: str) -> NoReturn:
        where = f"{entry.label}.{key}" if key else entry.label
        raise ConfigError(f"{self.source}:{entry.line}: {where}: {what}")


# -- The trie ------------------------------------------------------------------------------------------------

_Shape: TypeAlias = tuple[str | None, ...]  # lowercased literal, or None for a {name}


@dataclass(frozen=True, slots=True, eq=False)
class _Compiled:
    item: Entry
    label: str
    index: int
    shape: _Shape
    params: tuple[tuple[int, str], ...]

    @property
    def method(self) -> str:
        return self.item.method

    @property
    def line(self) -> int:
        return self.item.line


def _compile(item: Entry, label: str, index: int) -> _Compiled:
    segments = _split(item.template)
    shape = tuple(None if s.startswith("{") else s.lower() for s in segments)
    params = tuple((i, s[1:-1]) for i, s in enumerate(segments) if s.startswith("{"))
    return _Compiled(item, label, index, shape, params)


def _split(path: str) -> list[str]:
    return path[1:].split("/") if path != "/" else []


def _params(entry: _Compiled, path: str) -> dict[str, str]:
    if not entry.params:
        return {}
    segments = _split(path)
    return {name: segments[i] for i, name in entry.params}


class _Node:
    __slots__ = ("entries", "literals", "wildcard")

    def __init__(self) -> None:
        self.literals: dict[str, _Node] = {}
        self.wildcard: _Node | None = None
        self.entries: dict[str, _Compiled] = {}  # by method, ANY_METHOD included


class _Trie:
    def __init__(self) -> None:
        self._root = _Node()

    def add(self, entry: _Compiled) -> _Compiled | None:
        """Insert ``entry``; return the entry already there with the same method and shape, if any."""
        node = self._root
        for literal in entry.shape:
            if literal is None:
                node.wildcard = node.wildcard or _Node()
                node = node.wildcard
            else:
                node = node.literals.setdefault(literal, _Node())
        existing = node.entries.get(entry.method)
        if existing is None:
            node.entries[entry.method] = entry
        return existing

    def find(self, method: str, path: str) -> _Compiled | None:
        """The most specific entry for the request: literal before wildcard, left to right, backtracking."""
        return _find(self._root, _split(path.lower()), 0, _FALLBACKS.get(method) or (method, ANY_METHOD))

    def overlapping(self, method: str, shape: _Shape) -> Iterator[_Compiled]:
        """Every entry that matches some request the given method and shape also match."""
        yield from _overlapping(self._root, shape, 0, method)


# Servers answer HEAD with their GET handler, so a GET entry (its roles) covers HEAD unless HEAD has its own.
_FALLBACKS = {"HEAD": ("HEAD", "GET", ANY_METHOD)}


def _find(node: _Node, segments: list[str], i: int, methods: tuple[str, ...]) -> _Compiled | None:
    if i == len(segments):
        for method in methods:
            if (entry := node.entries.get(method)) is not None:
                return entry
        return None
    child = node.literals.get(segments[i])
    if child is not None:
        found = _find(child, segments, i + 1, methods)
        if found is not None:
            return found
    if node.wildcard is not None and segments[i]:
        return _find(node.wildcard, segments, i + 1, methods)
    return None


def _overlapping(node: _Node, shape: _Shape, i: int, method: str) -> Iterator[_Compiled]:
    if i == len(shape):
        for entry_method, entry in node.entries.items():
            if ANY_METHOD in (method, entry_method) or method == entry_method:
                yield entry
        return
    literal = shape[i]
    if literal is None:
        for child in node.literals.values():
            yield from _overlapping(child, shape, i + 1, method)
    elif literal in node.literals:
        yield from _overlapping(node.literals[literal], shape, i + 1, method)
    if node.wildcard is not None:
        yield from _overlapping(node.wildcard, shape, i + 1, method)


def _sample(a: _Compiled, b: _Compiled) -> tuple[str, str]:
    """A request that both entries match: literals where either has one, else a's ``{name}``."""
    segments = _split(a.item.template)
    other = _split(b.item.template)
    path = "/" + "/".join(
        y if x.startswith("{") and not y.startswith("{") else x for x, y in zip(segments, other, strict=True)
    )
    return (b.method if a.method == ANY_METHOD else a.method), path


def _show(entry: _Compiled) -> str:
    return f"{entry.method} {entry.item.template}"


def _roles(roles: frozenset[str]) -> str:
    return f"; roles: {', '.join(sorted(roles))}" if roles else ""


def _flag(rule: Rule) -> str:
    return "; report-only" if rule.report_only else ""
