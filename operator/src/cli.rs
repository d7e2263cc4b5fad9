//! The `mailvault` command line: subcommands, output formats and exit codes.
//!
//! Exit codes: 0 everything succeeded; 1 something failed at run time (a mailbox, the
//! store, damaged objects); 2 the input is invalid, and then nothing was touched.

use std::io::IsTerminal;
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
use crate::store::local::LocalStore;
use crate::store::s3::{S3Config, S3Store};
use crate::store::{Archive, ObjectStore, StoreError, StoreLocation};
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
    /// Archive into this directory or `s3://bucket/prefix` instead of the profile's store.
    #[arg(long)]
    pub store: Option<String>,
    #[command(flatten)]
    pub s3: S3Args,
    #[arg(long, short = 'o', value_enum, default_value = "text")]
    pub output: Output,
    /// Archive as usual, but only count what the deletion rules would delete.
    #[arg(long)]
    pub dry_run_deletion: bool,
}

/// How to reach an `s3://` store. Credentials come from the AWS default chain
/// (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_PROFILE`, ...),
/// never from the command line, where other users could read them.
#[derive(Args, Debug, Default)]
pub struct S3Args {
    /// URL of an S3-compatible server (default: AWS S3, or `AWS_ENDPOINT_URL`).
    #[arg(long)]
    pub s3_endpoint: Option<String>,
    /// Region (default: `us-east-1` with --s3-endpoint, else `AWS_REGION`, else `us-east-1`).
    #[arg(long)]
    pub s3_region: Option<String>,
    /// Address the bucket in the URL path, as most S3-compatible servers need.
    #[arg(long)]
    pub s3_path_style: bool,
}

impl S3Args {
    fn any(&self) -> bool {
        self.s3_endpoint.is_some() || self.s3_region.is_some() || self.s3_path_style
    }
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
    #[command(flatten)]
    pub s3: S3Args,
    /// `json` prints one object per set; an array of them when several sets are listed.
    #[arg(long, short = 'o', value_enum, default_value = "text")]
    pub output: Output,
    /// Archive as usual, but only count what the deletion rules would delete.
    #[arg(long)]
    pub dry_run_deletion: bool,
}

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// The archive directory, or `s3://bucket/prefix`.
    #[arg(long, default_value = DEFAULT_STORE)]
    pub store: String,
    #[command(flatten)]
    pub s3: S3Args,
    /// The archive user to export.
    #[arg(long)]
    pub user: String,
    /// Output directory, new or empty; `-` streams to standard output instead: a tar of
    /// the `.eml` files, or with `--format mbox` one mbox of every folder.
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, value_enum, default_value = "eml")]
    pub format: Format,
    /// Only this folder, levels separated by `/` (as `mailvault list` shows them).
    #[arg(long)]
    pub folder: Option<String>,
    /// With `--out -`: write nothing before standard input ends. `kubectl run -i` attaches
    /// to a pod only after its program started, and loses what came before; with `<
    /// /dev/null` on kubectl's side, the input ends once kubectl is attached.
    #[arg(long)]
    pub wait_for_attach: bool,
}

#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// The archive directory, or `s3://bucket/prefix`.
    #[arg(long, default_value = DEFAULT_STORE)]
    pub store: String,
    #[command(flatten)]
    pub s3: S3Args,
}

