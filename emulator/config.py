"""Every knob of the emulator, in one frozen object per process.

`EmulatorConfig.from_env` reads `EMULATOR_*` variables; `to_env` is its inverse,
which is how `testing.running_emulator` hands a config to a subprocess.
Fault settings live in their own frozen `FaultSettings` because they can also be
replaced at runtime through `POST /_emulator/faults`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Literal, cast, get_args

Endpoint = Literal["create", "retrieve", "list", "cancel", "delete", "results"]
ENDPOINTS: tuple[str, ...] = get_args(Endpoint)

HttpFaultKind = Literal["rate_limit", "api_error", "overloaded", "drop", "slow", "lost_create"]
HTTP_FAULT_KINDS: tuple[str, ...] = get_args(HttpFaultKind)


class ConfigError(ValueError):
    """A knob has a value the emulator cannot use; the message names the knob."""


@dataclass(frozen=True)
class HttpFault:
    """One HTTP fault rule, checked in order before a request is served.

    `endpoint` is one of ENDPOINTS or "*". A rule fires with `probability`
    (seeded), and only `count` times when `count` is set ("the next N calls").
    `lost_create` only applies to create: the batch is stored and logged, then the
    client gets a dropped connection (`lost_as="drop"`) or a 500 (`"api_error"`).
    """

    endpoint: str = "*"
    kind: HttpFaultKind = "api_error"
    probability: float = 1.0
    count: int | None = None
    delay_seconds: float = 2.0
    retry_after_seconds: float = 1.0
    lost_as: Literal["drop", "api_error"] = "drop"

    def __post_init__(self) -> None:
        if self.endpoint != "*" and self.endpoint not in ENDPOINTS:
            raise ConfigError(f"http fault endpoint must be * or one of {ENDPOINTS}")
        if self.kind not in HTTP_FAULT_KINDS:
            raise ConfigError(f"http fault kind must be one of {HTTP_FAULT_KINDS}")
        if self.kind == "lost_create" and self.endpoint not in ("create", "*"):
            raise ConfigError("lost_create applies to the create endpoint only")
        if not 0.0 <= self.probability <= 1.0:
            raise ConfigError("http fault probability must be within 0..1")
        if self.count is not None and self.count < 0:
            raise ConfigError("http fault count must be >= 0")
        if self.lost_as not in ("drop", "api_error"):
            raise ConfigError("lost_as must be drop or api_error")

    @classmethod
    def parse(cls, spec: str) -> HttpFault:
        """Parse `ENDPOINT:KIND[:key=value,...]`, e.g. `create:rate_limit:count=2,retry_after=3`.

        Keys: p|probability, count|n, delay, retry_after, lost_as.
        """
        parts = spec.strip().split(":", 2)
        if len(parts) < 2:
            raise ConfigError(f"http fault {spec!r}: expected ENDPOINT:KIND[:key=value,...]")
        values: dict[str, Any] = {"endpoint": parts[0], "kind": parts[1]}
        aliases = {
            "p": "probability",
            "probability": "probability",
            "n": "count",
            "count": "count",
            "delay": "delay_seconds",
            "delay_seconds": "delay_seconds",
            "retry_after": "retry_after_seconds",
            "retry_after_seconds": "retry_after_seconds",
            "lost_as": "lost_as",
        }
        if len(parts) == 3 and parts[2]:
            for pair in parts[2].split(","):
                key, _, raw = pair.partition("=")
                name = aliases.get(key.strip())
                if name is None:
                    raise ConfigError(f"http fault {spec!r}: unknown key {key!r}")
                values[name] = _coerce_fault_value(name, raw.strip())
        return cls.from_mapping(values)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> HttpFault:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"http fault: unknown keys {sorted(unknown)}")
        values = {k: _coerce_fault_value(k, v) for k, v in data.items()}
        return cls(**values)


def _coerce_fault_value(name: str, raw: Any) -> Any:
    try:
        if name in ("probability", "delay_seconds", "retry_after_seconds"):
            return float(raw)
        if name == "count":
            return None if raw is None or raw == "" else int(raw)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"http fault {name}: {raw!r} is not a number") from exc
    return raw


@dataclass(frozen=True)
class FaultSettings:
    """Outcome and HTTP faults. All rates are shares in 0..1, rolled per request
    (or per batch) from the seed, so one seed gives one outcome."""

    http: tuple[HttpFault, ...] = ()
    # Share of requests that come back `errored` with invalid_request_error / api_error.
    errored_invalid_rate: float = 0.0
    errored_api_rate: float = 0.0
    # Share of batches that stall after `expire_done_fraction` of their requests
    # and end `expired` for the rest once expires_at passes.
    expire_batch_rate: float = 0.0
    expire_done_fraction: float = 0.5
    # Share of result lines left out of / written twice into the results file.
    missing_result_rate: float = 0.0
    duplicate_result_rate: float = 0.0
    # Share of succeeded tool_use results whose input breaks the tool's schema.
    bad_tool_input_rate: float = 0.0

    def __post_init__(self) -> None:
        for f in fields(self):
            if f.name == "http":
                continue
            value = getattr(self, f.name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"{f.name} must be within 0..1, got {value}")
        if self.errored_invalid_rate + self.errored_api_rate > 1.0:
            raise ConfigError("errored_invalid_rate + errored_api_rate must not exceed 1")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["http"] = [asdict(rule) for rule in self.http]
        return data

    @classmethod
    def from_mapping(
        cls, data: Mapping[str, Any], base: FaultSettings | None = None
    ) -> FaultSettings:
        """Settings from a JSON-like mapping; keys not given keep `base`'s values."""
        base = base or cls()
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown fault settings {sorted(unknown)}")
        values: dict[str, Any] = {}
        for key, value in data.items():
            if key == "http":
                values["http"] = parse_http_faults(value)
            else:
                try:
                    values[key] = float(value)
                except (TypeError, ValueError) as exc:
                    raise ConfigError(f"{key} must be a number") from exc
        return replace(base, **values)


