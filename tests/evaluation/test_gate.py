"""The gate's rules, each with its measured value, and side-by-side runs judged by it.

The side-by-side tests answer from fixed tables (a function of model and prompt): what is under
test is the scoring and the verdict, not a model; tests/evaluation/test_real_models.py runs real ones.
"""

from __future__ import annotations

import asyncio

import pytest
from pydantic import ValidationError

from services.evaluation.gate import GatePolicy, Measured, decide
from services.evaluation.side_by_side import Example, general_probe, run_side_by_side

POLICY = GatePolicy()


def _measured(**changes) -> Measured:
    fields = dict(examples=40, baseline=0.4, candidate=0.6, gain_low=0.1, gain_high=0.3, baseline_general=0.9,
                  candidate_general=0.89, slices=(("billing", 20, 0.4, 0.6), ("legal", 20, 0.4, 0.6)))
    fields.update(changes)
    return Measured(**fields)


def _failed(verdict) -> list[str]:
    return [rule.name for rule in verdict.rules if not rule.passed]


def test_a_clear_gain_passes_every_rule_and_each_rule_shows_what_it_measured():
    verdict = decide(POLICY, _measured())
    assert verdict.passed and _failed(verdict) == []
    names = [rule.name for rule in verdict.rules]
    assert names == ["min_examples", "primary_metric", "min_gain", "significant", "forgetting", "slice:billing",
                     "slice:legal"]
    primary = verdict.rules[1]
    assert primary.measured == 0.6 and primary.threshold == pytest.approx(0.48)
    assert verdict.to_dict()["rules"][1]["detail"].startswith("exact_match 0.600 vs baseline 0.400")


@pytest.mark.parametrize(
    ("changes", "failing"),
    [
        ({"candidate": 0.46, "gain_low": 0.01}, ["primary_metric"]),  # 0.46 < 0.4 x 1.2
        ({"baseline": 0.0, "candidate": 0.02, "gain_low": 0.0}, ["min_gain", "significant"]),  # anything beats 0 x 1.2
        ({"gain_low": -0.05}, ["significant"]),
        ({"examples": 12}, ["min_examples"]),
        ({"candidate_general": 0.85}, ["forgetting"]),  # 5 points of general behaviour lost
        ({"candidate_general": None}, ["forgetting"]),  # not measured is not passed
        ({"slices": (("billing", 20, 0.2, 0.9), ("legal", 20, 0.6, 0.3))}, ["slice:legal"]),
    ],
)
def test_each_rule_fails_on_its_own(changes, failing):
    verdict = decide(POLICY, _measured(**changes))
    assert not verdict.passed and _failed(verdict) == failing
    assert verdict.reason == "; ".join(rule.detail for rule in verdict.rules if not rule.passed)


def test_the_policy_is_configurable_and_checked():
    lenient = GatePolicy(min_ratio=1.0, min_gain=0, require_significance=False, max_forgetting_drop=0.1)
    assert decide(lenient, _measured(candidate=0.4, gain_low=-0.1, candidate_general=0.85)).passed
    assert "significant" not in [rule.name for rule in decide(lenient, _measured()).rules]
    with pytest.raises(ValidationError, match="unknown metric 'accuracyy'"):
        GatePolicy(primary_metric="accuracyy")
    with pytest.raises(ValidationError):
        GatePolicy(min_ratio=-1)
    with pytest.raises(ValidationError):
        GatePolicy(unknown_rule=1)


# ---- side-by-side runs --------------------------------------------------------------------------

QUESTIONS = [(f"Which team handles {topic} ticket {i}?", team, slice_)
             for i in range(12)
             for topic, team, slice_ in (("an invoice", "billing", "billing"), ("a contract", "legal", "legal"))]
EXAMPLES = [Example((("user", question),), team, slice_) for question, team, slice_ in QUESTIONS]
GENERAL = ["What is 2 plus 2?", "Name a colour.", "What is the capital of Chile?"]


def _answers(table: dict[str, dict[str, str]], calls: list | None = None):
    async def answer(model: str, chat: list[dict[str, str]]) -> str:
        if calls is not None:
            calls.append(model)
        await asyncio.sleep(0)
        prompt = chat[-1]["content"]
        return table[model].get(prompt, table[model].get("*", ""))
    return answer


BASE = {"*": "I am not sure.", "What is 2 plus 2?": "4", "Name a colour.": "Blue.",
        "What is the capital of Chile?": "Santiago."}


def _run(table, **kwargs):
    return asyncio.run(run_side_by_side(EXAMPLES, base="base", production=kwargs.pop("production", "base"),
                                        candidate="candidate", answer=_answers(table, kwargs.pop("calls", None)),
                                        metrics=["exact_match", "token_f1", "bleu", "rougeL"], policy=POLICY,
                                        general_prompts=GENERAL, **kwargs))


