//! The one error type of `proto`: what was wrong with an input, stable enough to show to the sender.

/// Why an input was refused. Each variant carries enough to tell the sender what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    /// The input is longer than its limit.
    #[error("{what} is {len} bytes, more than the limit of {max}")]
    TooLong {
        /// What was measured.
        what: &'static str,
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The input is shorter than allowed (for example empty).
    #[error("{what} is {len} bytes, fewer than the minimum of {min}")]
    TooShort {
        /// What was measured.
        what: &'static str,
        /// Its length in bytes.
        len: usize,
        /// The minimum.
        min: usize,
    },
    /// The input contains a character outside its alphabet.
    #[error("{what} contains {found:?}; allowed are {allowed}")]
    BadCharacter {
        /// What was checked.
        what: &'static str,
        /// The first offending character.
        found: char,
        /// A description of the allowed alphabet.
        allowed: &'static str,
    },
    /// The input is not valid JSON or does not match the schema.
    #[error("invalid {what}: {detail}")]
    Schema {
        /// Which message or body.
        what: &'static str,
        /// The parser's explanation (field, line and column).
        detail: String,
    },
    /// A field has a value outside its range.
    #[error("{field} is out of range: {detail}")]
    OutOfRange {
        /// The field.
        field: &'static str,
        /// What the range is.
        detail: String,
    },
    /// The schema version is not one this build understands.
    #[error("unsupported schema version {found}; supported: {supported}")]
    UnsupportedVersion {
        /// The version received.
        found: u64,
        /// The versions this build accepts.
        supported: &'static str,
    },
    /// The topic is not one Hearth defines.
    #[error("unknown topic: {0}")]
    UnknownTopic(String),
}

impl ValidationError {
    /// A short, stable machine-readable code for this kind of error (used in API errors and security events).
    pub fn code(&self) -> &'static str {
        match self {
            ValidationError::TooLong { .. } => "too_long",
            ValidationError::TooShort { .. } => "too_short",
            ValidationError::BadCharacter { .. } => "bad_character",
            ValidationError::Schema { .. } => "schema",
            ValidationError::OutOfRange { .. } => "out_of_range",
            ValidationError::UnsupportedVersion { .. } => "unsupported_version",
            ValidationError::UnknownTopic(_) => "unknown_topic",
        }
    }

    pub(crate) fn schema(what: &'static str, err: serde_json::Error) -> Self {
        ValidationError::Schema { what, detail: err.to_string() }
    }
}
