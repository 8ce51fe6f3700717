//! Bearer tokens: which caller may start which task. Secrets are compared in constant
//! time (as SHA-256 digests, so their lengths do not leak either) and never logged.

use axum::http::HeaderMap;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::error::ApiError;
use crate::config::{AuthConfig, ConfigError};

/// The tokens in force.
#[derive(Clone, Default)]
pub struct Auth {
    tokens: Vec<Token>,
}

#[derive(Clone)]
struct Token {
    name: String,
    digest: [u8; 32],
    tasks: Vec<String>,
}

/// Who made a request: a token's name, or nobody when auth is off.
#[derive(Debug, Clone)]
pub struct Caller {
    pub name: Option<String>,
    tasks: Option<Vec<String>>,
}

impl Caller {
    /// May this caller start (or cancel) jobs of `task`?
    pub fn may_use(&self, task: &str) -> Result<(), ApiError> {
        if self.allows(task) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!(
                "this token may not use task `{task}`"
            )))
        }
    }

    /// True when this caller may use, and so see the jobs of, `task`.
    pub fn allows(&self, task: &str) -> bool {
        match &self.tasks {
            None => true,
            Some(tasks) => tasks.iter().any(|t| t == "*" || t == task),
        }
    }

    /// The tasks whose jobs this caller may read; `None` means every task.
    pub fn readable_tasks(&self) -> Option<&[String]> {
        match &self.tasks {
            Some(tasks) if !tasks.iter().any(|t| t == "*") => Some(tasks),
            _ => None,
        }
    }
}

impl Auth {
    /// Reads each token's secret (from the config or its file).
    pub fn from_config(config: &AuthConfig) -> Result<Self, ConfigError> {
        let tokens = config
            .tokens
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let secret = t.resolve_secret(i)?;
                Ok(Token {
                    name: t.name.clone(),
                    digest: Sha256::digest(secret.as_bytes()).into(),
                    tasks: t.tasks.clone(),
                })
            })
            .collect::<Result<Vec<_>, ConfigError>>()?;
        Ok(Self { tokens })
    }

    pub fn enabled(&self) -> bool {
        !self.tokens.is_empty()
    }

    /// Checks the `Authorization` header: 401 without a valid token.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Caller, ApiError> {
        if !self.enabled() {
            return Ok(Caller {
                name: None,
                tasks: None,
            });
        }
        let presented = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .ok_or(ApiError::Unauthorized(
                "missing or malformed Authorization header; send `Authorization: Bearer <token>`",
            ))?;
        let token = self
            .find(presented)
            .ok_or(ApiError::Unauthorized("the bearer token is not valid"))?;
        Ok(Caller {
            name: Some(token.name.clone()),
            tasks: Some(token.tasks.clone()),
        })
    }

    /// The token whose secret `presented` is, compared as `authenticate` does.
    fn find(&self, presented: &str) -> Option<&Token> {
        let digest: [u8; 32] = Sha256::digest(presented.trim().as_bytes()).into();
        // Look at every token, whatever matches, so timing says nothing about which.
        let mut found: Option<&Token> = None;
        for token in &self.tokens {
            if bool::from(token.digest.ct_eq(&digest)) {
                found = Some(token);
            }
        }
        found
    }

    /// The name of the token whose secret `presented` is (the dashboard's login).
    pub fn name_of_secret(&self, presented: &str) -> Option<String> {
        self.find(presented).map(|t| t.name.clone())
    }

    /// A token's digest (the key of its dashboard sessions) and what it may do, by name:
    /// `None` once the token is removed, so its sessions end with it.
    pub fn session_key(&self, name: &str) -> Option<([u8; 32], Caller)> {
        self.tokens.iter().find(|t| t.name == name).map(|t| {
            let caller = Caller {
                name: Some(t.name.clone()),
                tasks: Some(t.tasks.clone()),
            };
            (t.digest, caller)
        })
    }

    /// Who a request is when no token is configured: anybody, allowed every task.
    pub fn open_caller() -> Caller {
        Caller {
            name: None,
            tasks: None,
        }
    }
}

/// The caller of an API request, as an extractor: authenticated from the request's headers
/// where they lie (no copy of the header map), with the tokens in force. A request without
/// a valid token, where tokens are configured, is refused with the 401 of [`Auth::authenticate`].
impl axum::extract::FromRequestParts<super::AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &super::AppState,
    ) -> Result<Self, ApiError> {
        state.snapshot().auth.authenticate(&parts.headers)
    }
}
