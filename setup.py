"""setuptools glue for the JupyterLab extension (everything else is in pyproject.toml).

The chat's front end is TypeScript, built by ``make labextension`` (node + jlpm) into
``jupyter_extension/labextension/qcoder-ds`` and shipped as data files
(``share/jupyter/labextensions/qcoder-ds``). A wheel built before that build would install
a server without its panel and nobody would notice, so building a wheel refuses to go on
without it. Editable installs (their own command, not bdist_wheel) do not install data files;
``make`` links them into the environment instead.
"""

from pathlib import Path

from setuptools import setup
from setuptools.command.bdist_wheel import bdist_wheel

LABEXTENSION = Path(__file__).resolve().parent / "jupyter_extension" / "labextension" / "qcoder-ds"


class bdist_wheel_with_labextension(bdist_wheel):  # noqa: N801 - setuptools command name
    def run(self):
        if not (LABEXTENSION / "package.json").is_file():
            raise SystemExit(
                f"qcoder-ds: the JupyterLab extension is not built ({LABEXTENSION} is missing): "
                "run `make labextension` (needs node >= 20) and build the package again")
        super().run()


setup(cmdclass={"bdist_wheel": bdist_wheel_with_labextension})
