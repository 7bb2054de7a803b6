"""What every SQL rule shares: the context it reads, the fixes it reports, its descriptor.

A rule is ``(tree, ctx) -> (tree, list[Fix])``, like a pass of sqlglot's optimizer: it returns
the tree rewritten (a copy; the input is never changed in place when the rule is a rewrite)
and what it changed, or the tree as it was and ``[]``. A check returns the tree unchanged and
what it found. The engine (``engine.py``) decides, from the :class:`Rule` descriptor, when the
rule runs, whether its rewrite is kept and how it is reported.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlglot import exp

from qcoder_ds.copilot.context import ConnectionInfo
from qcoder_ds.copilot.sql_rules.lookup import Filter, Lookup
from qcoder_ds.copilot.sql_rules.schema import schema_issue
from qcoder_ds.copilot.validate import Issue, Kind


class SqlKind(str, enum.Enum):
    """Which rule made a :class:`Fix`: one kind per rule, so fixes can be counted."""

    QUOTED_STRINGS = "quoted-strings"
    SCHEMA_SLIPS = "schema-slips"  # the four scope rules below, kept or dropped together
    RESPELL = "respell-column"
    REQUALIFY = "requalify-column"
    SWAP_TABLE = "swap-table"
    JOIN_REFERENCED = "join-referenced"
    JOIN_KEYS = "join-keys"
    IN_KEYS = "in-keys"
    UNLINKED_JOINS = "unlinked-joins"
    CONTRADICTION = "contradiction"
    ANTI_JOIN = "anti-join"
    JOIN_ITSELF = "join-itself"
    BOTH_ASKED = "both-asked"
    COMPARISON_WORDS = "comparison-words"
    GROUP_FILTER = "group-filter"
    ECHOES_FILTER = "echoes-filter"
    BORROWED_COLUMN = "borrowed-column"
    COUNT_MEASURE = "count-measure"
    INNER_IS_NULL = "inner-is-null"
    UNNAMED_KEY = "unnamed-key"
    UNREAD_TABLE = "unread-table"
    FLAG_COLUMN = "flag-column"
    LINK_DIRECTION = "link-direction"
    SUM_FOR_COUNT = "sum-for-count"
    OUTER_PICK = "outer-pick"
    UNUSED_JOINS = "unused-joins"
    RANKING_COLUMN = "ranking-column"
    STRAY_SPACES = "stray-spaces"
    VALUE_SPELLING = "value-spelling"
    VALUE_IN_REQUEST = "value-in-request"
    VALUE_HOLDER = "value-holder"
    VALUE_ELSEWHERE = "value-elsewhere"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Fix:
    """One change a rule made (``T2.Hometown -> T1.Hometown``), or what a check found."""

    kind: SqlKind
    change: str


@dataclass
class SqlContext:
    """What the rules may read besides the tree: the schema, the request the query answers,
    and (for the value rules) the live connection, its lookups and the filter looked at."""

    info: ConnectionInfo
    request: str | None = None
    conn: Any = None
    lookup: Lookup | None = None
    filter: Filter | None = None
    #: values the value rules respell (stored -> as written), applied once all are looked up
    respell: dict[str, str] = field(default_factory=dict)

    def columns(self) -> dict[str, set[str]]:
        """table -> its columns, all lower case."""
        return {t.lower(): {c.lower() for c in cols} for t, cols in self.info.tables.items()}


Apply = Callable[[exp.Expression, SqlContext], "tuple[exp.Expression, list[Fix]]"]
Gate = Callable[["State", SqlContext], bool]


@dataclass(frozen=True)
class Rule:
    """A rule and how it is run and reported.

    ``message`` is the issue's text, ``{}`` standing for the fixes' changes joined by
    ``join`` (``None``: one issue per fix); a rule with no message rewrites silently.
    ``verify``: the rewrite is kept only when the query then resolves against the schema. Any
    rule that raises leaves the query as it was and reports nothing. ``settles``: the rule
    fixes the schema problem, and its report takes that problem's place."""

    kind: SqlKind
    apply: Apply
    when: Gate
    message: str | None = "{}"
    join: str | None = "; "
    issue: Kind = Kind.SQL_FIXED
    severity: str = "warning"
    verify: bool = True
    settles: bool = False


_UNCHECKED: Any = object()  # the schema check has not run yet


@dataclass
class State:
    """The query as the rules have left it so far, and what they reported.

    ``blocked``: a check before the rules refused the query (a write, an unknown table); only
    rules that read the text as its dialect does still run. ``problem`` is the schema check's
    finding, made when a rule first asks for it (after the query is read as its dialect), and
    reported before the rules' own issues."""

    tree: exp.Expression
    ctx: SqlContext
    blocked: bool = False
    findings: list[Issue] = field(default_factory=list)
    fired: set[SqlKind] = field(default_factory=set)
    _problem: Any = _UNCHECKED

    @property
    def problem(self) -> Issue | None:
        if self._problem is _UNCHECKED:
            self._problem = schema_issue(self.tree, self.ctx.info)
        return self._problem

    @property
    def issues(self) -> list[Issue]:
        problem = None if self.blocked else self.problem
        return ([problem] if problem is not None else []) + self.findings

    def settle(self, issue: Issue) -> None:
        """A fix of the schema problem is reported in that problem's place."""
        self._problem = issue

    @property
    def sql(self) -> str:
        return self.tree.sql(dialect=self.ctx.info.dialect, pretty=True)


def logic_check(kind: SqlKind, apply: Apply, when: Gate, message: str = "{}") -> Rule:
    """The descriptor of a check for a query that resolves and runs but cannot answer the
    request: it reports an error of its own kind ("query logic" in the header), for the
    repair, and never rewrites the query."""
    return Rule(kind, apply, when, message=message, issue=Kind.SQL_LOGIC, severity="error",
                verify=False)


def always(state: State | None, ctx: SqlContext) -> bool:
    """The gate of a rule that runs whenever it is asked to (the value rules)."""
    return True
