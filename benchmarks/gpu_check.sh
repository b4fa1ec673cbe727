#!/usr/bin/env bash
# The GPU path, run and measured (issue 14): on a machine with an NVIDIA GPU and nothing installed,
# build a GPU environment, run the `cuda` tests and the runtime benchmark on CUDA, and write every
# log and result under one folder. Within 8 minutes (DEADLINE_S) on an H200 with a warm pip cache.
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]          # default OUT_DIR: gpu-check-<date>-<time>
#   make gpu-check [OUT=DIR]                        # the same
#   bash benchmarks/gpu_check.sh --download DIR     # fill a wheelhouse for a machine without a registry
#
# Steps (each under `timeout`, each logged to OUT_DIR/<step>.log; a failed step is recorded and the
# next one still runs, except that nothing runs without an environment; the exit status is 1 if any
# step failed, 2 if there is no NVIDIA GPU, checked first, before anything is created):
#   env       a fresh venv ($VENV, default .venv-gpu; never the CPU .venv) holding torch with CUDA and
#             onnxruntime-gpu, never next to the CPU onnxruntime: the project's dependencies are
#             installed with onnxruntime swapped for pyproject.toml's [tool.asasnn] onnxruntime-gpu
#             (as deploy/Dockerfile.cuda does), then the project itself with --no-deps (editable).
#             Reused on a second run (a stamp per route; REINSTALL=1 rebuilds it).
#   info      nvidia-smi, pip list, torch / CUDA / cuDNN / ONNX Runtime versions and providers, and
#             whether ONNX Runtime's CUDA provider really loads a session (info.log, nvidia-smi.txt).
#   tests     pytest -m cuda -q (pytest-cuda.xml: junit).
#   bench-default, bench-gesture3
#             asasnn bench runtime --device cuda at batches $BATCHES (runtime-<model>.md / .json):
#             latency, streams/s, GPU memory per stream, the largest batch whose step stays below dt.
#   summary.md  what passed or failed, where the results are, and the benchmark tables.
#
# Environment (all optional):
#   TORCH_FROM=pypi     (default) pip installs torch==$TORCH_VERSION (2.13.0; the PyPI wheel is the CUDA
#                       build) and the rest, from the index or from $WHEELHOUSE.
#   TORCH_FROM=system   keep the CUDA torch (and whatever else) that $PYTHON's environment already has,
#                       for GPU images with PyTorch installed and no registry: the venv sees that
#                       environment's site-packages behind its own (a .pth file), and only what is
#                       missing is installed. onnxruntime-gpu then goes in only if it can be installed
#                       (else the image's onnxruntime stays, and the ONNX Runtime CUDA rows are left out
#                       with the reason in the results).
#   WHEELHOUSE=DIR      install with `pip --no-index --find-links DIR` (no registry needed). Fill DIR
#                       beforehand, on a machine with a registry, for the GPU machine's Python:
#                         TORCH_FROM=pypi PY_VERSION=3.12 bash benchmarks/gpu_check.sh --download wheelhouse
#                       that is `pip download --only-binary=:all: --python-version 3.12 --platform manylinux...
#                       -d wheelhouse torch==2.13.0 'setuptools>=77' <the project's requirements with
#                       onnxruntime swapped for onnxruntime-gpu, and the dev extra>`. For TORCH_FROM=system
#                       torch, triton and nvidia-* are left out, the dev extra is trimmed to pytest,
#                       pytest-timeout and hypothesis, onnxruntime-gpu goes in only with ORT_GPU=1, and
#                       PRESENT=FILE (names of the packages the GPU machine already has, one a line or
#                       `pip freeze` lines) deletes the wheels it would not need (compiled or over
#                       2 MiB; small pure-Python ones stay, in case the machine's version is too old).
#   PYTHON=python3  VENV=.venv-gpu  TORCH_VERSION=2.13.0  REINSTALL=0
#   BATCHES=1,8,32,128,512,1024,4096  BUDGET=1 (s of timing per cell)  THREADS=4  BACKENDS (bench default)
#   PEAK_TFLOPS (the card's dense peak, e.g. 989 for an H200's FP16: adds a percent-of-peak column)
#   COMPILE=1 (adds torch.compile rows: minutes of compilation)  DEADLINE_S=480  ARCHIVE=FILE.tgz (packs OUT_DIR)
#   ALLOW_CPU_TORCH=1   accept a CPU build of torch in the environment (only to try the script's
#                       plumbing without a GPU, with a stand-in nvidia-smi: every GPU step then fails)
# shellcheck disable=SC2317  # the step functions run indirectly, as `gpu_check.sh --step FUNCTION`
set -euo pipefail

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv-gpu}
TORCH_FROM=${TORCH_FROM:-pypi}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
WHEELHOUSE=${WHEELHOUSE:-}
REINSTALL=${REINSTALL:-0}
BATCHES=${BATCHES:-1,8,32,128,512,1024,4096}
BUDGET=${BUDGET:-1}
THREADS=${THREADS:-4}
BACKENDS=${BACKENDS:-}
PEAK_TFLOPS=${PEAK_TFLOPS:-}
COMPILE=${COMPILE:-0}
DEADLINE_S=${DEADLINE_S:-480}
ARCHIVE=${ARCHIVE:-}
ORT_GPU=${ORT_GPU:-}

