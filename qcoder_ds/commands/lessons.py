"""`qcoder lessons generate|list|check`: gated nbgrader assignments from the curriculum."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from qcoder_ds.lessons.errors import LessonError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("lessons", help="graded exercises, proven to work before they are written")
    lsub = p.add_subparsers(dest="lessons_command", metavar="ACTION")

    g = lsub.add_parser("generate", help="write an nbgrader assignment (source + release)")
    g.add_argument("--topic", help="e.g. groupby, joins, histogram (see `qcoder lessons list`)")
    g.add_argument("--level", choices=["beginner", "intermediate", "advanced"])
    g.add_argument("--n", type=int, default=5, help="number of exercises (default 5)")
    g.add_argument("--seed", type=int, default=0, help="different seeds, different data")
    g.add_argument("-o", "--output", type=Path, required=True, help="course folder to write to")
    g.add_argument("--from-model", metavar="'TOPIC, THEME'",
                   help="let the local model draft the exercises (same gate)")
    g.add_argument("--model", default=None, help="catalogue name of the model (--from-model)")
    g.add_argument("--force", action="store_true", help="replace an existing assignment")
    g.set_defaults(func=_generate)

    ls = lsub.add_parser("list", help="topics, levels and templates in the curriculum")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=_list)

    c = lsub.add_parser("check", help="gate every template of the curriculum for some seeds")
    c.add_argument("--seeds", default="0", help="comma-separated seeds (default 0)")
    c.add_argument("--topic", help="only this topic")
    c.set_defaults(func=_check)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def _generate(args: argparse.Namespace) -> int:
    if args.from_model:
        from qcoder_ds.lessons.model_exercises import generate_from_model

        result = generate_from_model(args.from_model, n=args.n, seed=args.seed,
                                     out=args.output, level=args.level, model=args.model,
                                     force=args.force)
        print(f"model drafts: {result.drafted}, accepted by the gate: {result.accepted} "
              f"({result.acceptance_rate:.0%})")
        if result.assignment:
            print(f"wrote {result.assignment.source} and {result.assignment.release}")
        return 0 if result.accepted else 1
    if not args.topic:
        raise LessonError("give --topic (or --from-model 'topic, theme')")
    from qcoder_ds.lessons.generate import generate

    a = generate(args.topic, args.level, args.n, args.seed, args.output, force=args.force)
    r = a.report
    print(f"{a.name}: {r['accepted']} exercise(s) passed the gate "
          f"(wrong solutions caught: {r['wrong_caught']}/{r['wrong_solutions']})")
    print(f"  source:  {a.source}")
    print(f"  release: {a.release}")
    return 0


def _list(args: argparse.Namespace) -> int:
    from qcoder_ds.lessons.templates import LEVELS, load_curriculum, topics

    by_topic = topics(load_curriculum())
    if args.json:
        print(json.dumps({k: [{"id": t.id, "level": t.level, "kind": t.kind,
                               "subject": t.subject} for t in v] for k, v in by_topic.items()},
                         indent=2))
        return 0
    for name, ts in sorted(by_topic.items(), key=lambda kv: (kv[1][0].subject, kv[0])):
        counts = ", ".join(f"{lv} {sum(t.level == lv for t in ts)}" for lv in LEVELS)
        print(f"{ts[0].subject:<11} {name:<17} {ts[0].topic_title}  ({counts})")
    return 0


def _check(args: argparse.Namespace) -> int:
    from qcoder_ds.lessons.generate import check_curriculum
    from qcoder_ds.lessons.templates import load_curriculum, select

    templates = load_curriculum()
    if args.topic:
        templates = select(templates, args.topic)
    failed = 0
    for seed in (int(s) for s in args.seeds.split(",")):
        with tempfile.TemporaryDirectory(prefix="qcoder-check-") as tmp:
            r = check_curriculum(templates, seed, Path(tmp))
        print(f"seed {seed}: {r['accepted']}/{r['exercises']} templates pass the gate, "
              f"wrong solutions caught {r['wrong_caught']}/{r['wrong_solutions']}")
        for v in r["verdicts"]:
            if not v["passed"]:
                failed += 1
                print(f"  FAIL {v['key']}: {'; '.join(v['reasons'])}", file=sys.stderr)
    return 1 if failed else 0
