//! The pieces both policy parsers share: the trimmed policy as characters
//! with the scanning helpers ([`Parser`]), and the error they make
//! ([`PolicyError`], with what was [`Found`]). The policy forms are parsed in
//! `policy.rs`, the cron fields in `cron.rs`.

use std::fmt;

/// What the parser found where it expected something else.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Found {
    /// The policy ended.
    End,
    /// This text (a word, a number, or one character).
    Text(String),
}

impl fmt::Display for Found {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Found::End => f.write_str("the end of the policy"),
            Found::Text(t) => write!(f, "{t:?}"),
        }
    }
}

/// A policy that does not parse: where (0-based character position in the
/// trimmed policy), what was expected there, and what was found.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "policy {policy:?}: at character {position}: expected {expected}, found {found}{}",
    hint_suffix(.hint)
)]
pub struct PolicyError {
    /// The policy as parsed (trimmed).
    pub policy: String,
    pub position: usize,
    pub expected: String,
    pub found: Found,
    /// Why the found text does not do, or what to write instead.
    pub hint: Option<String>,
}

fn hint_suffix(hint: &Option<String>) -> String {
    hint.as_ref().map(|h| format!("; {h}")).unwrap_or_default()
}

impl PolicyError {
    /// The policy with a caret line under the error, for a terminal:
    ///
    /// ```text
    /// ATwed25,sun0300
    ///      ^^
    /// ```
    pub fn pointer(&self) -> String {
        let width = match &self.found {
            Found::End => 1,
            Found::Text(t) => t.chars().count().max(1),
        };
        format!(
            "{}\n{}{}",
            self.policy,
            " ".repeat(self.position),
            "^".repeat(width)
        )
    }
}

/// The trimmed policy as characters, and the error maker. The policy forms
/// (`policy.rs`) and the cron fields (`cron.rs`) are parsed on it.
pub(super) struct Parser<'a> {
    text: &'a str,
    chars: Vec<char>,
}

impl<'a> Parser<'a> {
    pub(super) fn new(text: &'a str) -> Self {
        Parser {
            text,
            chars: text.chars().collect(),
        }
    }

    pub(super) fn len(&self) -> usize {
        self.chars.len()
    }

    pub(super) fn at(&self, pos: usize) -> Option<char> {
        self.chars.get(pos).copied()
    }

    pub(super) fn err(
        &self,
        position: usize,
        expected: impl Into<String>,
        found: Found,
    ) -> PolicyError {
        PolicyError {
            policy: self.text.to_string(),
            position,
            expected: expected.into(),
            found,
            hint: None,
        }
    }

    pub(super) fn err_hint(
        &self,
        position: usize,
        expected: impl Into<String>,
        found: Found,
        hint: impl Into<String>,
    ) -> PolicyError {
        PolicyError {
            hint: Some(hint.into()),
            ..self.err(position, expected, found)
        }
    }

    /// The longest run of characters from `pos` that satisfy `pred`, and
    /// where it ends.
    pub(super) fn run(&self, pos: usize, pred: impl Fn(char) -> bool) -> (String, usize) {
        let mut end = pos;
        while end < self.chars.len() && pred(self.chars[end]) {
            end += 1;
        }
        (self.chars[pos.min(end)..end].iter().collect(), end)
    }

    pub(super) fn slice(&self, start: usize, end: usize) -> String {
        self.chars[start..end].iter().collect()
    }

    /// What is at `pos`, for an error: a word or number, a run of
    /// whitespace, or one other character.
    pub(super) fn token(&self, pos: usize) -> Found {
        match self.at(pos) {
            None => Found::End,
            Some(c) if c.is_alphanumeric() => Found::Text(self.run(pos, char::is_alphanumeric).0),
            Some(c) if c.is_whitespace() => Found::Text(self.run(pos, char::is_whitespace).0),
            Some(c) => Found::Text(c.to_string()),
        }
    }

    /// The text from `pos` up to `stop` or the end.
    pub(super) fn until(&self, pos: usize, stop: char) -> Found {
        let (text, _) = self.run(pos, |c| c != stop);
        if text.is_empty() {
            self.token(pos)
        } else {
            Found::Text(text)
        }
    }

    pub(super) fn end(&self, pos: usize) -> Result<(), PolicyError> {
        if pos == self.chars.len() {
            Ok(())
        } else {
            Err(self.err(pos, "the end of the policy", self.token(pos)))
        }
    }

    pub(super) fn equals(&self, pos: usize, what: &str) -> Result<usize, PolicyError> {
        if self.at(pos) == Some('=') {
            Ok(pos + 1)
        } else {
            Err(self.err(pos, format!("\"=\" and {what}"), self.token(pos)))
        }
    }
}
