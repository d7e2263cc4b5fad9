//! The `mailvault` command line: it parses, calls and prints. Nothing in the crate imports
//! it (tests/layers.rs checks that); what the commands do lives in the modules below it.
//!
//! Exit codes: 0 everything succeeded; 1 something failed at run time (a mailbox, the
//! store, damaged objects); 2 the input is invalid, and then nothing was touched.

mod archive;
mod logging;
mod mailboxes;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

use self::logging::Say;
use crate::archiving::{self, RunError};
use crate::export::Format;
use crate::protocol::RunProtocol;
use crate::resources::{self, namespace_of, Bundle, Located};
use crate::store::{self, Archive, S3Options, StoreLocation};
use crate::{operator, worker};

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
    Verify(StoreArgs),
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
    Worker(worker::WorkerArgs),
    /// Run the Kubernetes operator (KUBECONFIG, ~/.kube/config or in-cluster credentials).
    Operator(operator::OperatorArgs),
}

/// The YAML to read.
#[derive(Args, Debug)]
pub struct InputArgs {
    /// A YAML file (multi-document) or a directory of them, as for `kubectl apply -f`.
    #[arg(short = 'f', long = "filename", required = true)]
    pub files: Vec<PathBuf>,
}

/// Where the archive is. For an `s3://` store, credentials come from the AWS default chain
/// (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_PROFILE`, ...),
/// never from the command line, where other users could read them.
#[derive(Args, Clone, Debug, Default)]
pub struct StoreArgs {
    /// The archive: a directory or `s3://bucket/prefix`. Default for `run`: the profile's
    /// store; else `./mailvault-archive`.
    #[arg(long)]
    pub store: Option<String>,
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

impl StoreArgs {
    fn s3(&self) -> S3Options {
        S3Options {
            endpoint: self.s3_endpoint.clone(),
            region: self.s3_region.clone(),
            force_path_style: self.s3_path_style,
        }
    }

    /// The store `--store` names, if it names one.
    fn named(&self) -> Result<Option<StoreLocation>, Failure> {
        match &self.store {
            Some(store) => StoreLocation::parse(store, &self.s3())
                .map(Some)
                .map_err(invalid),
            None if self.s3().any() => Err(invalid(
                "--s3-endpoint, --s3-region and --s3-path-style need an s3:// --store",
            )),
            None => Ok(None),
        }
    }

    /// The archive to read: `--store`, else the default directory. It must exist; reading
    /// commands never create one.
    async fn existing(&self) -> Result<Archive, Failure> {
        let store = self.store.as_deref().unwrap_or(store::DEFAULT_STORE);
        let location = StoreLocation::parse(store, &self.s3()).map_err(invalid)?;
        match store::open_existing(&location).await {
            Ok(Some(archive)) => Ok(archive),
            Ok(None) => Err(invalid(format!(
                "{} is not a mailvault archive",
                location.describe()
            ))),
            Err(e) => Err(Failure(1, e.to_string())),
        }
    }
}

#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub input: InputArgs,
    /// Only this profile (`name` or `namespace/name`).
    #[arg(long)]
    pub profile: Option<String>,
    #[command(flatten)]
    pub store: StoreArgs,
    #[arg(long, short = 'o', value_enum, default_value = "text")]
    pub output: Output,
    /// Archive as usual, but only count what the deletion rules would delete.
    #[arg(long)]
    pub dry_run_deletion: bool,
}

#[derive(Args, Debug)]
pub struct MailboxesArgs {
    #[command(flatten)]
    pub input: InputArgs,
    /// Only this MailboxSet (`name` or `namespace/name`); without it, every set in the files.
    #[arg(long)]
    pub mailbox_set: Option<String>,
    /// With `--store`: check a directory sync against the last one recorded in this
    /// archive, as `mailvault run` would (maxRemovedPercent); the archive is only read.
    #[command(flatten)]
    pub store: StoreArgs,
    /// `json` prints one object per set; an array of them when several sets are listed.
    #[arg(long, short = 'o', value_enum, default_value = "text")]
    pub output: Output,
}

