"""Where the public data sets are: one rule for every trainer.

`ASSISTANT_DATA_DIR` when set; otherwise `../shared/data` beside the checkout when it exists.
A user's machine has neither, and the trainers then ask for `--data`.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def default_data_dir() -> Path | None:
    env = os.environ.get("ASSISTANT_DATA_DIR")
    if env:
        return Path(env)
    beside = REPO_ROOT.parent / "shared" / "data"
    return beside if beside.is_dir() else None
