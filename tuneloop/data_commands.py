"""`tuneloop data ...`: prepare a dataset from a local file and show its report."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from tuneloop.api import Api, ApiError

app = typer.Typer(help="Prepare training data: validate, clean, anonymise, split, report.", no_args_is_help=True)
console = Console()

UrlOption = Annotated[str | None, typer.Option(help="The gateway [default: $TUNELOOP_URL or http://127.0.0.1:8000]")]
KeyOption = Annotated[str | None, typer.Option("--api-key", help="API key [default: $TUNELOOP_API_KEY]")]


def _count_lines(path: Path) -> int:
    with open(path, "rb") as handle:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: handle.read(1 << 20), b"")) or 1


@app.command("prepare")
def prepare(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True, help="JSONL, JSON or CSV file")],
    format: Annotated[str | None, typer.Option(help="chat, alpaca, preference or csv [default: detected]")] = None,
    validation_fraction: Annotated[float | None, typer.Option(help="Share held out for validation [default: 0.1]")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the split and review sample")] = 0,
    drop_invalid: Annotated[bool, typer.Option(help="Keep the valid lines instead of rejecting the file")] = False,
    anonymize_pii: Annotated[bool, typer.Option(help="Replace personal data by placeholders")] = True,
    base_model: Annotated[str | None, typer.Option(help="Whose tokenizer and context length apply")] = None,
    url: UrlOption = None,
    api_key: KeyOption = None,
) -> None:
    """Upload FILE, prepare it as a dataset, and print the report."""
    try:
        api = Api(url, api_key)
        with console.status(f"uploading {file.name}"):
            uploaded = api.upload(file)
        body = {"file_id": uploaded["id"], "seed": seed, "drop_invalid": drop_invalid, "anonymize_pii": anonymize_pii}
        for name, value in (("format", format), ("validation_fraction", validation_fraction), ("base_model", base_model)):
            if value is not None:
                body[name] = value
        dataset = api.post("/v1/datasets", json=body)
        total = _count_lines(file)
        columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
        with Progress(*columns, console=console, transient=True) as progress:
            task = progress.add_task(f"preparing {dataset['id']}", total=total)
            while dataset["status"] == "processing":
                progress.update(task, completed=min(dataset["lines_processed"], total))
                time.sleep(0.5)
                dataset = api.get(f"/v1/datasets/{dataset['id']}")
        report = api.get(f"/v1/datasets/{dataset['id']}/report")["report"] if dataset["status"] != "processing" else {}
    except ApiError as error:
        console.print(f"[red]{error}[/red]")
        raise typer.Exit(2) from None
    print_report(dataset, report)
    if dataset["status"] != "ready":
        raise typer.Exit(1)


def print_report(dataset: dict, report: dict) -> None:
    colour = "green" if dataset["status"] == "ready" else "red"
    console.print(f"dataset [bold]{dataset['id']}[/bold]: [{colour}]{dataset['status']}[/{colour}]"
                  + (f" — {dataset['error']}" if dataset.get("error") else ""))
    if report.get("steps"):
        steps = Table(title="steps")
        for column in ("step", "in", "out"):
            steps.add_column(column, justify="right" if column != "step" else "left")
        for step in report["steps"]:
            steps.add_row(step["step"], str(step["in"]), str(step["out"]))
        console.print(steps)
    invalid = report.get("invalid") or {}
    if invalid.get("errors"):
        errors = Table(title=f"invalid lines: {invalid['total_lines']} ({invalid['total_errors']} errors)")
        for column in ("line", "field", "code", "message"):
            errors.add_column(column)
        for error in invalid["errors"][:20]:
            errors.add_row(str(error["line"]), error["field"], error["code"], error["message"])
        console.print(errors)
    facts = Table(title="summary", show_header=False)
    if "split" in report:
        facts.add_row("train / validation", f"{report['split']['train']} / {report['split']['validation']}")
    if "duplicates" in report:
        dup = report["duplicates"]
        facts.add_row("duplicates removed", f"{dup['exact']} exact, {dup['near']} near (rate {dup['rate']:.1%})")
    if report.get("conflicts"):
        facts.add_row("conflicting labels", str(len(report["conflicts"])))
    if report.get("pii", {}).get("replacements"):
        facts.add_row("PII replaced", ", ".join(f"{k} {v}" for k, v in report["pii"]["replacements"].items()))
    if "tokens" in report:
        facts.add_row("tokens (train / validation)", f"{report['tokens']['train']} / {report['tokens']['validation']}")
    if "cost" in report:
        cost = report["cost"]
        facts.add_row("estimated training cost",
                      f"${cost['estimated_cost']:.2f} ({cost['n_epochs']} epochs × ${cost['price_per_1k_tokens']}/1K tokens)")
    if report.get("labels"):
        facts.add_row("labels", ", ".join(f"{k}: {v}" for k, v in report["labels"]["balance"].items()))
    if facts.row_count:
        console.print(facts)
    for advice in report.get("advice", []):
        colour = {"error": "red", "warning": "yellow"}.get(advice["level"], "cyan")
        console.print(f"[{colour}]{advice['level']}[/{colour}] {advice['code']}: {advice['message']}")
