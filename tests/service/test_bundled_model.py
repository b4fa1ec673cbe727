"""The bundled default model on clear synthetic gestures: runs once ``models/bundled/default`` exists.

``asasnn serve`` serves that bundle by default; it is made by the lead from a trained checkpoint. Until
then this module is skipped (the rest of the suite uses untrained test bundles).
"""

from __future__ import annotations

import asyncio

import pytest

from service.client.api import classify, stream_async
from service.client.sources import split_packets
from service.config import BUNDLED_MODEL_DIR, Settings
from tests.service.helpers import LiveServer

pytestmark = pytest.mark.skipif(
    not (BUNDLED_MODEL_DIR / "default" / "card.json").is_file(), reason="no bundled default model yet"
)


def test_bundled_default_classifies_clear_gestures():
    from models.synthetic import CLASSES, SyntheticConfig, generate, sample_list

    cfg = SyntheticConfig()
    # subject 0 of the test split, first clip of every class: low noise is not guaranteed, so ask
    # for a clear majority rather than perfection
    clips = [s for s in sample_list(cfg, "test") if s.clip == 0][: len(CLASSES)]
    with LiveServer(Settings(device="cpu")) as srv:
        card = srv.state.registry.get(None).runner.card
        assert list(card.classes) == list(CLASSES)
        correct = 0
        for spec in clips:
            ev = generate(spec, cfg)
            s = asyncio.run(stream_async(srv.ws, split_packets(ev, 10_000)))
            offline = classify(srv.http, ev)
            assert s.end["label"] == offline["label"] and s.end["steps"] == offline["steps"]
            correct += s.end["label"] == spec.class_name
        assert correct >= 0.8 * len(clips), f"{correct}/{len(clips)} gestures right"
