"""Out-of-scope negatives for a pack's intent head: what customers say that no intent of
the pack covers.

With the data folder (`--data` or `ASSISTANT_DATA_DIR`) holding CLINC150, its oos
utterances (Larson et al. 2019, CC BY 3.0) are the negatives: `oos_train` (100) trains the
out-of-scope class, `oos_val` (100) sets the temperature and threshold, `oos_test` (1,000)
is only scored. Without it the head is trained on the pack's intents alone and out of scope
is decided by the confidence threshold, chosen on the intents' out-of-fold predictions
(docs/domains.md); no out-of-scope recall is measured then.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fusion.training.data import default_data_dir, load_clinc_oos

__all__ = ["Negatives", "load_negatives"]

CLINC_FILE = Path("clinc150") / "data" / "data_full.json"


@dataclass(frozen=True, slots=True)
class Negatives:
    source: str  # what they are, for the model card
    train: tuple[str, ...] = ()
    val: tuple[str, ...] = ()
    test: tuple[str, ...] = ()


NONE = Negatives("none: out of scope is decided by the confidence threshold alone")


def load_negatives(data_dir: Path | None) -> Negatives:
    """CLINC150's oos splits from `data_dir` (else the default data folder), or none."""
    folder = data_dir or default_data_dir()
    if folder is None or not (folder / CLINC_FILE).is_file():
        return NONE
    return Negatives(
        "CLINC150 oos utterances (Larson et al. 2019, CC BY 3.0)",
        load_clinc_oos(folder, "oos_train"),
        load_clinc_oos(folder, "oos_val"),
        load_clinc_oos(folder, "oos_test"),
    )
