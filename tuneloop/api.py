"""The CLI's way to the gateway: REST with the API key, errors shown as the API words them."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

DEFAULT_URL = "http://127.0.0.1:8000"


class ApiError(Exception):
    """The gateway answered with an error (OpenAI's shape) or could not be reached."""


class Api:
    def __init__(self, url: str | None = None, api_key: str | None = None, timeout: float = 60.0):
        self.url = (url or os.environ.get("TUNELOOP_URL") or DEFAULT_URL).rstrip("/")
        key = api_key or os.environ.get("TUNELOOP_API_KEY")
        if not key:
            raise ApiError("no API key: pass --api-key or set TUNELOOP_API_KEY")
        self._client = httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {key}"}, timeout=timeout)

    def _check(self, response: httpx.Response) -> httpx.Response:
        if response.is_success:
            return response
        try:
            error = response.json()["error"]
            where = f" ({error['param']})" if error.get("param") else ""
            message = f"{error['message']}{where}"
        except (ValueError, KeyError, TypeError):
            message = response.text[:500]
        raise ApiError(f"{response.status_code}: {message}")

    def request(self, method: str, path: str, **kwargs) -> httpx.Response:
        try:
            return self._check(self._client.request(method, path, **kwargs))
        except httpx.HTTPError as error:
            raise ApiError(f"cannot reach the gateway at {self.url}: {error}") from None

    def events(self, path: str, **kwargs) -> Iterator[dict]:
        """The JSON of each server-sent event of a streamed POST, until `data: [DONE]`."""
        try:
            with self._client.stream("POST", path, **kwargs) as response:
                if not response.is_success:
                    response.read()
                    self._check(response)
                for line in response.iter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        return
                    event = json.loads(data)
                    if "error" in event:
                        raise ApiError(event["error"].get("message", str(event["error"])))
                    yield event
        except httpx.HTTPError as error:
            raise ApiError(f"cannot reach the gateway at {self.url}: {error}") from None

    def get(self, path: str, **kwargs) -> Any:
        return self.request("GET", path, **kwargs).json()

    def post(self, path: str, **kwargs) -> Any:
        return self.request("POST", path, **kwargs).json()

    def upload(self, path: Path, purpose: str = "fine-tune") -> dict:
        with open(path, "rb") as handle:  # httpx streams the file; it is not read into memory
            return self.post("/v1/files", files={"file": (path.name, handle)}, data={"purpose": purpose})

    def close(self) -> None:
        self._client.close()
