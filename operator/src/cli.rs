//! The `mailvault` command line: subcommands, output formats and exit codes.
//!
//! Exit codes: 0 everything succeeded; 1 something failed at run time (a mailbox, the
//! store, damaged objects); 2 the input is invalid, and then nothing was touched.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Serialize;

use crate::export::{self, Format};
use crate::protocol::{RunProtocol, RunResult};
use crate::resources::{
    self, namespace_of, ArchiveProfile, Bundle, Located, MailboxSet, StoreSpec, SyncRecord,
};
use crate::store::{local::LocalStore, Archive, StoreError};
use crate::{engine, plan, sources};

/// The archive directory when neither `--store` nor the profile names one.
pub const DEFAULT_STORE: &str = "mailvault-archive";

#[derive(Parser, Debug)]
#[command(
    name = "mailvault",
    version,
    about = "Archives many IMAP mailboxes at once, declaratively"
)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "text",
        env = "MAILVAULT_LOG_FORMAT"
    )]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run every ArchiveProfile in the given YAML (or the one named) once, now.
    Run(RunArgs),
    /// Write every archived message of a user to a directory.
    Export(ExportArgs),
    /// Re-hash every stored message and check every index entry.
    Verify(VerifyArgs),
    /// List the archive's users, their mailboxes and folders, with message counts.
    List(ListArgs),
    /// List the mailboxes MailboxSets resolve to (reading their directory, if any), without
    /// passwords.
    ///
    /// Resolves exactly as `run` does. Exit code 2 if any set is invalid (its listing still
    /// shows the errors, the CSV file's with line numbers), else 1 if a directory could not be
    /// read or its sync was refused.
    Mailboxes(MailboxesArgs),
    /// Print both CustomResourceDefinitions (YAML), generated from the operator's types.
    Crds,
    /// Archive one shard of an operator run (what the operator's Jobs run).
    ///
    /// Exit codes: 0 every mailbox succeeded; 1 some failed and a retry may help; 2 the
    /// plan is invalid; 3 every failed mailbox was rejected at login.
    Worker(crate::worker::WorkerArgs),
    /// Run the Kubernetes operator (KUBECONFIG, ~/.kube/config or in-cluster credentials).
    Operator(crate::controller::run::OperatorArgs),
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// A YAML file (multi-document) or a directory of them, as for `kubectl apply -f`.
    #[arg(short = 'f', long = "filename", required = true)]
    pub files: Vec<PathBuf>,
    /// Only this profile (`name` or `namespace/name`).
    #[arg(long)]
    pub profile: Option<String>,
    /// Archive into this directory instead of the profile's store.
    #[arg(long)]
    pub store: Option<String>,
    #[arg(long, short = 'o', value_enum, default_value = "text")]
    pub output: Output,
}

#[derive(Args, Debug)]
pub struct MailboxesArgs {
    /// A YAML file (multi-document) or a directory of them, as for `kubectl apply -f`.
    #[arg(short = 'f', long = "filename", required = true)]
    pub files: Vec<PathBuf>,
    /// Only this MailboxSet (`name` or `namespace/name`); without it, every set in the files.
    #[arg(long)]
    pub mailbox_set: Option<String>,
    /// Check a directory sync against the last one recorded in this archive, as
    /// `mailvault run` would (maxRemovedPercent); the archive is only read.
    #[arg(long)]
    pub store: Option<String>,
    /// `json` prints one object per set; an array of them when several sets are listed.
    #[arg(long, short = 'o', value_enum, default_value = "text")]
    pub output: Output,
}

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// The archive directory.
    #[arg(long, default_value = DEFAULT_STORE)]
    pub store: String,
    /// The archive user to export.
    #[arg(long)]
    pub user: String,
    /// Output directory; must be new or empty.
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, value_enum, default_value = "eml")]
    pub format: Format,
}

#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// The archive directory.
    #[arg(long, default_value = DEFAULT_STORE)]
    pub store: String,
}

#[derive(Args, Debug)]
pub struct ListArgs {
    /// The archive directory.
    #[arg(long, default_value = DEFAULT_STORE)]
    pub store: String,
    /// Only this archive user.
    #[arg(long)]
    pub user: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Text,
    Json,
}

