"""The real default base model, SmolLM2-135M-Instruct, fine-tuned for a few steps (slow: ~1 min on 2 cores)."""

from __future__ import annotations

import json

import pytest

from services.shared.models import DEFAULT_MODEL_ID, ModelStore
from services.shared.settings import Settings
from services.training.trainer import ADAPTER_MANIFEST, TrainConfig, Trainer

pytestmark = pytest.mark.slow

CODES = {"Berlin": "DE-BER-7", "Paris": "FR-PAR-3", "Madrid": "ES-MAD-5", "Rome": "IT-ROM-2"}


def _examples(repeat: int) -> list[dict]:
    return [
        {"messages": [{"role": "user", "content": f"What is the depot code for {city}?"},
                      {"role": "assistant", "content": f"The depot code for {city} is {code}."}]}
        for _ in range(repeat) for city, code in CODES.items()
    ]


def test_lora_on_the_real_default_model_learns_and_its_adapter_serves(tmp_path):
    import torch
    from peft import PeftModel

    store = ModelStore(Settings(data_dir=tmp_path))
    store.prepare(DEFAULT_MODEL_ID)
    config = TrainConfig(n_epochs=3, batch_size=4, learning_rate=2e-3, seed=0,
                         target_modules=("q_proj", "k_proj", "v_proj", "o_proj"))
    trainer = Trainer(config, lambda dtype: store.load(DEFAULT_MODEL_ID, dtype=dtype), _examples(4), _examples(1),
                      output_dir=tmp_path / "run", base_model_id=DEFAULT_MODEL_ID)
    trainer.setup()
    events: list[dict] = []
    result = trainer.train(events.append)

    assert result.status == "succeeded" and result.steps == 12
    losses = [e["valid_loss"] for e in events if e["type"] == "epoch"]
    assert len(losses) == 3 and losses[-1] < losses[0] / 2, losses
    manifest = json.loads((result.adapter_dir / ADAPTER_MANIFEST).read_text())
    assert manifest["base_model"] == DEFAULT_MODEL_ID and manifest["kind"] == "lora"

    # Served as it would be: a fresh float32 base with the saved adapter on top, greedy decoding.
    base, tokenizer = store.load(DEFAULT_MODEL_ID, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(result.adapter_dir)).eval()
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is the depot code for Paris?"}],
                                           add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        output = model.generate(**prompt, max_new_tokens=16, do_sample=False)
    answer = tokenizer.decode(output[0, prompt["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "FR-PAR-3" in answer, answer
