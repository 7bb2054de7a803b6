"""How far choosing among candidates can take the copilot on DS-1000 pandas: the ceiling.

Checking, voting and request examples can only pick among answers the model writes. This
draws K candidates per problem through the pipeline (greedy, then sampled; no repairs) and
grades every one of them on the hidden tests. "any" is what a perfect chooser would reach;
if it is below the raw model's rate plus the bar, no choosing gets there. Writes
benchmarks/results/selection-ceiling.json.

    .venv/bin/python benchmarks/selection_ceiling.py [--n 30] [--k 5] [--seed 2]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=30, help="problems (a fixed random sample)")
    ap.add_argument("--k", type=int, default=5, help="candidates per problem")
    ap.add_argument("--seed", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--data-dir", type=Path, default=None)
    ap.add_argument("--out", type=Path,
                    default=ROOT / "benchmarks/results/selection-ceiling.json")
    args = ap.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    from qcoder_ds.commands.eval import default_data_dir
    from qcoder_ds.copilot import evaluation as ev
    from qcoder_ds.copilot.pipeline import Copilot, Options
    from qcoder_ds.copilot.tasks import Task
    from qcoder_ds.engine import Engine
    from qcoder_ds.models.choice import default_model

    data = args.data_dir or default_data_dir()
    cache: dict[str, bool] = {}
    problems = [p for p in ev.sample(ev.load_ds1000(data, "pandas"), None, args.seed)
                if ev.reference_ok(p, cache, 60.0)][: args.n]
    model = default_model().name
    engine = Engine.load(model, threads=args.threads, progress=False)
    copilot = Copilot(engine, model=model)
    rows = []
    for p in problems:
        namespace: dict = {}
        exec(compile(ev.ds1000_setup(p), f"<setup {p.id}>", "exec"), namespace)  # noqa: S102
        t = time.perf_counter()
        ans = copilot.ask(ev.ds1000_request(p), namespace,
                          Options(task=Task.PANDAS, repairs=0, samples=args.k,
                                  example_samples=0, result_name=ev.result_variable(p)))
        grades = [ev.grade_ds1000(p, ev.as_graded(p, c.code))[0] for c in ans.candidates]
        rows.append({"id": p.id, "greedy": grades[0],
                     "chosen": ev.grade_ds1000(p, ev.as_graded(p, ans.cell))[0],
                     "any": any(grades), "graded": grades,
                     "checks_passed": [c.passed for c in ans.candidates],
                     "seconds": round(time.perf_counter() - t, 1)})
        print(rows[-1], flush=True)
    n = len(rows)
    report = {"benchmark": "selection ceiling, DS-1000 pandas (pipeline candidates, no repairs)",
              "model": model, "n": n, "k": args.k, "seed": args.seed,
              "greedy": sum(r["greedy"] for r in rows),
              "chosen": sum(r["chosen"] for r in rows),
              "any": sum(r["any"] for r in rows),
              "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "rows": rows}
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"greedy {report['greedy']}/{n}, chosen {report['chosen']}/{n}, "
          f"any of {args.k} {report['any']}/{n}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
