"""`tuneloop eval ...`: side-by-side evaluations and the gate's verdict, from the command line."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from tuneloop.api import Api
from tuneloop.cli_options import KeyOption, UrlOption, gateway

app = typer.Typer(help="Evaluations: does a candidate beat production on held-out data?", no_args_is_help=True)
console = Console()

POLL_S = 0.5


@app.command("run")
def run(
    candidate: Annotated[str, typer.Argument(help="The model version under test")],
    file: Annotated[Path | None, typer.Option(exists=True, dir_okay=False, readable=True,
                                              help="Held-out chat examples (JSONL); the last message is the reference")] = None,
    dataset: Annotated[str | None, typer.Option(help="A prepared dataset: its validation split is used")] = None,
    baseline: Annotated[str, typer.Option(help="What to beat [default: the deployment's production version, "
                                               "else the base model]")] = "",
    deployment: Annotated[str, typer.Option(help="The deployment the candidate is for")] = "",
    metric: Annotated[list[str] | None, typer.Option(help="A metric to compute (repeat); default: all text metrics")] = None,
    judge: Annotated[bool, typer.Option(help="Have the configured judge model grade the answers")] = False,
    wait: Annotated[bool, typer.Option(help="Wait for the verdict, with a progress bar")] = True,
    url: UrlOption = None,
    api_key: KeyOption = None,
) -> None:
    """Evaluate CANDIDATE side by side with its baseline and the base model, and print the verdict."""
    if (file is None) == (dataset is None):
        console.print("[red]give exactly one of --file and --dataset[/red]")
        raise typer.Exit(2)
    with gateway(console, url, api_key) as api:
        body = {"candidate": candidate, "baseline": baseline, "deployment": deployment, "metrics": metric or [],
                "judge": judge}
        if file is not None:
            with console.status(f"uploading {file.name}"):
                body["file_id"] = api.upload(file)["id"]
        else:
            body["dataset_id"] = dataset
        evaluation = api.post("/v1/evaluations", json=body)
        console.print(f"evaluation [bold]{evaluation['id']}[/bold] {evaluation['status']}")
        if wait:
            evaluation = _wait(api, evaluation["id"])
            _show(evaluation, api.get(f"/v1/evaluations/{evaluation['id']}/examples")["data"], examples=3)
    if wait and not (evaluation.get("verdict") or {}).get("passed"):
        raise typer.Exit(1)


def _wait(api: Api, evaluation_id: str) -> dict:
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("answers", total=None)
        while True:
            evaluation = api.get(f"/v1/evaluations/{evaluation_id}")
            done, total = evaluation["progress"]["done"], evaluation["progress"]["total"]
            progress.update(task, completed=done, total=total or None, description=evaluation["status"])
            if evaluation["status"] in ("completed", "failed"):
                return evaluation
            time.sleep(POLL_S)


@app.command("show")
def show(evaluation_id: str, examples: Annotated[int, typer.Option(help="Examples to print side by side")] = 5,
         url: UrlOption = None, api_key: KeyOption = None) -> None:
    """An evaluation: metrics side by side, the verdict's rules, and a few examples."""
    with gateway(console, url, api_key) as api:
        evaluation = api.get(f"/v1/evaluations/{evaluation_id}")
        rows = api.get(f"/v1/evaluations/{evaluation_id}/examples")["data"] if evaluation["metrics"] else []
    _show(evaluation, rows, examples=examples)


@app.command("list")
def list_evaluations(url: UrlOption = None, api_key: KeyOption = None) -> None:
    """The latest evaluations."""
    with gateway(console, url, api_key) as api:
        data = api.get("/v1/evaluations")["data"]
    table = Table("id", "status", "candidate", "baseline", "deployment", "verdict")
    for evaluation in data:
        verdict = evaluation["verdict"]
        table.add_row(evaluation["id"], evaluation["status"], evaluation["candidate"], evaluation["baseline"] or "-",
                      evaluation["deployment"] or "-", "-" if verdict is None else "passed" if verdict["passed"] else "failed")
    console.print(table)


@app.command("export")
def export(
    evaluation_id: str,
    out: Annotated[Path, typer.Option(dir_okay=False, help="Where to write the file for the experts")],
    size: Annotated[int, typer.Option(help="Examples to sample (1-500)")] = 50,
    fmt: Annotated[str, typer.Option("--format", help="csv or jsonl")] = "csv",
    seed: int = 0,
    url: UrlOption = None,
    api_key: KeyOption = None,
) -> None:
    """Write a blind human review of EVALUATION_ID: answers shuffled and unlabelled, columns to rate."""
    with gateway(console, url, api_key) as api:
        review = api.post(f"/v1/evaluations/{evaluation_id}/human_reviews",
                          json={"size": size, "format": fmt, "seed": seed})
    out.write_text(review["content"], encoding="utf-8")
    console.print(f"review [bold]{review['id']}[/bold]: {review['items']} items written to {out}; fill in correct, "
                  f"helpful (1-5), would_trust and preferred, then: tuneloop eval import {evaluation_id} "
                  f"{review['id']} {out}")


