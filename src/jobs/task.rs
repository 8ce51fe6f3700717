//! A task definition made ready to run: compiled parameter rules and argv substitution.
//! No shell is ever involved: `{param}` replaces one whole argument, `{{param}}` is the
//! literal `{param}`, and every other brace is literal.

use std::collections::BTreeMap;
use std::sync::Arc;

use regex_automata::meta::Regex;
use regex_syntax::hir::{Hir, Look};

use crate::config::{placeholder, unescape_placeholder, ConfigError, TaskConfig};

/// Compiles a parameter rule so that a value must match it in full. Validation (`shiftd
/// check`, a reload) and serving use this one function, so a rule that passes the check
/// is the rule that runs.
///
/// The anchors are added to the parsed pattern, not to its text: wrapping the text as
/// `^(?:...)$` breaks on patterns that change how the rest of the text is read, such as
/// `(?x)` with a `#` comment, which would swallow the closing `)$`.
pub fn compile_rule(pattern: &str) -> Result<Regex, String> {
    let hir = regex_syntax::ParserBuilder::new()
        .build()
        .parse(pattern)
        .map_err(|e| format!("not a valid regex: {e}"))?;
    let anchored = Hir::concat(vec![Hir::look(Look::Start), hir, Hir::look(Look::End)]);
    Regex::builder()
        .build_from_hir(&anchored)
        .map_err(|e| format!("the regex cannot be compiled: {e}"))
}

/// A configured task with its regexes compiled.
#[derive(Debug, Clone)]
pub struct Task {
    pub name: String,
    pub config: TaskConfig,
    params: Vec<(String, Regex)>,
}

/// Why the parameters of a request were refused (an HTTP 422).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParamError {
    #[error("unknown parameter `{0}`; this task accepts: {1}")]
    Unknown(String, String),
    #[error("parameter `{0}` does not match {1}")]
    NoMatch(String, String),
    #[error("parameter `{0}` is required")]
    Missing(String),
    #[error("parameter `{0}` must be a string")]
    NotAString(String),
}

impl Task {
    /// Compiles a task's parameter rules; an error names the rule's key.
    pub fn new(name: &str, config: &TaskConfig) -> Result<Self, ConfigError> {
        let params = config
            .params
            .iter()
            .map(|(k, pattern)| {
                compile_rule(pattern)
                    .map(|rule| (k.clone(), rule))
                    .map_err(|message| ConfigError {
                        key: format!("tasks.{name}.params.{k}"),
                        message,
                    })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            name: name.to_string(),
            config: config.clone(),
            params,
        })
    }

    /// Compiles every task of a configuration.
    pub fn all(
        tasks: &BTreeMap<String, TaskConfig>,
    ) -> Result<BTreeMap<String, Arc<Task>>, ConfigError> {
        tasks
            .iter()
            .map(|(name, cfg)| Ok((name.clone(), Arc::new(Task::new(name, cfg)?))))
            .collect()
    }

    /// The parameters the command uses: a request must give each of them.
    pub fn required_params(&self) -> Vec<&str> {
        let mut required: Vec<&str> = self
            .config
            .command
            .iter()
            .filter_map(|arg| placeholder(arg))
            .collect();
        required.sort_unstable();
        required.dedup();
        required
    }

    /// Checks request parameters: every name known, every value a string matching its rule,
    /// and every parameter the command uses present.
    pub fn check_params(
        &self,
        given: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<BTreeMap<String, String>, ParamError> {
        let mut out = BTreeMap::new();
        for (name, value) in given {
            let Some((_, rule)) = self.params.iter().find(|(k, _)| k == name) else {
                let known: Vec<&str> = self.params.iter().map(|(k, _)| k.as_str()).collect();
                let known = if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                };
                return Err(ParamError::Unknown(name.clone(), known));
            };
            let serde_json::Value::String(text) = value else {
                return Err(ParamError::NotAString(name.clone()));
            };
            if !rule.is_match(text.as_str()) {
                return Err(ParamError::NoMatch(
                    name.clone(),
                    self.config.params[name].clone(),
                ));
            }
            out.insert(name.clone(), text.clone());
        }
        for arg in &self.config.command {
            if let Some(p) = placeholder(arg) {
                if !out.contains_key(p) {
                    return Err(ParamError::Missing(p.to_string()));
                }
            }
        }
        Ok(out)
    }

