//! Logs on stderr, as text or JSON lines, with the libraries that would log credentials
//! capped; and the CLI's own messages for the person on stderr ([`say`]), in the same
//! format: with `--log-format json`, stderr carries only JSON lines.

use std::sync::atomic::{AtomicBool, Ordering};

use super::LogFormat;

/// Whether stderr is JSON lines.
static JSON: AtomicBool = AtomicBool::new(false);

/// What kind of message the CLI has for the person.
#[derive(Clone, Copy, Debug)]
pub(super) enum Say {
    /// Why the command failed: its last words.
    Error,
    /// Something done differently from what was asked (a folder exported under another
    /// name).
    Note,
    /// What was done, when standard output carries the data.
    Done,
}

/// Libraries that log protocol traffic at trace level, credentials included (async-imap
/// logs every command it sends, LOGIN with its password). They are capped whatever
/// `MAILVAULT_LOG` asks for.
const CHATTY_LIBRARIES: &[&str] = &[
    "async_imap",
    "imap_proto",
    "ldap3",
    "lber",
    "aws_sigv4",
    "aws_smithy_runtime",
];

pub(super) fn init(format: LogFormat) {
    let mut filter = tracing_subscriber::EnvFilter::try_from_env("MAILVAULT_LOG")
        // The AWS credential chain warns about every provider it tries in vain; the store's
        // error says what matters.
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,aws_config=error"));
    for library in CHATTY_LIBRARIES {
        filter = filter.add_directive(format!("{library}=info").parse().expect("valid directive"));
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    JSON.store(matches!(format, LogFormat::Json), Ordering::Relaxed);
}

/// Tells the person `message` on stderr: as `error: ...`, `note: ...` or the bare line; in
/// JSON mode as a JSON line shaped like the logs' (`timestamp`, `level`,
/// `fields.message`, `target`).
pub(super) fn say(kind: Say, message: &str) {
    if JSON.load(Ordering::Relaxed) {
        eprintln!("{}", json_line(kind, message, chrono::Utc::now()));
        return;
    }
    match kind {
        Say::Error => eprintln!("error: {message}"),
        Say::Note => eprintln!("note: {message}"),
        Say::Done => eprintln!("{message}"),
    }
}

fn json_line(kind: Say, message: &str, now: chrono::DateTime<chrono::Utc>) -> String {
    let level = match kind {
        Say::Error => "ERROR",
        Say::Note => "WARN",
        Say::Done => "INFO",
    };
    serde_json::json!({
        "timestamp": now.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        "level": level,
        "fields": {"message": message},
        "target": "mailvault",
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_in_json_are_one_line_each() {
        let now = crate::time::parse("2025-01-06T10:15:00Z").unwrap();
        let line = json_line(Say::Error, "two\nlines \"quoted\"", now);
        assert!(!line.contains('\n'), "{line}");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["level"], "ERROR");
        assert_eq!(v["fields"]["message"], "two\nlines \"quoted\"");
        assert_eq!(v["timestamp"], "2025-01-06T10:15:00.000000Z");
    }
}
