"""Human evaluation: a blind sample for domain experts, and their ratings back.

The export holds, per sampled example, the prompt, the reference and two answers labelled only A
and B: production's and the candidate's, in an order drawn per item, so a rater cannot tell which
model wrote which. The key (which model each letter is) stays in the service. Each answer gets the
seed's three questions: is it correct (yes/no), how helpful (1-5), would you trust it (yes/no);
each item a preference (A, B or tie) and a comment. Blank means not rated.

On import every row is checked against the key (unknown or repeated items, values out of range are
refused, naming the line and column, and nothing is stored), then summarised per model beside the
automatic primary metric on the same items, with how often that metric agrees with the experts'
"correct" (the metric's answer being right means a per-example score of 1).
"""

from __future__ import annotations

import csv
import io
import json
import random
import secrets
from typing import Any

from services.shared.errors import InvalidArgument

LETTERS = ("A", "B")
QUESTIONS = ("correct", "helpful", "would_trust")
CSV_COLUMNS = ("item", "prompt", "reference", "answer_A", "answer_B",
               *(f"{question}_{letter}" for letter in LETTERS for question in QUESTIONS), "preferred", "comment")


def export(report: dict[str, Any], *, size: int, seed: int, fmt: str) -> tuple[dict[str, dict[str, Any]], bytes]:
    """(the key: item id -> {"example": index, "A": model, "B": model}, the file's bytes)."""
    models = report["models"]
    pair = [models["production"], models["candidate"]]
    rng = random.Random(seed)
    examples = report["examples"]
    picked = sorted(rng.sample(range(len(examples)), min(size, len(examples))))
    key: dict[str, dict[str, Any]] = {}
    rows = []
    for index in picked:
        example = examples[index]
        order = pair[:]
        rng.shuffle(order)
        item = f"item-{secrets.token_hex(4)}"
        key[item] = {"example": index, **dict(zip(LETTERS, order, strict=True))}
        prompt = example["messages"][-1]["content"] if example["messages"] else ""
        rows.append({"item": item, "prompt": prompt, "reference": example["reference"],
                     "answers": {letter: example["answers"][model] for letter, model in zip(LETTERS, order, strict=True)}})
    if fmt == "jsonl":
        blank = {letter: dict.fromkeys(QUESTIONS) for letter in LETTERS}
        content = "".join(json.dumps({**row, "ratings": blank, "preferred": None, "comment": ""}, ensure_ascii=False)
                          + "\n" for row in rows)
        return key, content.encode()
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS)
    writer.writeheader()
    for row in rows:
        writer.writerow({"item": row["item"], "prompt": row["prompt"], "reference": row["reference"],
                         **{f"answer_{letter}": text for letter, text in row["answers"].items()}})
    return key, buffer.getvalue().encode()


