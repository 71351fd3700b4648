"""A real Prometheus server for tests, and the PromQL read from the deployment files.

``running_prometheus`` starts the ``prometheus`` binary (Debian's ``prometheus``
package; ``make tools`` installs it) on a free loopback port with a temporary
config and TSDB, scraping the given targets every second and evaluating the given
rule files every second. ``query`` runs an instant query. ``dashboard_expressions``
and ``rule_expressions`` return every PromQL expression of the Grafana dashboard
and the rule files, and ``metric_names`` / ``vector_selectors`` / ``label_names``
take one apart, so tests can check each against the metrics the services expose.
"""

from __future__ import annotations

import functools
import json
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import yaml

# One second keeps a test short: a rate() needs two samples, so the first one is
# there about 2 s after a target starts.
SCRAPE_INTERVAL = "1s"

# A cold start of Prometheus 2.x with an empty TSDB takes well under a second;
# 30 s leaves room for a loaded CI machine without hiding a hang.
STARTUP_TIMEOUT_SECONDS = 30.0

# Another process may take the free port between our probe and Prometheus' bind.
_START_ATTEMPTS = 3

# Grafana's built-in variables, replaced by durations Prometheus accepts.
GRAFANA_DURATIONS = {
    "$__rate_interval": "1m",
    "${__rate_interval}": "1m",
    "$__interval": "15s",
    "${__interval}": "15s",
    "$__range": "1h",
    "${__range}": "1h",
}


class PrometheusError(RuntimeError):
    """Prometheus did not start, or it answered a query with an error."""


def find_prometheus() -> str | None:
    """Path of the ``prometheus`` server binary, or None when it is not installed."""
    return shutil.which("prometheus")


def find_promtool() -> str | None:
    """Path of ``promtool``, or None when it is not installed."""
    return shutil.which("promtool")


# --- the server ---------------------------------------------------------------------


def prometheus_config(
    targets: Mapping[str, str],
    rule_files: Sequence[Path] = (),
    *,
    base_config: Path | None = None,
) -> dict[str, Any]:
    """A Prometheus config scraping ``targets`` (job name -> ``host:port``) every second.

    With ``base_config`` (deploy/prometheus/prometheus.yml) each job keeps its
    scrape settings, relabelling and target labels from that file and only its
    discovery is replaced by the given address, so a test scrapes loopback
    services the way compose scrapes the containers. Rule files are made
    absolute: the config lives in a temp dir.
    """
    base_jobs: dict[str, dict[str, Any]] = {}
    if base_config is not None:
        loaded = yaml.safe_load(base_config.read_text(encoding="utf-8")) or {}
        base_jobs = {job["job_name"]: job for job in loaded.get("scrape_configs", [])}
    scrape_configs = []
    for job, address in targets.items():
        job_config = dict(base_jobs.get(job, {"job_name": job}))
        target_labels: dict[str, str] = {}
        for static in job_config.get("static_configs", []):
            target_labels.update(static.get("labels", {}))
        # The global interval applies; a per-job one from the base file would slow the test.
        job_config.pop("scrape_interval", None)
        job_config.pop("scrape_timeout", None)
        # Service discovery (dns_sd_configs in compose) gives way to the loopback address.
        for key in [key for key in job_config if key.endswith("_sd_configs")]:
            del job_config[key]
        static_config: dict[str, Any] = {"targets": [address]}
        if target_labels:
            static_config["labels"] = target_labels
        job_config["static_configs"] = [static_config]
        scrape_configs.append(job_config)
    return {
        "global": {
            "scrape_interval": SCRAPE_INTERVAL,
            "scrape_timeout": SCRAPE_INTERVAL,
            "evaluation_interval": SCRAPE_INTERVAL,
        },
        "rule_files": [str(Path(path).resolve()) for path in rule_files],
        "scrape_configs": scrape_configs,
    }


