//! Identifiers: [`DeviceId`] names one device (it is the subject of the device's certificate and the prefix of
//! its topics); [`ModelId`] names a product model.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

use crate::ValidationError;

/// A device's identifier: 3 to 64 characters from `a-z 0-9 -`, starting with a letter or digit.
///
/// Ids that the factory generates are random (not serial numbers), so knowing one device's id says nothing about
/// another's. The alphabet keeps ids safe inside MQTT topics, URLs, file names and certificate subjects.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct DeviceId(String);

impl DeviceId {
    /// Shortest allowed id.
    pub const MIN_LEN: usize = 3;
    /// Longest allowed id.
    pub const MAX_LEN: usize = 64;

    /// Validates `s` as a device id.
    pub fn parse(s: &str) -> Result<Self, ValidationError> {
        check_len("device id", s, Self::MIN_LEN, Self::MAX_LEN)?;
        const ALLOWED: &str = "a-z, 0-9 and '-' (not first)";
        for (i, c) in s.chars().enumerate() {
            let ok = c.is_ascii_lowercase() || c.is_ascii_digit() || (c == '-' && i > 0);
            if !ok {
                return Err(ValidationError::BadCharacter { what: "device id", found: c, allowed: ALLOWED });
            }
        }
        Ok(DeviceId(s.to_owned()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeviceId({})", self.0)
    }
}

impl<'de> Deserialize<'de> for DeviceId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        DeviceId::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl TryFrom<String> for DeviceId {
    type Error = ValidationError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        DeviceId::parse(&s)
    }
}

impl std::str::FromStr for DeviceId {
    type Err = ValidationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DeviceId::parse(s)
    }
}

/// A product model designation (EN 303 645 5.3-16): 1 to 64 characters from `A-Z a-z 0-9 . _ -`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Debug)]
#[serde(transparent)]
pub struct ModelId(String);

impl ModelId {
    /// Longest allowed model designation.
    pub const MAX_LEN: usize = 64;

    /// Validates `s` as a model designation.
    pub fn parse(s: &str) -> Result<Self, ValidationError> {
        check_len("model", s, 1, Self::MAX_LEN)?;
        for c in s.chars() {
            if !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')) {
                return Err(ValidationError::BadCharacter {
                    what: "model",
                    found: c,
                    allowed: "A-Z, a-z, 0-9, '.', '_' and '-'",
                });
            }
        }
        Ok(ModelId(s.to_owned()))
    }

    /// The model as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ModelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for ModelId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        ModelId::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// The OpenAPI schemas of the ids: strings with the alphabet and lengths `parse` checks.
#[cfg(feature = "openapi")]
mod openapi {
    use utoipa::openapi::RefOr;
    use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};

    fn string(min: usize, max: usize, pattern: &str, description: &str) -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .min_length(Some(min))
            .max_length(Some(max))
            .pattern(Some(pattern))
            .description(Some(description))
            .into()
    }

    impl utoipa::PartialSchema for super::DeviceId {
        fn schema() -> RefOr<Schema> {
            string(
                super::DeviceId::MIN_LEN,
                super::DeviceId::MAX_LEN,
                "^[a-z0-9][a-z0-9-]*$",
                "A device id: 3 to 64 characters of a-z, 0-9 and '-' (not first).",
            )
        }
    }
    impl utoipa::ToSchema for super::DeviceId {}

    impl utoipa::PartialSchema for super::ModelId {
        fn schema() -> RefOr<Schema> {
            string(
                1,
                super::ModelId::MAX_LEN,
                "^[A-Za-z0-9._-]+$",
                "A model designation: 1 to 64 characters of A-Z, a-z, 0-9, '.', '_' and '-'.",
            )
        }
    }
    impl utoipa::ToSchema for super::ModelId {}
}

pub(crate) fn check_len(what: &'static str, s: &str, min: usize, max: usize) -> Result<(), ValidationError> {
    if s.len() > max {
        return Err(ValidationError::TooLong { what, len: s.len(), max });
    }
    if s.len() < min {
        return Err(ValidationError::TooShort { what, len: s.len(), min });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn check(input: &str, ok: bool) {
        assert_eq!(DeviceId::parse(input).is_ok(), ok, "{input:?}");
    }

    #[test]
    fn device_id_alphabet() {
        check("abc", true);
        check("k3v9-2mq7", true);
        check("ab", false);
        check("-abc", false);
        check("ABC", false);
        check("a/b/c", false);
        check("a+b", false);
        check("a#b", false);
        check(&"a".repeat(64), true);
        check(&"a".repeat(65), false);
        check("dévice", false);
    }

    #[test]
    fn model_alphabet() {
        assert!(ModelId::parse("PLUG-1_v2.0").is_ok());
        assert!(ModelId::parse("").is_err());
        assert!(ModelId::parse("a b").is_err());
        assert!(ModelId::parse("a/b").is_err());
    }

    proptest! {
        #[test]
        fn device_id_never_panics_and_valid_ids_are_topic_safe(s in "\\PC{0,80}") {
            if let Ok(id) = DeviceId::parse(&s) {
                prop_assert!(!id.as_str().contains(['/', '+', '#', '\0']));
                prop_assert_eq!(DeviceId::parse(id.as_str()).ok(), Some(id.clone()));
            }
        }
    }
}
