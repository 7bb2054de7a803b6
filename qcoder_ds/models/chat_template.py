"""Render a model's chat template (Jinja2) exactly as transformers' ``apply_chat_template`` does.

Templates ship inside model files downloaded from anywhere, so they are untrusted code: they run
in Jinja2's ImmutableSandboxedEnvironment (no attribute access to Python internals, no mutation
of the messages), with the same helpers transformers provides (``raise_exception``, a ``tojson``
that does not HTML-escape, ``strftime_now``, loop controls) so that every Hub template renders
the same string here as there.
"""

from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache
from typing import Any

import jinja2
import jinja2.ext
import numpy as np
from jinja2.sandbox import ImmutableSandboxedEnvironment

from qcoder_ds.errors import ModelError

# names a message's reasoning comes under; templates read the first (gpt-oss reads "thinking")
_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


class ChatTemplateError(ModelError):
    """A chat template failed to compile or render, or tried to leave its sandbox."""


def _raise_exception(message: str):
    raise jinja2.exceptions.TemplateError(message)


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    # Jinja's own tojson HTML-escapes (<, >, &, '), which would change the prompt
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


class _Namespace(jinja2.utils.Namespace):
    """``namespace()`` without underscore attributes (a route to CPython internals)."""

    def __init__(*args, **kwargs):  # same signature trick as jinja2.utils.Namespace
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name in attrs:
            _Namespace._check(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name, value):
        _Namespace._check(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check(name):
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(
                f"chat templates may not set underscore attributes on a namespace ({name!r})")


class _Dict:
    """``dict(...)`` for templates, without exposing the dict type itself."""

    def __call__(self, *args, **kwargs):
        return dict(*args, **kwargs)

    def fromkeys(self, *args, **kwargs):
        return dict.fromkeys(*args, **kwargs)


class _GenerationTag(jinja2.ext.Extension):
    """Accept ``{% generation %}...{% endgeneration %}`` (training-mask markers) as a no-op."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

    def _render(self, caller):
        return caller()


@lru_cache(maxsize=16)
def _compile(template: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True,
        extensions=[_GenerationTag, jinja2.ext.loopcontrols],
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["dict"] = _Dict()
    env.globals["namespace"] = _Namespace
    try:
        return env.from_string(template)
    except jinja2.exceptions.TemplateSyntaxError as e:
        raise ChatTemplateError(f"the chat template does not compile: {e} (line {e.lineno})") \
            from None


def _plain(value: Any) -> Any:
    """Rebuild inputs from plain JSON types, so no object methods are reachable from a template."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, np.generic):  # np.bool_(False) must not become a truthy placeholder
        return _plain(value.item())
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, dict):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return f"<{type(value).__name__}>"


class ChatTemplate:
    """One model's chat template, compiled once, rendered per conversation."""

    def __init__(self, template: str, special_tokens: dict[str, str] | None = None):
        if not isinstance(template, str) or not template.strip():
            raise ChatTemplateError("the model has no chat template (empty template)")
        self.template = template
        #: bos_token, eos_token, ... as transformers passes them to every template
        self.special_tokens = dict(special_tokens or {})
        self._compiled = _compile(template)

    def render(
        self,
        messages: list[dict[str, Any]],
        add_generation_prompt: bool = False,
        tools: list[dict] | None = None,
        **kwargs: Any,
    ) -> str:
        """The prompt text for ``messages`` (dicts with role and content).

        ``add_generation_prompt`` appends the header that opens the assistant's turn; extra
        keyword arguments reach the template as variables (e.g. ``enable_thinking``).
        """
        if not messages:
            raise ChatTemplateError("cannot render an empty conversation: give a message")
        chat = []
        for m in messages:
            if not isinstance(m, dict):
                raise ChatTemplateError(f"a chat message must be a dict, not {type(m).__name__}")
            # like transformers: a key whose value is None is absent (OpenAI sends content=None)
            m = {k: v for k, v in m.items() if v is not None}
            reasoning = next((m[k] for k in _REASONING_FIELDS if k in m), None)
            if reasoning is not None:  # templates read it under different names
                m = {"thinking": reasoning, **m, "reasoning_content": reasoning}
            chat.append(m)
        variables = {**self.special_tokens, **kwargs}
        try:
            return self._compiled.render(
                messages=_plain(chat),
                tools=_plain(tools),
                documents=None,
                add_generation_prompt=bool(add_generation_prompt),
                **_plain(variables),
            )
        except jinja2.exceptions.SecurityError as e:
            raise ChatTemplateError(f"the chat template tried to leave its sandbox: {e}") from None
        except jinja2.exceptions.TemplateError as e:
            raise ChatTemplateError(f"the chat template refused the conversation: {e}") from None
        except (TypeError, KeyError, AttributeError, IndexError, ValueError) as e:
            raise ChatTemplateError(
                f"the chat template failed on this conversation ({type(e).__name__}: {e})"
            ) from None