def parse_ratings(content: bytes, fmt: str, key: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """item id -> {"A": {question: value}, "B": {...}, "preferred": letter or "tie" or None, "comment": str},
    for the rows with at least one rating."""
    try:
        text = content.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InvalidArgument("the ratings file is not UTF-8 text", param="content") from None
    rows = _jsonl_rows(text) if fmt == "jsonl" else _csv_rows(text)
    ratings: dict[str, dict[str, Any]] = {}
    seen: set[str] = set()
    for line, row in rows:
        item = row.get("item")
        if item not in key:
            raise InvalidArgument(f"line {line}: item {item!r} is not in this review", param="content")
        if item in seen:
            raise InvalidArgument(f"line {line}: item {item} appears twice", param="content")
        seen.add(item)
        parsed: dict[str, Any] = {"comment": str(row.get("comment") or "")}
        for letter in LETTERS:
            parsed[letter] = {question: _value(question, row["ratings"][letter].get(question), line, letter)
                              for question in QUESTIONS}
        preferred = row.get("preferred")
        preferred = None if preferred in (None, "") else str(preferred).strip()
        if preferred is not None and preferred not in (*LETTERS, "tie"):
            raise InvalidArgument(f"line {line}, preferred: {preferred!r} is not A, B or tie", param="content")
        parsed["preferred"] = preferred
        rated = preferred is not None or any(v is not None for letter in LETTERS for v in parsed[letter].values())
        if rated:
            ratings[item] = parsed
    return ratings


def summarise(ratings: dict[str, dict[str, Any]], key: dict[str, dict[str, Any]], report: dict[str, Any]) -> dict:
    """Per model: what the experts said, beside the automatic primary metric on the same items."""
    primary = report["policy"]["primary_metric"]
    models = list(dict.fromkeys([report["models"]["production"], report["models"]["candidate"]]))
    summary: dict[str, Any] = {"rated": len(ratings), "primary_metric": primary, "models": {}}
    for model in models:
        answers = [(item, letter) for item in ratings for letter in LETTERS if key[item][letter] == model]
        values = {question: [ratings[item][letter][question] for item, letter in answers
                             if ratings[item][letter][question] is not None] for question in QUESTIONS}
        preferences = [ratings[item]["preferred"] for item in ratings if ratings[item]["preferred"] is not None]
        wins = sum(1 for item in ratings if ratings[item]["preferred"] in LETTERS
                   and key[item][ratings[item]["preferred"]] == model)
        ties = preferences.count("tie")
        automatic = [report["examples"][key[item]["example"]]["scores"][model][primary] for item, _ in answers]
        judged = [(ratings[item][letter]["correct"], report["examples"][key[item]["example"]]["scores"][model][primary])
                  for item, letter in answers if ratings[item][letter]["correct"] is not None]
        graded = [(ratings[item][letter]["correct"],
                   (report["examples"][key[item]["example"]].get("judge") or {}).get(model))
                  for item, letter in answers if ratings[item][letter]["correct"] is not None]
        summary["models"][model] = {
            "answers_rated": len(answers),
            "correct": _mean(values["correct"]),
            "helpful": _mean(values["helpful"]),
            "would_trust": _mean(values["would_trust"]),
            "preferred": (wins + ties / 2) / len(preferences) if preferences else None,
            primary: _mean(automatic),
            "metric_agrees_with_correct": _mean([float((score >= 1.0) == correct) for correct, score in judged]),
            # Where a judge graded these answers: how often it said "correct" when the experts did.
            "judge_agrees_with_correct": _mean([float(grade["correct"] == correct) for correct, grade in graded
                                                if grade is not None]),
        }
    return summary


def _mean(values: list) -> float | None:
    return sum(float(v) for v in values) / len(values) if values else None


def _value(question: str, raw: Any, line: int, letter: str) -> float | bool | None:
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return None
    where = f"line {line}, {question}_{letter}"
    if question == "helpful":
        try:
            value = float(raw)
        except (TypeError, ValueError):
            raise InvalidArgument(f"{where}: {raw!r} is not a number from 1 to 5", param="content") from None
        if not 1 <= value <= 5:
            raise InvalidArgument(f"{where}: {raw!r} is not a number from 1 to 5", param="content")
        return value
    if isinstance(raw, bool):
        return raw
    answer = str(raw).strip().lower()
    if answer in ("yes", "y", "true", "1"):
        return True
    if answer in ("no", "n", "false", "0"):
        return False
    raise InvalidArgument(f"{where}: {raw!r} is not yes or no", param="content")


def _csv_rows(text: str) -> list[tuple[int, dict[str, Any]]]:
    reader = csv.DictReader(io.StringIO(text))
    missing = [column for column in ("item", *(f"{q}_{letter}" for letter in LETTERS for q in QUESTIONS), "preferred")
               if column not in (reader.fieldnames or [])]
    if missing:
        raise InvalidArgument(f"line 1: the header lacks {', '.join(missing)}", param="content")
    rows = []
    for row in reader:
        rows.append((reader.line_num, {
            "item": row["item"], "preferred": row.get("preferred"), "comment": row.get("comment"),
            "ratings": {letter: {q: row.get(f"{q}_{letter}") for q in QUESTIONS} for letter in LETTERS}}))
    return rows


def _jsonl_rows(text: str) -> list[tuple[int, dict[str, Any]]]:
    rows = []
    for line, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
            ratings = row.get("ratings") or {}
            row["ratings"] = {letter: dict(ratings.get(letter) or {}) for letter in LETTERS}
        except (ValueError, AttributeError, TypeError):
            raise InvalidArgument(f"line {line}: not a JSON object with item and ratings", param="content") from None
        rows.append((line, row))
    return rows
