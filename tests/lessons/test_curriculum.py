"""The curriculum: every topic the issue names exists at every level, and every template
passes the execution gate on three seeds (one batch per seed: two worker processes)."""

from pathlib import Path

import pytest

from qcoder_ds.lessons.errors import TemplateError, UnknownTopicError
from qcoder_ds.lessons.generate import check_curriculum
from qcoder_ds.lessons.templates import LEVELS, load_curriculum, load_topic_file, select, topics

TOPICS = {
    "pandas": ["selection", "groupby", "merge", "reshape", "missing-data", "time-series"],
    "sql": ["select-where", "joins", "group-by-having", "subqueries", "window-functions"],
    "matplotlib": ["line", "bar", "scatter", "histogram", "subplots", "labels"],
}


def test_every_topic_has_every_level():
    by_topic = topics(load_curriculum())
    for subject, names in TOPICS.items():
        for name in names:
            assert name in by_topic, f"missing topic {name}"
            ts = by_topic[name]
            assert {t.subject for t in ts} == {subject}
            assert {t.level for t in ts} == set(LEVELS), f"{name} lacks a level"
            for t in ts:
                assert t.wrong, f"{t.key} has no wrong-but-plausible solution"


# ~1 min of CPU per seed; seeds 1 and 2 run with the slow tests (CI runs them all)
@pytest.mark.parametrize("seed", [0, pytest.param(1, marks=pytest.mark.slow),
                                  pytest.param(2, marks=pytest.mark.slow)])
def test_every_template_passes_the_gate(seed, tmp_path):
    templates = load_curriculum()
    report = check_curriculum(templates, seed, tmp_path)
    failures = [(v["key"], v["reasons"]) for v in report["verdicts"] if not v["passed"]]
    assert failures == []
    assert report["exercises"] == len(templates) >= 51
    assert report["wrong_caught"] == report["wrong_solutions"] >= 2 * len(templates)


def test_unknown_topic_and_level_are_named():
    templates = load_curriculum()
    with pytest.raises(UnknownTopicError, match="known topics: .*groupby"):
        select(templates, "quantum-knitting")
    with pytest.raises(UnknownTopicError, match="unknown level"):
        select(templates, "groupby", "expert")
    assert {t.topic for t in select(templates, "window")} == {"window-functions"}


def _write(tmp_path: Path, body: str) -> Path:
    p = tmp_path / "t.toml"
    p.write_text('subject = "pandas"\ntopic = "x"\n' + body)
    return p


def test_malformed_templates_say_what_is_wrong(tmp_path):
    base = ('[[template]]\nid = "a"\nlevel = "beginner"\ndataset = "sales"\nkind = "series"\n'
            'prompt = "p"\nsolution = "result = 1"\n')
    with pytest.raises(TemplateError, match="wrong-but-plausible"):
        load_topic_file(_write(tmp_path, base))
    with pytest.raises(TemplateError, match="level 'expert'"):
        load_topic_file(_write(tmp_path, base.replace("beginner", "expert") + 'wrong = ["x"]\n'))
    with pytest.raises(TemplateError, match="missing field 'solution'"):
        load_topic_file(_write(tmp_path, base.replace('solution = "result = 1"\n', "")
                               + 'wrong = ["x"]\n'))
    with pytest.raises(TemplateError, match="cannot read topic file"):
        load_topic_file(_write(tmp_path, "[[template]\n"))


def test_slots_may_name_earlier_slots():
    import numpy as np

    from qcoder_ds.lessons.exercise import fill_slots

    t = [t for t in load_curriculum() if t.key == "matplotlib/labels/title-and-axes"][0]
    values = fill_slots(t, {"sales": None}, np.random.default_rng(0))
    assert "$" not in values["title"] and values["group"] in ("region", "channel")
