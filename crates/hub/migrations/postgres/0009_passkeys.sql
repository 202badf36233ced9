-- Passkeys (issue 8): WebAuthn credentials of accounts, a first-class way to sign in and a second factor for
-- operators; and the state of ceremonies under way (kept here, not in memory, so any node finishes what another
-- started). A ceremony is taken (deleted) when it finishes: it works once, and only until it expires.
CREATE TABLE passkeys (
    -- base64url of the credential id.
    credential_id  TEXT PRIMARY KEY,
    account_id     TEXT NOT NULL REFERENCES accounts(id),
    name           TEXT NOT NULL,
    -- webauthn-rs's Passkey (public key, counter), JSON.
    passkey_json   TEXT NOT NULL,
    created_at     BIGINT NOT NULL,
    last_used_at   BIGINT
);
CREATE INDEX passkeys_account ON passkeys (account_id);

CREATE TABLE webauthn_ceremonies (
    id          TEXT PRIMARY KEY,
    -- register, sign_in, second_factor or sign_up.
    kind        TEXT NOT NULL,
    account_id  TEXT REFERENCES accounts(id),
    state_json  TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL
);
CREATE INDEX webauthn_ceremonies_expiry ON webauthn_ceremonies (expires_at);
