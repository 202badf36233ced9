-- Mail links (issue 8): consumer sign-up verified by mail, password reset, and invitations of operators. Only the
-- MAC of a link's token is stored; a link works once, until it expires.
ALTER TABLE accounts ADD COLUMN verified_at BIGINT;
-- Accounts made before verification existed were made by the owner's setup or an operator: they count as verified.
UPDATE accounts SET verified_at = created_at;

CREATE TABLE mail_links (
    token_mac   BYTEA PRIMARY KEY,
    -- verify, reset or invite.
    purpose     TEXT NOT NULL,
    account_id  TEXT NOT NULL REFERENCES accounts(id),
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    used_at     BIGINT
);
CREATE INDEX mail_links_account ON mail_links (account_id);
