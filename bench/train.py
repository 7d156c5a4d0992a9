"""Training speed and memory: tuneloop's LoRA trainer against Hugging Face Trainer + PEFT.

Run from the repository root:

    .venv/bin/python bench/train.py [--examples 300] [--epochs 1]

Both runs train SmolLM2-135M-Instruct (the converted default model of the model store) with the
same LoRA settings (r 16, alpha 32, dropout 0.05 on q/k/v/o_proj), batch size 8, learning rate
2e-4 with 3% warmup and linear decay, gradient clipping at 1.0, seed 0, on the same generated
support-desk chats (90% train, 10% held out), with the loss on the assistant's tokens only:

- baseline: `transformers.Trainer` over a `peft` model as usually configured: float32, examples
  in random order, `DataCollatorForSeq2Seq` padding each batch to its longest example, the model's
  own forward (logits at every position) and loss.
- ours: `services.training.trainer.Trainer` with its defaults (bf16 base weights and autocast on
  this CPU, length-grouped batches, micro-batches of at most 512 tokens, LM head and
  cross-entropy only at label positions, chunked) plus its per-epoch validation and checkpoint.

Each run is its own subprocess, so its peak RSS (`ru_maxrss`, taken when training ends, model
loading included) is its own. Tokens/s counts real (non-pad) tokens of the training examples,
times epochs, over the wall time of the `train()` call. The held-out loss of both adapters is
computed afterwards by one function, in float32, on a freshly loaded float32 base model: the
way the adapter is served. `--variant` runs ours with one lever removed, to measure what each
lever gives (see bench/RESULTS.md).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Running `python bench/train.py` puts bench/ (not the repository root) on sys.path.
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from services.shared.models import DEFAULT_MODEL_ID, ModelStore  # noqa: E402
from services.shared.settings import Settings  # noqa: E402

TARGET_SPEEDUP = 2.0
TARGET_MEMORY = 0.6
LORA = {"r": 16, "alpha": 32, "dropout": 0.05, "targets": ("q_proj", "k_proj", "v_proj", "o_proj")}
LEARNING_RATE = 2e-4
WARMUP_RATIO = 0.03
BATCH_SIZE = 8
VARIANTS = ("default", "fp32", "no-grouping", "full-logits", "one-microbatch", "all-linear")

# ---- the data -------------------------------------------------------------------------------

PRODUCTS = ["the mobile app", "the desktop client", "my router", "the thermostat", "the web dashboard",
            "the billing portal", "my earbuds", "the backup service", "the premium plan", "the printer",
            "the shared calendar", "the doorbell camera", "the password manager", "the VPN client"]
# Each problem has its own fix: what the adapter can learn, so the held-out loss means something.
PROBLEMS = {
    "keeps crashing when I open it": "Please update to the latest version, then clear the app cache under "
    "Settings, Storage. If it still crashes, send us the crash report from Help, Diagnostics.",
    "stopped syncing after the last update": "Open Settings, choose Sync, then Reset sync and confirm. "
    "Your data stays on our servers, so nothing is lost while it syncs again.",
    "charges me twice every month": "I can see the duplicate charge and have refunded it; the refund takes "
    "three to five business days. I also merged your two subscriptions so it will not happen again.",
    "will not connect to the network": "Please restart it, hold the reset button for ten seconds and set up "
    "the connection again from the app. Make sure it is on the 2.4 GHz band.",
    "logs me out every few minutes": "This happens when the session cookie is blocked. Allow cookies for our "
    "site, or sign out everywhere from Security and sign in again.",
    "refuses my password": "I have sent a reset link to the e-mail on your account. It is valid for one "
    "hour; after that, sign in with the new password on every device.",
    "shows the wrong time zone": "Go to Settings, Region, and switch off automatic time zone, pick yours "
    "from the list and switch it back on. The change applies at once.",
    "lost all of my saved settings": "Your settings are backed up every night. Open Settings, Backups, pick "
    "yesterday's copy and choose Restore; it takes about a minute.",
}
OPENINGS = ["Hello, I need some help.", "Hi there.", "Good morning,", "Hey support team,", "Hi,",
            "I'm getting frustrated.", "Quick question.", "Sorry to bother you again."]
DETAILS = ["It started {when} and nothing I try fixes it.", "I already restarted everything twice {when}.",
           "My colleague has the same setup and it works fine for her.",
           "The order number is #{order} if that helps.", "I have been a customer for {years} years.",
           "It only happens on the office network, not at home.", "I contacted you about this {when}."]
WHEN = ["yesterday", "last week", "this morning", "two days ago", "since Monday", "after the update"]
OPENERS = ["Thanks for reaching out, and sorry about the trouble with {product}.",
           "I'm sorry to hear that {product} {problem}.", "Thank you for the details, that helps a lot."]
CLOSINGS = ["Let me know if anything else comes up.", "Is there anything else I can help with?",
            "Thanks for your patience.", "Have a great day!"]
SYSTEM = "You are the support assistant of Acme Devices. Answer politely and precisely."


def generate_examples(count: int, seed: int = 0) -> list[list[dict[str, str]]]:
    """Support-desk chats of varied length (about 60 to 150 tokens with SmolLM2's template)."""
    rng = random.Random(seed)
    examples = []
    for _ in range(count):
        product, problem = rng.choice(PRODUCTS), rng.choice(list(PROBLEMS))
        fill = {"when": rng.choice(WHEN), "order": rng.randrange(10000, 99999), "years": rng.randrange(2, 15)}
        user = [rng.choice(OPENINGS), f"{product[0].upper()}{product[1:]} {problem}."]
        user += [d.format(**fill) for d in rng.sample(DETAILS, rng.randrange(0, 5))]
        answer = [rng.choice(OPENERS).format(product=product, problem=problem)] if rng.random() < 0.6 else []
        answer.append(PROBLEMS[problem])
        if rng.random() < 0.5:
            answer.append(rng.choice(CLOSINGS))
        messages = [{"role": "system", "content": SYSTEM}] if rng.random() < 0.5 else []
        messages += [{"role": "user", "content": " ".join(user)}, {"role": "assistant", "content": " ".join(answer)}]
        examples.append(messages)
    return examples


# ---- one run, in a child process ------------------------------------------------------------


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux


def heldout_loss(model, encoded) -> float:
    """Token-weighted mean loss on the assistant tokens, float32, one example at a time."""
    import torch

    model.eval()
    total, count = 0.0, 0
    with torch.inference_mode():
        for example in encoded:
            loss = model(input_ids=torch.tensor([example.input_ids]), labels=torch.tensor([example.labels])).loss
            total += loss.item() * example.n_targets
            count += example.n_targets
    return total / count


def load_base(model_dir: Path, dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, local_files_only=True, use_safetensors=True)
    return model, AutoTokenizer.from_pretrained(model_dir, local_files_only=True)


def run_baseline(model_dir: Path, train: list, valid: list, epochs: int, seed: int, work: Path) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

    from services.training.batching import encode_dataset

    model, tokenizer = load_base(model_dir, torch.float32)
    train_data, _ = encode_dataset(tokenizer, train, 2048)
    valid_data, _ = encode_dataset(tokenizer, valid, 2048)
    dataset = [{"input_ids": list(e.input_ids), "attention_mask": [1] * len(e), "labels": list(e.labels)}
               for e in train_data]
    torch.manual_seed(seed)
    model = get_peft_model(model, LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
                                             target_modules=list(LORA["targets"]), task_type="CAUSAL_LM"))
    arguments = TrainingArguments(
        output_dir=str(work / "baseline"), per_device_train_batch_size=BATCH_SIZE, num_train_epochs=epochs,
        learning_rate=LEARNING_RATE, warmup_steps=round(WARMUP_RATIO * epochs * -(-len(dataset) // BATCH_SIZE)),
        lr_scheduler_type="linear", logging_steps=10, save_strategy="no", eval_strategy="no", report_to=[],
        use_cpu=True, seed=seed, dataloader_num_workers=0, disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=arguments, train_dataset=dataset,
                      data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100))
    started, cpu = time.perf_counter(), time.process_time()
    output = trainer.train()
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu
    peak = peak_rss_mb()
    return {"seconds": seconds, "cpu_seconds": cpu_seconds, "tokens": epochs * sum(len(e) for e in train_data),
            "peak_rss_mb": peak, "train_loss": output.training_loss, "valid_loss": heldout_loss(model, valid_data)}


def apply_variant(variant: str, config_changes: dict) -> None:
    """Remove one lever from ours, to measure what it gives (bench-only patches)."""
    import torch

    import services.training.trainer as trainer_module

    if variant == "fp32":
        config_changes["bf16"] = False
    elif variant == "one-microbatch":
        config_changes["max_tokens_per_microbatch"] = 1 << 20
    elif variant == "all-linear":
        config_changes["target_modules"] = trainer_module.ALL_LINEAR
    elif variant == "no-grouping":
        def random_batches(lengths, batch_size, seed, epoch):
            order = list(range(len(lengths)))
            random.Random(seed * 1_000_003 + epoch).shuffle(order)
            return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]

        trainer_module.length_grouped_batches = random_batches
    elif variant == "full-logits":
        def full_logits_loss(peft_model, batch, bf16):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                logits = peft_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            logits, labels = logits[:, :-1].float(), batch["labels"][:, 1:]
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                                     reduction="sum")
            mask = labels != -100
            return loss, (logits.argmax(-1)[mask] == labels[mask]).sum(), int(mask.sum())

        trainer_module.labelled_loss = full_logits_loss


