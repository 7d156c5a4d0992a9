"""The DataPrep gRPC servicer: protobuf in, domain calls, protobuf out."""

from __future__ import annotations

import asyncio
import io
from collections import Counter
from pathlib import Path

import grpc
from google.protobuf import json_format

from protos import dataprep_pb2, dataprep_pb2_grpc, feedback_pb2_grpc, training_pb2_grpc
from services.dataprep import events, store
from services.dataprep.datasets import new_file, prepare_config, queue_dataset
from services.dataprep.files import check_file_id, validate_upload
from services.dataprep.options import PrepareConfig
from services.dataprep.pipeline import PipelineResources
from services.dataprep.report import write_review_csv
from services.dataprep.retrain import RetrainSets
from services.dataprep.review import read_review_sample
from services.dataprep.settings import DataprepSettings
from services.dataprep.synthetic import TeacherConfig, generate_examples
from services.dataprep.validation import iter_validated
from services.dataprep.worker import DatasetWorker
from services.shared.artifacts import ArtifactStore
from services.shared.errors import FailedPrecondition, InvalidArgument
from services.shared.process import Runtime, ServiceDefinition, ServiceParts
from services.shared.rpc import open_channel, tenant_of


def _file_message(record: store.FileRecord) -> dataprep_pb2.File:
    return dataprep_pb2.File(
        id=record.id,
        bytes=record.bytes,
        created_at=record.created_at,
        filename=record.filename,
        purpose=record.purpose,
        sha256=record.sha256,
    )


MAX_SEEDS = 1000
# Texts one AnonymizeTexts call may carry (a completion's messages and its answer are a few).
MAX_ANONYMIZE_TEXTS = 256


def _options_message(config: PrepareConfig) -> dataprep_pb2.PrepareOptions:
    message = dataprep_pb2.PrepareOptions(
        format=config.format or "",
        validation_fraction=config.validation_fraction,
        seed=config.seed,
        drop_invalid=config.drop_invalid,
        anonymize_pii=config.anonymize_pii,
        pii_entities=list(config.pii_entities),
        pii_placeholders=config.pii_placeholders,
        pii_detector=config.pii_detector,
        near_duplicate_threshold=config.near_duplicate_threshold,
        base_model=config.base_model,
        price_per_1k_tokens=config.price_per_1k_tokens,
        review_sample_size=config.review_sample_size,
    )
    if config.n_epochs is not None:
        message.n_epochs = config.n_epochs
    return message


def _dataset_message(record: store.DatasetRecord) -> dataprep_pb2.Dataset:
    return dataprep_pb2.Dataset(
        id=record.id,
        status=record.status,
        file_id=record.file_id,
        created_at=record.created_at,
        format=record.format,
        train_examples=record.train_examples,
        validation_examples=record.validation_examples,
        train_sha256=record.train_sha256 or "",
        validation_sha256=record.validation_sha256 or "",
        error=record.error,
        lines_processed=record.lines_processed,
        options=_options_message(PrepareConfig.from_json(record.options)),
        finished_at=record.finished_at or 0,
    )


