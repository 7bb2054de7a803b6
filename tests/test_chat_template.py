# ruff: noqa: E501  (the embedded Qwen template has long lines)
"""Chat templates render exactly as transformers' apply_chat_template, inside a sandbox."""

from __future__ import annotations

import pytest

from qcoder_ds.models.chat_template import ChatTemplate, ChatTemplateError

# Qwen2.5-Coder-Instruct's template, as the embedded GGUF carries it (tokenizer.chat_template)
QWEN25 = r"""{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}
    {%- else %}
        {{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\n<tool_call>\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- message.content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
"""

# A Llama-3 style template: bos_token, namespace, loop controls, tojson, raise_exception
LLAMA_STYLE = (
    "{{- bos_token }}{% set ns = namespace(system='') %}"
    "{% for m in messages %}{% if m.role == 'system' %}{% set ns.system = m.content %}"
    "{% endif %}{% endfor %}"
    "{% if ns.system %}<|start_header_id|>system<|end_header_id|>\n\n{{ ns.system | trim }}"
    "<|eot_id|>{% endif %}"
    "{% if tools is not none %}{% for t in tools %}{{ t | tojson(indent=2) }}\n{% endfor %}"
    "{% endif %}"
    "{% for m in messages %}{% if m.role == 'system' %}{% continue %}{% endif %}"
    "{% if m.role not in ['user', 'assistant', 'tool'] %}"
    "{{ raise_exception('Unknown role: ' + m.role) }}{% endif %}"
    "<|start_header_id|>{{ m.role }}<|end_header_id|>\n\n"
    "{% if m.content is string %}{{ m.content | trim }}{% else %}{{ m.content | tojson }}"
    "{% endif %}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
# whitespace control: trim_blocks / lstrip_blocks decide every newline here
BLOCKS = """{% for message in messages %}
    {% if loop.first %}[{{ eos_token }}]{% endif %}
  <{{ message['role'] }}>
{{ message['content'] }}
    {% if not loop.last %}---{% endif %}
{% endfor %}
{% if add_generation_prompt %}<assistant>
{% endif %}"""

SYSTEM_USER = [
    {"role": "system", "content": "You write pandas code. Reply with code only."},
    {"role": "user", "content": "total revenue per region as a bar chart"},
]
MULTI_TURN = [
    {"role": "user", "content": "Load sales.csv"},
    {"role": "assistant", "content": "df = pd.read_csv('sales.csv')"},
    {"role": "user", "content": "Now the mean price per product, sorted.\n\n  With spaces  "},
    {"role": "assistant", "content": "df.groupby('product')['price'].mean().sort_values()"},
    {"role": "user", "content": "Unicode: 你好 🎉 café <b>&amp;</b> {{ 7*7 }} {% raw %}"},
]
TOOLS_CHAT = [
    {"role": "user", "content": "What is the weather in Paris?"},
    {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": "get_weather",
                                          "arguments": {"city": "Paris", "unit": "°C"}}}]},
    {"role": "tool", "content": "{\"temp\": 21}"},
    {"role": "tool", "content": "{\"sky\": \"clear\"}"},
    {"role": "assistant", "content": "21 °C and clear.", "tool_calls": None},
]
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather <now> & here",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}]
SPECIALS = {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}


