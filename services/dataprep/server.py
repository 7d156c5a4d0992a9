"""The DataPrep gRPC servicer: protobuf in, domain calls, protobuf out."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc

from protos import dataprep_pb2, dataprep_pb2_grpc
from services.dataprep import store
from services.dataprep.files import check_file_id, validate_upload
from services.dataprep.settings import DataprepSettings
from services.shared.artifacts import ArtifactStore
from services.shared.errors import InvalidArgument
from services.shared.process import Runtime, ServiceDefinition, ServiceParts
from services.shared.rpc import tenant_of


def _file_message(record: store.FileRecord) -> dataprep_pb2.File:
    return dataprep_pb2.File(
        id=record.id,
        bytes=record.bytes,
        created_at=record.created_at,
        filename=record.filename,
        purpose=record.purpose,
        sha256=record.sha256,
    )


class DataPrepServicer(dataprep_pb2_grpc.DataPrepServicer):
    def __init__(self, runtime: Runtime, artifacts: ArtifactStore):
        self._db = runtime.db
        self._settings: DataprepSettings = runtime.settings  # type: ignore[assignment]
        self._artifacts = artifacts

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
                    raise InvalidArgument("the first message of an upload must carry the header", param="header")
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
        record = store.FileRecord(
            id=store.new_file_id(),
            tenant=tenant_of(context),
            filename=header.filename,
            purpose=header.purpose,
            bytes=artifact.size,
            sha256=artifact.sha256,
            created_at=store.now(),
        )
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
            records = await store.list_files(session, tenant_of(context), request.purpose, request.limit or 10_000)
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


async def build(runtime: Runtime) -> ServiceParts:
    artifacts = ArtifactStore(runtime.settings.artifacts_path)

    def register(server: grpc.aio.Server) -> list[str]:
        dataprep_pb2_grpc.add_DataPrepServicer_to_server(DataPrepServicer(runtime, artifacts), server)
        return [dataprep_pb2.DESCRIPTOR.services_by_name["DataPrep"].full_name]

    return ServiceParts(register=register)


DEFINITION = ServiceDefinition(
    name="dataprep",
    settings_class=DataprepSettings,
    tables=store.messaging,
    migrations=Path(__file__).parent / "migrations",
    build=build,
)
