"""The spec's signals table: columns, check, indexes, hypertable, compression, 30-day policy.

A ready migration for host projects: copy it into your versions directory (then set
``down_revision`` to your current head), or add ``alembic_ext.MIGRATIONS_DIR`` to
``version_locations`` and run ``alembic upgrade sa_signals@head``.

The table name and schema come from the Alembic config: ``sa_signals_table`` (default
``signals``) and ``sa_signals_schema`` (default: the connection's default schema), read from
``config.attributes`` first, then from the ini file's main section. On a database without
TimescaleDB the table is created as a plain table and the TimescaleDB steps log a warning.

Revision ID: sa_signals_0001
Revises:
"""

from __future__ import annotations

import datetime

import sqlalchemy as sa
from alembic import context, op
from sqlalchemy.dialects import postgresql

import alembic_ext  # noqa: F401  (registers op.create_hypertable and friends)

revision = "sa_signals_0001"
down_revision = None
branch_labels = ("sa_signals",)
depends_on = None


def _setting(key: str) -> str | None:
    config = context.config
    value = config.attributes.get(key) or config.get_main_option(key)
    return str(value) if value else None


def _target() -> tuple[str, str | None]:
    return _setting("sa_signals_table") or "signals", _setting("sa_signals_schema")


def upgrade() -> None:
    name, schema = _target()
    op.create_table(
        name,
        sa.Column("provider", sa.Text(), nullable=False),
        sa.Column("symbol", sa.Text(), nullable=False),
        sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("value", sa.Double(), nullable=False),
        sa.Column("score", sa.Double(), nullable=True),
        sa.Column(
            "metadata",
            sa.JSON(none_as_null=True).with_variant(
                postgresql.JSONB(none_as_null=True), "postgresql"
            ),
            nullable=True,
        ),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint("symbol = UPPER(symbol)", name=op.f(f"ck_{name}_symbol_upper")),
        sa.PrimaryKeyConstraint("provider", "symbol", "ts", "name", name=op.f(f"pk_{name}")),
        schema=schema,
    )
    ts_desc: sa.ColumnElement[object] = sa.literal_column("ts DESC")
    op.create_index(
        op.f(f"ix_{name}_provider_symbol_name_ts"),
        name,
        ["provider", "symbol", "name", ts_desc],
        schema=schema,
    )
    op.create_index(op.f(f"ix_{name}_ts"), name, [ts_desc], schema=schema)
    op.create_index(op.f(f"ix_{name}_name_ts"), name, ["name", ts_desc], schema=schema)
    # TimescaleDB's own (ts DESC) index is not added: ix_<name>_ts above is that index.
    # (The ignores: Alembic's typing stub of ``op`` does not know registered operations.)
    op.create_hypertable(  # type: ignore[attr-defined]
        name, "ts", chunk_time_interval=datetime.timedelta(days=7), schema=schema
    )
    op.enable_compression(  # type: ignore[attr-defined]
        name, segment_by=["provider", "symbol", "name"], order_by=["ts DESC"], schema=schema
    )
    op.add_compression_policy(  # type: ignore[attr-defined]
        name, compress_after=datetime.timedelta(days=30), schema=schema
    )


def downgrade() -> None:
    name, schema = _target()
    # A hypertable cannot become a plain table again; dropping it removes its chunks and jobs.
    op.drop_table(name, schema=schema)
