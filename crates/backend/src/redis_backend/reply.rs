//! Turning Redis errors and replies into backend results without trusting either.
//!
//! Every reply is read as a raw [`redis::Value`] and checked by hand, so a key of the wrong type, a
//! field that is not a number or a non-UTF-8 string becomes [`BackendError::Corrupt`] naming what
//! was wrong, never a panic and never a silently wrong number.

use redis::{ErrorKind, RedisError, ServerErrorKind, Value};

use crate::BackendError;

/// Server error codes that mean "try again later" rather than "the data is bad".
const TRANSIENT_CODES: &[&str] = &[
    "LOADING",
    "BUSY",
    "TRYAGAIN",
    "CLUSTERDOWN",
    "MASTERDOWN",
    "READONLY",
    "OOM",
    "MISCONF",
    "NOAUTH",
    "WRONGPASS",
    "NOPERM",
    "NOREPLICAS",
    "NOSCRIPT",
    "UNBLOCKED",
];

/// Maps a redis-rs error. Connection trouble, timeouts and transient server states are
/// [`BackendError::Unavailable`] (retriable); every other server error comes from running a
/// command or script against data it cannot handle (`WRONGTYPE`, a hash field that is not an
/// integer, our own `CORRUPT` script errors), so it is [`BackendError::Corrupt`].
pub(crate) fn map_error(what: &str, err: &RedisError) -> BackendError {
    let unavailable = || BackendError::Unavailable(format!("{what}: {err}"));
    let corrupt = || BackendError::Corrupt(format!("{what}: {err}"));
    if err.is_io_error()
        || err.is_timeout()
        || err.is_connection_dropped()
        || err.is_connection_refusal()
    {
        return unavailable();
    }
    match err.kind() {
        ErrorKind::Parse | ErrorKind::UnexpectedReturnType => corrupt(),
        ErrorKind::Server(
            ServerErrorKind::BusyLoading
            | ServerErrorKind::TryAgain
            | ServerErrorKind::ClusterDown
            | ServerErrorKind::MasterDown
            | ServerErrorKind::ReadOnly
            | ServerErrorKind::NoPerm
            | ServerErrorKind::NoScript,
        ) => unavailable(),
        ErrorKind::Server(_) | ErrorKind::Extension => match err.code() {
            Some(code) if TRANSIENT_CODES.contains(&code) => unavailable(),
            _ => corrupt(),
        },
        // Client-side states: authentication, configuration, connection handling.
        _ => unavailable(),
    }
}

fn corrupt(what: &str, detail: impl std::fmt::Display) -> BackendError {
    BackendError::Corrupt(format!("{what}: {detail}"))
}

/// A server error embedded in a reply (pipelines, MULTI) as a backend error.
fn embedded_error(what: &str, value: &Value) -> Option<BackendError> {
    match value {
        Value::ServerError(e) => {
            let code = e.code();
            Some(if TRANSIENT_CODES.contains(&code) {
                BackendError::Unavailable(format!("{what}: {code} {}", e.details().unwrap_or("")))
            } else {
                corrupt(what, format!("{code} {}", e.details().unwrap_or("")))
            })
        }
        _ => None,
    }
}

/// An array reply (RESP2 array or RESP3 set).
pub(crate) fn array(what: &str, value: Value) -> Result<Vec<Value>, BackendError> {
    match value {
        Value::Array(items) | Value::Set(items) => Ok(items),
        other => Err(embedded_error(what, &other)
            .unwrap_or_else(|| corrupt(what, format!("expected an array, got {other:?}")))),
    }
}