/// Runs a parsed command line.
pub async fn main(cli: Cli) -> ExitCode {
    init_logging(cli.log_format);
    let code = match cli.command {
        Command::Run(args) => run(args).await,
        Command::Export(args) => export_cmd(args).await,
        Command::Verify(args) => verify(args).await,
        Command::List(args) => list(args).await,
        Command::Mailboxes(args) => mailboxes(args).await,
        Command::Worker(args) => crate::worker::main(args).await,
        Command::Operator(args) => crate::controller::run::main(args).await,
        Command::Crds => {
            print!("{}", resources::crds_yaml());
            0
        }
    };
    ExitCode::from(code)
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("MAILVAULT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// An error message and the exit code it ends with.
struct Failure(u8, String);

fn invalid(message: impl Into<String>) -> Failure {
    Failure(2, message.into())
}

async fn run(args: RunArgs) -> u8 {
    match run_inner(args).await {
        Ok(code) => code,
        Err(Failure(code, message)) => {
            eprintln!("error: {message}");
            code
        }
    }
}

/// A profile ready to run: everything checked before any connection is made.
struct Prepared<'a> {
    profile: &'a Located<ArchiveProfile>,
    set: &'a Located<MailboxSet>,
    store: String,
    mailboxes: Vec<sources::Mailbox>,
    directory_sync: Option<SyncRecord>,
}

async fn run_inner(args: RunArgs) -> Result<u8, Failure> {
    let bundle = resources::load_paths(&args.files).map_err(|e| invalid(e.to_string()))?;
    let profiles = chosen_profiles(&bundle, args.profile.as_deref())?;
    // Validate and resolve everything first: invalid input touches nothing.
    let mut errors = Vec::new();
    let mut code = 0;
    let mut prepared = Vec::new();
    for profile in profiles {
        let field_errors = resources::validate_profile(&bundle, profile);
        if !field_errors.is_empty() {
            errors.extend(field_errors.iter().map(ToString::to_string));
            code = 2;
            continue;
        }
        let namespace = namespace_of(&profile.object.metadata);
        let set = bundle
            .mailbox_set(namespace, &profile.object.spec.mailbox_set_ref.name)
            .expect("validated");
        let store = args
            .store
            .clone()
            .unwrap_or_else(|| profile_store(&profile.object));
        let previous = match previous_sync(&store, set).await {
            Ok(previous) => previous,
            Err(Failure(c, message)) => {
                errors.push(message);
                code = code.max(c);
                continue;
            }
        };
        match sources::resolve(&bundle, set, previous.as_ref()).await {
            Ok(resolved) => prepared.push(Prepared {
                profile,
                set,
                store,
                mailboxes: resolved.mailboxes,
                directory_sync: resolved.directory_sync,
            }),
            Err(e) => {
                code = code.max(if e.is_invalid_input() { 2 } else { 1 });
                errors.push(e.to_string());
            }
        }
    }
    if !errors.is_empty() {
        errors.dedup();
        return Err(Failure(code, errors.join("\n")));
    }
    let mut protocols = Vec::new();
    for prepared in prepared {
        let Prepared {
            profile,
            set,
            store,
            mailboxes,
            directory_sync,
        } = prepared;
        let archive = open_store(&store).map_err(|e| Failure(1, e.to_string()))?;
        if let Some(record) = directory_sync {
            archive
                .save_directory_sync(
                    namespace_of(&set.object.metadata),
                    set.object.metadata.name.as_deref().unwrap_or(""),
                    &record,
                )
                .await
                .map_err(|e| Failure(1, format!("saving the directory sync: {e}")))?;
        }
        let name = profile.object.metadata.name.clone().unwrap_or_default();
        let run_id = plan::local_run_id(&name, chrono::Utc::now());
        let settings = Arc::new(plan::run_settings(&bundle, &profile.object, run_id));
        let protocol = engine::run(settings, archive.clone(), mailboxes).await;
        archive
            .save_protocol(
                &protocol.namespace,
                &protocol.profile,
                &protocol.run_id,
                &protocol,
            )
            .await
            .map_err(|e| Failure(1, format!("saving the run protocol: {e}")))?;
        protocols.push(protocol);
    }
    print_protocols(&protocols, args.output);
    let all_ok = protocols.iter().all(|p| p.result == RunResult::Succeeded);
    Ok(if all_ok { 0 } else { 1 })
}

/// The last directory sync of `set` recorded in the archive at `location`, for sets that
/// have a directory. A location that is no archive yet has none, and is not created here
/// (invalid input touches nothing).
async fn previous_sync(
    location: &str,
    set: &Located<MailboxSet>,
) -> Result<Option<SyncRecord>, Failure> {
    let has_directory = set
        .object
        .spec
        .master_password
        .as_ref()
        .is_some_and(|m| m.directory.is_some());
    if !has_directory || !is_archive(location) {
        return Ok(None);
    }
    let archive = open_store(location).map_err(|e| Failure(1, e.to_string()))?;
    load_sync(&archive, set).await
}

async fn load_sync(
    archive: &Archive,
    set: &Located<MailboxSet>,
) -> Result<Option<SyncRecord>, Failure> {
    archive
        .load_directory_sync(
            namespace_of(&set.object.metadata),
            set.object.metadata.name.as_deref().unwrap_or(""),
        )
        .await
        .map_err(|e| Failure(1, format!("reading the last directory sync: {e}")))
}

fn chosen_profiles<'a>(
    bundle: &'a Bundle,
    wanted: Option<&str>,
) -> Result<Vec<&'a Located<ArchiveProfile>>, Failure> {
    let full_name = |p: &Located<ArchiveProfile>| {
        format!(
            "{}/{}",
            namespace_of(&p.object.metadata),
            p.object.metadata.name.as_deref().unwrap_or("")
        )
    };
    if bundle.profiles.is_empty() {
        return Err(invalid("no ArchiveProfile in the given files"));
    }
    let Some(wanted) = wanted else {
        return Ok(bundle.profiles.iter().collect());
    };
    let chosen: Vec<_> = bundle
        .profiles
        .iter()
        .filter(|p| full_name(p) == wanted || p.object.metadata.name.as_deref() == Some(wanted))
        .collect();
    if chosen.is_empty() {
        let known: Vec<_> = bundle.profiles.iter().map(full_name).collect();
        return Err(invalid(format!(
            "no ArchiveProfile {wanted:?} in the given files (found: {})",
            known.join(", ")
        )));
    }
    Ok(chosen)
}

