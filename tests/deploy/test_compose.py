"""docker-compose.yml is what operators run in production.

No Docker engine runs where these tests run, so the file is parsed, validated
against the compose specification's JSON schema (the copy vendored by the
check-jsonschema package) and held to our contract: start order, pinned images,
secrets kept out of the file, and every variable our services get being one
that invoice_batch.settings reads.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from functools import cache
from importlib.resources import files
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml

from invoice_batch.settings import Settings, load_settings

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
ENV_EXAMPLE = REPO / "deploy" / "env.example"

# Services built from our Dockerfile, and what each runs.
OUR_COMMANDS = {
    "migrate": ["db", "upgrade"],
    "consumer": ["consume"],
    "collector": ["collect"],
    "emulator": ["emulator", "--port", "8080", "--host", "0.0.0.0"],
}
THIRD_PARTY_IMAGES = {
    "kafka": "apache/kafka",
    "kafka-init": "apache/kafka",
    "schema-registry": "confluentinc/cp-schema-registry",
    "postgres": "postgres",
    "prometheus": "prom/prometheus",
    "grafana": "grafana/grafana",
}
ONE_SHOTS = {"kafka-init", "migrate"}
METRICS_PORTS = {"consumer": 9101, "collector": 9102}

# Topics kafka-init creates, with the partition counts the design fixes: six
# input and output partitions bound the useful consumer replicas; the DLQ is
# low-volume and read in order by a person.
CONTRACT_TOPICS = {"invoices": 6, "invoices.classified": 6, "invoices.dlq": 1}

# Variables that compose itself reads (not passed to any container).
COMPOSE_OWN_VARIABLES = {"COMPOSE_PROFILES"}
# Variables of deploy/env.example that must be set, and whose value is secret.
REQUIRED_SECRETS = {"ANTHROPIC_API_KEY", "POSTGRES_PASSWORD", "GRAFANA_ADMIN_PASSWORD"}

SECRET_NAME = re.compile(r"(PASSWORD|SECRET|TOKEN|API_KEY|PRIVATE_KEY)", re.IGNORECASE)
# ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?error}, ${NAME?error}, $NAME; $$ escapes.
REFERENCE = re.compile(
    r"\$\$|\$\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
    r"|\$(?P<bare>[A-Za-z_][A-Za-z0-9_]*)"
)


# --- helpers -------------------------------------------------------------------


@cache
def load_compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


@cache
def compose_schema() -> dict[str, Any]:
    vendored = files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    schema = json.loads(vendored.read_text(encoding="utf-8"))
    assert isinstance(schema, dict)
    return schema


def services() -> dict[str, dict[str, Any]]:
    found = load_compose()["services"]
    assert isinstance(found, dict)
    return found


def environment_of(service: Mapping[str, Any]) -> dict[str, Any]:
    """The environment attribute in either of its compose forms (map or KEY=VALUE list)."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    return dict(env)


def env_example(*, commented: bool = True) -> dict[str, str]:
    """KEY=VALUE lines of deploy/env.example; `commented` includes the #KEY=VALUE ones."""
    values = {}
    pattern = r"#?([A-Z][A-Z0-9_]*)=(.*)" if commented else r"([A-Z][A-Z0-9_]*)=(.*)"
    for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines():
        match = re.fullmatch(pattern, line.strip())
        if match:
            values[match.group(1)] = match.group(2)
    return values


