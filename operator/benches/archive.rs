//! Whole-process benchmarks: the `mailvault` release binary against a private Dovecot, side
//! by side with mbsync and with a bare fetch client, in one run:
//!
//! ```sh
//! cargo bench -p mailvault --bench archive     # MAILVAULT_BENCH_REPS=5 by default
//! MAILVAULT_BENCH_SECTIONS=rerun,deletion MAILVAULT_BENCH_BASELINE=/tmp/mailvault-old \
//!     cargo bench -p mailvault --bench archive
//! ```
//!
//! `MAILVAULT_BENCH_SECTIONS` picks sections (`first`, `rerun`, `scaling`, `memory`, `s3`,
//! `deletion`, `packs`; all by default). `MAILVAULT_BENCH_BASELINE` names another `mailvault` binary
//! (an earlier build) that the first-archive, re-run and deletion sections measure in turns
//! with this one, so that a change is compared under the same load rather than against
//! figures of another day.
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
use mailvault_testkit::dovecot::Dovecot;
use mailvault_testkit::garage::Garage;
use mailvault_testkit::mail;

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
const DELETE_USER: &str = "delete@bench.test";
const DELETE_MESSAGES: u64 = 2_000;
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
    let sections = match Sections::from_env() {
        Ok(sections) => sections,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = bench(reps, &sections) {
        eprintln!("benchmark failed: {e}");
        std::process::exit(1);
    }
}

/// The sections to run and the baseline binary, from the environment.
struct Sections {
    names: Vec<String>,
    baseline: Option<PathBuf>,
}

impl Sections {
    const ALL: [&'static str; 7] = [
        "first", "rerun", "scaling", "memory", "s3", "deletion", "packs",
    ];

    fn from_env() -> Result<Sections, String> {
        let names: Vec<String> = match std::env::var("MAILVAULT_BENCH_SECTIONS") {
            Ok(list) if !list.trim().is_empty() => list
                .split(',')
                .map(|s| s.trim().to_lowercase())
                .filter(|s| !s.is_empty())
                .collect(),
            _ => Self::ALL.iter().map(|s| s.to_string()).collect(),
        };
        if let Some(unknown) = names.iter().find(|n| !Self::ALL.contains(&n.as_str())) {
            return Err(format!(
                "MAILVAULT_BENCH_SECTIONS: unknown section {unknown:?}; known: {}",
                Self::ALL.join(", ")
            ));
        }
        let baseline = std::env::var_os("MAILVAULT_BENCH_BASELINE").map(PathBuf::from);
        if let Some(path) = &baseline {
            if !path.is_file() {
                return Err(format!(
                    "MAILVAULT_BENCH_BASELINE: {} is not a file",
                    path.display()
                ));
            }
        }
        Ok(Sections { names, baseline })
    }

    fn has(&self, name: &str) -> bool {
        self.names.iter().any(|n| n == name)
    }
}

fn bench(reps: usize, sections: &Sections) -> io::Result<()> {
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
        baseline: sections.baseline.clone(),
        root: scratch.path().to_path_buf(),
        runs: std::cell::Cell::new(0),
        server: ServerCpu::find(&dovecot)?,
    };
    let seeded = seed(&dovecot, sections)?;
    check_space(&work.root, reps, &seeded, work.baseline.is_some())?;
    sync_all();
    progress(&format!(
        "seeded in {:.1} s; {reps} repetitions (MAILVAULT_BENCH_REPS)",
        started.elapsed().as_secs_f64()
    ));

    let mut report = Report {
        load_before: load_average(),
        ..Report::default()
    };
    let store = if sections.has("first") {
        Some(first_archive(&work, &dovecot, &seeded, reps, &mut report)?)
    } else {
        None
    };
    if sections.has("rerun") {
        rerun(&work, &dovecot, store, reps, &mut report)?;
    }
    if sections.has("scaling") {
        scaling(&work, &dovecot, reps, &mut report)?;
    }
    if sections.has("memory") {
        peak_memory(&work, &dovecot, reps, &mut report)?;
    }
    if sections.has("s3") {
        report.s3 = s3_store(&work, &dovecot, reps)?;
    }
    if sections.has("deletion") {
        deletion(&work, &dovecot, reps, &mut report)?;
    }
    if sections.has("packs") {
        report.packs = Some(packs(&work, &dovecot, reps)?);
    }
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

