//! Passwords: what the hub accepts (guideline 1, EN 303 645 5.1-1…5.1-5; EN 18031-1 6.2.5) and how it keeps them
//! (guideline 4: Argon2id, never the password itself).
//!
//! A password is refused, with a reason a person can act on, when it is too short or too long, on the shipped
//! list of default and most-used passwords (`weak-passwords.txt`: the credentials IoT botnets try first and the
//! top of the breached-password lists), derived from what the hub knows about the account (its email, the
//! product's name, device ids), or estimated weak by zxcvbn (its own dictionaries are drawn from breach corpora).

use argon2::{Algorithm, Argon2, Params, PasswordHash, PasswordHasher as _, PasswordVerifier as _, Version};

/// Shortest password accepted (characters).
pub const MIN_LEN: usize = 12;
/// Longest password accepted (characters): long passphrases are welcome, unbounded hashing input is not.
pub const MAX_LEN: usize = 128;
/// Lowest zxcvbn score accepted (0 to 4; 3 is "safely unguessable: moderate protection from offline attack").
const MIN_SCORE: u8 = 3;

/// The shipped list, one lower-case password per line.
const WEAK: &str = include_str!("weak-passwords.txt");

/// Why a password was refused. The message says what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PasswordRefusal {
    /// Fewer than [`MIN_LEN`] characters.
    #[error("use at least {MIN_LEN} characters (a few unrelated words make a good one)")]
    TooShort,
    /// More than [`MAX_LEN`] characters.
    #[error("use at most {MAX_LEN} characters")]
    TooLong,
    /// On the shipped list of default and most-used passwords.
    #[error("this password is on the list of the most-used and default passwords that attackers try first")]
    Common,
    /// Built from something the hub knows about the account.
    #[error("do not build the password from {0}")]
    Derived(&'static str),
    /// Estimated weak.
    #[error("this password would be guessed too easily{}", .0.as_deref().map(|s| format!(": {s}")).unwrap_or_default())]
    Weak(Option<String>),
}

/// What a password must not be built from, with how to name it in a refusal.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// The account's email address.
    pub email: &'a str,
    /// Product and service names (`hearth`, the maker's product names, model designations).
    pub products: &'a [&'a str],
    /// Device ids the account is tied to.
    pub device_ids: &'a [&'a str],
}

/// Checks `password` against every rule; the first rule it breaks is the answer.
pub fn check(password: &str, context: &Context<'_>) -> Result<(), PasswordRefusal> {
    let len = password.chars().count();
    if len < MIN_LEN {
        return Err(PasswordRefusal::TooShort);
    }
    if len > MAX_LEN {
        return Err(PasswordRefusal::TooLong);
    }
    let folded = fold(password);
    if WEAK.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).any(|w| fold(w) == folded) {
        return Err(PasswordRefusal::Common);
    }
    let (local, domain) = context.email.rsplit_once('@').unwrap_or((context.email, ""));
    let mut inputs: Vec<(&str, &'static str)> = vec![(local, "your email address")];
    inputs.extend(domain.split('.').filter(|d| d.len() >= 4).map(|d| (d, "your email address")));
    inputs.extend(context.products.iter().map(|p| (*p, "the product's name")));
    inputs.extend(context.device_ids.iter().map(|d| (*d, "a device id")));
    for (input, what) in &inputs {
        let input = fold(input);
        // Short identifiers (under 4 characters) say too little to refuse on.
        if input.chars().count() >= 4 && folded.contains(&input) {
            return Err(PasswordRefusal::Derived(what));
        }
    }
    let user_inputs: Vec<&str> = inputs.iter().map(|(i, _)| *i).collect();
    let estimate = zxcvbn::zxcvbn(password, &user_inputs);
    if (estimate.score() as u8) < MIN_SCORE {
        let hint = estimate.feedback().and_then(|f| {
            f.warning().map(|w| w.to_string()).or_else(|| f.suggestions().first().map(|s| s.to_string()))
        });
        return Err(PasswordRefusal::Weak(hint));
    }
    Ok(())
}

/// Lower case, letters and digits only: `P@ssw0rd!` and `password` compare as different, but `Hearth-2026`
/// contains `hearth`.
fn fold(s: &str) -> String {
    s.chars().filter(|c| c.is_alphanumeric()).flat_map(char::to_lowercase).collect()
}

