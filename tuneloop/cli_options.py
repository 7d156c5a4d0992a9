"""What every gateway-calling command shares: the --url and --api-key options, and opening the API."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Annotated

import typer
from rich.console import Console

from tuneloop.api import Api, ApiError

UrlOption = Annotated[str | None, typer.Option(help="The gateway [default: $TUNELOOP_URL or http://127.0.0.1:8000]")]
KeyOption = Annotated[str | None, typer.Option("--api-key", help="API key [default: $TUNELOOP_API_KEY]")]


def open_api(console: Console, url: str | None, api_key: str | None) -> Api:
    """The gateway's API, or exit 2 saying why not (no key)."""
    try:
        return Api(url, api_key)
    except ApiError as error:
        console.print(f"[red]{error}[/red]")
        raise typer.Exit(2) from None


@contextlib.contextmanager
def gateway(console: Console, url: str | None, api_key: str | None) -> Iterator[Api]:
    """The gateway's API for a command: a failed call is printed and exits 2; the client is closed."""
    api = open_api(console, url, api_key)
    try:
        yield api
    except ApiError as error:
        console.print(f"[red]{error}[/red]")
        raise typer.Exit(2) from None
    finally:
        api.close()
