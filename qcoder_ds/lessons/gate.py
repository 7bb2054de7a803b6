"""The execution gate: an exercise is written only if it is proven to work.

For every exercise, in a separate process with time limits (see :mod:`worker`):
the reference solution passes all its tests; the released stub fails them; each
wrong-but-plausible solution runs and fails at least one test; and the tests give the
same result twice: the solution and the stub nbgrader actually released are run again in
a second, fresh process with another hash seed.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from qcoder_ds import isolation
from qcoder_ds.lessons.errors import GateError
from qcoder_ds.lessons.exercise import Exercise

CELL_TIMEOUT_S = 20.0


@dataclass
class ExerciseVerdict:
    """Whether one exercise passed the gate, and if not, every reason why."""

    number: int
    key: str
    passed: bool
    reasons: list[str] = field(default_factory=list)
    wrong_caught: int = 0
    wrong_total: int = 0


def _worker_env(hash_seed: str) -> dict:
    env = dict(os.environ)
    pkg_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = pkg_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH")
                                    else "")
    env.update(MPLBACKEND="Agg", PYTHONHASHSEED=hash_seed, PYTHONDONTWRITEBYTECODE="1",
               NBGRADER_EXECUTION="autograde", PYTHONWARNINGS="default")
    return env


def run_worker(job: dict, workdir: Path, hash_seed: str = "0",
               timeout: float | None = None, untrusted: bool = False) -> dict:
    """Run one worker process on ``job`` in ``workdir``; its JSON result, or GateError.

    ``untrusted`` (model-written code): CPU, file-size and address-space limits, and the
    operating-system walls of :mod:`qcoder_ds.isolation` (the staging folder and the job
    folder only, no network); where the walls cannot be built, no network where a network
    namespace can be made.
    """
    n = len(job["exercises"])
    wrongs = sum(len(e.get("wrong", e.get("cells", {}).get("wrong", []))) for e in job["exercises"])
    limit = timeout or 60.0 + job["timeout"] * 4 * (3 * n + wrongs)
    with tempfile.TemporaryDirectory(prefix="qcoder-gate-") as tmp:
        job_path, out_path = Path(tmp) / "job.json", Path(tmp) / "out.json"
        job_path.write_text(json.dumps(job), encoding="utf-8")
        cmd = [sys.executable, "-m", "qcoder_ds.lessons.worker", str(job_path), str(out_path)]
        env = _worker_env(hash_seed)
        preexec = None
        if untrusted:
            if isolation.available():
                isolation.hand_over([tmp, workdir])
                env.update(HOME=tmp, MPLCONFIGDIR=tmp)
                cmd = isolation.command(cmd, isolation.Walls(
                    writable=(tmp, str(workdir)), readable=(str(isolation.package_dir()),)))
            elif isolation.network_namespace_available():
                cmd = ["unshare", "-n", "--", *cmd]
            preexec = functools.partial(isolation.limit, cpu_s=int(limit) + 5,
                                        file_bytes=256 << 20, address_bytes=6 << 30)
        try:
            proc = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True,
                                  timeout=limit, preexec_fn=preexec)
        except subprocess.TimeoutExpired as e:
            raise GateError(f"the gate's worker ran longer than {limit:.0f} s") from e
        finally:
            isolation.take_back([tmp, workdir])
        if proc.returncode != 0 or not out_path.exists():
            tail = (proc.stderr or "").strip().splitlines()[-5:]
            raise GateError("the gate's worker failed: " + " | ".join(tail))
        return json.loads(out_path.read_text(encoding="utf-8"))


def _judge_one(number: int, key: str, runs: dict, idx: int, rerun: dict | None) -> ExerciseVerdict:
    v = ExerciseVerdict(number=number, key=key, passed=True)
    sol, stub = runs["solution"][idx], runs["stub"][idx]
    if not sol["setup"]:
        v.reasons.append(f"the data set-up fails: {sol['setup_error']}")
    if not sol["answer"]:
        v.reasons.append(f"the reference solution fails: {sol['answer_error']}")
    for part in ("visible", "hidden"):
        if not sol[part]:
            v.reasons.append(f"the reference solution fails the {part} tests: "
                             f"{sol[part + '_error']}")
        if stub[part]:
            v.reasons.append(f"the released stub passes the {part} tests")
    wrongs = runs["wrong"][idx]
    v.wrong_total = len(wrongs)
    for j, w in enumerate(wrongs, start=1):
        if not w["answer"]:
            v.reasons.append(f"wrong solution {j} does not run ({w['answer_error']}), so it "
                             "is not a plausible answer")
        elif w["visible"] and w["hidden"]:
            v.reasons.append(f"wrong solution {j} passes every test")
        else:
            v.wrong_caught += 1
    if rerun is not None:
        for name in ("solution", "stub"):
            if _outcome(rerun[name][idx]) != _outcome(runs[name][idx]):
                v.reasons.append(f"the {name} gave a different result on a second run "
                                 "(a fresh process, another hash seed)")
    v.passed = not v.reasons
    return v


def _outcome(o: dict) -> tuple:
    return (o["setup"], o["answer"], o["visible"], o["hidden"])


def judge(exercises: list[Exercise], build: dict, rerun: dict | None) -> list[ExerciseVerdict]:
    """Verdicts for every exercise, from the build run and (optionally) the second process."""
    verdicts = []
    index = {b["number"]: i for i, b in enumerate(build["built"])}
    for ex in exercises:
        if str(ex.number) in build["errors"] or ex.number in build["errors"]:
            err = build["errors"].get(str(ex.number), build["errors"].get(ex.number))
            verdicts.append(ExerciseVerdict(ex.number, ex.key, False, [err], 0, len(ex.wrong)))
            continue
        i = index[ex.number]
        verdicts.append(_judge_one(ex.number, ex.key, build["runs"], i,
                                   rerun["runs"] if rerun else None))
    return verdicts


def _untrusted(exercises: list[Exercise]) -> bool:
    return any(e.origin != "template" for e in exercises)


def build_and_gate(exercises: list[Exercise], titles: list[str], workdir: Path,
                   timeout: float = CELL_TIMEOUT_S) -> tuple[dict, list[ExerciseVerdict]]:
    """First gate pass: probe references, build cells, run every variant (one process)."""
    job = {"mode": "build", "exercises": [e.to_dict() for e in exercises], "titles": titles,
           "timeout": timeout}
    build = run_worker(job, workdir, hash_seed="0", untrusted=_untrusted(exercises))
    return build, judge(exercises, build, None)


def rerun_gate(exercises: list[Exercise], build: dict, released_stubs: dict[int, str],
               workdir: Path, timeout: float = CELL_TIMEOUT_S) -> list[ExerciseVerdict]:
    """Second pass in a fresh process (another hash seed) on the stubs as released."""
    cells = []
    for b in build["built"]:
        c = dict(b["cells"])
        c["stub"] = released_stubs.get(b["number"], c["stub"])
        cells.append({"number": b["number"], "cells": c})
    rerun = run_worker({"mode": "run", "exercises": cells, "timeout": timeout}, workdir,
                       hash_seed="1", untrusted=_untrusted(exercises))
    return judge(exercises, build, rerun)


def summary(verdicts: list[ExerciseVerdict]) -> dict:
    """Counts for reports: accepted, rejected, wrong solutions caught."""
    return {
        "exercises": len(verdicts),
        "accepted": sum(v.passed for v in verdicts),
        "rejected": sum(not v.passed for v in verdicts),
        "wrong_solutions": sum(v.wrong_total for v in verdicts),
        "wrong_caught": sum(v.wrong_caught for v in verdicts),
        "verdicts": [v.__dict__ for v in verdicts],
    }
