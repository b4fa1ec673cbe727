"""Majority vote, accuracies, the MSE rate loss and the evaluation summary, on hand-made numbers."""

import math

import numpy as np
import pytest
import torch

from models.instrument import EnergyModel
from training.evaluate import Predictions, accuracies, format_table, majority_vote, summarize
from training.loop import rate_loss


def test_majority_vote_hand_made():
    #          rec 0: 2,2,1 -> 2   rec 1: 0,1,1,1 -> 1   rec 2: 3 -> 3
    pred = [2, 2, 1, 0, 1, 1, 1, 3]
    groups = [0, 0, 0, 1, 1, 1, 1, 2]
    ids, voted = majority_vote(pred, groups)
    assert ids.tolist() == [0, 1, 2]
    assert voted.tolist() == [2, 1, 3]


def test_majority_vote_ties():
    pred, groups = [0, 1], [5, 5]
    assert majority_vote(pred, groups)[1].tolist() == [0]  # lowest class without rates
    rates = np.array([[0.2, 0.0], [0.1, 0.9]])  # class 1 has more summed rate: 0.9 > 0.3
    assert majority_vote(pred, groups, rates)[1].tolist() == [1]


def test_accuracies_clip_and_vote():
    # 2 recordings x 3 clips; rec 0 label 1 (clips say 1,1,0), rec 1 label 0 (clips say 1,1,0)
    rates = np.eye(2, dtype=np.float32)[[1, 1, 0, 1, 1, 0]]
    p = Predictions(np.arange(6), np.array([0, 0, 0, 1, 1, 1]), np.array([1, 1, 1, 0, 0, 0]), rates, np.zeros((6, 2)))
    clip, vote = accuracies(p)
    assert clip == pytest.approx(3 / 6)
    assert vote == pytest.approx(1 / 2)


def test_mse_rate_loss_hand_made():
    rate = torch.tensor([[0.5, 0.0, 0.25]])
    # ((0.5 - 1)^2 + 0^2 + 0.25^2) / 3 = 0.3125 / 3
    assert rate_loss(rate, torch.tensor([0]), "mse").item() == pytest.approx(0.3125 / 3)
    ce = rate_loss(rate, torch.tensor([0]), "ce").item()
    assert ce == pytest.approx(-math.log(math.exp(0.5) / (math.exp(0.5) + 1 + math.exp(0.25))))


def test_summarize_fields_and_energy():
    energy = EnergyModel(("conv1", "fc1"), (100, 10), (2.0, 0.0), first_layer_macs=1000)
    counts = np.array([[40.0, 4.0], [20.0, 2.0]])  # spikes per layer over T=4 steps, per clip
    rates = np.array([[0.9, 0.1], [0.2, 0.7]], dtype=np.float32)
    p = Predictions(np.arange(2), np.array([0, 1]), np.array([0, 1]), rates, counts)
    s = summarize(p, energy, steps=4, classes=["a", "b"])
    assert s["accuracy"] == {"clip": 1.0, "vote": 1.0}
    assert s["recordings"] == 2 and s["clips"] == 2
    assert s["spikes_per_sample"] == pytest.approx(33.0)  # (44 + 22) / 2
    assert s["nasfr"] == pytest.approx(33.0 / 110 / 4)
    assert s["sops_per_sample"] == pytest.approx(30.0 * 2.0)
    assert s["energy_j_per_sample"] == pytest.approx(4.6e-12 * 1000 * 4 + 0.9e-12 * 60.0)
    assert [layer["firing_rate"] for layer in s["layers"]] == pytest.approx([30 / 100 / 4, 3 / 10 / 4])
    assert s["per_class_vote_accuracy"] == {"a": 1.0, "b": 1.0}
    assert s["confusion_vote"] == [[1, 0], [0, 1]]
    assert s["per_class_output_rate"] == pytest.approx({"a": 0.55, "b": 0.4})
    table = format_table(s)
    assert "100.00 % by majority vote" in table and "conv1" in table and "never fired" not in table


def test_summary_names_outputs_that_never_fire():
    energy = EnergyModel(("fc1",), (3,), (0.0,), first_layer_macs=10)
    rates = np.array([[0.5, 0.0, 0.25], [0.1, 0.0, 0.0]], dtype=np.float32)
    p = Predictions(np.arange(2), np.array([0, 1]), np.array([0, 2]), rates, np.ones((2, 1)))
    s = summarize(p, energy, steps=4, classes=["a", "b", "c"])
    assert s["per_class_output_rate"] == pytest.approx({"a": 0.3, "b": 0.0, "c": 0.125})
    assert "outputs that never fired on these clips (1): b" in format_table(s)


def test_predictions_concat_orders_by_item():
    a = Predictions(np.array([2, 0]), np.array([1, 0]), np.array([1, 0]), np.zeros((2, 3), np.float32), np.ones((2, 2)))
    b = Predictions(np.array([1]), np.array([0]), np.array([0]), np.ones((1, 3), np.float32), np.ones((1, 2)))
    c = Predictions.concat([a, b])
    assert c.item.tolist() == [0, 1, 2] and c.recording.tolist() == [0, 0, 1]
