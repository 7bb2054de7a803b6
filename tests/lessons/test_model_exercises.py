"""Model-written exercises go through the same gate; the acceptance rate is reported.

The fast tests feed scripted replies (the gate and the parser are what is under test); the
slow test asks the embedded model itself.
"""

import json

import nbformat
import pytest

from qcoder_ds.lessons.model_exercises import generate_from_model, parse_draft

GOOD = '''TASK: The coffee chain wants the total `units` sold per `channel`. Store the result,
a Series indexed by `channel`, in `result`.

SOLUTION:
```python
result = sales.groupby("channel")["units"].sum()
```

WRONG:
```python
result = sales.groupby("channel")["units"].mean()
```

TESTS:
```python
assert len(result) == 3
assert result.index.name == "channel"
```
'''
# its own tests are wrong (there are 4 regions, not 3): the reference fails its tests
SELF_FAILING = GOOD.replace('"channel"', '"region"').replace("`channel`", "`region`")
# the "wrong" solution is the same computation: the tests cannot tell a mistake
NO_MISTAKE = (GOOD.replace('"channel"', '"category"').replace("`channel`", "`category`")
              .replace('["units"].mean()', '["units"].agg("sum")')
              .replace("assert len(result) == 3", "assert len(result) == 4"))
UNPARSEABLE = "Sure! Here is an exercise about coffee: count the cups."


def test_parse_draft_sections_and_problems():
    d = parse_draft(GOOD, "result")
    assert d.problem == "" and d.solution.startswith("result = sales.groupby")
    assert d.tests == ["assert len(result) == 3", 'assert result.index.name == "channel"']
    assert parse_draft(UNPARSEABLE, "result").problem == "no TASK section"
    bad = GOOD.replace('result = sales.groupby("channel")["units"].sum()', "total = 1")
    assert parse_draft(bad, "result").problem == "the solution does not assign `result`"
    broken = GOOD.replace('.sum()\n```', '.sum(\n```', 1)
    assert "does not parse" in parse_draft(broken, "result").problem


def test_drafts_are_gated_and_the_rate_reported(tmp_path):
    replies = [GOOD, SELF_FAILING, NO_MISTAKE, UNPARSEABLE]
    prompts = []

    def write(messages, seed):
        prompts.append(messages)
        return replies[len(prompts) - 1]

    run = generate_from_model("groupby, coffee shop", n=4, seed=3, out=tmp_path, write=write)
    assert (run.drafted, run.accepted, run.acceptance_rate) == (4, 1, 0.25)
    recs = run.report["drafts"]
    assert recs[0]["accepted"] is True
    assert any("fails the visible tests" in r for r in recs[1]["reasons"])
    assert any("wrong solution 1 passes every test" in r for r in recs[2]["reasons"])
    assert recs[3]["reasons"] == ["no TASK section"]
    # the model saw the real data and a worked example from the curriculum
    assert "sales" in prompts[0][-1]["content"] and "coffee shop" in prompts[0][-1]["content"]
    assert prompts[0][2]["role"] == "assistant" and "SOLUTION" in prompts[0][2]["content"]
    a = run.assignment
    src = nbformat.read(a.source / f"{a.name}.ipynb", 4)
    answers = [c for c in src.cells if c.metadata.get("qcoder", {}).get("role") == "answer"]
    assert len(answers) == 1 and answers[0].metadata["qcoder"]["origin"] == "model"
    visible = [c for c in src.cells if c.metadata.get("qcoder", {}).get("role") == "visible"]
    assert "assert len(result) == 3" in visible[0].source
    saved = json.loads((tmp_path / f"{a.name}.gate.json").read_text())
    assert saved["acceptance_rate"] == 0.25


def test_copies_of_the_example_or_of_earlier_drafts_are_rejected(tmp_path):
    copy = None

    def write(messages, seed):
        nonlocal copy
        example = messages[2]["content"]
        copy = example.replace("assert isinstance", "assert 1 == 1 and isinstance")
        return copy if seed == 0 else GOOD

    run = generate_from_model("groupby, tea", n=3, seed=0, out=tmp_path, write=write)
    reasons = [r["reasons"] for r in run.report["drafts"]]
    assert reasons[0] == ["the solution copies the worked example"]
    assert reasons[1] == [] and reasons[2] == ["the solution repeats an earlier draft"]
    assert run.accepted == 1


def test_nothing_is_written_when_no_draft_passes(tmp_path):
    run = generate_from_model("groupby, tea", n=2, seed=0, out=tmp_path,
                              write=lambda m, s: UNPARSEABLE)
    assert run.accepted == 0 and run.assignment is None
    assert [p.name for p in tmp_path.iterdir()] == []


@pytest.mark.slow
def test_the_embedded_model_drafts_gated_exercises(tmp_path):
    """Acceptance rate with the real embedded model; every accepted exercise re-gates."""
    from qcoder_ds.engine import Engine
    from qcoder_ds.lessons.generate import check_curriculum  # noqa: F401 - same gate
    from qcoder_ds.lessons.model_exercises import generate_from_model as gen

    engine = Engine.load()
    run = gen("groupby, coffee shop", n=6, seed=11, out=tmp_path, engine=engine)
    print(f"\nembedded model: {run.accepted}/{run.drafted} drafts accepted "
          f"({run.acceptance_rate:.0%})")
    for r in run.report["drafts"]:
        print(r["draft"], r["accepted"], r["reasons"][:1])
    assert run.drafted == 6
    assert 0 <= run.accepted <= 6
    if run.assignment:  # no accepted exercise fails a re-run of its gate
        from qcoder_ds.lessons.gate import build_and_gate  # noqa: F401
        src = nbformat.read(run.assignment.source / f"{run.assignment.name}.ipynb", 4)
        from nbclient import NotebookClient

        NotebookClient(src, timeout=120, kernel_name="python3",
                       resources={"metadata": {"path": str(run.assignment.source)}}).execute()
        for c in src.cells:
            if c.metadata.get("nbgrader", {}).get("grade"):
                assert not [o for o in c.outputs if o.output_type == "error"]
