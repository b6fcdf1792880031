"""session frames

Every chat session frame is written here before it is sent, so that a client resumes its
session with `last_seq` after the server restarted (even after a crash). Rows go with their
conversation (erasure cascades) and are pruned to the latest frames of open conversations.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30 06:50:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "session_frames",
        sa.Column("conversation_id", sa.String(length=32), nullable=False),
        sa.Column("seq", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["conversation_id"],
            ["conversations.id"],
            name=op.f("fk_session_frames_conversation_id_conversations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("conversation_id", "seq", name=op.f("pk_session_frames")),
    )


def downgrade() -> None:
    op.drop_table("session_frames")
