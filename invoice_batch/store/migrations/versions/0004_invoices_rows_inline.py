"""invoices: PostgreSQL keeps rows up to a page inline and uncompressed

An invoice row is ~4 KB: the stored payload and the original record both carry the
invoice text. Over the default 2 KB toast target PostgreSQL compresses both columns
with pglz on every insert, which was over half of the server's time to take in an
invoice. With the target at 8160 bytes (the most a page allows) rows up to a page
stay as they are; larger ones are still compressed and moved out of line. The table
takes more disk (the text uncompressed), in exchange for inserts twice as fast.
SQLite has no such setting: nothing changes there.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27 08:00:00
"""

from alembic import op


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name == 'postgresql':
        op.execute('ALTER TABLE invoices SET (toast_tuple_target = 8160)')


def downgrade() -> None:
    if op.get_bind().dialect.name == 'postgresql':
        op.execute('ALTER TABLE invoices RESET (toast_tuple_target)')
