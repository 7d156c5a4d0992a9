"""The evaluation service's tables: for now only its event plumbing (outbox, processed events)."""

import sqlalchemy as sa

from services.shared.outbox import messaging_tables

metadata = sa.MetaData()
messaging = messaging_tables(metadata, "evaluation")
