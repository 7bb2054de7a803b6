"""`qcoder eval`: pass rates of the raw model and of the copilot pipeline on DS-1000 and Spider.

Writes one JSON report under ``benchmarks/results/`` (per category: pass rates of both systems,
the ids that fail, how many answers needed a repair). The full development split is the
default; ``--sample N --seed S`` measures a fixed random subset when hours are not available.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from qcoder_ds.copilot.errors import CopilotError
from qcoder_ds.copilot.evaluation import CATEGORIES

#: what ``--data-dir`` must hold
LAYOUT = ("ds1000/pandas.jsonl.gz and ds1000/matplotlib.jsonl.gz (DS-1000 problems, one "
          "JSON object a line: prompt, reference_code, code_context, metadata), "
          "spider/questions.json, spider/tables.json and "
          "spider/database/<db_id>/<db_id>.sqlite (Spider dev)")


def default_data_dir() -> Path:
    """$QCODER_EVAL_DIR: the evaluation data, when ``--data-dir`` does not name it."""
    env = os.environ.get("QCODER_EVAL_DIR")
    if not env:
        raise CopilotError("name the evaluation data with --data-dir DIR (or QCODER_EVAL_DIR): "
                           "a folder with " + LAYOUT)
    return Path(env)


def _write(out: Path, report: dict) -> None:
    """Write the report whole (temp file, then rename)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=2))
    tmp.replace(out)


def _sample_sizes(text: str | None, cats: list[str]) -> int | dict[str, int] | None:
    """``None`` (all), ``N``, or ``cat=N,...`` (categories not named get all problems)."""
    if text is None:
        return None
    try:
        if "=" not in text:
            n = int(text)
            sizes: int | dict[str, int] = n
            values = [n]
        else:
            sizes = {k.strip(): int(v) for k, v in (p.split("=", 1) for p in text.split(","))}
            values = list(sizes.values())
    except ValueError:
        raise CopilotError(f"--sample takes N or cat=N,...; got {text!r}") from None
    if any(v < 1 for v in values):
        raise CopilotError("--sample sizes must be at least 1")
    if isinstance(sizes, dict):
        unknown = set(sizes) - set(cats)
        if unknown:
            raise CopilotError(f"--sample names categories not evaluated: {sorted(unknown)}")
        return {c: sizes.get(c) for c in cats}  # type: ignore[misc]
    return sizes


#: what must agree between an interrupted run and its continuation (a continuation may add a
#: system: `--systems raw` first, then `--systems raw,pipeline --resume`)
_SAME_RUN = ("data_dir", "sample_per_category", "seed", "repairs", "samples", "model",
             "backend", "weights")


def _commit() -> str | None:
    """The checkout's commit, so a report says which code it measured (None outside git)."""
    try:
        r = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                           text=True, timeout=10, cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout.strip() or None if r.returncode == 0 else None


def _earlier_commits(out: Path) -> list[str]:
    try:
        return list(json.loads(out.read_text()).get("config", {}).get("commits", []))
    except (OSError, json.JSONDecodeError, AttributeError):
        return []


