"""The local launcher behind `tuneloop up`: NATS, five services and the gateway as child processes.

It owns process lifecycles only: start in dependency order, wait until the gateway reports every
part healthy, restart a part that dies, and stop everything in reverse order on SIGINT/SIGTERM.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from services.shared.settings import SERVICE_NAMES
from tuneloop.nats_server import NatsServer, free_ports

NEW_KEY_PREFIX = "TUNELOOP_NEW_API_KEY="  # printed by gateway/__main__.py
RESTART_BACKOFF_S = (1, 2, 5, 10, 30)


class StartupAborted(Exception):
    """A stop was asked for before every part was healthy; everything started has been stopped."""


@dataclass
class LaunchConfig:
    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 8000
    grpc_port: int = 50051
    # External NATS / PostgreSQL; None starts a local nats-server and uses SQLite files.
    nats_url: str | None = None
    database_url: str | None = None
    startup_timeout_s: float = 60.0


@dataclass
class Part:
    """One child process the launcher keeps alive."""

    name: str
    command: list[str]
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen | None = None
    restarts: int = 0
    next_restart_at: float = 0.0
    _pump: threading.Thread | None = field(default=None, repr=False)

    def start(self, on_secret_line: Callable[[str], None]) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            self.command,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C reaches the launcher only; it stops children in order
        )
        self._pump = threading.Thread(
            target=_pump_output, args=(self.process, self.log_path, on_secret_line), daemon=True
        )
        self._pump.start()

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 15.0) -> bool:
        """SIGTERM, then SIGKILL after `timeout`; True when the part stopped by itself."""
        if not self.alive:
            return True
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
            return True
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            return False


def _pump_output(process: subprocess.Popen, log_path: Path, on_secret_line: Callable[[str], None]) -> None:
    """Copy a child's output to its log file; a generated API key goes to the terminal, never the log."""
    with open(log_path, "a", encoding="utf-8", errors="replace") as log:
        for raw in iter(process.stdout.readline, b""):
            line = raw.decode("utf-8", errors="replace")
            if line.startswith(NEW_KEY_PREFIX):
                on_secret_line(line.strip()[len(NEW_KEY_PREFIX):])
                log.write("[a new admin API key was generated and shown on the terminal]\n")
            else:
                log.write(line)
            log.flush()


class Stack:
    """The whole platform on one machine."""

    def __init__(self, config: LaunchConfig, echo: Callable[[str], None] = print):
        self.config = config
        self.echo = echo
        self.logs_dir = config.data_dir / "logs"
        self.nats: NatsServer | None = None
        self.parts: list[Part] = []
        self.generated_key: str | None = None
        self._stopping = threading.Event()

    @property
    def url(self) -> str:
        return f"http://{self.config.host}:{self.config.port}"

    def _on_new_key(self, key: str) -> None:
        self.generated_key = key
        self.echo(f"A new admin API key was generated. It is shown once; keep it:\n\n    {key}\n")

    def _base_env(self, nats_url: str, addresses: dict[str, str]) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            PYTHONUNBUFFERED="1",
            TUNELOOP_DATA_DIR=str(self.config.data_dir),
            NATS_URL=nats_url,
            TUNELOOP_INTERNAL_TOKEN=env.get("TUNELOOP_INTERNAL_TOKEN") or secrets.token_urlsafe(24),
        )
        env.pop("TUNELOOP_NATS_URL", None)
        if self.config.database_url:
            env["TUNELOOP_DATABASE_URL"] = self.config.database_url
        for name, address in addresses.items():
            env[f"TUNELOOP_{name.upper()}_ADDR"] = address
        return env

    def start(self) -> None:
        config = self.config
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        nats_url = config.nats_url
        if nats_url is None:
            self.nats = NatsServer(store_dir=config.data_dir / "jetstream").start(log_file=self.logs_dir / "nats.log")
            nats_url = self.nats.url
        # Distinct from each other and from the gateway's own ports: a gRPC service that shared one
        # would fail to bind (servers refuse SO_REUSEPORT) instead of starting.
        picked = free_ports(len(SERVICE_NAMES), config.host, exclude=frozenset({config.port, config.grpc_port}))
        ports = dict(zip(SERVICE_NAMES, picked, strict=True))
        addresses = {name: f"{config.host}:{port}" for name, port in ports.items()}
        env = self._base_env(nats_url, addresses)
        for name in SERVICE_NAMES:
            service_env = dict(env, TUNELOOP_GRPC_HOST=config.host, TUNELOOP_GRPC_PORT=str(ports[name]))
            self.parts.append(
                Part(name, [sys.executable, "-m", f"services.{name}"], service_env, self.logs_dir / f"{name}.log")
            )
        gateway_env = dict(
            env,
            TUNELOOP_GATEWAY_HOST=config.host,
            TUNELOOP_GATEWAY_PORT=str(config.port),
            TUNELOOP_GATEWAY_GRPC_PORT=str(config.grpc_port),
        )
        self.parts.append(Part("gateway", [sys.executable, "-m", "gateway"], gateway_env, self.logs_dir / "gateway.log"))
        for part in self.parts:
            part.start(self._on_new_key)
        self.wait_healthy(config.startup_timeout_s)

    def health(self, timeout: float = 2.0) -> dict | None:
        try:
            return httpx.get(f"{self.url}/healthz", timeout=timeout).json()
        except (httpx.HTTPError, ValueError):
            return None

    def wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        report = None
        while time.monotonic() < deadline:
            if self._stopping.is_set():  # SIGTERM or Ctrl-C while starting
                self.stop()
                raise StartupAborted("stopped while starting")
            dead = [part.name for part in self.parts if not part.alive]
            if dead:
                self.stop()
                raise RuntimeError(f"{', '.join(dead)} exited during start-up; see {self.logs_dir}")
            report = self.health()
            if report and report.get("status") == "ok":
                return
            time.sleep(0.25)
        self.stop()
        raise TimeoutError(f"not healthy after {timeout:.0f}s: {report}; see the logs in {self.logs_dir}")

    def supervise_once(self) -> list[str]:
        """Restart parts that died (with back-off); returns the names restarted."""
        restarted = []
        now = time.monotonic()
        for part in self.parts:
            if part.alive or self._stopping.is_set():
                continue
            if part.next_restart_at == 0.0:
                delay = RESTART_BACKOFF_S[min(part.restarts, len(RESTART_BACKOFF_S) - 1)]
                part.next_restart_at = now + delay
                code = part.process.returncode if part.process else None
                self.echo(f"{part.name} exited (code {code}); restarting in {delay}s")
            elif now >= part.next_restart_at:
                part.restarts += 1
                part.next_restart_at = 0.0
                part.start(self._on_new_key)
                restarted.append(part.name)
        return restarted

    def run_until_stopped(self, poll_s: float = 0.5) -> None:
        while not self._stopping.wait(poll_s):
            self.supervise_once()

    def request_stop(self) -> None:
        self._stopping.set()

    def stop(self) -> None:
        self._stopping.set()
        for part in reversed(self.parts):
            if not part.stop():
                self.echo(f"{part.name} did not stop within 15s of SIGTERM and was killed")
        if self.nats is not None:
            self.nats.stop()
