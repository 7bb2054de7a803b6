"""The process that runs a candidate cell (started by ``sandbox.py``; never imported by it).

Standalone on purpose: it imports nothing from qcoder_ds, runs under ``python -I``, and after
the heavy imports waits for a job directory on stdin, so a pre-started spare can take the next
job at once. Per job: limits (address space, CPU, file size), an audit hook that refuses the
network, other processes, and writes or deletes outside the job's working directory; then the
cell runs like a notebook cell and a JSON summary is written to the job directory.
"""

import ast
import contextlib
import hashlib
import io
import json
import os
import pickle
import resource
import sys
import traceback
import warnings

os.environ.setdefault("MPLBACKEND", "Agg")
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

try:  # matplotlib is optional for the sandbox; plots then fail with a clear ImportError
    import matplotlib  # noqa: E402

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: E402
except ImportError:  # pragma: no cover
    plt = None

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
_NET_EVENTS = {"socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg",
               "socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyaddr",
               "socket.__new__"}
_PROC_EVENTS = {"subprocess.Popen", "os.system", "os.exec", "os.spawn", "os.posix_spawn",
                "os.fork", "os.forkpty", "pty.spawn", "os.kill", "os.killpg", "os.startfile"}
_PATH_EVENTS = {"os.remove", "os.rmdir", "os.rename", "shutil.rmtree", "os.truncate",
                "os.chmod", "os.chown", "os.link", "os.symlink", "os.mkdir", "os.utime",
                "shutil.move", "shutil.copyfile"}


class Blocked(PermissionError):
    """Raised inside the candidate when it does something the check does not allow."""


def _install_guard(workdir, allowed, blocked):
    roots = [os.path.realpath(workdir)] + [os.path.realpath(a) for a in allowed]

    def inside(path):
        try:
            p = os.fsdecode(path)
        except TypeError:
            return True  # a file descriptor: it was opened before, through this same hook
        real = os.path.realpath(p)
        return real == "/dev/null" or any(real == r or real.startswith(r + os.sep) for r in roots)

    def hook(event, args):
        if event == "open":
            path, mode, flags = (list(args) + [None, None, None])[:3]
            writes = (mode is not None and any(c in str(mode) for c in "wax+")) or (
                mode is None and isinstance(flags, int) and flags & _WRITE_FLAGS)
            if writes and not isinstance(path, int) and not inside(path):
                msg = f"writing outside the working directory is not allowed: {path}"
                blocked.append(msg)
                raise Blocked(msg)
        elif event in _NET_EVENTS:
            msg = f"network access is disabled in the check ({event})"
            blocked.append(msg)
            raise Blocked(msg)
        elif event in _PROC_EVENTS:
            msg = f"starting processes is disabled in the check ({event})"
            blocked.append(msg)
            raise Blocked(msg)
        elif event in _PATH_EVENTS:
            paths = [a for a in args if isinstance(a, (str, bytes, os.PathLike))]
            if any(not inside(p) for p in paths):
                msg = f"{event} outside the working directory is not allowed: {paths[0]}"
                blocked.append(msg)
                raise Blocked(msg)

    sys.addaudithook(hook)


def _fingerprint(value):
    """A stable hash of a result, so candidates can vote on the majority output. Column
    labels are left out: ``SUM(amount)`` and ``SUM(amount) AS total`` agree."""
    try:
        if isinstance(value, pd.DataFrame):
            text = value.round(6).to_csv(header=False)
        elif isinstance(value, pd.Series):
            text = value.round(6).to_csv() if value.dtype.kind in "fc" else value.to_csv()
        elif isinstance(value, np.ndarray):
            text = repr(np.round(value, 6).tolist() if value.dtype.kind in "fc" else
                        value.tolist())
        elif isinstance(value, float):
            text = repr(round(value, 6))
        else:
            text = repr(value)
    except Exception:  # noqa: BLE001
        text = repr(type(value))
    return hashlib.sha1(text.encode("utf-8", "replace")).hexdigest()[:16]


def _printed(value, limit=4000):
    """The ways a user would print ``value`` in a question ("desired output:"), to compare with
    the request: with and without the index, and as a plain list of values."""
    try:
        if isinstance(value, pd.DataFrame):
            forms = [value.to_string(), value.to_string(index=False)]
        elif isinstance(value, pd.Series):
            forms = [value.to_string(), repr(value.tolist())]
        elif isinstance(value, np.ndarray):
            forms = [str(value), repr(value.tolist())]
        elif isinstance(value, (list, tuple, dict)):
            forms = [repr(value)]
        else:
            return []
    except Exception:  # noqa: BLE001
        return []
    return [f for f in forms if len(f) <= limit]