def _check_same_run(out: Path, config: dict) -> None:
    """Refuse to continue a report made with other settings: its answers would not add up."""
    if not out.is_file():
        return
    try:
        before = json.loads(out.read_text()).get("config", {})
    except (json.JSONDecodeError, AttributeError):
        raise CopilotError(f"{out}: not a report this command wrote; cannot --resume it") from None
    differ = [k for k in _SAME_RUN if k in before and before[k] != config[k]]
    if differ:
        raise CopilotError(f"{out} was made with other settings ("
                           + ", ".join(f"{k}: {before[k]!r} then, {config[k]!r} now"
                                       for k in differ) + "); --resume needs the same ones")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("eval", help="measure raw model vs copilot on DS-1000 and Spider",
                              description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", type=Path, default=None,
                   help="the evaluation data (default $QCODER_EVAL_DIR): a folder with "
                        + LAYOUT.replace("%", "%%"))
    p.add_argument("--categories", default=",".join(CATEGORIES),
                   help=f"comma-separated subset of {','.join(CATEGORIES)}")
    p.add_argument("--sample", default=None,
                   help="problems per category, a fixed random sample: N, or per category "
                        "like spider=40,pandas=10 (default: all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sample order (default 0)")
    p.add_argument("--systems", default="raw,pipeline", help="raw, pipeline, or both (default)")
    p.add_argument("--repairs", type=int, default=2, help="repair rounds in the pipeline")
    p.add_argument("--samples", type=int, default=None,
                   help="pipeline candidates per problem, voted on (default 1)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per graded run")
    p.add_argument("--out", type=Path, default=None,
                   help="report path (default benchmarks/results/eval-<time>.json)")
    p.add_argument("--resume", action="store_true",
                   help="continue the interrupted run written to --out: problems already in "
                        "its answers file are counted as recorded, not asked again")
    p.add_argument("--model", default=None,
                   help="catalogue name, GGUF file or HF directory (default: as `qcoder ask`)")
    p.add_argument("--backend", default="onnx")
    p.add_argument("--weights", default="int4", choices=("int4", "int8", "fp32"))
    p.add_argument("--threads", type=int, default=None)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from qcoder_ds.copilot.evaluation import evaluate, load_answers
    from qcoder_ds.copilot.pipeline import Copilot
    from qcoder_ds.engine import Engine
    from qcoder_ds.models.choice import default_model
    from qcoder_ds.paths import home

    args.model = args.model or default_model().name
    data_dir = args.data_dir or default_data_dir()
    if not data_dir.is_dir():
        raise CopilotError(f"{data_dir}: no evaluation data there (use --data-dir)")
    cats = [c.strip() for c in args.categories.split(",") if c.strip()]
    bad = [c for c in cats if c not in CATEGORIES]
    if bad or not cats:
        raise CopilotError(f"unknown categories {bad}; choose from {list(CATEGORIES)}")
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    if not systems or any(s not in ("raw", "pipeline") for s in systems):
        raise CopilotError("--systems takes raw, pipeline or raw,pipeline")
    sample = _sample_sizes(args.sample, cats)
    started = time.time()
    out = args.out or Path("benchmarks/results") / f"eval-{time.strftime('%Y%m%d-%H%M%S')}.json"
    config = {
        "data_dir": str(data_dir), "sample_per_category": sample, "seed": args.seed,
        "split": "full dev split" if sample is None else f"fixed random sample {sample}",
        "systems": systems, "repairs": args.repairs, "samples": args.samples, "model": args.model,
        "backend": args.backend, "weights": args.weights, "threads": args.threads,
        "machine": platform.machine(), "cpus": os.cpu_count(),
        "load_avg_start": os.getloadavg()[0],
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "commits": [c for c in [_commit()] if c],
    }
    answers = out.with_suffix(".answers.jsonl")
    done = {}
    if args.resume:
        if args.out is None:
            raise CopilotError("--resume continues a named report: give its --out")
        _check_same_run(out, config)
        done = load_answers(answers)
        config["resumed_answers"] = len(done)
        config["commits"] = _earlier_commits(out) + [c for c in config["commits"]
                                                     if c not in _earlier_commits(out)]
    else:
        answers.unlink(missing_ok=True)
    engine = Engine.load(args.model, backend=args.backend, weights=args.weights,
                         threads=args.threads)
    copilot = Copilot(engine, model=args.model)
    report = evaluate(data_dir, cats, sample, args.seed, systems, engine, copilot,
                      repairs=args.repairs, timeout_s=args.timeout,
                      log=lambda m: print(m, file=sys.stderr, flush=True),
                      reference_cache=home() / "eval-reference-ok.json",
                      details=answers, samples=args.samples, done=done,
                      on_progress=lambda r: _write(out, dict(r, config=dict(
                          config, seconds=round(time.time() - started, 1), partial=True))))
    config["seconds"] = round(time.time() - started, 1)
    _write(out, dict(report, config=config))
    for cat, entry in report["categories"].items():
        line = [f"{cat:10s} n={entry['n']}"]
        for s in systems:
            e = entry[s]
            line.append(f"{s} {e['passed']}/{e['total']} ({100 * (e['pass_rate'] or 0):.0f}%)")
        print("  ".join(line))
    print(f"report: {out} (every answer: {out.with_suffix('.answers.jsonl')})")
    return 0
