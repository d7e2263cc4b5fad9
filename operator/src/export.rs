//! Getting mail back out of the archive: every message of a user, byte-identical, as
//! `.eml` files or one mbox per folder.
//!
//! Folder names come from mail servers and may contain anything; each level becomes one
//! sanitised directory name, so nothing can escape the output directory.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};

use futures::StreamExt;

use crate::store::{Archive, StoreError};

/// Messages read from the store ahead of writing them out.
const READ_AHEAD: usize = 8;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Eml,
    Mbox,
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("no archive user {user:?} in {store} (users: {known})")]
    NoSuchUser {
        user: String,
        store: String,
        known: String,
    },
    #[error(
        "{0} is not empty; export into a new or empty directory so that nothing is overwritten"
    )]
    NotEmpty(PathBuf),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("message {sha256} (folder {folder:?}, UID {uid}) is missing from the archive")]
    Missing {
        sha256: String,
        folder: String,
        uid: u32,
    },
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct ExportSummary {
    pub messages: u64,
    pub folders: u64,
}

/// Writes every archived message of `user` below `out`.
pub async fn export(
    archive: &Archive,
    user: &str,
    out: &Path,
    format: Format,
) -> Result<ExportSummary, ExportError> {
    let users = archive.users().await?;
    let Some(record) = users.iter().find(|u| u.name.eq_ignore_ascii_case(user)) else {
        let known: Vec<_> = users.iter().take(20).map(|u| u.name.as_str()).collect();
        return Err(ExportError::NoSuchUser {
            user: user.to_string(),
            store: archive.describe(),
            known: if known.is_empty() {
                "none".into()
            } else {
                known.join(", ")
            },
        });
    };
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ExportError::Io { path, source }
    };
    if out.exists() && std::fs::read_dir(out).map_err(io(out))?.next().is_some() {
        return Err(ExportError::NotEmpty(out.to_path_buf()));
    }
    let mut summary = ExportSummary::default();
    for (label, folder) in archive.user_folders(&record.name).await? {
        let mut dir = out.join(safe_name(&label));
        let segments: Vec<&str> = folder.folder.split('/').collect();
        let entries = archive.folder_entries(&folder).await?;
        let mut seen = HashSet::new();
        let entries: Vec<_> = entries
            .into_iter()
            .filter(|e| seen.insert((e.uid_validity, e.uid)))
            .collect();
        if entries.is_empty() {
            continue;
        }
        summary.folders += 1;
        let mut mbox = None;
        match format {
            Format::Eml => {
                for s in &segments {
                    dir.push(safe_name(s));
                }
                std::fs::create_dir_all(&dir).map_err(io(&dir))?;
            }
            Format::Mbox => {
                for s in &segments[..segments.len() - 1] {
                    dir.push(safe_name(s));
                }
                std::fs::create_dir_all(&dir).map_err(io(&dir))?;
                let path = dir.join(format!("{}.mbox", safe_name(segments[segments.len() - 1])));
                let file = std::fs::File::create(&path).map_err(io(&path))?;
                mbox = Some((path, std::io::BufWriter::new(file)));
            }
        }
        // Reads run ahead of the writes, so that a store with latency (S3) keeps up.
        let mut bodies = futures::stream::iter(entries.iter())
            .map(|entry| async move { (entry, archive.get_message(&entry.sha256).await) })
            .buffered(READ_AHEAD);
        let mut n = 0;
        while let Some((entry, bytes)) = bodies.next().await {
            let bytes = bytes?.ok_or_else(|| ExportError::Missing {
                sha256: entry.sha256.clone(),
                folder: entry.folder.clone(),
                uid: entry.uid,
            })?;
            n += 1;
            match &mut mbox {
                None => {
                    let path = dir.join(format!("{n}.eml"));
                    std::fs::write(&path, &bytes).map_err(io(&path))?;
                }
                Some((path, writer)) => {
                    write_mbox_message(writer, &bytes, entry.internal_date.as_deref())
                        .map_err(io(path))?;
                }
            }
            summary.messages += 1;
        }
        if let Some((path, mut writer)) = mbox {
            writer.flush().map_err(io(&path))?;
        }
    }
    Ok(summary)
}

/// One message in mboxrd form: a `From ` line, the message with `From ` lines quoted by
/// one more `>`, and a blank line.
fn write_mbox_message(
    w: &mut impl Write,
    bytes: &[u8],
    internal_date: Option<&str>,
) -> std::io::Result<()> {
    let date = internal_date
        .and_then(|d| chrono::DateTime::parse_from_rfc3339(d).ok())
        .map(|d| {
            d.with_timezone(&chrono::Utc)
                .format("%a %b %e %H:%M:%S %Y")
                .to_string()
        })
        .unwrap_or_else(|| "Thu Jan  1 00:00:00 1970".to_string());
    writeln!(w, "From MAILER-DAEMON {date}")?;
    for line in bytes.split_inclusive(|&b| b == b'\n') {
        let unquoted = line.iter().position(|&b| b != b'>').map(|i| &line[i..]);
        if unquoted.is_some_and(|rest| rest.starts_with(b"From ")) {
            w.write_all(b">")?;
        }
        w.write_all(line)?;
    }
    if !bytes.ends_with(b"\n") {
        w.write_all(b"\n")?;
    }
    w.write_all(b"\n")
}

/// One path level from an arbitrary name: no separators, no control characters, never
/// `.` or `..`, not empty, at most 200 bytes.
///
/// ```
/// use mailvault::export::safe_name;
///
/// assert_eq!(safe_name(".."), "_..");
/// assert_eq!(safe_name("../../etc"), ".._.._etc");
/// assert_eq!(safe_name("Größe"), "Größe");
/// ```
pub fn safe_name(name: &str) -> String {
    let mut s: String = name
        .chars()
        .map(|c| {
            if c == '/' || c == '\\' || c.is_control() {
                '_'
            } else {
                c
            }
        })
        .collect();
    if s.is_empty() || s.chars().all(|c| c == '.') {
        s.insert(0, '_');
    }
    if s.len() > 200 {
        let mut cut = 200;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_cannot_escape() {
        assert_eq!(safe_name(".."), "_..");
        assert_eq!(safe_name("."), "_.");
        assert_eq!(safe_name(""), "_");
        assert_eq!(safe_name("a/../b"), "a_.._b");
        assert_eq!(safe_name("x\0y\r\n"), "x_y__");
        assert_eq!(safe_name("Größe"), "Größe");
        assert!(safe_name(&"ü".repeat(300)).len() <= 200);
    }

    #[test]
    fn mbox_quotes_from_lines() {
        let mut out = Vec::new();
        write_mbox_message(
            &mut out,
            b"Subject: x\r\n\r\nFrom here\r\n>From there\r\nok",
            Some("2024-01-02T03:04:05+00:00"),
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "From MAILER-DAEMON Tue Jan  2 03:04:05 2024\nSubject: x\r\n\r\n>From here\r\n>>From there\r\nok\n\n"
        );
    }
}
