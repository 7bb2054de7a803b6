"""The eval harness on a tiny benchmark laid out like ../shared/eval (written by the test)."""

import gzip
import json
import sqlite3

import pytest

from copilot.scripted import ScriptedEngine
from qcoder_ds.copilot import evaluation as ev
from qcoder_ds.copilot.pipeline import Copilot
from qcoder_ds.copilot.sandbox import Limits, Sandbox

CONTEXT = r'''
import pandas as pd

def make():
    return pd.DataFrame({"g": ["a", "b", "a"], "v": [1, 2, 3]})

exec_context = r"""
import pandas as pd
df = test_input
[insert]
"""

def test_execution(solution):
    code = exec_context.replace("[insert]", solution)
    env = {"test_input": make()}
    exec(code, env)
    assert env["result"].to_dict() == {"a": 4, "b": 2}
'''

PROMPT = ("Sum v per g.\nA:\n<code>\nimport pandas as pd\n"
          "df = pd.DataFrame({'g': ['a', 'b', 'a'], 'v': [1, 2, 3]})\n</code>\n"
          "result = ... # put solution in this variable\nBEGIN SOLUTION\n<code>\n")


@pytest.fixture
def data_dir(tmp_path):
    d = tmp_path / "eval"
    (d / "ds1000").mkdir(parents=True)
    rows = [{"prompt": PROMPT, "reference_code": "result = df.groupby('g')['v'].sum()",
             "code_context": CONTEXT, "metadata": {"problem_id": 7, "library": "Pandas"}},
            {"prompt": PROMPT, "reference_code": "result = 1/0",
             "code_context": CONTEXT, "metadata": {"problem_id": 8, "library": "Pandas"}}]
    with gzip.open(d / "ds1000" / "pandas.jsonl.gz", "wt") as f:
        f.write("\n".join(json.dumps(r) for r in rows))
    db = d / "spider" / "database" / "zoo" / "zoo.sqlite"
    db.parent.mkdir(parents=True)
    conn = sqlite3.connect(db)
    conn.executescript("CREATE TABLE animal (name TEXT, legs INT);"
                       "INSERT INTO animal VALUES ('cat', 4), ('hen', 2), ('ant', 6);")
    conn.commit()
    conn.close()
    (d / "spider" / "questions.json").write_text(json.dumps([
        {"db_id": "zoo", "question": "How many animals?", "query": "SELECT count(*) FROM animal"},
        {"db_id": "zoo", "question": "Names by legs", "query":
         "SELECT name FROM animal ORDER BY legs"},
        {"db_id": "zoo", "question": "Animals with 9 legs", "query":
         "SELECT name FROM animal WHERE legs = 9"}]))
    return d


def test_grading_ds1000(data_dir):
    p = ev.load_ds1000(data_dir, "pandas")[0]
    assert ev.grade_ds1000(p, "result = df.groupby('g')['v'].sum()") == (True, "")
    ok, why = ev.grade_ds1000(p, "result = df['v']")
    assert not ok and why.startswith("AssertionError")
    ok, why = ev.grade_ds1000(p, "while True: pass", timeout_s=3)
    assert not ok and why == "timeout"


def test_prompt_parsing(data_dir):
    p = ev.load_ds1000(data_dir, "pandas")[0]
    assert ev.ds1000_setup(p).startswith("import pandas as pd\ndf = pd.DataFrame(")
    assert ev.result_variable(p) == "result"
    assert "BEGIN SOLUTION" not in ev.ds1000_request(p)


FUNCTION_CONTEXT = CONTEXT.replace("df = test_input\n[insert]", """def f(df):
[insert]
result = f(test_input)""")
FUNCTION_PROMPT = ("Sum v per g.\nA:\n<code>\nimport pandas as pd\n"
                   "example_df = pd.DataFrame({'g': ['a', 'b', 'a'], 'v': [1, 2, 3]})\n"
                   "def f(df=example_df):\n    # return the solution in this function\n"
                   "    ### BEGIN SOLUTION\n")


@pytest.mark.parametrize("answer", [
    "import pandas as pd\ndef f(df=example_df):\n    out = df.groupby('g')['v'].sum()\n"
    "    return out",  # the whole function, as the raw model writes it
    "result = example_df.groupby('g')['v'].sum()",  # a cell on the live example data
    "example_df.groupby('g')['v'].sum()",  # a cell ending in an expression
])
def test_function_stub_problems_grade_the_answer_as_the_body(answer):
    p = ev.Problem("pandas/1", "pandas", FUNCTION_PROMPT, "",
                   {"code_context": FUNCTION_CONTEXT})
    assert ev.function_stub(p) == ("f", ["df"])
    assert "example_df = pd.DataFrame" in ev.ds1000_setup(p)
    assert ev.grade_ds1000(p, ev.as_graded(p, answer)) == (True, "")
    assert not ev.grade_ds1000(p, answer)[0]  # as written, it is not a function body


