"""Chat templates we know, rendered in Python instead of Jinja, with the same output.

Why: the token count renders every conversation through the base model's chat template, and
transformers' `apply_chat_template` costs ~30 us per conversation on our 2-core bench machine
(copying the messages into plain data, a sandboxed Jinja render that checks every attribute),
about a tenth of what preparing an example costs. The templates of the models we prepare data for
are a loop of string concatenations, so a few lines of Python give the same string.

`fast_renderer(template)` returns such a renderer for a template it knows by its exact text (so
an edited or unknown template always goes through Jinja), or None. A renderer returns None for a
conversation it does not handle (an empty one, or anything but dicts whose "role" and "content"
are plain `str`, e.g. tool calls or content parts): the caller then renders it with Jinja, which also reports the
errors. tests/dataprep/test_chat_templates.py compares every renderer with `apply_chat_template`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

Renderer = Callable[[Sequence[dict]], "str | None"]

# ChatML, as tokens.DEFAULT_CHAT_TEMPLATE writes it (for a tokenizer without a template).
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
# SmolLM2's (135M, 360M and 1.7B Instruct): ChatML with a default system prompt.
SMOLLM2_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
SMOLLM2_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\n" + SMOLLM2_SYSTEM + "<|im_end|>\n' }}"
    "{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _plain(messages: Sequence[dict]) -> bool:
    """Every message a dict whose role and content are exact `str`s: what the renderers handle. Not
    an empty conversation, which transformers refuses."""
    return bool(messages) and all(
        type(m) is dict and type(m.get("role")) is str and type(m.get("content")) is str for m in messages
    )


def _chatml(messages: Sequence[dict], system: str | None = None) -> str | None:
    """ChatML without a generation prompt; `system`: the text of the system message the template
    puts first when the conversation does not start with one (nothing for an empty conversation)."""
    if not _plain(messages):
        return None
    parts = []
    if system is not None and messages[0]["role"] != "system":
        parts.append(f"<|im_start|>system\n{system}<|im_end|>\n")
    parts += [f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages]
    return "".join(parts)


def _smollm2(messages: Sequence[dict]) -> str | None:
    return _chatml(messages, SMOLLM2_SYSTEM)


_RENDERERS: dict[str, Renderer] = {CHATML_TEMPLATE: _chatml, SMOLLM2_TEMPLATE: _smollm2}


def fast_renderer(template: str) -> Renderer | None:
    """The Python renderer of `template` (rendered with add_generation_prompt=False and no tools or
    documents, as the token count renders), or None if it is not one we know."""
    return _RENDERERS.get(template)
