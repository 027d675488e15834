//! `pronto`: the router daemon and operator CLI (the `pronto` library's [`Cli`]).

use std::process::ExitCode;

use clap::Parser;
use pronto::Cli;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().run() {
        Ok(()) => ExitCode::SUCCESS,
        // An error is the user's to act on: what failed and why, on one line,
        // never a backtrace (RUST_BACKTRACE=1 keeps its meaning for panics).
        Err(e) => {
            eprintln!("error: {}", error_text(&e));
            ExitCode::FAILURE
        }
    }
}

/// `err` and its causes, outermost first, as `context: cause: root cause`. A
/// cause whose text is already there (an error that prints its source in its
/// own message) is not repeated.
fn error_text(err: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in err.chain() {
        let part = cause.to_string();
        if part.is_empty() || text.contains(&part) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&part);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error whose message already names its source, as the config's file
    /// errors do.
    #[derive(Debug)]
    struct Open(std::io::Error);

    impl std::fmt::Display for Open {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "cannot open /etc/pronto/router.toml: {}", self.0)
        }
    }

    impl std::error::Error for Open {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn errors_print_their_causes_once_on_one_line() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "No such file");
        let e = anyhow::Error::new(Open(io)).context("tls.cert");
        assert_eq!(
            error_text(&e),
            "tls.cert: cannot open /etc/pronto/router.toml: No such file"
        );
        let e = anyhow::anyhow!("root").context("middle").context("top");
        assert_eq!(error_text(&e), "top: middle: root");
    }
}
