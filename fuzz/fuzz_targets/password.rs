//! Fuzzes the password rules (length, the shipped list, derivation from the email, product and device ids,
//! zxcvbn) and email normalisation with arbitrary text: they must never panic, and what they accept must hold.
#![no_main]

use hearth_hub::accounts::{normalize_email, password};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let context = password::Context { email: "fuzz@example.org", products: &["hearth"], device_ids: &["dev-fuzz"] };
    if password::check(text, &context).is_ok() {
        let len = text.chars().count();
        assert!((password::MIN_LEN..=password::MAX_LEN).contains(&len), "accepted {len} characters");
        assert!(!text.to_lowercase().contains("hearth"), "accepted a password built from the product's name");
    }
    if let Ok(email) = normalize_email(text) {
        assert!(email.contains('@') && email.len() <= 254 && !email.chars().any(char::is_whitespace), "{email:?}");
    }
});
