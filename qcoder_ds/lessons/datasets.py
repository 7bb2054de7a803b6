"""Seeded dataset generators (``lessons/datasets/<name>.py``) and the files they become.

A generator is ``generate(rng) -> {table name: DataFrame}``. pandas and matplotlib
exercises read the tables as CSV files; SQL exercises query them in one SQLite file,
opened read-only so a learner's query cannot change the data the tests use.
"""

from __future__ import annotations

import importlib.util
import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd

from qcoder_ds.lessons.errors import TemplateError
from qcoder_ds.lessons.templates import lessons_dir

_CACHE: dict[str, object] = {}


def _module(name: str, root: Path | None = None):
    path = (root or lessons_dir()) / "datasets" / f"{name}.py"
    key = str(path)
    if key not in _CACHE:
        if not path.is_file():
            raise TemplateError(f"dataset generator {name!r} not found at {path}")
        spec = importlib.util.spec_from_file_location(f"qcoder_lessons_datasets_{name}", path)
        mod = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(mod)
        except Exception as e:
            raise TemplateError(f"dataset generator {path} does not load: {e}") from e
        if not callable(getattr(mod, "generate", None)):
            raise TemplateError(f"{path} has no generate(rng) function")
        _CACHE[key] = mod
    return _CACHE[key]


def generate(name: str, seed: int, root: Path | None = None) -> dict[str, pd.DataFrame]:
    """The tables of dataset ``name`` for ``seed`` (same seed, same tables)."""
    tables = _module(name, root).generate(np.random.default_rng(seed))
    if not isinstance(tables, dict) or not all(
            isinstance(v, pd.DataFrame) for v in tables.values()):
        raise TemplateError(f"dataset {name!r}: generate() must return {{name: DataFrame}}")
    return tables


def _date_columns(df: pd.DataFrame) -> list[str]:
    return [c for c in df.columns if pd.api.types.is_datetime64_any_dtype(df[c])]


def write_csv(tables: dict[str, pd.DataFrame], folder: Path) -> str:
    """Write each table as ``folder/<table>.csv``; return the code that loads them back."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["import pandas as pd", ""]
    for name, df in tables.items():
        df.to_csv(folder / f"{name}.csv", index=False, date_format="%Y-%m-%d")
        dates = _date_columns(df)
        extra = f", parse_dates={dates!r}" if dates else ""
        lines.append(f'{name} = pd.read_csv("{folder.name}/{name}.csv"{extra})')
    return "\n".join(lines)


def write_sqlite(dataset: str, tables: dict[str, pd.DataFrame], folder: Path) -> str:
    """Write the tables into ``folder/<dataset>.sqlite``; return the code that opens it."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{dataset}.sqlite"
    tmp = path.with_suffix(".sqlite.tmp")
    tmp.unlink(missing_ok=True)
    con = sqlite3.connect(tmp)
    try:
        for name, df in tables.items():
            out = df.copy()
            for c in _date_columns(out):
                out[c] = out[c].dt.strftime("%Y-%m-%d")
            out.to_sql(name, con, index=False)
        con.commit()
    finally:
        con.close()
    tmp.replace(path)
    return "\n".join([
        "import sqlite3",
        "",
        "# read-only: queries cannot change the tables",
        f'conn = sqlite3.connect("file:{folder.name}/{dataset}.sqlite?mode=ro", uri=True)',
    ])


def sqlite_schema(tables: dict[str, pd.DataFrame]) -> str:
    """A short description of the tables, for prompts (``orders(order_id, ...)``)."""
    return "\n".join(f"- `{name}`({', '.join(df.columns)})" for name, df in tables.items())