die() {
  echo "gpu_check: $*" >&2
  exit 1
}

case "$TORCH_FROM" in
  pypi | system) ;;
  *) die "TORCH_FROM must be pypi or system, not '$TORCH_FROM'" ;;
esac
[[ -n $VENV && $(realpath -m "$VENV") != $(realpath -m "$(dirname "${BASH_SOURCE[0]}")/../.venv") ]] ||
  die "VENV='$VENV': the CPU environment .venv (or nothing); choose another (default .venv-gpu)"

if [[ ${1:-} == -h || ${1:-} == --help ]]; then
  sed -n '2,/^set -euo/{/^# shellcheck/d; /^#/s/^# \{0,1\}//p}' "${BASH_SOURCE[0]}"
  exit 0
fi

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# The project's requirements for the GPU environment, one a line: the dependencies with onnxruntime
# swapped for [tool.asasnn] onnxruntime-gpu (pypi route) or kept (system route: the image's stays
# unless onnxruntime-gpu can be added), torch pinned (pypi) or left to the image (system), and the dev
# extra (system: only what the tests need). $1: "install" or "download" (system: no onnxruntime at all,
# the image has one; onnxruntime-gpu only with ORT_GPU=1).
requirements() {
  (cd "$REPO" && "$PYTHON" - "$TORCH_FROM" "$TORCH_VERSION" "$1" "${ORT_GPU:-0}") <<'EOF'
import re, sys, tomllib

route, torch_version, purpose, ort_gpu = sys.argv[1:]
t = tomllib.load(open("pyproject.toml", "rb"))
name = lambda r: re.match(r"[A-Za-z0-9._-]+", r).group().lower().replace("_", "-")
deps = [r for r in t["project"]["dependencies"] if name(r) not in ("torch", "onnxruntime")]
dev = t["project"]["optional-dependencies"]["dev"]
ort_gpu_req = t["tool"]["asasnn"]["onnxruntime-gpu"]
ort = [r for r in t["project"]["dependencies"] if name(r) == "onnxruntime"]
if route == "pypi":
    reqs = [f"torch=={torch_version}", *deps, ort_gpu_req, *dev]
else:
    keep = {"pytest", "pytest-timeout", "hypothesis"}
    reqs = [*deps, *(r for r in dev if name(r) in keep)]
    if purpose == "install":
        reqs += ort  # satisfied by the image's onnxruntime; onnxruntime-gpu is tried after
    elif ort_gpu == "1":
        reqs.append(ort_gpu_req)
print("\n".join(reqs))
EOF
}

ort_gpu_requirement() {
  (cd "$REPO" && "$PYTHON" -c "import tomllib; print(tomllib.load(open('pyproject.toml', 'rb'))['tool']['asasnn']['onnxruntime-gpu'])")
}