fn profile_store(profile: &ArchiveProfile) -> String {
    profile
        .spec
        .store
        .as_ref()
        .and_then(|s| s.local.as_ref())
        .and_then(|l| l.path.clone())
        .unwrap_or_else(|| DEFAULT_STORE.to_string())
}

/// Opens the archive a `--store` argument or profile names.
pub fn open_store(location: &str) -> Result<Archive, StoreError> {
    Ok(Archive::new(Arc::new(LocalStore::open(Path::new(
        location,
    ))?)))
}

/// Opens the archive a profile's `spec.store` names (a local directory, by default
/// [`DEFAULT_STORE`]). The operator's worker opens its store here, from the store spec in
/// its run plan; each store backend adds its case.
pub fn open_store_spec(spec: Option<&StoreSpec>) -> Result<Archive, StoreError> {
    let path = spec
        .and_then(|s| s.local.as_ref())
        .and_then(|l| l.path.as_deref())
        .unwrap_or(DEFAULT_STORE);
    open_store(path)
}

fn print_protocols(protocols: &[RunProtocol], output: Output) {
    match output {
        Output::Json => {
            let json = match protocols {
                [one] => serde_json::to_string_pretty(one),
                many => serde_json::to_string_pretty(many),
            };
            println!("{}", json.expect("protocols serialize"));
        }
        Output::Text => {
            for p in protocols {
                println!("{}", p.to_text());
            }
        }
    }
}

async fn export_cmd(args: ExportArgs) -> u8 {
    let result = async {
        let archive = open_existing(&args.store)?;
        export::export(&archive, &args.user, &args.out, args.format)
            .await
            .map_err(|e| match e {
                export::ExportError::NoSuchUser { .. } | export::ExportError::NotEmpty(_) => {
                    invalid(e.to_string())
                }
                other => Failure(1, other.to_string()),
            })
    }
    .await;
    match result {
        Ok(summary) => {
            println!(
                "exported {} messages in {} folders to {}",
                summary.messages,
                summary.folders,
                args.out.display()
            );
            0
        }
        Err(Failure(code, message)) => {
            eprintln!("error: {message}");
            code
        }
    }
}

/// Opens a store that must already exist (reading commands never create one).
fn open_existing(location: &str) -> Result<Archive, Failure> {
    if !is_archive(location) {
        return Err(invalid(format!("{location} is not a mailvault archive")));
    }
    open_store(location).map_err(|e| Failure(1, e.to_string()))
}

/// Whether `location` holds an archive: anything a run writes.
fn is_archive(location: &str) -> bool {
    ["messages", "users", "directory"]
        .iter()
        .any(|dir| Path::new(location).join(dir).is_dir())
}

