-- Mail links (issue 8): consumer sign-up verified by mail, password reset, and invitations of operators. Only the
-- MAC of a link's token is stored; a link works once, until it expires.
ALTER TABLE accounts ADD COLUMN verified_at INTEGER;
-- Accounts made before verification existed were made by the owner's setup or an operator: they count as verified.
UPDATE accounts SET verified_at = created_at;

CREATE TABLE mail_links (
    token_mac   BLOB PRIMARY KEY,
    -- verify, reset or invite.
    purpose     TEXT NOT NULL,
    account_id  TEXT NOT NULL REFERENCES accounts(id),
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    used_at     INTEGER
);
CREATE INDEX mail_links_account ON mail_links (account_id);
