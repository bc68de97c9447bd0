//! An error and its causes, said on one line (the CLI's last word, and log lines).

/// An error and its causes on one line, each said once. Many errors already end with
/// their cause (`cannot read trace x: No such file or directory`), and anyhow's `{:#}`
/// would print that cause a second time.
pub fn one_line(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.ends_with(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::one_line;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot read trace {path}: {source}")]
    struct Unreadable {
        path: String,
        source: std::io::Error,
    }

    #[test]
    fn a_cause_an_error_already_names_is_said_once() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let e = anyhow::Error::new(Unreadable {
            path: "/x".into(),
            source: io,
        });
        assert_eq!(one_line(&e), "cannot read trace /x: no such file");
        // A cause the message does not name is still told, after a context.
        let e = anyhow::anyhow!("disk full").context("cannot write the log");
        assert_eq!(one_line(&e), "cannot write the log: disk full");
    }
}
