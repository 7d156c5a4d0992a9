"""The feedback service's calls to the inference service: the completion log, and rollbacks."""

from __future__ import annotations

import grpc

from protos import inference_pb2, inference_pb2_grpc
from services.feedback.loop import Completion
from services.shared.errors import Unavailable
from services.shared.rpc import error_from_rpc, open_channel, tenant_metadata
from services.shared.settings import Settings


class Inference:
    def __init__(self, settings: Settings, timeout_s: float):
        self._channel = open_channel(settings.inference_addr, settings)
        self._stub = inference_pb2_grpc.InferenceStub(self._channel)
        self._timeout_s = timeout_s

    async def _call(self, rpc, request, tenant: str):
        try:
            return await rpc(request, metadata=tenant_metadata(tenant), timeout=self._timeout_s)
        except grpc.aio.AioRpcError as error:
            mapped = error_from_rpc(error, service="inference")
            if error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise Unavailable(f"the completion log cannot be read now: {mapped.message}",
                                  code="inference_unavailable") from None
            raise mapped from None

    async def completion(self, tenant: str, completion_id: str) -> Completion:
        response = await self._call(self._stub.GetCompletion,
                                    inference_pb2.GetCompletionRequest(completion_id=completion_id), tenant)
        messages = [{"role": m.role, "content": m.content} for m in response.messages]
        if not messages and response.prompt:
            messages = [{"role": "user", "content": response.prompt}]
        return Completion(id=response.completion_id, model=response.model, deployment=response.deployment,
                          messages=messages, text=response.text, texts=response.texts)

    async def roll_back(self, tenant: str, deployment: str, version: str, reason: str) -> str:
        """Roll `deployment` back if it still serves `version` (a repeat after a crash does nothing)."""
        current = await self._call(self._stub.GetDeployment, inference_pb2.GetDeploymentRequest(name=deployment), tenant)
        if current.deployment.model_version != version:
            return f"{deployment} serves {current.deployment.model_version} already"
        response = await self._call(self._stub.RollbackDeployment,
                                    inference_pb2.RollbackDeploymentRequest(name=deployment, reason=reason), tenant)
        return f"rolled back from {version} to {response.deployment.model_version}"

    async def close(self) -> None:
        await self._channel.close()
