"""The Engine: one loaded model (decoder session + tokenizer + chat template) that streams text.

This is the one object the copilot, the lessons and the Jupyter server talk to::

    engine = Engine.load()                       # the default model, ONNX Runtime, int4
    for piece in engine.chat([{"role": "user", "content": "a pandas groupby example"}]):
        print(piece, end="")

A session has one KV cache, so one generation runs at a time: a second caller waits for the
first stream to finish (or be closed / cancelled). Cancelling raises GenerationCancelled
from the stream (see qcoder_ds.runtime.generate).

Speculative decoding (qcoder_ds.runtime.speculative): a model whose catalogue entry names a
drafter (the 1.5B: prompt lookup) drafts with it unless told otherwise (``drafter=``, or
``QCODER_DRAFTER``: a model name such as the 0.5B, ``"prompt-lookup"``,
``"<model>+prompt-lookup"`` or ``"none"``). Greedy answers are the model's own greedy tokens (up
to the int4 kernels' rounding at near ties, see docs/runtime.md); only the speed differs.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Sequence
from typing import Any

from qcoder_ds.errors import QcoderError
from qcoder_ds.runtime.backend import DecoderSession
from qcoder_ds.runtime.generate import DEFAULT_PREFILL_CHUNK, TextStream, generate_text
from qcoder_ds.runtime.sampler import SamplingParams
from qcoder_ds.runtime.speculative import (
    Drafter,
    LookupThenModel,
    ModelDrafter,
    PromptLookup,
)

#: the drafter name that needs no model: n-grams of the prompt propose tokens
PROMPT_LOOKUP = "prompt-lookup"
#: the drafter a model gets when none is named: the one its catalogue entry names
AUTO = "auto"
#: a probe both tokenizers must encode alike before one model drafts for another
_PROBE = "df.groupby('region')['revenue'].sum()  # 合计\nSELECT name FROM t WHERE x > 1;"


class Engine:
    """A model ready to generate. Build it with :meth:`Engine.load`."""

    def __init__(self, session: DecoderSession, tokenizer: Any, chat_template: Any = None,
                 name: str = "model", backend: str = "", weights: str = "",
                 prefill_chunk: int = DEFAULT_PREFILL_CHUNK, drafter: Drafter | None = None,
                 draft_tokens: int | None = None, drafter_name: str = "none"):
        self.session = session
        self.tokenizer = tokenizer
        self.template = chat_template  # a ChatTemplate (has .render), or None for base models
        self.name, self.backend, self.weights = name, backend, weights
        self.prefill_chunk = prefill_chunk
        self.drafter, self.draft_tokens = drafter, draft_tokens
        self.drafter_name = drafter_name if drafter is not None else "none"
        self._lock = threading.Lock()

    @classmethod
    def load(cls, model: str | None = None, backend: str = "onnx", weights: str = "int4",
             threads: int | None = None, progress: bool = True, drafter: str | None = None,
             draft_tokens: int | None = None, moe: dict | None = None) -> Engine:
        """Resolve ``model`` (catalogue name, GGUF file, HF directory; None: the default of
        ``models.choice``), export it to ``backend`` once (cached), and load it
        (``openai:<model>@<url>``: a ``RemoteEngine`` on that server instead). ``threads``
        defaults to the backend's choice (all cores). ``drafter`` (default ``QCODER_DRAFTER``,
        else ``"auto"``): a model name to draft with, ``"prompt-lookup"``,
        ``"<model>+prompt-lookup"``, ``"none"``, or ``"auto"`` (:func:`auto_drafter`);
        ``draft_tokens`` pins k (default: adaptive, at most 8). ``moe``:
        the expert cache of a mixture-of-experts model (``expert_ram``, ``policy``,
        ``prefetch``, ``trace``; see :func:`moe_options`), ignored for a dense model."""
        from qcoder_ds.models.chat_template import ChatTemplate
        from qcoder_ds.models.choice import default_model
        from qcoder_ds.models.sources import resolve

        model = model or default_model().name
        if model.startswith("openai:"):  # a model server for the class: see remote_engine
            from qcoder_ds.remote_engine import RemoteEngine

            return RemoteEngine.connect(model)  # type: ignore[return-value]
        from qcoder_ds.runtime.export import load_session

        source = resolve(model)
        tokenizer = source.tokenizer()
        text = getattr(tokenizer, "chat_template", None)  # None for base models
        template = ChatTemplate(text, getattr(tokenizer, "special_tokens_map", None)) \
            if text else None
        drafter = choose_drafter(drafter, getattr(source, "entry", None))
        options = _turn_taking(backend, drafter)
        if source.architecture == "qwen3_moe":
            options.update(moe_options(moe))
        session = load_session(source, backend=backend, weights=weights, threads=threads,
                               progress=progress, **options)
        draft = load_drafter(drafter, session, tokenizer, backend=backend, weights=weights,
                             threads=threads, progress=progress, **options)
        return cls(session, tokenizer, template, name=getattr(source, "name", model),
                   backend=backend, weights=weights, drafter=draft, draft_tokens=draft_tokens,
                   drafter_name=drafter or "none")

    @property
    def max_context(self) -> int:
        """Prompt plus generated tokens must fit in this many tokens."""
        return int(self.session.max_context)

    def count_tokens(self, text: str) -> int:
        """How many tokens ``text`` takes (to fit context into the window)."""
        return len(self.tokenizer.encode(text))

    def render_chat(self, messages: Sequence[dict], add_generation_prompt: bool = True) -> str:
        """The prompt text the model sees for ``messages``."""
        if self.template is None:
            raise QcoderError(f"{self.name} has no chat template; use complete() with plain text")
        return self.template.render(list(messages), add_generation_prompt=add_generation_prompt)

    def count_chat_tokens(self, messages: Sequence[dict]) -> int:
        return self.count_tokens(self.render_chat(messages))

    def chat(self, messages: Sequence[dict], params: SamplingParams | None = None,
             cancel: threading.Event | None = None, truncate: bool = False,
             reply_prefix: str = "") -> Iterator[str]:
        """Stream the assistant's reply to ``messages`` (dicts with role and content).

        ``reply_prefix`` is put in the model's mouth: the reply is taken to start with it (e.g.
        an opening code fence and imports) and the stream is what the model writes after it.
        """
        return self.complete(self.render_chat(messages) + reply_prefix, params, cancel,
                             truncate=truncate)

    def complete(self, prompt: str, params: SamplingParams | None = None,
                 cancel: threading.Event | None = None, truncate: bool = False) -> Iterator[str]:
        """Stream the model's continuation of ``prompt`` (raw text, special tokens allowed).

        The returned iterator is a TextStream: after it ends, ``.finish_reason`` and
        ``.tokens`` (ids, timings) say what happened.
        """
        ids = self.tokenizer.encode(prompt) if prompt else []
        # built now, so bad input (empty, too long) fails at the call; the session is only
        # touched when iteration starts, under the lock
        stream = generate_text(self.session, self.tokenizer, ids, params, cancel,
                               prefill_chunk=self.prefill_chunk, truncate=truncate,
                               drafter=self.drafter, draft_tokens=self.draft_tokens)
        return _Locked(self._lock, stream)

    def generate(self, messages: Sequence[dict], params: SamplingParams | None = None,
                 cancel: threading.Event | None = None) -> str:
        """The whole reply at once (for callers that do not stream)."""
        return "".join(self.chat(messages, params, cancel))


def moe_options(given: dict | None = None) -> dict:
    """The expert cache's settings for a mixture-of-experts model: ``given`` first, then
    ``QCODER_EXPERT_RAM`` / ``QCODER_EXPERT_POLICY`` from the environment (so the copilot, the
    magics and the server get them too), else an automatic budget (``auto``: what fits in
    60% of the memory available now, at most every expert)."""
    opts = {k: v for k, v in (given or {}).items() if v is not None}
    opts.setdefault("expert_ram", os.environ.get("QCODER_EXPERT_RAM") or "auto")
    policy = os.environ.get("QCODER_EXPERT_POLICY")
    if policy:
        opts.setdefault("policy", policy)
    return opts


def auto_drafter(entry: Any) -> str:
    """The drafter for a model nobody chose one for: the one its catalogue entry names (each
    chosen by benchmarks/speculative.py on this project's requests), else none."""
    return getattr(entry, "drafter", None) or "none"  # entry: a CatalogueEntry, or None


def choose_drafter(named: str | None, entry: Any) -> str:
    """The drafter name ``Engine.load`` uses: ``named``, else ``QCODER_DRAFTER``, else (and for
    ``"auto"``) the catalogue entry's (:func:`auto_drafter`)."""
    name = (named or os.environ.get("QCODER_DRAFTER") or AUTO).strip()
    return auto_drafter(entry) if name.lower() == AUTO else name


def _model_part(name: str | None) -> str | None:
    """The model a drafter name loads ("<model>" or "<model>+prompt-lookup"), or None."""
    if not name or name.lower() in ("none", AUTO) or name == PROMPT_LOOKUP:
        return None
    return name.removesuffix(f"+{PROMPT_LOOKUP}")


def _turn_taking(backend: str, drafter: str | None) -> dict:
    """Load options for a target and a drafter model that take turns on the same cores: ONNX
    Runtime's threads must not spin-wait between ops, or each session's idle threads hold the
    cores the other one needs."""
    if backend == "onnx" and _model_part(drafter):
        return {"spinning": False}
    return {}


def load_drafter(name: str | None, target: DecoderSession, tokenizer: Any,
                 **load_options) -> Drafter | None:
    """The drafter ``name`` asks for, checked against the target: prompt lookup, a model
    whose tokenizer encodes like the target's (a draft in other ids would be all rejected), or
    both ("<model>+prompt-lookup"). ``load_options`` go to ``load_session`` (backend, weights,
    threads, progress)."""
    if not name or name.lower() == "none":
        return None
    if name == PROMPT_LOOKUP:
        return PromptLookup()
    from qcoder_ds.models.sources import resolve
    from qcoder_ds.runtime.export import load_session

    model = _model_part(name)
    source = resolve(model)
    if source.tokenizer().encode(_PROBE) != tokenizer.encode(_PROBE):
        raise QcoderError(f"{model} cannot draft for this model: its tokenizer differs; "
                          f"choose a model of the same family or {PROMPT_LOOKUP!r}")
    session = load_session(source, **load_options)
    if session.vocab_size != target.vocab_size:
        raise QcoderError(f"{model} cannot draft for this model: {session.vocab_size} logits "
                          f"per token, the model has {target.vocab_size}")
    drafter = ModelDrafter(session)
    return LookupThenModel(drafter) if model != name else drafter


class _Locked:
    """A TextStream that holds the engine's lock from its first item until it ends or closes."""

    def __init__(self, lock: threading.Lock, stream: TextStream):
        self._lock = lock
        self._stream = stream
        self._held = False
        self._done = False

    def __iter__(self):
        return self

    def __next__(self) -> str:
        if self._done:
            raise StopIteration
        if not self._held:
            self._lock.acquire()
            self._held = True
        try:
            return next(self._stream)
        except BaseException:
            self._release()
            raise

    def _release(self) -> None:
        self._done = True
        if self._held:
            self._held = False
            self._lock.release()

    def close(self) -> None:
        self._stream.close()
        self._release()

    def __del__(self):
        if self._held:
            self._release()

    def __getattr__(self, name: str):  # finish_reason, text, tokens ...
        return getattr(self._stream, name)
