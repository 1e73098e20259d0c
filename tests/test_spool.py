"""The disk spool: order, durability format, torn tails, size cap."""

import pytest

from kaizenlm.ingest.spool import Spool, SpoolFull


def test_append_replay_in_order(tmp_path):
    spool = Spool(tmp_path, 1_000_000)
    spool.append([("t", b"k1", b"v1"), ("t", b"k2", b"v2")])
    spool.append([("u", b"k3", b"v3")])
    segments = spool.seal()
    records = [r for seg in segments for r in spool.read_segment(seg)]
    assert records == [("t", b"k1", b"v1"), ("t", b"k2", b"v2"), ("u", b"k3", b"v3")]
    spool.append([("t", b"k4", b"v4")])  # after seal: a new segment, replayed after the older ones
    assert len(spool.seal()) == 2
    for seg in segments:
        spool.remove_segment(seg)
    assert [r for seg in spool.seal() for r in spool.read_segment(seg)] == [("t", b"k4", b"v4")]


def test_size_survives_reopen_and_torn_tail_is_ignored(tmp_path):
    spool = Spool(tmp_path, 1_000_000)
    spool.append([("t", b"k", b"value-with\x00nul")])
    (seg,) = spool.seal()
    with open(seg, "ab") as f:
        f.write(b"\x10\x00\x00\x00garbage")  # a crash mid-append
    reopened = Spool(tmp_path, 1_000_000)
    assert reopened.size_bytes == seg.stat().st_size
    assert reopened.read_segment(seg) == [("t", b"k", b"value-with\x00nul")]


def test_cap_raises_spool_full(tmp_path):
    spool = Spool(tmp_path, 100)
    spool.append([("t", b"k", b"x" * 50)])
    with pytest.raises(SpoolFull):
        spool.append([("t", b"k", b"x" * 50)])
    assert spool.size_bytes < 100
