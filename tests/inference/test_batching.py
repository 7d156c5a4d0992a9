"""The engine's threads: its compute threads, OpenMP's team included, run below the service's priority."""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

import pytest
import torch

from services.inference.generation import Generator
from services.shared.models import ModelStore

MODEL = "tiny-llama"
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice values are Linux's")


def _nice_by_thread() -> dict[int, int]:
    """Each thread of this process and its nice value (field 19 of /proc/self/task/<id>/stat)."""
    nice = {}
    for task in Path("/proc/self/task").iterdir():
        with contextlib.suppress(OSError):  # a thread may end between listing and reading it
            stat = (task / "stat").read_text()
            nice[int(task.name)] = int(stat[stat.rindex(")") + 2:].split()[16])
    return nice


@pytest.mark.parametrize("nice", [0, 4])
def test_the_engine_and_its_openmp_team_run_nice_levels_below_the_process(tiny_settings, nice):
    own = os.getpriority(os.PRIO_PROCESS, 0)
    before = _nice_by_thread()
    generator = Generator(ModelStore(tiny_settings), dtype="float32", engine_nice=nice)
    generator.generate(MODEL, prompt="Hello there, how are you", max_tokens=3, temperature=0)
    engine_thread = generator.engine(MODEL)._thread.native_id
    started = {thread: value for thread, value in _nice_by_thread().items() if thread not in before}
    generator.close()
    assert started[engine_thread] == min(19, own + nice)
    if nice and torch.get_num_threads() > 1:
        # The engine's OpenMP workers were started by it, so they inherit its priority.
        assert sum(value == own + nice for value in started.values()) >= torch.get_num_threads()
    assert all(value == own for thread, value in _nice_by_thread().items() if thread in before)


def test_the_service_runs_its_engines_ten_levels_lower_unless_told(monkeypatch):
    from services.inference.settings import InferenceSettings

    assert InferenceSettings().engine_nice == 10
    monkeypatch.setenv("TUNELOOP_ENGINE_NICE", "0")
    assert InferenceSettings().engine_nice == 0
