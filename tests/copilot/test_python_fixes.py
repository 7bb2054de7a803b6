"""Each Python fix rule alone, as a table: code in, code and message out; then the list."""

import pandas as pd
import pytest

from qcoder_ds.copilot import python_fixes as pf

NS = {"sales": pd.DataFrame({"region": ["N", "S"], "revenue": [1.0, 2.0]})}
DESCRIPTION = "sales: DataFrame 2 rows x 2 columns\n  region  object\n  revenue  float64"

CASES = [
    (pf.copied_description,
     "# sales: DataFrame 2 rows x 2 columns\n#   region  object\nsales['revenue'].sum()",
     "sales['revenue'].sum()", "removed 2 line(s) copied from the data description"),
    (pf.recreated_data,
     "sales = pd.DataFrame({'region': ['N'], 'revenue': [1.0]})\nsales['revenue'].sum()",
     "sales['revenue'].sum()", "removed lines that re-created existing data: sales = "),
    (pf.series_logic,
     "sales[(sales.revenue > 1) and (sales.region == 'N')]",
     "sales[(sales.revenue > 1) & (sales.region == 'N')]",
     "combined Series conditions with & and |: "),
    (pf.old_pandas,
     "sales.applymap(str)", "sales.map(str)",
     "rewrote pandas calls the installed pandas no longer has: sales.applymap -> sales.map"),
]


@pytest.mark.parametrize("rule, code, fixed, said", CASES, ids=[c[0].__name__ for c in CASES])
def test_each_rule_alone(rule, code, fixed, said):
    out, messages = rule(code, pf.PyContext(NS, DESCRIPTION))
    assert out.strip() == fixed
    assert len(messages) == 1 and messages[0].startswith(said), messages
    assert rule(fixed, pf.PyContext(NS, DESCRIPTION)) == (fixed, [])  # nothing left to fix


def test_every_rule_has_its_table_in_the_order_they_run():
    assert [c[0] for c in CASES] == list(pf.RULES)


def test_the_list_reports_each_fix_as_a_python_fixed_warning():
    code = "sales = pd.DataFrame({'region': ['N'], 'revenue': [1.0]})\nsales.applymap(str)"
    out, fixes = pf.fix_python(code, pf.PyContext(NS, DESCRIPTION))
    assert out.strip() == "sales.map(str)"
    assert [(f.kind, f.severity) for f in fixes] == [("python-fixed", "warning")] * 2