def free_loopback_port() -> int:
    """A TCP port nothing listens on right now (it may be taken again before use)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def running_prometheus(
    targets: Mapping[str, str],
    rule_files: Sequence[Path] = (),
    *,
    base_config: Path | None = None,
    binary: str | None = None,
) -> Iterator[str]:
    """Run a Prometheus server scraping ``targets``; yield its base URL.

    ``targets`` maps a job name to ``host:port``. The server listens on a free
    loopback port, keeps its TSDB in a temporary directory and is ready (its
    ``/-/ready`` answers 200) when the URL is yielded; it is stopped and its
    directory removed on exit. Raises PrometheusError with the tail of its log
    when it does not become ready, e.g. because a rule file does not parse.
    """
    executable = binary or find_prometheus()
    if executable is None:
        raise PrometheusError("the prometheus binary is not on PATH (run `make tools`)")
    with tempfile.TemporaryDirectory(prefix="prometheus-") as workdir:
        config_path = Path(workdir) / "prometheus.yml"
        config = prometheus_config(targets, rule_files, base_config=base_config)
        config_path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        log_path = Path(workdir) / "prometheus.log"
        for attempt in range(1, _START_ATTEMPTS + 1):
            port = free_loopback_port()
            base_url = f"http://127.0.0.1:{port}"
            with log_path.open("wb") as log:
                process = subprocess.Popen(
                    [
                        executable,
                        f"--config.file={config_path}",
                        f"--storage.tsdb.path={Path(workdir) / 'data'}",
                        f"--web.listen-address=127.0.0.1:{port}",
                        "--log.level=warn",
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                )
            try:
                if _wait_until_ready(process, base_url):
                    yield base_url
                    return
                log_text = log_path.read_text(encoding="utf-8", errors="replace")
                if "address already in use" in log_text and attempt < _START_ATTEMPTS:
                    continue
                raise PrometheusError(
                    f"prometheus did not become ready on {base_url}:\n{log_text[-4000:]}"
                )
            finally:
                _stop(process)


def _wait_until_ready(process: subprocess.Popen[bytes], base_url: str) -> bool:
    deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
    client = _http()
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        try:
            if client.get(f"{base_url}/-/ready", timeout=2.0).status_code == 200:
                return True
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    return False


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.terminate()  # SIGTERM: Prometheus closes its TSDB and exits
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


@functools.cache
def _http() -> httpx.Client:
    # One client for all queries: building one loads the TLS trust store, which
    # costs tens of milliseconds, and a test may ask a hundred queries.
    return httpx.Client(timeout=10.0)


def query(base_url: str, promql: str) -> list[dict[str, Any]]:
    """Evaluate ``promql`` now; return the result series (``metric`` and ``value``).

    A scalar or string result comes back as one series without labels. Raises
    PrometheusError when Prometheus rejects the expression (bad syntax, unknown
    function) or fails to evaluate it.
    """
    response = _http().get(f"{base_url}/api/v1/query", params={"query": promql})
    try:
        body = response.json()
    except json.JSONDecodeError:
        raise PrometheusError(f"{promql}: HTTP {response.status_code}: {response.text}") from None
    if body.get("status") != "success":
        raise PrometheusError(f"{promql}: {body.get('errorType')}: {body.get('error')}")
    data = body["data"]
    if data["resultType"] in ("scalar", "string"):
        return [{"metric": {}, "value": data["result"]}]
    result: list[dict[str, Any]] = data["result"]
    return result


def wait_for_series(base_url: str, promql: str, timeout: float = 15.0) -> list[dict[str, Any]]:
    """Query until ``promql`` returns at least one series; raise TimeoutError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = query(base_url, promql)
        if result:
            return result
        if time.monotonic() >= deadline:
            raise TimeoutError(f"no series for {promql} within {timeout} s")
        time.sleep(0.2)


# --- PromQL in the deployment files -------------------------------------------------


