"""`/v1/datasets`: prepare a dataset from an uploaded file, follow it, read its report and content."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse
from google.protobuf import json_format
from pydantic import BaseModel, ConfigDict, Field

from gateway.clients import call, stream
from gateway.deps import ClientsDep, TenantDep
from gateway.errors import ERROR_RESPONSES
from gateway.routers.files import FilePublic, public_file
from protos import dataprep_pb2

router = APIRouter(prefix="/v1/datasets", tags=["datasets"], responses=ERROR_RESPONSES)


class DatasetOptions(BaseModel):
    """How to prepare; every field is optional and has the default the API reference names."""

    model_config = ConfigDict(extra="forbid")

    format: Literal["chat", "alpaca", "preference", "csv"] | None = None
    validation_fraction: float | None = Field(default=None, ge=0, lt=1)
    seed: int = 0
    drop_invalid: bool = False
    anonymize_pii: bool | None = None
    pii_entities: list[str] = []
    pii_placeholders: dict[str, str] = {}
    pii_detector: Literal["ner", "regex"] | None = None
    near_duplicate_threshold: float | None = Field(default=None, gt=0, le=1)
    base_model: str | None = None
    n_epochs: int | None = Field(default=None, ge=1, le=50)
    price_per_1k_tokens: float | None = Field(default=None, ge=0)
    review_sample_size: int | None = Field(default=None, ge=0, le=1000)

    def to_message(self) -> dataprep_pb2.PrepareOptions:
        values = self.model_dump(exclude_none=True)
        return json_format.ParseDict(values, dataprep_pb2.PrepareOptions())


class DatasetCreate(DatasetOptions):
    file_id: str


class TeacherModel(BaseModel):
    """An OpenAI-compatible endpoint: a hosted model, or tuneloop's own gateway."""

    model_config = ConfigDict(extra="forbid")

    base_url: str
    api_key: str = ""
    model: str


class SyntheticCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seed_file_id: str
    count: int = Field(ge=1, le=10_000)
    teacher: TeacherModel
    instructions: str = ""
    temperature: float = Field(default=0.8, ge=0, le=2)
    options: DatasetOptions = DatasetOptions()


class DatasetPublic(BaseModel):
    id: str
    object: Literal["dataset"] = "dataset"
    status: str
    file_id: str
    created_at: int
    finished_at: int | None
    format: str | None
    train_examples: int
    validation_examples: int
    lines_processed: int
    error: str | None
    options: dict[str, Any]


class DatasetsPublic(BaseModel):
    object: Literal["list"] = "list"
    data: list[DatasetPublic]


class ReportPublic(BaseModel):
    object: Literal["dataset.report"] = "dataset.report"
    dataset_id: str
    report: dict[str, Any]


def public_dataset(dataset: dataprep_pb2.Dataset) -> DatasetPublic:
    return DatasetPublic(
        id=dataset.id,
        status=dataset.status,
        file_id=dataset.file_id,
        created_at=dataset.created_at,
        finished_at=dataset.finished_at or None,
        format=dataset.format or None,
        train_examples=dataset.train_examples,
        validation_examples=dataset.validation_examples,
        lines_processed=dataset.lines_processed,
        error=dataset.error or None,
        options=json_format.MessageToDict(dataset.options, preserving_proto_field_name=True),
    )


@router.post("", response_model=DatasetPublic)
async def prepare_dataset(body: DatasetCreate, clients: ClientsDep, tenant: TenantDep) -> DatasetPublic:
    options = DatasetOptions(**body.model_dump(exclude={"file_id"})).to_message()
    response = await call(
        "dataprep",
        clients.dataprep.PrepareDataset(
            dataprep_pb2.PrepareDatasetRequest(file_id=body.file_id, options=options), **clients.options(tenant)
        ),
    )
    return public_dataset(response.dataset)


class SyntheticPublic(BaseModel):
    object: Literal["dataset.synthetic"] = "dataset.synthetic"
    generated: int
    file: FilePublic
    dataset: DatasetPublic


@router.post("/synthetic", response_model=SyntheticPublic)
async def generate_synthetic(body: SyntheticCreate, clients: ClientsDep, tenant: TenantDep) -> SyntheticPublic:
    """Ask a teacher model for examples like the seed file's, then prepare them as a dataset."""
    request = dataprep_pb2.GenerateSyntheticRequest(
        seed_file_id=body.seed_file_id,
        count=body.count,
        teacher_base_url=body.teacher.base_url,
        teacher_api_key=body.teacher.api_key,
        teacher_model=body.teacher.model,
        instructions=body.instructions,
        temperature=body.temperature,
        options=body.options.to_message(),
    )
    response = await call("dataprep", clients.dataprep.GenerateSynthetic(request, **clients.options(tenant)))
    return SyntheticPublic(
        generated=response.generated, file=public_file(response.file), dataset=public_dataset(response.dataset)
    )


@router.get("", response_model=DatasetsPublic)
async def list_datasets(
    clients: ClientsDep, tenant: TenantDep, limit: Annotated[int, Query(ge=1, le=10_000)] = 100
) -> DatasetsPublic:
    response = await call(
        "dataprep",
        clients.dataprep.ListDatasets(dataprep_pb2.ListDatasetsRequest(limit=limit), **clients.options(tenant)),
    )
    return DatasetsPublic(data=[public_dataset(d) for d in response.datasets])


@router.get("/{dataset_id}", response_model=DatasetPublic)
async def retrieve_dataset(dataset_id: str, clients: ClientsDep, tenant: TenantDep) -> DatasetPublic:
    response = await call(
        "dataprep",
        clients.dataprep.GetDataset(dataprep_pb2.GetDatasetRequest(dataset_id=dataset_id), **clients.options(tenant)),
    )
    return public_dataset(response.dataset)


@router.get("/{dataset_id}/report", response_model=ReportPublic)
async def dataset_report(dataset_id: str, clients: ClientsDep, tenant: TenantDep) -> ReportPublic:
    response = await call(
        "dataprep",
        clients.dataprep.GetReport(dataprep_pb2.GetReportRequest(dataset_id=dataset_id), **clients.options(tenant)),
    )
    return ReportPublic(dataset_id=response.dataset_id, report=json_format.MessageToDict(response.report))


@router.get("/{dataset_id}/review_sample", response_class=StreamingResponse)
async def review_sample(
    dataset_id: str,
    clients: ClientsDep,
    tenant: TenantDep,
    size: Annotated[int, Query(ge=1, le=1000)] = 50,
    format: Literal["jsonl", "csv"] = "jsonl",
) -> StreamingResponse:
    chunks = await stream(
        "dataprep",
        clients.dataprep.ExportReviewSample(
            dataprep_pb2.ExportReviewSampleRequest(dataset_id=dataset_id, size=size, format=format),
            **clients.options(tenant),
        ),
    )
    media = "text/csv" if format == "csv" else "application/jsonl"
    return StreamingResponse(chunks, media_type=media)


@router.get("/{dataset_id}/content", response_class=StreamingResponse)
async def dataset_content(
    dataset_id: str, clients: ClientsDep, tenant: TenantDep, split: Literal["train", "validation"] = "train"
) -> StreamingResponse:
    chunks = await stream(
        "dataprep",
        clients.dataprep.GetDatasetContent(
            dataprep_pb2.GetDatasetContentRequest(dataset_id=dataset_id, split=split), **clients.options(tenant)
        ),
    )
    return StreamingResponse(chunks, media_type="application/jsonl")
