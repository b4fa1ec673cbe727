"""Packaging: a plain ``pip install .`` gets ONNX Runtime (CPU), the GPU route swaps it for
onnxruntime-gpu (never both: they share the ``onnxruntime`` import directory), and ``make test`` runs
the suite with coverage per package. The Makefile is read through ``make -n`` (what it would run),
so nothing is installed here.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from deploy_support import REPO

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
PACKAGES = ("asasnn", "models", "service", "training")


def name_of(req: str) -> str:
    return re.match(r"[A-Za-z0-9._-]+", req).group().lower().replace("_", "-")  # type: ignore[union-attr]


def test_onnxruntime_is_a_base_dependency() -> None:
    project = PYPROJECT["project"]
    assert "onnxruntime" in {name_of(r) for r in project["dependencies"]}
    extras = project["optional-dependencies"]
    assert extras.get("cpu") == [], "`cpu` stays as an empty alias: `pip install .[cpu,dev]` keeps working"
    assert "gpu" not in extras, (
        "an extra can only add onnxruntime-gpu beside onnxruntime: the GPU route swaps"
    )
    for extra, reqs in extras.items():
        assert not {name_of(r) for r in reqs} & {"onnxruntime", "onnxruntime-gpu"}, extra
    assert name_of(PYPROJECT["tool"]["asasnn"]["onnxruntime-gpu"]) == "onnxruntime-gpu"


def test_python_pytest_and_coverage_settings() -> None:
    assert PYPROJECT["project"]["requires-python"] == ">=3.11"
    opts = PYPROJECT["tool"]["pytest"]["ini_options"]
    assert "--strict-markers" in opts["addopts"].split()
    assert {"cuda", "slow"} <= {m.split(":")[0] for m in opts["markers"]}
    assert "pytest-cov" in {name_of(r) for r in PYPROJECT["project"]["optional-dependencies"]["dev"]}


def test_this_environment_has_one_onnxruntime() -> None:
    from importlib.metadata import distributions

    names = {d.metadata["Name"].lower().replace("_", "-") for d in distributions()}
    assert len(names & {"onnxruntime", "onnxruntime-gpu"}) == 1, sorted(
        n for n in names if "onnxruntime" in n
    )


def make_dry_run(target: str, tmp_path: Path, **variables: str) -> list[str]:
    """The commands ``make TARGET`` would run (``-n``: none is run; ``-B``: as if nothing were installed)."""
    make = shutil.which("make")
    if make is None:
        pytest.skip("make not found")
    args = [f"{k}={v}" for k, v in {"VENV": str(tmp_path / "venv"), **variables}.items()]
    r = subprocess.run(
        [make, "-n", "-B", "-C", str(REPO), target, *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    return [line for line in r.stdout.splitlines() if line and not line.startswith("make")]


def pip_steps(lines: list[str]) -> list[str]:
    return [line.split("/bin/pip ", 1)[1] for line in lines if "/bin/pip " in line]


@pytest.mark.parametrize("switch", [{"GPU": "1"}, {"EXTRAS": "gpu,dev"}], ids=["GPU=1", "EXTRAS=gpu,dev"])
def test_make_install_gpu_swaps_onnxruntime(switch: dict[str, str], tmp_path: Path) -> None:
    """Install the project (which pulls onnxruntime), uninstall both ONNX Runtimes, install onnxruntime-gpu
    alone, from pyproject's requirement; `gpu` never reaches pip as an extra."""
    steps = pip_steps(make_dry_run("install", tmp_path, **switch))
    project = next(i for i, s in enumerate(steps) if s.startswith("install --quiet -e"))
    assert shlex.split(steps[project])[-1] == ".[dev]"
    uninstall = next(i for i, s in enumerate(steps) if s.startswith("uninstall"))
    assert project < uninstall and {"onnxruntime", "onnxruntime-gpu"} <= set(shlex.split(steps[uninstall]))
    assert "-y" in shlex.split(steps[uninstall])
    (gpu,) = steps[uninstall + 1 :]
    # the requirement comes from `python -c "<code>"` inside $(...): run that code on the real pyproject
    code = re.search(r'-c "(.*)"\)"', gpu).group(1)  # type: ignore[union-attr]
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, capture_output=True, text=True)
    assert r.stdout.strip() == PYPROJECT["tool"]["asasnn"]["onnxruntime-gpu"]


@pytest.mark.parametrize("extras", [None, "cpu,dev", "dev"])
def test_make_install_cpu_never_installs_the_gpu_build(extras: str | None, tmp_path: Path) -> None:
    steps = pip_steps(make_dry_run("install", tmp_path, **({"EXTRAS": extras} if extras else {})))
    assert not any("onnxruntime-gpu" in s and s.startswith("install") for s in steps), steps
    project = next(i for i, s in enumerate(steps) if s.startswith("install --quiet -e"))
    assert shlex.split(steps[project])[-1] == f".[{extras or 'dev'}]"
    # an environment that had the GPU build loses it before onnxruntime comes in
    uninstall = next(i for i, s in enumerate(steps) if s.startswith("uninstall"))
    assert uninstall < project and shlex.split(steps[uninstall])[-1] == "onnxruntime-gpu"
    assert "onnxruntime" not in shlex.split(steps[uninstall])


def test_make_test_measures_coverage_per_package(tmp_path: Path) -> None:
    lines = make_dry_run("test", tmp_path)
    (pytest_line,) = [line for line in lines if "-m pytest" in line]
    args = shlex.split(pytest_line)
    assert {f"--cov={p}" for p in PACKAGES} <= set(args)
    assert any(a.startswith("--cov-report=term") for a in args)
    assert any("ruff check" in line for line in lines)
    assert "make test" in (REPO / ".ci" / "run").read_text()


def test_readme_set_up_describes_the_gpu_route() -> None:
    text = (REPO / "README.md").read_text()
    setup = text.split("## Set up", 1)[1].split("\n## ", 1)[0]
    assert "3.11" in setup and "GPU=1" in setup and "onnxruntime-gpu" in setup
