"""The Dockerfile builds the one image every service of ours runs.

No Docker engine runs where these tests run: the Dockerfile is parsed with
dockerfile-parse and held to what the image promises (a pinned slim Python 3.11
base, a wheel built in one stage and installed in the next, a non-root user, the
console script as entry point, a /healthz check that needs only the stdlib). The
healthcheck command itself is run against a loopback HTTP server.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
from dockerfile_parse import DockerfileParser

from invoice_batch.settings import DEFAULT_DATABASE_URL, Settings

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"

Instruction = dict[str, Any]


# --- helpers -------------------------------------------------------------------


@cache
def parser() -> DockerfileParser:
    # Read once; the parser only writes when its content is assigned, which no test does.
    return DockerfileParser(path=str(DOCKERFILE), cache_content=True)


@cache
def pyproject() -> dict[str, Any]:
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


def stages() -> list[list[Instruction]]:
    """Instructions grouped by stage, each list starting with its FROM."""
    grouped: list[list[Instruction]] = []
    for instruction in parser().structure:
        if instruction["instruction"] == "FROM":
            grouped.append([])
        if grouped and instruction["instruction"] != "COMMENT":
            grouped[-1].append(instruction)
    return grouped


def stage_named(name: str) -> list[Instruction]:
    for stage in stages():
        if stage[0]["value"].split()[-1] == name and " AS " in stage[0]["value"].upper():
            return stage
    raise AssertionError(f"no stage named {name}")


def final_stage() -> list[Instruction]:
    return stages()[-1]


def values(stage: list[Instruction], kind: str) -> list[str]:
    return [i["value"] for i in stage if i["instruction"] == kind]


def last_value(stage: list[Instruction], kind: str) -> str:
    found = values(stage, kind)
    assert found, f"the stage has no {kind}"
    return found[-1]


def healthcheck_command() -> list[str]:
    command = last_value(final_stage(), "HEALTHCHECK").partition(" CMD ")[2]
    assert command, "HEALTHCHECK without CMD"
    argv = json.loads(command)
    assert isinstance(argv, list)
    return argv


def copy_sources(stage: list[Instruction]) -> list[str]:
    """Build-context paths copied by COPY instructions (not --from another stage)."""
    sources = []
    for value in values(stage, "COPY"):
        tokens = shlex.split(value)
        if any(token.startswith("--from") for token in tokens):
            continue
        paths = [token for token in tokens if not token.startswith("--")]
        sources.extend(paths[:-1])
    return sources


def dockerignore_rules() -> list[tuple[re.Pattern[str], bool]]:
    """(pattern, re-include) pairs; later rules win, as in Docker."""
    rules = []
    for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        include = line.startswith("!")
        pattern = line.removeprefix("!").strip("/")
        regex = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex, i = regex + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                regex, i = regex + ".*", i + 2
            elif pattern[i] == "*":
                regex, i = regex + "[^/]*", i + 1
            elif pattern[i] == "?":
                regex, i = regex + "[^/]", i + 1
            elif pattern[i] == "[":
                end = pattern.index("]", i)
                regex, i = regex + pattern[i : end + 1], end + 1
            else:
                regex, i = regex + re.escape(pattern[i]), i + 1
        rules.append((re.compile(regex), include))
    return rules


def is_ignored(path: str) -> bool:
    """Whether Docker leaves `path` (relative to the context) out of the build context.

    A rule that matches a folder applies to everything under it.
    """
    candidates = [path, *(str(parent) for parent in PurePosixPath(path).parents)][:-1]
    ignored = False
    for pattern, include in dockerignore_rules():
        if any(pattern.fullmatch(candidate) for candidate in candidates):
            ignored = not include
    return ignored


def files_under(source: str) -> Iterator[str]:
    """The repository's files under ``source`` (build outputs such as the compiled
    extension are not the repository's: .dockerignore keeps them out on purpose)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--", source],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.decode()
    yield from sorted(name for name in listed.split("\0") if name)