def parse_http_faults(value: Any) -> tuple[HttpFault, ...]:
    """Rules from a JSON list of objects, a list of spec strings, or one string
    of specs separated by `;` (also accepted: a JSON list in that string)."""
    if value is None:
        return ()
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return ()
        if text.startswith("["):
            return parse_http_faults(json.loads(text))
        return tuple(HttpFault.parse(spec) for spec in text.split(";") if spec.strip())
    if isinstance(value, list | tuple):
        rules: list[HttpFault] = []
        for item in value:
            if isinstance(item, HttpFault):
                rules.append(item)
            elif isinstance(item, str):
                rules.append(HttpFault.parse(item))
            elif isinstance(item, Mapping):
                rules.append(HttpFault.from_mapping(cast(Mapping[str, Any], item)))
            else:
                raise ConfigError(f"http fault {item!r}: expected an object or a spec string")
        return tuple(rules)
    raise ConfigError("http faults must be a list")


@dataclass(frozen=True)
class EmulatorConfig:
    """All knobs, with defaults fit for tests and the demo."""

    host: str = "127.0.0.1"
    # 0 picks a free port; the ready line on stdout says which.
    port: int = 8765
    # None accepts any non-empty key (either auth style); a string accepts only it.
    api_key: str | None = None
    # None keeps state in a temporary directory removed on exit.
    state_dir: str | None = None
    # A batch of n requests needs processing_seconds + n * per_request_seconds;
    # requests complete one by one, evenly spread over that time.
    processing_seconds: float = 3.0
    per_request_seconds: float = 0.0
    # Time between a cancel and the batch ending (the `canceling` window).
    cancel_seconds: float = 0.5
    # Emulated seconds per real second for API time spans: 24 h expiry and the
    # 29-day archive. 86400 makes a batch expire one real second after creation.
    time_scale: float = 1.0
    # None draws a random seed at first start and keeps it in the state dir.
    seed: int | None = None
    # How often the background worker advances batches.
    tick_seconds: float = 0.05
    faults: FaultSettings = field(default_factory=FaultSettings)

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError("port must be within 0..65535")
        if self.api_key is not None and not self.api_key:
            raise ConfigError("api_key must be non-empty or None")
        for name in ("processing_seconds", "per_request_seconds", "cancel_seconds"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0")
        if self.time_scale <= 0:
            raise ConfigError("time_scale must be > 0")
        if self.tick_seconds <= 0:
            raise ConfigError("tick_seconds must be > 0")

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> EmulatorConfig:
        """Read `EMULATOR_<FIELD>` for every field above and `EMULATOR_<FAULT>` for
        every fault setting (`EMULATOR_HTTP_FAULTS` holds the HTTP rules).
        Unset or empty variables keep the defaults."""
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name == "faults":
                continue
            raw = environ.get(f"EMULATOR_{f.name.upper()}")
            if raw is None or raw == "":
                continue
            values[f.name] = _parse_scalar(f.name, raw)
        fault_values: dict[str, Any] = {}
        for f in fields(FaultSettings):
            env_name = "EMULATOR_HTTP_FAULTS" if f.name == "http" else f"EMULATOR_{f.name.upper()}"
            raw = environ.get(env_name)
            if raw is None or raw == "":
                continue
            fault_values[f.name] = raw
        if fault_values:
            values["faults"] = FaultSettings.from_mapping(fault_values)
        return cls(**values)

    def to_env(self) -> dict[str, str]:
        """The `EMULATOR_*` variables that `from_env` turns back into this config."""
        env: dict[str, str] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "faults" or value is None:
                continue
            env[f"EMULATOR_{f.name.upper()}"] = str(value)
        faults = self.faults.to_dict()
        env["EMULATOR_HTTP_FAULTS"] = json.dumps(faults.pop("http"))
        for key, value in faults.items():
            env[f"EMULATOR_{key.upper()}"] = str(value)
        return env

    def with_overrides(self, **overrides: Any) -> EmulatorConfig:
        """A copy with fields replaced; fault setting names (e.g. `errored_api_rate`,
        `http`) are accepted too and go into `faults`."""
        own = {f.name for f in fields(self)}
        fault_names = {f.name for f in fields(FaultSettings)}
        direct = {k: v for k, v in overrides.items() if k in own}
        fault_part = {k: v for k, v in overrides.items() if k in fault_names}
        unknown = set(overrides) - own - fault_names
        if unknown:
            raise ConfigError(f"unknown emulator settings {sorted(unknown)}")
        config = replace(self, **direct)
        if fault_part:
            config = replace(config, faults=FaultSettings.from_mapping(fault_part, config.faults))
        return config


def _parse_scalar(name: str, raw: str) -> Any:
    try:
        if name in ("port",):
            return int(raw)
        if name == "seed":
            return int(raw)
        if name in ("host", "api_key", "state_dir"):
            return raw
        return float(raw)
    except ValueError as exc:
        raise ConfigError(f"EMULATOR_{name.upper()}={raw!r} is not a valid value") from exc
