"""Composing a retraining set: the newest correction of a prompt wins, corrections replace thumbs-up
answers and replayed examples of their prompt, and the replay sample is seeded and sized by the ratio."""

from __future__ import annotations

import json

import pytest

from services.dataprep.retrain_set import CORRECTION, POSITIVE, FeedbackExample, compose, keep_valid


def ask(question: str) -> tuple[dict[str, str], ...]:
    return ({"role": "system", "content": "You are the support desk."}, {"role": "user", "content": question})


def correction(feedback_id: str, question: str, answer: str) -> FeedbackExample:
    return FeedbackExample(feedback_id=feedback_id, kind=CORRECTION, prompt=ask(question), answer=answer)


def positive(feedback_id: str, question: str, answer: str) -> FeedbackExample:
    return FeedbackExample(feedback_id=feedback_id, kind=POSITIVE, prompt=ask(question), answer=answer)


def parent_line(question: str, answer: str, **extra) -> str:
    return json.dumps({"messages": [*ask(question), {"role": "assistant", "content": answer}], **extra})


PARENT = [parent_line(f"Old question {i}?", f"Old answer {i}.") for i in range(50)]


def test_the_newest_correction_of_a_prompt_wins_and_the_older_is_reported():
    built = compose([correction("fb-1", "How long is the refund window?", "14 days."),
                     correction("fb-2", "Do you ship to Norway?", "Yes."),
                     correction("fb-3", "how long is the  REFUND window?", "30 days from delivery.")],
                    [], replay_ratio=1.0, seed=0)
    records = [json.loads(line) for line in built.lines]
    assert [(r["messages"][-1]["content"], r["corrected"]) for r in records] == [("Yes.", True),
                                                                                  ("30 days from delivery.", True)]
    assert records[1]["messages"][:-1] == list(ask("how long is the  REFUND window?"))
    assert built.summary["corrections"] == 2
    assert (built.summary["superseded_corrections"], built.summary["superseded"]) == (1, ["fb-1"])


def test_positives_are_plain_chats_unless_a_correction_has_their_prompt():
    built = compose([positive("fb-1", "Do you ship to Norway?", "We do not."),
                     positive("fb-2", "What are your opening hours?", "9 to 5."),
                     correction("fb-3", "Do you ship to Norway?", "Yes, in five days.")],
                    [], replay_ratio=0.0, seed=0)
    records = [json.loads(line) for line in built.lines]
    assert records == [
        {"messages": [*ask("Do you ship to Norway?"), {"role": "assistant", "content": "Yes, in five days."}],
         "corrected": True},
        {"messages": [*ask("What are your opening hours?"), {"role": "assistant", "content": "9 to 5."}]},
    ]
    assert (built.summary["positives"], built.summary["positives_replaced_by_corrections"]) == (1, 1)


def test_replay_is_a_seeded_sample_of_the_parent_sized_by_the_ratio_without_corrected_prompts():
    parent = [*PARENT, parent_line("Do you ship to Norway?", "No."),
              parent_line("Old correction?", "Old fix.", corrected=True)]
    batch = [correction(f"fb-{i}", f"New question {i}?", f"New answer {i}.") for i in range(4)]
    batch.append(correction("fb-9", "Do you ship to Norway?", "Yes."))

    built = compose(batch, [line.encode() for line in parent], replay_ratio=1.5, seed=7)
    again = compose(batch, parent, replay_ratio=1.5, seed=7)
    others = {tuple(compose(batch, parent, replay_ratio=1.5, seed=seed).lines) for seed in range(5)}

    replay = [json.loads(line) for line in built.lines[5:]]
    assert len(replay) == round(1.5 * 5) == built.summary["replay"]
    assert built.lines == again.lines and len(others) > 1
    assert all(record["messages"][-1]["content"] != "No." for record in replay)
    assert all("corrected" not in record for record in replay)  # an earlier round's fix is plain replay now
    assert (built.summary["replay_available"], built.summary["replay_replaced_by_corrections"]) == (51, 1)


def test_replay_takes_every_example_when_the_parent_has_fewer_than_wanted():
    batch = [correction(f"fb-{i}", f"New question {i}?", f"New answer {i}.") for i in range(10)]
    built = compose(batch, PARENT[:3], replay_ratio=1.0, seed=0)
    assert built.lines[10:] == [json.dumps(json.loads(line), sort_keys=True) for line in PARENT[:3]]


@pytest.fixture(scope="module")
def counter(tiny_model_dir):
    from transformers import AutoTokenizer

    from services.dataprep.validation import TokenCounter

    return TokenCounter(AutoTokenizer.from_pretrained(tiny_model_dir), max_tokens=256)


def test_lines_the_pipeline_would_refuse_are_left_out_and_listed(counter):
    built = compose([correction("fb-1", "Fine question?", "Fine answer."),
                     correction("fb-2", "Long question?", "word " * 400),
                     correction("fb-3", "Empty answer?", " ")], [], replay_ratio=0, seed=0)
    kept, problems = keep_valid(built.lines, counter)
    assert kept == built.lines[:1]
    assert [problem["code"] for problem in problems] == ["too_many_tokens", "missing_content"]