def strings_in(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from strings_in(key)
            yield from strings_in(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings_in(item)


def referenced_variables(value: Any) -> set[str]:
    names = set()
    for text in strings_in(value):
        for match in REFERENCE.finditer(text):
            name = match.group("braced") or match.group("bare")
            if name:
                names.add(name)
    return names


def interpolate(value: Any, env: Mapping[str, str]) -> Any:
    """Compose's variable interpolation, for the forms the file uses."""
    if isinstance(value, str):

        def substitute(match: re.Match[str]) -> str:
            if match.group(0) == "$$":
                return "$"
            name = match.group("braced") or match.group("bare")
            op, arg = match.group("op"), match.group("arg")
            current = env.get(name)
            unset = current is None or (current == "" and op is not None and op.startswith(":"))
            if op in (":-", "-") and unset:
                return arg or ""
            if op in (":?", "?") and unset:
                raise AssertionError(f"compose would refuse to start: {name}: {arg}")
            return current or ""

        return REFERENCE.sub(substitute, value)
    if isinstance(value, Mapping):
        return {key: interpolate(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, env) for item in value]
    return value


def operator_env() -> dict[str, str]:
    """The .env an operator writes from deploy/env.example: secrets filled, the rest default."""
    env = {name: value for name, value in env_example(commented=False).items() if value}
    env.update({name: f"placeholder-{name.lower()}" for name in REQUIRED_SECRETS})
    env["POSTGRES_PASSWORD"] = "0123456789abcdef"
    return env


def settings_variables() -> set[str]:
    return {name.upper() for name in Settings.model_fields if name != "kafka_options"}


def emulator_variables() -> set[str]:
    """Every EMULATOR_* variable the emulator reads (to_env is from_env's inverse)."""
    config = pytest.importorskip("invoice_batch_emulator.config")
    every_field_set = config.EmulatorConfig(api_key="key", state_dir="/state", seed=1)
    return set(every_field_set.to_env())


def dependencies(service: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    depends_on = service.get("depends_on") or {}
    if isinstance(depends_on, list):
        return {name: {"condition": "service_started"} for name in depends_on}
    return dict(depends_on)


def bind_mounts(service: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(host path, container path) of every short-syntax bind mount from the repository."""
    mounts = []
    for volume in service.get("volumes", []):
        if isinstance(volume, str) and volume.startswith("./"):
            host, container = volume.split(":")[:2]
            mounts.append((host, container))
        elif isinstance(volume, Mapping) and volume.get("type") == "bind":
            mounts.append((volume["source"], volume["target"]))
    return mounts


def host_path_of(service: Mapping[str, Any], container_path: PurePosixPath) -> Path | None:
    """Where a file seen inside the container comes from in the repository, if bind-mounted."""
    for host, target in bind_mounts(service):
        target_path = PurePosixPath(target)
        if container_path == target_path or target_path in container_path.parents:
            return REPO / host / container_path.relative_to(target_path)
    return None


# --- the file as a whole ---------------------------------------------------------


def test_compose_file_is_valid_under_the_compose_specification_schema() -> None:
    validator = jsonschema.Draft202012Validator(compose_schema())
    errors = [
        f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(load_compose())
    ]
    assert errors == []


def test_compose_file_stays_valid_once_variables_are_interpolated() -> None:
    validator = jsonschema.Draft202012Validator(compose_schema())
    resolved = interpolate(load_compose(), operator_env())
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(resolved)]
    assert errors == []


def test_schema_check_rejects_a_misspelt_service_attribute() -> None:
    broken = {"services": {"consumer": {"image": "invoice-batch:0.1.0", "dependson": ["kafka"]}}}
    assert not jsonschema.Draft202012Validator(compose_schema()).is_valid(broken)


def test_compose_file_has_no_obsolete_version_key() -> None:
    assert "version" not in load_compose()


def test_stack_defines_every_production_service() -> None:
    assert set(services()) == set(THIRD_PARTY_IMAGES) | set(OUR_COMMANDS)


# --- images ----------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(THIRD_PARTY_IMAGES))
def test_third_party_images_are_pinned_to_a_release(name: str) -> None:
    image = services()[name]["image"]
    repository, _, tag = image.partition(":")
    assert repository == THIRD_PARTY_IMAGES[name]
    assert tag, f"{name}: {image} has no tag, so it means latest"
    assert "latest" not in tag
    assert re.search(r"\d+\.\d+", tag), f"{name}: {image} is not pinned to a version"


def test_kafka_is_a_3_9_or_4_x_release_and_init_uses_the_same_image() -> None:
    image = services()["kafka"]["image"]
    assert re.fullmatch(r"apache/kafka:(3\.9|4\.\d+)\.\d+", image)
    assert services()["kafka-init"]["image"] == image


@pytest.mark.parametrize("name", sorted(OUR_COMMANDS))
def test_our_services_run_our_image_built_from_the_dockerfile(name: str) -> None:
    service = services()[name]
    assert service["build"]["context"] == "."
    assert (REPO / service["build"].get("dockerfile", "Dockerfile")).is_file()
    image = interpolate(service["image"], {})
    assert re.fullmatch(r"invoice-batch:\d+\.\d+\.\d+", image)


@pytest.mark.parametrize(("name", "command"), sorted(OUR_COMMANDS.items()))
def test_our_services_run_the_documented_command(name: str, command: list[str]) -> None:
    assert services()[name]["command"] == command


# --- kafka and topics -----------------------------------------------------------------


def test_kafka_runs_in_kraft_mode_as_combined_broker_and_controller() -> None:
    env = environment_of(services()["kafka"])
    assert set(str(env["KAFKA_PROCESS_ROLES"]).split(",")) == {"broker", "controller"}
    voters = str(env["KAFKA_CONTROLLER_QUORUM_VOTERS"]).split(",")
    assert voters == [f"{env['KAFKA_NODE_ID']}@kafka:9093"]
    assert env["KAFKA_CONTROLLER_LISTENER_NAMES"] in str(env["KAFKA_LISTENERS"])
    assert not any("ZOOKEEPER" in name for name in env)


def test_kafka_has_an_internal_listener_for_the_network_and_an_external_one_for_the_host() -> None:
    env = environment_of(services()["kafka"])
    advertised = dict(
        listener.split("://", 1) for listener in str(env["KAFKA_ADVERTISED_LISTENERS"]).split(",")
    )
    assert advertised["INTERNAL"] == "kafka:29092"
    assert interpolate(advertised["EXTERNAL"], {}) == "localhost:9092"
    assert env["KAFKA_INTER_BROKER_LISTENER_NAME"] == "INTERNAL"
    for name in OUR_COMMANDS:
        bootstrap = environment_of(services()[name]).get("KAFKA_BOOTSTRAP_SERVERS")
        assert bootstrap in (None, "kafka:29092")


def test_kafka_keeps_its_log_in_a_named_volume() -> None:
    kafka = services()["kafka"]
    log_dir = environment_of(kafka)["KAFKA_LOG_DIRS"]
    volumes = {v.split(":")[1]: v.split(":")[0] for v in kafka["volumes"]}
    assert volumes[log_dir] in load_compose()["volumes"]


def test_kafka_does_not_create_topics_on_first_use() -> None:
    env = environment_of(services()["kafka"])
    assert str(env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"]).lower() == "false"


def test_kafka_init_creates_the_contract_topics_with_their_partitions_and_retention() -> None:
    init = services()["kafka-init"]
    script = interpolate("\n".join(init["command"]), {})
    created = {
        topic: (int(partitions), int(retention))
        for topic, partitions, retention in re.findall(
            r'^create "([^"]+)" (\d+) (\d+)$', script, re.M
        )
    }
    assert {topic: partitions for topic, (partitions, _) in created.items()} == CONTRACT_TOPICS
    assert all(retention >= 24 * 3600 * 1000 for _, retention in created.values())
    assert "--if-not-exists" in script, "a second `up` must not fail on existing topics"
    defaults = Settings()
    assert set(created) == {defaults.input_topic, defaults.output_topic, defaults.dlq_topic}


def test_kafka_init_and_our_services_name_the_topics_through_the_same_variables() -> None:
    init_script = "\n".join(services()["kafka-init"]["command"])
    for variable in ("INPUT_TOPIC", "OUTPUT_TOPIC", "DLQ_TOPIC"):
        assert f"${{{variable}:-" in init_script
        for name in ("consumer", "collector"):
            assert environment_of(services()[name])[variable].startswith(f"${{{variable}:-")


# --- postgres -------------------------------------------------------------------------


def test_postgres_is_version_16_with_a_named_data_volume() -> None:
    postgres = services()["postgres"]
    assert postgres["image"].startswith("postgres:16")
    targets = {v.split(":")[1]: v.split(":")[0] for v in postgres["volumes"]}
    assert targets["/var/lib/postgresql/data"] in load_compose()["volumes"]


def test_postgres_reports_readiness_with_pg_isready() -> None:
    assert "pg_isready" in " ".join(services()["postgres"]["healthcheck"]["test"])


# --- health and start order -------------------------------------------------------------


@pytest.mark.parametrize("name", sorted((set(THIRD_PARTY_IMAGES) | set(OUR_COMMANDS)) - ONE_SHOTS))
def test_every_long_running_service_has_a_healthcheck(name: str) -> None:
    healthcheck = services()[name].get("healthcheck")
    assert healthcheck, f"{name} has no healthcheck"
    assert not healthcheck.get("disable")
    assert healthcheck["test"][0] in ("CMD", "CMD-SHELL")


@pytest.mark.parametrize("name", sorted(ONE_SHOTS))
def test_one_shot_services_are_not_restarted(name: str) -> None:
    assert services()[name].get("restart", "no") == "no"


@pytest.mark.parametrize("name", sorted(METRICS_PORTS))
def test_consumer_and_collector_start_after_kafka_topics_registry_and_migrations(name: str) -> None:
    depends_on = dependencies(services()[name])
    conditions = {dep: spec["condition"] for dep, spec in depends_on.items()}
    assert conditions["kafka"] == "service_healthy"
    assert conditions["kafka-init"] == "service_completed_successfully"
    assert conditions["schema-registry"] == "service_healthy"
    assert conditions["postgres"] == "service_healthy"
    assert conditions["migrate"] == "service_completed_successfully"


@pytest.mark.parametrize(
    ("name", "dependency", "condition"),
    [
        ("kafka-init", "kafka", "service_healthy"),
        ("schema-registry", "kafka", "service_healthy"),
        ("migrate", "postgres", "service_healthy"),
        ("grafana", "prometheus", "service_healthy"),
    ],
)
def test_supporting_services_wait_for_what_they_need(
    name: str, dependency: str, condition: str
) -> None:
    assert dependencies(services()[name])[dependency]["condition"] == condition


def test_every_dependency_waited_on_for_health_has_a_healthcheck() -> None:
    for name, service in services().items():
        for dependency, spec in dependencies(service).items():
            assert dependency in services(), f"{name} depends on unknown {dependency}"
            if spec["condition"] == "service_healthy":
                assert services()[dependency].get("healthcheck"), f"{name} → {dependency}"
            if spec["condition"] == "service_completed_successfully":
                assert dependency in ONE_SHOTS, f"{name} waits for {dependency} to exit"


def test_start_order_has_no_cycle() -> None:
    graph = {name: set(dependencies(service)) for name, service in services().items()}
    started: list[str] = []
    while graph:
        ready = sorted(name for name, deps in graph.items() if deps <= set(started))
        assert ready, f"dependency cycle among {sorted(graph)}"
        started.extend(ready)
        for name in ready:
            del graph[name]
    assert started.index("migrate") < started.index("consumer")
    assert started.index("migrate") < started.index("collector")


# --- profiles, scaling and ports -----------------------------------------------------------


def test_emulator_runs_only_under_the_offline_profile() -> None:
    assert services()["emulator"]["profiles"] == ["offline"]
    others = [name for name, service in services().items() if name != "emulator"]
    assert all("profiles" not in services()[name] for name in others)


def test_services_wait_for_the_emulator_only_when_its_profile_is_enabled() -> None:
    for name, service in services().items():
        spec = dependencies(service).get("emulator")
        if spec is not None:
            assert spec.get("required") is False, f"{name} would need --profile offline"


def test_compose_file_explains_how_to_point_the_sdk_at_the_emulator() -> None:
    text = COMPOSE_FILE.read_text(encoding="utf-8")
    assert "ANTHROPIC_BASE_URL=http://emulator:8080" in text
    assert "--profile offline" in text
    assert "ANTHROPIC_BASE_URL=http://emulator:8080" in ENV_EXAMPLE.read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("name", "variable"), [("consumer", "CONSUMER_REPLICAS"), ("collector", "COLLECTOR_REPLICAS")]
)
def test_replicas_are_set_from_the_environment_and_default_to_one(name: str, variable: str) -> None:
    replicas = services()[name]["deploy"]["replicas"]
    assert replicas == f"${{{variable}:-1}}"
    assert interpolate(replicas, {variable: "4"}) == "4"
    assert "container_name" not in services()[name], "a fixed name forbids replicas"


@pytest.mark.parametrize(("name", "port"), sorted(METRICS_PORTS.items()))
def test_metrics_ports_are_reachable_only_inside_the_compose_network(name: str, port: int) -> None:
    service = services()[name]
    assert "ports" not in service, "replicas cannot share a host port"
    assert str(port) in [str(p) for p in service["expose"]]
    assert int(environment_of(service)["METRICS_PORT"]) == port


@pytest.mark.parametrize(("name", "port"), sorted(METRICS_PORTS.items()))
def test_healthchecks_of_our_services_probe_healthz_on_their_own_metrics_port(
    name: str, port: int
) -> None:
    test = " ".join(services()[name]["healthcheck"]["test"])
    assert f"http://127.0.0.1:{port}/healthz" in test
    assert "curl" not in test and "wget" not in test, "the slim image has neither"


def test_ports_published_on_the_host_bind_to_loopback_only() -> None:
    for name, service in services().items():
        for port in service.get("ports", []):
            assert isinstance(port, str), f"{name}: use the short syntax with an address"
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} on every interface"


# --- secrets and environment ----------------------------------------------------------------


def test_secrets_are_never_written_as_literal_values() -> None:
    for name, service in services().items():
        for variable, value in environment_of(service).items():
            if not SECRET_NAME.search(variable):
                continue
            text = str(value)
            if variable.endswith("_FILE") or variable.endswith("__FILE"):
                assert text.startswith("/run/secrets/"), f"{name}: {variable}={text}"
                continue
            match = REFERENCE.fullmatch(text)
            assert match, f"{name}: {variable} must come from .env, not the file"
            assert match.group("op") in (None, ":?", "?"), f"{name}: {variable} has a default"


def test_the_database_password_is_interpolated_from_the_environment() -> None:
    for name in ("migrate", "consumer", "collector"):
        raw = environment_of(services()[name])["DATABASE_URL"]
        scheme_and_user = raw.partition("@postgres:")[0]
        password = scheme_and_user.split(":", 2)[2]
        assert REFERENCE.fullmatch(password), f"{name}: the password is written in the file"
        assert password.startswith("${POSTGRES_PASSWORD:?")
        url = urlsplit(interpolate(raw, {"POSTGRES_PASSWORD": "s3cret"}))
        assert (url.scheme, url.username, url.password) == (
            "postgresql+psycopg",
            "invoice_batch",
            "s3cret",
        )
        assert (url.hostname, url.port, url.path) == ("postgres", 5432, "/invoice_batch")


def test_postgres_and_grafana_read_their_passwords_from_compose_secrets() -> None:
    declared = load_compose()["secrets"]
    for name, variable in (
        ("postgres", "POSTGRES_PASSWORD_FILE"),
        ("grafana", "GF_SECURITY_ADMIN_PASSWORD__FILE"),
    ):
        service = services()[name]
        secret = environment_of(service)[variable].removeprefix("/run/secrets/")
        assert secret in service["secrets"]
        assert set(declared[secret]) == {"environment"}, "secrets come from .env, never inline"


def test_our_services_get_no_env_file_that_could_leak_unrelated_variables() -> None:
    # An env_file hands every line of .env to the container: the other services'
    # passwords, and any KAFKA_* line, which settings would give to librdkafka.
    for name in OUR_COMMANDS:
        assert "env_file" not in services()[name]


def test_only_the_services_that_call_claude_get_the_api_key() -> None:
    holders = {
        name
        for name, service in services().items()
        if "ANTHROPIC_API_KEY" in environment_of(service)
    }
    assert holders == {"consumer", "collector"}


@pytest.mark.parametrize("name", sorted(OUR_COMMANDS))
def test_every_variable_given_to_our_services_is_one_they_read(name: str) -> None:
    allowed = settings_variables()
    if name == "emulator":
        allowed |= emulator_variables()
    for variable in environment_of(services()[name]):
        known = variable in allowed or variable.startswith("KAFKA_")
        assert known, f"{name}: {variable} is neither a setting, KAFKA_* nor an emulator knob"


@pytest.mark.parametrize("name", sorted(METRICS_PORTS))
def test_the_environment_of_each_service_loads_into_valid_settings(name: str) -> None:
    env = interpolate(environment_of(services()[name]), operator_env())
    settings = load_settings({key: str(value) for key, value in env.items()})
    assert settings.kafka_bootstrap_servers == "kafka:29092"
    assert settings.schema_registry_url == "http://schema-registry:8081"
    assert settings.sqlalchemy_url().startswith("postgresql+psycopg://invoice_batch:")
    assert settings.anthropic_api_key is not None
    assert settings.anthropic_base_url is None, "the real API unless ANTHROPIC_BASE_URL is set"
    assert settings.metrics_port == METRICS_PORTS[name]
    defaults = Settings()
    assert (settings.input_topic, settings.output_topic, settings.dlq_topic) == (
        defaults.input_topic,
        defaults.output_topic,
        defaults.dlq_topic,
    )
    assert settings.kafka_options == {}, "no stray KAFKA_* variable reaches librdkafka"


def test_offline_settings_point_the_sdk_at_the_emulator_service() -> None:
    env = operator_env() | {"ANTHROPIC_BASE_URL": "http://emulator:8080"}
    consumer = interpolate(environment_of(services()["consumer"]), env)
    settings = load_settings({key: str(value) for key, value in consumer.items()})
    assert settings.anthropic_base_url == "http://emulator:8080"
    assert "8080" in [str(port) for port in services()["emulator"]["expose"]]


def test_every_variable_the_compose_file_reads_is_documented_in_env_example() -> None:
    documented = set(env_example())
    secret_sources = {secret["environment"] for secret in load_compose()["secrets"].values()}
    used = referenced_variables(load_compose()) | secret_sources
    assert used - documented == set()
    assert documented - used - COMPOSE_OWN_VARIABLES == set(), "env.example lists unused knobs"


def test_env_example_leaves_every_secret_empty() -> None:
    example = env_example()
    for variable in REQUIRED_SECRETS:
        assert example[variable] == "", f"{variable} has a value in a committed file"


def test_the_real_env_file_is_ignored_by_git() -> None:
    ignored = (REPO / ".gitignore").read_text(encoding="utf-8").splitlines()
    assert ".env" in ignored


# --- files mounted from the repository ------------------------------------------------------


def test_every_host_path_mounted_from_the_repository_exists() -> None:
    for name, service in services().items():
        for host, _ in bind_mounts(service):
            assert (REPO / host).exists(), f"{name} mounts {host}, which is not in the repository"


def test_prometheus_and_grafana_mount_their_configuration_where_the_images_read_it() -> None:
    prometheus = dict(bind_mounts(services()["prometheus"]))
    assert prometheus["./deploy/prometheus/prometheus.yml"] == "/etc/prometheus/prometheus.yml"
    assert prometheus["./deploy/prometheus/rules/"].rstrip("/") == "/etc/prometheus/rules"
    assert "--config.file=/etc/prometheus/prometheus.yml" in services()["prometheus"]["command"]
    grafana = dict(bind_mounts(services()["grafana"]))
    assert grafana["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    assert grafana["./deploy/grafana/dashboards"] == "/var/lib/grafana/dashboards"


def test_prometheus_scrapes_our_services_by_compose_name_and_metrics_port() -> None:
    config = yaml.safe_load((REPO / "deploy/prometheus/prometheus.yml").read_text(encoding="utf-8"))
    targets = set()
    for job in config["scrape_configs"]:
        for static in job.get("static_configs", []):
            targets.update(static["targets"])
        # DNS discovery finds every replica behind a compose service name.
        for dns in job.get("dns_sd_configs", []):
            targets.update(f"{name}:{dns['port']}" for name in dns["names"])
    assert {f"{name}:{port}" for name, port in METRICS_PORTS.items()} <= targets


def test_prometheus_rule_files_resolve_inside_the_container_to_files_in_the_repository() -> None:
    prometheus = services()["prometheus"]
    config = yaml.safe_load((REPO / "deploy/prometheus/prometheus.yml").read_text(encoding="utf-8"))
    for rule_file in config.get("rule_files", []):
        in_container = PurePosixPath("/etc/prometheus") / rule_file
        host = host_path_of(prometheus, in_container)
        assert host is not None, f"{in_container} is not mounted into the prometheus container"
        assert list(host.parent.glob(host.name)), f"{rule_file} matches no file in {host.parent}"


def grafana_provisioning(kind: str) -> list[dict[str, Any]]:
    folder = REPO / "deploy/grafana/provisioning" / kind
    documents = []
    for path in sorted(folder.glob("*.y*ml")):
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
        assert isinstance(document, dict), f"{path} is not a provisioning document"
        documents.append(document)
    return documents


def test_grafana_reads_prometheus_at_its_compose_address() -> None:
    sources = [
        source
        for document in grafana_provisioning("datasources")
        for source in document.get("datasources", [])
        if source.get("type") == "prometheus"
    ]
    assert sources, "no Prometheus data source is provisioned"
    prometheus_port = services()["prometheus"]["ports"][0].rsplit(":", 1)[1]
    for source in sources:
        url = urlsplit(source["url"])
        assert (url.hostname, str(url.port)) == ("prometheus", prometheus_port)


def test_grafana_loads_dashboards_from_the_mounted_dashboards_folder() -> None:
    mounted = PurePosixPath(dict(bind_mounts(services()["grafana"]))["./deploy/grafana/dashboards"])
    providers = [
        provider
        for document in grafana_provisioning("dashboards")
        for provider in document.get("providers", [])
    ]
    assert providers, "no dashboard provider is provisioned"
    for provider in providers:
        path = PurePosixPath(provider["options"]["path"])
        assert path == mounted or mounted in path.parents, f"{path} is not the mounted folder"
    assert list((REPO / "deploy/grafana/dashboards").glob("*.json")), "no dashboard to load"
