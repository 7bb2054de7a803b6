"""The expert store: a mixture-of-experts model's experts on disk, one aligned blob per expert.

Qwen3-Coder-30B-A3B has 48 x 128 experts (~17 GB in int4), more than many machines hold, so
the exporter writes them here one at a time as it quantizes them (never the whole model in
memory) and the runtime reads back only the experts a token is routed to (``os.pread``).

Layout of a store folder::

    experts.bin   a 4096-byte header (magic, format version, export id), then one blob per
                  (layer, expert), each starting on a 4096-byte boundary; a blob holds the
                  expert's arrays (e.g. gate_up.packed, gate_up.scales, down.packed, ...) at
                  fixed offsets inside it, each 64-byte aligned
    experts.json  the index, written last: format, export id, layers x experts, quantization,
                  the blob layout (name, dtype, shape, offset of each array), each blob's
                  offset and sha256, and the size experts.bin must have

Every expert of a store has the same layout (one shape per array), so the index holds it once.
The export id ties the store to the graphs of the same export: a store copied from another
export (or another model) is refused, as is a truncated one, rather than run with wrong
weights. Each blob's sha256 is checked the first time it is read (``verify``), so a damaged
blob is an error, never different numbers; an expert evicted and read again is not hashed
again (the hash cost as much as building the expert).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qcoder_ds.errors import ModelError
from qcoder_ds.paths import atomic_write_text

STORE_BIN = "experts.bin"
STORE_INDEX = "experts.json"
FORMAT = "qcoder-expert-store"
FORMAT_VERSION = 1
MAGIC = b"QCDREXPT"
#: blobs start on page boundaries, so a read maps whole pages and O_DIRECT stays possible
BLOB_ALIGN = 4096
#: arrays inside a blob: enough for any SIMD load
ARRAY_ALIGN = 64
HEADER_BYTES = 4096


class ExpertStoreError(ModelError):
    """An expert store is missing, truncated, damaged or from another export."""


@dataclass(frozen=True)
class ArraySpec:
    """Where one array sits inside every blob of a store."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    offset: int

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize


def _layout(arrays: Mapping[str, np.ndarray]) -> tuple[list[ArraySpec], int]:
    specs, pos = [], 0
    for name, a in arrays.items():
        pos += (-pos) % ARRAY_ALIGN
        specs.append(ArraySpec(name, np.dtype(a.dtype).str, tuple(int(d) for d in a.shape), pos))
        pos += a.nbytes
    return specs, pos


def _header(export_id: str) -> bytes:
    head = MAGIC + FORMAT_VERSION.to_bytes(4, "little") + export_id.encode("ascii")
    return head.ljust(HEADER_BYTES, b"\0")


class ExpertStoreWriter:
    """Writes a store as the export produces experts: ``add`` each (layer, expert) once, then
    ``close`` writes the index. Until then the folder has no experts.json and is not a store."""

    def __init__(self, directory: str | os.PathLike, layers: int, experts: int, export_id: str,
                 quantization: Mapping[str, object]):
        if not export_id or len(export_id) > 128 or not export_id.isascii():
            raise ExpertStoreError(f"bad export id {export_id!r}")
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.layers, self.experts, self.export_id = layers, experts, export_id
        self.quantization = dict(quantization)
        self._fh = open(self.dir / STORE_BIN, "wb")
        self._fh.write(_header(export_id))
        self._specs: list[ArraySpec] | None = None
        self._blob_bytes = 0
        self._offsets: dict[tuple[int, int], int] = {}
        self._sha: dict[tuple[int, int], str] = {}

    def add(self, layer: int, expert: int, arrays: Mapping[str, np.ndarray]) -> None:
        """Append one expert's arrays (the same names, dtypes and shapes for every expert)."""
        key = (layer, expert)
        if not (0 <= layer < self.layers and 0 <= expert < self.experts):
            raise ExpertStoreError(f"expert {key} is outside {self.layers} x {self.experts}")
        if key in self._offsets:
            raise ExpertStoreError(f"expert {key} was already written")
        specs, size = _layout(arrays)
        if self._specs is None:
            self._specs, self._blob_bytes = specs, size
        elif specs != self._specs:
            raise ExpertStoreError(f"expert {key} has another layout than the first expert "
                                   f"({[(s.name, s.shape) for s in specs]})")
        blob = bytearray(size)
        for spec, a in zip(specs, arrays.values(), strict=True):
            blob[spec.offset:spec.offset + spec.nbytes] = np.ascontiguousarray(a).tobytes()
        pad = (-self._fh.tell()) % BLOB_ALIGN
        if pad:
            self._fh.write(b"\0" * pad)
        self._offsets[key] = self._fh.tell()
        self._fh.write(blob)
        self._sha[key] = hashlib.sha256(blob).hexdigest()

    def close(self) -> Path:
        """Flush experts.bin and write experts.json; every expert must have been added."""
        missing = self.layers * self.experts - len(self._offsets)
        if missing:
            self._fh.close()
            raise ExpertStoreError(f"the expert store misses {missing} of "
                                   f"{self.layers * self.experts} experts")
        self._fh.flush()
        os.fsync(self._fh.fileno())
        size = self._fh.tell()
        self._fh.close()
        index = {
            "format": FORMAT, "version": FORMAT_VERSION, "export_id": self.export_id,
            "layers": self.layers, "experts": self.experts, "quantization": self.quantization,
            "blob_bytes": self._blob_bytes, "file_bytes": size,
            "layout": [{"name": s.name, "dtype": s.dtype, "shape": list(s.shape),
                        "offset": s.offset} for s in self._specs or []],
            "offsets": [[self._offsets[i, e] for e in range(self.experts)]
                        for i in range(self.layers)],
            "sha256": [[self._sha[i, e] for e in range(self.experts)]
                       for i in range(self.layers)],
        }
        atomic_write_text(self.dir / STORE_INDEX, json.dumps(index))
        return self.dir

    def abort(self) -> None:
        if not self._fh.closed:
            self._fh.close()