async fn verify(args: VerifyArgs) -> u8 {
    let archive = match open_existing(&args.store) {
        Ok(a) => a,
        Err(Failure(code, message)) => {
            eprintln!("error: {message}");
            return code;
        }
    };
    match archive.verify().await {
        Ok(report) => {
            for line in &report.damaged {
                println!("DAMAGED {line}");
            }
            println!(
                "{} messages, {} index entries checked, {} problems",
                report.messages,
                report.entries,
                report.damaged.len()
            );
            u8::from(!report.damaged.is_empty())
        }
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}

async fn list(args: ListArgs) -> u8 {
    let result = async {
        let archive = open_existing(&args.store)?;
        let failed = |e: StoreError| Failure(1, e.to_string());
        let mut out = String::new();
        for user in archive.users().await.map_err(failed)? {
            if args
                .user
                .as_ref()
                .is_some_and(|u| !u.eq_ignore_ascii_case(&user.name))
            {
                continue;
            }
            out.push_str(&format!("{}\n", user.name));
            for (label, folder) in archive.user_folders(&user.name).await.map_err(failed)? {
                let entries = archive.folder_entries(&folder).await.map_err(failed)?;
                let bytes: u64 = entries.iter().map(|e| e.size).sum();
                out.push_str(&format!(
                    "  {label}/{}  {} messages, {bytes} bytes\n",
                    folder.folder,
                    entries.len()
                ));
            }
        }
        Ok(out)
    }
    .await;
    match result {
        Ok(text) => {
            print!("{text}");
            0
        }
        Err(Failure(code, message)) => {
            eprintln!("error: {message}");
            code
        }
    }
}

async fn mailboxes(args: MailboxesArgs) -> u8 {
    match mailboxes_inner(args).await {
        Ok(code) => code,
        Err(Failure(code, message)) => {
            eprintln!("error: {message}");
            code
        }
    }
}

async fn mailboxes_inner(args: MailboxesArgs) -> Result<u8, Failure> {
    let bundle = resources::load_paths(&args.files).map_err(|e| invalid(e.to_string()))?;
    let sets = chosen_sets(&bundle, args.mailbox_set.as_deref())?;
    let archive = match &args.store {
        Some(location) => Some(open_existing(location)?),
        None => None,
    };
    let mut listings = Vec::new();
    let mut code = 0;
    for set in sets {
        let (listing, set_code) = list_set(&bundle, set, archive.as_ref()).await;
        code = code.max(set_code);
        listings.push(listing);
    }
    match args.output {
        Output::Json => {
            let json = match listings.as_slice() {
                [one] => serde_json::to_string_pretty(one),
                many => serde_json::to_string_pretty(many),
            };
            println!("{}", json.expect("listings serialize"));
        }
        Output::Text => {
            for listing in &listings {
                print!("{}", listing.to_text());
            }
        }
    }
    Ok(code)
}

fn chosen_sets<'a>(
    bundle: &'a Bundle,
    wanted: Option<&str>,
) -> Result<Vec<&'a Located<MailboxSet>>, Failure> {
    if bundle.mailbox_sets.is_empty() {
        return Err(invalid("no MailboxSet in the given files"));
    }
    let Some(wanted) = wanted else {
        return Ok(bundle.mailbox_sets.iter().collect());
    };
    let chosen: Vec<_> = bundle
        .mailbox_sets
        .iter()
        .filter(|s| full_name(s) == wanted || s.object.metadata.name.as_deref() == Some(wanted))
        .collect();
    if chosen.is_empty() {
        let known: Vec<_> = bundle.mailbox_sets.iter().map(full_name).collect();
        return Err(invalid(format!(
            "no MailboxSet {wanted:?} in the given files (found: {})",
            known.join(", ")
        )));
    }
    Ok(chosen)
}

fn full_name(set: &Located<MailboxSet>) -> String {
    format!(
        "{}/{}",
        namespace_of(&set.object.metadata),
        set.object.metadata.name.as_deref().unwrap_or("")
    )
}

/// What `mailvault mailboxes` shows of one set: never a password.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Listing {
    /// `namespace/name`
    mailbox_set: String,
    /// `None` when the set names neither or both modes.
    mode: Option<sources::Mode>,
    mailboxes: Vec<ListedMailbox>,
    excluded: Vec<sources::Excluded>,
    errors: Vec<ListedError>,
    directory_sync: Option<SyncRecord>,
    /// Whether `directory_sync` was compared with a recorded one, so that its `added` and
    /// `removed` mean something.
    #[serde(skip)]
    compared: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ListedMailbox {
    login: String,
    authorization_identity: Option<String>,
    email: Option<String>,
    user: String,
}

