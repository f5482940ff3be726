//! Loading the TOML config files of the daemons, with errors that name the
//! file, the line and column, and the field.
//!
//! Each daemon's config type derives `Deserialize` with
//! `#[serde(deny_unknown_fields)]`, calls [`parse`] and then checks its own
//! rules, reporting a broken one with [`ConfigError::invalid`].

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path} (pass --config with the path of the config file)")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config {path}:{line}:{column}: {message}")]
    Parse {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("config {path}: field `{field}`: {message}")]
    Invalid {
        path: PathBuf,
        field: String,
        message: String,
    },
}

impl ConfigError {
    pub fn invalid(
        path: &Path,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> ConfigError {
        ConfigError::Invalid {
            path: path.to_owned(),
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Read and parse `path`.
pub fn load<T: DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse(path, &text)
}

/// Parse `text`, which came from `path`.
pub fn parse<T: DeserializeOwned>(path: &Path, text: &str) -> Result<T, ConfigError> {
    toml::from_str(text).map_err(|e| {
        let (line, column) = e
            .span()
            .map(|s| line_column(text, s.start))
            .unwrap_or((1, 1));
        ConfigError::Parse {
            path: path.to_owned(),
            line,
            column,
            message: e.message().trim().to_owned(),
        }
    })
}

/// The config files in `dir` whose names start with `prefix` and end in
/// `.toml`, sorted: the shipped examples each daemon's tests parse.
pub fn examples(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(prefix) && n.ends_with(".toml"))
        })
        .collect();
    out.sort();
    out
}

/// 1-based line and column of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Demo {
        name: String,
        port: u16,
    }

    #[test]
    fn parse_errors_give_line_column_and_what() {
        let err =
            parse::<Demo>(Path::new("a.toml"), "name = \"x\"\nport = \"high\"\n").unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("config a.toml:2:8: "), "{msg}");
        assert!(msg.contains("invalid type"), "{msg}");
        let err =
            parse::<Demo>(Path::new("a.toml"), "name = \"x\"\nport = 1\nprot = 2\n").unwrap_err();
        assert!(
            err.to_string().contains("a.toml:3:1: unknown field `prot`"),
            "{err}"
        );
        let err = parse::<Demo>(Path::new("a.toml"), "name = \"x\"\n").unwrap_err();
        assert!(err.to_string().contains("missing field `port`"), "{err}");
    }

    #[test]
    fn a_missing_file_names_it_once() {
        let err = load::<Demo>(Path::new("/nonexistent/a.toml")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot read config /nonexistent/a.toml (pass --config with the path of the config file)"
        );
    }
}
