"""A static safety check of generated Python: what it would do to the machine, before it runs.

It looks for process spawning and shells, eval/exec, network access, deleting files and
writing outside the working directory. By default the findings are warnings shown with the
cell; with ``--safe`` they block it. The sandbox enforces the same limits at run time, so a
construct this check misses still cannot reach the network or the user's files during the check.
"""

from __future__ import annotations

import ast
from pathlib import PurePath

from qcoder_ds.copilot.extract import parse_python
from qcoder_ds.copilot.validate import Issue

_PROCESS_MODULES = {"subprocess", "pty", "multiprocessing", "pexpect"}
#: C calls walk past Python's audit hook (the operating-system walls still hold them)
_NATIVE_MODULES = {"ctypes", "cffi"}
_NETWORK_MODULES = {"socket", "urllib", "urllib3", "requests", "http", "httpx", "aiohttp",
                    "ftplib", "smtplib", "telnetlib", "paramiko", "websocket", "websockets"}
_OS_PROCESS = {"system", "popen", "spawnl", "spawnle", "spawnlp", "spawnlpe", "spawnv",
               "spawnve", "spawnvp", "spawnvpe", "execl", "execle", "execlp", "execlpe", "execv",
               "execve", "execvp", "execvpe", "fork", "forkpty", "kill", "killpg", "posix_spawn",
               "posix_spawnp", "startfile"}
_DELETE = {("os", "remove"), ("os", "unlink"), ("os", "rmdir"), ("os", "removedirs"),
           ("shutil", "rmtree"), ("shutil", "move"), ("os", "rename"), ("os", "replace")}
_DYNAMIC = {"eval", "exec", "compile", "__import__"}
_WRITERS = {"to_csv", "to_parquet", "to_excel", "to_json", "to_pickle", "to_feather", "to_hdf",
            "to_html", "to_stata", "savefig", "save", "savez", "savetxt", "tofile",
            "write_text", "write_bytes"}


def _outside(path: str) -> bool:
    """True when a literal path leaves the working directory (absolute, ~, or ..)."""
    if path.startswith(("~", "/", "\\")) or (len(path) > 1 and path[1] == ":"):
        return path not in ("/dev/null",)
    return ".." in PurePath(path).parts


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def _open_mode(call: ast.Call) -> str:
    mode = call.args[1] if len(call.args) > 1 else next(
        (k.value for k in call.keywords if k.arg == "mode"), None)
    if isinstance(mode, ast.Constant) and isinstance(mode.value, str):
        return mode.value
    return "r" if mode is None else "?"


def check_safety(code: str) -> list[Issue]:
    """Findings of kind "unsafe" (severity "warning"; ``--safe`` turns them into blocks)."""
    tree, _ = parse_python(code)
    if tree is None:
        return []
    issues: list[Issue] = []

    def flag(node: ast.AST, what: str) -> None:
        issues.append(Issue("unsafe", what, getattr(node, "lineno", None), "warning"))

    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            _check_import(node, flag)
        elif isinstance(node, ast.Call):
            _check_call(node, flag)
    return issues


def _check_import(node: ast.Import | ast.ImportFrom, flag) -> None:
    mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
    for m in mods:
        root = m.split(".")[0]
        if root in _PROCESS_MODULES:
            flag(node, f"imports `{m}`, which starts other processes")
        elif root in _NETWORK_MODULES:
            flag(node, f"imports `{m}`, which reaches the network")
        elif root in _NATIVE_MODULES:
            flag(node, f"imports `{m}`, which calls C libraries directly")


def _check_call(node: ast.Call, flag) -> None:
    name = _dotted(node.func)
    parts = name.split(".")
    last = parts[-1] if parts else ""
    if name in _DYNAMIC:
        flag(node, f"calls `{name}()`, which runs code that cannot be checked")
    elif len(parts) >= 2 and parts[-2] == "os" and last in _OS_PROCESS:
        flag(node, f"calls `{name}()`, which runs a shell command or another process")
    elif len(parts) >= 2 and (parts[-2], last) in _DELETE:
        flag(node, f"calls `{name}()`, which deletes or moves files")
    elif last in ("unlink", "rmdir") and isinstance(node.func, ast.Attribute):
        flag(node, f"calls `.{last}()`, which deletes files")
    elif last == "system" and "get_ipython" in name:
        flag(node, "runs a shell command through IPython")
    elif name == "open":
        mode = _open_mode(node)
        if any(c in mode for c in "wax+?"):
            _check_target(node.args[0] if node.args else None,
                          f"opens a file for writing (mode {mode!r})", flag, node)
    elif last in _WRITERS and isinstance(node.func, ast.Attribute):
        target = node.args[0] if node.args else next(
            (k.value for k in node.keywords if k.arg in ("path", "fname", "path_or_buf",
                                                       "file", "excel_writer")), None)
        if target is not None:
            _check_target(target, f"writes a file with `.{last}()`", flag, node)
    for a in node.args:
        if isinstance(a, ast.Constant) and isinstance(a.value, str) and \
                a.value.startswith(("http://", "https://", "ftp://")):
            flag(node, f"reads from the network ({a.value[:60]})")


def _check_target(target: ast.AST | None, what: str, flag, node: ast.AST) -> None:
    if isinstance(target, ast.Constant) and isinstance(target.value, str):
        if _outside(target.value):
            flag(node, f"{what} outside the working directory: {target.value!r}")
    elif target is not None and not isinstance(target, ast.Constant):
        flag(node, f"{what} to a path computed at run time ({ast.unparse(target)[:60]})")