def run_ours(model_dir: Path, train: list, valid: list, epochs: int, seed: int, work: Path, variant: str) -> dict:
    import torch
    from peft import PeftModel

    from services.training.batching import encode_dataset
    from services.training.trainer import TrainConfig, Trainer

    changes: dict = {}
    apply_variant(variant, changes)
    config = TrainConfig(
        n_epochs=epochs, batch_size=BATCH_SIZE, learning_rate=LEARNING_RATE, lora_r=LORA["r"],
        lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"], target_modules=LORA["targets"], seed=seed,
        warmup_ratio=WARMUP_RATIO, **changes,
    )
    trainer = Trainer(config, lambda dtype: load_base(model_dir, dtype), train, valid,
                      output_dir=work / "ours", base_model_id=DEFAULT_MODEL_ID)
    trainer.setup()
    step_losses: list[float] = []
    started, cpu = time.perf_counter(), time.process_time()
    result = trainer.train(lambda event: step_losses.append(event["train_loss"]) if event["type"] == "step" else None)
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu
    peak = peak_rss_mb()
    train_tokens = epochs * sum(len(e) for e in trainer.train_data)
    trainer.cleanup()
    base, tokenizer = load_base(model_dir, torch.float32)
    valid_data, _ = encode_dataset(tokenizer, valid, 2048)
    served = PeftModel.from_pretrained(base, result.adapter_dir)
    return {"seconds": seconds, "cpu_seconds": cpu_seconds, "tokens": train_tokens, "peak_rss_mb": peak,
            "train_loss": sum(step_losses) / len(step_losses),
            "valid_loss": heldout_loss(served, valid_data), "bf16": trainer.config.bf16}