/// Seeds the mailboxes of the chosen sections (the others stay empty, 0 bytes).
fn seed(dovecot: &Dovecot, sections: &Sections) -> io::Result<Seeded> {
    let deliver = |user: &str, messages: Vec<Vec<u8>>| -> io::Result<u64> {
        dovecot.add_user(user, PASSWORD)?;
        let bytes = messages.iter().map(|m| m.len() as u64).sum();
        let dated: Vec<_> = messages.into_iter().map(|m| (m, DATE)).collect();
        dovecot.deliver_many(user, "INBOX", &dated)?;
        Ok(bytes)
    };
    let mut seeded = Seeded {
        big_bytes: 0,
        many_bytes: 0,
        memory_bytes: 0,
    };
    if ["first", "rerun", "s3", "packs"]
        .iter()
        .any(|s| sections.has(s))
    {
        seeded.big_bytes = deliver(BIG_USER, mail::mailbox(1, BIG_USER, BIG_MESSAGES))?;
    }
    if sections.has("scaling") {
        for i in 0..MANY_USERS {
            let user = many_user(i);
            seeded.many_bytes +=
                deliver(&user, mail::mailbox(100 + i as u64, &user, MANY_MESSAGES))?;
        }
    }
    if sections.has("memory") {
        seeded.memory_bytes = deliver(MEMORY_USER, memory_mailbox())?;
    }
    if sections.has("deletion") {
        dovecot.add_user(DELETE_USER, PASSWORD)?;
    }
    Ok(seeded)
}

/// Many small messages with one very large one in the middle.
fn memory_mailbox() -> Vec<Vec<u8>> {
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
    memory
}

fn many_user(i: usize) -> String {
    format!("user{i:02}@bench.test")
}

