"""Bundle format: round trip, and a clear BundleError naming the file for every broken part."""

import json
import shutil

import pytest
import torch
from safetensors.torch import save_file

from models.attention import AttentionConfig
from models.config import preset
from models.network import SpikingNet
from models.runtime.bundle import CARD_FILE, WEIGHTS_FILE, BundleError, load_bundle, read_card


@pytest.fixture
def bundle_dir(bundles, tmp_path):
    d = tmp_path / "b"
    shutil.copytree(bundles["tiny-none"].path, d)
    return d


def test_round_trip(bundles):
    b = bundles["tiny-none"]
    again = load_bundle(b.path)
    card = again.card
    assert card.mode == "step" and card.attention == "none" and card.hop == 1
    assert card.classes == [f"class{i}" for i in range(5)]
    assert (card.sensor.width, card.sensor.height, card.ds, card.dt_us) == (128, 128, 4, 20_000)
    assert card.frame_shape == (2, 32, 32)
    assert (
        card.onnx is not None
        and card.onnx.inputs[0] == "frames"
        and card.onnx.outputs[:2] == ["out", "counts"]
    )
    assert card.verification is not None and card.verification.passed
    assert card.network_config == b.net.cfg
    assert {"torch", "onnx", "asasnn"} <= set(card.software)
    assert card.to_dict()["data"]["sensor"] == [128, 128]
    for k, v in b.net.state_dict().items():
        torch.testing.assert_close(again.net.state_dict()[k], v, rtol=0, atol=0)
    assert (b.path / "step.onnx").is_file() and not (b.path / "window.onnx").exists()
    assert (b.path / WEIGHTS_FILE).read_bytes()[:2] != b"\x80\x04"  # not a pickle


def test_missing_directory_and_card(tmp_path):
    with pytest.raises(BundleError, match="does not exist"):
        load_bundle(tmp_path / "nope")
    with pytest.raises(BundleError, match=f"{CARD_FILE}: model card missing"):
        load_bundle(tmp_path)


def test_corrupt_json(bundle_dir):
    (bundle_dir / CARD_FILE).write_text('{"name": "x", ')
    with pytest.raises(BundleError, match=f"{CARD_FILE}: not valid JSON"):
        load_bundle(bundle_dir)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda c: c.pop("classes"), "classes"),
        (lambda c: c.update(classes=["a", "b"]), "2 class names for a network with 5 outputs"),
        (lambda c: c.update(ds=2), "gives frames of 64x64"),
        (lambda c: c.update(mode="sideways"), "mode"),
        (lambda c: c.update(unknown_key=1), "unknown_key"),
        (lambda c: c["config"].update(convs="nonsense"), "config"),
        (lambda c: c.update(format_version=99), "unsupported bundle format"),
    ],
)
def test_wrong_schema(bundle_dir, edit, message):
    card = json.loads((bundle_dir / CARD_FILE).read_text())
    edit(card)
    (bundle_dir / CARD_FILE).write_text(json.dumps(card))
    with pytest.raises(BundleError, match=CARD_FILE) as err:
        read_card(bundle_dir)
    assert message in str(err.value)


def test_step_mode_refused_for_window_attention(bundle_dir):
    card = json.loads((bundle_dir / CARD_FILE).read_text())
    card["config"]["attention"]["kind"] = "asa"
    (bundle_dir / CARD_FILE).write_text(json.dumps(card))
    with pytest.raises(BundleError, match="needs the whole window"):
        read_card(bundle_dir)


def test_corrupt_and_missing_weights(bundle_dir):
    w = bundle_dir / WEIGHTS_FILE
    w.write_bytes(b"\x00\x01garbage" * 10)
    with pytest.raises(BundleError, match=f"{WEIGHTS_FILE}: not a readable safetensors file"):
        load_bundle(bundle_dir)
    w.unlink()
    with pytest.raises(BundleError, match=f"{WEIGHTS_FILE}: weights file missing"):
        load_bundle(bundle_dir)


def test_weights_not_matching_the_config(bundle_dir):
    other = SpikingNet(preset("tiny", 7, AttentionConfig()))  # 7 classes instead of 5
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(bundle_dir / WEIGHTS_FILE))
    with pytest.raises(BundleError, match=f"{WEIGHTS_FILE}: weights do not match the network"):
        load_bundle(bundle_dir)


def test_corrupt_onnx(bundle_dir):
    g = bundle_dir / "step.onnx"
    data = g.read_bytes()
    g.write_bytes(data[: len(data) // 3])
    with pytest.raises(BundleError, match="step.onnx: not a valid ONNX model"):
        load_bundle(bundle_dir)
    load_bundle(bundle_dir, check_graph=False)  # the torch backend does not need the graph
    g.unlink()
    with pytest.raises(BundleError, match="step.onnx: ONNX graph missing"):
        load_bundle(bundle_dir)


def test_onnx_of_another_network(bundles, bundle_dir):
    shutil.copy(bundles["tiny-causal"].path / "step.onnx", bundle_dir / "step.onnx")
    with pytest.raises(BundleError, match="step.onnx: graph has inputs"):
        load_bundle(bundle_dir)
