//! Responses no real server should send, from a scripted IMAP server: garbage, lies about
//! literal sizes, folder names that try to escape the archive, NUL bytes in a message.
//! A real Dovecot cannot be made to misbehave like this, so the server here is a script;
//! the client, the archive and the export under test are the real ones.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::thread;

use common::*;

/// What the script answers to one command.
enum Reply {
    /// These lines, then the tagged OK.
    Ok(Vec<u8>),
    /// These bytes, then hang up.
    Close(Vec<u8>),
}

type Script = fn(command: &str) -> Reply;

/// Serves every connection with `script`, on a free loopback port.
fn serve(greeting: &'static str, script: Script) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            thread::spawn(move || session(stream, greeting, script));
        }
    });
    port
}

fn session(mut stream: TcpStream, greeting: &str, script: Script) {
    if stream.write_all(greeting.as_bytes()).is_err() {
        return;
    }
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    while reader.read_line(&mut line).unwrap_or(0) > 0 {
        let (tag, command) = line.trim_end().split_once(' ').unwrap_or(("*", ""));
        let command = command.to_string();
        let tag = tag.to_string();
        line.clear();
        let mut reply = match script(&command) {
            Reply::Ok(reply) => reply,
            Reply::Close(bytes) => {
                let _ = stream.write_all(&bytes);
                return;
            }
        };
        reply.extend_from_slice(format!("{tag} OK done\r\n").as_bytes());
        if stream.write_all(&reply).is_err() || command.starts_with("LOGOUT") {
            return;
        }
    }
}

/// A well-behaved server's answers to everything but what a test overrides.
fn normal(command: &str) -> Reply {
    let upper = command.to_ascii_uppercase();
    let reply: &[u8] = if upper.starts_with("CAPABILITY") {
        b"* CAPABILITY IMAP4rev1 UIDPLUS\r\n"
    } else if upper.starts_with("LIST") {
        b"* LIST () \"/\" INBOX\r\n"
    } else if upper.starts_with("EXAMINE") {
        b"* 1 EXISTS\r\n* OK [UIDVALIDITY 7] ok\r\n* OK [UIDNEXT 2] ok\r\n"
    } else if upper.starts_with("UID SEARCH") {
        b"* SEARCH 1\r\n"
    } else if upper.contains("RFC822.SIZE") {
        b"* 1 FETCH (UID 1 RFC822.SIZE 23 INTERNALDATE \"06-Jan-2025 10:00:00 +0000\" FLAGS (\\Seen))\r\n"
    } else if upper.contains("BODY.PEEK") {
        b"* 1 FETCH (UID 1 BODY[] {23}\r\nSubject: hi\r\n\r\nhello\r\n)\r\n"
    } else if upper.starts_with("LOGOUT") {
        b"* BYE bye\r\n"
    } else {
        b""
    };
    Reply::Ok(reply.to_vec())
}

fn run_against(port: u16) -> (Outcome, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "apiVersion: mailvault.io/v1alpha1
kind: ArchiveProfile
metadata:
  name: hostile
spec:
  mailboxSetRef:
    name: users
  server:
    host: 127.0.0.1
    port: {port}
    security: None
    timeoutSeconds: 3
---
apiVersion: mailvault.io/v1alpha1
kind: MailboxSet
metadata:
  name: users
spec:
  csv:
    secretRef:
      name: csv
---
apiVersion: v1
kind: Secret
metadata:
  name: csv
stringData:
  mailboxes.csv: |
    user;password
    eve;pw-of-eve
"
    );
    let input = write_yaml(dir.path(), &yaml);
    let outcome = run(&input, &dir.path().join("archive"));
    (outcome, dir)
}

fn first_error(outcome: &Outcome) -> String {
    let p = outcome.json();
    assert_eq!(p["mailboxes"][0]["result"], "Failed", "{p:#}");
    p["mailboxes"][0]["errors"][0]["message"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn a_server_that_is_not_imap_is_refused_clearly() {
    let port = serve("HTTP/1.1 400 Bad Request\r\n\r\n", normal);
    let (outcome, _dir) = run_against(port);
    assert_eq!(outcome.code, 1);
    let error = first_error(&outcome);
    assert!(error.contains("greeting"), "{error}");
}

#[test]
fn garbage_in_a_folder_list_fails_the_mailbox_without_a_panic() {
    let port = serve("* OK ready\r\n", |c| {
        if c.to_ascii_uppercase().starts_with("LIST") {
            Reply::Ok(b"* LIST (\\Noselect \x01\x02 garbage\r\n".to_vec())
        } else {
            normal(c)
        }
    });
    let (outcome, _dir) = run_against(port);
    assert_eq!(outcome.code, 1, "{}", outcome.stderr);
    let error = first_error(&outcome);
    assert!(error.contains("listing folders"), "{error}");
}

#[test]
fn a_literal_cut_short_fails_the_mailbox_and_stores_nothing() {
    let port = serve("* OK ready\r\n", |c| {
        if c.to_ascii_uppercase().contains("BODY.PEEK") {
            // Announces 5000 bytes, sends 10, hangs up.
            Reply::Close(b"* 1 FETCH (UID 1 BODY[] {5000}\r\n0123456789".to_vec())
        } else {
            normal(c)
        }
    });
    let (outcome, dir) = run_against(port);
    assert_eq!(outcome.code, 1, "{}", outcome.stderr);
    let error = first_error(&outcome);
    assert!(error.contains("closed the connection"), "{error}");
    assert!(
        !dir.path().join("archive/messages").exists()
            || files_below(&dir.path().join("archive/messages")).is_empty()
    );
}

#[test]
fn hostile_folder_names_and_nul_bytes_are_archived_safely() {
    let port = serve("* OK ready\r\n", |c| {
        let upper = c.to_ascii_uppercase();
        if upper.starts_with("LIST") {
            Reply::Ok(
                b"* LIST () \"/\" \"../../escape\"\r\n* LIST () \"/\" \"..\"\r\n* LIST () NIL \"a/b\\\\c\"\r\n"
                    .to_vec(),
            )
        } else if upper.contains("BODY.PEEK") {
            Reply::Ok(
                b"* 1 FETCH (UID 1 BODY[] {23}\r\nSubject: \0\0\r\n\r\nhe\0lo\0\r\n)\r\n".to_vec(),
            )
        } else {
            normal(c)
        }
    });
    let (outcome, dir) = run_against(port);
    assert_eq!(outcome.code, 0, "{}\n{}", outcome.stdout, outcome.stderr);
    let p = outcome.json();
    let folders: Vec<_> = p["mailboxes"][0]["folders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(folders, ["..", "../../escape", "a/b\\c"]);
    assert_eq!(p["totals"]["archived"], 3);
    // Nothing outside the archive; the archive's own names are hashes of the folder names.
    let mut top: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    top.sort();
    assert_eq!(top, ["archive", "input.yaml"]);

    let out = dir.path().join("out");
    let e = mailvault(&[
        "export",
        "--store",
        dir.path().join("archive").to_str().unwrap(),
        "--user",
        "eve",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(e.code, 0, "{}", e.stderr);
    let files = files_below(&out);
    let paths: Vec<_> = files.iter().map(|f| f.0.as_str()).collect();
    assert_eq!(
        paths,
        [
            "eve/_../1.eml",
            "eve/_../_../escape/1.eml",
            "eve/a/b_c/1.eml"
        ]
    );
    assert!(files
        .iter()
        .all(|(_, b)| b == b"Subject: \0\0\r\n\r\nhe\0lo\0\r\n"));
}
