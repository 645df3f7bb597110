"""Applies `supabase/migrations/*.sql` in order to a Postgres database (one machine and tests).

In production the Supabase CLI applies the same files (`supabase db push`).
"""

from __future__ import annotations

from pathlib import Path

import psycopg

MIGRATIONS_DIR = Path(__file__).resolve().parents[3] / "supabase" / "migrations"


def apply_migrations(dsn: str, directory: Path = MIGRATIONS_DIR) -> list[str]:
    applied: list[str] = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "create table if not exists bc_schema_migrations "
            "(version text primary key, applied_at timestamptz not null default now())"
        )
        # One migrator at a time, even when several processes start against the same database.
        conn.execute("select pg_advisory_lock(727274)")
        try:
            done = {row[0] for row in conn.execute("select version from bc_schema_migrations")}
            for path in sorted(directory.glob("*.sql")):
                if path.name in done:
                    continue
                with conn.transaction():
                    conn.execute(path.read_text())
                    conn.execute("insert into bc_schema_migrations (version) values (%s)", (path.name,))
                applied.append(path.name)
        finally:
            conn.execute("select pg_advisory_unlock(727274)")
    return applied
