"""`tuneloop loop ...` and `tuneloop feedback ...`: the feedback loop of a deployment, from the command line."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from tuneloop.cli_options import KeyOption, UrlOption, gateway

loop_app = typer.Typer(help="The feedback loop: corrections in, a retrained, evaluated, deployed model out.",
                       no_args_is_help=True)
feedback_app = typer.Typer(help="Ratings and corrections of served completions, and the quarantine.",
                           no_args_is_help=True)
console = Console()


def _age(at: int) -> str:
    seconds = max(0, int(time.time()) - at)
    return f"{seconds}s ago" if seconds < 120 else f"{seconds // 60}m ago" if seconds < 7200 else f"{seconds // 3600}h ago"


@loop_app.command("status")
def status(name: Annotated[str, typer.Argument(help="The deployment")],
           history: Annotated[int, typer.Option(help="Cycles of history to show")] = 10,
           as_json: Annotated[bool, typer.Option("--json", help="Print the API's JSON")] = False,
           url: UrlOption = None, api_key: KeyOption = None) -> None:
    """Where deployment NAME's loop stands: corrections waiting, the current cycle, and the history."""
    with gateway(console, url, api_key) as api:
        loop = api.get(f"/v1/deployments/{name}/loop", params={"limit": history})
    if as_json:
        console.print_json(json.dumps(loop))
        return
    policy = loop["policy"]
    console.print(f"[bold]{name}[/bold] serves {loop['model_version'] or '-'}; thumbs-up "
                  f"{loop['up_rate']:.0%} over the last {loop['window_ratings']} ratings")
    console.print(f"corrections: {loop['eligible_corrections']} of {policy['threshold']} toward the next retrain "
                  f"({loop['pending_corrections']} pending, {loop['held_back']} held back by the "
                  f"{policy['max_user_share']:.0%} per-user cap, {loop['quarantined']} quarantined)")
    if loop["users"]:
        users = Table("user", "pending", "counts", "held back", title="per user")
        for share in loop["users"]:
            users.add_row(share["user"], str(share["pending"]), str(share["eligible"]), str(share["held_back"]))
        console.print(users)
    current = loop.get("current")
    console.print(f"current cycle: [bold]{current['id']}[/bold] {current['stage']}" if current else "no cycle running")
    table = Table("cycle", "trigger", "stage", "started", "corrections", "dataset", "job", "candidate", "evaluation",
                  "reason", title="cycles")
    for cycle in loop["cycles"]:
        table.add_row(cycle["id"], cycle["trigger"], cycle["stage"], _age(int(cycle["created_at"])),
                      str(cycle["corrections"]), cycle["dataset_id"] or "-", cycle["job_id"] or "-",
                      cycle["candidate_version"] or "-", cycle["evaluation_id"] or "-", cycle["reason"] or "")
    console.print(table)


@loop_app.command("policy")
def policy(name: Annotated[str, typer.Argument(help="The deployment")],
           set_: Annotated[list[str] | None, typer.Option("--set", help="FIELD=VALUE to change (repeat), e.g. "
                                                          "threshold=50, cooldown_s=0, enabled=false")] = None,
           url: UrlOption = None, api_key: KeyOption = None) -> None:
    """Show deployment NAME's loop policy, or change fields of it with --set."""
    with gateway(console, url, api_key) as api:
        if set_:
            changes = {}
            for pair in set_:
                field, sep, value = pair.partition("=")
                if not sep:
                    console.print(f"[red]--set {pair!r}: write FIELD=VALUE[/red]")
                    raise typer.Exit(2)
                try:
                    changes[field.strip()] = json.loads(value)
                except json.JSONDecodeError:
                    changes[field.strip()] = value
            result = api.request("PUT", f"/v1/deployments/{name}/loop_policy", json=changes).json()
        else:
            result = api.get(f"/v1/deployments/{name}/loop_policy")
    table = Table("field", "value", title=f"{name}: loop policy{'' if result['configured'] else ' (defaults)'}")
    for field, value in result["policy"].items():
        table.add_row(field, str(value))
    console.print(table)


@feedback_app.command("send")
def send(completion_id: str,
         down: Annotated[bool, typer.Option("--down/--up", help="Thumbs down (default) or up")] = True,
         correction: Annotated[str, typer.Option(help="The right answer")] = "",
         comment: str = "",
         user: Annotated[str, typer.Option(help="Who gives the feedback (required with --correction)")] = "",
         url: UrlOption = None, api_key: KeyOption = None) -> None:
    """Rate COMPLETION_ID (the id a chat answer carried), optionally with the right answer."""
    with gateway(console, url, api_key) as api:
        result = api.post("/v1/feedback", json={"completion_id": completion_id, "rating": "down" if down else "up",
                                                "correction": correction, "comment": comment, "user": user})
    console.print(f"feedback [bold]{result['id']}[/bold] {result['status']}"
                  + (f"; retrain {result['retrain_request_id']} requested" if result["retrain_request_id"] else ""))


@feedback_app.command("quarantine")
def quarantine(deployment: Annotated[str, typer.Option(help="Only this deployment's")] = "",
               url: UrlOption = None, api_key: KeyOption = None) -> None:
    """Corrections the poisoning guards hold for review."""
    with gateway(console, url, api_key) as api:
        items = api.get("/v1/feedback/quarantine", params={"deployment": deployment} if deployment else {})["data"]
    table = Table("id", "user", "deployment", "correction", "why")
    for item in items:
        table.add_row(item["id"], item["user"] or "-", item["deployment"] or "-", item["correction"] or "",
                      item["quarantine_reason"] or "")
    console.print(table)


def _review(action: str, ids: list[str], reviewer: str, url: str | None, api_key: str | None) -> None:
    with gateway(console, url, api_key) as api:
        items = api.post(f"/v1/feedback/quarantine/{action}", json={"feedback_ids": ids, "reviewer": reviewer})["data"]
    for item in items:
        console.print(f"{item['id']}: {item['status']}")


@feedback_app.command("release")
def release(ids: Annotated[list[str], typer.Argument(help="Feedback ids")], reviewer: str = "",
            url: UrlOption = None, api_key: KeyOption = None) -> None:
    """Let quarantined corrections count toward the next batch."""
    _review("release", ids, reviewer, url, api_key)


@feedback_app.command("reject")
def reject(ids: Annotated[list[str], typer.Argument(help="Feedback ids")], reviewer: str = "",
           url: UrlOption = None, api_key: KeyOption = None) -> None:
    """Never train on these quarantined corrections."""
    _review("reject", ids, reviewer, url, api_key)


@feedback_app.command("export")
def export(deployment: str,
           out: Annotated[Path, typer.Option(dir_okay=False, help="Where to write the JSONL")],
           fmt: Annotated[str, typer.Option("--format", help="chat (supervised) or preference (DPO pairs)")] = "chat",
           url: UrlOption = None, api_key: KeyOption = None) -> None:
    """Write DEPLOYMENT's corrections as training data."""
    with gateway(console, url, api_key) as api:
        response = api.request("GET", "/v1/feedback/export", params={"deployment": deployment, "format": fmt})
    out.write_bytes(response.content)
    console.print(f"{len(response.content.splitlines())} examples written to {out}")
