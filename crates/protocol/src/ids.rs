//! Room and user identifiers.
//!
//! Both follow `^[A-Za-z0-9_.:-]{1,64}$`. The character set keeps ids safe to embed in Redis key
//! names and channel names without escaping, and leaves characters such as `|` and `@` free for the
//! backend to use as separators. Old tutorial clients send room ids as numbers (`1`..`4`); they are
//! normalised to their decimal string so `1` and `"1"` name the same room.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest id accepted, in bytes (all valid characters are ASCII).
pub const MAX_ID_LEN: usize = 64;

/// Why a string is not a valid id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdError {
    /// The id is empty.
    Empty,
    /// The id is longer than [`MAX_ID_LEN`].
    TooLong,
    /// The id contains a character outside `[A-Za-z0-9_.:-]`.
    BadChar,
}

impl fmt::Display for IdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IdError::Empty => f.write_str("must not be empty"),
            IdError::TooLong => write!(f, "must be at most {MAX_ID_LEN} characters"),
            IdError::BadChar => f.write_str("may contain only A-Z a-z 0-9 _ . : -"),
        }
    }
}

/// Checks a candidate id against `^[A-Za-z0-9_.:-]{1,64}$`.
pub fn validate_id(s: &str) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty);
    }
    if s.len() > MAX_ID_LEN {
        return Err(IdError::TooLong);
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
    {
        return Err(IdError::BadChar);
    }
    Ok(())
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            /// Validates and wraps an id.
            pub fn new(s: impl Into<String>) -> Result<Self, IdError> {
                let s = s.into();
                validate_id(&s)?;
                Ok(Self(s))
            }

            /// The id as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::new(s)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let value = serde_json::Value::deserialize(deserializer)?;
                id_from_json(&value)
                    .map(Self)
                    .map_err(|e| serde::de::Error::custom(format!("invalid id: {e}")))
            }
        }
    };
}

id_type!(
    /// A room id, normalised to a string.
    RoomId
);
id_type!(
    /// A user id.
    UserId
);

/// Reads an id from JSON, accepting a string or a non-negative integer (old clients send rooms as
/// numbers). Returns the normalised string.
pub(crate) fn id_from_json(value: &serde_json::Value) -> Result<String, IdError> {
    let s = match value {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Number(n) if n.is_u64() || n.is_i64() => n.to_string(),
        _ => return Err(IdError::BadChar),
    };
    validate_id(&s)?;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_documented_alphabet() {
        assert!(RoomId::new("Room_1.a:b-c").is_ok());
        assert!(RoomId::new("x".repeat(64)).is_ok());
    }

    #[test]
    fn rejects_empty_long_and_foreign_characters() {
        assert_eq!(RoomId::new(""), Err(IdError::Empty));
        assert_eq!(RoomId::new("x".repeat(65)), Err(IdError::TooLong));
        for bad in ["a b", "a/b", "a|b", "a@b", "é", "a\nb", "a*", "{a}"] {
            assert_eq!(UserId::new(bad), Err(IdError::BadChar), "{bad:?}");
        }
    }

    #[test]
    fn numbers_normalise_to_strings() {
        let id: RoomId = serde_json::from_str("3").expect("number id");
        assert_eq!(id.as_str(), "3");
        let same: RoomId = serde_json::from_str("\"3\"").expect("string id");
        assert_eq!(id, same);
        assert!(serde_json::from_str::<RoomId>("1.5").is_err());
        assert!(serde_json::from_str::<RoomId>("true").is_err());
        assert!(serde_json::from_str::<RoomId>("null").is_err());
    }
}
