//! Whole-process benchmarks: the `mailvault` release binary against a private Dovecot, side
//! by side with mbsync and with a bare fetch client, in one run:
//!
//! ```sh
//! cargo bench -p mailvault --bench archive     # MAILVAULT_BENCH_REPS=5 by default
//! ```
//!
//! Every figure is the median of several repetitions, each from a fresh target directory.
//! The contenders take turns within a repetition, so that drift of the machine (page cache,
//! other load) spreads over all of them alike. The file system is synced before every timed
//! run, so that no run pays for the previous one's writes. Targets are kept until the end
//! (about 1.9 GB in `target/tmp` per repetition, checked before the first), see
//! [`Work::fresh`].
//!
//! Not part of the test suite: it checks only that every contender got every message (a
//! fast failure is no result), and prints a table with the targets of issue 7 at the end.

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mailvault::imap::uid_set;
use mailvault::testkit::dovecot::Dovecot;
use mailvault::testkit::garage::Garage;
use mailvault::testkit::mail;

const PASSWORD: &str = "bench-password";
/// 2025-01-06, as INTERNALDATE of every seeded message.
const DATE: i64 = 1_736_157_600;
const DEFAULT_REPS: usize = 5;

const BIG_USER: &str = "big@bench.test";
const BIG_MESSAGES: u64 = 5_000;
const MANY_USERS: usize = 50;
const MANY_MESSAGES: u64 = 200;
const PARALLELISM: [usize; 3] = [1, 4, 8];
const MEMORY_USER: &str = "memory@bench.test";
const LARGE_MESSAGE: usize = 50 << 20;
const SMALL_MESSAGES: u64 = 3_000;
/// Messages per command of the bare client, as mailvault's own batches.
const BARE_BATCH: usize = 500;
/// Set for the copy of this binary that runs one measured command, see [`measure_child`].
const MEASURE_ENV: &str = "MAILVAULT_BENCH_MEASURE";

fn main() {
    if let Some(result_path) = std::env::var_os(MEASURE_ENV) {
        if let Err(e) = measure_child(&result_path) {
            eprintln!("measuring failed: {e}");
            std::process::exit(1);
        }
        return;
    }
    // `cargo test --all-targets` runs bench targets too, without `--bench`: this one takes
    // many minutes and measures rather than tests, so it runs only under `cargo bench`.
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("skipped: run it with `cargo bench -p mailvault --bench archive`");
        return;
    }
    let reps = std::env::var("MAILVAULT_BENCH_REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n: &usize| n > 0)
        .unwrap_or(DEFAULT_REPS);
    if let Err(e) = bench(reps) {
        eprintln!("benchmark failed: {e}");
        std::process::exit(1);
    }
}