@app.command("import")
def import_ratings(
    evaluation_id: str,
    review_id: str,
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True, help="The rated file")],
    url: UrlOption = None,
    api_key: KeyOption = None,
) -> None:
    """Send the experts' ratings of REVIEW_ID and print them per model beside the automatic metric."""
    with gateway(console, url, api_key) as api, open(file, "rb") as handle:
        result = api.post(f"/v1/evaluations/{evaluation_id}/human_reviews/{review_id}/ratings",
                          files={"file": (file.name, handle)})
    _show_human(result["summary"])


def _show_human(summary: dict) -> None:
    metric = summary["primary_metric"]
    table = Table("model", "answers rated", "correct", "helpful (1-5)", "would trust", "preferred", metric,
                  f"{metric} agrees with experts", title=f"human review: {int(summary['rated'])} items rated")

    for model, scores in summary["models"].items():
        table.add_row(model, str(int(scores["answers_rated"])), _cell(scores["correct"]), _cell(scores["helpful"]),
                      _cell(scores["would_trust"]), _cell(scores["preferred"]), _cell(scores[metric]),
                      _cell(scores["metric_agrees_with_correct"]))
    console.print(table)


def _cell(value) -> str:
    return "-" if value is None else f"{value:.2f}"


def _show(evaluation: dict, rows: list[dict], *, examples: int) -> None:
    console.print(f"[bold]{evaluation['id']}[/bold]: {evaluation['candidate']} vs {evaluation['baseline'] or '-'} "
                  f"(base {evaluation['base_model'] or '-'}) - {evaluation['status']}")
    if evaluation["status"] == "failed":
        console.print(f"[red]{evaluation['error']['code']}: {evaluation['error']['message']}[/red]")
        return
    if not evaluation["metrics"]:
        return
    models = list(dict.fromkeys([evaluation["base_model"], evaluation["baseline"], evaluation["candidate"]]))
    table = Table("metric", *models, title="held-out examples (95% interval)")
    names = next(iter(evaluation["metrics"].values()))
    for name in names:
        table.add_row(name, *(f"{evaluation['metrics'][m][name]:.3f} [{evaluation['intervals'][m][name][0]:.3f}, "
                              f"{evaluation['intervals'][m][name][1]:.3f}]" for m in models))
    if evaluation["general"]:
        table.add_row("general (agreement with base)", *(f"{evaluation['general'][m]:.3f}" for m in models))
    if evaluation.get("fix_rate"):
        fixes = evaluation["fix_rate"]
        table.add_row(f"fix rate ({int(fixes['corrected'])} corrected prompts)", *(_cell(fixes[m]) for m in models))
    if evaluation.get("perplexity"):
        table.add_row("perplexity (references)", *(_cell(evaluation["perplexity"][m]["perplexity"]) for m in models))
    for question in ("correct", "helpful", "would_trust"):
        if evaluation.get("judge"):
            table.add_row(f"judge: {question}", *(_cell((evaluation["judge"].get(m) or {}).get(question)) for m in models))
    for name, scores in (evaluation["slices"] or {}).items():
        table.add_row(f"slice {name}", *(f"{scores[m]:.3f}" for m in models))
    console.print(table)
    verdict = evaluation["verdict"]
    rules = Table("rule", "result", "detail", title="verdict: " + ("[green]passed[/green]" if verdict["passed"]
                                                                  else "[red]failed[/red]"))
    for rule in verdict["rules"]:
        rules.add_row(rule["name"], "[green]pass[/green]" if rule["passed"] else "[red]FAIL[/red]", rule["detail"])
    console.print(rules)
    cost = evaluation.get("cost")
    if cost:
        training = cost.get("training") or {}
        spent = (f"training cost ${training['cost_usd']:.2f} ({int(training['trained_tokens'])} tokens)"
                 if "cost_usd" in training else "training cost unknown")
        serving = ", ".join(f"{model} ${usage['cost_per_1k_tokens']:.4f}/1K tokens"
                            for model, usage in (cost.get("serving") or {}).items()
                            if isinstance(usage, dict) and usage.get("cost_per_1k_tokens") is not None)
        console.print(f"worth: {cost['primary_metric']} {cost['gain']:+.3f} for {spent}; serving {serving or 'unknown'}")
    if evaluation.get("human"):
        _show_human(evaluation["human"])
    if rows and examples:
        side = Table("prompt", "reference", *models, title=f"{min(examples, len(rows))} of {len(rows)} examples")
        for row in rows[:examples]:
            side.add_row(row["messages"][-1]["content"], row["reference"], *(row["answers"][m] for m in models))
        console.print(side)
