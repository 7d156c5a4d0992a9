"""The `tuneloop` command line."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Annotated

import httpx
import typer
from rich.console import Console
from rich.table import Table

from services.shared.settings import Settings
from tuneloop import (
    chat_commands,
    data_commands,
    deploy_commands,
    eval_commands,
    loop_commands,
    train_commands,
)
from tuneloop.launcher import LaunchConfig, Stack, StartupAborted

app = typer.Typer(help="tuneloop: fine-tune an open LLM on your domain, prove it, serve it, keep improving it.",
                  no_args_is_help=True)
models_app = typer.Typer(help="Base models in the local model store.", no_args_is_help=True)
app.add_typer(models_app, name="models")
app.add_typer(data_commands.app, name="data")
app.add_typer(train_commands.app, name="train")
app.command("chat")(chat_commands.chat)
app.add_typer(deploy_commands.app, name="deploy")
app.add_typer(eval_commands.app, name="eval")
app.add_typer(loop_commands.loop_app, name="loop")
app.add_typer(loop_commands.feedback_app, name="feedback")
console = Console()

DataDirOption = Annotated[
    Path | None, typer.Option("--data-dir", help="Where tuneloop keeps its data [default: $TUNELOOP_DATA_DIR or ~/.tuneloop]")
]


def _settings(data_dir: Path | None) -> Settings:
    return Settings(data_dir=data_dir) if data_dir else Settings()


@app.command()
def up(
    port: Annotated[int, typer.Option(help="REST port of the gateway")] = 8000,
    grpc_port: Annotated[int, typer.Option("--grpc-port", help="gRPC port of the gateway")] = 50051,
    host: Annotated[str, typer.Option(help="Address every part listens on")] = "127.0.0.1",
    data_dir: DataDirOption = None,
    startup_timeout: Annotated[float, typer.Option(help="Seconds to wait for every part to be healthy")] = 60.0,
) -> None:
    """Start NATS, the five services and the gateway; stop them all with Ctrl-C."""
    settings = _settings(data_dir)
    external_nats = os.environ.get("NATS_URL") or os.environ.get("TUNELOOP_NATS_URL")
    stack = Stack(
        LaunchConfig(
            data_dir=settings.data_dir,
            host=host,
            port=port,
            grpc_port=grpc_port,
            nats_url=external_nats,
            database_url=settings.database_url,
            startup_timeout_s=startup_timeout,
        ),
        echo=console.print,
    )
    # From here on SIGTERM and Ctrl-C ask the stack to stop, even half-way through starting, so
    # no child (each runs in its own session) is ever left behind.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stack.request_stop())
    with console.status("starting NATS, dataprep, training, evaluation, feedback, inference and the gateway"):
        try:
            stack.start()
        except StartupAborted:
            console.print("stopped before start-up finished.")
            raise typer.Exit(0) from None
        except (RuntimeError, TimeoutError, FileNotFoundError) as error:
            console.print(f"[red]tuneloop up failed:[/red] {error}")
            raise typer.Exit(1) from None
    table = Table(title="tuneloop is up", show_header=False)
    table.add_row("REST (OpenAI-compatible)", f"{stack.url}/v1")
    table.add_row("gRPC", f"{host}:{grpc_port}")
    table.add_row("health", f"{stack.url}/healthz")
    table.add_row("NATS", external_nats or (stack.nats.url if stack.nats else ""))
    table.add_row("database", settings.database_url or f"SQLite files in {settings.data_dir}")
    table.add_row("data", str(settings.data_dir))
    table.add_row("logs", str(stack.logs_dir))
    table.add_row("API key", "newly generated, shown above" if stack.generated_key else "TUNELOOP_API_KEY or an existing key")
    console.print(table)
    console.print("Press Ctrl-C to stop.")
    stack.run_until_stopped()
    console.print("stopping...")
    stack.stop()
    console.print("stopped.")


@app.command()
def status(
    url: Annotated[str, typer.Option(help="The gateway's REST address")] = "http://127.0.0.1:8000",
) -> None:
    """Show the health of NATS and every service, as the gateway sees them."""
    try:
        response = httpx.get(f"{url.rstrip('/')}/healthz", timeout=5)
        report = response.json()
    except (httpx.HTTPError, ValueError) as error:
        console.print(f"[red]gateway at {url} is unreachable:[/red] {error}")
        raise typer.Exit(2) from None
    table = Table(title=f"tuneloop at {url}: {report.get('status')}")
    table.add_column("part")
    table.add_column("status")
    for part, state in report.get("parts", {}).items():
        table.add_row(part, f"[green]{state}[/green]" if state == "SERVING" else f"[red]{state}[/red]")
    console.print(table)
    if report.get("status") != "ok":
        raise typer.Exit(1)


@models_app.command("prepare")
def models_prepare(
    model_id: Annotated[str | None, typer.Argument(help="Base model id [default: the default base model]")] = None,
    data_dir: DataDirOption = None,
) -> None:
    """Convert a base model into the model store once (SmolLM2 from its GGUF file), so serving and training start fast."""
    from services.shared.models import ModelStore  # heavy: torch and transformers

    settings = _settings(data_dir)
    target = model_id or settings.default_base_model
    with console.status(f"preparing {target}"):
        path = ModelStore(settings).prepare(target)
    console.print(f"{target}: ready in {path}")


@models_app.command("list")
def models_list(data_dir: DataDirOption = None) -> None:
    """List the base models the model store knows and whether each is ready."""
    from services.shared.models import ModelStore

    settings = _settings(data_dir)
    store = ModelStore(settings)
    table = Table()
    table.add_column("model")
    table.add_column("ready")
    table.add_column("note")
    for model_id in store.base_model_ids():
        state = store.status(model_id)
        table.add_row(model_id, "yes" if state.available else "no", state.reason)
    console.print(table)


if __name__ == "__main__":
    app()
