"""The copilot's check cannot be escaped through libc: each route in ``escapes.ROUTES`` runs
as a generated cell, and the parent then checks that nothing outside changed or leaked."""

import shutil
import subprocess
import sys

import pytest
from escapes import ROUTES, Target

from qcoder_ds import isolation
from qcoder_ds.copilot.sandbox import Limits, Sandbox

needs_walls = pytest.mark.skipif(not isolation.available(),
                                 reason=f"no walls here: {isolation.unavailable_reason()}")


@pytest.fixture(scope="module")
def box():
    sb = Sandbox(Limits(timeout_s=30, memory_mb=512, sample_rows=100))
    yield sb
    sb.close()


@pytest.fixture
def target(tmp_path):
    t = Target(tmp_path)
    yield t
    t.restore()


def _skip_without_compiler(route: str) -> None:
    if route == "compiled_extension" and not shutil.which("cc"):
        pytest.skip("no C compiler here")


@pytest.mark.parametrize("route", sorted(ROUTES))
def test_route_escapes_without_walls(route, target):
    """The routes are real: run as a plain process, each one reaches outside."""
    _skip_without_compiler(route)
    r = subprocess.run([sys.executable, "-c", target.code(route)], capture_output=True,
                       text=True, timeout=120, cwd=target.root)
    assert target.damage(r.stdout), r.stdout + r.stderr


@needs_walls
@pytest.mark.parametrize("route", sorted(ROUTES))
def test_route_is_walled_in(route, target, box):
    _skip_without_compiler(route)
    r = box.run(target.code(route), {})
    assert target.damage(r.stdout) == [], r.stdout
    if route == "compiled_extension":  # it compiled and ran inside: the wall stopped it
        assert "compiled 0" in r.stdout and "escape 1" in r.stdout, r.stdout
    if route == "read_secrets":
        assert "leaked: 0" in r.stdout
    assert "bubblewrap walls" in r.isolation


@needs_walls
def test_the_check_still_works_inside_the_walls(box, tmp_path):
    """Honest cells keep working: pandas, plots, files in the working directory."""
    r = box.run("import pandas as pd\nimport matplotlib.pyplot as plt\n"
                "pd.DataFrame({'a': [1, 2]}).to_csv('out.csv')\n"
                "plt.plot([1, 2])\nlen(open('out.csv').read().splitlines())", {})
    assert r.ok, r.error
    assert r.value["repr"] == "3" and r.figures


def test_reduced_isolation_is_said_once(monkeypatch, caplog):
    monkeypatch.setattr(isolation, "unavailable_reason", lambda: "no user namespaces (test)")
    monkeypatch.setattr(Sandbox, "_said", set())
    with caplog.at_level("WARNING"):
        boxes = [Sandbox(Limits(), prewarm=False) for _ in range(2)]
    for b in boxes:
        assert "only: no user namespaces (test)" in b.isolation and not b.walled
        b.close()
    said = [r for r in caplog.records if "reduced isolation" in r.getMessage()]
    assert len(said) == 1 and "no user namespaces (test)" in said[0].getMessage()


@needs_walls
def test_a_check_process_that_cannot_start_says_why(monkeypatch):
    """A wall that cannot be built (here: bwrap is handed an unknown option) is reported with
    bubblewrap's own words, not as a generic start-up failure."""
    from qcoder_ds.copilot.errors import CopilotError

    real = isolation.command
    monkeypatch.setattr(isolation, "command",
                        lambda argv, walls: [real(argv, walls)[0], "--no-such-option"])
    box = Sandbox(Limits(), prewarm=False)
    try:
        with pytest.raises(CopilotError, match="did not start.*no-such-option"):
            box.run("1 + 1", {})
    finally:
        box.close()
