-- Signed updates (issue 9). The TUF repository the hub serves: every version of every role's metadata, exactly
-- the bytes served (the root and targets come signed by the maker's offline keys; snapshot and timestamp are
-- signed here). Target files (images, SBOMs) are kept in chunks so that every node can serve them; a node keeps
-- a verified copy on its own disk.
CREATE TABLE tuf_metadata (
    -- root, targets, snapshot or timestamp.
    role        TEXT NOT NULL,
    version     BIGINT NOT NULL,
    body        BYTEA NOT NULL,
    expires_at  BIGINT NOT NULL,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (role, version)
);

CREATE TABLE update_files (
    -- Lowercase hex SHA-256 of the content.
    sha256       TEXT PRIMARY KEY,
    length       BIGINT NOT NULL,
    chunks       BIGINT NOT NULL,
    uploaded_at  BIGINT NOT NULL
);

CREATE TABLE update_file_chunks (
    sha256  TEXT NOT NULL REFERENCES update_files(sha256),
    idx     BIGINT NOT NULL,
    data    BYTEA NOT NULL,
    PRIMARY KEY (sha256, idx)
);

-- Releases as the signed targets metadata describes them (read from it when it is published).
CREATE TABLE releases (
    target_name       TEXT PRIMARY KEY,
    model             TEXT NOT NULL,
    version           TEXT NOT NULL,
    security_version  BIGINT NOT NULL,
    kind              TEXT NOT NULL,
    -- hearth_proto::release::ReleaseInfo, JSON.
    info_json         TEXT NOT NULL,
    sha256            TEXT NOT NULL,
    length            BIGINT NOT NULL,
    targets_version   BIGINT NOT NULL,
    published_at      BIGINT NOT NULL,
    UNIQUE (model, version)
);
CREATE INDEX releases_sha256 ON releases (sha256);

-- The defined support period of a model (EN 303 645 5.3-13).
CREATE TABLE model_support (
    model          TEXT PRIMARY KEY,
    support_until  BIGINT NOT NULL,
    policy         TEXT NOT NULL,
    updated_at     BIGINT NOT NULL
);

CREATE TABLE rollouts (
    id                     TEXT PRIMARY KEY,
    release                TEXT NOT NULL REFERENCES releases(target_name),
    model                  TEXT NOT NULL,
    -- running, paused, aborted or completed.
    state                  TEXT NOT NULL,
    -- How many waves, and the highest one opened (-1: none yet).
    waves                  BIGINT NOT NULL,
    wave                   BIGINT NOT NULL,
    success_percent        BIGINT NOT NULL,
    pause_failure_percent  BIGINT NOT NULL,
    -- Failures an operator accepted by resuming after the failure gate paused it (the gate counts the rest).
    accepted_failures      BIGINT NOT NULL,
    starts_at              BIGINT NOT NULL,
    -- A daily window, minutes after midnight UTC, in which waves open (both NULL: any time).
    window_start           BIGINT,
    window_end             BIGINT,
    reason                 TEXT NOT NULL,
    created_by             TEXT NOT NULL,
    created_at             BIGINT NOT NULL,
    updated_at             BIGINT NOT NULL
);
CREATE INDEX rollouts_state ON rollouts (state);
-- One running or paused rollout per model, also when two nodes create one at the same moment.
CREATE UNIQUE INDEX rollouts_one_active ON rollouts (model) WHERE state IN ('running', 'paused');

CREATE TABLE rollout_devices (
    rollout_id       TEXT NOT NULL REFERENCES rollouts(id),
    device_id        TEXT NOT NULL REFERENCES devices(id),
    wave             BIGINT NOT NULL,
    -- waiting, notified, downloading, installing, rebooting, succeeded, rolled_back or failed.
    state            TEXT NOT NULL,
    detail           TEXT NOT NULL,
    postponed_until  BIGINT,
    postpones        BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL,
    PRIMARY KEY (rollout_id, device_id)
);
CREATE INDEX rollout_devices_device ON rollout_devices (device_id);

-- What each device last said it runs (check-in over mutual TLS).
ALTER TABLE devices ADD COLUMN image_sha256 TEXT;
ALTER TABLE devices ADD COLUMN image_version TEXT;
ALTER TABLE devices ADD COLUMN hardware TEXT;
ALTER TABLE devices ADD COLUMN security_floor BIGINT;
ALTER TABLE devices ADD COLUMN checked_in_at BIGINT;