def test_a_candidate_that_learned_the_domain_and_kept_its_general_answers_passes():
    candidate = {**BASE, **{q: team for q, team, _ in QUESTIONS}}
    calls: list[str] = []
    progress: list[tuple[int, int]] = []
    result = _run({"base": BASE, "candidate": candidate}, calls=calls,
                  progress=lambda done, total: progress.append((done, total)))
    assert result.verdict.passed, result.verdict.reason
    assert result.scores["candidate"]["exact_match"].value == 1.0 and result.scores["base"]["exact_match"].value == 0
    assert result.general == {"base": 1.0, "candidate": 1.0}
    # the base model is production too: asked once per prompt, not twice
    assert calls.count("base") == len(EXAMPLES) + len(GENERAL) and calls.count("candidate") == calls.count("base")
    assert progress[-1] == (2 * (len(EXAMPLES) + len(GENERAL)),) * 2
    report = result.to_dict()
    assert report["examples"][0]["answers"] == {"base": "I am not sure.", "candidate": "billing"}
    assert report["examples"][0]["scores"]["candidate"]["exact_match"] == 1.0
    assert report["metrics"]["candidate"]["rougeL"]["value"] == 1.0  # (corpus BLEU of one-word answers is 0)
    assert report["verdict"]["passed"] is True and report["slices"]["legal"] == {"base": 0.0, "candidate": 1.0}


def test_a_candidate_better_overall_but_worse_on_a_slice_is_rejected_naming_the_slice():
    production = {**BASE, **{q: team for q, team, s in QUESTIONS if s == "legal"}}  # 12 of 24
    candidate = {**BASE, **{q: team for q, team, s in QUESTIONS if s == "billing"},  # 22 of 24, but 10 of 12 legal
                 **{q: team for q, team, s in QUESTIONS if s == "legal" and not q.endswith((" 0?", " 1?"))}}
    result = _run({"base": BASE, "production": production, "candidate": candidate}, production="production")
    assert result.scores["candidate"]["exact_match"].value > result.scores["production"]["exact_match"].value
    assert not result.verdict.passed
    assert [rule.name for rule in result.verdict.rules if not rule.passed] == ["slice:legal"]
    assert "slice 'legal'" in result.verdict.reason


def test_a_candidate_that_forgot_its_general_answers_is_rejected_for_forgetting():
    candidate = {q: team for q, team, _ in QUESTIONS} | {"*": "billing"}  # says "billing" to everything
    result = _run({"base": BASE, "candidate": candidate})
    assert result.scores["candidate"]["exact_match"].value == 1.0
    assert result.general["candidate"] == 0.0
    assert [rule.name for rule in result.verdict.rules if not rule.passed] == ["forgetting"]
    assert "general answers agree 0.000 vs baseline 1.000" in result.verdict.reason


def test_the_general_probe_ships_and_shares_no_prompt_with_the_replay_set():
    from services.training.replay import general_prompts

    probe = general_probe()
    assert len(probe) >= 30 and not set(probe) & set(general_prompts())


@pytest.mark.parametrize(
    ("reply", "grade"),
    [
        ('{"correct": true, "helpful": 4, "would_trust": false}', {"correct": True, "helpful": 4.0, "would_trust": False}),
        ('Sure! {"correct": false, "helpful": 1, "would_trust": false} Hope that helps.',
         {"correct": False, "helpful": 1.0, "would_trust": False}),
        ("I think it is correct.", None),
        ('{"correct": "yes", "helpful": 4, "would_trust": true}', None),
        ('{"correct": true, "helpful": 9, "would_trust": true}', None),
        ('{"correct": true, "helpful": 4}', None),
        ("{not json}", None),
    ],
)
def test_a_judges_reply_is_read_only_when_it_is_the_asked_for_object(reply, grade):
    from services.evaluation.judge import parse_grade, summarise_grades

    assert parse_grade(reply) == grade
    assert summarise_grades([parse_grade(reply)])["unparsed"] == (grade is None)


def test_the_fix_rate_counts_the_corrected_prompts_each_model_now_answers_as_corrected():
    corrected = [Example((("user", f"Which team handles refund {i}?"),), "billing", corrected=True) for i in range(4)]
    examples = [*EXAMPLES, *corrected]
    candidate = {**BASE, **{q: team for q, team, _ in QUESTIONS}, "Which team handles refund 0?": "billing",
                 "Which team handles refund 1?": "billing", "Which team handles refund 2?": "billing"}
    result = asyncio.run(run_side_by_side(examples, base="base", production="base", candidate="candidate",
                                          answer=_answers({"base": BASE, "candidate": candidate}),
                                          metrics=["exact_match"], policy=POLICY, general_prompts=GENERAL))
    assert result.fix_rate() == {"corrected": 4, "base": 0.0, "candidate": 0.75}
    report = result.to_dict()
    assert report["fix_rate"]["candidate"] == 0.75 and report["examples"][-1]["corrected"] is True
    assert _run({"base": BASE, "candidate": candidate}).to_dict()["fix_rate"] is None  # no corrected prompts
    assert Example.from_chat({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
                              "corrected": True}).corrected
