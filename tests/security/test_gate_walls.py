"""Model-drafted exercises run behind the same walls when the lessons' gate checks them: a
draft whose reference solution reaches for libc changes nothing outside."""

import pytest
from escapes import PRELUDE, Target
from test_model_exercises import GOOD

from qcoder_ds import isolation
from qcoder_ds.lessons.model_exercises import generate_from_model

ATTACKS = ("ctypes_system", "libc_open_write", "proc_root_and_cwd", "named_pipe", "bashrc")

SOLUTION = 'result = sales.groupby("channel")["units"].sum()'
assert SOLUTION in GOOD  # a draft the gate accepts, with the attack put before its solution


@pytest.mark.skipif(not isolation.available(), reason="no walls here")
def test_a_drafted_solution_that_reaches_for_libc_is_walled_in(tmp_path):
    target = Target(tmp_path / "target")
    try:
        attack = PRELUDE + "".join(target.code(r)[len(PRELUDE):] for r in ATTACKS)
        run = generate_from_model("groupby, coffee shop", n=1, seed=3, out=tmp_path / "out",
                                  write=lambda messages, seed: GOOD.replace(
                                      SOLUTION, attack + SOLUTION))
        assert run.accepted == 1  # the solution ran through the gate, attack and all
        assert target.damage() == []
    finally:
        target.restore()
