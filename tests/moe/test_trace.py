"""Routing traces: round trip, and the files read_trace must refuse."""

from __future__ import annotations

import pytest

from qcoder_ds.errors import QcoderError
from qcoder_ds.runtime.moe_trace import TraceWriter, read_trace


def _write(path, tokens, layers=2, experts=8, top_k=2):
    with TraceWriter(path, layers=layers, experts=experts, top_k=top_k, model="tiny") as w:
        for tok in tokens:
            w.token(tok)


def test_round_trip(tmp_path):
    tokens = [[[1, 7], [0, 3]], [[7, 1], [2]], [[5, 6], [6, 5]]]
    path = tmp_path / "t.trace"
    _write(path, tokens)
    trace = read_trace(path)
    assert (trace.layers, trace.experts, trace.top_k, trace.model) == (2, 8, 2, "tiny")
    assert trace.tokens == tokens
    assert trace.accesses()[:5] == [(0, 1), (0, 7), (1, 0), (1, 3), (0, 7)]


def test_streams_many_tokens(tmp_path):
    path = tmp_path / "t.trace"
    tokens = [[[t % 8, (t + 1) % 8], [(3 * t) % 8]] for t in range(1000)]
    _write(path, tokens)
    assert read_trace(path).tokens == tokens


def test_not_a_trace(tmp_path):
    path = tmp_path / "x.trace"
    path.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\x00" * 40)
    with pytest.raises(QcoderError, match="not a qcoder MoE trace"):
        read_trace(path)


def test_truncated_mid_record(tmp_path):
    path = tmp_path / "t.trace"
    _write(path, [[[1, 2], [3, 4]]] * 3)
    data = path.read_bytes()
    path.write_bytes(data[:-3])
    with pytest.raises(QcoderError, match="truncated mid-record.*2 whole tokens"):
        read_trace(path)
    path.write_bytes(data[:12])
    with pytest.raises(QcoderError, match="truncated inside its header"):
        read_trace(path)


def test_ids_out_of_range(tmp_path):
    path = tmp_path / "t.trace"
    _write(path, [[[1, 2], [3, 4]], [[1, 2], [3, 4]]])
    data = bytearray(path.read_bytes())
    data[-2:] = (9).to_bytes(2, "little")  # token 1, layer 1, slot 1 -> expert 9 of 8
    path.write_bytes(bytes(data))
    with pytest.raises(QcoderError, match="token 1, layer 1 has expert id 9, out of range 0..7"):
        read_trace(path)


def test_writer_refuses_bad_tokens(tmp_path):
    with TraceWriter(tmp_path / "t.trace", layers=2, experts=8, top_k=2, model="m") as w:
        with pytest.raises(QcoderError, match="out of range"):
            w.token([[8], [0]])
        with pytest.raises(QcoderError, match="3 layers given"):
            w.token([[0], [0], [0]])
        with pytest.raises(QcoderError, match="3 experts, top_k is 2"):
            w.token([[0, 1, 2], [0]])
    with pytest.raises(QcoderError, match="closed"):
        w.token([[0], [0]])