class DataPrepServicer(dataprep_pb2_grpc.DataPrepServicer):
    def __init__(self, runtime: Runtime, artifacts: ArtifactStore, worker: DatasetWorker,
                 resources: PipelineResources):
        self._db = runtime.db
        self._settings: DataprepSettings = runtime.settings  # type: ignore[assignment]
        self._artifacts = artifacts
        self._worker = worker
        self._resources = resources

    async def AnonymizeTexts(self, request, context):
        if len(request.texts) > MAX_ANONYMIZE_TEXTS:
            raise InvalidArgument(f"at most {MAX_ANONYMIZE_TEXTS} texts a call", param="texts")

        def anonymize() -> tuple[list[str], Counter[str]]:
            anonymizer = self._resources.anonymizer((), {}, request.use_ner)
            texts, counts = [], Counter()
            for text in request.texts:
                result = anonymizer.anonymize(text)
                texts.append(result.text)
                counts.update(finding.entity for finding in result.findings)
            return texts, counts

        texts, counts = await asyncio.to_thread(anonymize)
        return dataprep_pb2.AnonymizeTextsResponse(texts=texts, counts=dict(counts))

    async def UploadFile(self, request_iterator, context):
        header = None
        writer = self._artifacts.writer()
        try:
            async for request in request_iterator:
                if request.HasField("header"):
                    if header is not None:
                        raise InvalidArgument("the upload header was sent twice", param="header")
                    header = request.header
                    validate_upload(header.filename, header.purpose)
                elif header is None:
                    raise InvalidArgument(
                        "the first message of an upload must carry the header", param="header"
                    )
                if request.data:
                    if writer.size + len(request.data) > self._settings.max_file_bytes:
                        raise InvalidArgument(
                            f"file is larger than {self._settings.max_file_bytes} bytes", param="file"
                        )
                    await asyncio.to_thread(writer.write, request.data)
            if header is None:
                raise InvalidArgument("empty upload: no header and no data", param="header")
            if writer.size == 0:
                raise InvalidArgument("the file is empty", param="file")
            artifact = await asyncio.to_thread(writer.commit)
        finally:
            writer.abort()
        record = new_file(tenant_of(context), header.filename, header.purpose, artifact)
        async with self._db.transaction() as session:
            await store.add_file(session, record)
        return dataprep_pb2.UploadFileResponse(file=_file_message(record))

    async def GetFile(self, request, context):
        async with self._db.transaction() as session:
            record = await store.get_file(session, tenant_of(context), check_file_id(request.file_id))
        return dataprep_pb2.GetFileResponse(file=_file_message(record))

    async def ListFiles(self, request, context):
        if request.limit < 0 or request.limit > 10_000:
            raise InvalidArgument("limit must be between 1 and 10000", param="limit")
        async with self._db.transaction() as session:
            records = await store.list_files(
                session, tenant_of(context), request.purpose, request.limit or 10_000
            )
        return dataprep_pb2.ListFilesResponse(files=[_file_message(r) for r in records])

    async def GetFileContent(self, request, context):
        async with self._db.transaction() as session:
            record = await store.get_file(session, tenant_of(context), check_file_id(request.file_id))
        chunks = self._artifacts.iter_chunks(record.sha256, chunk_size=self._settings.chunk_bytes)
        while chunk := await asyncio.to_thread(next, chunks, b""):
            yield dataprep_pb2.GetFileContentResponse(data=chunk)

    async def DeleteFile(self, request, context):
        async with self._db.transaction() as session:
            record = await store.get_file(session, tenant_of(context), check_file_id(request.file_id))
            last_reference = await store.delete_file(session, record.tenant, record.id)
        if last_reference:
            await asyncio.to_thread(self._artifacts.delete, record.sha256)
        return dataprep_pb2.DeleteFileResponse(file_id=record.id, deleted=True)

    async def PrepareDataset(self, request, context):
        tenant = tenant_of(context)
        config = prepare_config(request.options, self._settings.default_base_model)
        async with self._db.transaction() as session:
            source = await store.get_file(session, tenant, check_file_id(request.file_id))
            stored, created = await queue_dataset(session, source, config)
        self._worker.wake()
        return dataprep_pb2.PrepareDatasetResponse(dataset=_dataset_message(stored), created=created)

    async def GenerateSynthetic(self, request, context):
        tenant = tenant_of(context)
        config = prepare_config(request.options, self._settings.default_base_model)
        teacher = TeacherConfig(
            base_url=request.teacher_base_url,
            api_key=request.teacher_api_key,
            model=request.teacher_model,
            temperature=request.temperature or 0.8,
            instructions=request.instructions,
        )
        async with self._db.transaction() as session:
            seed_file = await store.get_file(session, tenant, check_file_id(request.seed_file_id))
        seeds = await asyncio.to_thread(self._read_seeds, seed_file.sha256)
        generated, _refused = await asyncio.to_thread(
            generate_examples, seeds, request.count, teacher, seed=config.seed
        )
        if not generated:
            raise FailedPrecondition(
                "the teacher produced no valid examples", param="teacher_model", code="no_synthetic_examples"
            )
        content = "".join(example.to_json() + "\n" for example in generated).encode()
        artifact = await asyncio.to_thread(self._artifacts.put_bytes, content)
        record = new_file(tenant, f"synthetic-{seed_file.filename}"[:255], "fine-tune", artifact)
        async with self._db.transaction() as session:
            await store.add_file(session, record)
            dataset, _created = await queue_dataset(session, record, config)
        self._worker.wake()
        return dataprep_pb2.GenerateSyntheticResponse(
            file=_file_message(record), dataset=_dataset_message(dataset), generated=len(generated)
        )

    def _read_seeds(self, sha256: str) -> list:
        seeds = []
        for item in iter_validated(self._artifacts.iter_chunks(sha256), None):
            if not isinstance(item, list) and item.kind == "chat":
                seeds.append(item)
            if len(seeds) >= MAX_SEEDS:
                break
        return seeds

    async def GetDataset(self, request, context):
        async with self._db.transaction() as session:
            record = await store.get_dataset(session, tenant_of(context), request.dataset_id)
        return dataprep_pb2.GetDatasetResponse(dataset=_dataset_message(record))

    async def ListDatasets(self, request, context):
        if request.limit < 0 or request.limit > 10_000:
            raise InvalidArgument("limit must be between 1 and 10000", param="limit")
        async with self._db.transaction() as session:
            records = await store.list_datasets(session, tenant_of(context), request.limit or 100)
        return dataprep_pb2.ListDatasetsResponse(datasets=[_dataset_message(r) for r in records])

    async def GetReport(self, request, context):
        async with self._db.transaction() as session:
            record = await store.get_dataset(session, tenant_of(context), request.dataset_id)
        if record.report is None:
            raise FailedPrecondition(
                f"dataset {record.id} is still {record.status}: its report is not written yet",
                param="dataset_id",
                code="dataset_not_ready",
            )
        response = dataprep_pb2.GetReportResponse(dataset_id=record.id)
        json_format.Parse(record.report, response.report)
        return response

    async def ExportReviewSample(self, request, context):
        record = await self._ready_dataset(context, request.dataset_id)
        if request.format not in ("", "jsonl", "csv"):
            raise InvalidArgument(f"format {request.format!r}: use jsonl or csv", param="format")
        if request.size < 0:
            raise InvalidArgument("size must not be negative", param="size")
        examples = await asyncio.to_thread(
            read_review_sample, self._artifacts, record.review_sha256, request.size or None
        )
        if request.format == "csv":
            text = io.StringIO()
            write_review_csv(examples, text)
            payload = text.getvalue().encode()
        else:
            payload = "".join(example.to_json() + "\n" for example in examples).encode()
        for start in range(0, len(payload), self._settings.chunk_bytes):
            yield dataprep_pb2.ExportReviewSampleResponse(
                data=payload[start : start + self._settings.chunk_bytes]
            )

    async def GetDatasetContent(self, request, context):
        record = await self._ready_dataset(context, request.dataset_id)
        splits = {"train": record.train_sha256, "validation": record.validation_sha256}
        if request.split not in splits:
            raise InvalidArgument(f"split {request.split!r}: use train or validation", param="split")
        chunks = self._artifacts.iter_chunks(splits[request.split], chunk_size=self._settings.chunk_bytes)
        while chunk := await asyncio.to_thread(next, chunks, b""):
            yield dataprep_pb2.GetDatasetContentResponse(data=chunk)

    async def _ready_dataset(self, context, dataset_id: str) -> store.DatasetRecord:
        async with self._db.transaction() as session:
            record = await store.get_dataset(session, tenant_of(context), dataset_id)
        if record.status != store.READY:
            raise FailedPrecondition(
                f"dataset {record.id} is {record.status}, not ready",
                param="dataset_id",
                code="dataset_not_ready",
            )
        return record


