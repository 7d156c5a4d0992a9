"""`tuneloop train ...`: fine-tuning jobs from the command line."""

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

app = typer.Typer(help="Fine-tuning jobs: create, list, follow, pause, resume, cancel.", no_args_is_help=True)
console = Console()
FINISHED = ("succeeded", "failed", "cancelled")
METHODS = ("supervised", "dpo", "full", "qlora", "distillation")



@app.command("create")
def create(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True, help="Training data (JSONL)")],
    model: Annotated[str, typer.Option(help="Base model")] = "smollm2-135m-instruct",
    epochs: Annotated[int | None, typer.Option(help="Epochs [default: auto]")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Batch size [default: auto]")] = None,
    learning_rate_multiplier: Annotated[float | None, typer.Option(help="[default: auto]")] = None,
    suffix: Annotated[str | None, typer.Option(help="Part of the fine-tuned model's name")] = None,
    validation_file: Annotated[Path | None, typer.Option(exists=True, dir_okay=False)] = None,
    seed: Annotated[int | None, typer.Option()] = None,
    method: Annotated[str, typer.Option(help=f"One of {', '.join(METHODS)}")] = "supervised",
    beta: Annotated[float | None, typer.Option(help="DPO's beta [default: auto]")] = None,
    teacher_url: Annotated[str | None, typer.Option(help="Distillation: the teacher's OpenAI-compatible base URL")] = None,
    teacher_model: Annotated[str | None, typer.Option(help="Distillation: the teacher's model")] = None,
    teacher_key_name: Annotated[str, typer.Option(help="Distillation: a configured teacher key's name")] = "",
    provider: Annotated[str | None, typer.Option(help="local, or openai: the configured remote fine-tuning API")] = None,
    follow: Annotated[bool, typer.Option(help="Wait for the job and show its progress")] = True,
    url: UrlOption = None,
    api_key: KeyOption = None,
) -> None:
    """Upload FILE and start a fine-tuning job on it."""
    if method not in METHODS:
        console.print(f"[red]--method {method!r}: use one of {', '.join(METHODS)}[/red]")
        raise typer.Exit(2)
    with gateway(console, url, api_key) as api:
        with console.status(f"uploading {file.name}"):
            training_file = api.upload(file)["id"]
            validation = api.upload(validation_file)["id"] if validation_file else None
        body: dict = {"model": model, "training_file": training_file}
        hyperparameters = {k: v for k, v in (("n_epochs", epochs), ("batch_size", batch_size),
                                              ("learning_rate_multiplier", learning_rate_multiplier)) if v is not None}
        if hyperparameters:
            body["hyperparameters"] = hyperparameters
        for name, value in (("suffix", suffix), ("validation_file", validation), ("seed", seed),
                            ("provider", provider)):
            if value is not None:
                body[name] = value
        body["method"] = _method(method, beta, teacher_url, teacher_model, teacher_key_name)
        job = api.post("/v1/fine_tuning/jobs", json=body)
        console.print(f"created [bold]{job['id']}[/bold] ({job['status']})")
        if follow:
            job = _follow(api, job["id"])
    if job["status"] in ("failed", "cancelled"):
        raise typer.Exit(1)


def _method(method: str, beta: float | None, teacher_url: str | None, teacher_model: str | None,
            teacher_key_name: str) -> dict:
    """OpenAI's `method` object, with tuneloop's teacher for distillation (the gateway validates it)."""
    body: dict = {"type": method}
    if beta is not None:
        body["dpo"] = {"hyperparameters": {"beta": beta}}
    if teacher_url or teacher_model:
        body["teacher"] = {"base_url": teacher_url or "", "model": teacher_model or "", "api_key_name": teacher_key_name}
    return body


def _follow(api: Api, job_id: str) -> dict:
    """A progress bar over the job's steps, with the latest loss, until it finishes."""
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("{task.fields[loss]}")]
    with Progress(*columns, console=console) as progress:
        task = progress.add_task(job_id, total=None, loss="")
        while True:
            job = api.get(f"/v1/fine_tuning/jobs/{job_id}")
            events = api.get(f"/v1/fine_tuning/jobs/{job_id}/events", params={"limit": 1})["data"]
            data = events[0].get("data") or {} if events else {}
            if "total_steps" in data:
                progress.update(task, total=data["total_steps"], completed=data["step"],
                                loss=f"loss {data['train_loss']:.4f}", description=f"{job_id} {job['status']}")
            else:
                progress.update(task, description=f"{job_id} {job['status']}")
            if job["status"] in (*FINISHED, "paused"):
                break
            time.sleep(1)
    if job["status"] == "paused":
        console.print(f"[yellow]paused[/yellow]: `tuneloop train resume {job_id}` continues it")
    elif job["status"] == "succeeded":
        console.print(f"[green]succeeded[/green]: {job['fine_tuned_model']} ({job['trained_tokens']} tokens trained)")
    else:
        error = job.get("error") or {}
        console.print(f"[red]{job['status']}[/red]: {error.get('message', '')}")
    return job


@app.command("list")
def list_jobs(limit: int = 20, url: UrlOption = None, api_key: KeyOption = None) -> None:
    """List fine-tuning jobs, newest first."""
    with gateway(console, url, api_key) as api:
        jobs = api.get("/v1/fine_tuning/jobs", params={"limit": limit})["data"]
    table = Table()
    for column in ("id", "status", "model", "fine-tuned model", "created"):
        table.add_column(column)
    for job in jobs:
        table.add_row(job["id"], job["status"], job["model"], job["fine_tuned_model"] or "",
                      time.strftime("%Y-%m-%d %H:%M", time.localtime(job["created_at"])))
    console.print(table)


@app.command("events")
def events(
    job_id: str,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new events until the job ends")] = False,
    url: UrlOption = None,
    api_key: KeyOption = None,
) -> None:
    """Print a job's events, oldest first."""
    seen: set[str] = set()
    with gateway(console, url, api_key) as api:
        while True:
            batch = api.get(f"/v1/fine_tuning/jobs/{job_id}/events", params={"limit": 100})["data"]
            for event in reversed(batch):
                if event["id"] not in seen:
                    seen.add(event["id"])
                    stamp = time.strftime("%H:%M:%S", time.localtime(event["created_at"]))
                    colour = {"error": "red", "warn": "yellow"}.get(event["level"], "white")
                    console.print(f"{stamp} [{colour}]{event['level']:5}[/{colour}] {event['message']}")
            if not follow or api.get(f"/v1/fine_tuning/jobs/{job_id}")["status"] in FINISHED:
                break
            time.sleep(1)


def _change(verb: str, job_id: str, url: str | None, api_key: str | None) -> None:
    with gateway(console, url, api_key) as api:
        job = api.post(f"/v1/fine_tuning/jobs/{job_id}/{verb}")
    console.print(f"{job['id']}: {job['status']}")


@app.command("pause")
def pause(job_id: str, url: UrlOption = None, api_key: KeyOption = None) -> None:
    """Pause a queued or running job; it keeps its progress (a checkpoint of the step it is on)."""
    _change("pause", job_id, url, api_key)


@app.command("resume")
def resume(job_id: str, url: UrlOption = None, api_key: KeyOption = None) -> None:
    """Queue a paused job again; it continues from where it was paused."""
    _change("resume", job_id, url, api_key)


@app.command("cancel")
def cancel(job_id: str, url: UrlOption = None, api_key: KeyOption = None) -> None:
    """Cancel a job that has not finished; its training process is stopped."""
    _change("cancel", job_id, url, api_key)
