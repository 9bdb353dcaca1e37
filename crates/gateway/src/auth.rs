//! Who a client is: JWT verification (`auth.mode = "jwt"`).
//!
//! In `off` mode (the default, for the single-node quick start) a client is whoever its `login`
//! says. In `jwt` mode identity comes only from a verified token: `sub` is the userId, `name` the
//! userName, and an optional `rooms` claim (ids or `prefix*` patterns) limits the rooms it may
//! join. Tokens are HS256/384/512 with `auth.secret`, or RS256/384, ES256/384 and EdDSA with the
//! PEM public key in `auth.public_key_file`, or with the key named by the token's `kid` in the
//! identity provider's key set at `auth.jwks_url` ([`crate::jwks`]); the token header's `alg`
//! picks the key family, and a token whose `alg` does not match the key is refused (no algorithm
//! confusion).
//!
//! A token reaches the server with the upgrade (`?token=` or `Authorization: Bearer`) or as a
//! first frame `{"event":"auth","token":"…"}`; the HTTP API takes `Authorization: Bearer`.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::HeaderMap;
use chat_protocol::{RoomId, UserId};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::config::AuthSettings;
use crate::jwks::Jwks;

/// The claims this server reads (and `chat-gateway token` writes).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// The user id.
    pub sub: String,
    /// The display name; the user id when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Expiry, seconds since the epoch.
    pub exp: u64,
    /// Not valid before, seconds since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// Issued at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    /// Audience.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
    /// Issuer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// Room ids or `prefix*` patterns the token may join; absent: any room.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rooms: Option<Vec<String>>,
}

/// A verified token: who the connection is and what it may do, until when.
#[derive(Debug, Clone)]
pub struct Grant {
    /// From `sub`.
    pub user_id: UserId,
    /// From `name` (or `sub`).
    pub user_name: String,
    /// `exp`, seconds since the epoch.
    pub expires_at: u64,
    /// The `rooms` claim, if any.
    pub rooms: Option<Vec<String>>,
}

impl Grant {
    /// May this token join `room`? Without a `rooms` claim, any room.
    pub fn allows(&self, room: &RoomId) -> bool {
        match &self.rooms {
            None => true,
            Some(_) => self.lists(room),
        }
    }

    /// Does the `rooms` claim name `room` explicitly (HTTP history without membership)?
    pub fn lists(&self, room: &RoomId) -> bool {
        self.rooms.as_ref().is_some_and(|patterns| {
            patterns.iter().any(|p| match p.strip_suffix('*') {
                Some(prefix) => room.as_str().starts_with(prefix),
                None => p == room.as_str(),
            })
        })
    }

    /// How long until the token expires (plus the leeway), from now; zero if it has.
    pub fn remaining(&self, leeway: Duration) -> Duration {
        let deadline = Duration::from_secs(self.expires_at) + leeway;
        deadline.saturating_sub(now())
    }
}

/// Why a token was refused. The message is safe to show the client.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct AuthError(pub String);

/// The configured verifier of `jwt` mode.
pub struct Verifier {
    hmac: Option<DecodingKey>,
    public: Option<(DecodingKey, KeyKind)>,
    jwks: Option<Arc<Jwks>>,
    audience: String,
    issuer: String,
    leeway: u64,
}

/// What kind of public key `auth.public_key_file` holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyKind {
    Rsa,
    Ec,
    Ed,
}

