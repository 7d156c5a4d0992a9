"""`tuneloop deploy ...`: named deployments, their canaries and rollbacks, from the command line."""

from __future__ import annotations

import time
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from tuneloop.cli_options import KeyOption, UrlOption, gateway

app = typer.Typer(help="Deployments: the names clients call, and which model version answers them.",
                  no_args_is_help=True)
console = Console()



def _call(url: str | None, api_key: str | None, method: str, path: str, **kwargs) -> dict:
    with gateway(console, url, api_key) as api:
        return api.request(method, path, **kwargs).json()


def _show(deployment: dict) -> None:
    canary = deployment["canary"]
    traffic = f", canary {canary['model']} at {canary['percent']}%" if canary else ""
    console.print(f"[bold]{deployment['id']}[/bold]: {deployment['model']}{traffic}"
                  f" (previous: {deployment['previous_model'] or '-'}, auto-promote: {deployment['auto_promote']})")


@app.command("create")
def create(name: str, model: str, auto_promote: Annotated[bool, typer.Option(help="Promote candidates that pass "
                                                                             "their evaluation by themselves")] = False,
           url: UrlOption = None, api_key: KeyOption = None) -> None:
    """Create deployment NAME serving MODEL."""
    _show(_call(url, api_key, "POST", "/v1/deployments", json={"name": name, "model": model,
                                                                "auto_promote": auto_promote}))


@app.command("promote")
def promote(name: str, model: str, reason: Annotated[str, typer.Option()] = "", url: UrlOption = None,
            api_key: KeyOption = None) -> None:
    """Serve MODEL to all of NAME's traffic (ends any canary)."""
    _show(_call(url, api_key, "POST", f"/v1/deployments/{name}/promote", json={"model": model, "reason": reason}))


@app.command("canary")
def canary(name: str, model: str, percent: int, url: UrlOption = None, api_key: KeyOption = None) -> None:
    """Send PERCENT of NAME's traffic to MODEL (0 ends the canary)."""
    _show(_call(url, api_key, "POST", f"/v1/deployments/{name}/canary", json={"model": model, "percent": percent}))


@app.command("rollback")
def rollback(name: str, reason: Annotated[str, typer.Option()] = "", url: UrlOption = None,
             api_key: KeyOption = None) -> None:
    """Go back to the version NAME served before its last promotion."""
    _show(_call(url, api_key, "POST", f"/v1/deployments/{name}/rollback", json={"reason": reason}))


@app.command("show")
def show(name: str, url: UrlOption = None, api_key: KeyOption = None) -> None:
    """A deployment and its history."""
    deployment = _call(url, api_key, "GET", f"/v1/deployments/{name}")
    _show(deployment)
    table = Table()
    for column in ("when", "action", "from", "to", "percent", "reason"):
        table.add_column(column)
    for change in deployment["history"]:
        table.add_row(time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(change["at"])), change["action"],
                      change["from_model"] or "", change["to_model"] or "", str(change["percent"]),
                      change["reason"] or "")
    console.print(table)


@app.command("list")
def list_deployments(url: UrlOption = None, api_key: KeyOption = None) -> None:
    """Every deployment and the version it serves."""
    for deployment in _call(url, api_key, "GET", "/v1/deployments")["data"]:
        _show(deployment)


@app.command("delete")
def delete(name: str, url: UrlOption = None, api_key: KeyOption = None) -> None:
    """Delete a deployment (its models stay)."""
    _call(url, api_key, "DELETE", f"/v1/deployments/{name}")
    console.print(f"{name}: deleted")
