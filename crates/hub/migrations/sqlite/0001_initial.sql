-- Hearth hub schema v1. Portable SQL (SQLite and PostgreSQL): ids and text as TEXT, times as INTEGER Unix ms,
-- hashes as BLOB/BYTEA via the store's own binding.

CREATE TABLE keys (
    name        TEXT PRIMARY KEY,
    cert_pem    TEXT NOT NULL,
    sealed_key  BLOB NOT NULL,
    created_at  INTEGER NOT NULL
);

CREATE TABLE devices (
    id                    TEXT PRIMARY KEY,
    model                 TEXT NOT NULL,
    status                TEXT NOT NULL,
    bootstrap_mac         BLOB NOT NULL UNIQUE,
    bootstrap_expires_at  INTEGER NOT NULL,
    bootstrap_used_at     INTEGER,
    claim_mac             BLOB NOT NULL UNIQUE,
    cert_serial           TEXT,
    cert_not_after        INTEGER,
    created_at            INTEGER NOT NULL,
    enrolled_at           INTEGER,
    revoked_at            INTEGER,
    last_seen_at          INTEGER,
    state_json            TEXT,
    state_seq             INTEGER
);

CREATE TABLE uplinks (
    device_id    TEXT NOT NULL,
    seq          INTEGER NOT NULL,
    kind         TEXT NOT NULL,
    device_ts    INTEGER NOT NULL,
    received_at  INTEGER NOT NULL,
    body_json    TEXT NOT NULL,
    PRIMARY KEY (device_id, seq)
);
CREATE INDEX uplinks_by_time ON uplinks (device_id, device_ts);

CREATE TABLE commands (
    id          TEXT PRIMARY KEY,
    device_id   TEXT NOT NULL,
    name        TEXT NOT NULL,
    args_json   TEXT NOT NULL,
    status      TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    sent_at     INTEGER,
    answered_at INTEGER,
    detail      TEXT
);
CREATE INDEX commands_pending ON commands (device_id, status);

CREATE TABLE api_tokens (
    id          TEXT PRIMARY KEY,
    token_mac   BLOB NOT NULL UNIQUE,
    label       TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    revoked_at  INTEGER
);

CREATE TABLE setup_tokens (
    token_mac   BLOB PRIMARY KEY,
    expires_at  INTEGER NOT NULL,
    used_at     INTEGER
);

CREATE TABLE security_events (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    at          INTEGER NOT NULL,
    device_id   TEXT,
    source      TEXT,
    kind        TEXT NOT NULL,
    detail      TEXT NOT NULL
);
CREATE INDEX security_events_by_device ON security_events (device_id, at);
