//! `mailvault export` as a cluster user runs it (`--out -` through `kubectl run -i`), against
//! archives made by real runs on a private Dovecot: the stream unpacks with GNU tar into
//! exactly the directory export, the mbox stream holds exactly the mbox files, folders whose
//! names collide after sanitising or in case never share a path, `--wait-for-attach` writes
//! nothing before its input ends, and the memory used does not grow with the archive.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{files_below, json_lines, mailvault, master_yaml, run, write_yaml, Connection};
use mailvault_testkit::dovecot::Dovecot;
use mailvault_testkit::mail;

const PW: &str = "Export-user-pw!";
const USER: &str = "hostile@example.org";

/// Folders whose names sanitise alike, differ only in case, look like the export's own
/// files, or agree in their first 200 bytes; each with its own messages.
const FOLDERS: [&str; 12] = [
    "INBOX",
    "INBOX/1.eml",
    "Archive",
    "archive",
    "ARCHIVE/2024",
    "back\\slash",
    "back_slash",
    "Notes",
    "Notes.mbox",
    "Notes.MBOX_",
    "Ünïcödé/…/dots...",
    "long-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx-1",
];

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A message that mbox must quote (`From ` at a line start) and that is unique per folder
/// and number.
fn message(folder: usize, n: u64) -> Vec<u8> {
    let mut m = mail::message(folder as u64, n, "a@example.net", USER, "Export", 700);
    m.extend_from_slice(format!("From the folder {folder}, message {n}\r\n").as_bytes());
    m
}

/// An archive of [`FOLDERS`] (plus a second folder `long-...-2` sharing the first 200
/// bytes of the long name), made by `mailvault run`; the delivered messages by folder.
struct Seeded {
    _dovecot: Dovecot,
    dir: tempfile::TempDir,
    delivered: BTreeMap<String, Vec<Vec<u8>>>,
}

impl Seeded {
    fn store(&self) -> String {
        self.dir
            .path()
            .join("archive")
            .to_str()
            .unwrap()
            .to_string()
    }
}

fn seeded() -> Seeded {
    let dovecot = Dovecot::start().unwrap();
    dovecot.add_user(USER, PW).unwrap();
    let long2 = FOLDERS[11].replace("-1", "-2");
    let mut delivered = BTreeMap::new();
    let names = FOLDERS.iter().map(|f| f.to_string()).chain([long2]);
    for (i, folder) in names.enumerate() {
        let messages: Vec<Vec<u8>> = (1..=2 + i as u64 % 3).map(|n| message(i, n)).collect();
        let dated: Vec<(Vec<u8>, i64)> = messages
            .iter()
            .enumerate()
            .map(|(n, m)| (m.clone(), now() - 86_400 * (30 + n as i64)))
            .collect();
        dovecot.deliver_many(USER, &folder, &dated).unwrap();
        delivered.insert(folder, messages);
    }
    let dir = tempfile::tempdir().unwrap();
    let yaml = master_yaml(&dovecot, Connection::Plain, &[USER], "");
    let outcome = run(&write_yaml(dir.path(), &yaml), &dir.path().join("archive"));
    assert_eq!(outcome.code, 0, "{}\n{}", outcome.stdout, outcome.stderr);
    let archived = outcome.json()["totals"]["archived"].as_u64().unwrap();
    assert_eq!(
        archived,
        delivered.values().map(|m| m.len() as u64).sum::<u64>()
    );
    Seeded {
        _dovecot: dovecot,
        dir,
        delivered,
    }
}

