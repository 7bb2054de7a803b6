"""setuptools glue for the JupyterLab extension and the C kernels (everything else is in
pyproject.toml).

The expert kernel (``qcoder_ds/runtime/_expert_kernel.c``) runs a mixture-of-experts expert
straight from its int4 blob; the decode kernel (``_decode_kernel.c``) runs one-token steps of
a resident one. Small C extensions with no dependency beyond Python's headers, built by every
install (an editable one too).

The chat's front end is TypeScript, built by ``make labextension`` (node + jlpm) into
``jupyter_extension/labextension/qcoder-ds`` and shipped as data files
(``share/jupyter/labextensions/qcoder-ds``). A wheel built before that build would install
a server without its panel and nobody would notice, so building a wheel refuses to go on
without it. Editable installs (their own command, not bdist_wheel) do not install data files;
``make`` links them into the environment instead.
"""

import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.bdist_wheel import bdist_wheel

LABEXTENSION = Path(__file__).resolve().parent / "jupyter_extension" / "labextension" / "qcoder-ds"


class bdist_wheel_with_labextension(bdist_wheel):  # noqa: N801 - setuptools command name
    def run(self):
        if not (LABEXTENSION / "package.json").is_file():
            raise SystemExit(
                f"qcoder-ds: the JupyterLab extension is not built ({LABEXTENSION} is missing): "
                "run `make labextension` (needs node >= 20) and build the package again")
        super().run()


FLAGS = [] if sys.platform == "win32" else ["-O3", "-std=c11"]
EXPERT_KERNEL = Extension(
    "qcoder_ds.runtime._expert_kernel", ["qcoder_ds/runtime/_expert_kernel.c"],
    extra_compile_args=FLAGS)
DECODE_KERNEL = Extension(
    "qcoder_ds.runtime._decode_kernel", ["qcoder_ds/runtime/_decode_kernel.c"],
    extra_compile_args=FLAGS + ([] if sys.platform == "win32" else ["-pthread"]),
    extra_link_args=[] if sys.platform == "win32" else ["-pthread"])

setup(cmdclass={"bdist_wheel": bdist_wheel_with_labextension},
      ext_modules=[EXPERT_KERNEL, DECODE_KERNEL])
