"""`/v1/files`, in OpenAI's shape: upload (multipart), list, retrieve, delete, content."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Literal

from fastapi import APIRouter, File, Form, Query, UploadFile
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from gateway.clients import call, stream
from gateway.deps import ClientsDep, TenantDep
from gateway.errors import ERROR_RESPONSES
from protos import dataprep_pb2

router = APIRouter(prefix="/v1/files", tags=["files"], responses=ERROR_RESPONSES)
UPLOAD_CHUNK = 1024 * 1024


class FilePublic(BaseModel):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: Literal["processed"] = "processed"
    status_details: str | None = None
    expires_at: int | None = None


class FilesPublic(BaseModel):
    object: Literal["list"] = "list"
    data: list[FilePublic]
    has_more: bool = False


class FileDeleted(BaseModel):
    id: str
    object: Literal["file"] = "file"
    deleted: bool


def public_file(file: dataprep_pb2.File) -> FilePublic:
    return FilePublic(id=file.id, bytes=file.bytes, created_at=file.created_at, filename=file.filename, purpose=file.purpose)


@router.post("", response_model=FilePublic)
async def upload_file(
    clients: ClientsDep,
    tenant: TenantDep,
    file: Annotated[UploadFile, File(description="The JSONL (or JSON / CSV) file")],
    purpose: Annotated[str, Form()],
) -> FilePublic:
    async def requests() -> AsyncIterator[dataprep_pb2.UploadFileRequest]:
        header = dataprep_pb2.UploadFileHeader(filename=file.filename or "", purpose=purpose)
        yield dataprep_pb2.UploadFileRequest(header=header)
        while chunk := await file.read(UPLOAD_CHUNK):
            yield dataprep_pb2.UploadFileRequest(data=chunk)

    response = await call("dataprep", clients.dataprep.UploadFile(requests(), **clients.options(tenant)))
    return public_file(response.file)


@router.get("", response_model=FilesPublic)
async def list_files(
    clients: ClientsDep,
    tenant: TenantDep,
    purpose: str = "",
    limit: Annotated[int, Query(ge=1, le=10_000)] = 10_000,
) -> FilesPublic:
    response = await call(
        "dataprep",
        clients.dataprep.ListFiles(dataprep_pb2.ListFilesRequest(purpose=purpose, limit=limit), **clients.options(tenant)),
    )
    return FilesPublic(data=[public_file(f) for f in response.files])


@router.get("/{file_id}", response_model=FilePublic)
async def retrieve_file(file_id: str, clients: ClientsDep, tenant: TenantDep) -> FilePublic:
    response = await call(
        "dataprep", clients.dataprep.GetFile(dataprep_pb2.GetFileRequest(file_id=file_id), **clients.options(tenant))
    )
    return public_file(response.file)


@router.delete("/{file_id}", response_model=FileDeleted)
async def delete_file(file_id: str, clients: ClientsDep, tenant: TenantDep) -> FileDeleted:
    response = await call(
        "dataprep",
        clients.dataprep.DeleteFile(dataprep_pb2.DeleteFileRequest(file_id=file_id), **clients.options(tenant)),
    )
    return FileDeleted(id=response.file_id, deleted=response.deleted)


@router.get("/{file_id}/content", response_class=StreamingResponse)
async def file_content(file_id: str, clients: ClientsDep, tenant: TenantDep) -> StreamingResponse:
    chunks = await stream(
        "dataprep",
        clients.dataprep.GetFileContent(dataprep_pb2.GetFileContentRequest(file_id=file_id), **clients.options(tenant)),
    )
    return StreamingResponse(chunks, media_type="application/octet-stream")
