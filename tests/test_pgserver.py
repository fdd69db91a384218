"""The throwaway PostgreSQL server the PostgreSQL store tests stand on: a fresh database per test, really empty
and really separate from the others."""

from __future__ import annotations

import pgserver
import psycopg


def test_fresh_database_round_trips_a_row(postgres_url: str) -> None:
    with psycopg.connect(postgres_url) as conn:
        conn.execute("CREATE TABLE models (name text PRIMARY KEY, version integer NOT NULL)")
        conn.execute("INSERT INTO models (name, version) VALUES (%s, %s)", ("iris", 3))
        conn.commit()
    with psycopg.connect(postgres_url) as conn:
        assert conn.execute("SELECT name, version FROM models").fetchall() == [("iris", 3)]


def test_fresh_databases_are_distinct_and_isolated(postgres: pgserver.PostgresServer) -> None:
    first, second = postgres.fresh_database(), postgres.fresh_database()
    assert first != second
    with psycopg.connect(first) as conn:
        conn.execute("CREATE TABLE only_in_first (id integer)")
    with psycopg.connect(second) as conn:
        tables = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall()
        assert tables == []
        conn.execute("CREATE TABLE only_in_first (id integer)")  # the same name is free here