fn bench(reps: usize) -> io::Result<()> {
    let mailvault = PathBuf::from(env!("CARGO_BIN_EXE_mailvault"));
    // Targets live in cargo's per-target scratch directory, on the same file system as the
    // project (never a tmpfs /tmp, where fsync would cost nothing).
    let scratch = tempfile::Builder::new()
        .prefix("bench-archive-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))?;
    progress("starting Dovecot and seeding the mailboxes");
    let started = Instant::now();
    let dovecot = Dovecot::start()?;
    let work = Work {
        mailvault,
        root: scratch.path().to_path_buf(),
        runs: std::cell::Cell::new(0),
        server: ServerCpu::find(&dovecot)?,
    };
    let seeded = seed(&dovecot)?;
    check_space(&work.root, reps, &seeded)?;
    sync_all();
    progress(&format!(
        "seeded in {:.1} s; {reps} repetitions (MAILVAULT_BENCH_REPS)",
        started.elapsed().as_secs_f64()
    ));

    let mut report = Report {
        load_before: load_average(),
        ..Report::default()
    };
    first_archive(&work, &dovecot, &seeded, reps, &mut report)?;
    scaling(&work, &dovecot, reps, &mut report)?;
    peak_memory(&work, &dovecot, reps, &mut report)?;
    report.s3 = s3_store(&work, &dovecot, reps)?;
    report.load_after = load_average();
    print!("{}", report.render(reps, &seeded));
    Ok(())
}

/// What was seeded, for checks and for the table.
struct Seeded {
    big_bytes: u64,
    many_bytes: u64,
    memory_bytes: u64,
}

fn seed(dovecot: &Dovecot) -> io::Result<Seeded> {
    let deliver = |user: &str, messages: Vec<Vec<u8>>| -> io::Result<u64> {
        dovecot.add_user(user, PASSWORD)?;
        let bytes = messages.iter().map(|m| m.len() as u64).sum();
        let dated: Vec<_> = messages.into_iter().map(|m| (m, DATE)).collect();
        dovecot.deliver_many(user, "INBOX", &dated)?;
        Ok(bytes)
    };
    let big_bytes = deliver(BIG_USER, mail::mailbox(1, BIG_USER, BIG_MESSAGES))?;
    let mut many_bytes = 0;
    for i in 0..MANY_USERS {
        let user = many_user(i);
        many_bytes += deliver(&user, mail::mailbox(100 + i as u64, &user, MANY_MESSAGES))?;
    }
    let mut rng = mail::Rng::new(7);
    let mut memory: Vec<Vec<u8>> = (0..SMALL_MESSAGES)
        .map(|n| {
            let size = 2_000 + rng.below(8_000) as usize;
            mail::message(7, n, "sender@example.net", MEMORY_USER, "Small", size)
        })
        .collect();
    let large = mail::message(
        7,
        SMALL_MESSAGES,
        "sender@example.net",
        MEMORY_USER,
        "Large",
        LARGE_MESSAGE,
    );
    memory.insert(memory.len() / 2, large);
    let memory_bytes = deliver(MEMORY_USER, memory)?;
    Ok(Seeded {
        big_bytes,
        many_bytes,
        memory_bytes,
    })
}

fn many_user(i: usize) -> String {
    format!("user{i:02}@bench.test")
}

/// Sections 1 and 2: one large mailbox, archived from scratch and then again with nothing
/// new.
fn first_archive(
    work: &Work,
    dovecot: &Dovecot,
    seeded: &Seeded,
    reps: usize,
    report: &mut Report,
) -> io::Result<()> {
    let input = work.mailvault_input(dovecot, &[BIG_USER], 4)?;
    let mut mv = Vec::new();
    let mut mbsync_fsync = Vec::new();
    let mut mbsync_nofsync = Vec::new();
    let mut bare = Vec::new();
    let mut last_store = None;
    let mut last_maildir = None;
    for rep in 1..=reps {
        let store = work.fresh("store")?;
        let run = work.mailvault_run(&input, &store)?;
        run.expect_archived(BIG_MESSAGES, 0)?;
        mv.push(run.measured);
        last_store = Some(store);

        let maildir = work.fresh("mbsync")?;
        mbsync_fsync.push(work.mbsync(dovecot, BIG_USER, &maildir, true)?);
        expect_maildir(&maildir, BIG_MESSAGES)?;
        last_maildir = Some(maildir);

        let maildir = work.fresh("mbsync")?;
        mbsync_nofsync.push(work.mbsync(dovecot, BIG_USER, &maildir, false)?);
        expect_maildir(&maildir, BIG_MESSAGES)?;

        sync_all();
        let server_start = work.server.used();
        let (start, cpu_start) = (Instant::now(), thread_cpu());
        let (count, bytes) = bare_fetch(dovecot.imap_port(), BIG_USER)?;
        bare.push(Measured {
            wall: start.elapsed(),
            cpu: thread_cpu().saturating_sub(cpu_start),
            server_cpu: work.server.since(server_start),
            max_rss_kib: 0,
        });
        if (count, bytes) != (BIG_MESSAGES, seeded.big_bytes) {
            return Err(io::Error::other(format!(
                "the bare client got {count} messages, {bytes} bytes; expected {BIG_MESSAGES}, {}",
                seeded.big_bytes
            )));
        }
        progress(&format!(
            "first archive {rep}/{reps}: mailvault {}, mbsync {} (FSync no {}), bare {}",
            secs(mv[rep - 1].wall),
            secs(mbsync_fsync[rep - 1].wall),
            secs(mbsync_nofsync[rep - 1].wall),
            secs(bare[rep - 1].wall)
        ));
    }
    report.first = vec![
        Row::new("mailvault run", mv),
        Row::new("mbsync, FSync yes", mbsync_fsync),
        Row::new("mbsync, FSync no", mbsync_nofsync),
        Row::new("bare fetch client", bare),
    ];

    let (store, maildir) = (
        last_store.expect("reps > 0"),
        last_maildir.expect("reps > 0"),
    );
    let mut mv = Vec::new();
    let mut mbsync = Vec::new();
    let mut start = Vec::new();
    for rep in 1..=reps {
        let run = work.mailvault_run(&input, &store)?;
        run.expect_archived(0, BIG_MESSAGES)?;
        mv.push(run.measured);
        mbsync.push(work.mbsync(dovecot, BIG_USER, &maildir, true)?);
        expect_maildir(&maildir, BIG_MESSAGES)?;
        start.push(work.measure(
            "start",
            &work.mailvault,
            &["--version".as_ref()],
            Stdio::null(),
        )?);
        progress(&format!(
            "re-run {rep}/{reps}: mailvault {}, mbsync {}, mailvault --version {}",
            secs(mv[rep - 1].wall),
            secs(mbsync[rep - 1].wall),
            secs(start[rep - 1].wall)
        ));
    }
    report.rerun = vec![
        Row::new("mailvault run", mv),
        Row::new("mbsync", mbsync),
        Row::new("mailvault --version (process start)", start),
    ];
    Ok(())
}

/// Section 3: many small mailboxes, with more and more of them at once.
fn scaling(work: &Work, dovecot: &Dovecot, reps: usize, report: &mut Report) -> io::Result<()> {
    let users: Vec<String> = (0..MANY_USERS).map(many_user).collect();
    let users: Vec<&str> = users.iter().map(String::as_str).collect();
    let inputs = PARALLELISM
        .iter()
        .map(|&p| work.mailvault_input(dovecot, &users, p))
        .collect::<io::Result<Vec<_>>>()?;
    let mut times = vec![Vec::new(); PARALLELISM.len()];
    for rep in 1..=reps {
        for (i, input) in inputs.iter().enumerate() {
            let store = work.fresh("store")?;
            let run = work.mailvault_run(input, &store)?;
            run.expect_archived(MANY_USERS as u64 * MANY_MESSAGES, 0)?;
            times[i].push(run.measured);
        }
        let line: Vec<String> = PARALLELISM
            .iter()
            .zip(&times)
            .map(|(p, t)| format!("{p}: {}", secs(t[rep - 1].wall)))
            .collect();
        progress(&format!(
            "scaling {rep}/{reps}: maxParallelJobs {}",
            line.join(", ")
        ));
    }
    report.scaling = PARALLELISM
        .iter()
        .zip(times)
        .map(|(p, t)| Row::new(&format!("maxParallelJobs {p}"), t))
        .collect();
    Ok(())
}

/// Section 4: peak memory with one very large message among many small ones.
fn peak_memory(work: &Work, dovecot: &Dovecot, reps: usize, report: &mut Report) -> io::Result<()> {
    let input = work.mailvault_input(dovecot, &[MEMORY_USER], 4)?;
    let mut mv = Vec::new();
    let mut mbsync = Vec::new();
    for rep in 1..=reps {
        let store = work.fresh("store")?;
        let run = work.mailvault_run(&input, &store)?;
        run.expect_archived(SMALL_MESSAGES + 1, 0)?;
        mv.push(run.measured);
        // Without fsync, which changes nothing about memory and takes minutes here.
        let maildir = work.fresh("mbsync")?;
        mbsync.push(work.mbsync(dovecot, MEMORY_USER, &maildir, false)?);
        expect_maildir(&maildir, SMALL_MESSAGES + 1)?;
        progress(&format!(
            "peak memory {rep}/{reps}: mailvault {} MiB in {}, mbsync {} MiB in {}",
            mv[rep - 1].max_rss_kib / 1024,
            secs(mv[rep - 1].wall),
            mbsync[rep - 1].max_rss_kib / 1024,
            secs(mbsync[rep - 1].wall)
        ));
    }
    report.memory = vec![
        Row::new("mailvault run", mv),
        Row::new("mbsync, FSync no", mbsync),
    ];
    Ok(())
}

/// Section 5: the 5,000-message mailbox into a private S3 server (Garage on loopback), a
/// first archive and a re-run with nothing new, each into a fresh prefix.
fn s3_store(work: &Work, dovecot: &Dovecot, reps: usize) -> io::Result<Vec<Row>> {
    let garage = Garage::start().map_err(|e| io::Error::other(e.to_string()))?;
    // The child processes inherit the credentials, as a user's shell would pass them.
    std::env::set_var("AWS_ACCESS_KEY_ID", garage.access_key_id());
    std::env::set_var("AWS_SECRET_ACCESS_KEY", garage.secret_access_key());
    let input = work.mailvault_input(dovecot, &[BIG_USER], 4)?;
    let endpoint = garage.endpoint();
    let extra: [&OsStr; 5] = [
        "--s3-endpoint".as_ref(),
        endpoint.as_ref(),
        "--s3-region".as_ref(),
        garage.region().as_ref(),
        "--s3-path-style".as_ref(),
    ];
    let (mut first, mut rerun) = (Vec::new(), Vec::new());
    for rep in 1..=reps {
        let url = format!("s3://{}/rep-{rep}", garage.bucket());
        let run = work.mailvault_run_on(&input, url.as_ref(), &extra)?;
        run.expect_archived(BIG_MESSAGES, 0)?;
        first.push(run.measured);
        let run = work.mailvault_run_on(&input, url.as_ref(), &extra)?;
        run.expect_archived(0, BIG_MESSAGES)?;
        rerun.push(run.measured);
        progress(&format!(
            "S3 {rep}/{reps}: first archive {}, re-run {}",
            secs(first[rep - 1].wall),
            secs(rerun[rep - 1].wall)
        ));
    }
    Ok(vec![
        Row::new("mailvault run, first archive", first),
        Row::new("mailvault run, nothing new", rerun),
    ])
}

/// Where the runs write, the binary under test, and the server's CPU meter.
struct Work {
    mailvault: PathBuf,
    root: PathBuf,
    /// Counter for unique directory names.
    runs: std::cell::Cell<u64>,
    server: ServerCpu,
}

/// A `mailvault run` and what it printed.
struct MailvaultRun {
    measured: Measured,
    protocol: serde_json::Value,
}

impl MailvaultRun {
    /// Fails unless every mailbox succeeded with exactly these totals.
    fn expect_archived(&self, archived: u64, already: u64) -> io::Result<()> {
        let totals = &self.protocol["totals"];
        if self.protocol["result"] == "Succeeded"
            && totals["archived"] == archived
            && totals["alreadyArchived"] == already
            && totals["failed"] == 0
        {
            return Ok(());
        }
        Err(io::Error::other(format!(
            "mailvault run: expected {archived} archived and {already} already archived, got \
             result {} with totals {totals}",
            self.protocol["result"]
        )))
    }
}

impl Work {
    /// A new, empty directory for one run's target. Targets are kept until the benchmark
    /// ends (several GB): on ext4 without a journal, deleting thousands of files makes
    /// creating files slow for up to six minutes after (the inode allocator skips recently
    /// freed inodes one by one), which would tax whichever contender runs next. For the same
    /// reason, start the benchmark a few minutes after deleting many files, such as the
    /// targets of its previous run.
    fn fresh(&self, what: &str) -> io::Result<PathBuf> {
        let n = self.runs.get() + 1;
        self.runs.set(n);
        let dir = self.root.join(format!("{what}-{n}"));
        fs::create_dir_all(&dir)?;
        Ok(dir)
    }

    /// A profile for `users` on the plain listener, as a YAML file.
    fn mailvault_input(
        &self,
        dovecot: &Dovecot,
        users: &[&str],
        max_parallel: usize,
    ) -> io::Result<PathBuf> {
        let mut csv = String::from("    user;password\n");
        for user in users {
            writeln!(csv, "    {user};{PASSWORD}").expect("writing to a String");
        }
        let yaml = format!(
            "apiVersion: mailvault.io/v1alpha1
kind: ArchiveProfile
metadata:
  name: bench
spec:
  mailboxSetRef:
    name: bench
  server:
    host: 127.0.0.1
    port: {port}
    security: None
    timeoutSeconds: 120
  maxParallelJobs: {max_parallel}
---
apiVersion: mailvault.io/v1alpha1
kind: MailboxSet
metadata:
  name: bench
spec:
  csv:
    secretRef:
      name: bench-mailboxes
      key: mailboxes.csv
---
apiVersion: v1
kind: Secret
metadata:
  name: bench-mailboxes
stringData:
  mailboxes.csv: |
{csv}",
            port = dovecot.imap_port()
        );
        let path = self.root.join(format!(
            "input-{}-{max_parallel}.yaml",
            users.first().copied().unwrap_or("none")
        ));
        fs::write(&path, yaml)?;
        Ok(path)
    }

    fn mailvault_run(&self, input: &Path, store: &Path) -> io::Result<MailvaultRun> {
        self.mailvault_run_on(input, store.as_os_str(), &[])
    }

    /// `mailvault run` into the store `store` (a directory or `s3://...`), with `extra`
    /// arguments (how to reach S3).
    fn mailvault_run_on(
        &self,
        input: &Path,
        store: &OsStr,
        extra: &[&OsStr],
    ) -> io::Result<MailvaultRun> {
        let out = self.root.join("mailvault.out");
        let mut args: Vec<&OsStr> = vec![
            "run".as_ref(),
            "-f".as_ref(),
            input.as_os_str(),
            "--store".as_ref(),
            store,
            "-o".as_ref(),
            "json".as_ref(),
        ];
        args.extend_from_slice(extra);
        let measured = self.measure(
            "mailvault",
            &self.mailvault,
            &args,
            fs::File::create(&out)?.into(),
        )?;
        let stdout = fs::read(&out)?;
        let protocol = serde_json::from_slice(&stdout).map_err(|e| {
            io::Error::other(format!(
                "mailvault run printed no protocol ({e}): {}",
                String::from_utf8_lossy(&stdout)
            ))
        })?;
        Ok(MailvaultRun { measured, protocol })
    }

    /// Runs mbsync for `user` into the Maildir `dir` (its config and state live there too).
    fn mbsync(
        &self,
        dovecot: &Dovecot,
        user: &str,
        dir: &Path,
        fsync: bool,
    ) -> io::Result<Measured> {
        let config = dir.join("mbsyncrc");
        let maildir = dir.join("Maildir");
        fs::create_dir_all(&maildir)?;
        fs::write(
            &config,
            format!(
                "FSync {fsync}

IMAPAccount bench
Host 127.0.0.1
Port {port}
User {user}
Pass {PASSWORD}
SSLType None
AuthMechs LOGIN

IMAPStore far
Account bench

MaildirStore near
Path {maildir}/
Inbox {maildir}/INBOX
SubFolders Verbatim

Channel bench
Far :far:
Near :near:
Patterns *
Create Near
Sync Pull
SyncState *
",
                fsync = if fsync { "yes" } else { "no" },
                port = dovecot.imap_port(),
                maildir = maildir.display(),
            ),
        )?;
        self.measure(
            "mbsync",
            Path::new("mbsync"),
            &[
                "-c".as_ref(),
                config.as_os_str(),
                "-q".as_ref(),
                "-a".as_ref(),
            ],
            Stdio::null(),
        )
    }

    /// Runs `program` to its end after syncing the file system, with its stderr in a file
    /// that is shown if it fails.
    fn measure(
        &self,
        what: &str,
        program: &Path,
        args: &[&OsStr],
        stdout: Stdio,
    ) -> io::Result<Measured> {
        let stderr_path = self.root.join(format!("{what}.err"));
        let result_path = self.root.join(format!("{what}.measured"));
        // Through a fresh copy of this binary, see `measure_child`.
        let mut command = Command::new(std::env::current_exe()?);
        command
            .env(MEASURE_ENV, &result_path)
            .arg(program)
            .args(args)
            .stdout(stdout)
            .stderr(fs::File::create(&stderr_path)?);
        sync_all();
        let server_start = self.server.used();
        let status = command.status()?;
        let server_cpu = self.server.since(server_start);
        let result = fs::read_to_string(&result_path).unwrap_or_default();
        let mut fields = result.split_whitespace().map(str::parse::<u64>);
        let (Some(Ok(nanos)), Some(Ok(cpu_nanos)), Some(Ok(max_rss_kib)), Some(Ok(exit_code))) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            return Err(io::Error::other(format!(
                "measuring {what} failed ({status}): {}",
                fs::read_to_string(&stderr_path).unwrap_or_default()
            )));
        };
        if exit_code != 0 {
            return Err(io::Error::other(format!(
                "{what} exited with {exit_code}: {}",
                fs::read_to_string(&stderr_path).unwrap_or_default()
            )));
        }
        Ok(Measured {
            wall: Duration::from_nanos(nanos),
            cpu: Duration::from_nanos(cpu_nanos),
            server_cpu,
            max_rss_kib,
        })
    }
}