def _describe(value, inputs=frozenset(), inputs_printed=()):
    if value is None:
        return None
    text = repr(value)
    out = {"type": type(value).__name__, "repr": text[:2000]}
    if isinstance(value, (pd.DataFrame, pd.Series, np.ndarray)):
        out["shape"] = list(value.shape)
    if isinstance(value, pd.DataFrame):
        out["columns"] = [str(c) for c in value.columns][:100]
        out["kinds"] = {str(c): value[c].dtype.kind for c in value.columns[:100]
                        if isinstance(value[c], pd.Series)}  # numbers kept as numbers?
        try:  # rows listed twice: a join that repeats rows (the SQL fan-out check)
            out["duplicate_rows"] = int(value.duplicated().sum())
        except Exception:  # noqa: BLE001 - unhashable cells: not reported
            pass
    if isinstance(value, (pd.DataFrame, pd.Series)) and value.size:
        try:  # every value missing: mostly an index that did not align
            out["all_missing"] = bool(value.isna().to_numpy().all())
        except Exception:  # noqa: BLE001 - a value pandas cannot test: not reported
            pass
    out["printed"] = _printed(value)
    out["is_input"] = _fingerprint(value) in inputs  # the data, returned unchanged
    if out["printed"]:  # where the request shows the inputs, a match confirms nothing
        out["inputs_printed"] = list(inputs_printed)
    return out


def _numbers(values, limit=500):
    out = []
    for v in list(values)[:limit]:
        try:
            out.append(float(v))
        except (TypeError, ValueError):  # dates and categories on a line's y: not compared
            return []
    return out


def _plotted(ax):
    """The data an axes shows, for the checks: bar heights (widths of horizontal bars) per
    bar container in drawing order, and each line's y values."""
    from matplotlib.container import BarContainer

    bars = []
    for c in ax.containers:
        if isinstance(c, BarContainer):
            wide = getattr(c, "orientation", "vertical") == "horizontal"
            bars += [p.get_width() if wide else p.get_height() for p in c]
    return {"bar_heights": _numbers(bars),
            "line_ys": [_numbers(line.get_ydata()) for line in ax.lines[:20]]}


def _bold(text):
    weight = text.get_fontweight()
    return weight in ("bold", "heavy", "extra bold", "black", "semibold", "demibold") or \
        (isinstance(weight, (int, float)) and weight >= 600)


def _legend(legend):
    if legend is None:
        return None
    title = legend.get_title()
    frame = legend.get_frame()
    edge = frame.get_edgecolor()
    return {"title": title.get_text(), "title_bold": _bold(title),
            "texts": [t.get_text() for t in legend.get_texts()][:30],
            "visible": bool(legend.get_visible()),
            # matplotlib has no public getter for the column count
            "columns": int(getattr(legend, "_ncols", getattr(legend, "_ncol", 1)) or 1),
            "frame": bool(legend.get_frame_on() and frame.get_linewidth() > 0
                          and len(edge) == 4 and edge[3] > 0)}


def _ticks(axis):
    """Which sides of an axis draw tick marks and tick labels (1: bottom/left, 2: top/right),
    whether it has minor ticks, and whether its major and minor grid lines show."""
    major = axis.get_major_ticks()[:1]
    minor = axis.get_minor_ticks()

    def marks(line):
        return bool(line.get_visible() and line.get_markersize() > 0)

    return {"ticks": [any(marks(t.tick1line) for t in major),
                      any(marks(t.tick2line) for t in major)],
            "labels": [any(t.label1.get_visible() for t in major),
                       any(t.label2.get_visible() for t in major)],
            "minor": len(axis.get_minorticklocs()) > 0,
            "label_side": axis.get_label_position(),
            "offset": axis.get_offset_text().get_text(),
            "grid": any(t.gridline.get_visible() for t in major),
            "minor_grid": any(t.gridline.get_visible() for t in minor)}


def _straight(ax):
    """How many vertical and horizontal line segments an axes draws (``axvline``, ``vlines``,
    a two-point line with one x): "draw vertical lines at ..." is checked on these."""
    from matplotlib.collections import LineCollection

    segments = []
    for line in ax.lines:
        xs, ys = _numbers(line.get_xdata()), _numbers(line.get_ydata())
        if len(xs) >= 2 and len(xs) == len(ys):
            segments.append((xs, ys))
    for c in ax.collections:
        if isinstance(c, LineCollection):
            for seg in c.get_segments()[:200]:
                if len(seg) >= 2:
                    segments.append(([p[0] for p in seg], [p[1] for p in seg]))

    def flat(values):
        return max(values) - min(values) <= 1e-9 * max(1.0, abs(values[0]))

    return {"vertical": sum(1 for xs, ys in segments if flat(xs) and not flat(ys)),
            "horizontal": sum(1 for xs, ys in segments if flat(ys) and not flat(xs))}


