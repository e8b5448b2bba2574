"""Alembic environment: the engine comes from ``broadcaster.db.migrations_config``."""

from alembic import context
from sqlmodel import SQLModel

from broadcaster import models  # noqa: F401

config = context.config
engine = config.attributes.get("engine")
if engine is None:  # plain `alembic` command line: build one from settings
    from broadcaster.db import make_engine
    from broadcaster.settings import load_settings

    engine = make_engine(load_settings().database_url)

with engine.connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=SQLModel.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()
