"""FrameBinner: hand-computed frames, the gap and flush rules, and split invariance."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from models.events import BinnerConfig, EventError, FrameBinner, SensorSize, encode_events, make_events

# 5 x 3 sensor, ds = 2: frame pixels are (y // 2, x // 2) on a 2 x 3 grid, the last row/column
# holding fewer sensor pixels.
SENSOR = SensorSize(width=5, height=3)
CFG = BinnerConfig(SENSOR, dt_us=10, ds=2)


def ev(*rows):
    """Events from ``(t, x, y, p)`` tuples."""
    if not rows:
        return make_events([], [], [], [])
    return make_events(*zip(*rows))


def frame(*pixels):
    """A [2, 2, 3] frame with ``(p, y', x', value)`` set."""
    f = np.zeros((2, 2, 3), np.float32)
    for p, y, x, v in pixels:
        f[p, y, x] = v
    return f


def zero():
    return frame()


def test_frame_shape_rounds_up():
    assert CFG.frame_shape == (2, 2, 3)
    assert BinnerConfig(SENSOR, 10, ds=1).frame_shape == (2, 3, 5)
    assert BinnerConfig(SENSOR, 10, ds=4).frame_shape == (2, 1, 2)
    assert BinnerConfig(SensorSize(128, 128), 15_000, ds=4).frame_shape == (2, 32, 32)


@pytest.mark.parametrize("kw", [{"dt_us": 0}, {"dt_us": 10, "ds": 0}, {"dt_us": 10, "mode": "sum"},
                                {"dt_us": 10, "max_gap_bins": -1}])
def test_config_rejects_bad_values(kw):
    with pytest.raises(ValueError):
        BinnerConfig(SENSOR, **kw)


def test_known_events_give_known_counts():
    b = FrameBinner(CFG)
    out = b.push(ev((1000, 0, 0, 1), (1003, 1, 1, 1), (1009, 4, 2, 0), (1010, 2, 0, 0), (1035, 3, 2, 1)))
    # t0 = 1000 (first event). Bin 0: two ON events at pixel (0,0), one OFF at (1,2) (x=4,y=2).
    # Bin 1: OFF at (0,1). Bin 2: empty. Bin 3 (t=1035) is still open.
    np.testing.assert_array_equal(out, [frame((1, 0, 0, 2), (0, 1, 2, 1)), frame((0, 0, 1, 1)), zero()])
    assert out.dtype == np.float32
    assert (b.t0, b.last_t, b.open_bin_start, b.bins_emitted) == (1000, 1035, 1030, 3)
    np.testing.assert_array_equal(b.flush(), [frame((1, 1, 1, 1))])
    assert (b.bins_emitted, b.open_bin_start) == (4, 1040)


def test_ds_one_keeps_every_pixel():
    b = FrameBinner(BinnerConfig(SENSOR, dt_us=10, ds=1))
    b.push(ev((0, 4, 2, 0), (0, 3, 2, 0), (1, 4, 2, 1)))
    out = b.flush()
    expected = np.zeros((1, 2, 3, 5), np.float32)
    expected[0, 0, 2, 4] = expected[0, 0, 2, 3] = expected[0, 1, 2, 4] = 1
    np.testing.assert_array_equal(out, expected)


def test_binary_mode_marks_pixels_with_any_event():
    b = FrameBinner(BinnerConfig(SENSOR, dt_us=10, ds=2, mode="binary"))
    b.push(ev((0, 0, 0, 1), (1, 1, 0, 1), (2, 0, 1, 1)))
    b.push(ev((3, 0, 0, 1), (4, 4, 2, 0)))  # same bin, split across packets
    np.testing.assert_array_equal(b.flush(), [frame((1, 0, 0, 1), (0, 1, 2, 1))])


def test_t_start_fixes_the_grid_and_earlier_events_are_dropped():
    b = FrameBinner(CFG, t_start=1005)
    out = b.push(ev((1000, 0, 0, 1), (1003, 0, 0, 1), (1009, 0, 0, 1), (1010, 0, 0, 0), (1035, 0, 0, 0)))
    # Bins [1005,1015), [1015,1025), [1025,1035) complete; 1035 opens bin 3.
    np.testing.assert_array_equal(out, [frame((1, 0, 0, 1), (0, 0, 0, 1)), zero(), zero()])
    assert (b.t0, b.dropped_events, b.open_bin_start) == (1005, 2, 1035)


def test_gap_cap_emits_first_empty_bins_and_counts_the_rest():
    b = FrameBinner(BinnerConfig(SENSOR, dt_us=10, ds=2, max_gap_bins=2), t_start=0)
    out = b.push(ev((5, 0, 0, 1), (75, 2, 0, 0)))
    # Bin 0 has an event, bins 1..6 are one run of 6 empty bins: 2 emitted, 4 skipped.
    # The grid is kept: t=75 is still in bin 7 = [70, 80).
    np.testing.assert_array_equal(out, [frame((1, 0, 0, 1)), zero(), zero()])
    assert (b.skipped_bins, b.bins_emitted, b.open_bin_start) == (4, 3, 70)
    np.testing.assert_array_equal(b.flush(), [frame((0, 0, 1, 1))])


def test_timed_frames_carry_their_bin_starts_across_gaps():
    b = FrameBinner(BinnerConfig(SENSOR, dt_us=10, ds=2, max_gap_bins=2), t_start=0)
    # bin 0 holds an event, bins 1..6 are empty (1, 2 emitted; 3..6 skipped), bin 7 holds one, 8 is open
    out = b.push_timed(ev((5, 0, 0, 1), (75, 2, 0, 0), (85, 0, 0, 0)))
    assert out.t_start_us.tolist() == [0, 10, 20, 70]
    np.testing.assert_array_equal(out.frames, [frame((1, 0, 0, 1)), zero(), zero(), frame((0, 0, 1, 1))])
    assert b.advance_to_timed(89).t_start_us.tolist() == []  # bin 8 = [80, 90) is still open
    assert b.advance_to_timed(140).t_start_us.tolist() == [80, 90, 100]  # 80 holds t=85; 110..130 skipped
    assert b.push_timed(ev((141, 0, 0, 1))).t_start_us.tolist() == []
    assert b.flush_timed().t_start_us.tolist() == [140]
    assert b.flush_timed().frames.shape == (0, 2, 2, 3)
    assert FrameBinner(CFG).advance_to_timed(100).t_start_us.dtype == np.int64


def test_gap_run_is_counted_across_advance_to_calls():
    b = FrameBinner(BinnerConfig(SENSOR, dt_us=10, ds=2, max_gap_bins=2), t_start=0)
    assert b.push(ev((5, 0, 0, 1))).shape == (0, 2, 2, 3)
    np.testing.assert_array_equal(b.advance_to(20), [frame((1, 0, 0, 1)), zero()])  # bins 0, 1
    np.testing.assert_array_equal(b.advance_to(49), [zero()])  # bin 2; bin 3 skipped; bin 4 open
    assert b.push(ev((75, 2, 0, 0))).shape[0] == 0  # bins 4..6 skipped
    assert (b.skipped_bins, b.bins_emitted) == (4, 3)
    # A new run starts after a non-empty bin.
    np.testing.assert_array_equal(b.advance_to(100), [frame((0, 0, 1, 1)), zero(), zero()])


def test_cap_zero_never_emits_empty_frames():
    b = FrameBinner(BinnerConfig(SENSOR, dt_us=10, ds=2, max_gap_bins=0), t_start=0)
    out = b.push(ev((5, 0, 0, 1), (35, 0, 0, 1), (36, 0, 0, 1)))
    np.testing.assert_array_equal(out, [frame((1, 0, 0, 1))])
    assert b.skipped_bins == 2
    np.testing.assert_array_equal(b.flush(), [frame((1, 0, 0, 2))])


def test_leading_gap_after_t_start_is_capped():
    b = FrameBinner(BinnerConfig(SENSOR, dt_us=10, ds=2, max_gap_bins=3), t_start=0)
    out = b.push(ev((1000, 0, 0, 1)))
    assert out.shape[0] == 3 and not out.any()
    assert (b.skipped_bins, b.open_bin_start) == (97, 1000)


def test_huge_gap_costs_nothing():
    b = FrameBinner(BinnerConfig(SENSOR, dt_us=1, ds=2, max_gap_bins=5))
    out = b.push(ev((0, 0, 0, 1), (10**15, 0, 0, 1)))
    assert out.shape[0] == 6  # bin 0 then 5 empty frames
    assert b.skipped_bins == 10**15 - 1 - 5


def test_advance_to_before_any_event_or_into_the_past_does_nothing():
    b = FrameBinner(CFG)
    assert b.advance_to(10**9).shape == (0, 2, 2, 3) and b.t0 is None
    b.push(ev((100, 0, 0, 1)))
    assert b.advance_to(109).shape[0] == 0 and b.advance_to(50).shape[0] == 0
    np.testing.assert_array_equal(b.advance_to(110), [frame((1, 0, 0, 1))])


def test_events_in_completed_bins_are_dropped_as_late():
    b = FrameBinner(CFG, t_start=0)
    b.push(ev((5, 0, 0, 1)))
    assert b.advance_to(20).shape[0] == 2
    assert b.push(ev((15, 0, 0, 1), (25, 0, 0, 0))).shape[0] == 0  # 15 falls in emitted bin 1
    assert (b.dropped_events, b.last_t) == (1, 25)
    np.testing.assert_array_equal(b.flush(), [frame((0, 0, 0, 1))])


def test_flush_emits_only_a_non_empty_open_bin_then_moves_on():
    b = FrameBinner(CFG, t_start=0)
    assert b.flush().shape[0] == 0
    b.push(ev((12, 0, 0, 1)))  # bin 0 completes empty
    np.testing.assert_array_equal(b.flush(), [frame((1, 0, 0, 1))])
    assert b.flush().shape[0] == 0 and b.open_bin_start == 20
    assert b.push(ev((19, 0, 0, 1))).shape[0] == 0 and b.dropped_events == 1  # inside the flushed bin
    assert b.bins_emitted == 2


def test_bad_packet_changes_nothing_and_the_stream_goes_on():
    good1 = ev((0, 0, 0, 1), (12, 1, 1, 0))
    good2 = ev((15, 4, 2, 1), (31, 0, 0, 0))
    ref = FrameBinner(CFG)
    expected = np.concatenate([ref.push(good1), ref.push(good2), ref.flush()])

    b = FrameBinner(CFG)
    out = [b.push(good1)]
    state = (b.t0, b.last_t, b.bins_emitted, b.skipped_bins, b.dropped_events, b.open_bin_start)
    bad_packets = {
        "time_backwards": ev((11, 0, 0, 0)),
        "unsorted": ev((20, 0, 0, 0), (19, 0, 0, 0)),
        "out_of_range": ev((20, 5, 0, 0)),
        "bad_polarity": ev((20, 0, 0, 2)),
        "bad_dtype": np.zeros(1, dtype=[("t", "<i8")]),
    }
    for code, packet in bad_packets.items():
        with pytest.raises(EventError) as err:
            b.push(packet)
        assert err.value.code == code
        assert (b.t0, b.last_t, b.bins_emitted, b.skipped_bins, b.dropped_events, b.open_bin_start) == state
    out += [b.push(good2), b.flush()]
    np.testing.assert_array_equal(np.concatenate(out), expected)


def test_first_packet_rejected_leaves_t0_unset():
    b = FrameBinner(CFG)
    with pytest.raises(EventError):
        b.push(ev((50, 0, 0, 0), (40, 0, 0, 0)))
    assert b.t0 is None and b.last_t is None
    b.push(ev((60, 0, 0, 0)))
    assert b.t0 == 60


def test_encode_events_window_and_num_bins():
    events = ev((5, 0, 0, 1), (25, 4, 2, 0), (44, 0, 0, 1), (45, 0, 0, 0))
    # t_end = 45 keeps bins [0,10) .. [40,50): the last one cut short; t=45 is outside.
    out = encode_events(events, CFG, t_start=0, t_end=45)
    np.testing.assert_array_equal(out, [frame((1, 0, 0, 1)), zero(), frame((0, 1, 2, 1)), zero(),
                                        frame((1, 0, 0, 1))])
    np.testing.assert_array_equal(encode_events(events, CFG, t_start=0, t_end=45, num_bins=2), out[:2])
    padded = encode_events(events, CFG, t_start=0, t_end=45, num_bins=7)
    assert padded.shape == (7, 2, 2, 3)
    np.testing.assert_array_equal(padded[:5], out)
    assert not padded[5:].any()
    # Without t_end: up to the bin of the last event, grid from the first event (t0 = 5):
    # t = 44 is in bin 3, t = 45 in bin 4.
    whole = encode_events(events, CFG)
    np.testing.assert_array_equal(whole, [frame((1, 0, 0, 1)), zero(), frame((0, 1, 2, 1)),
                                          frame((1, 0, 0, 1)), frame((0, 0, 0, 1))])


def test_encode_events_without_events():
    assert encode_events(ev(), CFG).shape == (0, 2, 2, 3)
    assert encode_events(ev(), CFG, num_bins=4).shape == (4, 2, 2, 3)
    assert encode_events(ev(), CFG, t_start=0, t_end=30).shape == (3, 2, 2, 3)


def test_large_packets_equal_small_ones():
    rng = np.random.default_rng(0)
    n = 150_000  # more than one internal pass of FrameBinner.push
    events = make_events(np.sort(rng.integers(0, 300_000, n)), rng.integers(0, 5, n), rng.integers(0, 3, n),
                         rng.integers(0, 2, n))
    cfg = BinnerConfig(SENSOR, dt_us=1000, ds=2)
    whole = encode_events(events, cfg)
    b = FrameBinner(cfg)
    split = np.concatenate([*(b.push(events[i : i + 1000]) for i in range(0, n, 1000)), b.flush()])
    np.testing.assert_array_equal(split, whole)
    assert whole.shape == (300, 2, 2, 3) and whole.sum() == n


# --- properties -----------------------------------------------------------------------------

@st.composite
def recordings(draw):
    """A sorted recording on the 5 x 3 sensor with repeated timestamps and long gaps."""
    n = draw(st.integers(0, 40))
    deltas = draw(hnp.arrays(np.int64, n, elements=st.sampled_from([0, 0, 1, 3, 7, 20, 90])))
    if n:
        deltas[0] = draw(st.integers(0, 30))
    x = draw(hnp.arrays(np.uint16, n, elements=st.integers(0, 4)))
    y = draw(hnp.arrays(np.uint16, n, elements=st.integers(0, 2)))
    p = draw(hnp.arrays(np.uint8, n, elements=st.integers(0, 1)))
    cfg = BinnerConfig(
        SENSOR,
        dt_us=draw(st.sampled_from([1, 4, 10])),
        ds=draw(st.integers(1, 3)),
        mode=draw(st.sampled_from(["count", "binary"])),
        max_gap_bins=draw(st.integers(0, 3)),
    )
    return make_events(np.cumsum(deltas), x, y, p), cfg


def reference(events, cfg):
    """Dense per-bin counts with np.add.at, then the gap rule bin by bin: slow and obvious."""
    if events.size == 0:
        return np.zeros((0, *cfg.frame_shape), np.float32)
    k = (events["t"] - events["t"][0]) // cfg.dt_us
    dense = np.zeros((int(k[-1]) + 1, *cfg.frame_shape), np.float32)
    np.add.at(dense, (k, events["p"], events["y"] // cfg.ds, events["x"] // cfg.ds), 1)
    if cfg.mode == "binary":
        dense = (dense > 0).astype(np.float32)
    kept, run = [], 0
    for f in dense:
        if f.any():
            kept.append(f)
            run = 0
        elif run < cfg.max_gap_bins:
            kept.append(f)
            run += 1
    return np.array(kept, np.float32).reshape(-1, *cfg.frame_shape)


@settings(max_examples=150, deadline=None)
@given(recordings(), st.data())
def test_any_split_gives_the_frames_of_the_whole(rec, data):
    """Packets split anywhere (empty ones too), with clock ticks between them, change nothing."""
    events, cfg = rec
    whole = FrameBinner(cfg)
    expected = np.concatenate([whole.push(events), whole.flush()])
    np.testing.assert_array_equal(expected, reference(events, cfg))
    np.testing.assert_array_equal(encode_events(events, cfg), expected)

    cuts = sorted(data.draw(st.lists(st.integers(0, events.size), max_size=8)))  # repeats: empty packets
    b = FrameBinner(cfg)
    out = []
    for lo, hi in zip([0, *cuts], [*cuts, events.size]):
        out.append(b.push_timed(events[lo:hi]))
        if hi < events.size and b.last_t is not None and data.draw(st.booleans()):
            # A live stream's clock may complete bins between packets, never past the next event.
            out.append(b.advance_to_timed(data.draw(st.integers(b.last_t, int(events["t"][hi])))))
    out.append(b.flush_timed())
    np.testing.assert_array_equal(np.concatenate([o.frames for o in out]), expected)
    assert (b.bins_emitted, b.skipped_bins, b.dropped_events) == (
        whole.bins_emitted, whole.skipped_bins, whole.dropped_events)
    # each frame's bin start is on the grid, strictly increasing, and the frame holds exactly the
    # events of that bin
    starts = np.concatenate([o.t_start_us for o in out])
    assert starts.shape == (expected.shape[0],)
    if starts.size:
        t0 = int(events["t"][0])
        assert ((starts - t0) % cfg.dt_us == 0).all() and (np.diff(starts) > 0).all()
        for f, s in zip(expected, starts.tolist()):
            inside = events[(events["t"] >= s) & (events["t"] < s + cfg.dt_us)]
            np.testing.assert_array_equal(f, encode_events(inside, cfg, t_start=s, num_bins=1)[0])


def test_a_binner_state_moved_to_a_fresh_binner_continues_identically():
    """state_dict / load_state_dict (resumable sessions), cut anywhere, open bin and gap run included."""
    rng = np.random.default_rng(5)
    cfg = BinnerConfig(SensorSize(64, 48), 10_000, 4, max_gap_bins=3)
    t = np.sort(np.concatenate([rng.integers(0, 60_000, 300), rng.integers(500_000, 540_000, 300)]))
    ev = make_events(t, rng.integers(0, 64, t.size), rng.integers(0, 48, t.size), rng.integers(0, 2, t.size))
    whole = FrameBinner(cfg)
    ref = np.concatenate([whole.push(ev), whole.flush()])
    for cut in (1, 137, 300, 451):
        a = FrameBinner(cfg)
        first = a.push(ev[:cut])
        b = FrameBinner(cfg)
        b.load_state_dict(a.state_dict())
        got = np.concatenate([first, b.push(ev[cut:]), b.flush()])
        np.testing.assert_array_equal(got, ref)
        assert b.skipped_bins == whole.skipped_bins and b.bins_emitted == whole.bins_emitted
    with pytest.raises(ValueError, match="open-bin counts"):
        b.load_state_dict(FrameBinner(BinnerConfig(SensorSize(8, 8), 10_000)).state_dict())


@settings(max_examples=300, deadline=None)
@given(
    t=st.lists(st.integers(-3, 60), min_size=0, max_size=12),
    x=st.integers(0, 7),
    y=st.integers(0, 5),
    p=st.integers(0, 3),
    last_t=st.one_of(st.none(), st.integers(0, 40)),
    data=st.data(),
)
def test_check_agrees_with_validate_events(t, x, y, p, last_t, data):
    """FrameBinner.check (the look-up tables as range check) accepts exactly what validate_events
    accepts, refuses with the same code, and returns each event's flat frame pixel."""
    from models.events.types import validate_events

    n = len(t)
    xs = data.draw(st.lists(st.integers(0, x), min_size=n, max_size=n))
    ys = data.draw(st.lists(st.integers(0, y), min_size=n, max_size=n))
    ps = data.draw(st.lists(st.integers(0, p), min_size=n, max_size=n))
    events = make_events(t, xs, ys, ps) if n else ev()
    b = FrameBinner(CFG)
    if last_t is not None:  # a stream that has accepted events up to last_t
        b.push(ev((last_t, 0, 0, 0)))
    try:
        validate_events(events, SENSOR, b.last_t)
        expected = None
    except EventError as e:
        expected = e.code
    if expected is None:
        pix = b.check(events)
        want = [p_ * 6 + (y_ // 2) * 3 + x_ // 2 for x_, y_, p_ in zip(xs, ys, ps)]
        assert pix.tolist() == want
    else:
        with pytest.raises(EventError) as info:
            b.check(events)
        assert info.value.code == expected
