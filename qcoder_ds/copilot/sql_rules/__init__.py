"""The copilot's SQL rules, one module each, run in the order of ``RULES`` and ``VALUE_RULES``.

In the shape of sqlglot's optimizer: every rule is ``(tree, ctx) -> (tree, list[Fix])``
(``base.py``), declared by a :class:`Rule` that says when it runs and how it is reported, and
run by ``engine.run``. ``validate_sql`` runs ``RULES`` on a query that parses; the pipeline's
``check_values`` runs ``VALUE_RULES`` on each text value the query compares that its column
does not hold as written, on the live database, the first that fires deciding.
"""

from __future__ import annotations

from qcoder_ds.copilot.sql_rules import (
    anti_join,
    borrowed_column,
    both_asked,
    comparison_words,
    contradiction,
    count_measure,
    echoes_filter,
    flag_column,
    group_filter,
    in_keys,
    inner_is_null,
    join_itself,
    join_keys,
    link_direction,
    outer_pick,
    quoted_strings,
    ranking_column,
    schema_slips,
    sum_for_count,
    unlinked_joins,
    unnamed_key,
    unread_table,
    unused_joins,
    value_holder,
    values,
)
from qcoder_ds.copilot.sql_rules.base import Fix, Rule, SqlContext, SqlKind
from qcoder_ds.copilot.sql_rules.schema_slips import SCOPE_RULES

RULES: tuple[Rule, ...] = (
    quoted_strings.RULE,  # how SQLite reads the text, before any check
    schema_slips.RULE,  # SCOPE_RULES: respell, requalify, swap_table, join_referenced
    join_keys.RULE,
    in_keys.RULE,
    unlinked_joins.RULE,
    contradiction.RULE,
    anti_join.RULE,  # these five read the request's words
    both_asked.RULE,
    comparison_words.RULE,
    group_filter.RULE,
    borrowed_column.RULE,
    echoes_filter.RULE,
    join_itself.RULE,  # after join_keys, which fixes those it can
    count_measure.RULE,
    inner_is_null.RULE,
    unnamed_key.RULE,  # reads the request's numbers
    unread_table.RULE,
    flag_column.RULE,
    link_direction.RULE,
    sum_for_count.RULE,
    outer_pick.RULE,
    unused_joins.RULE,  # these two read the request's words
    ranking_column.RULE,
)

#: tried in order on each compared value its column does not hold as written (check_values)
VALUE_RULES: tuple[Rule, ...] = (
    values.STRAY_SPACES,
    values.VALUE_SPELLING,
    values.VALUE_IN_REQUEST,
    value_holder.RULE,
    values.VALUE_ELSEWHERE,
)

VALUE_IN_REQUEST = values.VALUE_IN_REQUEST  # also tried on stored values (check_values)

__all__ = ["RULES", "SCOPE_RULES", "VALUE_IN_REQUEST", "VALUE_RULES", "Fix", "Rule",
           "SqlContext", "SqlKind"]
