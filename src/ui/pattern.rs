//! A task's parameter rule (Rust `regex` syntax, matched in full) as an HTML `pattern`
//! attribute (a JavaScript regex compiled with the `v` flag, anchored by the browser).
//!
//! Only a conservative subset converts: literals, `.`, `^`, `$`, `|`, groups `(…)` and
//! `(?:…)`, the quantifiers, simple classes with ranges, and `\d \s \w` (written as the
//! Unicode properties they mean in Rust, since JavaScript's are ASCII). Anything else
//! (flags, named groups, `\b`, `\p{…}`, nested classes, set operations) gives `None`: the
//! form then has no `pattern`, and the server's check (a 422 shown as the flash) is the
//! only one. A wrong client-side check would refuse what the server takes, or the reverse.

const WORD: &str = r"\p{Alphabetic}\p{M}\p{Nd}\p{Pc}\p{Join_Control}";

/// The rule as an HTML `pattern`, or `None` when it does not convert safely.
pub fn html_pattern(rule: &str) -> Option<String> {
    let chars: Vec<char> = rule.chars().collect();
    let mut out = String::new();
    let mut depth = 0u32;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        i += 1;
        match c {
            '\\' => {
                out.push_str(&escape_outside(*chars.get(i)?)?);
                i += 1;
            }
            '[' => {
                let (text, used) = class(&chars[i..])?;
                out.push_str(&text);
                i += used;
            }
            '(' if chars.get(i) == Some(&'?') => {
                if chars.get(i + 1) != Some(&':') {
                    return None;
                }
                out.push_str("(?:");
                i += 2;
                depth += 1;
            }
            '(' => {
                out.push('(');
                depth += 1;
            }
            ')' => {
                depth = depth.checked_sub(1)?;
                out.push(')');
            }
            '{' => {
                let end = chars[i..].iter().position(|c| *c == '}')?;
                let inner: String = chars[i..i + end].iter().collect();
                let valid = !inner.is_empty()
                    && inner.split(',').count() <= 2
                    && inner.chars().all(|c| c.is_ascii_digit() || c == ',')
                    && !inner.starts_with(',');
                if !valid {
                    return None;
                }
                out.push_str(&format!("{{{inner}}}"));
                i += end + 1;
            }
            ']' | '}' => return None,
            c if c.is_control() => return None,
            c => out.push(c),
        }
    }
    (depth == 0).then_some(out)
}

/// An escape outside a class.
fn escape_outside(c: char) -> Option<String> {
    Some(match c {
        'd' => r"\p{Nd}".into(),
        'D' => r"\P{Nd}".into(),
        's' => r"\p{White_Space}".into(),
        'S' => r"\P{White_Space}".into(),
        'w' => format!("[{WORD}]"),
        'W' => format!("[^{WORD}]"),
        'n' | 't' | 'r' => format!("\\{c}"),
        // `\-` is an error outside a class in JavaScript's Unicode modes.
        '-' => "-".into(),
        c if r"^$\.*+?()[]{}|/".contains(c) => format!("\\{c}"),
        _ => return None,
    })
}

/// A character inside a class, as the `v` flag wants it: ASCII punctuation escaped.
fn class_char(c: char) -> Option<String> {
    Some(match c {
        c if c.is_alphanumeric() || c == ' ' || c == '_' || c == '"' || c == '\'' => c.to_string(),
        c if c.is_ascii_punctuation() => format!("\\{c}"),
        c if c.is_control() || c.is_ascii() => return None,
        c => c.to_string(),
    })
}

/// One item of a class at `chars` (after a `\` or a plain character): its text, whether it
/// is a single character (so it may start a range), and the characters used.
fn class_item(chars: &[char]) -> Option<(String, bool, usize)> {
    match chars.first()? {
        '\\' => {
            let c = *chars.get(1)?;
            let text = match c {
                'd' => r"\p{Nd}".to_string(),
                'D' => r"\P{Nd}".to_string(),
                's' => r"\p{White_Space}".to_string(),
                'S' => r"\P{White_Space}".to_string(),
                'w' => WORD.to_string(),
                'n' | 't' | 'r' => return Some((format!("\\{c}"), true, 2)),
                c if c.is_ascii_punctuation() => return Some((class_char(c)?, true, 2)),
                _ => return None,
            };
            Some((text, false, 2))
        }
        '[' => None,
        c => Some((class_char(*c)?, true, 1)),
    }
}

/// A class from just after its `[`: the converted text and the characters used.
fn class(chars: &[char]) -> Option<(String, usize)> {
    let mut out = String::from("[");
    let mut i = 0;
    if chars.first() == Some(&'^') {
        out.push('^');
        i += 1;
    }
    if chars.get(i) == Some(&']') {
        return None;
    }
    loop {
        let c = *chars.get(i)?;
        if c == ']' {
            out.push(']');
            return Some((out, i + 1));
        }
        // Rust's set operations have no safe spelling here.
        if matches!(c, '&' | '-' | '~') && chars.get(i + 1) == Some(&c) {
            return None;
        }
        let (text, single, used) = class_item(&chars[i..])?;
        i += used;
        out.push_str(&text);
        let ranged = single && chars.get(i) == Some(&'-') && chars.get(i + 1) != Some(&']');
        if ranged {
            if chars.get(i + 1) == Some(&'-') {
                return None;
            }
            let (end, single, used) = class_item(chars.get(i + 1..)?)?;
            if !single {
                return None;
            }
            out.push('-');
            out.push_str(&end);
            i += 1 + used;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::html_pattern;

    #[test]
    fn simple_rules_convert() {
        assert_eq!(html_pattern("[a-z0-9-]+").as_deref(), Some(r"[a-z0-9\-]+"));
        assert_eq!(html_pattern("v[0-9]{1,3}").as_deref(), Some("v[0-9]{1,3}"));
        assert_eq!(
            html_pattern("(prod|staging)").as_deref(),
            Some("(prod|staging)")
        );
        assert_eq!(
            html_pattern(r"\d+\.\d+").as_deref(),
            Some(r"\p{Nd}+\.\p{Nd}+")
        );
        assert_eq!(html_pattern("[^/]*").as_deref(), Some(r"[^\/]*"));
        assert_eq!(html_pattern(r"a\-b").as_deref(), Some("a-b"));
        assert_eq!(
            html_pattern(r"[\w.]+").as_deref(),
            Some(r"[\p{Alphabetic}\p{M}\p{Nd}\p{Pc}\p{Join_Control}\.]+")
        );
    }

    #[test]
    fn rules_that_do_not_convert_safely_give_none() {
        for rule in [
            "(?i)abc",
            "(?P<x>a)",
            r"\bword",
            r"\p{Greek}+",
            "[[:alpha:]]",
            "[a-z&&[^aeiou]]",
            "[a--b]",
            "[]a]",
            "a{,3}",
            "(a",
            "a)",
            r"\W[\W]",
        ] {
            assert_eq!(html_pattern(rule), None, "{rule}");
        }
    }

    #[test]
    fn every_converted_rule_is_one_the_server_accepts() {
        for rule in ["[a-z0-9-]+", "(prod|staging)", r"\d{4}-\d{2}", "x*?"] {
            assert!(crate::jobs::task::compile_rule(rule).is_ok());
            assert!(html_pattern(rule).is_some(), "{rule}");
        }
    }
}
