"""The model registry over gRPC: base models from the model store."""

import grpc
import pytest

from protos import training_pb2, training_pb2_grpc
from services.training.server import DEFINITION
from tests.fixtures.services import call_metadata, running, service_settings


@pytest.fixture
def settings(tmp_path, nats_url, tiny_model_dir):
    return service_settings(DEFINITION, tmp_path=tmp_path, database_url=f"sqlite:///{tmp_path / 't.db'}",
                            nats_url=nats_url, base_models={"tiny-llama": tiny_model_dir})


async def test_lists_the_default_and_configured_base_models(settings):
    async with running(DEFINITION, settings) as (_service, channel):
        stub = training_pb2_grpc.TrainingStub(channel)
        models = (await stub.ListModels(training_pb2.ListModelsRequest(), metadata=call_metadata())).models
        tiny = (await stub.GetModel(training_pb2.GetModelRequest(model_id="tiny-llama"), metadata=call_metadata())).model
    assert [m.id for m in models] == ["smollm2-135m-instruct", "tiny-llama"]
    assert all(m.kind == "base" and m.owned_by == "tuneloop" for m in models)
    assert tiny.available and tiny.created > 0


@pytest.mark.parametrize("model_id", ["gpt-9", "../../etc", "ft:tiny-llama:acme:x:ftjob-1"])
async def test_unknown_model_ids_are_not_found(settings, model_id):
    async with running(DEFINITION, settings) as (_service, channel):
        stub = training_pb2_grpc.TrainingStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await stub.GetModel(training_pb2.GetModelRequest(model_id=model_id), metadata=call_metadata())
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    assert dict(error.value.trailing_metadata())["x-tuneloop-error-param"] == "model"
