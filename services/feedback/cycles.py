"""A retraining cycle's stages, moved on by the events of the services that do the work.

preparing (data-prep builds the set) -> training -> evaluating -> awaiting_promotion (the gate
passed; a deployment without auto-promote waits for a person) -> canary -> deployed. A cycle ends
early as `failed`: a step failed, or the gate rejected the candidate (the reason names its failed
rules, and production stays). A deployed cycle becomes `rolled_back` when its version is rolled back.
When a step fails for want of something (data-prep, a training job, an evaluation that could not
run), the batch is given back: its corrections wait for the next batch (after the cooldown) rather than
being lost. A batch the gate judged stays used: the verdict is the outcome. Events may come twice or out of order: a stage never
moves backwards and a finished cycle does not change (except deployed -> rolled_back).
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from services.feedback import store

ORDER = ("preparing", "training", "evaluating", "awaiting_promotion", "canary", "deployed")
FINAL = {"deployed", "failed", "rolled_back"}


async def advance(session: AsyncSession, cycle_id: str, stage: str, **values) -> bool:
    """Move a cycle to `stage` (recording `values`); False when it is unknown, finished or past it."""
    cycle = await store.find_cycle(session, cycle_id)
    if cycle is None or cycle["finished"]:
        return False
    if stage in ORDER and cycle["stage"] in ORDER and ORDER.index(stage) < ORDER.index(cycle["stage"]):
        known = {k: v for k, v in values.items() if v and not cycle[k]}  # learn ids an earlier event carried late
        if known:
            await store.update_cycle(session, cycle_id, **known)
        return False
    await store.update_cycle(session, cycle_id, stage=stage, finished=stage in FINAL, **values)
    return True


async def _failed_step(session: AsyncSession, cycle_id: str, reason: str, **values) -> None:
    cycle = await store.find_cycle(session, cycle_id)
    if cycle is None or cycle["finished"]:
        return
    given = await store.give_back(session, cycle["tenant"], cycle_id)
    await advance(session, cycle_id, "failed", reason=f"{reason}; its {given} feedback items wait for the next batch",
                  **values)


async def on_dataset(session: AsyncSession, cycle_id: str, dataset_id: str, file_id: str, error: str) -> None:
    if error:
        await _failed_step(session, cycle_id, f"data-prep could not build the retraining set: {error}",
                           dataset_id=dataset_id, file_id=file_id)
    else:
        await advance(session, cycle_id, "training", dataset_id=dataset_id, file_id=file_id)


async def on_training_requested(session: AsyncSession, cycle_id: str, job_id: str) -> None:
    await advance(session, cycle_id, "training", job_id=job_id)


async def on_training_completed(session: AsyncSession, cycle_id: str, job_id: str, candidate: str) -> None:
    await advance(session, cycle_id, "evaluating", job_id=job_id, candidate_version=candidate)


async def on_training_failed(session: AsyncSession, cycle_id: str, job_id: str, code: str, message: str) -> None:
    await _failed_step(session, cycle_id, f"training job {job_id or '(not created)'} failed: {code}: {message}",
                       job_id=job_id)


async def on_evaluation(session: AsyncSession, tenant: str, deployment: str, candidate: str, evaluation_id: str,
                        passed: bool, reason: str, error: str = "") -> None:
    cycle = await store.cycle_for_candidate(session, tenant, deployment, candidate)
    if cycle is None:
        return  # a candidate a person trained and evaluated: not the loop's
    if error:
        await _failed_step(session, cycle["id"], f"evaluation {evaluation_id} could not run: {error}",
                           evaluation_id=evaluation_id)
    elif passed:
        await advance(session, cycle["id"], "awaiting_promotion", evaluation_id=evaluation_id,
                      reason=f"evaluation {evaluation_id} passed the gate: {reason}")
    else:
        await advance(session, cycle["id"], "failed", evaluation_id=evaluation_id,
                      reason=f"the gate rejected the candidate (evaluation {evaluation_id}); production stays: "
                             f"{reason}")


async def on_deployed(session: AsyncSession, tenant: str, deployment: str, version: str, percent: int) -> None:
    cycle = await store.cycle_for_candidate(session, tenant, deployment, version)
    if cycle is None:
        return
    if percent >= 100:
        await advance(session, cycle["id"], "deployed", reason=f"{version} serves {deployment}")
    elif percent > 0:
        await advance(session, cycle["id"], "canary", reason=f"{version} serves {percent}% of {deployment}")


async def on_rolled_back(session: AsyncSession, tenant: str, deployment: str, from_version: str, reason: str) -> None:
    cycle = await store.cycle_for_candidate(session, tenant, deployment, from_version)
    if cycle is not None and cycle["stage"] in ("deployed", "canary"):
        await store.update_cycle(session, cycle["id"], stage="rolled_back", finished=True,
                                 reason=f"{from_version} was rolled back: {reason}")