/// The wall time and peak memory of one run.
#[derive(Clone, Copy)]
struct Measured {
    wall: Duration,
    /// User and system CPU time of the contender.
    cpu: Duration,
    /// User and system CPU time of the server meanwhile.
    server_cpu: Duration,
    /// Peak resident set size, 0 when not measured (the bare client runs in this process).
    max_rss_kib: u64,
}

/// The measuring go-between: runs the command in its arguments, reaps it with `wait4`, and
/// writes its wall time (ns), peak RSS (KiB) and exit code into the file named by
/// [`MEASURE_ENV`].
///
/// Why a fresh process: Linux carries the peak RSS across exec, and a child spawned by the
/// benchmark starts out sharing (vfork) or copying (fork) the benchmark's memory, which the
/// seeding has grown to hundreds of MiB. A child of this small process starts from a few MiB,
/// so its peak is the command's own.
fn measure_child(result_path: &OsStr) -> io::Result<()> {
    let mut args = std::env::args_os().skip(1);
    let program = args.next().ok_or_else(|| io::Error::other("no command"))?;
    let start = Instant::now();
    let child = Command::new(program)
        .args(args)
        .env_remove(MEASURE_ENV)
        .spawn()?;
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value of this plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: `pid` is our unreaped child; status and usage point to live locals.
        let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if rc == pid {
            break;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    let wall = start.elapsed();
    // Reaped above: dropping the handle neither waits nor kills.
    drop(child);
    let exit_code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        128 + libc::WTERMSIG(status)
    };
    fs::write(
        result_path,
        format!(
            "{} {} {} {exit_code}",
            wall.as_nanos(),
            (timeval(usage.ru_utime) + timeval(usage.ru_stime)).as_nanos(),
            usage.ru_maxrss
        ),
    )
}