def child(args: argparse.Namespace) -> None:
    data = Path(args.data)
    train = json.loads((data / "train.json").read_text())
    valid = json.loads((data / "valid.json").read_text())
    model_dir = Path(args.model_dir)
    if args.child == "baseline":
        result = run_baseline(model_dir, train, valid, args.epochs, args.seed, data)
    else:
        result = run_ours(model_dir, train, valid, args.epochs, args.seed, data, args.variant)
    print("RESULT " + json.dumps(result), flush=True)


# ---- the parent: data, two children, the table ------------------------------------------------


def run_child(kind: str, args: argparse.Namespace, data: Path, model_dir: Path, variant: str = "default") -> dict:
    command = [sys.executable, __file__, "--child", kind, "--data", str(data), "--model-dir", str(model_dir),
               "--epochs", str(args.epochs), "--seed", str(args.seed), "--variant", variant]
    environment = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "TRANSFORMERS_VERBOSITY": "error",
                   "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    completed = subprocess.run(command, capture_output=True, text=True, env=environment, cwd=ROOT)
    lines = [line for line in completed.stdout.splitlines() if line.startswith("RESULT ")]
    if completed.returncode != 0 or not lines:
        sys.stderr.write(completed.stdout[-4000:] + completed.stderr[-4000:])
        raise SystemExit(f"the {kind} run failed (exit {completed.returncode})")
    return json.loads(lines[-1][len("RESULT "):])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=300, help="generated chats, 10%% held out (default 300)")
    parser.add_argument("--epochs", type=int, default=1, help="epochs of each run (default 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variant", choices=VARIANTS, default="default",
                        help="run ours with one lever removed (default: all levers)")
    parser.add_argument("--skip-baseline", action="store_true", help="run only ours (for lever measurements)")
    parser.add_argument("--child", choices=("baseline", "ours"), help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    model_dir = ModelStore(Settings()).ensure(DEFAULT_MODEL_ID)
    examples = generate_examples(args.examples, args.seed)
    held_out = max(1, args.examples // 10)
    with tempfile.TemporaryDirectory(prefix="tuneloop-bench-train-") as tmp:
        data = Path(tmp)
        (data / "train.json").write_text(json.dumps(examples[held_out:]))
        (data / "valid.json").write_text(json.dumps(examples[:held_out]))
        print(f"{args.examples} examples ({args.examples - held_out} train, {held_out} held out), "
              f"{args.epochs} epoch(s), batch {BATCH_SIZE}, LoRA r{LORA['r']} on {'/'.join(LORA['targets'])}",
              flush=True)
        results = {}
        if not args.skip_baseline:
            results["HF Trainer + PEFT (baseline)"] = run_child("baseline", args, data, model_dir)
        name = "tuneloop trainer" + ("" if args.variant == "default" else f" ({args.variant})")
        results[name] = run_child("ours", args, data, model_dir, args.variant)

    print("\n| run | tokens | train s | tokens/s | tokens/CPU-s | peak RSS MB | train loss | held-out loss |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, r in results.items():
        print(f"| {name} | {r['tokens']} | {r['seconds']:.1f} | {r['tokens'] / r['seconds']:.0f} | "
              f"{r['tokens'] / r['cpu_seconds']:.0f} | {r['peak_rss_mb']:.0f} | {r['train_loss']:.4f} | "
              f"{r['valid_loss']:.4f} |")
    if len(results) == 2:
        base, ours = results.values()
        speedup = (ours["tokens"] / ours["seconds"]) / (base["tokens"] / base["seconds"])
        memory = ours["peak_rss_mb"] / base["peak_rss_mb"]
        print(f"\ntokens/s: {speedup:.2f}x the baseline (target >= {TARGET_SPEEDUP}x); "
              f"peak RSS: {memory:.2f}x (target <= {TARGET_MEMORY}x); held-out loss: "
              f"{ours['valid_loss']:.4f} vs {base['valid_loss']:.4f} (target: no worse)")
        met = speedup >= TARGET_SPEEDUP and memory <= TARGET_MEMORY and ours["valid_loss"] <= base["valid_loss"]
        print("OK: all targets met" if met else "NOT MET: see above")


if __name__ == "__main__":
    main()
