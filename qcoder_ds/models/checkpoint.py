"""Checkpoint readers: weights by Hugging Face name, as float32 numpy arrays, without torch.

Every source (a Hugging Face directory of safetensors, a GGUF file) is read through this
one interface, so the graph builders never care where weights came from. Linear weights keep
the Hugging Face layout ``[out_features, in_features]``.
"""

from __future__ import annotations

import json
import mmap
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

from qcoder_ds.errors import ModelError
from qcoder_ds.models.config import ArchConfig


class Checkpoint(ABC):
    """The weights and architecture of one model."""

    config: ArchConfig

    @abstractmethod
    def names(self) -> list[str]:
        """All tensor names, Hugging Face style."""

    @abstractmethod
    def tensor(self, name: str) -> np.ndarray:
        """One tensor as float32, Hugging Face layout. Raises ModelError if absent."""

    def has(self, name: str) -> bool:
        return name in set(self.names())


_ST_DTYPES = {
    "F32": np.float32,
    "F16": np.float16,
    "BF16": np.uint16,  # widened to float32 by hand below
    "F64": np.float64,
    "I64": np.int64,
    "I32": np.int32,
    "I8": np.int8,
    "U8": np.uint8,
}


class SafetensorsFile:
    """A memory-mapped ``.safetensors`` file; bf16 is widened to float32 (numpy has no bf16)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            with open(self.path, "rb") as f:
                n = int.from_bytes(f.read(8), "little")
                if n <= 0 or n > 100_000_000:
                    raise ValueError("bad header length")
                self.header = json.loads(f.read(n))
            self._offset = 8 + n
            self._fh = open(self.path, "rb")
            self._mm = mmap.mmap(self._fh.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError) as e:
            raise ModelError(f"{self.path}: not a readable safetensors file ({e})") from None
        self.header.pop("__metadata__", None)

    def names(self) -> list[str]:
        return list(self.header)

    def tensor(self, name: str) -> np.ndarray:
        info = self.header[name]
        dtype = info["dtype"]
        if dtype not in _ST_DTYPES:
            raise ModelError(f"{self.path}: tensor {name} has unsupported dtype {dtype}")
        start, end = info["data_offsets"]
        if self._offset + end > len(self._mm):
            raise ModelError(f"{self.path}: truncated file (tensor {name} runs past the end)")
        raw = np.frombuffer(self._mm, dtype=_ST_DTYPES[dtype], count=(end - start)
                            // np.dtype(_ST_DTYPES[dtype]).itemsize, offset=self._offset + start)
        if dtype == "BF16":
            raw = (raw.astype(np.uint32) << 16).view(np.float32)
        return raw.reshape(info["shape"]).astype(np.float32, copy=False)


class HFCheckpoint(Checkpoint):
    """A Hugging Face model directory: ``config.json`` plus one or more ``*.safetensors``."""

    def __init__(self, directory: str | Path):
        self.dir = Path(directory)
        cfg_path = self.dir / "config.json"
        if not cfg_path.is_file():
            raise ModelError(f"{self.dir}: no config.json; is this a Hugging Face model directory?")
        self.hf_config = json.loads(cfg_path.read_text())
        self.config = ArchConfig.from_hf(self.hf_config)
        files = sorted(self.dir.glob("*.safetensors"))
        if not files:
            raise ModelError(f"{self.dir}: no *.safetensors weights (pytorch .bin is not read)")
        self._where: dict[str, SafetensorsFile] = {}
        for f in files:
            st = SafetensorsFile(f)
            for n in st.names():
                self._where[n] = st

    def names(self) -> list[str]:
        return list(self._where)

    def tensor(self, name: str) -> np.ndarray:
        if name not in self._where:
            if name == "lm_head.weight" and self.config.tie_word_embeddings:
                return self.tensor("model.embed_tokens.weight")
            raise ModelError(f"{self.dir}: tensor {name} is missing from the checkpoint")
        return self._where[name].tensor(name)