/// The CPU time of a Dovecot instance: its master, the children it still has (auth,
/// config, log...) and those it has reaped (a login and an imap process per session), from
/// /proc in clock ticks. Shows what the server spends on each contender, and with the
/// contender's own CPU time whether the machine's cores were the limit.
struct ServerCpu {
    master: u32,
    tick: Duration,
}

impl ServerCpu {
    /// Finds the instance's master: the `dovecot` process started with its config.
    fn find(dovecot: &Dovecot) -> io::Result<ServerCpu> {
        let config = dovecot.dir().join("dovecot.conf");
        // SAFETY: sysconf has no preconditions.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        let tick = Duration::from_secs(1) / u32::try_from(ticks).unwrap_or(100).max(1);
        for entry in fs::read_dir("/proc")? {
            let entry = entry?;
            let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
                continue;
            };
            let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else {
                continue;
            };
            let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
            if args.first().is_some_and(|a| a.ends_with(b"dovecot"))
                && args.contains(&config.as_os_str().as_encoded_bytes())
            {
                return Ok(ServerCpu { master: pid, tick });
            }
        }
        Err(io::Error::other("cannot find the Dovecot master process"))
    }

    fn used(&self) -> Duration {
        let mut ticks = 0;
        let Ok(entries) = fs::read_dir("/proc") else {
            return Duration::ZERO;
        };
        for entry in entries.flatten() {
            let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            // After the command name in parentheses: state, ppid, ... utime, stime, cutime,
            // cstime as the 12th to 15th fields.
            let Some((head, rest)) = stat.rsplit_once(')') else {
                continue;
            };
            let pid: u32 = head
                .split(' ')
                .next()
                .and_then(|p| p.parse().ok())
                .unwrap_or(0);
            let fields: Vec<u64> = rest
                .split_whitespace()
                .skip(1)
                .map(|f| f.parse().unwrap_or(0))
                .collect();
            if fields.len() < 14 {
                continue;
            }
            if pid == self.master {
                ticks += fields[10] + fields[11] + fields[12] + fields[13];
            } else if fields[0] == u64::from(self.master) {
                ticks += fields[10] + fields[11];
            }
        }
        self.tick * u32::try_from(ticks).unwrap_or(u32::MAX)
    }

    /// What was used since `start`, once the server has finished with the session (its
    /// imap process ends and is reaped shortly after the client leaves).
    fn since(&self, start: Duration) -> Duration {
        std::thread::sleep(Duration::from_millis(100));
        self.used().saturating_sub(start)
    }
}