def _rotation(labels):
    shown = [t for t in labels if t.get_visible() and t.get_text()]
    return float(shown[0].get_rotation()) if shown else None


def _series_labels(ax):
    """The labels a legend would list: every artist with a label not starting with "_"."""
    artists = list(ax.lines) + list(ax.collections) + list(ax.containers) + list(ax.patches)
    return [str(a.get_label()) for a in artists
            if not str(a.get_label()).startswith("_")][:30]


def _hex(color):
    from matplotlib.colors import to_hex

    try:
        return to_hex(color)
    except (ValueError, TypeError):
        return None


def _colors(ax):
    """The colors of what an axes draws, per part, as hex: lines, bars, collections (scatter
    points), texts, tick labels and marks, and spines: "make the bars red" is checked on
    these."""
    from matplotlib.container import BarContainer

    def first(values):
        values = list(values)
        return values[0] if len(values) else None

    bars = [p for c in ax.containers if isinstance(c, BarContainer) for p in c][:200]
    ticks = {x: getattr(ax, f"{x}axis").get_major_ticks()[:1] for x in "xy"}
    found = {"lines": [_hex(line.get_color()) for line in ax.lines[:20]],
             "markers": [_hex(line.get_markerfacecolor()) for line in ax.lines[:20]
                         if str(line.get_marker()) not in ("None", "", " ")],
             "bars": [_hex(p.get_facecolor()) for p in bars],
             "points": [_hex(first(c.get_facecolors())) for c in ax.collections[:20]
                        if first(c.get_facecolors()) is not None],
             "title": [_hex(ax.title.get_color())] if ax.get_title() else [],
             "labels": [_hex(t.get_color()) for t in (ax.xaxis.label, ax.yaxis.label)
                        if t.get_text()],
             "ticklabels": [_hex(t.label1.get_color()) for x in "xy" for t in ticks[x]],
             "ticks": [_hex(t.tick1line.get_color()) for x in "xy" for t in ticks[x]],
             "spines": [_hex(sp.get_edgecolor()) for sp in ax.spines.values()
                        if sp.get_visible()]}
    for x in "xy":
        found[f"{x}ticklabels"] = [_hex(t.label1.get_color()) for t in ticks[x]]
        found[f"{x}ticks"] = [_hex(t.tick1line.get_color()) for t in ticks[x]]
        found[f"{x}label"] = [_hex(getattr(ax, f"{x}axis").label.get_color())]
        spine = ax.spines.get("bottom" if x == "x" else "left")  # polar axes have none
        found[f"{x}spine"] = [_hex(spine.get_edgecolor())] \
            if spine is not None and spine.get_visible() else []
    return {k: [c for c in v if c] for k, v in found.items()}


def _shown(ax):
    """What an axes shows besides its data, for the checks that compare a chart with the
    request's words: texts, legend, scales, bold texts and the subplot grid it sits in, line
    styles and markers, tick label rotation, spines and series labels."""
    spec = ax.get_subplotspec() if hasattr(ax, "get_subplotspec") else None
    texts = {"title": ax.title, "xlabel": ax.xaxis.label, "ylabel": ax.yaxis.label}
    bold = sorted(k for k, t in texts.items() if t.get_text() and _bold(t))
    if any(t.get_text() and _bold(t) for t in ax.texts):
        bold.append("texts")
    if any(t.get_text() and _bold(t) for t in ax.get_xticklabels() + ax.get_yticklabels()):
        bold.append("ticklabels")
    return {"legend": _legend(ax.get_legend()),
            "line_styles": [str(line.get_linestyle()) for line in ax.lines[:20]],
            "markers": [str(line.get_marker()) for line in ax.lines[:20]],
            "series_labels": _series_labels(ax),
            "xtick_rotation": _rotation(ax.get_xticklabels()),
            "ytick_rotation": _rotation(ax.get_yticklabels()),
            "spines": sum(1 for s in ax.spines.values() if s.get_visible()) if ax.axison else 0,
            **_straight(ax),
            "colors": _colors(ax),
            "texts": [t.get_text() for t in ax.texts][:30],
            "xticklabels": [t.get_text() for t in ax.get_xticklabels()][:60],
            "yticklabels": [t.get_text() for t in ax.get_yticklabels()][:60],
            "xscale": ax.get_xscale(), "yscale": ax.get_yscale(),
            "bold": bold,
            "grid": list(spec.get_gridspec().get_geometry()) if spec is not None else None,
            "xaxis": _ticks(ax.xaxis), "yaxis": _ticks(ax.yaxis)}


