//! Proof of work for the report intake, instead of a third-party captcha: the hub hands out a challenge it signed
//! (difficulty, expiry, randomness, HMAC under a key every node shares), and a report must carry a nonce such that
//! SHA-256(`challenge` ":" `nonce`) starts with that many zero bits. Checking costs one HMAC and one hash; finding
//! a nonce costs the sender about 2^bits hashes (16 bits: well under a second in a browser). A challenge is good
//! for ten minutes and, through a unique column in the store, for one report.

use aws_lc_rs::digest::{SHA256, digest};
use aws_lc_rs::hmac;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Serialize;

/// How long a challenge is good for.
pub const VALIDITY_MS: i64 = 10 * 60 * 1000;
/// Longest nonce.
pub const MAX_NONCE: usize = 32;

/// A challenge to solve.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Challenge {
    /// The challenge, as it must come back.
    pub challenge: String,
    /// Leading zero bits SHA-256(challenge ":" nonce) must have.
    pub bits: u8,
    /// Good until, Unix ms.
    pub expires_at: i64,
}

/// Why a solution is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PowError {
    /// Not a challenge this hub signed (or changed since).
    #[error("not a challenge from this hub; ask for a new one")]
    Forged,
    /// Too old.
    #[error("the challenge expired; ask for a new one")]
    Expired,
    /// Easier than the hub asks now.
    #[error("the challenge is easier than this hub asks; ask for a new one")]
    TooEasy,
    /// The nonce does not solve it.
    #[error("the nonce does not solve the challenge")]
    Unsolved,
    /// No randomness.
    #[error("no randomness")]
    Random,
}

/// Signs and checks challenges.
pub struct Issuer {
    key: hmac::Key,
}

/// Leading zero bits of `hash`.
fn zero_bits(hash: &[u8]) -> u32 {
    let mut n = 0;
    for b in hash {
        if *b == 0 {
            n += 8;
        } else {
            return n + b.leading_zeros();
        }
    }
    n
}

/// Whether `nonce` solves `challenge` at `bits`.
pub fn solves(challenge: &str, nonce: &str, bits: u8) -> bool {
    let hash = digest(&SHA256, format!("{challenge}:{nonce}").as_bytes());
    zero_bits(hash.as_ref()) >= u32::from(bits)
}

/// Finds a nonce (what a client does; for tests and the CLI).
pub fn solve(challenge: &str, bits: u8) -> String {
    (0u64..).map(|n| n.to_string()).find(|n| solves(challenge, n, bits)).unwrap_or_default()
}

impl Issuer {
    /// An issuer with `key` (at least 32 bytes, the same on every node).
    pub fn new(key: &[u8]) -> Issuer {
        Issuer { key: hmac::Key::new(hmac::HMAC_SHA256, key) }
    }

    /// A challenge of `bits` difficulty, issued at `now`.
    pub fn issue(&self, bits: u8, now: i64) -> Result<Challenge, PowError> {
        let mut random = [0u8; 16];
        aws_lc_rs::rand::fill(&mut random).map_err(|_| PowError::Random)?;
        let expires_at = now + VALIDITY_MS;
        let body = format!("{bits}.{expires_at}.{}", URL_SAFE_NO_PAD.encode(random));
        let tag = hmac::sign(&self.key, body.as_bytes());
        Ok(Challenge { challenge: format!("{body}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref())), bits, expires_at })
    }

    /// Checks a solution against the difficulty asked now (`bits`) at `now`.
    pub fn verify(&self, challenge: &str, nonce: &str, bits: u8, now: i64) -> Result<(), PowError> {
        if challenge.len() > 200
            || nonce.is_empty()
            || nonce.len() > MAX_NONCE
            || !nonce.bytes().all(|b| b.is_ascii_alphanumeric())
        {
            return Err(PowError::Unsolved);
        }
        let (body, tag) = challenge.rsplit_once('.').ok_or(PowError::Forged)?;
        let tag = URL_SAFE_NO_PAD.decode(tag).map_err(|_| PowError::Forged)?;
        hmac::verify(&self.key, body.as_bytes(), &tag).map_err(|_| PowError::Forged)?;
        let mut parts = body.split('.');
        let asked: u8 = parts.next().and_then(|b| b.parse().ok()).ok_or(PowError::Forged)?;
        let expires_at: i64 = parts.next().and_then(|e| e.parse().ok()).ok_or(PowError::Forged)?;
        if now > expires_at {
            return Err(PowError::Expired);
        }
        if asked < bits {
            return Err(PowError::TooEasy);
        }
        if solves(challenge, nonce, asked) { Ok(()) } else { Err(PowError::Unsolved) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_solved_challenge_passes_and_anything_changed_fails() {
        let issuer = Issuer::new(&[7; 32]);
        let c = issuer.issue(10, 1_000).expect("challenge");
        let nonce = solve(&c.challenge, 10);
        assert_eq!(issuer.verify(&c.challenge, &nonce, 10, 2_000), Ok(()));
        assert_eq!(issuer.verify(&c.challenge, &nonce, 10, 1_000 + VALIDITY_MS + 1), Err(PowError::Expired));
        assert_eq!(issuer.verify(&c.challenge, &nonce, 12, 2_000), Err(PowError::TooEasy), "the hub asks more now");
        let wrong = (0u64..).map(|n| n.to_string()).find(|n| !solves(&c.challenge, n, 10)).expect("a non-solution");
        assert_eq!(issuer.verify(&c.challenge, &wrong, 10, 2_000), Err(PowError::Unsolved));
        // A challenge claiming fewer bits, or another expiry, no longer matches its tag.
        let forged = c.challenge.replacen("10.", "1.", 1);
        assert_eq!(issuer.verify(&forged, &nonce, 1, 2_000), Err(PowError::Forged));
        let other = Issuer::new(&[8; 32]);
        assert_eq!(other.verify(&c.challenge, &nonce, 10, 2_000), Err(PowError::Forged), "another hub's key");
        assert_eq!(issuer.verify(&c.challenge, "no-dashes", 10, 2_000), Err(PowError::Unsolved));
        assert_eq!(issuer.verify("garbage", &nonce, 10, 2_000), Err(PowError::Forged));
        assert_eq!(zero_bits(&[0, 0x10]), 11);
    }
}