#[derive(Args, Debug)]
pub struct ExportArgs {
    #[command(flatten)]
    pub store: StoreArgs,
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
pub struct ListArgs {
    #[command(flatten)]
    pub store: StoreArgs,
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
pub async fn execute(cli: Cli) -> ExitCode {
    logging::init(cli.log_format);
    let code = match cli.command {
        Command::Run(args) => finish(run(args).await),
        Command::Export(args) => finish(archive::export(args).await),
        Command::Verify(args) => finish(archive::verify(args).await),
        Command::List(args) => finish(archive::list(args).await),
        Command::Mailboxes(args) => finish(mailboxes::command(args).await),
        Command::Worker(args) => worker::archive_shard(args).await,
        Command::Operator(args) => operator::operate(args).await,
        Command::Crds => {
            print!("{}", resources::crds_yaml());
            0
        }
    };
    ExitCode::from(code)
}

/// An error message and the exit code it ends with.
struct Failure(u8, String);

fn invalid(message: impl Into<String>) -> Failure {
    Failure(2, message.into())
}

/// The exit code of a command, its error printed.
fn finish(result: Result<u8, Failure>) -> u8 {
    match result {
        Ok(code) => code,
        Err(Failure(code, message)) => {
            logging::say(Say::Error, &message);
            code
        }
    }
}

async fn run(args: RunArgs) -> Result<u8, Failure> {
    let bundle = load(&args.input)?;
    let profiles = chosen(&bundle.profiles, args.profile.as_deref())?;
    let store = args.store.named()?;
    let outcome =
        archiving::run_profiles(&bundle, &profiles, store.as_ref(), args.dry_run_deletion)
            .await
            .map_err(|e| match e {
                RunError::Invalid(message) => invalid(message),
                RunError::Failed(message) => Failure(1, message),
            })?;
    print_protocols(&outcome.protocols, args.output);
    Ok(u8::from(!outcome.succeeded()))
}

fn load(input: &InputArgs) -> Result<Bundle, Failure> {
    resources::load_paths(&input.files).map_err(|e| invalid(e.to_string()))
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

/// One value as pretty JSON, or an array when there are several.
fn print_json<T: serde::Serialize>(values: &[T]) {
    let json = match values {
        [one] => serde_json::to_string_pretty(one),
        many => serde_json::to_string_pretty(many),
    };
    println!("{}", json.expect("output serializes"));
}

fn print_protocols(protocols: &[RunProtocol], output: Output) {
    match output {
        Output::Json => print_json(protocols),
        Output::Text => {
            for p in protocols {
                println!("{}", p.to_text());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::s3::S3Config;

    fn location(store: &str, flags: &StoreArgs) -> Result<Option<StoreLocation>, Failure> {
        StoreArgs {
            store: Some(store.into()),
            ..flags.clone()
        }
        .named()
    }

    fn s3(store: &str, args: &StoreArgs) -> S3Config {
        match location(store, args) {
            Ok(Some(StoreLocation::S3(config))) => config,
            Ok(other) => panic!("{store}: {other:?}"),
            Err(Failure(code, message)) => panic!("{store}: {code} {message}"),
        }
    }

    #[test]
    fn stores_are_directories_or_s3_urls() {
        let none = StoreArgs::default();
        assert_eq!(
            location("archive", &none).ok(),
            Some(Some(StoreLocation::Local("archive".into())))
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
        let flags = StoreArgs {
            store: None,
            s3_endpoint: Some("http://127.0.0.1:3900".into()),
            s3_region: Some("garage".into()),
            s3_path_style: true,
        };
        let config = s3("s3://b/p", &flags);
        assert_eq!(config.endpoint.as_deref(), Some("http://127.0.0.1:3900"));
        assert_eq!(config.region.as_deref(), Some("garage"));
        assert!(config.force_path_style);
        for bad in ["s3://", "s3:///prefix"] {
            assert!(matches!(location(bad, &none), Err(Failure(2, _))), "{bad}");
        }
        assert!(matches!(location("dir", &flags), Err(Failure(2, _))));
        // Flags without a store to apply them to.
        assert!(matches!(flags.named(), Err(Failure(2, _))));
    }
}
