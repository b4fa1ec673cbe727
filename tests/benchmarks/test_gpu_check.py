"""benchmarks/gpu_check.sh without a GPU (its syntax, shellcheck, the early "no NVIDIA GPU" exit before
anything is created) and the CUDA-facing options of bench_runtime on the CPU (--device, --batches,
--peak-tflops, the real-time summary, the GPU table layout on a synthetic result)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from asasnn.bench import SCRIPTS, _load
from asasnn.cli import main as asasnn_main

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "gpu_check.sh"
# what the script runs before its GPU check (bash builtins aside)
TOOLS = ("bash", "dirname", "realpath", "sed", "date", "mkdir", "cat")


def _path_without_nvidia_smi(tmp_path: Path, stub: str | None = None) -> str:
    """A PATH of links to the few tools the script needs first, with no nvidia-smi (or ``stub`` as one)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in TOOLS:
        found = shutil.which(tool)
        assert found, tool
        (bin_dir / tool).symlink_to(found)
    if stub is not None:
        smi = bin_dir / "nvidia-smi"
        smi.write_text(stub)
        smi.chmod(0o755)
    return str(bin_dir)


def _run(tmp_path: Path, path: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    venv = tmp_path / "venv-gpu"
    environ = {"PATH": path, "HOME": str(tmp_path), "VENV": str(venv), **env}
    return subprocess.run(
        ["bash", str(SCRIPT), *args],
        check=False,
        cwd=tmp_path,
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_gpu_check_script_parses():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True, timeout=30)


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_gpu_check_script_is_shellcheck_clean():
    res = subprocess.run(["shellcheck", str(SCRIPT)], check=False, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr


def test_gpu_check_stops_without_nvidia_smi_before_creating_anything(tmp_path: Path):
    out = tmp_path / "out"
    res = _run(tmp_path, _path_without_nvidia_smi(tmp_path), str(out))
    assert res.returncode == 2, res.stdout + res.stderr
    assert "no NVIDIA GPU" in res.stderr
    assert not (tmp_path / "venv-gpu").exists() and not out.exists()


def test_gpu_check_stops_when_nvidia_smi_finds_no_gpu(tmp_path: Path):
    stub = "#!/bin/sh\necho 'NVIDIA-SMI has failed because it could not communicate with the NVIDIA driver' >&2\nexit 9\n"
    out = tmp_path / "out"
    res = _run(tmp_path, _path_without_nvidia_smi(tmp_path, stub), str(out))
    assert res.returncode == 2 and "no NVIDIA GPU" in res.stderr
    assert not (tmp_path / "venv-gpu").exists() and not out.exists()


def test_gpu_check_refuses_the_cpu_venv(tmp_path: Path):
    res = _run(tmp_path, _path_without_nvidia_smi(tmp_path), VENV=str(REPO / ".venv"))
    assert res.returncode == 1 and "CPU environment" in res.stderr


def test_gpu_check_help(tmp_path: Path):
    res = _run(tmp_path, _path_without_nvidia_smi(tmp_path), "--help")
    assert res.returncode == 0
    for word in ("WHEELHOUSE", "TORCH_FROM=system", "pytest -m cuda", "summary.md", "--download"):
        assert word in res.stdout


def test_bench_runtime_cli_accepts_the_gpu_options_on_cpu(tmp_path: Path, capsys):
    """`asasnn bench runtime --device cpu --batches 1,3` (the options gpu_check.sh passes, on the CPU)."""
    js, md = tmp_path / "r.json", tmp_path / "r.md"
    argv = ["bench", "runtime", "--device", "cpu", "--batches", "1,3", "--models", "tiny",
            "--backends", "onnx,torch", "--no-window", "--budget", "0.1", "--threads", "1",
            "--peak-tflops", "1", "--json", str(js), "--markdown", str(md)]  # fmt: skip
    assert asasnn_main(argv) == 0
    capsys.readouterr()
    result = json.loads(js.read_text())
    assert result["device"] == "cpu"
    assert {(r["backend"], r["batch"]) for r in result["rows"]} == {
        (b, n) for b in ("onnx", "torch eager") for n in (1, 3)
    }
    assert all(r["gpu_mib_per_stream"] is None for r in result["rows"])  # CPU: no GPU memory
    (info,) = result["models"].values()
    assert info["dt_ms"] == 15 and info["dense_mflop_per_step"] > 0
    assert {s["backend"] for s in result["realtime"]} == {"onnx", "torch eager"}
    text = md.read_text()
    assert "Real time on this machine" in text and "% of 1 TFLOP/s" in text
    assert "GPU MiB / stream" not in text  # the CPU tables keep their columns


def test_dense_mflop_counts_every_convolution_and_linear_layer():
    import torch

    from models.runtime.bundle import load_bundle

    bench = _load(SCRIPTS["runtime"])
    b = load_bundle(REPO / "models" / "bundled" / "default")
    cfg = b.card.config
    c, (h, w), macs = cfg["in_channels"], cfg["input_size"], 0
    for conv in cfg["convs"]:  # 3x3 convolutions at full resolution, then the pool
        macs += c * 9 * conv["channels"] * h * w
        c = conv["channels"]
        if conv["pool"]:
            h, w = h // 2, w // 2
    width = c * h * w
    for n in [*cfg["fc"], cfg["num_classes"] * cfg["vote"]]:
        macs += width * n
        width = n
    before = {k: v.clone() for k, v in b.net.state_dict().items()}
    mflop = bench._dense_mflop(b.net, b.card.frame_shape)
    # the attention's small maps and scores come on top of the synapses
    assert 2 * macs / 1e6 <= mflop <= 1.05 * 2 * macs / 1e6
    after = b.net.state_dict()  # a copy is hooked and stepped: the bundle's network is left as it was
    assert all(torch.equal(v, after[k]) for k, v in before.items())
    assert not any(m._forward_hooks for m in b.net.modules())


def _synthetic(device: str) -> dict:
    def row(backend, batch, median, p99, mib=None):
        return {"model": "m", "backend": backend, "batch": batch, "median_ms": median, "p99_ms": p99,
                "min_ms": median, "streams_per_s": batch / median * 1e3, "calls": 10,
                "gpu_mib_per_stream": mib}  # fmt: skip

    machine = {"cpu": "x", "cores": 16, "python": "3.12", "torch": "2", "onnxruntime": "1",
               "load_avg_at_start": 0.0, "load_avg_at_end": 0.0}  # fmt: skip
    if device == "cuda":
        machine |= {"gpu": "NVIDIA H200", "gpu_capability": "9.0", "gpu_memory_gib": 139.8,
                    "gpu_multiprocessors": 132, "torch_cuda": "13.0", "cudnn": 91000,
                    "onnxruntime_providers": ["CPUExecutionProvider"]}  # fmt: skip
    mib = 0.5 if device == "cuda" else None
    return {
        "machine": machine,
        "device": device,
        "threads": 4,
        "rows": [
            row("torch eager", 1, 2.0, 3.0, mib),
            row("torch eager", 8, 4.0, 14.0, mib),
            row("torch eager", 32, 10.0, 16.0, mib),
            row("onnx", 1, 30.0, 40.0, mib),
        ],
        "models": {"m": {"timesteps": 60, "dt_ms": 15.0, "dense_mflop_per_step": 233.0, "bytes_per_stream": {}}},
        "notes": ["ONNX Runtime rows left out"],
    }


def test_realtime_summary_names_the_largest_batch_below_dt():
    bench = _load(SCRIPTS["runtime"])
    summary = {s["backend"]: s for s in bench.realtime_summary(_synthetic("cpu"))}
    eager = summary["torch eager"]
    assert eager["largest_batch_p99_below_dt"] == 8  # batch 32's p99 (16 ms) is over dt (15 ms)
    assert eager["batch1_median_ms"] == 2.0 and eager["streams_per_s"] == 2000
    assert eager["dense_gflop_per_s"] == pytest.approx(233.0 * 2000 / 1e3)
    assert summary["onnx"]["largest_batch_p99_below_dt"] is None


def test_gpu_markdown_has_the_gpu_line_and_memory_columns():
    bench = _load(SCRIPTS["runtime"])
    text = bench.format_markdown(_synthetic("cuda"), peak_tflops=989)
    assert "GPU: NVIDIA H200 (compute capability 9.0" in text
    assert "| calls | GPU MiB / stream |" in text and "| 10 | 0.500 |" in text
    assert "Real time on this GPU" in text and "% of 989 TFLOP/s |" in text
    assert "| m | onnx | 15 | 30.000 | none |" in text
    assert "Note: ONNX Runtime rows left out" in text


def test_the_cuda_device_is_refused_without_a_gpu():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is here")
    bench = _load(SCRIPTS["runtime"])
    with pytest.raises(RuntimeError, match="no CUDA device"):
        bench.run(models=("tiny",), batches=(1,), device="cuda", log=lambda *a: None)