    /// The argv to execute: each `{param}` argument replaced by its value, each
    /// `{{param}}` argument made the literal `{param}`, everything else as written.
    pub fn argv(&self, params: &BTreeMap<String, String>) -> Result<Vec<String>, ParamError> {
        self.config
            .command
            .iter()
            .map(|arg| match placeholder(arg) {
                Some(p) => params
                    .get(p)
                    .cloned()
                    .ok_or_else(|| ParamError::Missing(p.to_string())),
                None => Ok(unescape_placeholder(arg).unwrap_or(arg).to_string()),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn task() -> Task {
        let mut cfg = TaskConfig {
            command: vec!["/bin/echo".into(), "{who}".into(), "literal {x}".into()],
            ..Default::default()
        };
        cfg.params.insert("who".into(), "[a-z]+".into());
        Task::new("greet", &cfg).unwrap()
    }

    fn params(v: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn substitutes_whole_arguments_only() {
        let t = task();
        let p = t.check_params(&params(json!({"who": "ann"}))).unwrap();
        assert_eq!(t.argv(&p).unwrap(), vec!["/bin/echo", "ann", "literal {x}"]);
    }

    #[test]
    fn values_must_match_in_full() {
        let t = task();
        assert!(matches!(
            t.check_params(&params(json!({"who": "ann; rm -rf /"}))),
            Err(ParamError::NoMatch(..))
        ));
        assert!(matches!(
            t.check_params(&params(json!({"who": "ANN"}))),
            Err(ParamError::NoMatch(..))
        ));
    }

    #[test]
    fn unknown_missing_and_non_string_are_refused() {
        let t = task();
        assert!(matches!(
            t.check_params(&params(json!({"who": "a", "x": "b"}))),
            Err(ParamError::Unknown(..))
        ));
        assert!(matches!(
            t.check_params(&params(json!({}))),
            Err(ParamError::Missing(_))
        ));
        assert!(matches!(
            t.check_params(&params(json!({"who": 1}))),
            Err(ParamError::NotAString(_))
        ));
    }
}

#[cfg(test)]
mod rule_tests {
    use super::*;
    use serde_json::json;

    fn one_rule(pattern: &str) -> Task {
        let mut cfg = TaskConfig {
            command: vec!["/bin/echo".into(), "{name}".into()],
            ..Default::default()
        };
        cfg.params.insert("name".into(), pattern.into());
        Task::new("t", &cfg).unwrap()
    }

    fn accepts(t: &Task, value: &str) -> bool {
        t.check_params(json!({ "name": value }).as_object().unwrap())
            .is_ok()
    }

    /// Finding 12: a verbose-mode rule with a `#` comment used to compile in validation but
    /// panic in `Task::new`, whose textual `^(?:...)$` anchors the comment swallowed.
    #[test]
    fn verbose_rules_with_comments_compile_and_stay_anchored() {
        let t = one_rule("(?x)[a-z]+ # comment");
        assert!(accepts(&t, "abc"));
        assert!(!accepts(&t, "ABC"));
        assert!(!accepts(&t, "abc def"));
    }

    /// Finding 12: alternations are anchored as a whole, not only their first and last branch.
    #[test]
    fn alternations_must_match_in_full() {
        let t = one_rule("a|b");
        assert!(accepts(&t, "a") && accepts(&t, "b"));
        assert!(!accepts(&t, "ab") && !accepts(&t, "xa") && !accepts(&t, "bx"));
    }

    /// Finding 12: an invalid rule is an error that names its key, never a panic.
    #[test]
    fn invalid_rules_are_errors_naming_the_key() {
        let mut cfg = TaskConfig {
            command: vec!["/bin/true".into()],
            ..Default::default()
        };
        cfg.params.insert("name".into(), "[a-".into());
        let e = Task::new("t", &cfg).unwrap_err();
        assert_eq!(e.key, "tasks.t.params.name", "{e}");
    }

    /// Finding 16: `{{name}}` is the literal `{name}`; other braces are literal as written.
    #[test]
    fn escaped_placeholders_and_other_braces_are_literal() {
        let cfg = TaskConfig {
            command: vec![
                "/bin/sh".into(),
                "-c".into(),
                "echo ${HOME} {x}".into(),
                "{{name}}".into(),
                "{".into(),
            ],
            ..Default::default()
        };
        let t = Task::new("t", &cfg).unwrap();
        let argv = t.argv(&BTreeMap::new()).unwrap();
        assert_eq!(
            argv,
            vec!["/bin/sh", "-c", "echo ${HOME} {x}", "{name}", "{"]
        );
    }
}
