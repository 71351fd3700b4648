"""invoices: the original record is rebuilt from the payload instead of kept twice

An invoice row carried the invoice text twice: in the payload, and in the original
record (source_value), kept only for the DLQ should the invoice fail later. Most
records are exactly what our Avro writer makes of the invoice read from them; for
those the consumer now leaves source_value empty and sets source_encoding, which
says how to rebuild the record's bytes from the payload. Rows half the size take
half the time to insert. Existing rows keep their source_value and no encoding.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27 10:30:00
"""

import json

import sqlalchemy as sa
from alembic import op


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('invoices', sa.Column('source_encoding', sa.String(length=16), nullable=True))


def downgrade() -> None:
    # A service of the previous revision reads source_value only: write the values the
    # encoding stands for before the column goes, a thousand rows at a time.
    from invoice_batch.invoices import Invoice
    from invoice_batch.schemas.codec import source_value_of

    connection = op.get_bind()
    select = sa.text(
        'SELECT id, payload, source_encoding FROM invoices '
        'WHERE source_encoding IS NOT NULL AND id > :after ORDER BY id LIMIT 1000'
    )
    update = sa.text('UPDATE invoices SET source_value = :value WHERE id = :id')
    after = 0
    while rows := connection.execute(select, {'after': after}).fetchall():
        connection.execute(
            update,
            [
                {
                    'id': row_id,
                    'value': source_value_of(Invoice.from_json_dict(json.loads(payload)), encoding),
                }
                for row_id, payload, encoding in rows
            ],
        )
        after = rows[-1][0]
    with op.batch_alter_table('invoices') as batch_op:
        batch_op.drop_column('source_encoding')
