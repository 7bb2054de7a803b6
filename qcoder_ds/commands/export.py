"""`qcoder export`: build (or find) cached ONNX / OpenVINO exports of a model, by hand or from a
recipe under export/ (see export/README.md)."""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

from qcoder_ds.errors import QcoderError


class RecipeError(QcoderError):
    """An export recipe is unreadable or names something that does not exist."""


def register(subparsers: argparse._SubParsersAction) -> None:
    from qcoder_ds.runtime.export import BACKENDS, WEIGHTS

    p = subparsers.add_parser(
        "export", help="export a model to ONNX or OpenVINO (cached; later starts load it)",
        description="Export MODEL (catalogue name, GGUF file or HF directory) for a runtime, "
                    "or every export a --recipe lists. Results are cached by source sha256, "
                    "options and exporter version.")
    p.add_argument("model", nargs="?", help="catalogue name, GGUF file or Hugging Face directory")
    p.add_argument("--backend", default="onnx", choices=list(BACKENDS))
    p.add_argument("--weights", default="int4", choices=list(WEIGHTS),
                   help="int4 (block-32), int8, or fp32 (for parity checks)")
    p.add_argument("--recipe", type=Path, help="a TOML recipe (export/*.toml)")
    p.add_argument("--all", action="store_true", help="with --recipe: also its optional exports")
    p.add_argument("--force", action="store_true", help="rebuild even if a cached export exists")
    p.add_argument("--check", action="store_true",
                   help="load each export afterwards and run one forward pass")
    p.add_argument("--expert-ram", metavar="SIZE", default=None,
                   help="mixture-of-experts models, with --check: the expert cache's memory "
                        "(default: the recipe's [moe] expert_ram, else auto)")
    p.set_defaults(func=run)


def read_moe_section(path: Path, data: dict, weights: list[str]) -> dict:
    """A recipe's ``[moe]``: expert_weights (the experts are stored as the export's weights,
    so it must agree), expert_ram, policy, prefetch (the cache --check loads with)."""
    moe = data.get("moe") or {}
    if not isinstance(moe, dict):
        raise RecipeError(f"{path}: [moe] must be a table")
    unknown = set(moe) - {"expert_weights", "expert_ram", "policy", "prefetch"}
    if unknown:
        raise RecipeError(f"{path}: [moe] has unknown keys {', '.join(sorted(unknown))}")
    ew = moe.get("expert_weights")
    if ew is not None and any(w != ew for w in weights):
        raise RecipeError(f"{path}: [moe] expert_weights {ew!r} differs from an export's "
                          f"weights ({', '.join(weights)}); experts are stored as the "
                          f"export's weights")
    return {k: moe[k] for k in ("expert_ram", "policy", "prefetch") if k in moe}


def read_recipe(path: Path) -> tuple[str, str | None, list[dict]]:
    """(source, expected sha256 or None, [{"backend", "weights", "optional"}]) from a recipe."""
    from qcoder_ds.runtime.export import BACKENDS, WEIGHTS

    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    try:
        data = tomllib.loads(Path(path).read_text())
    except OSError as e:
        raise RecipeError(f"{path}: cannot read the recipe ({e.strerror})") from None
    except tomllib.TOMLDecodeError as e:
        raise RecipeError(f"{path}: not valid TOML ({e})") from None
    model = data.get("model") or {}
    source = model.get("source")
    if not isinstance(source, str) or not source:
        raise RecipeError(f"{path}: [model] needs a source (catalogue name, GGUF or HF dir)")
    exports = data.get("export") or []
    if not isinstance(exports, list) or not exports:
        raise RecipeError(f"{path}: no [[export]] entries")
    for i, e in enumerate(exports, 1):
        if e.get("backend") not in BACKENDS:
            raise RecipeError(f"{path}: export {i}: backend must be one of {', '.join(BACKENDS)}")
        if e.get("weights") not in WEIGHTS:
            raise RecipeError(f"{path}: export {i}: weights must be one of {', '.join(WEIGHTS)}")
    read_moe_section(path, data, [e["weights"] for e in exports])
    return source, model.get("sha256"), exports


def recipe_moe(path: Path) -> dict:
    """The cache settings of a recipe's ``[moe]`` (empty when it has none)."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    data = tomllib.loads(Path(path).read_text())
    return read_moe_section(path, data, [e.get("weights") for e in data.get("export") or []])


def run(args: argparse.Namespace) -> int:
    from qcoder_ds.models.sources import resolve

    if args.recipe:
        name, sha, exports = read_recipe(args.recipe)
        todo = [(e["backend"], e["weights"]) for e in exports if args.all or not e.get("optional")]
    elif args.model:
        name, sha, todo = args.model, None, [(args.backend, args.weights)]
    else:
        raise QcoderError("say what to export: a MODEL, or --recipe FILE")
    moe = recipe_moe(args.recipe) if args.recipe else {}
    if args.expert_ram:
        moe["expert_ram"] = args.expert_ram
    source = resolve(name, require_tokenizer=False)  # an export needs only the weights
    if sha and source.identity != sha:
        raise RecipeError(f"{name}: sha256 {source.identity} differs from the recipe's {sha}")
    for backend, weights in todo:
        out = _export_one(source, backend, weights, args.force)
        if args.check:
            _check(backend, out, moe if source.architecture == "qwen3_moe" else {})
        print(out)
    return 0


def _export_one(source, backend: str, weights: str, force: bool) -> Path:
    from qcoder_ds.runtime.export import ensure_export, export_dir, is_complete

    target = export_dir(source, backend, weights)
    if force and target.exists():
        shutil.rmtree(target)
    cached = is_complete(target)
    out = ensure_export(source, backend, weights, progress=True)
    if cached:
        print(f"{backend} {weights}: already exported (cached)", file=sys.stderr)
    return out


def _check(backend: str, out: Path, moe: dict | None = None) -> None:
    """Load the export and run one forward pass; a MoE export loads with ``moe`` (its cache
    settings; the budget defaults to auto, never every expert of a model that may not fit)."""
    import numpy as np

    from qcoder_ds.runtime.export import get_backend

    t = time.perf_counter()
    session = get_backend(backend).load(out, None, **(moe or {}))
    load_s = time.perf_counter() - t
    session.reset()
    logits = session.forward(np.array([1, 2, 3], dtype=np.int64))
    if logits.shape != (session.vocab_size,) or not np.isfinite(logits).all():
        raise QcoderError(f"{out}: the export loads but its logits are wrong "
                          f"(shape {logits.shape}); delete the folder and export again")
    print(f"{backend}: check ok, loaded in {load_s:.1f} s, context {session.max_context} tokens",
          file=sys.stderr)
