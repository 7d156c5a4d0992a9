"""Files through the data-prep service on a real gRPC port, stored in SQLite / PostgreSQL and the artifact store."""

import grpc
import pytest
import sqlalchemy as sa

from protos import dataprep_pb2, dataprep_pb2_grpc
from services.dataprep import store
from services.dataprep.server import DEFINITION
from tests.fixtures.services import call_metadata, error_param, running, service_settings


@pytest.fixture
def settings(tmp_path, database_url, nats_url):
    return service_settings(DEFINITION, tmp_path=tmp_path, database_url=database_url, nats_url=nats_url,
                            max_file_bytes=1_000_000, chunk_bytes=1000)


def _upload(content: bytes, filename="train.jsonl", purpose="fine-tune", chunk=700):
    yield dataprep_pb2.UploadFileRequest(header=dataprep_pb2.UploadFileHeader(filename=filename, purpose=purpose))
    for start in range(0, len(content), chunk):
        yield dataprep_pb2.UploadFileRequest(data=content[start:start + chunk])


async def _stored_files(service) -> int:
    async with service.runtime.db.transaction() as session:
        return (await session.execute(sa.select(sa.func.count()).select_from(store.files))).scalar_one()


async def test_upload_get_list_download_delete(settings):
    content = b"".join(b'{"messages": [{"role": "user", "content": "q%d"}]}\n' % i for i in range(300))
    async with running(DEFINITION, settings) as (service, channel):
        stub = dataprep_pb2_grpc.DataPrepStub(channel)
        uploaded = (await stub.UploadFile(_upload(content), metadata=call_metadata())).file
        assert uploaded.id.startswith("file-") and uploaded.bytes == len(content)
        assert uploaded.filename == "train.jsonl" and uploaded.purpose == "fine-tune"

        fetched = (await stub.GetFile(dataprep_pb2.GetFileRequest(file_id=uploaded.id), metadata=call_metadata())).file
        assert fetched == uploaded
        listed = await stub.ListFiles(dataprep_pb2.ListFilesRequest(purpose="fine-tune"), metadata=call_metadata())
        assert [f.id for f in listed.files] == [uploaded.id]

        chunks = [c.data async for c in stub.GetFileContent(dataprep_pb2.GetFileContentRequest(file_id=uploaded.id),
                                                            metadata=call_metadata())]
        assert b"".join(chunks) == content and max(len(c) for c in chunks) == 1000

        # another tenant sees nothing
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await stub.GetFile(dataprep_pb2.GetFileRequest(file_id=uploaded.id), metadata=call_metadata("other"))
        assert error.value.code() == grpc.StatusCode.NOT_FOUND

        deleted = await stub.DeleteFile(dataprep_pb2.DeleteFileRequest(file_id=uploaded.id), metadata=call_metadata())
        assert deleted.deleted
        assert not service.runtime.settings.artifacts_path.joinpath("sha256", uploaded.sha256[:2], uploaded.sha256[2:]).exists()
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await stub.GetFile(dataprep_pb2.GetFileRequest(file_id=uploaded.id), metadata=call_metadata())
        assert error.value.code() == grpc.StatusCode.NOT_FOUND


async def test_identical_content_is_stored_once_and_survives_deleting_one_copy(settings):
    async with running(DEFINITION, settings) as (service, channel):
        stub = dataprep_pb2_grpc.DataPrepStub(channel)
        first = (await stub.UploadFile(_upload(b"same bytes\n"), metadata=call_metadata())).file
        second = (await stub.UploadFile(_upload(b"same bytes\n", filename="b.jsonl"), metadata=call_metadata())).file
        assert first.sha256 == second.sha256 and first.id != second.id
        await stub.DeleteFile(dataprep_pb2.DeleteFileRequest(file_id=first.id), metadata=call_metadata())
        chunks = [c.data async for c in stub.GetFileContent(dataprep_pb2.GetFileContentRequest(file_id=second.id),
                                                            metadata=call_metadata())]
        assert b"".join(chunks) == b"same bytes\n"


@pytest.mark.parametrize(
    ("requests", "param"),
    [
        (lambda: _upload(b"x", purpose="assistants"), "purpose"),
        (lambda: _upload(b"x", filename=""), "file"),
        (lambda: _upload(b"x", filename="a\nb"), "file"),
        (lambda: _upload(b""), "file"),
        (lambda: _upload(b"x" * 1_000_001, chunk=100_000), "file"),
        (lambda: iter([dataprep_pb2.UploadFileRequest(data=b"no header")]), "header"),
        (lambda: iter([]), "header"),
    ],
)
async def test_bad_uploads_are_refused_naming_the_field_and_store_nothing(settings, requests, param):
    async with running(DEFINITION, settings) as (service, channel):
        stub = dataprep_pb2_grpc.DataPrepStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await stub.UploadFile(requests(), metadata=call_metadata())
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error_param(error.value) == param
        assert await _stored_files(service) == 0
        blobs = settings.artifacts_path / "sha256"
        assert not blobs.exists() or not any(blobs.rglob("*"))
        tmp = settings.artifacts_path / "tmp"
        assert not tmp.exists() or not any(tmp.iterdir())


@pytest.mark.parametrize("file_id", ["file-nope", "../../etc/passwd", ""])
async def test_unknown_or_malformed_ids_are_not_found(settings, file_id):
    async with running(DEFINITION, settings) as (_service, channel):
        stub = dataprep_pb2_grpc.DataPrepStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await stub.GetFile(dataprep_pb2.GetFileRequest(file_id=file_id), metadata=call_metadata())
        assert error.value.code() == grpc.StatusCode.NOT_FOUND
        assert dict(error.value.trailing_metadata())["x-tuneloop-error-code"] == "file_not_found"
