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
    # a Series as pandas prints it, even on one line
    ("like the following one Series?\n0    abc, def, ghi, jkl\nName: text, dtype: object",
     True),
    ("a Series:\n0    1\n1    2\ndtype: int64", True),
])
def test_shows_table(request_, shows):
    assert shows_table(request_) is shows


def test_tokens_read_numbers_and_split_brackets():
    assert tokens("[1, 2.50] 'x' NaN") == [1.0, 2.5, "x", pytest.approx(float("nan"), nan_ok=True)]


# The input shown in the request, and a wanted result that starts like it: the first rows of
# the input are found in the request, but only where it prints the input.
_BINS = """I would like to bin this frame every 4 rows:
    col1
0      1
1      1
2      4
3      5
4      1
5      4
and turn it into this:
    col1
0     11
1      5
"""
_BINS_INPUT = "   col1\n0     1\n1     1\n2     4\n3     5\n4     1\n5     4"


@pytest.mark.parametrize("printed,ok", [
    ("   col1\n0     1\n1     1", False),  # the first rows of the input: where the input is shown
    ("   col1\n0    11\n1     5", True),  # the wanted result
    ("   col1\n0     1\n1     4", False),  # in neither place
])
def test_a_match_inside_the_shown_input_confirms_nothing(printed, ok):
    value = {"printed": [printed], "is_input": False, "inputs_printed": [_BINS_INPUT]}
    assert confirmed(_BINS, value) is ok


def test_without_the_inputs_the_prefix_of_the_input_would_confirm():
    """The control: what the masking above prevents."""
    assert confirmed(_BINS, {"printed": ["   col1\n0     1\n1     1"], "is_input": False})


_JOINED = """How can I merge these rows into a single row like the following one Series?
0    abc, def, ghi, jkl
Name: text, dtype: object
or, as a list, ['x', 'abc', 'def', 'ghi', 'jkl', 'y']
"""


@pytest.mark.parametrize("request_,printed,ok", [
    # four items, where the request shows one string that joins them
    (_JOINED.split("or,")[0], "['abc', 'def', 'ghi', 'jkl']", False),
    # the same list in brackets is one the request shows
    ("I want ['abc', 'def', 'ghi', 'jkl'] back", "['abc', 'def', 'ghi', 'jkl']", True),
    # part of a longer bracketed list is not that list
    (_JOINED, "['abc', 'def', 'ghi', 'jkl']", False),
    # numpy's printing of an array against the list the request shows
    ("the result should be [[1, 2], [3, 4]]", "[[1 2]\n [3 4]]", True),
    # the list the request's code builds the input from is not an example of the result
    (_JOINED.split("or,")[0] + "df = pd.DataFrame({'text': ['abc', 'def', 'ghi', 'jkl']})",
     "['abc', 'def', 'ghi', 'jkl']", False),
])
def test_a_list_confirms_only_a_bracketed_list(request_, printed, ok):
    assert confirmed(request_, {"printed": [printed], "is_input": False}) is ok