def _figures(workdir):
    figs = []
    if plt is None:
        return figs
    for num in plt.get_fignums():
        fig = plt.figure(num)
        fig.canvas.draw()  # render off-screen: drawing errors surface here
        axes = []
        for ax in fig.get_axes():
            entry = {"title": ax.get_title(), "xlabel": ax.get_xlabel(),
                     "ylabel": ax.get_ylabel(), "lines": len(ax.lines),
                     "patches": len(ax.patches), "collections": len(ax.collections),
                     "images": len(ax.images)}
            try:  # what the figure checks read: a kind of axes it cannot read fails no cell
                entry.update(_plotted(ax))
                entry.update(_shown(ax))
            except Exception as e:  # noqa: BLE001
                entry["unread"] = f"{type(e).__name__}: {e}"[:200]
            axes.append(entry)
        path = os.path.join(workdir, f"figure{num}.png")
        fig.savefig(path)
        suptitle = getattr(fig, "_suptitle", None)
        figs.append({"axes": axes, "png_bytes": os.path.getsize(path),
                     "suptitle": suptitle.get_text() if suptitle is not None else "",
                     "suptitle_bold": bool(suptitle is not None and _bold(suptitle)),
                     "legends": [_legend(g) for g in fig.legends][:5]})
    return figs


def _warning_entry(message):
    """A warning the cell raised, for the checks: its class and bases up to ``Warning``, the
    message, and the cell's line (None when it points outside the cell)."""
    bases = [c.__name__ for c in message.category.__mro__
             if issubclass(c, Warning) and c is not Warning]
    return {"category": message.category.__name__, "bases": bases,
            "message": str(message.message)[:500],
            "line": message.lineno if message.filename == "<cell>" else None}


def _run_cell(code, ns):
    """Like a notebook cell: the last expression's value is the cell's output. A cell that
    ends by printing or displaying one object, or by assigning one name, shows that object:
    a cell ending ``print(weather['temp'].mean())`` for "the mean temp per city" is checked
    on the number it printed, as if it had shown it. A cell that ends by assigning into an
    object (``df['A'] = ...``, ``df.loc[m, 'x'] = ...``) shows the object it changed."""
    tree = ast.parse(code, "<cell>")
    tail = tree.body[-1] if tree.body else None
    if isinstance(tail, ast.Assign) and len(tail.targets) == 1:
        target = tail.targets[0]
        into = isinstance(target, (ast.Subscript, ast.Attribute))
        while isinstance(target, (ast.Subscript, ast.Attribute)):
            target = target.value
        if isinstance(target, ast.Name):
            exec(compile(tree, "<cell>", "exec"), ns)
            value = ns.get(target.id)
            if into and not isinstance(value, (pd.DataFrame, pd.Series, np.ndarray)):
                return None  # plt.rcParams[...] = ...: no data to show
            return value
    if not isinstance(tail, ast.Expr):
        exec(compile(tree, "<cell>", "exec"), ns)
        return None
    last = tree.body.pop().value
    exec(compile(tree, "<cell>", "exec"), ns)
    if isinstance(last, ast.Call) and isinstance(last.func, ast.Name) and \
            last.func.id in ("print", "display") and len(last.args) == 1 and \
            not isinstance(last.args[0], ast.Starred):
        shown = eval(compile(ast.Expression(last.args[0]), "<cell>", "eval"), ns)
        ns["_qcoder_shown"] = shown
        last.args = [ast.copy_location(ast.Name("_qcoder_shown", ast.Load()), last.args[0])]
        eval(compile(ast.Expression(last), "<cell>", "eval"), ns)
        del ns["_qcoder_shown"]
        return shown
    return eval(compile(ast.Expression(last), "<cell>", "eval"), ns)


