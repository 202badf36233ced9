//! Operator accounts, for now bearer API tokens: the one-time owner-setup token printed at first start, and the
//! operator tokens it mints. There is no default account and no default password (guideline 1).
//!
//! Operator tokens expire (90 days by default), can be listed and revoked; only their MACs are stored.

pub mod password;

use std::sync::Arc;

use time::Duration;

use crate::clock::Clock;
use crate::identity::ca::unix_ms;
use crate::secrets::{MasterKey, SecretString, random_base32, random_token};
use crate::store::{NewApiToken, Store, StoreError};

const SETUP: &str = "setup";
const API: &str = "api";

/// How long a setup token works.
pub const SETUP_TOKEN_VALIDITY: Duration = Duration::hours(24);

/// The accounts capability.
#[derive(Debug, Clone)]
pub struct Accounts {
    store: Store,
    master: Arc<MasterKey>,
    clock: Clock,
    token_validity: Duration,
}

/// Default lifetime of operator tokens.
pub const DEFAULT_TOKEN_VALIDITY: Duration = Duration::days(90);
/// Longest lifetime an operator token may be given.
pub const MAX_TOKEN_VALIDITY: Duration = Duration::days(397);

/// The authenticated caller of an API request.
#[derive(Debug, Clone)]
pub struct Operator {
    /// The id of the token used.
    pub token_id: String,
    /// When that token expires (None: a token from before tokens expired).
    pub expires_at_ms: Option<i64>,
}

/// Why a bearer token was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenRefusal {
    /// No live token has this value.
    Invalid,
    /// The token expired.
    Expired,
}

/// An operator token as listed (never its value).
#[derive(Debug, Clone)]
pub struct TokenInfo {
    /// Id.
    pub id: String,
    /// Label.
    pub label: String,
    /// Created, Unix ms.
    pub created_at_ms: i64,
    /// Expires, Unix ms.
    pub expires_at_ms: i64,
    /// Revoked, Unix ms.
    pub revoked_at_ms: Option<i64>,
}

/// A new operator token: its value is shown once.
#[derive(Debug)]
pub struct NewToken {
    /// Id (to list and revoke it).
    pub id: String,
    /// The value.
    pub token: SecretString,
    /// Expires, Unix ms.
    pub expires_at_ms: i64,
}

impl Accounts {
    /// Builds the capability; operator tokens get `token_validity` unless asked for less.
    pub fn new(store: Store, master: Arc<MasterKey>, clock: Clock, token_validity: Duration) -> Self {
        Accounts { store, master, clock, token_validity }
    }

    /// If no owner was ever set up, replaces any earlier setup token with a new one and returns it (to be
    /// printed once). Returns `None` once the hub has an owner, even if every token since expired or was
    /// revoked: then only `hearth setup-token`, run with access to the data directory, issues a new one.
    pub async fn setup_token_if_needed(&self) -> Result<Option<SecretString>, StoreError> {
        if self.store.api_tokens_ever().await? > 0 {
            return Ok(None);
        }
        self.issue_setup_token().await.map(Some)
    }

    /// Issues a new setup token (replacing any earlier one), also when owners exist: the recovery path for a
    /// lost operator token, open only to someone who can read the data directory and the master key.
    pub async fn issue_setup_token(&self) -> Result<SecretString, StoreError> {
        let token = random_token("hst_", 32).map_err(|e| StoreError::Random(e.to_string()))?;
        let expires = unix_ms(self.clock.now() + SETUP_TOKEN_VALIDITY);
        self.store.replace_setup_token(&self.master.token_mac(SETUP, token.expose()), expires).await?;
        Ok(token)
    }

    /// Exchanges the setup token for the first operator token. `None` if the setup token is unknown, used or
    /// expired.
    pub async fn complete_setup(&self, setup_token: &str, label: &str) -> Result<Option<SecretString>, StoreError> {
        let token = random_token("hop_", 32).map_err(|e| StoreError::Random(e.to_string()))?;
        let id = random_base32(12).map_err(|e| StoreError::Random(e.to_string()))?;
        let now = self.clock.now();
        let done = self
            .store
            .complete_setup(
                &self.master.token_mac(SETUP, setup_token),
                &NewApiToken {
                    id: &id,
                    mac: &self.master.token_mac(API, token.expose()),
                    label,
                    created_at: unix_ms(now),
                    expires_at: unix_ms(now + self.token_validity),
                },
            )
            .await?;
        Ok(done.then_some(token))
    }

    /// Authenticates a bearer token.
    pub async fn authenticate(&self, bearer: &str) -> Result<Result<Operator, TokenRefusal>, StoreError> {
        let Some((token_id, expires_at)) = self.store.api_token(&self.master.token_mac(API, bearer)).await? else {
            return Ok(Err(TokenRefusal::Invalid));
        };
        if expires_at.is_some_and(|t| t <= self.clock.now_ms()) {
            return Ok(Err(TokenRefusal::Expired));
        }
        Ok(Ok(Operator { token_id, expires_at_ms: expires_at }))
    }

    /// Creates an operator token for `by`, valid for `validity` (at most [`MAX_TOKEN_VALIDITY`]; default the
    /// hub's), and never beyond `by`'s own token: a stolen token cannot mint itself a longer life.
    pub async fn create_token(
        &self,
        by: &Operator,
        label: &str,
        validity: Option<Duration>,
    ) -> Result<NewToken, StoreError> {
        let validity = validity.unwrap_or(self.token_validity).min(MAX_TOKEN_VALIDITY);
        let token = random_token("hop_", 32).map_err(|e| StoreError::Random(e.to_string()))?;
        let id = random_base32(12).map_err(|e| StoreError::Random(e.to_string()))?;
        let now = self.clock.now();
        let expires_at = by.expires_at_ms.map_or(unix_ms(now + validity), |cap| cap.min(unix_ms(now + validity)));
        self.store
            .insert_api_token(&NewApiToken {
                id: &id,
                mac: &self.master.token_mac(API, token.expose()),
                label,
                created_at: unix_ms(now),
                expires_at,
            })
            .await?;
        Ok(NewToken { id, token, expires_at_ms: expires_at })
    }

    /// Every operator token, newest first.
    pub async fn tokens(&self) -> Result<Vec<TokenInfo>, StoreError> {
        self.store.api_tokens().await
    }

    /// Revokes a token. False if there is no such live token.
    pub async fn revoke_token(&self, id: &str) -> Result<bool, StoreError> {
        self.store.revoke_api_token(id, self.clock.now_ms()).await
    }
}