def dashboard_expressions(
    path: Path, *, durations: Mapping[str, str] = GRAFANA_DURATIONS
) -> list[str]:
    """Every ``expr`` of every panel target in a Grafana dashboard JSON file.

    Panels nested in collapsed rows count too. Grafana's ``$__rate_interval``,
    ``$__interval`` and ``$__range`` are replaced by ``durations`` so that the
    result is plain PromQL that Prometheus evaluates.
    """
    dashboard = json.loads(path.read_text(encoding="utf-8"))
    expressions = []
    for panel in iter_panels(dashboard):
        for target in panel.get("targets", []):
            expr = target.get("expr", "")
            if expr.strip():
                expressions.append(substitute_grafana_variables(expr, durations))
    return expressions


def iter_panels(dashboard: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel of a dashboard, including rows and the panels inside collapsed rows."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def substitute_grafana_variables(
    expr: str, durations: Mapping[str, str] = GRAFANA_DURATIONS
) -> str:
    """``expr`` with Grafana's interval variables replaced by fixed durations."""
    # longest first, so that "$__rate_interval" is not read as "$__r" + "ate_interval"
    for variable in sorted(durations, key=len, reverse=True):
        expr = expr.replace(variable, durations[variable])
    return expr


def rule_expressions(paths: Iterable[Path]) -> list[str]:
    """The ``expr`` of every recording and alerting rule in the given rule files."""
    return [rule["expr"] for rule in iter_rules(paths)]


def iter_rules(paths: Iterable[Path]) -> Iterator[dict[str, Any]]:
    """Every rule (a dict with ``record`` or ``alert``) of every group in the files."""
    for path in paths:
        document = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        for group in document.get("groups", []):
            yield from group.get("rules", [])


_STRING = r""""(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`"""
_MATCHERS = r"""\{(?:[^{}"']|"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*')*\}"""
_GROUPING = r"(?i:\b(?:by|without|on|ignoring|group_left|group_right))"
_TOKENS = re.compile(
    rf"""
      (?P<string>{_STRING})
    | (?P<grouping>{_GROUPING}\s*\((?P<labels>[^()]*)\))
    | (?P<range>\[[^\[\]]*\])
    | (?P<number>(?<![\w:])(?:0[xX][0-9a-fA-F]+|\d+(?:\.\d*)?(?:[eE][+-]?\d+)?|\.\d+)[a-zA-Z]*)
    | (?P<selector>(?P<name>[a-zA-Z_:][\w:]*)\s*(?P<matchers>{_MATCHERS})?)
    | (?P<bare>{_MATCHERS})
    """,
    re.VERBOSE,
)
_MATCHER = re.compile(rf"""([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)\s*(?:{_STRING})""")

# Words that look like metric names but are PromQL operators and modifiers.
_KEYWORDS = frozenset(
    {
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "atan2",
        "inf",
        "nan",
        "start",
        "end",
        # aggregation operators, which may be followed by `by (...)` before their "("
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
        "limitk",
        "limit_ratio",
    }
)


def vector_selectors(expr: str) -> list[str]:
    """The vector selectors of ``expr`` as written, e.g. ``up{job="x"}``.

    A light scanner, not a parser: it knows strings, label matchers, grouping
    clauses, ranges, numbers and durations, which is all the PromQL in deploy/
    uses. Function names are recognised by the "(" that follows them.
    """
    selectors = []
    for match in _TOKENS.finditer(expr):
        name = match.group("name")
        if name is None or name.lower() in _KEYWORDS:
            continue
        if match.group("matchers") is None and expr[match.end() :].lstrip().startswith("("):
            continue  # a function call such as rate(...)
        selectors.append(match.group("selector").strip())
    return selectors


def metric_names(expr: str) -> set[str]:
    """The metric names ``expr`` reads."""
    return {re.split(r"[\s{]", selector, maxsplit=1)[0] for selector in vector_selectors(expr)}


def label_names(expr: str) -> set[str]:
    """The label names in the matchers and grouping clauses of ``expr``."""
    labels: set[str] = set()
    for match in _TOKENS.finditer(expr):
        if match.group("labels") is not None:
            labels.update(part.strip() for part in match.group("labels").split(",") if part.strip())
        for matchers in (match.group("matchers"), match.group("bare")):
            if matchers:
                labels.update(_MATCHER.findall(matchers))
    return labels