class _Health(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/healthz" else 404)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def health_server(status: int) -> Iterator[int]:
    handler = type("Handler", (_Health,), {"status": status})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    # A short poll interval: shutdown() waits up to one interval.
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def run_healthcheck(port: int) -> int:
    program, *args = healthcheck_command()
    assert program == "python"
    env = {"METRICS_PORT": str(port), "PATH": "/usr/bin:/bin"}
    # -I: the command needs only the stdlib, so skip site-packages and start fast.
    argv = [sys.executable, "-I", *args]
    return subprocess.run(argv, env=env, capture_output=True, timeout=20).returncode


# --- base image and stages ---------------------------------------------------------


def test_every_stage_starts_from_a_pinned_slim_python_3_11_image() -> None:
    for image in parser().parent_images:
        assert re.fullmatch(r"python:3\.11\.\d+-slim(-[a-z]+)?(@sha256:[0-9a-f]{64})?", image), (
            image
        )


def test_image_is_built_in_two_stages_a_wheel_builder_and_a_runtime() -> None:
    assert parser().is_multistage
    assert len(stages()) == 2
    assert any("pip wheel" in run for run in values(stage_named("build"), "RUN"))
    assert final_stage()[0]["value"].split()[-1] == "runtime"


def test_runtime_installs_only_the_wheels_built_in_the_build_stage() -> None:
    installs = [run for run in values(final_stage(), "RUN") if "pip install" in run]
    assert len(installs) == 1
    install = installs[0]
    assert "from=build" in install, "the wheels come from the build stage"
    assert "--no-index" in install, "nothing is fetched while the runtime stage builds"
    assert "type=bind" in install, "the wheels are mounted, so they are not kept as a layer"
    assert values(final_stage(), "COPY") == [], "the runtime stage copies no source"


def test_buildkit_syntax_is_declared_for_the_run_mounts() -> None:
    first_line = DOCKERFILE.read_text(encoding="utf-8").splitlines()[0]
    assert re.fullmatch(r"# syntax=docker/dockerfile:1(\.\d+)*", first_line)


def test_build_copies_every_folder_that_pyproject_maps_to_a_package() -> None:
    copied = {source.rstrip("/") for source in copy_sources(stage_named("build"))}
    package_folders = set(pyproject()["tool"]["setuptools"]["package-dir"].values())
    assert package_folders <= copied
    assert {"pyproject.toml", pyproject()["project"]["readme"]} <= copied


def test_every_path_the_build_copies_is_in_the_repository_and_in_the_build_context() -> None:
    for source in copy_sources(stage_named("build")):
        assert (REPO / source).exists(), f"COPY {source}: not in the repository"
        for path in files_under(source):
            assert not is_ignored(path), f"{path} is copied but .dockerignore leaves it out"


@pytest.mark.parametrize(
    "path",
    [
        ".env",
        "deploy/.env",
        ".git/config",
        ".venv/bin/python",
        "var/invoice-batch.db",
        "tests/unit/test_x.py",
        "invoice_batch/__pycache__/cli.cpython-311.pyc",
        "invoice_batch.egg-info/PKG-INFO",
    ],
)
def test_build_context_leaves_out_secrets_local_state_and_byte_code(path: str) -> None:
    assert is_ignored(path)


def test_dependency_step_writes_the_dependencies_declared_in_pyproject(tmp_path: Path) -> None:
    build_runs = values(stage_named("build"), "RUN")
    step = next(run for run in build_runs if "requirements.txt" in run and "tomllib" in run)
    program, flag, code = shlex.split(step.split("&&")[0])[:3]
    assert (program, flag) == ("python", "-c")
    (tmp_path / "pyproject.toml").write_bytes((REPO / "pyproject.toml").read_bytes())
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, check=True, timeout=20)
    written = (tmp_path / "requirements.txt").read_text(encoding="utf-8").split()
    assert written == pyproject()["project"]["dependencies"]


# --- runtime stage ------------------------------------------------------------------------


def test_final_stage_runs_as_a_non_root_user_created_with_that_uid() -> None:
    user = last_value(final_stage(), "USER")
    uid = user.split(":")[0]
    assert uid not in ("root", "0"), "the services must not run as root"
    assert uid.isdigit(), "a numeric uid lets orchestrators verify runAsNonRoot"
    assert any(f"--uid {uid}" in run for run in values(final_stage(), "RUN"))


def test_var_directory_exists_and_belongs_to_the_service_user() -> None:
    workdir = PurePosixPath(last_value(final_stage(), "WORKDIR"))
    sqlite_dir = PurePosixPath(DEFAULT_DATABASE_URL.removeprefix("sqlite:///")).parent
    var_dir = workdir / sqlite_dir
    assert var_dir == PurePosixPath("/app/var")
    runs = " ".join(values(final_stage(), "RUN"))
    assert f"mkdir -p {var_dir}" in runs
    assert re.search(rf"chown \S+ {re.escape(str(var_dir))}", runs)


def test_entrypoint_is_the_console_script_declared_in_pyproject() -> None:
    entrypoint = json.loads(last_value(final_stage(), "ENTRYPOINT"))
    assert entrypoint == ["invoice-batch"], "exec form, so the service itself gets SIGTERM"
    assert "invoice-batch" in pyproject()["project"]["scripts"]


def test_default_command_runs_the_consumer() -> None:
    assert json.loads(last_value(final_stage(), "CMD")) == ["consume"]


def test_image_exposes_the_consumer_and_collector_metrics_ports() -> None:
    exposed = {int(port) for port in last_value(final_stage(), "EXPOSE").split()}
    defaults = Settings()
    assert exposed == {
        defaults.metrics_port_for("consumer"),
        defaults.metrics_port_for("collector"),
    }


def test_healthcheck_requests_healthz_on_the_metrics_port_with_the_stdlib_only() -> None:
    command = healthcheck_command()
    code = " ".join(command)
    assert command[:2] == ["python", "-c"]
    assert "urllib.request" in code and "/healthz" in code
    assert "METRICS_PORT" in code
    assert "curl" not in code and "wget" not in code, "the slim base has neither"
    options = last_value(final_stage(), "HEALTHCHECK").partition(" CMD ")[0]
    assert re.search(r"--timeout=\d+s", options)


def test_healthcheck_passes_when_healthz_answers_200() -> None:
    with health_server(200) as port:
        assert run_healthcheck(port) == 0


def test_healthcheck_fails_when_healthz_answers_an_error() -> None:
    with health_server(503) as port:
        assert run_healthcheck(port) != 0


def test_healthcheck_fails_when_nothing_listens() -> None:
    with health_server(200) as port:
        pass
    assert run_healthcheck(port) != 0


def test_python_writes_no_byte_code_and_logs_unbuffered() -> None:
    env = " ".join(values(final_stage(), "ENV"))
    assert "PYTHONDONTWRITEBYTECODE=1" in env
    assert "PYTHONUNBUFFERED=1" in env


def test_the_build_stage_compiles_the_extension_into_the_wheel() -> None:
    """setup.py builds invoice_batch/_avro_rows.c; the slim image has no compiler."""
    build = stage_named("build")
    runs = values(build, "RUN")
    copied = {source.rstrip("/") for source in copy_sources(build)}
    assert "setup.py" in copied
    assert any("gcc" in run and "apt-get install" in run for run in runs)
    assert any("libssl-dev" in run and "apt-get install" in run for run in runs)
    wheel_step = next(run for run in runs if "pip wheel --no-deps" in run)
    assert "_avro_rows" in wheel_step, "the build checks that the wheel holds the extension"
