"""Fault settings that can change while the emulator runs, and the choice of
which HTTP fault (if any) hits each call.

Thread-safe: the HTTP side and the background worker both read the settings.
The HTTP choice draws from one `random.Random(seed)`, so a seeded run with the
same sequence of calls sees the same faults.
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass

from .config import FaultSettings, HttpFault


@dataclass
class _RuleState:
    rule: HttpFault
    remaining: int | None


class FaultState:
    def __init__(self, settings: FaultSettings, seed: int) -> None:
        self._lock = threading.Lock()
        self._random = random.Random(seed)
        self._settings = settings
        self._rules = [_RuleState(rule, rule.count) for rule in settings.http]

    @property
    def settings(self) -> FaultSettings:
        with self._lock:
            return self._settings

    def replace(self, settings: FaultSettings) -> None:
        """New settings; "next N calls" counters restart from the new rules."""
        with self._lock:
            self._settings = settings
            self._rules = [_RuleState(rule, rule.count) for rule in settings.http]

    def pick_http_fault(self, endpoint: str) -> HttpFault | None:
        """The first rule for this endpoint that fires, consuming one of its calls."""
        with self._lock:
            for state in self._rules:
                rule = state.rule
                if rule.endpoint not in ("*", endpoint):
                    continue
                if rule.kind == "lost_create" and endpoint != "create":
                    continue
                if state.remaining == 0:
                    continue
                if rule.probability < 1.0 and self._random.random() >= rule.probability:
                    continue
                if state.remaining is not None:
                    state.remaining -= 1
                return rule
            return None
