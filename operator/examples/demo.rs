//! The quickest way to see mailvault work: starts a private Dovecot on 127.0.0.1 seeded
//! with sample mail for three users, runs `mailvault run -f examples/local/` twice (the
//! second run finds nothing new), and shows what is in the archive.
//!
//! Run from the repository root: `cargo run --release --example demo`.

use std::path::Path;
use std::process::ExitCode;

use clap::Parser;
use mailvault::cli::{self, Cli};
use mailvault_testkit::dovecot::{Dovecot, DovecotOptions};
use mailvault_testkit::mail;

/// Must match examples/local/profile.yaml and mailboxset.yaml.
const IMAP_PORT: u16 = 10143;
const MASTER_PASSWORD: &str = "demo-master-password";

fn main() -> ExitCode {
    if !Path::new("examples/local/profile.yaml").exists() {
        eprintln!("error: run the demo from the repository root (examples/local/ not found)");
        return ExitCode::from(2);
    }
    let work = Path::new("target/demo");
    let _ = std::fs::remove_dir_all(work.join("dovecot"));
    std::fs::create_dir_all(work).expect("target/demo can be created");
    println!(
        "Starting a private Dovecot on 127.0.0.1:{IMAP_PORT} (data in {})",
        work.join("dovecot").display()
    );
    let dovecot = match Dovecot::start_with(DovecotOptions {
        imap_port: Some(IMAP_PORT),
        dir: Some(work.join("dovecot")),
        master_password: Some(MASTER_PASSWORD.into()),
        ..DovecotOptions::default()
    }) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: cannot start Dovecot: {e}");
            return ExitCode::from(1);
        }
    };
    if let Err(e) = seed(&dovecot) {
        eprintln!("error: cannot seed the sample mail: {e}");
        return ExitCode::from(1);
    }
    let runtime = tokio::runtime::Runtime::new().expect("the async runtime starts");
    for round in ["First run", "Second run: only what is new is archived"] {
        println!("\n== {round}: mailvault run -f examples/local/\n");
        let code = runtime.block_on(cli::execute(Cli::parse_from([
            "mailvault",
            "run",
            "-f",
            "examples/local/",
        ])));
        if code != ExitCode::SUCCESS {
            return code;
        }
    }
    println!("== What is in the archive: mailvault list\n");
    let code = runtime.block_on(cli::execute(Cli::parse_from(["mailvault", "list"])));
    if code != ExitCode::SUCCESS {
        return code;
    }
    println!("\n== Every stored message re-hashed: mailvault verify\n");
    let code = runtime.block_on(cli::execute(Cli::parse_from(["mailvault", "verify"])));
    println!(
        "\nNext, for example:\n  cargo run --release -- export --user alice --out alice-export\n  \
         cargo run --release -- run --help\nDovecot is stopped now; run the demo again to restart it."
    );
    code
}

/// Three users; alice with folders that show hierarchy, non-ASCII names, the sent folder,
/// and folders left out by the profile or by default.
fn seed(dovecot: &Dovecot) -> std::io::Result<()> {
    let users = [
        (
            "alice@example.org",
            vec![
                ("INBOX", 40),
                ("Sent", 12),
                ("Archiv/Größe", 6),
                ("Projects/2024", 8),
                ("Newsletters", 5),
                ("Trash", 3),
            ],
        ),
        ("bob@example.org", vec![("INBOX", 25), ("Sent", 6)]),
        ("carol@example.org", vec![("INBOX", 15), ("Receipts", 4)]),
    ];
    let mut rng = mail::Rng::new(2024);
    for (seed, (user, folders)) in users.iter().enumerate() {
        dovecot.add_user(user, "demo-user-password")?;
        for (folder, count) in folders {
            let messages: Vec<(Vec<u8>, i64)> = (0..*count)
                .map(|n| {
                    let size = mail::mixed_size(&mut rng);
                    let subject = format!("{folder} message {}", n + 1);
                    let bytes = mail::message(
                        seed as u64,
                        rng.next_u64(),
                        "news@example.net",
                        user,
                        &subject,
                        size,
                    );
                    (bytes, 1_735_689_600 + 3600 * n as i64)
                })
                .collect();
            dovecot.deliver_many(user, folder, &messages)?;
        }
    }
    Ok(())
}
