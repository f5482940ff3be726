//! Entry points for the fuzzers (`fuzz/`) and their corpus regression test
//! (`tests/tests/fuzz_corpus.rs`): each takes arbitrary bytes, must never
//! panic, and checks what must hold of any input it accepts.

use std::path::Path;

use crate::schedule::Policy;

/// A test policy (`ATmon0300,wed0500`, `interval=600`, `signal`, ...): a
/// policy that parses prints as text that parses to the same policy.
pub fn schedule(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(p) = text.parse::<Policy>() {
        let printed = p.to_string();
        let again: Policy = printed
            .parse()
            .unwrap_or_else(|e| panic!("{printed:?} (from {text:?}) does not parse: {e}"));
        assert_eq!(again, p, "{text:?} printed as {printed:?}");
    }
}

/// `controller.toml`: parsed or refused with a message, never a panic.
pub fn controller_config(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = crate::config::ControllerConfig::parse(Path::new("controller.toml"), text);
    }
}