async def build(runtime: Runtime) -> ServiceParts:
    settings: DataprepSettings = runtime.settings  # type: ignore[assignment]
    artifacts = ArtifactStore(settings.artifacts_path)
    resources = PipelineResources(settings, workers=settings.pipeline_workers)
    worker = DatasetWorker(runtime, artifacts, resources)
    channels = [open_channel(settings.feedback_addr, settings), open_channel(settings.training_addr, settings)]
    retrain_sets = RetrainSets(runtime, artifacts, resources, worker, feedback_pb2_grpc.FeedbackStub(channels[0]),
                               training_pb2_grpc.TrainingStub(channels[1]))

    def register(server: grpc.aio.Server) -> list[str]:
        dataprep_pb2_grpc.add_DataPrepServicer_to_server(DataPrepServicer(runtime, artifacts, worker, resources),
                                                         server)
        return [dataprep_pb2.DESCRIPTOR.services_by_name["DataPrep"].full_name]

    async def close() -> None:
        for channel in channels:
            await channel.close()
        await asyncio.to_thread(resources.close)

    return ServiceParts(register=register, background=[worker.run, retrain_sets.work], on_close=close,
                        subscriptions=events.subscriptions(retrain_sets))


DEFINITION = ServiceDefinition(
    name="dataprep",
    settings_class=DataprepSettings,
    tables=store.messaging,
    migrations=Path(__file__).parent / "migrations",
    build=build,
)
