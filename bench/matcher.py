"""The rule-matching microbenchmark: the cost of ``RuleSet.match`` among 10 rules and among 10,000.

Rules have distinct templates (``POST /api/v1/r{i}/{id}/x``); lookups are timed for a path that hits a rule in
the middle, a path that misses at the first segment that differs, and a path that misses only at the last one.
"""

from __future__ import annotations

import timeit
from dataclasses import dataclass

from proxy.rules import RuleSet
from proxy.rules_file import parse_rules

SIZES = (10, 10_000)


@dataclass(frozen=True)
class MatchTiming:
    rules: int
    lookup: str
    path: str
    ns: float


def rules_yaml(count: int) -> str:
    lines = ["rules:"]
    for i in range(count):
        lines += [f"  - match: POST /api/v1/r{i}/{{id}}/x", "    set: {postedBy: recruiter}"]
    return "\n".join(lines) + "\n"


def lookups(count: int) -> dict[str, str]:
    return {
        "hit": f"/api/v1/r{count // 2}/job-42/x",
        "miss (first segment)": "/api/v2/r1/job-42/x",
        "miss (last segment)": f"/api/v1/r{count // 2}/job-42/y",
    }


def time_lookup(ruleset: RuleSet, path: str, number: int) -> float:
    """Nanoseconds per ``match`` call, over ``number`` calls."""
    return timeit.timeit(lambda: ruleset.match("POST", path), number=number) / number * 1e9


def run(number: int = 20_000, repeat: int = 5) -> list[MatchTiming]:
    """The best of ``repeat`` timings of each lookup, the sizes interleaved: a machine that slows down for a
    moment slows both sizes, not just the one being timed then."""
    cases: list[tuple[int, str, str, RuleSet]] = []
    for count in SIZES:
        ruleset = parse_rules(rules_yaml(count), f"bench-{count}-rules.yaml")
        for lookup, path in lookups(count).items():
            expected_hit = lookup == "hit"
            if (ruleset.match("POST", path) is not None) != expected_hit:
                raise RuntimeError(f"{count} rules: {path} should {'' if expected_hit else 'not '}match")
            cases.append((count, lookup, path, ruleset))
    best = [float("inf")] * len(cases)
    for _ in range(repeat):
        best = [
            min(b, time_lookup(ruleset, path, number))
            for b, (_, _, path, ruleset) in zip(best, cases, strict=True)
        ]
    return [
        MatchTiming(count, lookup, path, ns) for (count, lookup, path, _), ns in zip(cases, best, strict=True)
    ]


def worst_ratio(timings: list[MatchTiming]) -> float:
    """The largest (10,000 rules) / (10 rules) cost ratio over the kinds of lookup."""
    small = {t.lookup: t.ns for t in timings if t.rules == SIZES[0]}
    large = {t.lookup: t.ns for t in timings if t.rules == SIZES[1]}
    return max(large[kind] / small[kind] for kind in small)