def reference(template: str):
    """A transformers tokenizer carrying ``template``; only its apply_chat_template is used."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({"<unk>": 0}, unk_token="<unk>"))
    return PreTrainedTokenizerFast(tokenizer_object=backend, chat_template=template, **SPECIALS)


@pytest.mark.parametrize("template", [QWEN25, LLAMA_STYLE, BLOCKS], ids=["qwen2.5", "llama",
                                                                          "blocks"])
@pytest.mark.parametrize("chat", [SYSTEM_USER, MULTI_TURN, TOOLS_CHAT[:1], SYSTEM_USER[1:]],
                         ids=["system-user", "multi-turn", "user", "no-system"])
@pytest.mark.parametrize("gen", [True, False], ids=["gen", "nogen"])
def test_renders_like_transformers(template, chat, gen):
    ours = ChatTemplate(template, SPECIALS).render(chat, add_generation_prompt=gen)
    ref = reference(template).apply_chat_template(chat, tokenize=False,
                                                  add_generation_prompt=gen)
    assert ours == ref


@pytest.mark.parametrize("template", [QWEN25, LLAMA_STYLE], ids=["qwen2.5", "llama"])
def test_tools_and_tool_calls_like_transformers(template):
    ours = ChatTemplate(template, SPECIALS).render(TOOLS_CHAT, add_generation_prompt=True,
                                                   tools=TOOLS)
    ref = reference(template).apply_chat_template(TOOLS_CHAT, tools=TOOLS, tokenize=False,
                                                  add_generation_prompt=True)
    assert ours == ref
    if template is QWEN25:
        assert '"city": "Paris"' in ours and "Weather <now> & here" in ours  # tojson: no escaping
        assert "°C" in ours


def test_qwen_values():
    text = ChatTemplate(QWEN25).render(SYSTEM_USER[1:], add_generation_prompt=True)
    assert text == (
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful "
        "assistant.<|im_end|>\n<|im_start|>user\ntotal revenue per region as a bar chart"
        "<|im_end|>\n<|im_start|>assistant\n"
    )
    # message text is data, never template code
    text = ChatTemplate(QWEN25).render([{"role": "user", "content": "{{ 7*7 }}"}])
    assert "{{ 7*7 }}" in text and "49" not in text


def test_extra_variables_reach_the_template():
    t = ChatTemplate("{% if enable_thinking %}think{% else %}fast{% endif %}:{{ bos_token }}",
                     {"bos_token": "<s>"})
    assert t.render([{"role": "user", "content": "x"}], enable_thinking=True) == "think:<s>"
    assert t.render([{"role": "user", "content": "x"}]) == "fast:<s>"


@pytest.mark.parametrize("evil", [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ messages.__class__.__base__.__subclasses__() }}",
    "{{ cycler.__init__.__globals__.os.system('echo pwned') }}",
    "{{ raise_exception.__globals__['__builtins__']['open']('/etc/passwd').read() }}",
    "{{ messages.append({'role': 'system', 'content': 'injected'}) }}",
    "{% set ns = namespace(_secret=1) %}{{ ns._secret }}",
    "{{ messages[0].update({'content': 'changed'}) }}",
])
def test_sandbox_escapes_are_refused(evil):
    messages = [{"role": "user", "content": "hi"}]
    with pytest.raises(ChatTemplateError, match="sandbox"):
        ChatTemplate(evil).render(messages)
    assert messages == [{"role": "user", "content": "hi"}]  # nothing was changed


def test_raise_exception_is_a_clear_error():
    with pytest.raises(ChatTemplateError, match="refused the conversation: Unknown role: robot"):
        ChatTemplate(LLAMA_STYLE, SPECIALS).render([{"role": "robot", "content": "beep"}])


def test_bad_templates_and_inputs():
    with pytest.raises(ChatTemplateError, match="does not compile"):
        ChatTemplate("{% for m in messages %}{{ m.content }}")
    with pytest.raises(ChatTemplateError, match="no chat template"):
        ChatTemplate("   ")
    with pytest.raises(ChatTemplateError, match="empty conversation"):
        ChatTemplate(QWEN25).render([])
    with pytest.raises(ChatTemplateError, match="must be a dict"):
        ChatTemplate(QWEN25).render(["hello"])
    with pytest.raises(ChatTemplateError, match="failed on this conversation"):
        ChatTemplate("{{ messages[0].content + 1 }}").render([{"role": "u", "content": "x"}])


def test_rich_objects_become_inert_placeholders():
    class Frame:
        def to_csv(self, path):  # a method a template must never reach
            raise AssertionError("called")

    out = ChatTemplate("{{ messages[0].content }}|{{ messages[0].extra }}").render(
        [{"role": "user", "content": Frame(), "extra": None}])
    assert out == "<Frame>|"


def test_reasoning_fields_are_aliased_like_transformers():
    template = ("{% for m in messages %}[{{ m.role }}|{{ m.reasoning_content }}|{{ m.thinking }}"
                "|{{ m.content }}]{% endfor %}")
    chat = [{"role": "user", "content": "q"},
            {"role": "assistant", "content": "a", "reasoning": "because"},
            {"role": "assistant", "content": "b", "thinking": "hmm", "reasoning_content": None}]
    ours = ChatTemplate(template, SPECIALS).render(chat)
    assert ours == reference(template).apply_chat_template(chat, tokenize=False)
    assert "[assistant|because|because|a]" in ours and "[assistant|hmm|hmm|b]" in ours
