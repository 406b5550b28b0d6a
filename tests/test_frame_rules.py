"""The frame's rules, checked over every runbook's code rather than trusted: a task that changes what someone
relies on (``step_task(..., mutates=True)``) runs only inside a destructive step, which first proves the run still
holds its lock; and every runbook declares its report, so the frame can conclude it whatever happens."""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from prefect import Task

import runbooks.flows as flows_package
from runbooks.flows import RUNBOOKS
from runbooks.tasks.policies import MUTATES

# Cleanup of what the run itself made, deliberately not gated on the lock: a run that lost its lock must still
# remove its own leftovers (each task checks the runbooks' own record before it drops anything).
OWN_CLEANUP = {
    ("_tear_down", "drop_drill_databases"): "the drill drops the databases its records say it restored",
    ("_tear_down", "drop_drill_roles"): "the drill drops the roles it created",
    ("_restore_locked", "drop_restore_database"): "a failed restore drops the scratch copy it made",
}


@dataclass(frozen=True)
class Call:
    callee: str
    line: int


def _is_step(item: ast.withitem) -> ast.Call | None:
    call = item.context_expr
    if isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute) and call.func.attr == "step":
        return call
    return None


def _destructive(step: ast.Call) -> bool:
    """``destructive=True`` or an expression (``not params.dry_run``); a literal False is not destructive."""
    for keyword in step.keywords:
        if keyword.arg == "destructive":
            return not (isinstance(keyword.value, ast.Constant) and keyword.value.value is False)
    return False


# TradingGuard's resumes: trading back on is a change that needs the lock proven. A halt or pause does not (stopping
# is always allowed: it is the safe direction, and an emergency stop is never blocked by another run's lock).
GUARD_CHANGES = {"resume_if_ours", "resume_recorded"}


def _callee(call: ast.Call) -> str | None:
    func = call.func
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute) and func.attr in GUARD_CHANGES:
        return f"guard.{func.attr}"
    if isinstance(func, ast.Attribute) and func.attr in ("submit", "map") and isinstance(func.value, ast.Name):
        return func.value.id  # task.submit(...)
    return None


def unguarded_calls(node: ast.AST, guarded: bool = False) -> Iterator[Call]:
    """Every call in ``node`` made outside a destructive step (nested function bodies excluded: each is judged
    where it is called)."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda | ast.ClassDef):
            continue
        if isinstance(child, ast.With):
            inside = guarded or any((step := _is_step(i)) is not None and _destructive(step) for i in child.items)
            for item in child.items:
                yield from unguarded_calls(item.context_expr, guarded)
            # Each statement of the body is judged as a whole (a with directly inside a with included).
            yield from unguarded_calls(ast.Module(body=child.body, type_ignores=[]), inside)
            continue
        if isinstance(child, ast.Call) and not guarded and (name := _callee(child)):
            yield Call(name, child.lineno)
        yield from unguarded_calls(child, guarded)


def mutating_helpers(module_name: str) -> set[str]:
    """The functions of a shared flow module (``runbooks.flows.restore_sequence``) that call a mutating task
    outside a destructive step of their own: a runbook must call them inside one."""
    module = importlib.import_module(module_name)
    tree = ast.parse(inspect.getsource(module))
    mutating = {name for name, value in vars(module).items() if isinstance(value, Task) and MUTATES in value.tags}
    return {f.name for f in ast.walk(tree) if isinstance(f, ast.FunctionDef)
            and any(c.callee in mutating for c in unguarded_calls(f))}


SHARED = [f"runbooks.flows.{m.name}" for m in pkgutil.iter_modules(flows_package.__path__)
          if m.name not in {rb.module for rb in RUNBOOKS.values()}]


def violations(module_name: str) -> list[str]:
    """Calls of mutating tasks outside a destructive step, followed through the module's own functions and the
    shared flow modules' (a helper that calls one unguarded must itself be called inside a destructive step)."""
    module = importlib.import_module(module_name)
    tree = ast.parse(inspect.getsource(module))
    mutating = {name for name, value in vars(module).items() if isinstance(value, Task) and MUTATES in value.tags}
    mutating |= {f"guard.{name}" for name in GUARD_CHANGES}
    for shared in SHARED:
        mutating |= {name for name in mutating_helpers(shared) if getattr(module, name, None) is not None}
    functions = {f.name: f for f in ast.walk(tree) if isinstance(f, ast.FunctionDef)}
    unguarded = {name: [c for c in unguarded_calls(f) if (name, c.callee) not in OWN_CLEANUP]
                 for name, f in functions.items()}
    # A function "mutates" when a mutating call in it is unguarded there; iterate to a fixed point.
    mutates = set()
    while True:
        grown = {name for name, calls in unguarded.items()
                 if any(c.callee in mutating or c.callee in mutates for c in calls if c.callee != name)}
        if grown <= mutates:
            break
        mutates |= grown
    flows = [name for name, f in functions.items()
             if any("flow" in ast.unparse(d) for d in f.decorator_list)]
    found = []
    for name in flows:
        for call in unguarded[name]:
            if call.callee in mutating or call.callee in mutates:
                found.append(f"{module_name}:{call.line} {name} calls {call.callee} outside a destructive step")
    return found


@pytest.mark.parametrize("runbook", sorted(RUNBOOKS))
def test_a_mutating_task_runs_only_in_a_destructive_step(runbook: str) -> None:
    assert violations(f"runbooks.flows.{RUNBOOKS[runbook].module}") == []


@pytest.mark.parametrize("module", SHARED)
def test_a_shared_flow_module_guards_its_own_mutations(module: str) -> None:
    """The restore sequence marks its own steps destructive, so every runbook that uses it is guarded."""
    assert mutating_helpers(module) == set()


def test_the_rule_sees_an_unguarded_call() -> None:
    """The checker itself: an unguarded call is found, directly and through a helper; a guarded one is not."""
    source = '''
def helper():
    swap()
    guard.resume_if_ours()

@flow
def body(run):
    with run.step("look"):
        swap()
    with run.step("act", destructive=not dry_run):
        swap()
        helper()
    helper()
    with lock():
        with run.step("act", destructive=True):
            swap()
        swap()
'''
    tree = ast.parse(source)
    functions = {f.name: f for f in ast.walk(tree) if isinstance(f, ast.FunctionDef)}
    assert [c.callee for c in unguarded_calls(functions["body"])] == ["swap", "helper", "swap"]
    assert [c.callee for c in unguarded_calls(functions["helper"])] == ["swap", "guard.resume_if_ours"]


@pytest.mark.parametrize("runbook", sorted(RUNBOOKS))
def test_every_runbook_declares_its_report(runbook: str) -> None:
    """``run.report(...)`` before any step: the frame can then conclude the run on any exception."""
    source = inspect.getsource(importlib.import_module(f"runbooks.flows.{RUNBOOKS[runbook].module}"))
    assert "run.report(" in source
