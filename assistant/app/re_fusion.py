"""Re-fusing stored profiles when the fusion model changes (`assistant re-fuse`).

Every profile is rebuilt from what is stored about its user, replayed in time order: each
run of behaviour events between two messages is one behaviour observation, each message is
a text observation with the events before it. Texts are encoded and observations fused in
large batches across users; the time-decayed update then runs per user, and the new vector
is written with the current model version and a snapshot whose reason is "refuse" (the value
stored since the first re-fuse, which operators' contribution trends show).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from tqdm import tqdm

from assistant.app.runtime import load_models
from assistant.app.settings import Settings
from fusion import FuseRequest, FuseResult, FusionRuntime, ProfileState
from profiles import EventRecord, ProfileUpdate, Store, TurnRecord


@dataclass(frozen=True, slots=True)
class Step:
    """One observation in a user's replayed history."""

    at: datetime
    text: str | None
    events: tuple[EventRecord, ...]  # the latest events up to `at`, oldest first


def replay_plan(
    turns: Sequence[TurnRecord], events: Sequence[EventRecord], max_events: int = 32
) -> list[Step]:
    """A user's history as the observations the live server would have made, in time order."""
    ordered_events = sorted(events, key=lambda e: (e.occurred_at, e.id))
    ordered_turns = sorted(turns, key=lambda t: t.created_at)
    steps: list[Step] = []
    seen = 0  # events up to here are in the profile already
    for turn in ordered_turns:
        upto = seen
        while upto < len(ordered_events) and ordered_events[upto].occurred_at <= turn.created_at:
            upto += 1
        if upto > seen:
            last = ordered_events[upto - 1]
            steps.append(Step(last.occurred_at, None, _window(ordered_events, upto, max_events)))
        steps.append(Step(turn.created_at, turn.text, _window(ordered_events, upto, max_events)))
        seen = upto
    if seen < len(ordered_events):
        last = ordered_events[-1]
        window = _window(ordered_events, len(ordered_events), max_events)
        steps.append(Step(last.occurred_at, None, window))
    return steps


def _window(events: Sequence[EventRecord], upto: int, max_events: int) -> tuple[EventRecord, ...]:
    return tuple(events[max(0, upto - max_events) : upto])


@dataclass(frozen=True, slots=True)
class ReFuseReport:
    users: int
    profiles: int
    observations: int
    model_version: str


async def re_fuse_profiles(
    store: Store,
    models: FusionRuntime,
    *,
    page: int = 256,
    batch: int = 256,
    progress: Callable[[int], None] | None = None,
) -> ReFuseReport:
    """Rebuild every stored profile with the loaded fusion model, `page` users at a time."""
    users = profiles = observations = 0
    after: str | None = None
    while ids := await store.list_user_ids(after=after, limit=page):
        after = ids[-1]
        plans: list[tuple[str, list[Step]]] = []
        for user_id in ids:
            turns = await store.list_user_turns(user_id)
            events = await store.list_events(user_id, limit=1_000_000)
            plans.append((user_id, replay_plan(turns, events, models.config.max_events)))
        steps = [step for _, plan in plans for step in plan]
        results = await asyncio.to_thread(_fuse_all, models, steps, batch)
        cursor = 0
        for user_id, plan in plans:
            state: ProfileState | None = None
            previous_at: datetime | None = None
            for step in plan:
                dt_s = (step.at - previous_at).total_seconds() if previous_at else 0.0
                state = models.update_profile(state, results[cursor], dt_s)
                previous_at = step.at
                cursor += 1
            if state is not None:
                await store.apply_profile(
                    user_id,
                    ProfileUpdate(
                        vector=state.vector,
                        model_version=models.model_version,
                        reason="refuse",
                        modality_contributions=state.contributions,
                    ),
                )
                profiles += 1
        users += len(ids)
        observations += len(steps)
        if progress is not None:
            progress(len(ids))
    return ReFuseReport(users, profiles, observations, models.model_version)


def _fuse_all(models: FusionRuntime, steps: Sequence[Step], batch: int) -> list[FuseResult]:
    """Blocking: big batches straight into the models, not through the live micro-batchers."""
    texts = [s.text for s in steps if s.text is not None]
    encoded = [
        vector
        for start in range(0, len(texts), batch)
        for vector in models.text_encoder.encode(texts[start : start + batch])
    ]
    vectors = iter(encoded)
    requests = [
        FuseRequest(next(vectors) if s.text is not None else None, None, s.events, s.at)
        for s in steps
    ]
    results: list[FuseResult] = []
    for start in range(0, len(requests), batch):
        results.extend(models.fusion.fuse_many(requests[start : start + batch]))
    return results


async def re_fuse_all(store: Store, models: FusionRuntime, *, page: int = 256) -> ReFuseReport:
    """`re_fuse_profiles` with a progress bar over users, for the command line."""
    total = await store.count_users()
    with tqdm(total=total, desc="re-fusing profiles", unit="user") as bar:
        return await re_fuse_profiles(store, models, page=page, batch=page, progress=bar.update)


async def re_fuse_database(settings: Settings) -> ReFuseReport:
    """Rebuild every stored profile with the shipped fusion model (`assistant re-fuse`)."""
    models = load_models(settings)
    store = Store.open(settings.db_url)
    try:
        return await re_fuse_all(store, models)
    finally:
        await store.close()
