//! Redaction: the one place that decides what of a configuration or a URL may be shown.
//!
//! Everything that prints, shows or logs a configuration or a database URL goes through
//! here (`shiftd check`, `Db.location`, `/v1/status`, connection errors), so a password
//! in `database.url`, a task's environment or a token's secret never reaches the journal,
//! a terminal or an unauthenticated client.

use crate::config::Config;

/// What a hidden value is shown as.
pub const REDACTED: &str = "<redacted>";

/// True for a URL query parameter whose value is a credential: `password`,
/// `sslpassword`, or any name containing `pass`, `secret`, `token` or `key`.
fn sensitive_parameter(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    ["pass", "secret", "token", "key"]
        .iter()
        .any(|word| name.contains(word))
}

/// A URL with the password of its user information and the values of its sensitive query
/// parameters replaced by `<redacted>`; the user, host, path and other parameters stay.
pub fn url(url: &str) -> String {
    let (main, fragment) = match url.split_once('#') {
        Some((main, fragment)) => (main, Some(fragment)),
        None => (url, None),
    };
    let (base, query) = match main.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (main, None),
    };
    let mut out = userinfo(base);
    if let Some(query) = query {
        out.push('?');
        let parameters: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((name, _)) if sensitive_parameter(name) => format!("{name}={REDACTED}"),
                _ => pair.to_string(),
            })
            .collect();
        out.push_str(&parameters.join("&"));
    }
    if let Some(fragment) = fragment {
        out.push('#');
        out.push_str(fragment);
    }
    out
}

/// `scheme://user:password@host/...` without the password.
fn userinfo(base: &str) -> String {
    let Some(scheme_end) = base.find("://").map(|i| i + 3) else {
        return base.to_string();
    };
    let authority_end = base[scheme_end..]
        .find('/')
        .map_or(base.len(), |i| scheme_end + i);
    let authority = &base[scheme_end..authority_end];
    match authority.rsplit_once('@') {
        Some((info, host)) => match info.split_once(':') {
            Some((user, _password)) => format!(
                "{}{user}:{REDACTED}@{host}{}",
                &base[..scheme_end],
                &base[authority_end..]
            ),
            None => base.to_string(),
        },
        None => base.to_string(),
    }
}

/// `text` (an error message) with every occurrence of the secret parts of `url` removed:
/// the whole URL is replaced by its redacted form, and so is a password that appears alone.
pub fn in_text(text: &str, url: &str) -> String {
    let mut out = if url.is_empty() {
        text.to_string()
    } else {
        text.replace(url, &self::url(url))
    };
    for secret in secrets_of(url) {
        out = out.replace(&secret, REDACTED);
    }
    out
}

/// The password and sensitive parameter values of a URL (at least 4 characters each, so a
/// short value does not blank out ordinary words).
fn secrets_of(url: &str) -> Vec<String> {
    let mut found = Vec::new();
    let main = url.split('#').next().unwrap_or("");
    let (base, query) = main.split_once('?').unwrap_or((main, ""));
    if let Some(rest) = base.split_once("://").map(|(_, r)| r) {
        let authority = rest.split('/').next().unwrap_or("");
        if let Some((info, _)) = authority.rsplit_once('@') {
            if let Some((_, password)) = info.split_once(':') {
                found.push(password.to_string());
            }
        }
    }
    for pair in query.split('&') {
        if let Some((name, value)) = pair.split_once('=') {
            if sensitive_parameter(name) {
                found.push(value.to_string());
            }
        }
    }
    found.retain(|s| s.len() >= 4 && s != REDACTED);
    found
}

/// A copy of the configuration that is safe to print: the database URL redacted, every
/// task's environment values replaced (the keys stay, they say what is set), and token
/// secrets removed.
pub fn config(config: &Config) -> Config {
    let mut safe = config.clone();
    safe.database.url = url(&safe.database.url);
    for task in safe.tasks.values_mut() {
        for value in task.env.values_mut() {
            *value = REDACTED.to_string();
        }
        if let Some(notify_url) = &mut task.notify_url {
            *notify_url = url(notify_url);
        }
    }
    for token in &mut safe.auth.tokens {
        if token.secret.is_some() {
            token.secret = Some(REDACTED.to_string());
        }
    }
    safe
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Finding 11: passwords in user information and in query parameters are hidden.
    #[test]
    fn url_passwords_and_sensitive_parameters_are_redacted() {
        assert_eq!(
            url("postgres://app:s3cret@db:5432/x"),
            "postgres://app:<redacted>@db:5432/x"
        );
        assert_eq!(url("postgres://app@db/x"), "postgres://app@db/x");
        assert_eq!(
            url("sqlite://shiftd-data/shiftd.db"),
            "sqlite://shiftd-data/shiftd.db"
        );
        assert_eq!(
            url("postgres://u:hunter2@h/db?password=s3cr3t&sslmode=require&sslpassword=x&api_key=k&my_token=t&client_secret=c"),
            "postgres://u:<redacted>@h/db?password=<redacted>&sslmode=require&sslpassword=<redacted>&api_key=<redacted>&my_token=<redacted>&client_secret=<redacted>"
        );
        // An `@` in the path is not user information.
        assert_eq!(url("sqlite:///data/a@b.db"), "sqlite:///data/a@b.db");
        assert_eq!(url(""), "");
    }

    /// Finding 11: an error message that quotes the URL or the password alone is cleaned.
    #[test]
    fn secrets_are_removed_from_messages() {
        let u = "postgres://u:hunter2hunter2@h/db?password=s3cr3tpw";
        let message = format!("cannot connect to {u}: password hunter2hunter2 refused, s3cr3tpw");
        let clean = in_text(&message, u);
        assert!(!clean.contains("hunter2hunter2"), "{clean}");
        assert!(!clean.contains("s3cr3tpw"), "{clean}");
        assert!(clean.contains("postgres://u:<redacted>@h/db"), "{clean}");
    }

    /// Finding 11: the printable configuration keeps env keys, not their values.
    #[test]
    fn config_copy_hides_env_values_tokens_and_urls() {
        let mut c = Config::default();
        c.database.url = "postgres://u:pw12345@h/db".into();
        let mut task = crate::config::TaskConfig::default();
        task.env.insert("API_KEY".into(), "topsecretvalue".into());
        c.tasks.insert("t".into(), task);
        c.auth.tokens.push(crate::config::TokenConfig {
            name: "ci".into(),
            secret: Some("0123456789abcdef0".into()),
            ..Default::default()
        });
        let safe = config(&c);
        let shown = format!("{safe:?}");
        for secret in ["pw12345", "topsecretvalue", "0123456789abcdef0"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert_eq!(safe.tasks["t"].env["API_KEY"], REDACTED);
    }
}