/// Section 1: one large mailbox, archived from scratch. Returns the last repetition's
/// targets (mailvault's store, mbsync's directory) for the re-run.
fn first_archive(
    work: &Work,
    dovecot: &Dovecot,
    seeded: &Seeded,
    reps: usize,
    report: &mut Report,
) -> io::Result<(PathBuf, PathBuf)> {
    let input = work.mailvault_input(dovecot, &[BIG_USER], 4, "")?;
    let mut mv = Vec::new();
    let mut old = Vec::new();
    let mut mbsync_fsync = Vec::new();
    let mut mbsync_nofsync = Vec::new();
    let mut bare = Vec::new();
    let mut last_store = None;
    let mut last_maildir = None;
    for rep in 1..=reps {
        let store = work.fresh("store")?;
        let run = work.mailvault_run(&work.mailvault, &input, &store)?;
        run.expect_archived(BIG_MESSAGES, 0)?;
        mv.push(run.measured);
        last_store = Some(store);
        if let Some(baseline) = &work.baseline {
            let store = work.fresh("store")?;
            let run = work.mailvault_run(baseline, &input, &store)?;
            run.expect_archived(BIG_MESSAGES, 0)?;
            old.push(run.measured);
        }

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
    if !old.is_empty() {
        report.first.push(Row::new("baseline mailvault run", old));
    }

    Ok((
        last_store.expect("reps > 0"),
        last_maildir.expect("reps > 0"),
    ))
}

/// Section 2: the large mailbox again, with nothing new: into the targets of section 1, or
/// into ones archived untimed here when section 1 did not run.
fn rerun(
    work: &Work,
    dovecot: &Dovecot,
    targets: Option<(PathBuf, PathBuf)>,
    reps: usize,
    report: &mut Report,
) -> io::Result<()> {
    let input = work.mailvault_input(dovecot, &[BIG_USER], 4, "")?;
    let (store, maildir) = match targets {
        Some(targets) => targets,
        None => {
            progress("archiving the large mailbox once for the re-runs (untimed)");
            let store = work.fresh("store")?;
            work.mailvault_run(&work.mailvault, &input, &store)?
                .expect_archived(BIG_MESSAGES, 0)?;
            let maildir = work.fresh("mbsync")?;
            work.mbsync(dovecot, BIG_USER, &maildir, true)?;
            expect_maildir(&maildir, BIG_MESSAGES)?;
            (store, maildir)
        }
    };
    // The baseline gets a store of its own: it need not read what this build wrote.
    let baseline_store = match &work.baseline {
        Some(baseline) => {
            let store = work.fresh("store")?;
            work.mailvault_run(baseline, &input, &store)?
                .expect_archived(BIG_MESSAGES, 0)?;
            Some((baseline, store))
        }
        None => None,
    };
    let mut mv = Vec::new();
    let mut old = Vec::new();
    let mut mbsync = Vec::new();
    let mut start = Vec::new();
    for rep in 1..=reps {
        let run = work.mailvault_run(&work.mailvault, &input, &store)?;
        run.expect_archived(0, BIG_MESSAGES)?;
        mv.push(run.measured);
        if let Some((baseline, store)) = &baseline_store {
            let run = work.mailvault_run(baseline, &input, store)?;
            run.expect_archived(0, BIG_MESSAGES)?;
            old.push(run.measured);
        }
        mbsync.push(work.mbsync(dovecot, BIG_USER, &maildir, true)?);
        expect_maildir(&maildir, BIG_MESSAGES)?;
        start.push(work.measure(
            "start",
            &work.mailvault,
            &["--version".as_ref()],
            Stdio::null(),
        )?);
        progress(&format!(
            "re-run {rep}/{reps}: mailvault {}{}, mbsync {}, mailvault --version {}",
            secs(mv[rep - 1].wall),
            old.last()
                .map(|m| format!(" (baseline {})", secs(m.wall)))
                .unwrap_or_default(),
            secs(mbsync[rep - 1].wall),
            secs(start[rep - 1].wall)
        ));
    }
    report.rerun = vec![
        Row::new("mailvault run", mv),
        Row::new("mbsync", mbsync),
        Row::new("mailvault --version (process start)", start),
    ];
    if !old.is_empty() {
        report.rerun.push(Row::new("baseline mailvault run", old));
    }
    Ok(())
}

/// Section 3: many small mailboxes, with more and more of them at once.
fn scaling(work: &Work, dovecot: &Dovecot, reps: usize, report: &mut Report) -> io::Result<()> {
    let users: Vec<String> = (0..MANY_USERS).map(many_user).collect();
    let users: Vec<&str> = users.iter().map(String::as_str).collect();
    let inputs = PARALLELISM
        .iter()
        .map(|&p| work.mailvault_input(dovecot, &users, p, ""))
        .collect::<io::Result<Vec<_>>>()?;
    let mut times = vec![Vec::new(); PARALLELISM.len()];
    for rep in 1..=reps {
        for (i, input) in inputs.iter().enumerate() {
            let store = work.fresh("store")?;
            let run = work.mailvault_run(&work.mailvault, input, &store)?;
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
    let input = work.mailvault_input(dovecot, &[MEMORY_USER], 4, "")?;
    let mut mv = Vec::new();
    let mut mbsync = Vec::new();
    for rep in 1..=reps {
        let store = work.fresh("store")?;
        let run = work.mailvault_run(&work.mailvault, &input, &store)?;
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

/// A private Garage, its credentials in the environment: the child processes inherit
/// them, as a user's shell would pass them.
fn start_garage() -> io::Result<Garage> {
    let garage = Garage::start().map_err(|e| io::Error::other(e.to_string()))?;
    std::env::set_var("AWS_ACCESS_KEY_ID", garage.access_key_id());
    std::env::set_var("AWS_SECRET_ACCESS_KEY", garage.secret_access_key());
    Ok(garage)
}

/// The command-line flags that reach `garage`.
fn s3_flags(garage: &Garage) -> [String; 5] {
    [
        "--s3-endpoint".into(),
        garage.endpoint(),
        "--s3-region".into(),
        garage.region().into(),
        "--s3-path-style".into(),
    ]
}

/// Section 5: the 5,000-message mailbox into a private S3 server (Garage on loopback), a
/// first archive and a re-run with nothing new, each into a fresh prefix.
fn s3_store(work: &Work, dovecot: &Dovecot, reps: usize) -> io::Result<Vec<Row>> {
    let garage = start_garage()?;
    let input = work.mailvault_input(dovecot, &[BIG_USER], 4, "")?;
    let flags = s3_flags(&garage);
    let extra: Vec<&OsStr> = flags.iter().map(|f| f.as_ref()).collect();
    let (mut first, mut rerun) = (Vec::new(), Vec::new());
    for rep in 1..=reps {
        let url = format!("s3://{}/rep-{rep}", garage.bucket());
        let run = work.mailvault_run_on(&work.mailvault, &input, url.as_ref(), &extra)?;
        run.expect_archived(BIG_MESSAGES, 0)?;
        first.push(run.measured);
        let run = work.mailvault_run_on(&work.mailvault, &input, url.as_ref(), &extra)?;
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

/// What section 7 measured besides times.
struct PackFigures {
    rows: Vec<Row>,
    /// Objects (files) the first local archive left, tmp/ aside.
    objects: u64,
    /// Their bytes, and the bytes of the packs alone.
    stored_bytes: u64,
    pack_bytes: u64,
}

/// Section 7: the pack store (issue 14), all in one run, contenders in turns: the first
/// archive of the big mailbox into a local directory, into S3 (Garage on this machine),
/// and into a local directory encrypted; the re-run with nothing new; the export of the
/// local archive. Counts the objects and bytes the local archive took.
fn packs(work: &Work, dovecot: &Dovecot, reps: usize) -> io::Result<PackFigures> {
    let garage = start_garage()?;
    let input = work.mailvault_input(dovecot, &[BIG_USER], 4, "")?;
    let flags = s3_flags(&garage);
    let s3_args: Vec<&OsStr> = flags.iter().map(|f| f.as_ref()).collect();
    let key_file = work.fresh("keys")?.join("keys.txt");
    fs::write(&key_file, format!("bench: {}\n", "5a".repeat(32)))?;
    let key_args: [&OsStr; 2] = ["--encryption-key-file".as_ref(), key_file.as_os_str()];
    let mut times: [Vec<Measured>; 5] = Default::default();
    let mut figures = (0, 0, 0);
    for rep in 1..=reps {
        let local = work.fresh("packs-local")?;
        let run = work.mailvault_run(&work.mailvault, &input, &local)?;
        run.expect_archived(BIG_MESSAGES, 0)?;
        times[0].push(run.measured);
        let url = format!("s3://{}/packs-{rep}", garage.bucket());
        let run = work.mailvault_run_on(&work.mailvault, &input, url.as_ref(), &s3_args)?;
        run.expect_archived(BIG_MESSAGES, 0)?;
        times[1].push(run.measured);
        let sealed = work.fresh("packs-sealed")?;
        let run = work.mailvault_run_on(&work.mailvault, &input, sealed.as_os_str(), &key_args)?;
        run.expect_archived(BIG_MESSAGES, 0)?;
        times[2].push(run.measured);
        figures = store_figures(&local)?;
        let run = work.mailvault_run(&work.mailvault, &input, &local)?;
        run.expect_archived(0, BIG_MESSAGES)?;
        times[3].push(run.measured);
        let out = work.fresh("packs-export")?;
        let args: [&OsStr; 7] = [
            "export".as_ref(),
            "--store".as_ref(),
            local.as_os_str(),
            "--user".as_ref(),
            BIG_USER.as_ref(),
            "--out".as_ref(),
            out.as_os_str(),
        ];
        times[4].push(work.measure("export", &work.mailvault, &args, Stdio::null())?);
        expect_maildir_files(&out, BIG_MESSAGES)?;
        progress(&format!(
            "packs {rep}/{reps}: local {}, S3 {}, encrypted {}, nothing new {}, export {}",
            secs(times[0][rep - 1].wall),
            secs(times[1][rep - 1].wall),
            secs(times[2][rep - 1].wall),
            secs(times[3][rep - 1].wall),
            secs(times[4][rep - 1].wall)
        ));
    }
    let [local, s3, sealed, noop, export] = times;
    Ok(PackFigures {
        rows: vec![
            Row::new("first archive, local directory", local),
            Row::new("first archive, S3", s3),
            Row::new("first archive, local, encrypted", sealed),
            Row::new("re-run with nothing new, local", noop),
            Row::new("export of the local archive", export),
        ],
        objects: figures.0,
        stored_bytes: figures.1,
        pack_bytes: figures.2,
    })
}

/// Objects, bytes and pack bytes of a local archive (its tmp/ aside).
fn store_figures(store: &Path) -> io::Result<(u64, u64, u64)> {
    let (mut objects, mut bytes, mut packs) = (0, 0, 0);
    let mut stack = vec![store.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir)? {
            let entry = entry?;
            let path = entry.path();
            if entry.file_type()?.is_dir() {
                if path != store.join("tmp") {
                    stack.push(path);
                }
                continue;
            }
            let len = entry.metadata()?.len();
            objects += 1;
            bytes += len;
            if path.starts_with(store.join("packs/data")) {
                packs += len;
            }
        }
    }
    Ok((objects, bytes, packs))
}

/// Fails unless `dir` holds `expected` files below it (an export of every message).
fn expect_maildir_files(dir: &Path, expected: u64) -> io::Result<()> {
    let (files, _, _) = store_figures(dir)?;
    if files == expected {
        return Ok(());
    }
    Err(io::Error::other(format!(
        "{}: {files} files, expected {expected}",
        dir.display()
    )))
}

/// Section 6: the deletion pass. A mailbox archived by an untimed run, then a timed run
/// with `deletion.mode: AfterArchiving` that finds nothing new and deletes every message:
/// listing, identity checks, reading every stored copy back and re-hashing it, flagging and
/// expunging. The mailbox is seeded again before each contender's turn.
fn deletion(work: &Work, dovecot: &Dovecot, reps: usize, report: &mut Report) -> io::Result<()> {
    let keep = work.mailvault_input(dovecot, &[DELETE_USER], 4, "")?;
    let delete = work.mailvault_input(
        dovecot,
        &[DELETE_USER],
        4,
        "  deletion:\n    mode: AfterArchiving\n    keepUnread: false\n",
    )?;
    let messages: Vec<(Vec<u8>, i64)> = mail::mailbox(11, DELETE_USER, DELETE_MESSAGES)
        .into_iter()
        .map(|m| (m, DATE))
        .collect();
    let contenders: Vec<&Path> = std::iter::once(work.mailvault.as_path())
        .chain(work.baseline.as_deref())
        .collect();
    let mut times = vec![Vec::new(); contenders.len()];
    for rep in 1..=reps {
        for (i, binary) in contenders.iter().enumerate() {
            dovecot.deliver_many(DELETE_USER, "INBOX", &messages)?;
            let store = work.fresh("store")?;
            work.mailvault_run(binary, &keep, &store)?
                .expect_archived(DELETE_MESSAGES, 0)?;
            let run = work.mailvault_run(binary, &delete, &store)?;
            run.expect_archived(0, DELETE_MESSAGES)?;
            if run.protocol["totals"]["deleted"] != DELETE_MESSAGES {
                return Err(io::Error::other(format!(
                    "the deletion run deleted {} messages, expected {DELETE_MESSAGES}",
                    run.protocol["totals"]["deleted"]
                )));
            }
            times[i].push(run.measured);
        }
        progress(&format!(
            "deletion {rep}/{reps}: {}",
            times
                .iter()
                .map(|t| secs(t[rep - 1].wall))
                .collect::<Vec<_>>()
                .join(", baseline ")
        ));
    }
    let mut times = times.into_iter();
    report.deletion = vec![Row::new("mailvault run", times.next().unwrap_or_default())];
    if let Some(old) = times.next() {
        report
            .deletion
            .push(Row::new("baseline mailvault run", old));
    }
    Ok(())
}

/// Where the runs write, the binaries under test, and the server's CPU meter.
struct Work {
    mailvault: PathBuf,
    /// Another build, measured in turns with `mailvault` (`MAILVAULT_BENCH_BASELINE`).
    baseline: Option<PathBuf>,
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

    /// A profile for `users` on the plain listener, with `extra_spec` (indented lines of
    /// the profile's spec), as a YAML file.
    fn mailvault_input(
        &self,
        dovecot: &Dovecot,
        users: &[&str],
        max_parallel: usize,
        extra_spec: &str,
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
{extra_spec}---
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
        let path = self.fresh("input")?.join("input.yaml");
        fs::write(&path, yaml)?;
        Ok(path)
    }

    fn mailvault_run(&self, binary: &Path, input: &Path, store: &Path) -> io::Result<MailvaultRun> {
        self.mailvault_run_on(binary, input, store.as_os_str(), &[])
    }

    /// `mailvault run` of `binary` into the store `store` (a directory or `s3://...`), with
    /// `extra` arguments (how to reach S3).
    fn mailvault_run_on(
        &self,
        binary: &Path,
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
        let measured = self.measure("mailvault", binary, &args, fs::File::create(&out)?.into())?;
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
fn check_space(dir: &Path, reps: usize, seeded: &Seeded, baseline: bool) -> io::Result<()> {
    // Each contender's copy of the mail, plus a tenth for file-system overhead and indexes.
    let big_copies = if baseline { 4 } else { 3 };
    let per_rep = big_copies * seeded.big_bytes + 3 * seeded.many_bytes + 2 * seeded.memory_bytes;
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
    deletion: Vec<Row>,
    packs: Option<PackFigures>,
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

        if !self.first.is_empty() {
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
        }

        if !self.rerun.is_empty() {
            w("\n2. Re-run with nothing new".into());
            w(header(&format!(" {:>11}", "/ this run")));
            let this = self.rerun[0].median();
            for row in &self.rerun {
                w(format!("{} {:>11.2}", timing(row), row.median() / this));
            }
        }

        if !self.scaling.is_empty() {
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
        }

        if !self.memory.is_empty() {
            w(format!(
                "\n4. Peak memory: one {} MiB message among {SMALL_MESSAGES} small ones, {:.1} MB",
                LARGE_MESSAGE >> 20,
                mb(seeded.memory_bytes)
            ));
            w(header(&format!(" {:>13}", "peak RSS")));
            for row in &self.memory {
                w(format!("{} {:>9.1} MiB", timing(row), row.rss_mib()));
            }
        }

        if !self.s3.is_empty() {
            w("\n5. S3 store".into());
            for row in &self.s3 {
                w(timing(row));
            }
        }

        if !self.deletion.is_empty() {
            w(format!(
                "\n6. Deletion run: {DELETE_MESSAGES} archived messages checked, read back, \
                 deleted"
            ));
            w(header(&format!(" {:>8} {:>11}", "msg/s", "/ this run")));
            let this = self.deletion[0].median();
            for row in &self.deletion {
                let t = row.median();
                w(format!(
                    "{} {:>8.0} {:>11.2}",
                    timing(row),
                    DELETE_MESSAGES as f64 / t,
                    t / this
                ));
            }
        }

        if let Some(packs) = &self.packs {
            w(format!(
                "\n7. Pack store: {BIG_MESSAGES} messages, {:.1} MB",
                mb(seeded.big_bytes)
            ));
            w(header(&format!(" {:>8} {:>9}", "MB/s", "/ local")));
            let local = packs.rows[0].median();
            for row in &packs.rows {
                let t = row.median();
                w(format!(
                    "{} {:>8.1} {:>9.2}",
                    timing(row),
                    mb(seeded.big_bytes) / t,
                    t / local
                ));
            }
            w(format!(
                "   objects per 1,000 messages: {:.1} ({} objects); stored / raw bytes: {:.3} \
                 (packs alone {:.3})",
                packs.objects as f64 * 1000.0 / BIG_MESSAGES as f64,
                packs.objects,
                packs.stored_bytes as f64 / seeded.big_bytes as f64,
                packs.pack_bytes as f64 / seeded.big_bytes as f64
            ));
        }

        w("\nTargets".into());
        let check = |ok: bool| if ok { "met" } else { "NOT met" };
        if !self.first.is_empty() {
            let (mv, mbsync, bare) = (
                self.first[0].median(),
                self.first[1].median(),
                self.first[3].median(),
            );
            w(format!(
                "   (1) first archive ≤ 0.5 × mbsync and ≤ 3 × bare: {:.2} × mbsync, {:.2} × bare: {}",
                mv / mbsync,
                mv / bare,
                check(mv <= 0.5 * mbsync && mv <= 3.0 * bare)
            ));
        }
        if !self.rerun.is_empty() {
            let (noop, noop_mbsync, start) = (
                self.rerun[0].median(),
                self.rerun[1].median(),
                self.rerun[2].median(),
            );
            w(format!(
                "   (2) re-run ≤ mbsync's + process start: {noop:.3} s ≤ {noop_mbsync:.3} + {start:.3} s: {}",
                check(noop <= noop_mbsync + start)
            ));
        }
        if !self.scaling.is_empty() {
            let (one, four) = (self.scaling[0].median(), self.scaling[1].median());
            w(format!(
                "   (3) maxParallelJobs 4 ≥ 1.6 × faster than 1: {:.2} ×: {}",
                one / four,
                check(one / four >= 1.6)
            ));
        }
        if let Some(packs) = &self.packs {
            let t = |i: usize| packs.rows[i].median();
            let per_thousand = packs.objects as f64 * 1000.0 / BIG_MESSAGES as f64;
            w(format!(
                "   (14) S3 ≤ 1.5 × local: {:.2} ×: {}; encrypted ≤ 1.2 × plain: {:.2} ×: {}; \
                 ≤ 20 objects per 1,000 messages: {per_thousand:.1}: {}",
                t(1) / t(0),
                check(t(1) <= 1.5 * t(0)),
                t(2) / t(0),
                check(t(2) <= 1.2 * t(0)),
                check(per_thousand <= 20.0)
            ));
        }
        if !self.memory.is_empty() {
            let limit = 2.0 * (LARGE_MESSAGE >> 20) as f64 + 64.0;
            let rss = self.memory[0].rss_mib();
            w(format!(
                "   (4) peak RSS < 2 × largest message + 64 MiB: {rss:.1} < {limit:.0} MiB: {}",
                check(rss < limit)
            ));
        }
        out
    }
}