fn timeval(t: libc::timeval) -> Duration {
    Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
}

/// CPU time of the calling thread so far.
fn thread_cpu() -> Duration {
    // SAFETY: an all-zero rusage is a valid value of this plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` points to a live local.
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) };
    timeval(usage.ru_utime) + timeval(usage.ru_stime)
}

/// The server's limit: LOGIN, SELECT, `UID FETCH … BODY.PEEK[]` in batches, each body read
/// into its own buffer and dropped. Returns messages and bytes received.
fn bare_fetch(port: u16, user: &str) -> io::Result<(u64, u64)> {
    let stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::with_capacity(1 << 20, stream);
    let mut client = Bare {
        line: Vec::new(),
        tag: 0,
    };
    client.read_line(&mut reader)?;
    client.command(
        &mut writer,
        &mut reader,
        &format!("LOGIN {user} {PASSWORD}"),
        |_| {},
    )?;
    client.command(&mut writer, &mut reader, "SELECT INBOX", |_| {})?;
    let mut uids = Vec::new();
    client.command(&mut writer, &mut reader, "UID SEARCH ALL", |line| {
        if let Some(rest) = line.strip_prefix(b"* SEARCH") {
            uids.extend(
                String::from_utf8_lossy(rest)
                    .split_whitespace()
                    .filter_map(|u| u.parse::<u32>().ok()),
            );
        }
    })?;
    uids.sort_unstable();
    let (mut count, mut bytes) = (0, 0);
    for batch in uids.chunks(BARE_BATCH) {
        let tag = client.send(
            &mut writer,
            &format!("UID FETCH {} BODY.PEEK[]", uid_set(batch)),
        )?;
        loop {
            client.read_line(&mut reader)?;
            if client.line.starts_with(tag.as_bytes()) {
                client.expect_ok(&tag)?;
                break;
            }
            while let Some(size) = literal_size(&client.line) {
                let mut body = Vec::with_capacity(size);
                (&mut reader).take(size as u64).read_to_end(&mut body)?;
                if body.len() != size {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                count += 1;
                bytes += body.len() as u64;
                drop(body);
                client.read_line(&mut reader)?;
            }
        }
    }
    client.command(&mut writer, &mut reader, "LOGOUT", |_| {})?;
    Ok((count, bytes))
}

struct Bare {
    line: Vec<u8>,
    tag: u32,
}

impl Bare {
    fn read_line(&mut self, reader: &mut impl BufRead) -> io::Result<()> {
        self.line.clear();
        if reader.read_until(b'\n', &mut self.line)? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        Ok(())
    }

    fn send(&mut self, writer: &mut impl Write, command: &str) -> io::Result<String> {
        self.tag += 1;
        let tag = format!("b{} ", self.tag);
        writer.write_all(format!("{tag}{command}\r\n").as_bytes())?;
        Ok(tag)
    }

    /// Sends a command without literals in its answer and reads to its tagged status.
    fn command(
        &mut self,
        writer: &mut impl Write,
        reader: &mut impl BufRead,
        command: &str,
        mut untagged: impl FnMut(&[u8]),
    ) -> io::Result<()> {
        let tag = self.send(writer, command)?;
        loop {
            self.read_line(reader)?;
            if self.line.starts_with(tag.as_bytes()) {
                return self.expect_ok(&tag);
            }
            untagged(&self.line);
        }
    }

    fn expect_ok(&self, tag: &str) -> io::Result<()> {
        if self.line[tag.len()..].starts_with(b"OK") {
            Ok(())
        } else {
            Err(io::Error::other(format!(
                "the server said: {}",
                String::from_utf8_lossy(&self.line)
            )))
        }
    }
}

/// The size of the literal that ends a response line (`… {1234}\r\n`).
fn literal_size(line: &[u8]) -> Option<usize> {
    let line = line.strip_suffix(b"}\r\n")?;
    let open = line.iter().rposition(|&b| b == b'{')?;
    std::str::from_utf8(&line[open + 1..]).ok()?.parse().ok()
}

/// Counts the messages of an mbsync Maildir (INBOX only; the other folders are empty).
fn expect_maildir(dir: &Path, expected: u64) -> io::Result<()> {
    let inbox = dir.join("Maildir").join("INBOX");
    let mut count = 0;
    for sub in ["cur", "new"] {
        count += fs::read_dir(inbox.join(sub))?.count() as u64;
    }
    if count != expected {
        return Err(io::Error::other(format!(
            "mbsync stored {count} messages, expected {expected}"
        )));
    }
    Ok(())
}

/// Fails early unless the targets of every repetition fit on the disk, since they are all
/// kept until the end (see [`Work::fresh`]).
fn check_space(dir: &Path, reps: usize, seeded: &Seeded) -> io::Result<()> {
    // Each contender's copy of the mail, plus a tenth for file-system overhead and indexes.
    let per_rep = 3 * seeded.big_bytes + 3 * seeded.many_bytes + 2 * seeded.memory_bytes;
    let needed = per_rep * reps as u64 / 10 * 11;
    let path =
        std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).map_err(io::Error::other)?;
    // SAFETY: an all-zero statvfs is a valid value of this plain C struct.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is NUL-terminated and `stat` points to a live local.
    if unsafe { libc::statvfs(path.as_ptr(), &mut stat) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let free = stat.f_bavail as u64 * stat.f_frsize as u64;
    if free < needed {
        return Err(io::Error::other(format!(
            "{reps} repetitions need about {:.1} GB free in {}, there are {:.1} GB",
            needed as f64 / 1e9,
            dir.display(),
            free as f64 / 1e9
        )));
    }
    Ok(())
}

/// The 1-minute load average, as the kernel prints it.
fn load_average() -> String {
    fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "unknown".into())
}