def test_spider_execution_accuracy(data_dir):
    db = ev.spider_db(data_dir, "zoo")
    assert ev.spider_match(db, "SELECT count(*) FROM animal", "SELECT 3") == (True, True, "")
    # without ORDER BY in gold, order does not matter; with it, it does
    assert ev.spider_match(db, "SELECT name FROM animal",
                           "SELECT name FROM animal ORDER BY name")[1]
    assert not ev.spider_match(db, "SELECT name FROM animal ORDER BY legs",
                               "SELECT name FROM animal ORDER BY name")[1]
    executed, ok, err = ev.spider_match(db, "SELECT 1", "SELECT nope FROM animal")
    assert not executed and not ok and "no such column" in err
    # read-only: a write is refused
    assert not ev.spider_match(db, "SELECT 1", "DELETE FROM animal")[1]
    assert ev.run_readonly(db, "SELECT count(*) FROM animal") == [(3,)]
    # the same columns in another order are the same result, as Spider's own evaluator has it
    assert ev.spider_match(db, "SELECT name, legs FROM animal",
                           "SELECT legs, name FROM animal") == (True, True, ev.REORDERED)
    assert ev.spider_match(db, "SELECT name, legs FROM animal ORDER BY legs",
                           "SELECT legs, name FROM animal ORDER BY legs")[1]
    assert not ev.spider_match(db, "SELECT name, legs FROM animal ORDER BY legs",
                               "SELECT legs, name FROM animal ORDER BY name")[1]
    assert not ev.spider_match(db, "SELECT name, legs FROM animal",
                               "SELECT legs, legs + 1 FROM animal")[1]


@pytest.mark.parametrize("gold, pred, ordered, how", [
    ([(1, "a"), (2, "b")], [(2, "b"), (1, "a")], False, ""),  # rows in another order
    ([(1, "a"), (2, "b")], [(2, "b"), (1, "a")], True, None),  # ... where order matters
    ([(1, "a"), (2, "b")], [("a", 1), ("b", 2)], True, ev.REORDERED),
    ([(1, "a"), (2, "b")], [("a", 2), ("b", 1)], False, None),  # columns pair rows up wrongly
    ([(1, 1), (1, 2)], [(1, 1), (2, 1)], False, ev.REORDERED),  # a column whose values repeat
    ([(1, "a")], [(1, "a", "x")], False, None),  # an extra column
    ([(1, "a")], [(1, "a"), (1, "a")], False, None),  # a repeated row
    ([], [], False, ""),
    ([], [(1,)], False, None),
])
def test_results_match_up_to_row_and_column_order(gold, pred, ordered, how):
    assert ev.same_rows(gold, pred, ordered) == how


def test_sample_is_fixed_by_seed(data_dir):
    probs = ev.load_spider(data_dir)
    assert [p.id for p in ev.sample(probs, 2, 0)] == [p.id for p in ev.sample(probs, 2, 0)]
    assert len(ev.sample(probs, None, 1)) == 3


class KeyedEngine(ScriptedEngine):
    """Replies chosen by what the question says (the harness visits problems in seeded order)."""

    def __init__(self, by_key):
        super().__init__([])
        self.by_key = {k: list(v) for k, v in by_key.items()}

    def chat(self, messages, params=None, cancel=None):
        self.calls.append(messages)
        text = messages[1]["content"] if len(messages) > 1 else messages[0]["content"]
        key = next(k for k in self.by_key if k in text)
        reply = self.by_key[key].pop(0)
        yield reply


