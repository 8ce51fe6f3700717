//! Dashboard sessions: a cookie that holds no secret, the CSRF token bound to it, login
//! and logout.
//!
//! The cookie is `v1.<token name>.<expiry>.<hex HMAC-SHA256(key = the token's SHA-256
//! digest, "session|<name>|<expiry>")>`: every process sharing the configuration can check
//! it (it survives restarts and works on every VM), and removing or changing the token ends
//! its sessions, since the key is gone. The CSRF token is the same MAC over
//! `"csrf|<name>|<expiry>"`. What a session may see and do is its token's [`Caller`].

use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::http::auth::{Auth, Caller};
use crate::http::AppState;

/// The session cookie's name.
pub const COOKIE: &str = "shiftd_session";

/// Who looks at a page: a token's session, or anybody when no token is configured (the
/// dashboard is then read-only).
#[derive(Debug, Clone)]
pub struct Viewer {
    pub caller: Caller,
    pub session: Option<Session>,
}

/// A valid session: its token's name, its expiry and its CSRF token.
#[derive(Debug, Clone)]
pub struct Session {
    pub name: String,
    pub expiry: u64,
    pub csrf: String,
}

impl Viewer {
    /// True when no token is configured: pages show, forms do not.
    pub fn read_only(&self) -> bool {
        self.session.is_none()
    }

    /// True when this viewer may act on `task` (a session whose token may use it).
    pub fn may_act(&self, task: &str) -> bool {
        self.session.is_some() && self.caller.allows(task)
    }

    /// The CSRF token forms carry (empty when read-only: no form is rendered then).
    pub fn csrf(&self) -> &str {
        self.session.as_ref().map_or("", |s| s.csrf.as_str())
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn mac(key: &[u8; 32], purpose: &str, name: &str, expiry: u64) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(format!("{purpose}|{name}|{expiry}").as_bytes());
    mac
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 || !text.is_ascii() {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}

/// A token name as cookie text: characters a cookie value may not hold are %-encoded.
fn encode_name(name: &str) -> String {
    let mut out = String::new();
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn decode_name(text: &str) -> Option<String> {
    let mut bytes = Vec::new();
    let mut rest = text.as_bytes();
    while let Some((&b, tail)) = rest.split_first() {
        if b == b'%' {
            let code = std::str::from_utf8(tail.get(..2)?).ok()?;
            bytes.push(u8::from_str_radix(code, 16).ok()?);
            rest = &tail[2..];
        } else {
            bytes.push(b);
            rest = tail;
        }
    }
    String::from_utf8(bytes).ok()
}

/// The cookie value of a session of token `name` (digest `key`) ending at `expiry`.
pub fn cookie_value(key: &[u8; 32], name: &str, expiry: u64) -> String {
    let tag = hex(&mac(key, "session", name, expiry).finalize().into_bytes());
    format!("v1.{}.{expiry}.{tag}", encode_name(name))
}

/// The CSRF token of a session.
pub fn csrf_token(key: &[u8; 32], name: &str, expiry: u64) -> String {
    hex(&mac(key, "csrf", name, expiry).finalize().into_bytes())
}

/// Checks a cookie value against the tokens in force at `now`: the session, or `None`
/// (malformed, expired, tampered, or its token removed or changed).
pub fn check_cookie(auth: &Auth, value: &str, now: u64) -> Option<(Session, Caller)> {
    let rest = value.strip_prefix("v1.")?;
    let mut parts = rest.rsplitn(3, '.');
    let tag = unhex(parts.next()?)?;
    let expiry: u64 = parts.next()?.parse().ok()?;
    let name = decode_name(parts.next()?)?;
    if expiry <= now {
        return None;
    }
    let (key, caller) = auth.session_key(&name)?;
    mac(&key, "session", &name, expiry)
        .verify_slice(&tag)
        .ok()?;
    let csrf = csrf_token(&key, &name, expiry);
    Some((Session { name, expiry, csrf }, caller))
}

/// True when `presented` is this session's CSRF token (compared in constant time).
pub fn csrf_matches(session: &Session, presented: &str) -> bool {
    bool::from(session.csrf.as_bytes().ct_eq(presented.as_bytes()))
}

/// The session cookie's value in a request, if any.
fn cookie_in(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix(COOKIE)?.strip_prefix('='))
}

/// Who is asking: `None` when tokens are configured and there is no valid session.
pub fn viewer(state: &AppState, headers: &HeaderMap) -> Option<Viewer> {
    let snapshot = state.snapshot();
    let auth = &snapshot.auth;
    if !auth.enabled() {
        return Some(Viewer {
            caller: Auth::open_caller(),
            session: None,
        });
    }
    let (session, caller) = check_cookie(auth, cookie_in(headers)?, now_secs())?;
    Some(Viewer {
        caller,
        session: Some(session),
    })
}

/// A page's viewer, or the redirect to the login page.
pub fn page_viewer(state: &AppState, headers: &HeaderMap) -> Result<Viewer, Box<Response>> {
    viewer(state, headers).ok_or_else(|| Box::new(Redirect::to("/ui/login").into_response()))
}

/// The viewer of a form POST: a session whose CSRF token the form carries; otherwise a 403
/// page (read-only dashboard, no session, missing or wrong CSRF token).
pub fn actor(state: &AppState, headers: &HeaderMap, csrf: &str) -> Result<Viewer, Box<Response>> {
    let refuse = |why: &str| Box::new(super::error_page(StatusCode::FORBIDDEN, why));
    let viewer = viewer(state, headers).ok_or_else(|| refuse("log in first"))?;
    let Some(session) = &viewer.session else {
        return Err(refuse(super::READ_ONLY));
    };
    if !csrf_matches(session, csrf) {
        tracing::info!(token = %session.name, "dashboard form refused: wrong or missing CSRF token");
        return Err(refuse(
            "this form is not from this dashboard (CSRF token); reload the page and try again",
        ));
    }
    Ok(viewer)
}

/// `Secure` when the request came through a proxy that terminated TLS.
fn secure(headers: &HeaderMap) -> &'static str {
    let https = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("https"));
    if https {
        "; Secure"
    } else {
        ""
    }
}