impl Verifier {
    /// The verifier `settings` ask for: `None` in `off` mode; an error if `jwt` mode has no usable
    /// key.
    pub fn from_settings(settings: &AuthSettings) -> Result<Option<Verifier>, String> {
        match settings.mode.as_str() {
            "off" => return Ok(None),
            "jwt" => {}
            other => {
                return Err(format!(
                    "auth.mode must be \"off\" or \"jwt\", not `{other}`"
                ));
            }
        }
        let hmac = (!settings.secret.is_empty())
            .then(|| DecodingKey::from_secret(settings.secret.as_bytes()));
        let public = if settings.public_key_file.is_empty() {
            None
        } else {
            let pem = std::fs::read(&settings.public_key_file)
                .map_err(|e| format!("auth.public_key_file `{}`: {e}", settings.public_key_file))?;
            let key = if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
                (key, KeyKind::Rsa)
            } else if let Ok(key) = DecodingKey::from_ec_pem(&pem) {
                (key, KeyKind::Ec)
            } else if let Ok(key) = DecodingKey::from_ed_pem(&pem) {
                (key, KeyKind::Ed)
            } else {
                return Err(format!(
                    "auth.public_key_file `{}` is not an RSA, EC or Ed25519 public key in PEM",
                    settings.public_key_file
                ));
            };
            Some(key)
        };
        let jwks = if settings.jwks_url.is_empty() {
            None
        } else {
            Some(Arc::new(Jwks::new(
                &settings.jwks_url,
                settings.jwks_refresh_secs,
                settings.jwks_refresh_min_secs,
            )?))
        };
        if hmac.is_none() && public.is_none() && jwks.is_none() {
            return Err(
                "auth.mode = \"jwt\" needs auth.secret, auth.public_key_file or auth.jwks_url"
                    .to_owned(),
            );
        }
        Ok(Some(Verifier {
            hmac,
            public,
            jwks,
            audience: settings.audience.clone(),
            issuer: settings.issuer.clone(),
            leeway: settings.leeway_secs,
        }))
    }

    /// Leeway granted on `exp` and `nbf`.
    pub fn leeway(&self) -> Duration {
        Duration::from_secs(self.leeway)
    }

    /// The JWKS cache, when `auth.jwks_url` is set: the node runs its [`Jwks::run`].
    pub fn jwks(&self) -> Option<Arc<Jwks>> {
        self.jwks.clone()
    }

    /// Verifies `token`: signature, `exp` and `nbf` (with the leeway), `aud`/`iss` when
    /// configured, and a `sub` that is a valid user id. An asymmetric token with a `kid` is
    /// checked with that key of the JWKS (when `auth.jwks_url` is set), which may fetch the set
    /// again first (see [`crate::jwks`]).
    pub async fn verify(&self, token: &str) -> Result<Grant, AuthError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| AuthError(format!("malformed token: {e}")))?;
        let from_jwks;
        let asymmetric = !matches!(
            header.alg,
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512
        );
        let key = match (&self.jwks, &header.kid) {
            (Some(jwks), Some(kid)) if asymmetric => {
                from_jwks = jwks
                    .key(kid, header.alg)
                    .await
                    .map_err(|e| AuthError(e.0))?;
                Some(&from_jwks)
            }
            _ => self.static_key(header.alg),
        }
        .ok_or_else(|| {
            AuthError(format!(
                "tokens signed with {:?} are not accepted",
                header.alg
            ))
        })?;
        self.check(token, key, header.alg)
    }

    /// The configured secret or PEM key for `alg`.
    fn static_key(&self, alg: Algorithm) -> Option<&DecodingKey> {
        match alg {
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => self.hmac.as_ref(),
            Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512 => self.public_of(KeyKind::Rsa),
            Algorithm::ES256 | Algorithm::ES384 => self.public_of(KeyKind::Ec),
            Algorithm::EdDSA => self.public_of(KeyKind::Ed),
        }
    }

    /// Checks the signature with `key` and the claims.
    fn check(&self, token: &str, key: &DecodingKey, alg: Algorithm) -> Result<Grant, AuthError> {
        let mut validation = Validation::new(alg);
        validation.leeway = self.leeway;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        if self.audience.is_empty() {
            validation.validate_aud = false;
        } else {
            validation.set_audience(&[self.audience.as_str()]);
        }
        if !self.issuer.is_empty() {
            validation.set_issuer(&[self.issuer.as_str()]);
        }
        let data = jsonwebtoken::decode::<Claims>(token, key, &validation)
            .map_err(|e| AuthError(format!("invalid token: {e}")))?;
        let claims = data.claims;
        let user_id = UserId::new(claims.sub.clone())
            .map_err(|e| AuthError(format!("the token's `sub` {e}")))?;
        let user_name = match claims.name {
            Some(name) => {
                chat_protocol::client::check_display_name(&name)
                    .map_err(|e| AuthError(format!("the token's `name`: {e}")))?;
                name
            }
            None => claims.sub,
        };
        Ok(Grant {
            user_id,
            user_name,
            expires_at: claims.exp,
            rooms: claims.rooms,
        })
    }

    fn public_of(&self, kind: KeyKind) -> Option<&DecodingKey> {
        self.public
            .as_ref()
            .filter(|(_, k)| *k == kind)
            .map(|(key, _)| key)
    }
}

