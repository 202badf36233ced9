//! Operator accounts, for now bearer API tokens: the one-time owner-setup token printed at first start, and the
//! operator tokens it mints. There is no default account and no default password (guideline 1).

use std::sync::Arc;

use time::{Duration, OffsetDateTime};

use crate::identity::ca::unix_ms;
use crate::secrets::{MasterKey, SecretString, random_base32, random_token};
use crate::store::{Store, StoreError};

const SETUP: &str = "setup";
const API: &str = "api";

/// How long a setup token works.
pub const SETUP_TOKEN_VALIDITY: Duration = Duration::hours(24);

/// The accounts capability.
#[derive(Debug, Clone)]
pub struct Accounts {
    store: Store,
    master: Arc<MasterKey>,
}

/// The authenticated caller of an API request.
#[derive(Debug, Clone)]
pub struct Operator {
    /// The id of the token used.
    pub token_id: String,
}

impl Accounts {
    /// Builds the capability.
    pub fn new(store: Store, master: Arc<MasterKey>) -> Self {
        Accounts { store, master }
    }

    /// If no operator exists yet, replaces any earlier setup token with a new one and returns it (to be printed
    /// once). Returns `None` once the hub has an owner.
    pub async fn setup_token_if_needed(&self) -> Result<Option<SecretString>, StoreError> {
        if self.store.live_api_tokens().await? > 0 {
            return Ok(None);
        }
        self.issue_setup_token().await.map(Some)
    }

    /// Issues a new setup token (replacing any earlier one), also when owners exist: the recovery path for a
    /// lost operator token, open only to someone who can read the data directory and the master key.
    pub async fn issue_setup_token(&self) -> Result<SecretString, StoreError> {
        let token = random_token("hst_", 32).map_err(|e| StoreError::Db(sqlx::Error::Protocol(e.to_string())))?;
        let expires = unix_ms(OffsetDateTime::now_utc() + SETUP_TOKEN_VALIDITY);
        self.store.replace_setup_token(&self.master.token_mac(SETUP, token.expose()), expires).await?;
        Ok(token)
    }

    /// Exchanges the setup token for the first operator token. `None` if the setup token is unknown, used or
    /// expired.
    pub async fn complete_setup(&self, setup_token: &str, label: &str) -> Result<Option<SecretString>, StoreError> {
        let token = random_token("hop_", 32).map_err(|e| StoreError::Db(sqlx::Error::Protocol(e.to_string())))?;
        let id = random_base32(12).map_err(|e| StoreError::Db(sqlx::Error::Protocol(e.to_string())))?;
        let now = unix_ms(OffsetDateTime::now_utc());
        let done = self
            .store
            .complete_setup(
                &self.master.token_mac(SETUP, setup_token),
                now,
                &id,
                &self.master.token_mac(API, token.expose()),
                label,
            )
            .await?;
        Ok(done.then_some(token))
    }

    /// Authenticates a bearer token.
    pub async fn authenticate(&self, bearer: &str) -> Result<Option<Operator>, StoreError> {
        Ok(self.store.api_token_id(&self.master.token_mac(API, bearer)).await?.map(|token_id| Operator { token_id }))
    }
}
