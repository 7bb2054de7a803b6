"""Recognising the example result a request shows."""

import pytest

from qcoder_ds.copilot.examples import confirmed, shows_table, tokens

_REQUEST = """I have a frame
   user  val
0     a    1
1     b    2
and want the running total:
   user  val  total
0     a    1      1
1     b    2      3
or as a list: [1, 3]
"""


@pytest.mark.parametrize("printed,is_input,ok", [
    ("   user  val  total\n0     a    1      1\n1     b    2      3", False, True),
    # spacing differs, numbers printed with more digits
    ("user val total\n0 a 1.0 1.0\n1 b 2.0 3.0", False, True),
    ("[1, 3]", False, False),  # too short to tell: fewer than four tokens
    ("   user  val  total\n0     a    1      1\n1     b    2      4", False, False),
    # the input returned unchanged is shown too, but never confirms
    ("   user  val\n0     a    1\n1     b    2", True, False),
])
def test_confirmed(printed, is_input, ok):
    assert confirmed(_REQUEST, {"printed": [printed], "is_input": is_input}) is ok


def test_nothing_to_confirm_without_a_value():
    assert not confirmed(_REQUEST, None) and not confirmed(_REQUEST, {"printed": []})


@pytest.mark.parametrize("request_,shows", [
    (_REQUEST, True),
    ("total revenue per region as a bar chart, largest first", False),
    ("I want [0.5, 0.25, 0.125] from the column", True),
    ("Step one: load.\nStep two: clean the data.\nStep three: plot it.", False),
    # code in the request is not an example of the result
    ("import pandas as pd\ndf = pd.DataFrame({'g': ['a', 'b', 'a'], 'v': [1, 2, 3]})\n"
     "result = ... # put solution in this variable", False),
])
def test_shows_table(request_, shows):
    assert shows_table(request_) is shows


def test_tokens_read_numbers_and_split_brackets():
    assert tokens("[1, 2.50] 'x' NaN") == [1.0, 2.5, "x", pytest.approx(float("nan"), nan_ok=True)]
