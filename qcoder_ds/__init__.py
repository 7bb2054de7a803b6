"""qcoder-ds: a notebook-first data-science copilot on a local code model, on the CPU."""

__version__ = "0.1.0"


def load_ipython_extension(ipython) -> None:
    """`%load_ext qcoder_ds` registers the `%%qcoder` magics."""
    from qcoder_ds.magics import load_ipython_extension as _load

    _load(ipython)