/// An integer reply, or an integer written as text (hash fields, scores).
pub(crate) fn int(what: &str, value: &Value) -> Result<i64, BackendError> {
    match value {
        Value::Int(n) => Ok(*n),
        Value::BulkString(bytes) => std::str::from_utf8(bytes)
            .ok()
            .and_then(|s| s.parse::<i64>().ok())
            .ok_or_else(|| {
                corrupt(
                    what,
                    format!(
                        "expected an integer, got {:?}",
                        String::from_utf8_lossy(bytes)
                    ),
                )
            }),
        Value::SimpleString(s) => s
            .parse::<i64>()
            .map_err(|_| corrupt(what, format!("expected an integer, got {s:?}"))),
        other => Err(embedded_error(what, other)
            .unwrap_or_else(|| corrupt(what, format!("expected an integer, got {other:?}")))),
    }
}

/// A non-negative integer reply.
pub(crate) fn uint(what: &str, value: &Value) -> Result<u64, BackendError> {
    let n = int(what, value)?;
    u64::try_from(n).map_err(|_| corrupt(what, format!("expected a non-negative integer, got {n}")))
}

/// A string reply; `None` for nil (a missing key or field).
pub(crate) fn opt_string(what: &str, value: Value) -> Result<Option<String>, BackendError> {
    match value {
        Value::Nil => Ok(None),
        Value::BulkString(bytes) => String::from_utf8(bytes)
            .map(Some)
            .map_err(|_| corrupt(what, "not UTF-8")),
        Value::SimpleString(s) => Ok(Some(s)),
        Value::VerbatimString { text, .. } => Ok(Some(text)),
        Value::Okay => Ok(Some("OK".to_owned())),
        Value::Int(n) => Ok(Some(n.to_string())),
        other => Err(embedded_error(what, &other)
            .unwrap_or_else(|| corrupt(what, format!("expected a string, got {other:?}")))),
    }
}

/// A string reply that must be present.
pub(crate) fn string(what: &str, value: Value) -> Result<String, BackendError> {
    opt_string(what, value)?.ok_or_else(|| corrupt(what, "missing value"))
}

/// A decimal text field that may be missing (missing = 0, e.g. the seq of an empty log).
pub(crate) fn seq_field(what: &str, value: Value) -> Result<u64, BackendError> {
    match opt_string(what, value)? {
        None => Ok(0),
        Some(s) => s
            .parse::<u64>()
            .map_err(|_| corrupt(what, format!("expected a seq, got {s:?}"))),
    }
}

/// An epoch read back from Redis: it is echoed to clients and compared by them, so only plain
/// ids are accepted (the scripts check the same before splicing one into JSON).
pub(crate) fn epoch(what: &str, value: Value) -> Result<String, BackendError> {
    let epoch = string(what, value)?;
    if epoch.is_empty()
        || epoch.len() > 64
        || !epoch
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(corrupt(what, format!("epoch {epoch:?} is not a plain id")));
    }
    Ok(epoch)
}

/// Takes the next item of a fixed-shape script reply.
pub(crate) fn next(
    what: &str,
    items: &mut std::vec::IntoIter<Value>,
) -> Result<Value, BackendError> {
    items
        .next()
        .ok_or_else(|| corrupt(what, "reply is shorter than expected"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_of_the_wrong_shape_are_corrupt_not_panics() {
        assert!(matches!(
            int("x", &Value::BulkString(b"abc".to_vec())),
            Err(BackendError::Corrupt(_))
        ));
        assert!(matches!(
            uint("x", &Value::Int(-1)),
            Err(BackendError::Corrupt(_))
        ));
        assert!(matches!(
            array("x", Value::Int(1)),
            Err(BackendError::Corrupt(_))
        ));
        assert!(matches!(
            epoch("x", Value::BulkString(b"a\"b".to_vec())),
            Err(BackendError::Corrupt(_))
        ));
        assert!(matches!(
            opt_string("x", Value::BulkString(vec![0xff, 0xfe])),
            Err(BackendError::Corrupt(_))
        ));
        assert_eq!(seq_field("x", Value::Nil).ok(), Some(0));
        assert_eq!(uint("x", &Value::BulkString(b"42".to_vec())).ok(), Some(42));
    }

    #[test]
    fn io_errors_are_unavailable() {
        let err = RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert!(matches!(map_error("x", &err), BackendError::Unavailable(_)));
    }
}