def _connect(spec):
    kind = spec["kind"]
    if kind == "sqlite":
        import sqlite3

        return sqlite3.connect(f"file:{spec['path']}?mode=ro", uri=True, timeout=2.0,
                               check_same_thread=False)
    if kind == "sqlalchemy-sqlite":
        import sqlalchemy

        return sqlalchemy.create_engine(f"sqlite:///file:{spec['path']}?mode=ro&uri=true")
    if kind == "duckdb":
        import duckdb

        con = duckdb.connect(":memory:")
        for table, frame in spec["tables"].items():
            con.register("_qcoder_tmp", frame)
            con.execute(f'CREATE TABLE "{table}" AS SELECT * FROM _qcoder_tmp')
            con.unregister("_qcoder_tmp")
        return con
    raise ValueError(f"unknown connection kind {kind}")


def _namespace(job):
    """The cell's globals: the modules, sample data and databases it reads."""
    ns = {"__name__": "__main__", "__builtins__": __builtins__}
    for name, module in job.get("modules", {}).items():
        ns[name] = __import__(module, fromlist=["_"]) if "." in module else __import__(module)
    ns.update(job["data"])
    for name, spec in job.get("connections", {}).items():
        ns[name] = _connect(spec)
    if "seaborn" in job["code"] or "sns." in job["code"]:
        with contextlib.suppress(ImportError):
            import seaborn  # noqa: F401  - imported before the guard (it reads config files)
    return ns


def _set_limits(job):
    """Memory, CPU and file size, each on top of what the imports already took."""
    headroom = job.get("memory_bytes")
    if headroom:  # on top of what the interpreter and its libraries already map
        with open("/proc/self/statm") as f:
            mapped = int(f.read().split()[0]) * resource.getpagesize()
        resource.setrlimit(resource.RLIMIT_AS, (mapped + headroom, mapped + headroom))
    cpu = job.get("cpu_seconds")
    if cpu:  # on top of the CPU time the imports took
        used = resource.getrusage(resource.RUSAGE_SELF)
        cpu += int(used.ru_utime + used.ru_stime) + 1
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    fsize = job.get("file_bytes")
    if fsize:
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))


def _failure(e):
    """What the user reads of an exception: the cell's line, the type and the message."""
    tb = traceback.extract_tb(e.__traceback__)
    cell = [fr for fr in tb if fr.filename == "<cell>"]
    lines = traceback.format_exception_only(type(e), e)
    where = f"line {cell[-1].lineno}: " if cell else ""
    error = (where + "".join(lines).strip())[-3000:]
    if isinstance(e, MemoryError):
        error = where + "MemoryError: the cell ran past the memory limit of the check"
    return {"ok": False, "error_type": type(e).__name__, "error": error,
            "traceback": "".join(traceback.format_list(cell[-5:])) + "".join(lines)}


def run_job(job_dir):
    with open(os.path.join(job_dir, "job.pkl"), "rb") as f:
        job = pickle.load(f)
    out = open(os.path.join(job_dir, "result.json"), "w")  # opened before the guard
    workdir = os.path.join(job_dir, "work")
    os.makedirs(workdir, exist_ok=True)
    os.chdir(workdir)
    ns = _namespace(job)
    data = [v for v in job["data"].values()
            if isinstance(v, (pd.DataFrame, pd.Series, np.ndarray))]
    inputs = {_fingerprint(v) for v in data}
    # as the request would show them (not as lists), before the cell can change them
    inputs_printed = [f for v in data for f in _printed(v) if not f.lstrip().startswith("[")]
    blocked = []
    _install_guard(workdir, job.get("allowed_dirs", []), blocked)
    _set_limits(job)
    stdout = io.StringIO()
    result = {"ok": True, "error": None, "error_type": None, "traceback": None}
    caught = []
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stdout), \
                warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")  # a warning the user would see once counts here
            value = _run_cell(job["code"], ns)
            figs = _figures(workdir)
        named = ns.get(job.get("result_name") or "", None)
        shown = named if named is not None else value
        result.update(value=_describe(shown, inputs, inputs_printed),
                      fingerprint=_fingerprint(shown),
                      figures=figs)
    except BaseException as e:  # noqa: BLE001 - everything is reported, nothing escapes
        result.update(_failure(e))
    result["stdout"] = stdout.getvalue()[-4000:]
    result["blocked"] = blocked
    result["warnings"] = [_warning_entry(w) for w in (caught or [])[:20]]
    json.dump(result, out, default=str)
    out.close()


def main():
    sys.stdout.write("ready\n")  # imports done: the parent starts the clock from here
    sys.stdout.flush()
    line = sys.stdin.readline().strip()
    if line:
        run_job(line)
    sys.stdout.flush()
    os._exit(0)  # skip interpreter teardown (and any at-exit writes the guard would refuse)


if __name__ == "__main__":
    main()
