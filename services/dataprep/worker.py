"""The dataset worker: prepares accepted datasets one at a time, and resumes after a restart.

A dataset row in status "processing" is the work queue: PrepareDataset writes it, this worker
picks it up (also the ones a crash left behind), runs the pipeline in a thread, and records the
outcome and the `dataset.prepared` event in one transaction (see events.py for which events).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import tempfile
import threading
from dataclasses import replace
from pathlib import Path

from services.dataprep import store
from services.dataprep.events import dataset_ready
from services.dataprep.options import PrepareConfig
from services.dataprep.pipeline import DatasetRejected, Interrupted, PipelineResources, prepare_dataset
from services.dataprep.retrain import finish_retrain_sets
from services.shared.artifacts import ArtifactStore
from services.shared.errors import TuneloopError
from services.shared.outbox import add_to_outbox
from services.shared.process import Runtime

log = logging.getLogger(__name__)
PROGRESS_EVERY_S = 1.0


class DatasetWorker:
    def __init__(self, runtime: Runtime, artifacts: ArtifactStore, resources: PipelineResources):
        self._runtime = runtime
        self._artifacts = artifacts
        self._resources = resources
        self._wake = asyncio.Event()
        # Set on shutdown: the pipeline thread checks it and gives up, leaving the dataset queued.
        self._cancel = threading.Event()

    def wake(self) -> None:
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        watcher = asyncio.create_task(self._cancel_on(stop))
        try:
            await self._loop(stop)
        finally:
            watcher.cancel()

    async def _cancel_on(self, stop: asyncio.Event) -> None:
        await stop.wait()
        self._cancel.set()

    async def _loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            async with self._runtime.db.transaction() as session:
                pending = await store.datasets_to_process(session)
            for record in pending:
                if stop.is_set():
                    return
                await self._process(record)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                waiters = {asyncio.ensure_future(self._wake.wait()), asyncio.ensure_future(stop.wait())}
                try:
                    await asyncio.wait(waiters, timeout=5.0, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for waiter in waiters:
                        waiter.cancel()

    async def _process(self, record: store.DatasetRecord) -> None:
        config = PrepareConfig.from_json(record.options)
        lines = [0]
        done = asyncio.Event()

        async def report_progress() -> None:
            reported = -1
            while not done.is_set():
                if lines[0] != reported:
                    reported = lines[0]
                    async with self._runtime.db.transaction() as session:
                        await store.set_progress(session, record.id, reported)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(done.wait(), PROGRESS_EVERY_S)

        def on_progress(count: int) -> None:
            lines[0] = count  # read by report_progress on the event loop; an int swap is atomic

        progress = asyncio.create_task(report_progress())
        try:
            with tempfile.TemporaryDirectory(dir=self._runtime.settings.data_dir) as workdir:
                prepared = await asyncio.to_thread(
                    prepare_dataset,
                    self._artifacts.iter_chunks(record.file_sha256),
                    config,
                    resources=self._resources,
                    artifacts=self._artifacts,
                    workdir=Path(workdir),
                    on_progress=on_progress,
                    cancel=self._cancel,
                )
        except Interrupted:
            log.info("dataset %s: interrupted by shutdown; it stays queued", record.id)
            return
        except DatasetRejected as rejected:
            await self._finish(
                record,
                status=store.FAILED,
                error=rejected.message,
                report=json.dumps(rejected.report),
                format=rejected.report.get("format", record.format),
                lines_processed=lines[0],
            )
            return
        except TuneloopError as error:
            await self._finish(record, status=store.FAILED, error=error.message, lines_processed=lines[0])
            return
        except Exception:
            log.exception("dataset %s: preparation failed", record.id)
            await self._finish(
                record,
                status=store.FAILED,
                error="internal error while preparing the dataset",
                lines_processed=lines[0],
            )
            return
        finally:
            done.set()
            await progress
        await self._finish(
            record,
            status=store.READY,
            format=prepared.format,
            train_sha256=prepared.train.sha256,
            validation_sha256=prepared.validation.sha256,
            review_sha256=prepared.review.sha256,
            train_examples=prepared.train_examples,
            validation_examples=prepared.validation_examples,
            report=json.dumps(prepared.report),
            lines_processed=prepared.report["lines"],
        )

    async def _finish(self, record: store.DatasetRecord, **values) -> None:
        finished = replace(record, **values)
        async with self._runtime.db.transaction() as session:
            await store.finish_dataset(session, record.id, **values)
            # A retraining set's dataset is announced with the set's fields, ready or failed; any
            # other dataset only when it is ready.
            announced = await finish_retrain_sets(session, self._runtime.tables, finished)
            if not announced and finished.status == store.READY:
                await add_to_outbox(session, self._runtime.tables, dataset_ready(finished))
        self._runtime.relay.poke()
        log.info("dataset %s: %s", record.id, values.get("status"))