/// The Argon2id parameters: OWASP's second recommended set (19 MiB, 2 passes, 1 lane), about 20 ms here.
fn argon2() -> Argon2<'static> {
    let params = Params::new(19 * 1024, 2, 1, None).unwrap_or_default();
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// Why hashing failed (never the password's fault: a broken random source or parameters).
#[derive(Debug, thiserror::Error)]
#[error("password hashing failed: {0}")]
pub struct HashError(String);

impl HashError {
    /// A failure described by `what`.
    pub fn new(what: String) -> Self {
        HashError(what)
    }
}

/// The PHC string (`$argon2id$v=19$m=19456,t=2,p=1$salt$hash`) of `password`, with a fresh random salt.
pub fn hash(password: &str) -> Result<String, HashError> {
    let mut salt = [0u8; 16];
    aws_lc_rs::rand::fill(&mut salt).map_err(|_| HashError("no randomness".into()))?;
    let salt = argon2::password_hash::SaltString::encode_b64(&salt).map_err(|e| HashError(e.to_string()))?;
    let hashed = argon2().hash_password(password.as_bytes(), &salt).map_err(|e| HashError(e.to_string()))?;
    Ok(hashed.to_string())
}

/// Whether `password` matches the PHC string `stored` (whatever parameters it was made with).
pub fn verify(password: &str, stored: &str) -> bool {
    PasswordHash::new(stored).is_ok_and(|h| argon2().verify_password(password.as_bytes(), &h).is_ok())
}

/// A hash to verify against when the account does not exist, so that an unknown email costs the same time as a
/// known one with a wrong password (no user enumeration by timing).
pub fn decoy() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| hash("decoy password, never valid for any account").unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONTEXT: Context<'static> = Context {
        email: "alice.smith@example.org",
        products: &["hearth", "smartplug"],
        device_ids: &["plug-7k2m9q4x"],
    };

    fn refused(password: &str) -> Option<PasswordRefusal> {
        check(password, &CONTEXT).err()
    }

    #[test]
    fn weak_common_and_derived_passwords_are_refused_with_a_reason() {
        assert_eq!(refused("short"), Some(PasswordRefusal::TooShort));
        assert_eq!(refused(&"a".repeat(129)), Some(PasswordRefusal::TooLong));
        // On the shipped list (IoT defaults and the most-used), whatever the case and punctuation.
        for common in ["password1234", "Admin123456!", "qwertyuiop123", "123456789012"] {
            assert_eq!(refused(common), Some(PasswordRefusal::Common), "{common}");
        }
        assert_eq!(refused("alice.smith-2026!"), Some(PasswordRefusal::Derived("your email address")));
        assert_eq!(refused("Hearth-owner-2026"), Some(PasswordRefusal::Derived("the product's name")));
        assert_eq!(refused("my plug-7k2m9q4x key"), Some(PasswordRefusal::Derived("a device id")));
        assert!(matches!(refused("aaaaaaaaaaaaaaaa"), Some(PasswordRefusal::Weak(_))));
        assert!(matches!(refused("abcdefgh12345678"), Some(PasswordRefusal::Weak(_))));
        // Every refusal says what to do.
        for p in ["short", "password1234", "alice.smith-2026!", "aaaaaaaaaaaaaaaa"] {
            assert!(refused(p).is_some_and(|r| r.to_string().len() > 20), "{p}");
        }
    }

    #[test]
    fn strong_passphrases_are_accepted() {
        for good in ["correct horse battery staple", "Ventilate-Orbit-Quince-71", "tUq8#rL2vX9!mPzq"] {
            assert_eq!(check(good, &CONTEXT), Ok(()), "{good}");
        }
    }

    #[test]
    fn hashes_are_argon2id_salted_and_verify_only_the_password() {
        let a = hash("correct horse battery staple").expect("hash");
        let b = hash("correct horse battery staple").expect("hash");
        assert!(a.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{a}");
        assert_ne!(a, b, "a fresh salt each time");
        assert!(verify("correct horse battery staple", &a));
        assert!(!verify("correct horse battery stapler", &a));
        assert!(!verify("anything", "not a hash"));
        assert!(!verify("decoy password, never valid for any account", "$argon2id$bad"));
        assert!(decoy().starts_with("$argon2id$"));
    }
}