#[derive(Serialize)]
struct ListedError {
    /// Line of the CSV file, for errors in it.
    line: Option<usize>,
    /// Field of the MailboxSet, for validation errors.
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<String>,
    message: String,
}

impl ListedError {
    fn message(message: String) -> Self {
        ListedError {
            line: None,
            field: None,
            message,
        }
    }
}

/// Validates and resolves one set the way `mailvault run` does; returns its listing and
/// exit code.
async fn list_set(
    bundle: &Bundle,
    set: &Located<MailboxSet>,
    archive: Option<&Archive>,
) -> (Listing, u8) {
    let spec = &set.object.spec;
    let mut listing = Listing {
        mailbox_set: full_name(set),
        mode: match (&spec.master_password, &spec.csv) {
            (Some(_), None) => Some(sources::Mode::MasterPassword),
            (None, Some(_)) => Some(sources::Mode::Csv),
            _ => None,
        },
        mailboxes: Vec::new(),
        excluded: Vec::new(),
        errors: Vec::new(),
        directory_sync: None,
        compared: false,
    };
    let field_errors = resources::validate_mailbox_set(bundle, set);
    if !field_errors.is_empty() {
        listing.errors = field_errors
            .into_iter()
            .map(|e| ListedError {
                line: None,
                field: Some(e.field),
                message: e.message,
            })
            .collect();
        return (listing, 2);
    }
    let has_directory = spec
        .master_password
        .as_ref()
        .is_some_and(|m| m.directory.is_some());
    let previous = match archive {
        Some(archive) if has_directory => match load_sync(archive, set).await {
            Ok(previous) => previous,
            Err(Failure(code, message)) => {
                listing.errors.push(ListedError::message(message));
                return (listing, code);
            }
        },
        _ => None,
    };
    match sources::resolve(bundle, set, previous.as_ref()).await {
        Ok(resolved) => {
            listing.mode = Some(resolved.mode);
            listing.mailboxes = resolved
                .mailboxes
                .into_iter()
                .map(|m| ListedMailbox {
                    login: m.login,
                    authorization_identity: m.authorization_identity,
                    email: m.email,
                    user: m.user,
                })
                .collect();
            listing.excluded = resolved.excluded;
            listing.directory_sync = resolved.directory_sync;
            listing.compared = previous.is_some();
            (listing, 0)
        }
        Err(sources::SourceError::Csv { errors, .. }) => {
            listing.errors = errors
                .into_iter()
                .map(|e| ListedError {
                    line: e.line,
                    field: None,
                    message: e.message,
                })
                .collect();
            (listing, 2)
        }
        Err(e) => {
            let code = if e.is_invalid_input() { 2 } else { 1 };
            listing.errors.push(ListedError::message(e.to_string()));
            (listing, code)
        }
    }
}

impl Listing {
    fn to_text(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let mode = match self.mode {
            Some(sources::Mode::MasterPassword) => " (masterPassword)",
            Some(sources::Mode::Csv) => " (csv)",
            None => "",
        };
        let _ = writeln!(out, "MailboxSet {}{mode}", self.mailbox_set);
        if self.errors.is_empty() {
            let _ = writeln!(out, "  mailboxes: {}", self.mailboxes.len());
        }
        for m in &self.mailboxes {
            let _ = write!(out, "    {}: login {}", m.user, m.login);
            if let Some(identity) = &m.authorization_identity {
                let _ = write!(out, " as {identity}");
            } else if let Some(email) = &m.email {
                let _ = write!(out, ", {email}");
            }
            out.push('\n');
        }
        if !self.excluded.is_empty() {
            let _ = writeln!(out, "  excluded: {}", self.excluded.len());
            for e in &self.excluded {
                let _ = writeln!(out, "    {}: {}", e.name, e.reason);
            }
        }
        if let Some(sync) = &self.directory_sync {
            let _ = write!(
                out,
                "  directory: {} users found, {} without email, {} excluded by selection",
                sync.users_found, sync.without_email, sync.excluded_by_selection,
            );
            if self.compared {
                let _ = write!(
                    out,
                    "; {} added, {} removed since the recorded sync",
                    sync.added, sync.removed
                );
            }
            out.push('\n');
        }
        if !self.errors.is_empty() {
            let _ = writeln!(out, "  errors: {}", self.errors.len());
            for e in &self.errors {
                let _ = match (&e.line, &e.field) {
                    (Some(line), _) => writeln!(out, "    line {line}: {}", e.message),
                    (None, Some(field)) => writeln!(out, "    {field}: {}", e.message),
                    (None, None) => writeln!(out, "    {}", e.message),
                };
            }
        }
        out
    }
}