def test_evaluate_reports_both_systems_and_excludes_failing_references(data_dir, tmp_path):
    raw = KeyedEngine({"Sum v": ["```python\nresult = df['v'].sum()\n```"],
                       "How many": ["```sql\nSELECT count(*) FROM animals\n```"],
                       "Names by": ["```sql\nSELECT name FROM animal ORDER BY legs\n```"],
                       "9 legs": ["```sql\nSELECT name FROM animal WHERE legs = 9\n```"]})
    piped = KeyedEngine({"Sum v": ["```python\nresult = df.groupby('g')['v'].sum()\n```"],
                         "How many": ["```sql\nSELECT count(*) FROM animals\n```",
                                      "```sql\nSELECT count(*) FROM animal\n```"],
                         "Names by": ["```sql\nSELECT name FROM animal ORDER BY legs\n```"],
                         "9 legs": ["```sql\nSELECT name FROM animal WHERE legs = 9\n```"]})
    box = Sandbox(Limits(timeout_s=10), prewarm=False)
    try:
        report = ev.evaluate(data_dir, ["pandas", "spider"], None, 0, ["raw", "pipeline"], raw,
                             Copilot(piped, box), repairs=1, log=lambda m: None,
                             reference_cache=tmp_path / "ref.json")
    finally:
        box.close()
    pandas = report["categories"]["pandas"]
    assert pandas["excluded_reference_fails"] == ["pandas/8"] and pandas["n"] == 1
    assert pandas["raw"]["passed"] == 0 and pandas["raw"]["failing"] == ["pandas/7"]
    assert pandas["pipeline"]["passed"] == 1 and pandas["gain_points"] == 100.0
    spider = report["categories"]["spider"]
    assert spider["n"] == 3 and len(spider["empty_gold"]) == 1
    assert spider["pipeline"]["passed"] == 3 and spider["pipeline"]["needed_repair"] == 1
    assert spider["raw"]["passed"] == 2 and spider["raw"]["executed"] == 2
    assert "no table named 'animals'" in piped.calls[-1][-1]["content"] or any(
        "no table named 'animals'" in c[-1]["content"] for c in piped.calls)
    assert json.loads((tmp_path / "ref.json").read_text()) == {"pandas/7": True,
                                                               "pandas/8": False}


def test_an_interrupted_run_is_continued_from_its_answers(data_dir, tmp_path):
    """Problems already in the answers file are counted as recorded and not asked again; a
    line cut short by the interruption is asked again."""
    answers = tmp_path / "run.answers.jsonl"
    answers.write_text(json.dumps({"id": "spider/0", "system": "raw", "passed": True,
                                   "executed": True, "seconds": 1.5, "repairs": 0,
                                   "error": "", "code": "SELECT 3"}) + "\n"
                       + '{"id": "spider/1", "system": "raw", "pass')
    done = ev.load_answers(answers)
    assert list(done) == [("spider/0", "raw")]
    raw = KeyedEngine({"Names by": ["```sql\nSELECT name FROM animal ORDER BY name\n```"],
                       "9 legs": ["```sql\nSELECT name FROM animal WHERE legs = 9\n```"]})
    report = ev.evaluate(data_dir, ["spider"], None, 0, ["raw"], raw, None, log=lambda m: None,
                         details=answers, done=done)
    spider = report["categories"]["spider"]["raw"]
    assert len(raw.calls) == 2  # "How many animals?" was not asked again
    assert spider["total"] == 3 and spider["passed"] == 2  # the recorded pass counts
    rows = ev.load_answers(answers)
    assert set(rows) == {("spider/0", "raw"), ("spider/1", "raw"), ("spider/2", "raw")}
    assert not rows[("spider/1", "raw")]["passed"]


def test_resume_refuses_a_report_made_with_other_settings(tmp_path):
    from qcoder_ds.commands.eval import _check_same_run
    from qcoder_ds.copilot.errors import CopilotError

    out = tmp_path / "r.json"
    config = {"data_dir": "d", "sample_per_category": None, "seed": 0,
              "repairs": 2, "samples": None, "model": "m", "backend": "onnx", "weights": "int4"}
    out.write_text(json.dumps({"categories": {}, "config": config}))
    _check_same_run(out, dict(config))  # the same settings: fine
    with pytest.raises(CopilotError, match="seed: 0 then, 1 now"):
        _check_same_run(out, dict(config, seed=1))
    out.write_text("{not json")
    with pytest.raises(CopilotError, match="cannot --resume"):
        _check_same_run(out, config)


def test_false_confidence_counts_answers_marked_ok_that_fail(data_dir, tmp_path):
    """An answer the checks call ok but the hidden test fails is false confidence; one the
    checks refuse is not counted either way."""
    piped = KeyedEngine({"How many": ["```sql\nSELECT count(*) FROM animal WHERE legs = 4\n```"],
                         "Names by": ["```sql\nSELECT name FROM animal ORDER BY legs\n```"],
                         "9 legs": ["```sql\nSELECT name FROM animal WHERE legs = 9\n```"]})
    box = Sandbox(Limits(timeout_s=10), prewarm=False)
    try:
        report = ev.evaluate(data_dir, ["spider"], None, 0, ["pipeline"], None,
                             Copilot(piped, box), repairs=0, log=lambda m: None,
                             details=tmp_path / "answers.jsonl")
    finally:
        box.close()
    p = report["categories"]["spider"]["pipeline"]
    assert p["passed"] == 2 and p["marked_ok"] == 3 and p["marked_ok_failed"] == 1
    assert p["false_confidence"] == round(1 / 3, 4)
    rows = ev.load_answers(tmp_path / "answers.jsonl")
    assert [rows[(f"spider/{i}", "pipeline")]["checked_ok"] for i in range(3)] == [True] * 3


