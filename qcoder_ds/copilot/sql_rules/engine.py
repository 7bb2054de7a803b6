"""Run rules in order over one query, keeping each rewrite only when its rule's terms allow.

Every rule is reported the same way: its fixes become one ``Issue`` (or one per fix) of the
rule's kind and severity, in the order the rules ran.
"""

from __future__ import annotations

import logging

from sqlglot import exp

from qcoder_ds.copilot.sql_rules.base import Fix, Rule, SqlContext, State
from qcoder_ds.copilot.sql_rules.schema import schema_issue
from qcoder_ds.copilot.validate import Issue

log = logging.getLogger(__name__)

def resolves(state: State, ctx: SqlContext) -> bool:
    """The query is checked and resolves against the schema (a warning is no obstacle)."""
    return not state.blocked and (state.problem is None or state.problem.severity == "warning")


def unresolved(state: State, ctx: SqlContext) -> bool:
    """The query is checked and some column does not resolve against the schema."""
    return not state.blocked and state.problem is not None and \
        state.problem.severity == "error"


def asked(state: State, ctx: SqlContext) -> bool:
    """As :func:`resolves`, for rules that read the request's words: only with a request."""
    return bool(ctx.request) and resolves(state, ctx)


def report(rule: Rule, fixes: list[Fix]) -> list[Issue]:
    """The issues that tell the user what ``rule`` did (nothing for a silent rule)."""
    if rule.message is None or not fixes:
        return []
    changes = [f.change for f in fixes]
    texts = [rule.join.join(changes)] if rule.join is not None else changes
    return [Issue(rule.issue, rule.message.format(t), severity=rule.severity) for t in texts]


def guarded(rule: Rule, tree: exp.Expression, ctx: SqlContext
            ) -> tuple[exp.Expression, list[Fix]]:
    """``rule`` on ``tree``, or no change when it fails: each rule rewrites SQL the model wrote,
    and a query its rule did not foresee must be left as it was, not cost the user the
    answer (the Spider run once stopped on such a KeyError)."""
    try:
        return rule.apply(tree, ctx)
    except Exception:  # noqa: BLE001 - any failure of a rewrite means "no rewrite"
        log.debug("%s failed on %s", rule.kind, tree.sql(), exc_info=True)
        return tree, []


def apply_rule(rule: Rule, state: State) -> None:
    """Run one rule on ``state``: keep its rewrite when its terms allow, report its fixes."""
    if not rule.verify:  # a check (or a silent rewrite): one that fails finds nothing
        state.tree, fixes = guarded(rule, state.tree, state.ctx)
    else:
        tree, fixes = guarded(rule, state.tree, state.ctx)
        if not fixes or schema_issue(tree, state.ctx.info) is not None:
            return
        state.tree = tree
    if not fixes:
        return
    state.fired.add(rule.kind)
    issues = report(rule, fixes)
    if rule.settles:  # the fix takes the place of the problem it solved
        state.settle(issues[0])
        issues = issues[1:]
    state.findings += issues


def run(rules: tuple[Rule, ...], tree: exp.Expression, ctx: SqlContext,
        blocked: bool = False) -> State:
    """Each rule of ``rules`` whose gate opens, in order, on ``tree``."""
    state = State(tree, ctx, blocked)
    for rule in rules:
        if rule.when(state, ctx):
            apply_rule(rule, state)
    return state