# --download DIR [pip download options]: fill a wheelhouse (needs a registry, not a GPU).
if [[ ${1:-} == --download ]]; then
  [[ $# -ge 2 ]] || die "usage: bash benchmarks/gpu_check.sh --download DIR [pip download options]"
  dir=$2
  shift 2
  mkdir -p "$dir"
  py_version=${PY_VERSION:-$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')}
  platforms=()
  for n in 17 24 26 27 28 31 34 35 38 39; do platforms+=(--platform "manylinux_2_${n}_x86_64"); done
  platforms+=(--platform manylinux2014_x86_64 --platform manylinux1_x86_64)
  reqs=$(mktemp)
  trap 'rm -f "$reqs"' EXIT
  { requirements download; echo "setuptools>=77"; echo pip; } >"$reqs"
  echo "gpu_check: downloading for Python $py_version ($TORCH_FROM route) into $dir:" >&2
  sed 's/^/  /' "$reqs" >&2
  "$PYTHON" -m pip download --disable-pip-version-check -d "$dir" --only-binary=:all: \
    --python-version "$py_version" --implementation cp "${platforms[@]}" -r "$reqs" "$@"
  if [[ $TORCH_FROM == system ]]; then  # the image's torch brings these
    find "$dir" -maxdepth 1 \( -name 'torch-*.whl' -o -name 'triton-*.whl' -o -name 'nvidia_*.whl' \) -print -delete
  fi
  if [[ -n ${PRESENT:-} ]]; then  # wheels of packages the GPU machine already has
    "$PYTHON" - "$dir" "$PRESENT" <<'EOF'
import re, sys
from pathlib import Path

norm = lambda s: re.sub(r"[-_.]+", "-", s).lower()
present = set()
for line in Path(sys.argv[2]).read_text().splitlines():
    m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", line)
    if m and not line.lstrip().startswith("#"):
        present.add(norm(m.group(1)))
keep = {"setuptools", "pip"}  # build isolation needs its own setuptools
for whl in sorted(Path(sys.argv[1]).glob("*.whl")):
    # Small pure-Python wheels stay (in case the machine's version is too old for another wheel:
    # pip then installs the newer one into the venv, in front); compiled and large ones go.
    small_pure = whl.name.endswith("-none-any.whl") and whl.stat().st_size < 2**21
    if norm(whl.name.split("-")[0]) in present - keep and not small_pure:
        print(f"already on the GPU machine: {whl.name}")
        whl.unlink()
EOF
  fi
  du -sh "$dir" >&2
  exit 0
fi

# Nothing is created on a machine without an NVIDIA GPU.
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "gpu_check: no NVIDIA GPU (nvidia-smi is missing or fails): nothing to check here; run it on a GPU machine" >&2
  exit 2
fi

INTERNAL=0
if [[ ${1:-} == --step ]]; then  # one step, run by step() below under `timeout`: --step FUNCTION OUT_DIR
  INTERNAL=1
  OUT=$3
else
  OUT=$(realpath -m "${1:-gpu-check-$(date +%Y%m%d-%H%M%S)}")
fi
if [[ -n $WHEELHOUSE ]]; then
  [[ -d $WHEELHOUSE ]] || die "WHEELHOUSE=$WHEELHOUSE is not a folder"
  WHEELHOUSE=$(realpath "$WHEELHOUSE")
fi
cd "$REPO"
mkdir -p "$OUT"
START=$SECONDS
export PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
VPY="$VENV/bin/python"
PIP=("$VPY" -m pip install --quiet)
[[ -n $WHEELHOUSE ]] && PIP+=(--no-index --find-links "$WHEELHOUSE")

NAMES=() STATUS=() TIMES=() FAILED=0

# step NAME CAP_S FUNCTION: run FUNCTION (this script again, --step) under timeout (CAP_S, less if
# the deadline is nearer), log to OUT/NAME.log, record its status; never aborts the script.
step() {
  local name=$1 cap=$2 fn=$3 rc=0 t0=$SECONDS left
  left=$((DEADLINE_S - (SECONDS - START) - 5))
  if ((left < 15)); then
    record "$name" "skipped: no time left (DEADLINE_S=$DEADLINE_S)" 0
    FAILED=1
    return 1
  fi
  ((cap > left)) && cap=$left
  echo "== $name (at most ${cap} s) ==" >&2
  if timeout --kill-after=10 "$cap" bash "${BASH_SOURCE[0]}" --step "$fn" "$OUT" >"$OUT/$name.log" 2>&1; then
    rc=0
  else
    rc=$?
  fi
  if ((rc == 0)); then
    record "$name" passed $((SECONDS - t0))
  else
    local what="failed (exit $rc)"
    ((rc == 124 || rc == 137)) && what="failed: timed out after ${cap} s"
    record "$name" "$what" $((SECONDS - t0))
    FAILED=1
    tail -n 20 "$OUT/$name.log" >&2 || true
  fi
  return "$rc"
}

record() {
  NAMES+=("$1") STATUS+=("$2") TIMES+=("$3")
  echo "   $1: $2 (${3} s)" >&2
}

make_env() {
  local stamp="$VENV/.gpu-check-$TORCH_FROM" reqs
  if [[ $REINSTALL != 1 && -f $stamp && $stamp -nt pyproject.toml ]]; then
    echo "reusing $VENV ($stamp; REINSTALL=1 rebuilds it)"
    return 0
  fi
  rm -rf "$VENV"
  if ! "$PYTHON" -m venv "$VENV"; then  # e.g. a Debian Python without ensurepip
    echo "a venv with pip could not be made; making one without pip"
    rm -rf "$VENV"
    "$PYTHON" -m venv --without-pip "$VENV"
  fi
  if [[ $TORCH_FROM == system ]]; then
    # the image's environment behind the venv's own site-packages (its .pth files processed too)
    local site
    site=$("$VPY" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
    "$PYTHON" -c 'import site, sysconfig
for p in dict.fromkeys([sysconfig.get_path("purelib"), sysconfig.get_path("platlib")]):
    print(f"import site; site.addsitedir({p!r})")' >"$site/_gpu_check_system.pth"
    "$VPY" -c 'import torch; print("torch", torch.__version__, "from", torch.__file__)'
  fi
  if ! "$VPY" -m pip --version >/dev/null 2>&1; then  # pip from $PYTHON's environment installs pip
    "$PYTHON" -m pip --python "$VPY" install --quiet ${WHEELHOUSE:+--no-index --find-links "$WHEELHOUSE"} pip
  fi
  reqs=$(mktemp)
  requirements install >"$reqs"
  echo "requirements:"
  sed 's/^/  /' "$reqs"
  "${PIP[@]}" -r "$reqs"
  rm -f "$reqs"
  # The project itself, without its dependencies (they are in): nothing brings onnxruntime back.
  "${PIP[@]}" --no-deps -e .
  if [[ $TORCH_FROM == pypi ]]; then
    "$VPY" -m pip uninstall --quiet -y onnxruntime 2>/dev/null || true
  elif [[ ${ORT_GPU:-try} != 0 ]]; then
    "${PIP[@]}" "$(ort_gpu_requirement)" ||
      echo "onnxruntime-gpu could not be installed: the image's onnxruntime stays (ONNX Runtime CUDA rows left out)"
  fi
  "$VPY" - "$TORCH_FROM" <<'EOF'
import os
import sys
from importlib.metadata import distributions

names = {d.metadata["Name"].lower().replace("_", "-") for d in distributions()}
ort = sorted(n for n in names if n.startswith("onnxruntime"))
print("ONNX Runtime distributions:", ort)
if sys.argv[1] == "pypi":
    assert ort == ["onnxruntime-gpu"], f"expected onnxruntime-gpu alone, found {ort}"
import torch

print("torch", torch.__version__, "CUDA", torch.version.cuda, "available:", torch.cuda.is_available())
assert torch.version.cuda or os.environ.get("ALLOW_CPU_TORCH") == "1", "a CPU build of torch: the CUDA build is needed"
EOF
  touch "$stamp"
}

info() {
  nvidia-smi | tee "$OUT/nvidia-smi.txt"
  "$VPY" -m pip list --format=freeze >"$OUT/pip-list.txt" 2>/dev/null || true
  "$VPY" - <<'EOF'
import platform

import onnxruntime as ort
import torch

print("python", platform.python_version(), "| torch", torch.__version__, "| CUDA", torch.version.cuda,
      "| cuDNN", torch.backends.cudnn.version())
assert torch.cuda.is_available(), "torch sees no CUDA device"
p = torch.cuda.get_device_properties(0)
print("device:", torch.cuda.get_device_name(0), "| capability", torch.cuda.get_device_capability(0),
      f"| {p.total_memory / 2**30:.1f} GiB | {p.multi_processor_count} multiprocessors")
print("onnxruntime", ort.__version__, "| providers:", ort.get_available_providers())
from models.runtime import load_runner

try:
    r = load_runner("models/bundled/default", "onnx", "cuda")
    print("ONNX Runtime session on cuda: providers", r.providers, "| tables on the GPU:", r._gpu_tables)
except Exception as err:  # noqa: BLE001 - reported, not fatal: the torch rows still run
    print("ONNX Runtime session on cuda: not available:", err)
EOF
}

tests() {
  "$VPY" -m pytest -m cuda -q -p no:cacheprovider --junitxml "$OUT/pytest-cuda.xml"
}

bench() {
  local model=$1
  [[ -n $model ]] || die "bench: which model?"
  local args=(--device cuda --models "$model" --batches "$BATCHES" --budget "$BUDGET" --threads "$THREADS"
    --no-window --json "$OUT/runtime-$model.json" --markdown "$OUT/runtime-$model.md")
  [[ -n $BACKENDS ]] && args+=(--backends "$BACKENDS")
  [[ -n $PEAK_TFLOPS ]] && args+=(--peak-tflops "$PEAK_TFLOPS")
  [[ $COMPILE == 1 ]] && args+=(--compile)
  "$VPY" -m asasnn bench runtime "${args[@]}"
}

junit_counts() {  # "N tests, N failures, N errors, N skipped" of the junit file, if any
  [[ -f $OUT/pytest-cuda.xml ]] || return 0
  "$VPY" - "$OUT/pytest-cuda.xml" <<'EOF' 2>/dev/null || true
import sys
import xml.etree.ElementTree as ET

root = ET.parse(sys.argv[1]).getroot()
s = root if root.tag == "testsuite" else root.find("testsuite")
t, f, e, k = (int(s.get(a, 0)) for a in ("tests", "failures", "errors", "skipped"))
print(f"{t - f - e - k} passed, {f} failed, {e} errors, {k} skipped")
EOF
}

bench_default() { bench default; }
bench_gesture3() { bench gesture3; }

if ((INTERNAL)); then
  "$2"
  exit 0
fi

env_cap=120
[[ $TORCH_FROM == pypi ]] && env_cap=240
if step env "$env_cap" make_env; then
  step info 60 info || true
  step tests 180 tests || true
  tests_line=$(junit_counts)
  if [[ ${tests_line:-} == 0\ passed* ]]; then  # all skipped: torch saw no GPU
    STATUS[-1]="failed: no cuda test ran ($tests_line)"
    FAILED=1
  elif [[ -n ${tests_line:-} ]]; then
    STATUS[-1]="${STATUS[-1]} ($tests_line)"
  fi
  step bench-default 120 bench_default || true
  step bench-gesture3 200 bench_gesture3 || true
else
  for s in info tests bench-default bench-gesture3; do record "$s" "skipped: no environment (see env.log)" 0; done
fi
nvidia-smi --query-gpu=name,driver_version,memory.used,memory.total,clocks.sm,clocks.max.sm,temperature.gpu,power.draw \
  --format=csv >"$OUT/nvidia-smi-end.csv" 2>&1 || true

{
  echo "# GPU check $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo
  echo "- GPU: $(nvidia-smi -L 2>/dev/null | head -n 1)"
  echo "- host: $(uname -srm), $(nproc) cores; commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')$([[ -n $(git --no-optional-locks status --porcelain 2>/dev/null | head -n 1) ]] && echo ' (with local changes)')"
  echo "- environment: $VENV, TORCH_FROM=$TORCH_FROM${WHEELHOUSE:+, WHEELHOUSE=$WHEELHOUSE}; batches $BATCHES, budget $BUDGET s per cell, $THREADS threads"
  echo "- total: $((SECONDS - START)) s (deadline $DEADLINE_S s); overall: $([[ $FAILED == 0 ]] && echo PASSED || echo FAILED)"
  echo
  echo "| step | status | seconds | log |"
  echo "|---|---|---:|---|"
  for i in "${!NAMES[@]}"; do
    echo "| ${NAMES[$i]} | ${STATUS[$i]} | ${TIMES[$i]} | ${NAMES[$i]}.log |"
  done
  echo
  echo "Files: nvidia-smi.txt, nvidia-smi-end.csv, pip-list.txt, pytest-cuda.xml (junit),"
  echo "runtime-default.md / .json, runtime-gesture3.md / .json (asasnn bench runtime --device cuda)."
  for model in default gesture3; do
    if [[ -f $OUT/runtime-$model.md ]]; then
      echo
      echo "## asasnn bench runtime --device cuda --models $model"
      echo
      cat "$OUT/runtime-$model.md"
    fi
  done
} >"$OUT/summary.md"

if [[ -n $ARCHIVE ]]; then
  tar -czf "$ARCHIVE" -C "$(dirname "$OUT")" "$(basename "$OUT")" || FAILED=1
fi
echo "gpu_check: $([[ $FAILED == 0 ]] && echo passed || echo 'FAILED') - $OUT/summary.md" >&2
exit "$FAILED"
