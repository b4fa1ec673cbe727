"""models.jit.in_parts: contiguous parts covering every item once, lane 0 on the caller's thread."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from models.jit import in_parts


def test_parts_cover_the_items_in_order_one_lane_each() -> None:
    caller = threading.get_ident()
    with ThreadPoolExecutor(3) as pool:
        done = in_parts(lambda lo, hi, lane: (lo, hi, lane, threading.get_ident()), 10, 4, pool)
    assert [(lo, hi, lane) for lo, hi, lane, _ in done] == [(0, 2, 0), (2, 5, 1), (5, 8, 2), (8, 10, 3)]
    assert done[0][3] == caller and all(t != caller for *_, t in done[1:])


def test_one_part_without_a_pool_or_for_few_items() -> None:
    assert in_parts(lambda lo, hi, lane: (lo, hi, lane), 7, 4, None) == [(0, 7, 0)]
    with ThreadPoolExecutor(2) as pool:
        assert in_parts(lambda lo, hi, lane: (lo, hi, lane), 2, 5, pool) == [(0, 1, 0), (1, 2, 1)]
        assert in_parts(lambda lo, hi, lane: (lo, hi, lane), 0, 3, pool) == [(0, 0, 0)]
