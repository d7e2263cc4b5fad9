//! Getting mail back out of the archive: every message of a user, byte-identical, as
//! `.eml` files or one mbox per folder, into a new directory, or as one stream (`--out -`):
//! a tar of the very files the directory export writes, or one mbox of every folder.
//!
//! Folder names come from mail servers and may contain anything. Each level becomes one
//! sanitised path level, so nothing can escape the output, and no two folders share a path
//! ([`Layout`]): names that sanitise alike, or differ only in case (one directory on macOS
//! and Windows, and when a tar is unpacked there), get distinct ones. Files are created,
//! never replaced, so even a mistake here could not overwrite one message with another.

mod tar;

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use std::sync::Arc;

use futures::StreamExt;
use tokio::sync::Semaphore;

use crate::store::{Archive, IndexEntry, StoreError};

/// Messages read from the store ahead of writing them out, so that a store with latency
/// (S3) keeps up ...
const READ_AHEAD: usize = 8;
/// ... and at most this many KiB of them, so that a folder of large messages is not held
/// eight at a time. A message larger than this is read alone.
const READ_AHEAD_KIB: u32 = 32 << 10;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Eml,
    Mbox,
}

/// Where an export goes.
pub enum Destination<'a> {
    /// A new or empty directory.
    Directory(&'a Path),
    /// A stream such as standard output: a tar of the `.eml` files the directory export
    /// would write, or, for mbox, one mbox of all the folders one after the other.
    Stream(&'a mut dyn Write),
}

/// What to export.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    /// The archive user (case-insensitive).
    pub user: &'a str,
    pub format: Format,
    /// Only this folder (levels separated by `/`, `INBOX` in any case), in each of the
    /// user's mailboxes that has it.
    pub folder: Option<&'a str>,
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("no archive user {user:?} in {store} (users: {known})")]
    NoSuchUser {
        user: String,
        store: String,
        known: String,
    },
    #[error("archive user {user} has no folder {folder:?} (folders: {known})")]
    NoSuchFolder {
        user: String,
        folder: String,
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
    #[error("writing the export stream: {0}")]
    Stream(std::io::Error),
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
    /// Folders whose path had to differ from their sanitised name, because another folder
    /// exported before them claimed it (or it looked like a message or mbox file).
    pub renamed: Vec<Renamed>,
}

/// A folder exported under another name than its own.
#[derive(Debug, PartialEq, Eq)]
pub struct Renamed {
    /// The mailbox label (address) and the folder, as archived.
    pub mailbox: String,
    pub folder: String,
    /// Where it went, `/` between levels, relative to the export's root.
    pub path: String,
}

/// Writes every archived message of `user` below `out`, a new or empty directory.
pub async fn export(
    archive: &Archive,
    user: &str,
    out: &Path,
    format: Format,
) -> Result<ExportSummary, ExportError> {
    let request = Request {
        user,
        format,
        folder: None,
    };
    export_to(archive, &request, Destination::Directory(out)).await
}

