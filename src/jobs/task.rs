//! A task definition made ready to run: compiled parameter rules and argv substitution.
//! No shell is ever involved: `{param}` replaces one whole argument.

use std::collections::BTreeMap;
use std::sync::Arc;

use regex::Regex;

use crate::config::{placeholder, TaskConfig};

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
    /// Compiles a task; the configuration was validated already, so the regexes compile.
    pub fn new(name: &str, config: &TaskConfig) -> Self {
        let params = config
            .params
            .iter()
            .map(|(k, pattern)| {
                // Anchored: a value must match in full, not merely contain a match.
                let anchored = format!("^(?:{pattern})$");
                (
                    k.clone(),
                    Regex::new(&anchored).expect("validated with the configuration"),
                )
            })
            .collect();
        Self {
            name: name.to_string(),
            config: config.clone(),
            params,
        }
    }

    /// Compiles every task of a configuration.
    pub fn all(tasks: &BTreeMap<String, TaskConfig>) -> BTreeMap<String, Arc<Task>> {
        tasks
            .iter()
            .map(|(name, cfg)| (name.clone(), Arc::new(Task::new(name, cfg))))
            .collect()
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
            if !rule.is_match(text) {
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

    /// The argv to execute, with each `{param}` argument replaced by its value.
    pub fn argv(&self, params: &BTreeMap<String, String>) -> Result<Vec<String>, ParamError> {
        self.config
            .command
            .iter()
            .map(|arg| match placeholder(arg) {
                Some(p) => params
                    .get(p)
                    .cloned()
                    .ok_or_else(|| ParamError::Missing(p.to_string())),
                None => Ok(arg.clone()),
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
        Task::new("greet", &cfg)
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
