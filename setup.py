"""setuptools glue for the JupyterLab extension (everything else is in pyproject.toml).

The chat's front end is TypeScript, built by ``make labextension`` (node + jlpm) into
``jupyter_extension/labextension/qcoder-ds`` and shipped as data files
(``share/jupyter/labextensions/qcoder-ds``). A wheel built before that build would install
a server without its panel and nobody would notice, so installing the data files refuses to
go on without it. Editable installs do not install data files; ``make`` links them instead.
"""

from pathlib import Path

from setuptools import setup
from setuptools.command.install_data import install_data

LABEXTENSION = Path(__file__).resolve().parent / "jupyter_extension" / "labextension" / "qcoder-ds"


class install_data_with_labextension(install_data):  # noqa: N801 - setuptools command name
    def run(self):
        if not (LABEXTENSION / "package.json").is_file():
            raise SystemExit(
                f"qcoder-ds: the JupyterLab extension is not built ({LABEXTENSION} is missing): "
                "run `make labextension` (needs node >= 20) and build the package again")
        super().run()


setup(cmdclass={"install_data": install_data_with_labextension})