/// Exports what `request` asks for to `destination`. A stream is written as the messages
/// are read (at most [`READ_AHEAD`] of them, of [`READ_AHEAD_KIB`] together, in memory),
/// never the whole archive at once.
pub async fn export_to(
    archive: &Archive,
    request: &Request<'_>,
    destination: Destination<'_>,
) -> Result<ExportSummary, ExportError> {
    let users = archive.users().await?;
    let Some(record) = users
        .iter()
        .find(|u| u.name.eq_ignore_ascii_case(request.user))
    else {
        let known: Vec<_> = users.iter().map(|u| u.name.as_str()).collect();
        return Err(ExportError::NoSuchUser {
            user: request.user.to_string(),
            store: archive.describe(),
            known: some_of(&known),
        });
    };
    let mut folders = archive.user_folders(&record.name).await?;
    if let Some(wanted) = request.folder {
        let known: Vec<String> = folders.iter().map(|(_, f)| f.folder.clone()).collect();
        folders.retain(|(_, f)| same_folder(&f.folder, wanted));
        if folders.is_empty() {
            let mut known: Vec<&str> = known.iter().map(String::as_str).collect();
            known.dedup();
            return Err(ExportError::NoSuchFolder {
                user: record.name.clone(),
                folder: wanted.to_string(),
                known: some_of(&known),
            });
        }
    }
    let mut sink = match destination {
        Destination::Directory(out) => {
            if out.exists() && std::fs::read_dir(out).map_err(io(out))?.next().is_some() {
                return Err(ExportError::NotEmpty(out.to_path_buf()));
            }
            Sink::Directory {
                root: out.to_path_buf(),
                mbox: None,
            }
        }
        Destination::Stream(out) => match request.format {
            Format::Eml => Sink::Tar(tar::Writer::new(out)),
            Format::Mbox => Sink::Mbox(out),
        },
    };
    let mut layout = Layout::default();
    let mut summary = ExportSummary::default();
    for (label, folder) in folders {
        // An entry written twice (a segment of a killed run, then the retry) is one
        // message; two messages at one UID (a server restored from a backup, two sources)
        // are two.
        let mut seen = HashSet::new();
        let entries: Vec<IndexEntry> = archive
            .folder_entries(&folder)
            .await?
            .into_iter()
            .filter(|e| seen.insert((e.uid_validity, e.uid, e.sha256.clone())))
            .collect();
        if entries.is_empty() {
            continue;
        }
        summary.folders += 1;
        let levels: Vec<&str> = std::iter::once(label.as_str())
            .chain(folder.folder.split('/'))
            .collect();
        let path = layout.place(&levels);
        if path.iter().zip(&levels).any(|(p, l)| *p != safe_name(l)) {
            summary.renamed.push(Renamed {
                mailbox: label.clone(),
                folder: folder.folder.clone(),
                path: path.join("/"),
            });
        }
        // Times in the stream come from the messages, so that it depends on the archive
        // only: a directory has its newest message's INTERNALDATE.
        let newest = entries
            .iter()
            .filter_map(|e| e.internal_date.as_deref())
            .map(unix_seconds)
            .max()
            .unwrap_or(0);
        sink.begin_folder(&path, request.format, newest)?;
        // Reads run ahead of the writes. Their share of the budget is taken in order,
        // before a read starts, and given back once the message is written: taken inside
        // the reads, a later one could hold what an earlier one waits for.
        let budget = Arc::new(Semaphore::new(READ_AHEAD_KIB as usize));
        let bodies = futures::stream::iter(entries.iter())
            .then(|entry| {
                let budget = budget.clone();
                async move {
                    let kib = u32::try_from(entry.size.div_ceil(1024))
                        .unwrap_or(u32::MAX)
                        .clamp(1, READ_AHEAD_KIB);
                    let share = budget
                        .acquire_many_owned(kib)
                        .await
                        .expect("the read-ahead budget is never closed");
                    (entry, share)
                }
            })
            .map(|(entry, share)| async move { (entry, archive.entry_message(entry).await, share) })
            .buffered(READ_AHEAD);
        let mut bodies = std::pin::pin!(bodies);
        let mut n = 0;
        while let Some((entry, bytes, _share)) = bodies.next().await {
            let bytes = bytes?.ok_or_else(|| ExportError::Missing {
                sha256: entry.sha256.clone(),
                folder: entry.folder.clone(),
                uid: entry.uid,
            })?;
            n += 1;
            sink.message(&path, n, &bytes, entry.internal_date.as_deref())?;
            summary.messages += 1;
        }
        sink.end_folder()?;
    }
    sink.finish()?;
    Ok(summary)
}

/// Whether the archived folder `folder` is the one asked for; `INBOX` is case-insensitive
/// in IMAP.
fn same_folder(folder: &str, wanted: &str) -> bool {
    let wanted = wanted.trim_matches('/');
    let inbox = |s: &str| {
        s.get(..5).is_some_and(|p| p.eq_ignore_ascii_case("INBOX"))
            && matches!(s.as_bytes().get(5), None | Some(b'/'))
    };
    if inbox(folder) && inbox(wanted) {
        folder[5..] == wanted[5..]
    } else {
        folder == wanted
    }
}

