"""Autogenerate a dated migration from the models: `python scripts/new-migration.py "message"`."""

from __future__ import annotations

import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from alembic import command
from sqlalchemy import create_engine

from waystation.db import alembic_config


def main() -> None:
    message = sys.argv[1] if len(sys.argv) > 1 else "change"
    with tempfile.TemporaryDirectory() as tmp:
        engine = create_engine(f"sqlite:///{Path(tmp) / 'gen.db'}")
        with engine.begin() as conn:
            cfg = alembic_config()
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
            stamp = datetime.now(UTC).strftime("%Y_%m_%d_%H%M")
            cfg.set_main_option("file_template", f"{stamp}_%%(slug)s")
            scripts = command.revision(cfg, message=message, autogenerate=True, rev_id=stamp.replace("_", ""))
    # Alembic renders JSONB's default argument without its module prefix.
    for script in scripts if isinstance(scripts, list) else [scripts]:
        if script is not None:
            path = Path(script.path)
            path.write_text(path.read_text().replace("astext_type=Text()", "astext_type=sa.Text()"))


if __name__ == "__main__":
    main()