class ExpertStore:
    """A store opened for reading; ``read(layer, expert)`` -> the expert's arrays.

    ``export_id``, when given, must match the store's (the graphs of an export record the id
    of the store written with them). Reads are ``os.pread`` calls, safe from several threads
    (the prefetcher reads while the decoder computes)."""

    def __init__(self, directory: str | os.PathLike, export_id: str | None = None,
                 verify: bool = True):
        self.dir = Path(directory)
        self.verify = verify
        self._verified: set[tuple[int, int]] = set()
        index_path, bin_path = self.dir / STORE_INDEX, self.dir / STORE_BIN
        if not index_path.is_file() or not bin_path.is_file():
            raise ExpertStoreError(f"{self.dir}: no expert store here (expected {STORE_INDEX} "
                                   f"and {STORE_BIN}); export the model again")
        try:
            idx = json.loads(index_path.read_text())
            if idx.get("format") != FORMAT:
                raise ValueError(f"format {idx.get('format')!r}")
            if idx.get("version") != FORMAT_VERSION:
                raise ValueError(f"format version {idx.get('version')}, this build reads "
                                 f"{FORMAT_VERSION}")
            self.export_id: str = idx["export_id"]
            self.layers: int = int(idx["layers"])
            self.experts: int = int(idx["experts"])
            self.quantization: dict = dict(idx["quantization"])
            self.blob_bytes: int = int(idx["blob_bytes"])
            self.file_bytes: int = int(idx["file_bytes"])
            self.layout = [ArraySpec(a["name"], a["dtype"], tuple(a["shape"]), int(a["offset"]))
                           for a in idx["layout"]]
            self._offsets = np.asarray(idx["offsets"], np.int64)
            self._sha = idx["sha256"]
            if self._offsets.shape != (self.layers, self.experts):
                raise ValueError("offsets do not cover layers x experts")
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ExpertStoreError(f"{index_path}: not a readable expert store index ({e}); "
                                   f"export the model again") from None
        if export_id is not None and export_id != self.export_id:
            raise ExpertStoreError(
                f"{self.dir}: this expert store belongs to another export (id "
                f"{self.export_id[:12]}..., the graphs expect {export_id[:12]}...); "
                f"export the model again")
        actual = bin_path.stat().st_size
        if actual < self.file_bytes:
            raise ExpertStoreError(f"{bin_path}: truncated ({actual:,} bytes, the index says "
                                   f"{self.file_bytes:,}); export the model again")
        self._fd = os.open(bin_path, os.O_RDONLY)
        head = os.pread(self._fd, HEADER_BYTES, 0)
        want = _header(self.export_id)
        if head != want:
            os.close(self._fd)
            raise ExpertStoreError(
                f"{bin_path}: its header does not match {STORE_INDEX} (a store file from "
                f"another export); export the model again")

    @property
    def total_bytes(self) -> int:
        """Bytes of all experts (what a fully resident cache holds)."""
        return self.blob_bytes * self.layers * self.experts

    def read(self, layer: int, expert: int, buf: np.ndarray | None = None
             ) -> dict[str, np.ndarray]:
        """One expert's arrays, read from disk: views into ``buf`` (uint8, ``blob_bytes``
        long: a buffer to reuse, whose fresh pages would cost more than the read) or into a
        new buffer."""
        if not (0 <= layer < self.layers and 0 <= expert < self.experts):
            raise ExpertStoreError(f"no expert ({layer}, {expert}) in a store of "
                                   f"{self.layers} layers x {self.experts} experts")
        if buf is None:
            buf = np.empty(self.blob_bytes, np.uint8)
        elif buf.dtype != np.uint8 or buf.nbytes != self.blob_bytes:
            raise ValueError(f"a read buffer must be {self.blob_bytes} uint8 bytes")
        got = os.preadv(self._fd, [buf], int(self._offsets[layer, expert]))
        if got != self.blob_bytes:
            raise ExpertStoreError(f"{self.dir / STORE_BIN}: expert ({layer}, {expert}) is cut "
                                   f"short ({got} of {self.blob_bytes} bytes); export again")
        if self.verify and (layer, expert) not in self._verified:
            if hashlib.sha256(buf).hexdigest() != self._sha[layer][expert]:
                raise ExpertStoreError(f"{self.dir / STORE_BIN}: expert ({layer}, {expert}) "
                                       f"is damaged (sha256 differs from the index); export "
                                       f"again")
            self._verified.add((layer, expert))
        return {s.name: np.frombuffer(buf, s.dtype, int(np.prod(s.shape, dtype=np.int64)),
                                      s.offset).reshape(s.shape)
                for s in self.layout}

    def close(self) -> None:
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)
            self._fd = None

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass
