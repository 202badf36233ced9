-- People (issue 8): accounts with Argon2id passwords, sign-in sessions, login throttling, the audit log, and API
-- tokens that belong to an account.
CREATE TABLE accounts (
    id                  TEXT PRIMARY KEY,
    -- Lower case; unique.
    email               TEXT NOT NULL UNIQUE,
    -- owner, admin, support or consumer.
    role                TEXT NOT NULL,
    -- PHC string (argon2id). Never NULL: there is no account without a credential.
    password_hash       TEXT NOT NULL,
    created_at          INTEGER NOT NULL,
    password_changed_at INTEGER NOT NULL,
    disabled_at         INTEGER
);

-- One owner, whatever races (two setup tokens live on two nodes at once).
CREATE UNIQUE INDEX accounts_one_owner ON accounts (role) WHERE role = 'owner';

-- Sign-in sessions: only the MAC of the opaque token is stored.
CREATE TABLE web_sessions (
    id            TEXT PRIMARY KEY,
    token_mac     BLOB NOT NULL UNIQUE,
    account_id    TEXT NOT NULL REFERENCES accounts(id),
    created_at    INTEGER NOT NULL,
    last_seen_at  INTEGER NOT NULL,
    -- Absolute end; the idle end is last_seen_at + the configured idle time.
    expires_at    INTEGER NOT NULL,
    source        TEXT,
    user_agent    TEXT,
    revoked_at    INTEGER
);
CREATE INDEX web_sessions_account ON web_sessions (account_id);

-- Failed sign-ins per account and per source network, for throttling.
CREATE TABLE login_failures (
    key           TEXT PRIMARY KEY,
    failures      INTEGER NOT NULL,
    first_at      INTEGER NOT NULL,
    locked_until  INTEGER
);

-- Security-relevant actions: who, what, when, from where (minimised; kept for a set time).
CREATE TABLE audit_log (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    at          INTEGER NOT NULL,
    account_id  TEXT,
    action      TEXT NOT NULL,
    target      TEXT,
    source      TEXT,
    detail      TEXT NOT NULL
);
CREATE INDEX audit_log_at ON audit_log (at);

-- API tokens belong to an account (NULL: minted before accounts existed, by the setup token).
ALTER TABLE api_tokens ADD COLUMN account_id TEXT REFERENCES accounts(id);
