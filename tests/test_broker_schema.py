"""The persistence file's schema: a file written by an older broker is brought to the current
schema when opened, and what it held is kept."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from test_broker import Raw
from test_broker_sessions import wait_for

from fieldline.broker import BrokerThread
from fieldline.mqtt import Subscription

# On uvloop (the default when installed) and on asyncio's own loop.
pytestmark = pytest.mark.usefixtures("both_event_loops")


def test_a_file_of_schema_1_is_brought_to_the_current_schema(tmp_path: Path) -> None:
    # Schema 2 adds the shared subscription of queued and in-flight messages (and 3 the
    # deadline of in-flight ones): a file written before loads, with what it held, and
    # is written on as the current schema.
    db = tmp_path / "b.db"
    with sqlite3.connect(db) as conn:
        conn.executescript(
            """
            CREATE TABLE meta(key TEXT PRIMARY KEY, value);
            CREATE TABLE queue(
                client_id TEXT, seq INT, topic TEXT, payload BLOB, qos INT, retain INT,
                props TEXT, expires REAL, sids TEXT, PRIMARY KEY(client_id, seq));
            CREATE TABLE inflight(
                client_id TEXT, packet_id INT, ord INT, state INT, topic TEXT, payload BLOB,
                qos INT, retain INT, props TEXT, PRIMARY KEY(client_id, packet_id));
            CREATE TABLE sessions(
                client_id TEXT PRIMARY KEY, expiry INT, lost REAL, username TEXT,
                next_id INT, dropped INT, expired INT, rate_limited INT);
            CREATE TABLE subscriptions(
                client_id TEXT, filter TEXT, qos INT, no_local INT, rap INT, rh INT, sid INT,
                PRIMARY KEY(client_id, filter)) WITHOUT ROWID;
            INSERT INTO meta VALUES('schema', 1);
            INSERT INTO sessions VALUES('old', 3600, NULL, NULL, 0, 0, 0, 0);
            INSERT INTO subscriptions VALUES('old', 'a/#', 1, 0, 0, 0, 0);
            INSERT INTO queue VALUES('old', 0, 'a/b', X'6b657074', 1, 0, NULL, NULL, NULL);
            """
        )
    conn.close()
    with BrokerThread(persistence=str(db)) as broker:
        back = Raw(
            broker.port, "old", clean_start=False, properties={"session_expiry_interval": 60}
        )
        assert [m.payload for m in back.messages(1)] == [b"kept"]
        back.close()
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT value FROM meta WHERE key='schema'").fetchone() == (3,)
    conn.close()


def test_a_file_of_schema_2_gets_the_deadline_column(tmp_path: Path) -> None:
    # A schema 2 file has no deadline for in-flight messages: it opens as schema 3, and
    # its in-flight message is resent as before, with the interval it was sent with.
    db = tmp_path / "b.db"
    props = {"session_expiry_interval": 60}
    with BrokerThread(persistence=str(db), durability="full") as broker:
        c = Raw(broker.port, "x", clean_start=False, properties=props, auto_flush=False)
        c.subscribe(Subscription("exp/#", 1))
        broker.call(broker.broker.publish, "exp/1", b"m", 1, False, {"message_expiry_interval": 60})
        c.messages(1)
        c.close()
        wait_for(broker, "connected", 0)
    with sqlite3.connect(db) as conn:  # back to what a schema 2 broker wrote
        conn.executescript(
            """
            CREATE TABLE old AS SELECT client_id, packet_id, ord, state, topic, payload, qos,
                retain, props, share FROM inflight;
            DROP TABLE inflight;
            ALTER TABLE old RENAME TO inflight;
            UPDATE meta SET value=2 WHERE key='schema';
            """
        )
    conn.close()
    with BrokerThread(persistence=str(db)) as broker:
        again = Raw(broker.port, "x", clean_start=False, properties=props)
        (m,) = again.messages(1)
        assert (m.topic, m.dup, m.properties["message_expiry_interval"]) == ("exp/1", True, 60)
        again.close()
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT value FROM meta WHERE key='schema'").fetchone() == (3,)
        assert "expires" in [r[1] for r in conn.execute("PRAGMA table_info(inflight)")]
    conn.close()