#[derive(Args, Debug)]
pub struct ListArgs {
    /// The archive directory, or `s3://bucket/prefix`.
    #[arg(long, default_value = DEFAULT_STORE)]
    pub store: String,
    #[command(flatten)]
    pub s3: S3Args,
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

fn init_logging(format: LogFormat) {
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
    store: StoreLocation,
    mailboxes: Vec<sources::Mailbox>,
    directory_sync: Option<SyncRecord>,
}

async fn run_inner(args: RunArgs) -> Result<u8, Failure> {
    let bundle = resources::load_paths(&args.files).map_err(|e| invalid(e.to_string()))?;
    let profiles = chosen(&bundle.profiles, args.profile.as_deref())?;
    let store_override = match &args.store {
        Some(store) => Some(parse_store(store, &args.s3)?),
        None if args.s3.any() => {
            return Err(invalid(
                "--s3-endpoint, --s3-region and --s3-path-style need an s3:// --store",
            ))
        }
        None => None,
    };
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
        let store = store_override
            .clone()
            .or_else(|| plan::store_location(&bundle, &profile.object))
            .unwrap_or_else(|| StoreLocation::Local(DEFAULT_STORE.into()));
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
    let mut unsaved = false;
    for prepared in prepared {
        let Prepared {
            profile,
            set,
            store,
            mailboxes,
            directory_sync,
        } = prepared;
        let archive = open_store(&store)
            .await
            .map_err(|e| Failure(1, e.to_string()))?;
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
        let mut settings = plan::run_settings(&bundle, &profile.object, run_id);
        settings.dry_run_deletion = args.dry_run_deletion;
        settings.warnings.extend(plan::store_warnings(&store));
        settings
            .warnings
            .extend(resources::directory_warnings(&set.object));
        let settings = Arc::new(settings);
        let mut protocol = engine::run(settings, archive.clone(), mailboxes).await;
        let saved = archive
            .save_protocol(
                &protocol.namespace,
                &protocol.profile,
                &protocol.run_id,
                &protocol,
            )
            .await;
        if let Err(e) = saved {
            // The protocol still reaches the user on stdout, and the run counts as failed.
            protocol.warnings.push(format!(
                "the run protocol could not be saved in the store: {e}"
            ));
            unsaved = true;
        }
        protocols.push(protocol);
    }
    print_protocols(&protocols, args.output);
    let all_ok = !unsaved && protocols.iter().all(|p| p.result == RunResult::Succeeded);
    Ok(if all_ok { 0 } else { 1 })
}

/// The last directory sync of `set` recorded in the archive at `location`, for sets that
/// have a directory. A location that is no archive yet has none, and is not created here
/// (invalid input touches nothing).
async fn previous_sync(
    location: &StoreLocation,
    set: &Located<MailboxSet>,
) -> Result<Option<SyncRecord>, Failure> {
    let has_directory = set
        .object
        .spec
        .master_password
        .as_ref()
        .is_some_and(|m| m.directory.is_some());
    if !has_directory {
        return Ok(None);
    }
    match existing_archive(location).await? {
        Some(archive) => load_sync(&archive, set).await,
        None => Ok(None),
    }
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

/// The objects named by `--profile` / `--mailbox-set` (`name` or `namespace/name`), or all.
fn chosen<'a, T: kube::Resource<DynamicType = ()>>(
    objects: &'a [Located<T>],
    wanted: Option<&str>,
) -> Result<Vec<&'a Located<T>>, Failure> {
    let kind = T::kind(&());
    if objects.is_empty() {
        return Err(invalid(format!("no {kind} in the given files")));
    }
    let Some(wanted) = wanted else {
        return Ok(objects.iter().collect());
    };
    let chosen: Vec<_> = objects
        .iter()
        .filter(|o| full_name(o) == wanted || o.object.meta().name.as_deref() == Some(wanted))
        .collect();
    if chosen.is_empty() {
        let known: Vec<_> = objects.iter().map(full_name).collect();
        return Err(invalid(format!(
            "no {kind} {wanted:?} in the given files (found: {})",
            known.join(", ")
        )));
    }
    Ok(chosen)
}

/// `namespace/name` of an object.
fn full_name<T: kube::Resource>(located: &Located<T>) -> String {
    format!(
        "{}/{}",
        namespace_of(located.object.meta()),
        located.object.meta().name.as_deref().unwrap_or("")
    )
}