/// Flushes every file system, so that a timed run does not pay for earlier writes.
fn sync_all() {
    // SAFETY: sync takes no arguments and cannot fail.
    unsafe { libc::sync() };
}

fn progress(message: &str) {
    eprintln!("bench: {message}");
}

fn secs(d: Duration) -> String {
    format!("{:.3} s", d.as_secs_f64())
}

/// One contender's repetitions.
struct Row {
    name: String,
    runs: Vec<Measured>,
}

impl Row {
    fn new(name: &str, runs: Vec<Measured>) -> Row {
        Row {
            name: name.to_string(),
            runs,
        }
    }

    /// Median wall time in seconds.
    fn median(&self) -> f64 {
        median(self.runs.iter().map(|m| m.wall.as_secs_f64()).collect())
    }

    /// Median CPU time in seconds.
    fn cpu(&self) -> f64 {
        median(self.runs.iter().map(|m| m.cpu.as_secs_f64()).collect())
    }

    /// Median CPU time of the server in seconds.
    fn server_cpu(&self) -> f64 {
        median(
            self.runs
                .iter()
                .map(|m| m.server_cpu.as_secs_f64())
                .collect(),
        )
    }

    fn rss_mib(&self) -> f64 {
        median(self.runs.iter().map(|m| m.max_rss_kib as f64).collect()) / 1024.0
    }

