"""The copilot: live-kernel context, prompts, validation, a sandboxed check, a repair loop.

The pipeline (``qcoder_ds.copilot.pipeline``) ties the parts together; the ``%%qcoder`` magic,
``qcoder ask`` and ``qcoder eval`` all go through it.
"""
