"""Read a GGUF file's header (metadata key/values and tensor directory) without the tensors.

``gguf.GGUFReader`` builds one numpy view per vocabulary string and merge: on the embedded
model (300,000 of them) that takes 20-30 s before the first token can be encoded. The header
format is small and stable (GGUF v2/v3), so this module walks it directly in well under a
second. It is what the tokenizer, the chat template and the source checks read; weights still
go through ``gguf`` (see ``gguf_checkpoint.py``).
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from qcoder_ds.errors import ModelError

_MAGIC = b"GGUF"
# GGUF value types -> (struct code, numpy dtype) for the fixed-size ones
_SCALARS = {
    0: ("B", np.uint8), 1: ("b", np.int8), 2: ("H", np.uint16), 3: ("h", np.int16),
    4: ("I", np.uint32), 5: ("i", np.int32), 6: ("f", np.float32), 7: ("?", np.bool_),
    10: ("Q", np.uint64), 11: ("q", np.int64), 12: ("d", np.float64),
}
_STRING, _ARRAY = 8, 9


class _Truncated(Exception):
    pass


@dataclass(frozen=True)
class GGUFTensorInfo:
    """One entry of the tensor directory; ``shape`` is in GGUF order (fastest axis first)."""

    name: str
    shape: tuple[int, ...]
    type_name: str
    offset: int  # absolute byte offset in the file
    n_bytes: int


@dataclass
class GGUFMetadata:
    """The key/value metadata and tensor directory of one GGUF file."""

    path: Path
    version: int
    fields: dict[str, Any]
    tensors: list[GGUFTensorInfo] = field(default_factory=list)
    file_size: int = 0

    def get(self, key: str, default: Any = None) -> Any:
        return self.fields.get(key, default)

    @property
    def architecture(self) -> str:
        return str(self.fields.get("general.architecture", ""))


class _Cursor:
    def __init__(self, buf: memoryview, endian: str):
        self.buf, self.pos, self.e = buf, 0, endian

    def take(self, n: int) -> memoryview:
        if self.pos + n > len(self.buf):
            raise _Truncated
        out = self.buf[self.pos:self.pos + n]
        self.pos += n
        return out

    def unpack(self, code: str):
        size = struct.calcsize(code)
        if self.pos + size > len(self.buf):
            raise _Truncated
        value = struct.unpack_from(self.e + code, self.buf, self.pos)[0]
        self.pos += size
        return value

    def string(self) -> str:
        n = self.unpack("Q")
        return str(self.take(n), "utf-8")

    def value(self, vtype: int):
        if vtype in _SCALARS:
            return self.unpack(_SCALARS[vtype][0])
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            etype, count = self.unpack("I"), self.unpack("Q")
            if etype in _SCALARS:
                dtype = np.dtype(_SCALARS[etype][1]).newbyteorder(self.e)
                raw = self.take(count * dtype.itemsize)
                return np.frombuffer(raw, dtype=dtype).tolist()
            if etype == _STRING:
                return self._strings(count)
            return [self.value(etype) for _ in range(count)]
        raise ValueError(f"unknown GGUF value type {vtype}")

    def _strings(self, count: int) -> list[str]:
        # the hot loop of the whole module: 150k+ vocabulary strings
        buf, pos, out = self.buf, self.pos, []
        fmt = struct.Struct(self.e + "Q")
        end = len(buf)
        for _ in range(count):
            if pos + 8 > end:
                raise _Truncated
            n = fmt.unpack_from(buf, pos)[0]
            pos += 8
            if pos + n > end:
                raise _Truncated
            out.append(str(buf[pos:pos + n], "utf-8"))
            pos += n
        self.pos = pos
        return out


def read_gguf_metadata(path: str | Path, tensors: bool = True) -> GGUFMetadata:
    """Parse the header of ``path``; a missing, foreign or truncated file is a ModelError."""
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: no such GGUF file")
    size = path.stat().st_size
    if size < 24:
        raise ModelError(f"{path}: truncated GGUF ({size} bytes, shorter than a GGUF header)")
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        buf = memoryview(mm)
        try:
            if bytes(buf[:4]) != _MAGIC:
                raise ModelError(f"{path}: not a GGUF file (it does not start with b'GGUF')")
            version = struct.unpack_from("<I", buf, 4)[0]
            endian = "<"
            if version & 0xFFFF == 0:  # written on a big-endian machine
                endian, version = ">", struct.unpack_from(">I", buf, 4)[0]
            if version not in (2, 3):
                raise ModelError(f"{path}: GGUF version {version} is not supported (2 and 3 are)")
            cur = _Cursor(buf, endian)
            cur.pos = 8
            n_tensors, n_kv = cur.unpack("Q"), cur.unpack("Q")
            fields: dict[str, Any] = {}
            for _ in range(n_kv):
                key = cur.string()
                fields[key] = cur.value(cur.unpack("I"))
            infos: list[GGUFTensorInfo] = []
            if tensors:
                raw = []
                for _ in range(n_tensors):
                    name = cur.string()
                    dims = tuple(cur.unpack("Q") for _ in range(cur.unpack("I")))
                    raw.append((name, dims, cur.unpack("I"), cur.unpack("Q")))
                align = int(fields.get("general.alignment", 32))
                start = (cur.pos + align - 1) // align * align
                for name, dims, ttype, off in raw:
                    try:
                        qtype = GGMLQuantizationType(ttype)
                    except ValueError:
                        raise ModelError(
                            f"{path}: tensor {name} has unknown type {ttype}") from None
                    block, type_size = GGML_QUANT_SIZES[qtype]
                    n_el = int(np.prod(dims, dtype=np.int64)) if dims else 1
                    infos.append(GGUFTensorInfo(name, dims, qtype.name, start + off,
                                                n_el // block * type_size))
        except _Truncated:
            raise ModelError(
                f"{path}: truncated GGUF (the header runs past the end of the {size}-byte file); "
                "download or assemble it again"
            ) from None
        except (UnicodeDecodeError, ValueError, struct.error, OverflowError, MemoryError) as e:
            raise ModelError(f"{path}: corrupted GGUF header ({type(e).__name__}: {e})") from None
        finally:
            buf.release()
    for t in infos:
        if t.offset + t.n_bytes > size:
            raise ModelError(
                f"{path}: truncated GGUF (tensor {t.name} ends at byte {t.offset + t.n_bytes:,}, "
                f"the file has {size:,}); download or assemble it again"
            )
    return GGUFMetadata(path=path, version=version, fields=fields, tensors=infos, file_size=size)