    fn spread(&self) -> String {
        let min = self.runs.iter().map(|m| m.wall).min().unwrap_or_default();
        let max = self.runs.iter().map(|m| m.wall).max().unwrap_or_default();
        format!("{:.3}–{:.3}", min.as_secs_f64(), max.as_secs_f64())
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => 0.0,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

#[derive(Default)]
struct Report {
    /// The 1-minute load average before and after: other work on the machine skews every
    /// figure, and this shows whether there was any.
    load_before: String,
    load_after: String,
    first: Vec<Row>,
    rerun: Vec<Row>,
    scaling: Vec<Row>,
    memory: Vec<Row>,
    s3: Vec<Row>,
}

impl Report {
    fn render(&self, reps: usize, seeded: &Seeded) -> String {
        let mut out = String::new();
        let mb = |bytes: u64| bytes as f64 / 1e6;
        let mut w = |line: String| {
            out.push_str(&line);
            out.push('\n');
        };
        // Name, median wall time, its spread, and the median CPU times of the contender and
        // of the server.
        let timing = |row: &Row| {
            format!(
                "   {:<36} {:>7.3} s {:>13} {:>6.2} s {:>8.2} s",
                row.name,
                row.median(),
                row.spread(),
                row.cpu(),
                row.server_cpu()
            )
        };
        let header = |extra: &str| {
            format!(
                "   {:<36} {:>9} {:>13} {:>8} {:>10}{extra}",
                "", "median", "min–max", "CPU", "server CPU"
            )
        };
        w(format!(
            "\nmailvault benchmarks: median of {reps} repetitions, wall time; {} CPUs, load \
             average {} before, {} after\n",
            std::thread::available_parallelism().map_or(0, usize::from),
            self.load_before,
            self.load_after
        ));

        w(format!(
            "1. First archive: {BIG_MESSAGES} messages, {:.1} MB, into a local directory",
            mb(seeded.big_bytes)
        ));
        w(header(&format!(
            " {:>8} {:>7} {:>9} {:>7}",
            "msg/s", "MB/s", "/ mbsync", "/ bare"
        )));
        let mbsync = self.first[1].median();
        let bare = self.first[3].median();
        for row in &self.first {
            let t = row.median();
            w(format!(
                "{} {:>8.0} {:>7.1} {:>9.2} {:>7.2}",
                timing(row),
                BIG_MESSAGES as f64 / t,
                mb(seeded.big_bytes) / t,
                t / mbsync,
                t / bare
            ));
        }

        w("\n2. Re-run with nothing new".into());
        w(header(""));
        for row in &self.rerun {
            w(timing(row));
        }

        w(format!(
            "\n3. {MANY_USERS} mailboxes of {MANY_MESSAGES} messages, {:.1} MB",
            mb(seeded.many_bytes)
        ));
        w(header(&format!(
            " {:>8} {:>7} {:>8}",
            "msg/s", "MB/s", "speedup"
        )));
        let one = self.scaling[0].median();
        for row in &self.scaling {
            let t = row.median();
            w(format!(
                "{} {:>8.0} {:>7.1} {:>8.2}",
                timing(row),
                (MANY_USERS as u64 * MANY_MESSAGES) as f64 / t,
                mb(seeded.many_bytes) / t,
                one / t
            ));
        }

        w(format!(
            "\n4. Peak memory: one {} MiB message among {SMALL_MESSAGES} small ones, {:.1} MB",
            LARGE_MESSAGE >> 20,
            mb(seeded.memory_bytes)
        ));
        w(header(&format!(" {:>13}", "peak RSS")));
        for row in &self.memory {
            w(format!("{} {:>9.1} MiB", timing(row), row.rss_mib()));
        }

        w("\n5. S3 store".into());
        if self.s3.is_empty() {
            w("   not measured".into());
        }
        for row in &self.s3 {
            w(timing(row));
        }

        w("\nTargets".into());
        let check = |ok: bool| if ok { "met" } else { "NOT met" };
        let mv = self.first[0].median();
        w(format!(
            "   (1) first archive ≤ 0.5 × mbsync and ≤ 3 × bare: {:.2} × mbsync, {:.2} × bare: {}",
            mv / mbsync,
            mv / bare,
            check(mv <= 0.5 * mbsync && mv <= 3.0 * bare)
        ));
        let (noop, noop_mbsync, start) = (
            self.rerun[0].median(),
            self.rerun[1].median(),
            self.rerun[2].median(),
        );
        w(format!(
            "   (2) re-run ≤ mbsync's + process start: {noop:.3} s ≤ {noop_mbsync:.3} + {start:.3} s: {}",
            check(noop <= noop_mbsync + start)
        ));
        let four = self.scaling[1].median();
        w(format!(
            "   (3) maxParallelJobs 4 ≥ 1.6 × faster than 1: {:.2} ×: {}",
            one / four,
            check(one / four >= 1.6)
        ));
        let limit = 2.0 * (LARGE_MESSAGE >> 20) as f64 + 64.0;
        let rss = self.memory[0].rss_mib();
        w(format!(
            "   (4) peak RSS < 2 × largest message + 64 MiB: {rss:.1} < {limit:.0} MiB: {}",
            check(rss < limit)
        ));
        out
    }
}