/// Up to 20 names for an error message.
fn some_of(names: &[&str]) -> String {
    match names.len() {
        0 => "none".into(),
        1..=20 => names.join(", "),
        n => format!("{}, and {} more", names[..20].join(", "), n - 20),
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ExportError {
    let path = path.to_path_buf();
    move |source| ExportError::Io { path, source }
}

/// Seconds since 1970 of an RFC 3339 time, 0 before it or when unreadable.
fn unix_seconds(time: &str) -> u64 {
    chrono::DateTime::parse_from_rfc3339(time)
        .map(|t| t.timestamp().max(0) as u64)
        .unwrap_or(0)
}

/// Where the exported files go.
enum Sink<'a> {
    /// Files below `root`; the mbox being written, for the mbox format.
    Directory {
        root: PathBuf,
        mbox: Option<(PathBuf, BufWriter<File>)>,
    },
    /// `.eml` files in a tar stream.
    Tar(tar::Writer<&'a mut dyn Write>),
    /// One mbox stream.
    Mbox(&'a mut dyn Write),
}

impl Sink<'_> {
    /// Makes room for the folder at `path`: its directory (eml), or its mbox file.
    fn begin_folder(
        &mut self,
        path: &[String],
        format: Format,
        mtime: u64,
    ) -> Result<(), ExportError> {
        match self {
            Sink::Directory { root, mbox } => {
                let (dirs, file) = match format {
                    Format::Eml => (path, None),
                    Format::Mbox => {
                        let (last, parents) = path.split_last().expect("a folder path has levels");
                        (parents, Some(format!("{last}.mbox")))
                    }
                };
                let dir = dirs.iter().fold(root.clone(), |d, level| d.join(level));
                std::fs::create_dir_all(&dir).map_err(io(&dir))?;
                if let Some(file) = file {
                    let path = dir.join(file);
                    *mbox = Some((path.clone(), BufWriter::new(create_new(&path)?)));
                }
                Ok(())
            }
            Sink::Tar(tar) => tar.dirs(path, mtime).map_err(ExportError::Stream),
            Sink::Mbox(_) => Ok(()),
        }
    }

    /// Writes the `n`th message of the folder at `path`.
    fn message(
        &mut self,
        path: &[String],
        n: u64,
        bytes: &[u8],
        internal_date: Option<&str>,
    ) -> Result<(), ExportError> {
        match self {
            Sink::Directory {
                mbox: Some((file, writer)),
                ..
            } => write_mbox_message(writer, bytes, internal_date).map_err(io(file)),
            Sink::Directory { root, mbox: None } => {
                let file = path
                    .iter()
                    .fold(root.clone(), |d, level| d.join(level))
                    .join(format!("{n}.eml"));
                create_new(&file)?.write_all(bytes).map_err(io(&file))
            }
            Sink::Tar(tar) => {
                let name = format!("{}/{n}.eml", path.join("/"));
                let mtime = internal_date.map_or(0, unix_seconds);
                tar.file(&name, bytes, mtime).map_err(ExportError::Stream)
            }
            Sink::Mbox(out) => {
                write_mbox_message(out, bytes, internal_date).map_err(ExportError::Stream)
            }
        }
    }

    fn end_folder(&mut self) -> Result<(), ExportError> {
        if let Sink::Directory { mbox, .. } = self {
            if let Some((path, mut writer)) = mbox.take() {
                writer.flush().map_err(io(&path))?;
            }
        }
        Ok(())
    }

    fn finish(self) -> Result<(), ExportError> {
        match self {
            Sink::Directory { .. } => Ok(()),
            Sink::Tar(tar) => tar.finish().map(drop).map_err(ExportError::Stream),
            Sink::Mbox(out) => out.flush().map_err(ExportError::Stream),
        }
    }
}

/// Creates `path`, failing if anything is there already.
fn create_new(path: &Path) -> Result<File, ExportError> {
    File::options()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(io(path))
}

/// The exported paths of folders, one name per level (the mailbox label first).
///
/// Each level's name is its [`safe_name`], made unique among the names in its directory
/// regardless of case, and never ending in `.eml` or `.mbox` (then `_` is added): so no two
/// folders share a directory or an mbox file (`<name>.mbox`), and no folder's directory
/// looks like a message file (`<n>.eml`). The first folder to claim a name keeps it, the
/// next gets `name~2`, then `name~3`. A level shared by two folders (`A` of `A` and `A/B`)
/// keeps one name.
#[derive(Default)]
struct Layout {
    /// (parent, level as archived) → node. The root is node 0.
    nodes: HashMap<(usize, String), usize>,
    /// (parent, name given) of node `i + 1`.
    names: Vec<(usize, String)>,
    /// (parent, lower-cased name) of every name given.
    taken: HashSet<(usize, String)>,
}

impl Layout {
    /// The path of the folder with these levels.
    fn place(&mut self, levels: &[&str]) -> Vec<String> {
        let mut node = 0;
        for level in levels {
            node = match self.nodes.get(&(node, level.to_string())) {
                Some(&child) => child,
                None => self.add(node, level),
            };
        }
        let mut path = Vec::new();
        while node != 0 {
            let (parent, name) = &self.names[node - 1];
            path.push(name.clone());
            node = *parent;
        }
        path.reverse();
        path
    }

    fn add(&mut self, parent: usize, level: &str) -> usize {
        let mut base = safe_name(level);
        let lower = base.to_lowercase();
        if lower.ends_with(".eml") || lower.ends_with(".mbox") {
            base.push('_');
        }
        let mut name = base.clone();
        let mut n = 1;
        while !self.taken.insert((parent, name.to_lowercase())) {
            n += 1;
            name = format!("{base}~{n}");
        }
        self.names.push((parent, name));
        let node = self.names.len();
        self.nodes.insert((parent, level.to_string()), node);
        node
    }
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
    fn folders_that_sanitise_alike_or_differ_in_case_get_distinct_paths() {
        let mut layout = Layout::default();
        let mut place = |levels: &[&str]| layout.place(levels).join("/");
        assert_eq!(place(&["a@x", "INBOX"]), "a@x/INBOX");
        assert_eq!(place(&["a@x", "Inbox"]), "a@x/Inbox~2");
        assert_eq!(place(&["a@x", "inbox"]), "a@x/inbox~3");
        assert_eq!(place(&["a@x", "back\\slash"]), "a@x/back_slash");
        assert_eq!(place(&["a@x", "back_slash"]), "a@x/back_slash~2");
        // A real folder named like a suffixed one does not take its place back.
        assert_eq!(place(&["a@x", "Inbox~2"]), "a@x/Inbox~2~2");
        // Levels shared by folders keep their name; a subfolder follows its parent.
        assert_eq!(place(&["a@x", "Inbox", "Sub"]), "a@x/Inbox~2/Sub");
        assert_eq!(place(&["a@x", "INBOX", "Sub"]), "a@x/INBOX/Sub");
        // Names of message and mbox files are not folder names.
        assert_eq!(place(&["a@x", "INBOX", "1.eml"]), "a@x/INBOX/1.eml_");
        assert_eq!(place(&["a@x", "Notes.MBOX"]), "a@x/Notes.MBOX_");
        assert_eq!(place(&["a@x", "Notes.mbox_"]), "a@x/Notes.mbox_~2");
        // Names cut at 200 bytes that then agree.
        let long = "ä".repeat(120);
        assert_eq!(
            place(&["a@x", &format!("{long}1")]),
            format!("a@x/{}", "ä".repeat(100))
        );
        assert_eq!(
            place(&["a@x", &format!("{long}2")]),
            format!("a@x/{}~2", "ä".repeat(100))
        );
        // Labels are levels too.
        assert_eq!(place(&["A/B@x", "INBOX"]), "A_B@x/INBOX");
        assert_eq!(place(&["a_b@X", "INBOX"]), "a_b@X~2/INBOX");
    }

    proptest::proptest! {
        /// Whatever the names: distinct folders never share a path (ignoring case), a
        /// folder's path extends its parent's, and no level looks like a message or mbox.
        #[test]
        fn layout_paths_are_distinct_and_consistent(
            folders in proptest::collection::vec(
                proptest::collection::vec("[aA/._~2]{0,4}(\\.eml|\\.mbox)?", 1..4), 1..40)
        ) {
            let mut layout = Layout::default();
            let mut given: HashMap<Vec<String>, Vec<String>> = HashMap::new();
            for folder in &folders {
                let levels: Vec<&str> = folder.iter().map(String::as_str).collect();
                let path = layout.place(&levels);
                proptest::prop_assert_eq!(path.len(), levels.len());
                for level in &path {
                    let lower = level.to_lowercase();
                    proptest::prop_assert!(!lower.ends_with(".eml") && !lower.ends_with(".mbox"));
                    proptest::prop_assert_eq!(level, &safe_name(level));
                }
                // The same folder again gets the same path.
                proptest::prop_assert_eq!(&layout.place(&levels), &path);
                if levels.len() > 1 {
                    proptest::prop_assert_eq!(
                        &layout.place(&levels[..levels.len() - 1])[..],
                        &path[..path.len() - 1]
                    );
                }
                given.insert(folder.clone(), path);
            }
            let mut lower: HashMap<String, &Vec<String>> = HashMap::new();
            for (folder, path) in &given {
                if let Some(other) = lower.insert(path.join("/").to_lowercase(), folder) {
                    proptest::prop_assert!(false, "{:?} and {:?} share {:?}", other, folder, path);
                }
            }
        }
    }

    #[test]
    fn folder_selection() {
        assert!(same_folder("INBOX", "inbox"));
        assert!(same_folder("INBOX/Sub", "Inbox/Sub"));
        assert!(!same_folder("INBOX/Sub", "Inbox/sub"));
        assert!(!same_folder("INBOXES", "inboxes"));
        assert!(same_folder("Archive/2024", "/Archive/2024/"));
        assert!(!same_folder("Archive", "archive"));
        assert_eq!(some_of(&[]), "none");
        let many: Vec<String> = (0..25).map(|i| i.to_string()).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert!(some_of(&many).ends_with("19, and 5 more"));
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
