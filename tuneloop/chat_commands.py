"""`tuneloop chat MODEL`: talk to a model in the terminal, its answers streamed as they are written."""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.console import Console

from tuneloop.api import Api, ApiError

console = Console(highlight=False)
HELP = "Type a message and press Enter. /reset forgets the conversation, /exit (or Ctrl-D) leaves."


def chat(
    model: Annotated[str, typer.Argument(help="A model id from `/v1/models`, base or fine-tuned")],
    system: Annotated[str | None, typer.Option(help="A system message to start the conversation with")] = None,
    max_tokens: Annotated[int, typer.Option(help="Longest answer, in tokens")] = 256,
    temperature: Annotated[float, typer.Option(help="0 for the most likely answer every time")] = 0.7,
    url: Annotated[str | None, typer.Option(help="The gateway [default: $TUNELOOP_URL or http://127.0.0.1:8000]")] = None,
    api_key: Annotated[str | None, typer.Option("--api-key", help="API key [default: $TUNELOOP_API_KEY]")] = None,
) -> None:
    """Chat with MODEL; each answer is streamed, and its completion id shown for feedback."""
    try:
        api = Api(url, api_key, timeout=300)
    except ApiError as error:
        console.print(f"[red]{error}[/red]")
        raise typer.Exit(2) from None
    start = [{"role": "system", "content": system}] if system else []
    messages = list(start)
    console.print(f"[dim]{model} · {HELP}[/dim]")
    while True:
        console.print("[bold]you>[/bold] ", end="")
        line = sys.stdin.readline()
        if not line or line.strip() == "/exit":
            break
        text = line.strip()
        if not text:
            continue
        if text == "/reset":
            messages = list(start)
            console.print("[dim](conversation forgotten)[/dim]")
            continue
        messages.append({"role": "user", "content": text})
        body = {"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": temperature,
                "stream": True}
        answer, completion_id = "", ""
        console.print(f"[bold]{model}>[/bold] ", end="")
        try:
            for event in api.events("/v1/chat/completions", json=body):
                completion_id = event["id"]
                for choice in event["choices"]:
                    piece = choice["delta"].get("content") or ""
                    answer += piece
                    console.print(piece, end="", markup=False)
        except ApiError as error:
            messages.pop()  # the question was not answered: it is not part of the conversation
            console.print(f"\n[red]{error}[/red]")
            continue
        messages.append({"role": "assistant", "content": answer})
        console.print(f"\n[dim]({completion_id})[/dim]")
