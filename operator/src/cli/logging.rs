//! Logs on stderr, as text or JSON lines, with the libraries that would log credentials
//! capped.

use super::LogFormat;

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
}