/// The token of an upgrade or HTTP request: `Authorization: Bearer …`, else `?token=…`.
pub fn token_of(headers: &HeaderMap, query: Option<&str>) -> Option<String> {
    if let Some(value) = headers.get(axum::http::header::AUTHORIZATION)
        && let Ok(value) = value.to_str()
        && let Some(token) = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
    {
        return Some(token.trim().to_owned());
    }
    query?
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == "token")
        .map(|(_, v)| v.to_owned())
        .filter(|v| !v.is_empty())
}

/// Mints an HS256 token (the dev `chat-gateway token` subcommand and tests).
pub fn mint_hs256(secret: &str, claims: &Claims) -> Result<String, String> {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .map_err(|e| e.to_string())
}

/// Seconds since the epoch, now.
pub fn now_secs() -> u64 {
    now().as_secs()
}

fn now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(secret: &str) -> AuthSettings {
        AuthSettings {
            mode: "jwt".into(),
            secret: secret.into(),
            public_key_file: String::new(),
            audience: String::new(),
            issuer: String::new(),
            leeway_secs: 0,
            timeout_secs: 5,
            jwks_url: String::new(),
            jwks_refresh_secs: 300,
            jwks_refresh_min_secs: 30,
        }
    }

    fn claims(sub: &str, exp: u64) -> Claims {
        Claims {
            sub: sub.into(),
            name: Some("Bob".into()),
            exp,
            nbf: None,
            iat: None,
            aud: None,
            iss: None,
            rooms: Some(vec!["team-*".into(), "lobby".into()]),
        }
    }

    #[tokio::test]
    async fn hs256_round_trip_and_rooms() {
        let v = Verifier::from_settings(&settings("s3cret"))
            .expect("settings")
            .expect("jwt mode");
        let token = mint_hs256("s3cret", &claims("bob", now_secs() + 60)).expect("mint");
        let grant = v.verify(&token).await.expect("valid");
        assert_eq!(grant.user_id.as_str(), "bob");
        assert!(grant.allows(&RoomId::new("team-a").expect("id")));
        assert!(grant.allows(&RoomId::new("lobby").expect("id")));
        assert!(!grant.allows(&RoomId::new("lobby2").expect("id")));
        let wrong = mint_hs256("other", &claims("bob", now_secs() + 60)).expect("mint");
        assert!(v.verify(&wrong).await.is_err());
        let expired = mint_hs256("s3cret", &claims("bob", now_secs() - 10)).expect("mint");
        assert!(v.verify(&expired).await.is_err());
        let bad_sub = mint_hs256("s3cret", &claims("a b", now_secs() + 60)).expect("mint");
        assert!(v.verify(&bad_sub).await.is_err());
    }

    #[test]
    fn token_from_header_or_query() {
        let mut headers = HeaderMap::new();
        assert_eq!(
            token_of(&headers, Some("a=1&token=xyz")).as_deref(),
            Some("xyz")
        );
        headers.insert(
            axum::http::header::AUTHORIZATION,
            "Bearer abc".parse().expect("header"),
        );
        assert_eq!(token_of(&headers, None).as_deref(), Some("abc"));
    }
}
