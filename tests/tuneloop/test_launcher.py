"""The launcher's process handling, with real child processes."""

import sys
import time

from tuneloop.launcher import NEW_KEY_PREFIX, LaunchConfig, Part, Stack
from tuneloop.nats_server import free_ports


def _wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_generated_key_reaches_the_terminal_but_not_the_log(tmp_path):
    shown = []
    code = f"print('starting'); print('{NEW_KEY_PREFIX}tl-secret-key'); print('ready')"
    part = Part("gateway", [sys.executable, "-c", code], {}, tmp_path / "gateway.log")
    part.start(shown.append)
    part.process.wait(10)
    _wait_for(lambda: "ready" in (tmp_path / "gateway.log").read_text())
    log = (tmp_path / "gateway.log").read_text()
    assert shown == ["tl-secret-key"]
    assert "tl-secret-key" not in log and "starting" in log


def test_a_dead_part_is_restarted_with_backoff(tmp_path):
    messages = []
    stack = Stack(LaunchConfig(data_dir=tmp_path), echo=messages.append)
    part = Part("flaky", [sys.executable, "-c", "import sys; sys.exit(3)"], {}, tmp_path / "flaky.log")
    stack.parts.append(part)
    part.start(lambda _key: None)
    part.process.wait(10)
    assert stack.supervise_once() == []  # first it schedules the restart and says why
    assert "flaky exited (code 3); restarting in 1s" in messages
    _wait_for(lambda: stack.supervise_once() == ["flaky"], timeout=5)
    assert part.restarts == 1
    stack.stop()


def test_free_ports_are_distinct_and_avoid_the_excluded_ones():
    taken = set(free_ports(3))
    ports = free_ports(50, exclude=frozenset(taken))
    assert len(set(ports)) == 50
    assert not taken & set(ports)
