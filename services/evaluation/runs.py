"""Evaluations as the service runs them: asked for, queued, run one at a time, stored, announced.

A run resolves its three models (the candidate; the baseline: as asked, else the deployment's
production version, else the candidate's base model; the base model, from the registry), reads its
held-out examples (a dataset's validation split from data-prep, or a chat file), has every model
answer through the inference service, and stores the report. The verdict goes out as
`evaluation.completed` through the outbox in the same transaction, so the inference service
promotes a passed candidate when its deployment says so. Queued and running evaluations are run
again after a restart: nothing accepted is lost.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import secrets
import time

import grpc
from pydantic import ValidationError

from protos import (
    common_pb2,
    dataprep_pb2,
    dataprep_pb2_grpc,
    events_pb2,
    inference_pb2,
    inference_pb2_grpc,
    training_pb2,
    training_pb2_grpc,
)
from services.evaluation import human, store
from services.evaluation.gate import GatePolicy
from services.evaluation.judge import Judge
from services.evaluation.metrics import TEXT_METRICS, check_metric_names
from services.evaluation.settings import EvaluationSettings
from services.evaluation.side_by_side import Example, run_side_by_side
from services.shared.bus import new_envelope
from services.shared.errors import FailedPrecondition, InvalidArgument, NotFound, TuneloopError
from services.shared.outbox import add_to_outbox
from services.shared.process import Runtime
from services.shared.rpc import error_from_rpc, tenant_metadata
from services.shared.subjects import EVALUATION_COMPLETED

log = logging.getLogger(__name__)
PERPLEXITY = "perplexity"  # asked for with the metrics; computed from the models' own probabilities


class EvaluationFailed(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code, self.message = code, message


class Runs:
    def __init__(self, runtime: Runtime, inference: inference_pb2_grpc.InferenceStub,
                 registry: training_pb2_grpc.TrainingStub, dataprep: dataprep_pb2_grpc.DataPrepStub):
        self._runtime = runtime
        self._settings: EvaluationSettings = runtime.settings  # type: ignore[assignment]
        self._inference = inference
        self._registry = registry
        self._dataprep = dataprep
        self._wake = asyncio.Event()
        settings = self._settings
        self._judge = (Judge(settings.judge_base_url, settings.judge_model, settings.judge_api_key.get_secret_value())
                       if settings.judge_base_url else None)

    # ---- the API ----------------------------------------------------------------------------------

    async def start(self, tenant: str, *, candidate: str, baseline: str = "", deployment: str = "",
                    dataset_id: str = "", dataset_split: str = "", file_id: str = "",
                    metrics: list[str] | None = None, policy_json: str = "", idempotency_key: str = "",
                    max_tokens: int = 0, judge: bool = False) -> store.EvaluationRecord:
        """Check the request (the models with the registry), store it queued, and wake the worker."""
        if not candidate:
            raise InvalidArgument("candidate is required: the model version under test", param="candidate")
        if bool(dataset_id) == bool(file_id):
            raise InvalidArgument("give exactly one of dataset_id (its validation split is used) or file_id",
                                  param="dataset_id")
        if dataset_split not in ("", "validation", "train"):
            raise InvalidArgument("dataset_split must be validation or train", param="dataset_split")
        wanted = list(metrics or [])
        names = check_metric_names([m for m in wanted if m != PERPLEXITY]) or list(TEXT_METRICS)
        if PERPLEXITY in wanted:
            names.append(PERPLEXITY)
        policy = parse_policy(policy_json) if policy_json else None
        if not 0 <= max_tokens <= self._settings.max_answer_tokens:
            raise InvalidArgument(f"max_tokens must be between 1 and {self._settings.max_answer_tokens}",
                                  param="max_tokens")
        if judge and self._judge is None:
            raise FailedPrecondition("no judge model is configured: set TUNELOOP_JUDGE_BASE_URL, TUNELOOP_JUDGE_MODEL "
                                     "and TUNELOOP_JUDGE_API_KEY for the evaluation service", param="judge",
                                     code="judge_not_configured")
        for model, param in ((candidate, "candidate"), (baseline, "baseline")):
            if model:
                await self._check_model(tenant, model, param)
        async with self._runtime.db.transaction() as session:
            if policy is None:
                policy = await self.policy_for(session, tenant, deployment)
            record = await self.enqueue(session, tenant, candidate=candidate, baseline=baseline, deployment=deployment,
                                        dataset_id=dataset_id, dataset_split=dataset_split or "validation",
                                        file_id=file_id, metrics=names, policy=policy,
                                        idempotency_key=idempotency_key, max_tokens=max_tokens, judge=judge)
        self._wake.set()
        return record

    async def enqueue(self, session, tenant: str, *, candidate: str, baseline: str, deployment: str, dataset_id: str,
                      dataset_split: str, file_id: str, metrics: list[str], policy: GatePolicy, idempotency_key: str,
                      max_tokens: int, judge: bool = False) -> store.EvaluationRecord:
        """Store a checked evaluation, queued (the one already stored under `idempotency_key`, if any)."""
        if idempotency_key and (found := await store.by_key(session, tenant, idempotency_key)):
            return found
        return await store.add(
            session, id=f"eval-{secrets.token_hex(12)}", tenant=tenant, candidate=candidate, baseline=baseline,
            deployment=deployment, dataset_id=dataset_id, dataset_split=dataset_split, file_id=file_id,
            metrics=json.dumps(metrics), policy=policy.model_dump_json(),
            max_tokens=max_tokens or self._settings.answer_tokens, judge=judge, idempotency_key=idempotency_key or None)

    async def policy_for(self, session, tenant: str, deployment: str) -> GatePolicy:
        """The deployment's own gate policy, else the default."""
        found = await store.policy(session, tenant, deployment) if deployment else None
        return GatePolicy.model_validate_json(found[0]) if found else GatePolicy()

    async def set_policy(self, tenant: str, deployment: str, policy_json: str) -> tuple[GatePolicy, int]:
        if not deployment:
            raise InvalidArgument("deployment is required", param="deployment")
        policy = parse_policy(policy_json or "{}")
        async with self._runtime.db.transaction() as session:
            updated = await store.set_policy(session, tenant, deployment, policy.model_dump_json())
        return policy, updated

    async def get_policy(self, tenant: str, deployment: str) -> tuple[GatePolicy, bool, int]:
        async with self._runtime.db.transaction() as session:
            found = await store.policy(session, tenant, deployment)
        if found is None:
            return GatePolicy(), False, 0
        return GatePolicy.model_validate_json(found[0]), True, found[1]

    def wake(self) -> None:
        self._wake.set()

    async def _check_model(self, tenant: str, model: str, param: str) -> None:
        """A model the registry knows for this tenant, or NOT_FOUND naming `param`."""
        try:
            await self._registry.GetModel(training_pb2.GetModelRequest(model_id=model),
                                          metadata=tenant_metadata(tenant), timeout=self._settings.call_timeout_s)
        except grpc.aio.AioRpcError as error:
            mapped = error_from_rpc(error, service="training")
            if isinstance(mapped, NotFound):
                raise NotFound(f"{param}: {mapped.message}", param=param, code="model_not_found") from None
            raise mapped from None

    async def get(self, tenant: str, evaluation_id: str) -> store.EvaluationRecord:
        async with self._runtime.db.transaction() as session:
            record = await store.get(session, tenant, evaluation_id)
        if record is None:
            raise NotFound(f"No evaluation {evaluation_id!r}", param="evaluation_id", code="evaluation_not_found")
        return record

    async def list(self, tenant: str, limit: int) -> list[store.EvaluationRecord]:
        if not 0 <= limit <= 100:
            raise InvalidArgument("limit must be between 1 and 100", param="limit")
        async with self._runtime.db.transaction() as session:
            return await store.list_for(session, tenant, limit or 20)

    async def export_review(self, tenant: str, evaluation_id: str, *, size: int, fmt: str,
                            seed: int) -> tuple[str, int, bytes]:
        """(review id, items, file) of a blind sample of a completed evaluation."""
        if fmt not in ("", "csv", "jsonl"):
            raise InvalidArgument("format must be csv or jsonl", param="format")
        if not 0 <= size <= 500:
            raise InvalidArgument("size must be between 1 and 500", param="size")
        record = await self.get(tenant, evaluation_id)
        if record.status != store.COMPLETED or not record.report:
            raise FailedPrecondition(f"evaluation {evaluation_id} is {record.status}; only a completed one has "
                                     "answers to review", param="evaluation_id", code="evaluation_not_completed")
        key, content = human.export(json.loads(record.report), size=size or 50, seed=seed, fmt=fmt or "csv")
        review_id = f"review-{secrets.token_hex(8)}"
        async with self._runtime.db.transaction() as session:
            await store.add_review(session, id=review_id, tenant=tenant, evaluation_id=evaluation_id,
                                   key=json.dumps(key))
        return review_id, len(key), content

    async def import_review(self, tenant: str, evaluation_id: str, review_id: str, *, fmt: str,
                            content: bytes) -> tuple[int, dict]:
        """(rated rows, summary) of the experts' ratings; a file with a fault stores nothing."""
        if fmt not in ("csv", "jsonl"):
            raise InvalidArgument("format must be csv or jsonl", param="format")
        record = await self.get(tenant, evaluation_id)
        async with self._runtime.db.transaction() as session:
            review = await store.review(session, tenant, evaluation_id, review_id)
        if review is None or not record.report:
            raise NotFound(f"No review {review_id!r} of evaluation {evaluation_id}", param="review_id",
                           code="review_not_found")
        key = json.loads(review["key"])
        ratings = human.parse_ratings(content, fmt, key)
        summary = human.summarise(ratings, key, json.loads(record.report))
        async with self._runtime.db.transaction() as session:
            await store.save_review_summary(session, review_id, json.dumps(summary))
        return len(ratings), summary

    async def human_summary(self, tenant: str, evaluation_id: str) -> dict | None:
        async with self._runtime.db.transaction() as session:
            found = await store.latest_summary(session, tenant, evaluation_id)
        return json.loads(found) if found else None

    # ---- the worker -------------------------------------------------------------------------------

    async def work(self, stopping: asyncio.Event) -> None:
        """Run unfinished evaluations, oldest first, until `stopping` is set."""
        while not stopping.is_set():
            self._wake.clear()
            async with self._runtime.db.transaction() as session:
                pending = await store.unfinished(session)
            for record in pending:
                if stopping.is_set():
                    return
                await self._run(record)
            if not pending:
                waiting = asyncio.ensure_future(self._wake.wait())
                stop = asyncio.ensure_future(stopping.wait())
                # Woken by a new request; and now and then anyway, for rows another transaction adds.
                await asyncio.wait({waiting, stop}, timeout=self._settings.poll_s, return_when=asyncio.FIRST_COMPLETED)
                waiting.cancel()
                stop.cancel()

    async def _run(self, record: store.EvaluationRecord) -> None:
        started_at = store.now()
        latest = {"done": 0, "total": 0}  # answers received, of how many
        async with self._runtime.db.transaction() as session:
            await store.update(session, record.id, status=store.RUNNING)
        try:
            base, baseline = await self._models(record)
            examples = await self._examples(record)
            async with self._runtime.db.transaction() as session:
                await store.update(session, record.id, base_model=base, baseline=baseline)
            last_saved = 0.0
            saving: set[asyncio.Task] = set()  # held, so a pending write is not garbage-collected

            def progress(done: int, total: int) -> None:
                nonlocal last_saved
                latest.update(done=done, total=total)
                if done == total or time.monotonic() - last_saved > 1:
                    last_saved = time.monotonic()
                    task = asyncio.ensure_future(self._progress(record.id, done, total))
                    saving.add(task)
                    task.add_done_callback(saving.discard)

            metrics = json.loads(record.metrics)
            result = await run_side_by_side(
                examples, base=base, production=baseline, candidate=record.candidate,
                answer=lambda model, chat: self._answer(record, model, chat),
                metrics=[m for m in metrics if m != PERPLEXITY],
                policy=GatePolicy.model_validate_json(record.policy), concurrency=self._settings.concurrency,
                progress=progress, grade=self._grade if record.judge else None)
            perplexity = (await self._perplexity(record, result) if PERPLEXITY in metrics else None)
            await asyncio.gather(*saving, return_exceptions=True)  # no late write undoes the last one
        except EvaluationFailed as failure:
            await self._fail(record, failure.code, failure.message)
            return
        except TuneloopError as error:
            await self._fail(record, error.code or "evaluation_failed", error.message)
            return
        except Exception as error:  # noqa: BLE001 - a bug or an outage fails this evaluation, not the worker
            log.exception("evaluation %s failed", record.id)
            await self._fail(record, "evaluation_failed", f"{type(error).__name__}: {error}")
            return
        verdict = result.verdict
        report = result.to_dict()
        report["cost"] = await self._cost(record, result, started_at)
        report["perplexity"] = perplexity
        async with self._runtime.db.transaction() as session:
            await store.update(session, record.id, status=store.COMPLETED, completed_at=store.now(),
                               passed=verdict.passed, reason=verdict.reason, report=json.dumps(report),
                               progress_done=latest["done"], progress_total=latest["total"])
            await add_to_outbox(session, self._runtime.tables, new_envelope(
                EVALUATION_COMPLETED,
                events_pb2.EvaluationCompleted(evaluation_id=record.id, candidate_version=record.candidate,
                                               baseline_version=baseline, deployment=record.deployment,
                                               passed=verdict.passed, reason=verdict.reason,
                                               rules=[events_pb2.GateRule(name=r.name, passed=r.passed,
                                                                          measured=r.measured, threshold=r.threshold,
                                                                          detail=r.detail) for r in verdict.rules]),
                source="evaluation", tenant=record.tenant))
        self._runtime.relay.poke()
        log.info("evaluation %s: %s (%s)", record.id, "passed" if verdict.passed else "failed", verdict.reason)

    async def _perplexity(self, record: store.EvaluationRecord, result) -> dict:
        """Per model: the mean loss per token of the reference answers, and its exponential."""
        limit = asyncio.Semaphore(self._settings.concurrency)

        async def scored(model: str, example: Example) -> tuple[float, int]:
            request = inference_pb2.ScoreRequest(model=model, answer=example.reference, messages=[
                common_pb2.ChatMessage(role=role, content=content) for role, content in example.messages])
            async with limit:
                response = await self._call("inference", self._inference.Score, request, record.tenant)
            return response.logprob, response.tokens

        found = {}
        for model in dict.fromkeys(result.models.values()):
            pairs = await asyncio.gather(*(scored(model, example) for example in result.examples if example.reference))
            tokens = sum(count for _, count in pairs)
            loss = -sum(logprob for logprob, _ in pairs) / tokens if tokens else None
            found[model] = {"loss": loss, "perplexity": math.exp(min(loss, 700)) if loss is not None else None,
                            "tokens": tokens}
        return found

    async def _grade(self, question: str, reference: str, answer: str) -> dict | None:
        if self._judge is None:
            raise EvaluationFailed("judge_not_configured", "the judge model is no longer configured")
        return await asyncio.to_thread(self._judge.grade, question, reference, answer)

    async def _cost(self, record: store.EvaluationRecord, result, since: int) -> dict:
        """Is it worth it: the primary metric's gain beside what training cost (the job's trained
        tokens at `training_price_per_1k_tokens`) and what serving costs per 1K tokens (from the
        completion log, over this evaluation's own answers). What cannot be known is left out, with why."""
        primary = result.policy.primary_metric
        gain = result.gain[0]
        cost: dict = {"primary_metric": primary, "gain": gain, "training": None, "serving": {}}
        if record.candidate.startswith("ft:"):
            job_id = record.candidate.rsplit(":", 1)[-1]
            try:
                job = (await self._call("training", self._registry.GetJob, training_pb2.GetJobRequest(job_id=job_id),
                                        record.tenant)).job
                price = self._settings.training_price_per_1k_tokens
                training_usd = job.trained_tokens / 1000 * price
                cost["training"] = {"job_id": job_id, "trained_tokens": job.trained_tokens,
                                    "price_per_1k_tokens": price, "cost_usd": training_usd,
                                    "gain_per_usd": gain / training_usd if training_usd else None}
            except EvaluationFailed as failure:
                cost["training"] = {"job_id": job_id, "unknown": failure.message}
        try:
            usage = (await self._call("inference", self._inference.GetUsage, inference_pb2.GetUsageRequest(
                models=list(dict.fromkeys(result.models.values())), since=since), record.tenant)).usage
        except EvaluationFailed as failure:
            cost["serving"] = {"unknown": failure.message}
            return cost
        for row in usage:
            tokens = row.prompt_tokens + row.completion_tokens
            cost["serving"][row.model] = {"completions": row.completions, "tokens": tokens, "cost_usd": row.cost_usd,
                                          "cost_per_1k_tokens": row.cost_usd / tokens * 1000 if tokens else None}
        return cost

    async def _progress(self, evaluation_id: str, done: int, total: int) -> None:
        async with self._runtime.db.transaction() as session:
            await store.update(session, evaluation_id, progress_done=done, progress_total=total)

    async def _fail(self, record: store.EvaluationRecord, code: str, message: str) -> None:
        """The run could not finish. One for a deployment still announces itself (passed false, with
        the error), so whoever waits on the verdict, the feedback loop's cycle, learns why."""
        log.warning("evaluation %s failed: %s", record.id, message)
        async with self._runtime.db.transaction() as session:
            await store.update(session, record.id, status=store.FAILED, completed_at=store.now(), error_code=code,
                               error_message=message)
            if record.deployment:
                await add_to_outbox(session, self._runtime.tables, new_envelope(
                    EVALUATION_COMPLETED,
                    events_pb2.EvaluationCompleted(evaluation_id=record.id, candidate_version=record.candidate,
                                                   deployment=record.deployment, passed=False,
                                                   reason=f"the evaluation could not run: {message}",
                                                   error=f"{code}: {message}"),
                    source="evaluation", tenant=record.tenant))
        if record.deployment:
            self._runtime.relay.poke()

    # ---- what a run needs from the other services ---------------------------------------------------

    async def _call(self, service: str, rpc, request, tenant: str):
        try:
            return await rpc(request, metadata=tenant_metadata(tenant), timeout=self._settings.call_timeout_s)
        except grpc.aio.AioRpcError as error:
            mapped = error_from_rpc(error, service=service)
            raise EvaluationFailed(mapped.code or "evaluation_failed", f"{service}: {mapped.message}") from None

    async def _models(self, record: store.EvaluationRecord) -> tuple[str, str]:
        """(base model, baseline) of the evaluation."""
        base = record.candidate
        if record.candidate.startswith("ft:"):
            found = await self._call("training", self._registry.GetModel,
                                     training_pb2.GetModelRequest(model_id=record.candidate), record.tenant)
            base = found.model.base_model
        baseline = record.baseline
        if not baseline and record.deployment:
            found = await self._call("inference", self._inference.GetDeployment,
                                     inference_pb2.GetDeploymentRequest(name=record.deployment), record.tenant)
            baseline = found.deployment.model_version
        return base, baseline or base

    async def _examples(self, record: store.EvaluationRecord) -> list[Example]:
        if record.dataset_id:
            stream = self._dataprep.GetDatasetContent(
                dataprep_pb2.GetDatasetContentRequest(dataset_id=record.dataset_id, split=record.dataset_split),
                metadata=tenant_metadata(record.tenant), timeout=self._settings.call_timeout_s)
            where = f"dataset {record.dataset_id} ({record.dataset_split} split)"
        else:
            stream = self._dataprep.GetFileContent(dataprep_pb2.GetFileContentRequest(file_id=record.file_id),
                                                   metadata=tenant_metadata(record.tenant),
                                                   timeout=self._settings.call_timeout_s)
            where = f"file {record.file_id}"
        try:
            data = b"".join([chunk.data async for chunk in stream])
        except grpc.aio.AioRpcError as error:
            mapped = error_from_rpc(error, service="dataprep")
            raise EvaluationFailed(mapped.code or "invalid_examples", f"{where}: {mapped.message}") from None
        examples = []
        for number, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), start=1):
            if line.strip():
                examples.append(_example(line, number, where))
        if not examples:
            raise EvaluationFailed("invalid_examples", f"{where} holds no examples")
        if len(examples) > self._settings.max_examples:
            raise EvaluationFailed("invalid_examples", f"{where} holds {len(examples)} examples; at most "
                                   f"{self._settings.max_examples} are evaluated at once")
        return examples

    async def _answer(self, record: store.EvaluationRecord, model: str, chat: list[dict[str, str]]) -> str:
        request = inference_pb2.GenerateRequest(
            model=model, max_tokens=record.max_tokens, temperature=0,
            messages=[common_pb2.ChatMessage(role=m["role"], content=m["content"]) for m in chat])
        response = await self._call("inference", self._inference.Generate, request, record.tenant)
        return response.text


def parse_policy(policy_json: str) -> GatePolicy:
    """A GatePolicy from JSON, or INVALID_ARGUMENT naming the field at fault."""
    try:
        return GatePolicy.model_validate_json(policy_json)
    except ValidationError as error:
        first = error.errors()[0]
        raise InvalidArgument(f"policy: {'.'.join(map(str, first['loc'])) or 'policy'}: {first['msg']}",
                              param="policy") from None


def _example(line: str, number: int, where: str) -> Example:
    """A chat example whose last message is the reference answer, or the reason it is not one."""
    try:
        record = json.loads(line)
        messages = record["messages"]
        if not isinstance(messages, list) or len(messages) < 2 or messages[-1].get("role") != "assistant":
            raise ValueError("messages must end with the assistant's answer, which is the reference")
        if not all(isinstance(m, dict) and isinstance(m.get("content"), str) for m in messages):
            raise ValueError("each message needs a string content")
        return Example.from_chat(record)
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        detail = "no messages list" if isinstance(error, KeyError | TypeError) else str(error)
        raise EvaluationFailed("invalid_examples", f"{where}, line {number}: {detail}") from None