def test_every_answer_the_pipeline_tried_is_recorded_and_ablated(data_dir, tmp_path):
    """Each pipeline row keeps its steps (candidates, then repairs: as written and as checked),
    so `benchmarks/pipeline_ablation.py` grades the pipeline without its repairs from the same
    run: here the repair is what made the answer right."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    import pipeline_ablation

    piped = KeyedEngine({"How many": ["```sql\nSELECT count(*) FROM animals\n```",
                                      "```sql\nSELECT count(*) FROM animal\n```"],
                         "Names by": ["```sql\nSELECT name FROM animal ORDER BY legs\n```"],
                         "9 legs": ["```sql\nSELECT name FROM animal WHERE legs = 9\n```"]})
    box = Sandbox(Limits(timeout_s=10), prewarm=False)
    answers = tmp_path / "answers.jsonl"
    try:
        ev.evaluate(data_dir, ["spider"], None, 0, ["pipeline"], None, Copilot(piped, box),
                    repairs=1, log=lambda m: None, details=answers)
    finally:
        box.close()
    rows = {r["id"]: r for r in pipeline_ablation.read_answers(answers)}
    steps = rows["spider/0"]["steps"]
    assert [(s["stage"], s["passed_checks"]) for s in steps] == [("candidate", False),
                                                                  ("repair", True)]
    assert steps[0]["written"] == "SELECT count(*) FROM animals"
    assert "FROM animal" in steps[1]["code"] and "animals" not in steps[1]["code"]
    problems = {q.id: q for q in ev.load_spider(data_dir)}
    report = pipeline_ablation.ablate(list(rows.values()), problems, data_dir)["spider"]
    assert report["n"] == 3
    assert report["final"]["passed"] == 3 and report["first answer"]["passed"] == 2
    assert report["first answer"]["marked_ok"] == 2  # the unrepaired one failed its checks
    assert report["first answer, as written"]["marked_ok"] is None


def test_checks_replay_reproduces_recorded_verdicts_and_counts_what_changed(data_dir, tmp_path):
    """`benchmarks/checks_replay.py` puts recorded answers through today's checks: on the
    run's own answers it gives the recorded verdicts back; an answer recorded as ok that the
    checks now refuse is counted as caught (it fails the hidden tests) or a false alarm."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    import checks_replay

    piped = KeyedEngine({"How many": ["```sql\nSELECT count(*) FROM animal WHERE legs = 4\n```"],
                         "Names by": ["```sql\nSELECT name FROM animal ORDER BY legs\n```"],
                         "9 legs": ["```sql\nSELECT name FROM animal WHERE legs = 9\n```"],
                         "Sum v": ["```python\nresult = df.groupby('g')['v'].sum()\n```"]})
    box = Sandbox(Limits(timeout_s=10), prewarm=False)
    answers = tmp_path / "answers.jsonl"
    try:
        ev.evaluate(data_dir, ["spider", "pandas"], None, 0, ["pipeline"], None,
                    Copilot(piped, box), repairs=0, log=lambda m: None, details=answers)
    finally:
        box.close()
    rows = checks_replay.read_rows(answers)
    problems = {p.id: p for p in ev.load_spider(data_dir) + ev.load_ds1000(data_dir, "pandas")}
    report = checks_replay.replay(rows, problems, data_dir, log=lambda m: None)
    spider = report["categories"]["spider"]
    assert spider["ok then"] == spider["ok now"] == 3 and spider["ok now, wrong"] == 1
    assert report["categories"]["pandas"]["ok now"] == 1 and report["changed"] == []
    # a cell recorded as ok that today's checks refuse: caught, since it fails the tests
    bad = dict(rows[0], code="SELECT nme FROM animal", passed=False, checked_ok=True)
    report = checks_replay.replay([bad], problems, data_dir, log=lambda m: None)
    assert report["categories"]["spider"]["caught"] == 1
    assert report["changed"][0]["ok_now"] is False and report["changed"][0]["failed_checks"]
    # --without-changed: the answers less the changed pipeline rows, for `eval --resume`
    edited = tmp_path / "edited.jsonl"
    edited.write_text("".join(json.dumps(bad if r is rows[0] else r) + "\n" for r in rows))
    again = tmp_path / "again.jsonl"
    assert checks_replay.main([str(edited), "--data-dir", str(data_dir),
                               "--without-changed", str(again)]) == 0
    kept = [json.loads(line) for line in again.read_text().splitlines()]
    assert [r["id"] for r in kept] == [r["id"] for r in rows[1:]]