fn set_cookie(headers: &HeaderMap, value: &str, max_age: u64) -> (header::HeaderName, HeaderValue) {
    let text = format!(
        "{COOKIE}={value}; HttpOnly; SameSite=Strict; Path=/ui; Max-Age={max_age}{}",
        secure(headers)
    );
    (
        header::SET_COOKIE,
        HeaderValue::from_str(&text).expect("cookie text is visible ASCII"),
    )
}

/// `GET /ui/login`: the form (or the overview when no token is configured: nothing to log in).
pub async fn login_form(State(state): State<AppState>) -> Response {
    if !state.snapshot().auth.enabled() {
        return Redirect::to("/ui/").into_response();
    }
    super::html(super::pages::login_page(None))
}

#[derive(Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    token: String,
}

/// `POST /ui/login`: a valid token gets a session cookie and the overview; any other the
/// form again (401), saying nothing of which part was wrong.
pub async fn login(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    let snapshot = state.snapshot_full();
    let auth = &snapshot.auth;
    if !auth.enabled() {
        return Redirect::to("/ui/").into_response();
    }
    if let Some(site) = cross_site(&headers) {
        tracing::info!(origin = %site, "dashboard login refused: the form was sent from another site");
        let page = super::pages::login_page(Some(
            "this login came from another site; open the dashboard's own login page and log in there",
        ));
        return (StatusCode::FORBIDDEN, super::html(page)).into_response();
    }
    let Some(name) = auth.name_of_secret(&form.token) else {
        tracing::info!("dashboard login refused: the token is not valid");
        let page = super::pages::login_page(Some("that token is not valid"));
        return (StatusCode::UNAUTHORIZED, super::html(page)).into_response();
    };
    let (key, _) = auth.session_key(&name).expect("the token was just found");
    let ttl = snapshot.config.ui.session_ttl.as_secs();
    let expiry = now_secs() + ttl;
    tracing::info!(token = %name, "dashboard login");
    let cookie = set_cookie(&headers, &cookie_value(&key, &name, expiry), ttl);
    ([cookie], Redirect::to("/ui/")).into_response()
}

/// The other site a request says it came from, if it says so: a login form sent from
/// another site would log the browser in with the sender's token (a login CSRF), and no
/// session exists yet whose CSRF token could be asked for. Browsers say where a form came
/// from in `Sec-Fetch-Site` (every current one) and `Origin` (a POST always carries it);
/// `Origin` is compared with the host the request was sent to, which nginx passes on in
/// `Host`. A request that carries neither (curl, an old browser) is not a browser's
/// cross-site form and is let through.
fn cross_site(headers: &HeaderMap) -> Option<String> {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(site) = text("sec-fetch-site") {
        return match site.trim() {
            "same-origin" | "none" => None,
            other => Some(format!("Sec-Fetch-Site: {other}")),
        };
    }
    let origin = text("origin")?.trim();
    let host = text("x-forwarded-host").or_else(|| text("host"))?.trim();
    let origin_host = origin
        .split_once("://")
        .map_or(origin, |(_, rest)| rest)
        .trim_end_matches('/');
    (!origin_host.eq_ignore_ascii_case(host)).then(|| origin.to_string())
}

#[derive(Deserialize)]
pub struct CsrfForm {
    #[serde(default)]
    pub csrf: String,
}