/// Reads a `--store` argument: `s3://bucket/prefix` or a directory.
fn parse_store(store: &str, s3: &S3Args) -> Result<StoreLocation, Failure> {
    let Some(rest) = store.strip_prefix("s3://") else {
        if s3.any() {
            return Err(invalid(format!(
                "--s3-endpoint, --s3-region and --s3-path-style only apply to an s3:// store, not {store}"
            )));
        }
        return Ok(StoreLocation::Local(store.into()));
    };
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(invalid(format!(
            "{store}: no bucket; use s3://bucket or s3://bucket/prefix"
        )));
    }
    Ok(StoreLocation::S3(S3Config {
        bucket: bucket.to_string(),
        prefix: prefix.to_string(),
        region: s3.s3_region.clone(),
        endpoint: s3.s3_endpoint.clone(),
        force_path_style: s3.s3_path_style,
        credentials: None,
        server_side_encryption: None,
    }))
}

/// Opens the archive a `--store` argument or profile names, creating a local directory
/// if need be. An S3 bucket must exist and be usable with the credentials.
pub async fn open_store(location: &StoreLocation) -> Result<Archive, StoreError> {
    let objects: Arc<dyn ObjectStore> = match location {
        StoreLocation::Local(path) => Arc::new(LocalStore::open(path)?),
        StoreLocation::S3(config) => Arc::new(S3Store::open(config).await?),
    };
    Ok(Archive::new(objects))
}

/// Opens the archive a profile's `spec.store` names (a local directory, by default
/// [`DEFAULT_STORE`]). The operator's worker opens its store here, from the store spec in
/// its run plan; an S3 store's `credentialsSecretRef` is mounted as files into
/// `credentials_dir` (keys `accessKeyId`, `secretAccessKey`), never passed in the plan.
pub async fn open_store_spec(
    spec: Option<&StoreSpec>,
    credentials_dir: &Path,
) -> Result<Archive, StoreError> {
    let location = match spec.and_then(|s| s.s3.as_ref()) {
        Some(s3) => {
            let credentials = s3.credentials_secret_ref.as_ref().map(|_| {
                let read = |key: &str| std::fs::read(credentials_dir.join(key)).ok();
                plan::s3_credentials(read("accessKeyId"), read("secretAccessKey"))
            });
            StoreLocation::S3(plan::s3_config(s3, credentials))
        }
        None => StoreLocation::Local(
            spec.and_then(|s| s.local.as_ref())
                .and_then(|l| l.path.as_deref())
                .unwrap_or(DEFAULT_STORE)
                .into(),
        ),
    };
    open_store(&location).await
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
    let to_stdout = args.out.as_os_str() == "-";
    let result = async {
        if args.wait_for_attach && !to_stdout {
            return Err(invalid("--wait-for-attach is for --out - only"));
        }
        if to_stdout && std::io::stdout().is_terminal() {
            return Err(invalid(
                "--out - writes an archive to standard output, which is a terminal; \
                 redirect it to a file or a pipe",
            ));
        }
        let archive = open_existing(&parse_store(&args.store, &args.s3)?).await?;
        let request = export::Request {
            user: &args.user,
            format: args.format,
            folder: args.folder.as_deref(),
        };
        let failed = |e: export::ExportError| match e {
            export::ExportError::NoSuchUser { .. }
            | export::ExportError::NoSuchFolder { .. }
            | export::ExportError::NotEmpty(_) => invalid(e.to_string()),
            other => Failure(1, other.to_string()),
        };
        if !to_stdout {
            let destination = export::Destination::Directory(&args.out);
            return export::export_to(&archive, &request, destination)
                .await
                .map_err(failed);
        }
        if args.wait_for_attach {
            std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink())
                .map_err(|e| Failure(1, format!("reading standard input: {e}")))?;
        }
        let mut stdout = std::io::BufWriter::with_capacity(1 << 20, std::io::stdout());
        export::export_to(&archive, &request, export::Destination::Stream(&mut stdout))
            .await
            .map_err(failed)
    }
    .await;
    match result {
        Ok(summary) => {
            for r in &summary.renamed {
                eprintln!(
                    "note: folder {:?} of {} exported as {} (its own name is another \
                     folder's, or looks like a message or mbox file)",
                    r.folder, r.mailbox, r.path
                );
            }
            // On standard output only the archive; the summary goes to stderr then.
            let line = format!(
                "exported {} messages in {} folders to {}",
                summary.messages,
                summary.folders,
                if to_stdout {
                    "standard output".to_string()
                } else {
                    args.out.display().to_string()
                }
            );
            if to_stdout {
                eprintln!("{line}");
            } else {
                println!("{line}");
            }
            0
        }
        Err(Failure(code, message)) => {
            eprintln!("error: {message}");
            code
        }
    }
}

