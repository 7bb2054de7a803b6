"""Code the grader runs *inside* the student's kernel around every test cell.

Its source is sent fresh before and after each test (never imported by the grader, never
left in the student's namespace). Before a test it undoes what student code may have done to
the reporting machinery (instance overrides of ``showtraceback``/``run_cell``, custom
exception handlers, AST/input transformers, event callbacks, trace hooks, methods of
IPython/ipykernel classes, from a snapshot taken before the notebook ran), reports tampering
it cannot undo (patched builtins, replaced streams), and installs an AST transformer that
routes every comparison in the test through ``__qcoder_check__``, which refuses values whose
comparison methods were written by the student (a rigged ``__eq__``). After the test it
checks that nothing was re-patched while the test ran. It reports a JSON line prefixed with
a one-time nonce on stdout; no nonce means the guard itself was prevented from running,
which the grader treats as tampering.

This limits what student code can do; it is not a proof: code that runs in the same process
as the test can always, with enough effort, lie. See README "Grading".
"""

# ruff: noqa: ANN001, ANN201  (kernel-side helper, kept small)

import ast
import builtins
import functools
import json
import os
import sys
import sysconfig
import types

_TRUSTED_MODULES = (
    "IPython", "ipykernel", "traitlets", "jupyter_client", "jupyter_core", "zmq", "tornado",
    "comm", "matplotlib_inline", "matplotlib", "asyncio", "typing", "abc", "builtins",
    "contextlib", "functools", "logging", "threading", "collections", "enum", "ipywidgets",
    "debugpy", "_pydevd_bundle", "pydevd", "concurrent", "selectors", "queue", "weakref",
)
_TRUSTED_DIRS = tuple(
    os.path.realpath(p) + os.sep
    for p in {sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")}
)
_CHECKED_METHODS = (
    "__eq__", "__ne__", "__lt__", "__le__", "__gt__", "__ge__", "__bool__", "__len__",
    "__abs__", "__neg__", "__pos__", "__sub__", "__rsub__", "__add__", "__radd__", "__mul__",
    "__rmul__", "__truediv__", "__rtruediv__", "__floordiv__", "__mod__", "__pow__",
    "__contains__", "__float__", "__int__", "__index__", "__round__", "__array__",
    "__array_ufunc__", "__array_function__", "__iter__", "__getitem__", "__hash__",
    "__instancecheck__", "__subclasscheck__", "__getattr__", "__getattribute__",
)
_CORE_BUILTINS = (
    "len", "abs", "isinstance", "issubclass", "sorted", "sum", "min", "max", "round", "all",
    "any", "repr", "print", "range", "zip", "map", "filter", "enumerate", "iter", "next",
    "hasattr", "getattr", "callable", "exec", "eval", "compile", "id", "hash",
)
_HEAPTYPE = 1 << 9  # Py_TPFLAGS_HEAPTYPE: set on every class created at run time
_CORE_TYPES = {
    "int": 0, "float": 0.0, "str": "", "bool": True, "list": [], "tuple": (), "dict": {},
    "set": set(), "bytes": b"", "complex": 0j, "frozenset": frozenset(), "type": int,
    "object": object(),
}


def _module_of(obj):
    if isinstance(obj, types.MethodType):
        obj = obj.__func__
    if isinstance(obj, functools.partial):
        obj = obj.func
    if isinstance(obj, (types.FunctionType, types.BuiltinFunctionType, type)):
        return getattr(obj, "__module__", None) or ""
    return getattr(type(obj), "__module__", None) or ""


def _trusted_module(name):
    if not name or name == "__main__":
        return False
    top = name.split(".")[0]
    if top in _TRUSTED_MODULES:
        return True
    mod = sys.modules.get(top)
    fn = getattr(mod, "__file__", None)
    return bool(fn) and os.path.realpath(fn).startswith(_TRUSTED_DIRS)


def _obj_trusted(obj):
    """Was this hook written by a library (not the notebook)? Module name and code file."""
    if isinstance(obj, types.MethodType):
        obj = obj.__func__
    if isinstance(obj, functools.partial):
        obj = obj.func
    if isinstance(obj, types.FunctionType):
        return _trusted_module(obj.__module__) and _function_trusted(obj)
    return _trusted_module(_module_of(obj))


def _function_trusted(f):
    for attr in ("fget", "fset", "__func__", "func"):
        inner = getattr(f, attr, None)
        if isinstance(inner, types.FunctionType):
            f = inner
            break
    if not isinstance(f, types.FunctionType):
        return True  # C slot wrappers and builtins cannot be written in a notebook
    name = f.__code__.co_filename
    if name.startswith("<frozen ") and name.endswith(">"):  # stdlib modules frozen into Python
        import _imp

        return _imp.is_frozen(name[8:-1])
    fn = os.path.realpath(name)
    return fn.startswith(_TRUSTED_DIRS) and os.path.isfile(fn)


_TYPE_CACHE = {}


def _type_trusted(t):
    hit = _TYPE_CACHE.get(t)
    if hit is not None:
        return hit
    ok = True
    for k in t.__mro__:
        if k is object:
            continue
        if getattr(k, "__module__", "__main__") in ("__main__", None):
            ok = False
            break
        for name in _CHECKED_METHODS:
            f = k.__dict__.get(name)
            if f is not None and not _function_trusted(f):
                ok = False
                break
        if not ok:
            break
    if ok and not _type_trusted_meta(t):
        ok = False
    _TYPE_CACHE[t] = ok
    return ok


def _type_trusted_meta(t):
    meta = type(t)
    return meta is type or all(
        getattr(k, "__module__", "__main__") != "__main__" for k in meta.__mro__)


class _Budget:
    def __init__(self, n):
        self.n = n


def _value_trusted(v, budget, depth=0):
    budget.n -= 1
    if budget.n < 0 or depth > 30:
        return True  # too large to inspect fully: the types seen so far were genuine
    t = type(v)
    if isinstance(v, type):
        return _type_trusted_meta(v)
    if isinstance(v, (types.FunctionType, types.BuiltinFunctionType, types.MethodType,
                      types.ModuleType)):
        return True  # calling student functions is what a test does
    if not _type_trusted(t):
        return False
    if t in (list, tuple, set, frozenset) or (isinstance(v, (list, tuple, set, frozenset))):
        return all(_value_trusted(x, budget, depth + 1) for x in v)
    if isinstance(v, dict):
        return all(_value_trusted(k, budget, depth + 1) and _value_trusted(x, budget, depth + 1)
                   for k, x in v.items())
    np = sys.modules.get("numpy")
    if np is not None and isinstance(v, np.ndarray) and v.dtype == object:
        return all(_value_trusted(x, budget, depth + 1) for x in v.flat)
    pd = sys.modules.get("pandas")
    if pd is not None:
        if isinstance(v, pd.DataFrame):
            return all(_value_trusted(v[c], budget, depth + 1) for c in v.columns
                       if v[c].dtype == object)
        if isinstance(v, (pd.Series, pd.Index)) and v.dtype == object:
            return all(_value_trusted(x, budget, depth + 1) for x in v)
    return True


class UntrustedValueError(AssertionError):
    """A test compared a value whose comparison methods the student wrote."""


def _make_checker():
    def __qcoder_check__(value):
        if not _value_trusted(value, _Budget(20000)):
            raise UntrustedValueError(
                f"the test compared a {type(value).__qualname__!s} object whose comparison or "
                "arithmetic methods are defined in the notebook; tests only accept built-in "
                "and library values")
        return value

    return __qcoder_check__


_ASSERT_CALLS = ("isclose", "allclose", "array_equal", "array_equiv", "equal", "equals")


class _CheckComparisons(ast.NodeTransformer):
    """Wrap comparison operands, assert tests and assertion-call arguments in the checker."""

    def __init__(self):
        self.in_assert = 0

    @staticmethod
    def _wrap(node):
        if isinstance(node, ast.Constant):
            return node
        call = ast.Call(func=ast.Name(id="__qcoder_check__", ctx=ast.Load()),
                        args=[node], keywords=[])
        return ast.copy_location(call, node)

    def visit_Assert(self, node):
        self.in_assert += 1
        node.test = self.visit(node.test)
        self.in_assert -= 1
        node.test = self._wrap(node.test)
        return node

    def visit_Compare(self, node):
        self.generic_visit(node)
        if all(isinstance(op, (ast.Is, ast.IsNot)) for op in node.ops):
            return node
        node.left = self._wrap(node.left)
        node.comparators = [self._wrap(c) for c in node.comparators]
        return node

    def visit_BinOp(self, node):
        self.generic_visit(node)
        if self.in_assert:
            node.left, node.right = self._wrap(node.left), self._wrap(node.right)
        return node

    def visit_UnaryOp(self, node):
        self.generic_visit(node)
        if self.in_assert:
            node.operand = self._wrap(node.operand)
        return node

    def visit_Call(self, node):
        f = node.func
        name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
        checked = name.startswith("assert") or name in _ASSERT_CALLS
        if checked:
            self.in_assert += 1
        self.generic_visit(node)
        if checked:
            self.in_assert -= 1
            node.args = [a if isinstance(a, ast.Starred) else self._wrap(a) for a in node.args]
            for kw in node.keywords:
                kw.value = self._wrap(kw.value)
        return node

    def visit_FunctionDef(self, node):  # helpers defined in a test run later, unguarded
        return node

    visit_AsyncFunctionDef = visit_FunctionDef
    visit_Lambda = visit_FunctionDef


class _TestTransformer:
    """An IPython AST transformer (callable on the module's tree)."""

    def visit(self, tree):
        tree = _CheckComparisons().visit(tree)
        return ast.fix_missing_locations(tree)


def _clean_instance(obj, label, problems):
    d = getattr(obj, "__dict__", None)
    if not isinstance(d, dict):
        return
    for name, v in list(d.items()):
        if name.startswith("_qcoder"):
            continue
        if isinstance(v, (types.FunctionType, types.MethodType, functools.partial,
                          types.BuiltinFunctionType)) and not _obj_trusted(v):
            del d[name]
            problems.append(f"{label}.{name} was replaced by notebook code (undone)")


_MISSING = object()


def _method_like(v):
    return isinstance(v, (types.FunctionType, classmethod, staticmethod, property))


def _method_trusted(v):
    if not _method_like(v):
        return False  # None or any other value put where a method was
    if isinstance(v, property):
        return all(f is None or _obj_trusted(f) for f in (v.fget, v.fset, v.fdel))
    return _obj_trusted(v.__func__ if isinstance(v, (classmethod, staticmethod)) else v)


def _snapshot(ip):
    """The methods of Jupyter's own classes, taken before any notebook code ran, so that a
    patched class (``InteractiveShell.showtraceback = ...``) can be put back, not just seen."""
    snap = {}
    objs = [obj for _, obj in _shell_objects(ip)] + [ip.input_transformer_manager]
    for obj in objs:
        for k in type(obj).__mro__:
            if k is object or k in snap or not _trusted_module(getattr(k, "__module__", "")):
                continue
            snap[k] = {n: v for n, v in vars(k).items() if _method_like(v) and _method_trusted(v)}
    return snap


def _restore_classes(snap, problems):
    """Put back every method of Jupyter's classes that notebook code replaced, set to another
    value (the ``= None`` variant) or added; a library's own later change is left alone."""
    for k, methods in snap.items():
        current = vars(k)
        for name, orig in methods.items():
            now = current.get(name, _MISSING)
            if now is orig or (now is not _MISSING and _method_trusted(now)):
                continue
            setattr(k, name, orig)
            problems.append(f"{k.__qualname__}.{name} was replaced by notebook code (undone)")
        for name, v in list(current.items()):
            if name not in methods and _method_like(v) and not _method_trusted(v):
                delattr(k, name)
                problems.append(f"{k.__qualname__}.{name} was added by notebook code (undone)")


def _check_classes(obj, label, fatal):
    for k in type(obj).__mro__:
        if not _trusted_module(getattr(k, "__module__", "")):
            if k is not object and k.__module__ != "builtins":
                fatal.append(f"{label} is a {k.__module__}.{k.__qualname__}, not Jupyter's own")
            continue
        for name, v in list(vars(k).items()):
            f = v.__func__ if isinstance(v, (classmethod, staticmethod)) else v
            if isinstance(f, types.FunctionType) and not _obj_trusted(f):
                fatal.append(f"{k.__qualname__}.{name} was patched by notebook code")


def _clean_list(seq, label, problems, keep=None):
    for item in list(seq):
        if item is keep:
            continue
        if not _obj_trusted(item):
            seq.remove(item)
            problems.append(f"{label}: a hook from notebook code was removed")


def _shell_objects(ip):
    objs = [("shell", ip), ("displayhook", ip.displayhook), ("display_pub", ip.display_pub),
            ("compiler", ip.compile), ("events", ip.events)]
    kernel = getattr(ip, "kernel", None)
    if kernel is not None:
        objs += [("kernel", kernel), ("session", kernel.session)]
    return objs


def _sanitize(ip, problems, fatal, keep_transformer=None):
    snap = ip.__dict__.get("_qcoder_classes")
    if isinstance(snap, dict):
        _restore_classes(snap, problems)
    for label, obj in _shell_objects(ip):
        _clean_instance(obj, label, problems)
        _check_classes(obj, label, fatal)
    if ip.custom_exceptions:
        ip.custom_exceptions = ()
        problems.append("a custom exception handler was removed")
    _clean_list(ip.ast_transformers, "ast_transformers", problems, keep_transformer)
    _clean_list(ip.input_transformers_post, "input_transformers_post", problems)
    mgr = ip.input_transformer_manager
    for attr in ("cleanup_transforms", "line_transforms", "token_transformers"):
        seq = getattr(mgr, attr, None)
        if isinstance(seq, list):
            _clean_list(seq, attr, problems)
    _clean_instance(mgr, "input_transformer_manager", problems)
    _check_classes(mgr, "input_transformer_manager", fatal)
    for event, callbacks in ip.events.callbacks.items():
        _clean_list(callbacks, f"events[{event}]", problems)
    if sys.gettrace() is not None:
        sys.settrace(None)
        problems.append("a trace function was removed")
    if sys.getprofile() is not None:
        sys.setprofile(None)
        problems.append("a profile function was removed")
    import threading

    threading.settrace(None)
    threading.setprofile(None)
    if not _obj_trusted(sys.displayhook):
        sys.displayhook = ip.displayhook
        problems.append("sys.displayhook was replaced (undone)")
    for stream in ("stdout", "stderr"):
        s = getattr(sys, stream)
        if not _trusted_module(type(s).__module__):
            fatal.append(f"sys.{stream} was replaced by notebook code")
    for name in _CORE_BUILTINS:
        f = getattr(builtins, name, None)
        if isinstance(f, type):  # range, zip, map...: must be a static (C) type
            ok = f.__name__ == name and not (f.__flags__ & _HEAPTYPE)
        else:
            ok = isinstance(f, types.BuiltinFunctionType) and f.__name__ == name and \
                getattr(f, "__module__", "builtins") in ("builtins", None)
        if not ok:
            fatal.append(f"builtins.{name} was replaced by notebook code")
    for name, sample in _CORE_TYPES.items():
        if getattr(builtins, name, None) is not type(sample):
            fatal.append(f"builtins.{name} was replaced by notebook code")
    if getattr(builtins, "AssertionError", None) is not type(AssertionError()):
        fatal.append("builtins.AssertionError was replaced by notebook code")


def _shadowed(ip, names):
    """Built-ins the test uses that notebook code replaced (IPython's own ``open`` is fine)."""
    out = []
    for n in names:
        if n in ip.user_ns and hasattr(builtins, n) and ip.user_ns[n] is not getattr(builtins, n):
            v = ip.user_ns[n]
            if callable(v) and not _obj_trusted(v):
                out.append(n)
    return out


def run(nonce, phase, names):
    """Phase "init" (before any notebook code) snapshots Jupyter's classes; "pre" cleans and
    arms the next test cell; "post" checks and disarms it."""
    from IPython import get_ipython

    ip = get_ipython()
    problems, fatal = [], []
    state = ip.__dict__.get("_qcoder_guard_state")
    if phase == "init":
        ip.__dict__["_qcoder_classes"] = _snapshot(ip)
    elif phase == "pre":
        if state is not None:
            _disarm(ip, state)
        _sanitize(ip, problems, fatal)
        for n in _shadowed(ip, names):
            fatal.append(f"the notebook replaced the built-in {n!r}, which the test uses")
        checker = _make_checker()
        transformer = _TestTransformer()
        ip.user_ns["__qcoder_check__"] = checker
        ip.ast_transformers.append(transformer)
        ip.__dict__["_qcoder_guard_state"] = (checker, checker.__code__, transformer)
    else:
        if state is None:
            fatal.append("the grading guard's state disappeared during the test")
        else:
            checker, code, transformer = state
            if ip.user_ns.get("__qcoder_check__") is not checker or checker.__code__ is not code:
                fatal.append("the test's comparison checker was replaced during the test")
            if transformer not in ip.ast_transformers:
                fatal.append("the test's transformer was removed during the test")
            before = len(problems)
            _sanitize(ip, problems, fatal, keep_transformer=transformer)
            fatal.extend(p + " during the test" for p in problems[before:])
            del problems[before:]
            _disarm(ip, state)
    sys.stdout.write(nonce + json.dumps({"problems": problems, "fatal": fatal}) + "\n")
    sys.stdout.flush()


def _disarm(ip, state):
    checker, _, transformer = state
    if ip.user_ns.get("__qcoder_check__") is checker:
        del ip.user_ns["__qcoder_check__"]
    while transformer in ip.ast_transformers:
        ip.ast_transformers.remove(transformer)
    ip.__dict__.pop("_qcoder_guard_state", None)
