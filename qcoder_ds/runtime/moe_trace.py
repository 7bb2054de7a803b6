"""Routing traces: which experts each layer used for each token, streamed to disk.

The runtime records a trace while it decodes (``TraceWriter.token`` once per token); the cache
simulator replays it under every eviction policy and Belady's optimum, so policies are compared
on the same accesses, offline, without rerunning the model.

File format (little-endian), compact so a long decode of the 48-layer model stays small
(48 x 8 x 2 bytes = 768 bytes a token):

- 8 bytes magic ``QCMOETR1``;
- u32 n, then n bytes of JSON: ``{"layers", "experts", "top_k", "model"}``;
- one record per token: ``layers x top_k`` u16 expert ids, layer by layer; a layer that used
  fewer than top_k experts is padded with 0xFFFF.

Records are fixed-size, so a file cut mid-record (a killed run) is detected by its length.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from qcoder_ds.errors import QcoderError

MAGIC = b"QCMOETR1"
PAD = 0xFFFF
_MAX_EXPERTS = PAD  # ids are u16 and 0xFFFF is the padding


@dataclass
class Trace:
    """A routing trace: ``tokens[t][l]`` = the expert ids layer ``l`` used for token ``t``."""

    layers: int
    experts: int
    top_k: int
    model: str
    tokens: list[list[list[int]]] = field(default_factory=list)

    def accesses(self) -> list[tuple[int, int]]:
        """Every (layer, expert) access in decode order: token by token, layer by layer."""
        return [(layer, e) for tok in self.tokens for layer, ids in enumerate(tok) for e in ids]


def _check_header(layers: int, experts: int, top_k: int) -> None:
    if layers < 1 or experts < 1 or top_k < 1:
        raise QcoderError(
            "trace header: layers, experts and top_k must be positive, got "
            f"{layers}, {experts}, {top_k}"
        )
    if experts > _MAX_EXPERTS:
        raise QcoderError(f"trace: at most {_MAX_EXPERTS} experts per layer, got {experts}")
    if top_k > experts:
        raise QcoderError(f"trace: top_k {top_k} is more than the {experts} experts per layer")


class TraceWriter:
    """Streams a trace to ``path``; a context manager. Records are buffered and written on
    ``close`` (or every 256 tokens), so a long decode never holds the whole trace in memory."""

    _FLUSH_EVERY = 256

    def __init__(
        self, path: str | os.PathLike, layers: int, experts: int, top_k: int, model: str
    ) -> None:
        _check_header(layers, experts, top_k)
        self.path = Path(path)
        self.layers, self.experts, self.top_k, self.model = layers, experts, top_k, model
        self.count = 0
        header = json.dumps(
            {"layers": layers, "experts": experts, "top_k": top_k, "model": model}
        ).encode()
        self._file = open(self.path, "wb")  # noqa: SIM115 - closed in close()
        self._file.write(MAGIC + struct.pack("<I", len(header)) + header)
        self._pending: list[np.ndarray] = []

    def token(self, experts_per_layer: Sequence[Sequence[int]]) -> None:
        """Record one token: the expert ids each layer used (one list per layer, <= top_k ids)."""
        if self._file is None:
            raise QcoderError(f"trace {self.path} is closed; open a new TraceWriter to record more")
        if len(experts_per_layer) != self.layers:
            raise QcoderError(
                f"trace token {self.count}: {len(experts_per_layer)} layers given, "
                f"the trace has {self.layers}"
            )
        record = np.full((self.layers, self.top_k), PAD, dtype="<u2")
        for layer, ids in enumerate(experts_per_layer):
            ids = [int(e) for e in ids]
            if len(ids) > self.top_k:
                raise QcoderError(
                    f"trace token {self.count}, layer {layer}: {len(ids)} experts, "
                    f"top_k is {self.top_k}"
                )
            bad = [e for e in ids if not 0 <= e < self.experts]
            if bad:
                raise QcoderError(
                    f"trace token {self.count}, layer {layer}: expert id {bad[0]} "
                    f"out of range 0..{self.experts - 1}"
                )
            record[layer, : len(ids)] = ids
        self._pending.append(record)
        self.count += 1
        if len(self._pending) >= self._FLUSH_EVERY:
            self._flush()

    def _flush(self) -> None:
        if self._pending and self._file is not None:
            self._file.write(np.stack(self._pending).tobytes())
            self._pending = []

    def close(self) -> None:
        """Write what is buffered and close the file (idempotent)."""
        if self._file is None:
            return
        self._flush()
        self._file.close()
        self._file = None

    def __enter__(self) -> TraceWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_trace(path: str | os.PathLike) -> Trace:
    """Read a trace written by TraceWriter; a file that is not one, was cut mid-record, or holds
    an expert id outside its header's range is a QcoderError that says which."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise QcoderError(f"cannot read trace {path}: {exc.strerror or exc}") from None
    if data[: len(MAGIC)] != MAGIC:
        raise QcoderError(f"{path} is not a qcoder MoE trace (no {MAGIC.decode()} header)")
    pos = len(MAGIC)
    if len(data) < pos + 4:
        raise QcoderError(f"trace {path} is truncated inside its header")
    (n,) = struct.unpack_from("<I", data, pos)
    pos += 4
    if len(data) < pos + n:
        raise QcoderError(f"trace {path} is truncated inside its header")
    try:
        header = json.loads(data[pos : pos + n])
        layers, experts, top_k = int(header["layers"]), int(header["experts"]), int(header["top_k"])
        model = str(header.get("model", ""))
    except (ValueError, KeyError, TypeError) as exc:
        raise QcoderError(f"trace {path} has a damaged header: {exc}") from None
    _check_header(layers, experts, top_k)
    pos += n
    record = layers * top_k * 2
    body = len(data) - pos
    if body % record:
        raise QcoderError(
            f"trace {path} is truncated mid-record: {body} bytes of records is not a multiple of "
            f"{record} ({layers} layers x top_k {top_k} x 2 bytes); {body // record} whole tokens"
        )
    ids = np.frombuffer(data, dtype="<u2", offset=pos).reshape(-1, layers, top_k)
    bad = (ids != PAD) & (ids >= experts)
    if bad.any():
        t, layer, _ = (int(v) for v in np.argwhere(bad)[0])
        value = int(ids[t, layer][bad[t, layer]][0])
        raise QcoderError(
            f"trace {path}: token {t}, layer {layer} has expert id {value}, "
            f"out of range 0..{experts - 1}"
        )
    tokens = [[[int(e) for e in row if e != PAD] for row in tok] for tok in ids.tolist()]
    return Trace(layers=layers, experts=experts, top_k=top_k, model=model, tokens=tokens)