/// `POST /ui/logout`: the cookie is cleared (the session itself needs no record).
pub async fn logout(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Response {
    let viewer = match actor(&state, &headers, &form.csrf) {
        Ok(viewer) => viewer,
        Err(refused) => return *refused,
    };
    if let Some(session) = &viewer.session {
        tracing::info!(token = %session.name, "dashboard logout");
    }
    let cookie = set_cookie(&headers, "", 0);
    ([cookie], Redirect::to("/ui/login")).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AuthConfig, TokenConfig};

    fn auth(tokens: &[(&str, &str)]) -> Auth {
        let config = AuthConfig {
            tokens: tokens
                .iter()
                .map(|(name, secret)| TokenConfig {
                    name: name.to_string(),
                    secret: Some(secret.to_string()),
                    tasks: vec!["*".into()],
                    ..Default::default()
                })
                .collect(),
        };
        Auth::from_config(&config).unwrap()
    }

    fn key(auth: &Auth, name: &str) -> [u8; 32] {
        auth.session_key(name).unwrap().0
    }

    #[test]
    fn a_cookie_made_for_a_token_is_valid_until_it_expires() {
        let auth = auth(&[("ops", "s3cret-s3cret-s3cret")]);
        let value = cookie_value(&key(&auth, "ops"), "ops", 2000);
        let (session, caller) = check_cookie(&auth, &value, 1000).unwrap();
        assert_eq!(session.name, "ops");
        assert_eq!(caller.name.as_deref(), Some("ops"));
        assert!(csrf_matches(
            &session,
            &csrf_token(&key(&auth, "ops"), "ops", 2000)
        ));
        assert!(check_cookie(&auth, &value, 2000).is_none(), "expired");
    }

    #[test]
    fn a_tampered_cookie_is_refused() {
        let auth = auth(&[
            ("ops", "s3cret-s3cret-s3cret"),
            ("ci", "other-other-other-other"),
        ]);
        let value = cookie_value(&key(&auth, "ops"), "ops", 2000);
        // A later expiry with the same MAC.
        let longer = value.replace(".2000.", ".9000.");
        assert!(check_cookie(&auth, &longer, 1000).is_none());
        // Another token's name with ops' MAC.
        let renamed = value.replacen("v1.ops.", "v1.ci.", 1);
        assert!(check_cookie(&auth, &renamed, 1000).is_none());
        // One changed hex digit.
        let mut flipped = value.clone();
        let last = flipped.pop().unwrap();
        flipped.push(if last == '0' { '1' } else { '0' });
        assert!(check_cookie(&auth, &flipped, 1000).is_none());
        assert!(check_cookie(&auth, "v1.ops.2000", 1000).is_none());
        assert!(check_cookie(&auth, "garbage", 1000).is_none());
    }

    #[test]
    fn a_session_ends_when_its_token_is_removed_or_changed() {
        let before = auth(&[("ops", "s3cret-s3cret-s3cret")]);
        let value = cookie_value(&key(&before, "ops"), "ops", 2000);
        assert!(check_cookie(&auth(&[("ci", "other-other-other-other")]), &value, 1000).is_none());
        assert!(check_cookie(&auth(&[("ops", "new secret new secret")]), &value, 1000).is_none());
    }

    #[test]
    fn the_csrf_token_of_one_session_does_not_fit_another() {
        let auth = auth(&[
            ("ops", "s3cret-s3cret-s3cret"),
            ("ci", "other-other-other-other"),
        ]);
        let ops = cookie_value(&key(&auth, "ops"), "ops", 2000);
        let (session, _) = check_cookie(&auth, &ops, 1000).unwrap();
        assert!(!csrf_matches(
            &session,
            &csrf_token(&key(&auth, "ci"), "ci", 2000)
        ));
        assert!(!csrf_matches(
            &session,
            &csrf_token(&key(&auth, "ops"), "ops", 3000)
        ));
        assert!(!csrf_matches(&session, ""));
        // The CSRF token is not the cookie's MAC.
        assert!(!ops.ends_with(&session.csrf));
    }

    #[test]
    fn a_login_from_another_site_is_told_apart() {
        let headers = |pairs: &[(&'static str, &'static str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.insert(*k, HeaderValue::from_static(v));
            }
            h
        };
        for same in [
            headers(&[]),
            headers(&[("sec-fetch-site", "same-origin")]),
            headers(&[("sec-fetch-site", "none")]),
            headers(&[("origin", "http://vm1:8080"), ("host", "vm1:8080")]),
            headers(&[
                ("origin", "https://jobs.example"),
                ("host", "shiftd"),
                ("x-forwarded-host", "jobs.example"),
            ]),
            // Sec-Fetch-Site is the browser's own word and wins.
            headers(&[
                ("sec-fetch-site", "same-origin"),
                ("origin", "http://elsewhere"),
            ]),
        ] {
            assert_eq!(cross_site(&same), None, "{same:?}");
        }
        for other in [
            headers(&[("sec-fetch-site", "cross-site")]),
            headers(&[("sec-fetch-site", "same-site")]),
            headers(&[("origin", "https://evil.example"), ("host", "vm1:8080")]),
            headers(&[("origin", "null"), ("host", "vm1:8080")]),
        ] {
            assert!(cross_site(&other).is_some(), "{other:?}");
        }
    }

    #[test]
    fn odd_token_names_survive_the_cookie() {
        let auth = auth(&[("deploy bot; v2.0", "s3cret-s3cret-s3cret")]);
        let name = "deploy bot; v2.0";
        let value = cookie_value(&key(&auth, name), name, 2000);
        assert!(!value.contains(' ') && !value.contains(';'));
        assert_eq!(check_cookie(&auth, &value, 1000).unwrap().0.name, name);
    }
}
