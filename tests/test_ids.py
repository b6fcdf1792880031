"""Row ids: random version 4 UUIDs as hex, unique across threads and forked processes."""

from __future__ import annotations

import os
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from profiles.models import new_id


def test_ids_are_version_4_uuids_in_hex() -> None:
    ids = [new_id() for _ in range(2000)]  # several refills of the pool
    assert len(set(ids)) == len(ids)
    for value in ids[:50]:
        parsed = uuid.UUID(value)
        assert (len(value), parsed.hex, parsed.version, parsed.variant) == (
            32,
            value,
            4,
            uuid.RFC_4122,
        )


def test_threads_never_share_an_id() -> None:
    with ThreadPoolExecutor(max_workers=4) as pool:
        batches = list(pool.map(lambda _: [new_id() for _ in range(500)], range(8)))
    ids = [i for batch in batches for i in batch]
    assert len(set(ids)) == len(ids)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_does_not_repeat_its_parents_ids() -> None:
    new_id()  # the pool now holds ids the parent has not used yet
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        os.close(read)
        os.write(write, "".join(new_id() for _ in range(4)).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        theirs = pipe.read()
    os.waitpid(child, 0)
    ours = [new_id() for _ in range(4)]
    assert len(theirs) == 4 * 32
    assert not {theirs[i : i + 32] for i in range(0, len(theirs), 32)} & set(ours)
