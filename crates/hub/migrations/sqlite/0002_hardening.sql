-- Hardening (issue 6): aggregated security events, superseded certificates, operator token expiry, retention.

-- One row per (kind, device, source) and flush interval: first time in `at`, last in `last_at`, how many.
ALTER TABLE security_events ADD COLUMN last_at INTEGER;
ALTER TABLE security_events ADD COLUMN count INTEGER NOT NULL DEFAULT 1;
CREATE INDEX security_events_by_time ON security_events (at);
CREATE INDEX security_events_by_last ON security_events (last_at);

-- The previous certificate stays valid only until the renewed one is first used; the public key of the current
-- certificate (SHA-256 of its SubjectPublicKeyInfo, hex) lets a device whose renew or enrol reply was lost get
-- that same certificate again, but only for the key it already proved.
ALTER TABLE devices ADD COLUMN prev_cert_serial TEXT;
ALTER TABLE devices ADD COLUMN cert_spki TEXT;
-- The current certificate chain (public): a retry after a lost enrol or renew answer gets it again, unchanged.
ALTER TABLE devices ADD COLUMN cert_chain_pem TEXT;
-- When the current certificate was first used to connect (NULL: not yet; a lost enrol reply may be retried).
ALTER TABLE devices ADD COLUMN cert_used_at INTEGER;

-- Operator tokens expire and can be listed and revoked. Tokens made before this migration get 90 days from the
-- upgrade (not from their creation, which could lock an owner out at once).
ALTER TABLE api_tokens ADD COLUMN expires_at INTEGER;
UPDATE api_tokens SET expires_at = CAST(strftime('%s', 'now') AS INTEGER) * 1000 + 7776000000
    WHERE expires_at IS NULL;

-- Retention deletes by receive time.
CREATE INDEX uplinks_by_received ON uplinks (received_at);
