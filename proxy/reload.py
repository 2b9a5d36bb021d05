"""The live rule set, and how it is swapped: on SIGHUP, or by polling the file when PROXY_RULES_RELOAD is on.

A swap replaces one reference; a request in flight keeps the RuleSet it started with, so no request is dropped.
Kubernetes updates a mounted ConfigMap by swapping a symlink, which inotify watchers miss, so we poll the content.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from pathlib import Path

from .errors import ConfigError
from .metrics import Metrics
from .rules import RuleSet
from .rules_file import load_rules

log = logging.getLogger("proxy.rules")


class RulesHolder:
    def __init__(self, path: Path, rules: RuleSet, metrics: Metrics | None = None) -> None:
        self.path = path
        self.current = rules
        self._digest = _digest(path)
        self._metrics = metrics or Metrics()
        self._metrics.rules_loaded()

    def get(self) -> RuleSet:
        return self.current

    def reload(self, *, reason: str) -> bool:
        """Load the file again; a bad file is refused with a log line and the old rules stay."""
        digest = _digest(self.path)
        try:
            rules = load_rules(self.path)
        except ConfigError as exc:
            log.error(
                "rules reload refused, keeping the previous rules: %s",
                exc,
                extra={"fields": {"reason": reason}},
            )
            self._digest = digest  # do not log the same bad file every poll
            self._metrics.rules_reloaded(False)
            return False
        self.current, self._digest = rules, digest
        self._metrics.rules_reloaded(True)
        log.info(
            "rules reloaded",
            extra={"fields": {"reason": reason, "rules": len(rules.rules), "routes": len(rules.routes)}},
        )
        return True

    def changed(self) -> bool:
        return _digest(self.path) != self._digest

    async def watch(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            if self.changed():
                self.reload(reason="file changed")


def _digest(path: Path) -> bytes | None:
    try:
        return hashlib.sha256(path.read_bytes()).digest()
    except OSError:
        return None