/// Opens a store that must already exist (reading commands never create one).
async fn open_existing(location: &StoreLocation) -> Result<Archive, Failure> {
    existing_archive(location).await?.ok_or_else(|| {
        invalid(format!(
            "{} is not a mailvault archive",
            location.describe()
        ))
    })
}

/// The archive at `location` if it holds one (anything a run writes), without creating it.
async fn existing_archive(location: &StoreLocation) -> Result<Option<Archive>, Failure> {
    let failed = |e: StoreError| Failure(1, e.to_string());
    match location {
        StoreLocation::Local(path) => {
            let found = ["messages", "users", "directory"]
                .iter()
                .any(|dir| path.join(dir).is_dir());
            if !found {
                return Ok(None);
            }
            open_store(location).await.map(Some).map_err(failed)
        }
        StoreLocation::S3(config) => {
            let store = S3Store::open(config).await.map_err(failed)?;
            for prefix in ["users/", "messages/", "directory/"] {
                if store.has_objects(prefix).await.map_err(failed)? {
                    return Ok(Some(Archive::new(Arc::new(store))));
                }
            }
            Ok(None)
        }
    }
}

async fn verify(args: VerifyArgs) -> u8 {
    let opened = match parse_store(&args.store, &args.s3) {
        Ok(location) => open_existing(&location).await,
        Err(failure) => Err(failure),
    };
    let archive = match opened {
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
        let archive = open_existing(&parse_store(&args.store, &args.s3)?).await?;
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
    let sets = chosen(&bundle.mailbox_sets, args.mailbox_set.as_deref())?;
    let archive = match &args.store {
        Some(location) => Some(open_existing(&parse_store(location, &args.s3)?).await?),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn s3(store: &str, args: &S3Args) -> S3Config {
        match parse_store(store, args) {
            Ok(StoreLocation::S3(config)) => config,
            Ok(other) => panic!("{store}: {other:?}"),
            Err(Failure(code, message)) => panic!("{store}: {code} {message}"),
        }
    }

    #[test]
    fn stores_are_directories_or_s3_urls() {
        let none = S3Args::default();
        assert_eq!(
            parse_store("archive", &none).ok(),
            Some(StoreLocation::Local("archive".into()))
        );
        assert_eq!(s3("s3://bucket", &none).describe(), "s3://bucket");
        let config = s3("s3://bucket/a/b/", &none);
        assert_eq!(
            (config.bucket.as_str(), config.describe()),
            ("bucket", "s3://bucket/a/b".into())
        );
        assert_eq!(
            (config.region, config.endpoint, config.credentials),
            (None, None, None)
        );
        let flags = S3Args {
            s3_endpoint: Some("http://127.0.0.1:3900".into()),
            s3_region: Some("garage".into()),
            s3_path_style: true,
        };
        let config = s3("s3://b/p", &flags);
        assert_eq!(config.endpoint.as_deref(), Some("http://127.0.0.1:3900"));
        assert_eq!(config.region.as_deref(), Some("garage"));
        assert!(config.force_path_style);
        for bad in ["s3://", "s3:///prefix"] {
            assert!(
                matches!(parse_store(bad, &none), Err(Failure(2, _))),
                "{bad}"
            );
        }
        assert!(matches!(parse_store("dir", &flags), Err(Failure(2, _))));
    }
}
