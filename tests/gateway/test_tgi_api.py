"""TGI's API: the official `text-generation` client, run from its own environment (`.venv-tgi`, made by
`make setup`: it pins huggingface-hub<1, which transformers 5 cannot share), against the stack."""

from __future__ import annotations

import json
import subprocess

import httpx
import pytest

from tests.fixtures.stack import API_KEY, ROOT
from tests.fixtures.tiny_model import TINY_MODEL_ID

TGI_PYTHON = ROOT / ".venv-tgi" / "bin" / "python"
HEADERS = {"Authorization": f"Bearer {API_KEY}"}

CLIENT_SCRIPT = """
import json, sys
from text_generation import Client
from text_generation.errors import ValidationError

client = Client(sys.argv[1], headers={"Authorization": "Bearer " + sys.argv[2]}, timeout=120)
whole = client.generate("Once upon a time", max_new_tokens=6)
streamed = list(client.generate_stream("Once upon a time", max_new_tokens=6))
try:
    client.generate("Once upon a time", max_new_tokens=4, top_k=5)
    refused = None
except ValidationError as error:
    refused = str(error)
print(json.dumps({
    "text": whole.generated_text,
    "finish_reason": whole.details.finish_reason.value,
    "generated_tokens": whole.details.generated_tokens,
    "tokens": [[t.id, t.text, t.logprob, t.special] for t in whole.details.tokens],
    "stream_tokens": [[r.token.id, r.token.text] for r in streamed],
    "stream_text": streamed[-1].generated_text,
    "stream_finish": streamed[-1].details.finish_reason.value,
    "refused": refused,
}))
"""


@pytest.fixture(scope="module")
def tgi_python():
    if not TGI_PYTHON.is_file():
        pytest.fail(f"{TGI_PYTHON} is missing: `make setup` installs the text-generation client there")
    return TGI_PYTHON


def test_the_official_text_generation_client_generates_and_streams(stack, tgi_python):
    result = subprocess.run([str(tgi_python), "-c", CLIENT_SCRIPT, f"{stack.url}/tgi/{TINY_MODEL_ID}", API_KEY],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    assert seen["generated_tokens"] == len(seen["tokens"]) == 6 and seen["finish_reason"] == "length"
    assert all(logprob <= 0 for _, _, logprob, _ in seen["tokens"])
    assert [token[:2] for token in seen["tokens"]] == seen["stream_tokens"]  # greedy: the same tokens, one event each
    assert seen["stream_text"] == seen["text"] and seen["stream_finish"] == "length"
    assert "top_k" in seen["refused"]
    # the same through the OpenAI route
    with httpx.Client(base_url=stack.url, headers=HEADERS, timeout=60) as http:
        openai_text = http.post("/v1/completions", json={"model": TINY_MODEL_ID, "prompt": "Once upon a time",
                                                         "max_tokens": 6, "temperature": 0}).json()
    assert openai_text["choices"][0]["text"] == seen["text"]


def test_root_routes_take_the_model_from_adapter_id_and_stop_sequences_are_reported(stack):
    with httpx.Client(base_url=stack.url, headers=HEADERS, timeout=60) as http:
        body = {"inputs": "Once upon a time", "parameters": {"max_new_tokens": 8, "adapter_id": TINY_MODEL_ID,
                                                             "details": True}}
        whole = http.post("/generate", json=body)
        assert whole.status_code == 200, whole.text
        text = whole.json()["generated_text"]
        stop = text[3:6]
        body["parameters"]["stop"] = [stop]
        cut = http.post("/generate", json=body).json()
        assert cut["generated_text"] == text[: text.find(stop)]
        assert cut["details"]["finish_reason"] == "stop_sequence"
        listed = http.post("/", json={**body, "stream": False}).json()
        assert isinstance(listed, list) and listed[0]["generated_text"] == cut["generated_text"]
        full = http.post("/generate", json={"inputs": "Once upon a time",
                                            "parameters": {"max_new_tokens": 8, "adapter_id": TINY_MODEL_ID,
                                                           "return_full_text": True}}).json()
        assert full["generated_text"] == "Once upon a time" + text and "details" not in full
        with http.stream("POST", "/generate_stream", json=body) as events:
            lines = [json.loads(line[5:]) for line in events.iter_lines() if line.startswith("data:")]
        assert lines[-1]["generated_text"] == cut["generated_text"]
        assert lines[-1]["details"]["finish_reason"] == "stop_sequence"
        assert all(line["generated_text"] is None for line in lines[:-1])


@pytest.mark.parametrize(("path", "parameters", "status", "error_type", "needle"), [
    ("/generate", {"adapter_id": "gpt-9"}, 404, "generation", "gpt-9"),
    (f"/tgi/{TINY_MODEL_ID}/generate", {"adapter_id": "other"}, 422, "validation", "differs"),
    (f"/tgi/{TINY_MODEL_ID}/generate", {"repetition_penalty": 1.3}, 422, "validation", "repetition_penalty"),
    (f"/tgi/{TINY_MODEL_ID}/generate", {"max_new_tokens": 100_000}, 422, "validation", "max_tokens"),
])
def test_bad_requests_get_tgi_errors(stack, path, parameters, status, error_type, needle):
    with httpx.Client(base_url=stack.url, headers=HEADERS, timeout=60) as http:
        response = http.post(path, json={"inputs": "hi", "parameters": parameters})
    assert response.status_code == status, response.text
    assert response.json()["error_type"] == error_type and needle in response.json()["error"]
