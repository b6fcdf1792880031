"""Run Alembic from code: `assistant migrate` and the tests use these."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from alembic import command
from alembic.config import Config

_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True, slots=True)
class UpgradeReport:
    """What an upgrade did to stored data. `history_reordered`: how many stored conversations
    revision 0004 put in the order they were said (None when it did not run now)."""

    history_reordered: int | None = None


def alembic_config(url: str) -> Config:
    config = Config(str(_ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(_ROOT / "migrations"))
    config.attributes["db_url"] = url
    config.attributes["configure_logging"] = False
    return config


def upgrade(url: str, revision: str = "head") -> UpgradeReport:
    """Bring the database at `url` to `revision`. Blocking: call it off the event loop."""
    config = alembic_config(url)
    command.upgrade(config, revision)
    # The revisions that touch stored data leave their counts in the config's attributes.
    return UpgradeReport(history_reordered=config.attributes.get("history_reordered"))


def check(url: str) -> None:
    """Raise if the models and the migrated schema differ (alembic check)."""
    command.check(alembic_config(url))
