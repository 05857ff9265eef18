//! Errors as people read them: an error and its causes on one line.

use std::error::Error;
use std::fmt;

/// Formats an error followed by each of its causes (`source()`), joined by `": "`:
/// `cannot use PostgreSQL at 127.0.0.1:5432 (database mist, user mist): error connecting to
/// server: Connection refused (os error 111)`.
///
/// mist's own errors say only their own part and leave the rest to their source, but some
/// libraries' errors (PostgreSQL's among them) repeat their cause in their own text as well; a
/// cause whose text is already on the line is not repeated.
pub struct ErrorChain<'a>(pub &'a (dyn Error + 'static));

impl fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut line = self.0.to_string();
        let mut cause = self.0.source();
        while let Some(c) = cause {
            let text = c.to_string();
            if !line.contains(&text) {
                line.push_str(": ");
                line.push_str(&text);
            }
            cause = c.source();
        }
        f.write_str(&line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot open the thing")]
    struct Outer(#[source] Middle);

    /// Repeats its cause in its own text, as some libraries' errors do.
    #[derive(Debug, thiserror::Error)]
    #[error("error connecting: {0}")]
    struct Middle(#[source] std::io::Error);

    #[test]
    fn each_cause_once() {
        let e = Outer(Middle(std::io::Error::other("refused")));
        assert_eq!(
            ErrorChain(&e).to_string(),
            "cannot open the thing: error connecting: refused"
        );
        let alone = std::io::Error::other("alone");
        assert_eq!(ErrorChain(&alone).to_string(), "alone");
    }
}
