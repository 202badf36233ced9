-- Support access (issue 8): support accounts see a consumer's devices only while that consumer grants it.
CREATE TABLE support_grants (
    account_id  TEXT PRIMARY KEY REFERENCES accounts(id),
    granted_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL
);