/// Runs the binary and returns (exit code, stdout bytes, stderr).
fn export_stream(args: &[&str]) -> (i32, Vec<u8>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_mailvault"))
        .arg("export")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Unpacks a tar with GNU tar, which must not complain.
fn untar(tar: &[u8], into: &Path) {
    std::fs::create_dir_all(into).unwrap();
    let mut child = Command::new("tar")
        .args(["-x", "-f", "-", "-C"])
        .arg(into)
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tar runs");
    child.stdin.take().unwrap().write_all(tar).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_stream_is_the_directory_export_and_colliding_folders_keep_their_own_paths() {
    let seeded = seeded();
    let store = seeded.store();
    let base = ["--store", store.as_str(), "--user", "hostile"];

    let dir = seeded.dir.path().join("eml");
    let e = mailvault(&[&["export"], &base[..], &["--out", dir.to_str().unwrap()]].concat());
    assert_eq!(e.code, 0, "{}", e.stderr);
    let exported = files_below(&dir);

    // Every delivered message exactly once, nothing else.
    let mut want: Vec<&Vec<u8>> = seeded.delivered.values().flatten().collect();
    let mut got: Vec<&Vec<u8>> = exported.iter().map(|(_, b)| b).collect();
    want.sort();
    got.sort();
    assert!(want == got, "the export is not the delivered messages");
    // No two files nor folders share a path, even where case does not count.
    let lower: BTreeSet<String> = exported.iter().map(|(p, _)| p.to_lowercase()).collect();
    assert_eq!(lower.len(), exported.len());
    // Each folder in its own directory, in order.
    let in_dir = |d: &str| -> Vec<Vec<u8>> {
        let mut files: Vec<(u64, Vec<u8>)> = exported
            .iter()
            .filter_map(|(p, b)| {
                let name = p.strip_prefix(&format!("{d}/"))?;
                let n = name.strip_suffix(".eml")?.parse().ok()?;
                Some((n, b.clone()))
            })
            .collect();
        files.sort();
        files.into_iter().map(|(_, b)| b).collect()
    };
    // The first folder in sorted order keeps a name; `ARCHIVE` comes first as the parent
    // of `ARCHIVE/2024`.
    let long = FOLDERS[11];
    let cut = &long[..200];
    let long2 = long.replace("-1", "-2");
    let renamed = [
        ("INBOX/1.eml", "INBOX/1.eml_".to_string()),
        ("Archive", "Archive~2".into()),
        ("archive", "archive~3".into()),
        ("back_slash", "back_slash~2".into()),
        ("Notes.mbox", "Notes.mbox_~2".into()),
        (long2.as_str(), format!("{cut}~2")),
    ];
    let kept = [
        ("INBOX", "INBOX".to_string()),
        ("ARCHIVE/2024", "ARCHIVE/2024".into()),
        ("back\\slash", "back_slash".into()),
        ("Notes", "Notes".into()),
        ("Notes.MBOX_", "Notes.MBOX_".into()),
        ("Ünïcödé/…/dots...", "Ünïcödé/…/dots...".into()),
        (long, cut.to_string()),
    ];
    let label = "hostile@example.org";
    for (folder, path) in kept.iter().chain(&renamed) {
        assert!(
            in_dir(&format!("{label}/{path}")) == seeded.delivered[*folder],
            "{folder} is not in {path}"
        );
    }
    // Each renamed folder, and only those, is named on stderr.
    let notes: Vec<&str> = e
        .stderr
        .lines()
        .filter(|l| l.starts_with("note:"))
        .collect();
    assert_eq!(notes.len(), renamed.len(), "{}", e.stderr);
    for (folder, path) in &renamed {
        let note = format!("note: folder {folder:?} of {label} exported as {label}/{path} ");
        assert!(e.stderr.contains(&note), "{note}\n{}", e.stderr);
    }

    // The stream, unpacked by GNU tar, is the directory export byte for byte.
    let (code, tar, stderr) = export_stream(&[&base[..], &["--out", "-"]].concat());
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("exported 14 messages") || stderr.contains("exported"),
        "{stderr}"
    );
    let unpacked = seeded.dir.path().join("unpacked");
    untar(&tar, &unpacked);
    assert!(
        files_below(&unpacked) == exported,
        "the tar differs from the directory"
    );

    // With JSON logs, the notes and the summary are JSON lines too, and stderr holds nothing
    // else.
    let json = [&["--log-format", "json"][..], &base[..], &["--out", "-"]].concat();
    let (code, again, stderr) = export_stream(&json);
    assert_eq!(code, 0, "{stderr}");
    assert!(again == tar, "the stream changed with the log format");
    let lines = json_lines(&stderr);
    let notes: Vec<&str> = lines
        .iter()
        .filter(|l| l["level"] == "WARN")
        .filter_map(|l| l["fields"]["message"].as_str())
        .collect();
    assert_eq!(notes.len(), renamed.len(), "{stderr}");
    for (folder, path) in &renamed {
        let note = format!("folder {folder:?} of {label} exported as {label}/{path} ");
        assert!(
            notes.iter().any(|n| n.starts_with(&note)),
            "{note}\n{stderr}"
        );
    }
    let done = format!("exported {} messages in ", want.len());
    assert!(
        lines.iter().any(|l| l["level"] == "INFO"
            && l["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with(&done))),
        "{stderr}"
    );
    // Exporting twice gives the same bytes: the stream depends only on the archive.
    let (_, again, _) = export_stream(&[&base[..], &["--out", "-"]].concat());
    assert!(again == tar, "two exports of one archive differ");
}

#[test]
fn the_mbox_stream_holds_every_mbox_file_and_one_folder_can_be_chosen() {
    let seeded = seeded();
    let store = seeded.store();
    let base = [
        "--store",
        store.as_str(),
        "--user",
        "HOSTILE",
        "--format",
        "mbox",
    ];

    let dir = seeded.dir.path().join("mbox");
    let e = mailvault(&[&["export"], &base[..], &["--out", dir.to_str().unwrap()]].concat());
    assert_eq!(e.code, 0, "{}", e.stderr);
    let files = files_below(&dir);
    assert_eq!(files.len(), seeded.delivered.len());
    let (code, stream, stderr) = export_stream(&[&base[..], &["--out", "-"]].concat());
    assert_eq!(code, 0, "{stderr}");
    // Each mbox file is one piece of the stream, and together they are all of it.
    let mut pieces: Vec<(usize, usize)> = files
        .iter()
        .map(|(path, bytes)| {
            let at = stream
                .windows(bytes.len())
                .position(|w| w == &bytes[..])
                .unwrap_or_else(|| panic!("{path} is not in the stream"));
            (at, bytes.len())
        })
        .collect();
    pieces.sort();
    let mut end = 0;
    for (at, len) in pieces {
        assert_eq!(at, end, "the stream has a gap or an overlap");
        end += len;
    }
    assert_eq!(end, stream.len());
    // mboxrd quoting: the body's "From the folder" lines are quoted.
    assert!(stream.windows(17).any(|w| w == b"\r\n>From the folde"));

    // One folder: the stream is that folder's mbox file; case matters outside INBOX.
    let notes = files
        .iter()
        .find(|(p, _)| p == "hostile@example.org/Notes.mbox_~2.mbox")
        .unwrap();
    let (code, one, stderr) =
        export_stream(&[&base[..], &["--folder", "Notes.mbox", "--out", "-"]].concat());
    assert_eq!(code, 0, "{stderr}");
    assert!(one == notes.1);
    let (code, inbox, _) =
        export_stream(&[&base[..], &["--folder", "inbox", "--out", "-"]].concat());
    assert_eq!(code, 0);
    assert!(
        inbox
            == files
                .iter()
                .find(|(p, _)| p == "hostile@example.org/INBOX.mbox")
                .unwrap()
                .1
    );
    let (code, nothing, stderr) =
        export_stream(&[&base[..], &["--folder", "notes.mbox", "--out", "-"]].concat());
    assert_eq!(code, 2);
    assert!(nothing.is_empty());
    assert!(
        stderr.contains("has no folder \"notes.mbox\"") && stderr.contains("Notes.mbox"),
        "{stderr}"
    );
}

#[test]
fn wait_for_attach_writes_nothing_before_the_input_ends() {
    let seeded = seeded();
    let store = seeded.store();
    let args = ["--store", store.as_str(), "--user", "hostile", "--out", "-"];
    let (_, expected, _) = export_stream(&args);

    let mut child = Command::new(env!("CARGO_BIN_EXE_mailvault"))
        .arg("export")
        .args(args)
        .arg("--wait-for-attach")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let (first_byte, arrived) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        let mut first = [0u8; 1];
        if stdout.read(&mut first).unwrap() == 1 {
            first_byte.send(()).unwrap();
            out.push(first[0]);
            stdout.read_to_end(&mut out).unwrap();
        }
        out
    });
    assert!(
        arrived.recv_timeout(Duration::from_millis(1500)).is_err(),
        "output before the input ended"
    );
    assert!(
        child.try_wait().unwrap().is_none(),
        "it exited while waiting"
    );
    // kubectl attached: its /dev/null ends the input.
    child.stdin.take().unwrap().write_all(b"ignored\n").unwrap();
    assert!(child.wait().unwrap().success());
    assert!(
        reader.join().unwrap() == expected,
        "the stream after waiting differs"
    );
}

/// The stream is written as the messages are read: exporting a folder six times the size of
/// another takes no more memory than exporting the small one. The slack is for the
/// allocator; before large buffers were kept out of its arenas, 60 MiB more took 12–19 MiB
/// more of them, and an export grew with its length. Large messages are read ahead by
/// bytes, not by count: a folder of 8 MiB messages is not held eight at a time (64 MiB).
#[test]
fn streaming_memory_does_not_grow_with_the_archive() {
    const MIB: usize = 1 << 20;
    const SLACK_KIB: u64 = 8 << 10;
    const READ_AHEAD_KIB: u64 = 32 << 10;
    let user = "big@example.org";
    let dovecot = Dovecot::start().unwrap();
    dovecot.add_user(user, PW).unwrap();
    for (folder, count, size) in [("Few", 12, MIB), ("Many", 72, MIB), ("Large", 12, 8 * MIB)] {
        let messages: Vec<(Vec<u8>, i64)> = (1..=count)
            .map(|n| {
                (
                    mail::message(count, n, "a@example.net", user, folder, size),
                    now(),
                )
            })
            .collect();
        dovecot.deliver_many(user, folder, &messages).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("archive");
    let yaml = master_yaml(&dovecot, Connection::Plain, &[user], "");
    let outcome = run(&write_yaml(dir.path(), &yaml), &store);
    assert_eq!(outcome.code, 0, "{}", outcome.stderr);

    let few = peak_while_streaming(&store, "Few", 12 * MIB);
    let many = peak_while_streaming(&store, "Many", 72 * MIB);
    let large = peak_while_streaming(&store, "Large", 12 * 8 * MIB);
    eprintln!(
        "peak RSS exporting 12 MiB: {} MiB, 72 MiB: {} MiB, 12 × 8 MiB: {} MiB",
        few >> 10,
        many >> 10,
        large >> 10
    );
    assert!(
        many < few + SLACK_KIB,
        "exporting 60 MiB more took {} KiB more memory",
        many - few
    );
    // The budget counts messages as they are written; while a read decompresses, it also
    // holds the stored bytes. Counted by messages (8 × 8 MiB), it took 81 MiB more.
    let bound = few + 2 * READ_AHEAD_KIB;
    assert!(
        large < bound,
        "exporting 8 MiB messages took {} KiB more memory than 1 MiB ones",
        large - few
    );
}

/// Streams one folder to a pipe and returns the export's peak resident set in KiB, read
/// from /proc while it still runs (it cannot end before 90% of the stream is read).
/// wait4's figure would not do: a child started with vfork is charged its parent's peak.
fn peak_while_streaming(store: &Path, folder: &str, size: usize) -> u64 {
    let mut child = Command::new(env!("CARGO_BIN_EXE_mailvault"))
        .args([
            "export",
            "--store",
            store.to_str().unwrap(),
            "--user",
            "big",
        ])
        .args(["--folder", folder, "--out", "-"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let hwm_kib = || -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    };
    let mut streamed = 0;
    let mut peak_kib = None;
    let mut stdout = child.stdout.take().unwrap();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = stdout.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        streamed += n;
        if peak_kib.is_none() && streamed >= size / 10 * 9 {
            peak_kib = Some(hwm_kib());
        }
    }
    assert!(child.wait().unwrap().success());
    assert!(streamed > size, "streamed {streamed} of {size} bytes");
    peak_kib.unwrap()
}
