"""The engine's threads: its compute threads, OpenMP's team included, run below the service's priority."""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
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
    # No thread that was there before (the test's own among them) changed priority.
    assert all(value == before[thread] for thread, value in _nice_by_thread().items() if thread in before)


def test_the_service_runs_its_engines_ten_levels_lower_unless_told(monkeypatch):
    from services.inference.settings import InferenceSettings

    assert InferenceSettings().engine_nice == 10
    monkeypatch.setenv("TUNELOOP_ENGINE_NICE", "0")
    assert InferenceSettings().engine_nice == 0


def test_a_request_arriving_during_a_prefill_is_read_before_the_next_decoding_step(tiny_settings):
    generator = Generator(ModelStore(tiny_settings), dtype="float32")
    generator.generate(MODEL, prompt="Warm up", max_tokens=1, temperature=0)
    engine = generator.engine(MODEL)
    passes, later = [], []
    real_forward = engine._forward

    def forward(rows, ids, mask, positions, cache):
        passes.append((len(rows), ids.shape[1]))
        if len(passes) == 1:  # the first request's prefill: a second request arrives meanwhile
            arriving = threading.Thread(target=lambda: later.append(
                generator.generate(MODEL, prompt="A second question", max_tokens=3, temperature=0)))
            arriving.start()
            while not engine.waiting:
                time.sleep(0.001)
        return real_forward(rows, ids, mask, positions, cache)

    engine._forward = forward
    first = generator.generate(MODEL, prompt="The first question here", max_tokens=3, temperature=0)
    while not later:
        time.sleep(0.01)
    generator.close()
    assert first.completion_tokens == later[0].completion_tokens == 3
    # Read the first prompt, then the second, and only then decode both: [(1, 5), (1, 3), (2, 1), (2, 1)].
    assert [rows for rows, _ in passes[:4]] == [1, 1, 2, 2]
    assert passes[0][1] > 1 and passes[1][1] > 1 and passes[2][1] == passes[3][1] == 1
