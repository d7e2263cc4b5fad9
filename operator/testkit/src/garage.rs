//! A private Garage (S3-compatible object store) for the S3 tests: one node on free
//! loopback ports, its own config, metadata and data in a temporary directory, one access
//! key and one bucket.
//!
//! The tests run against a real S3 implementation rather than a mock, so that signing,
//! pagination, multipart uploads, error codes and a server that goes away behave as they
//! do in production. Garage is small, starts in well under a second and needs no
//! container runtime.
//!
//! The `garage` binary (version [`GARAGE_VERSION`]) is looked up on `PATH` and in
//! `$CARGO_HOME/bin` (`~/.cargo/bin`). When it is missing, [`Garage::start`] installs it
//! with `cargo install garage --locked --version 2.5.0`, which compiles for about ten
//! minutes on a small machine, once; a line on stderr says so.
//!
//! Everything here blocks: it is meant for test set-up, where nothing else runs yet.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The Garage release the tests are written against.
pub const GARAGE_VERSION: &str = "2.5.0";

/// The S3 region the private Garage answers to. Deliberately not `us-east-1`, so that a
/// client which ignores the configured region fails the tests.
const REGION: &str = "garage";

/// How long a started (or restarted) Garage may take to become healthy.
const START_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, thiserror::Error)]
pub enum GarageError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("installing garage {GARAGE_VERSION} with cargo install failed ({status})")]
    Install { status: std::process::ExitStatus },
    #[error("garage {command} failed ({status}): {output}")]
    Command {
        command: String,
        status: std::process::ExitStatus,
        output: String,
    },
    #[error("garage did not become healthy within {START_TIMEOUT:?}; its log ends with:\n{log}")]
    NotHealthy { log: String },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> GarageError {
    let what = what.into();
    move |source| GarageError::Io { what, source }
}

/// A running single-node Garage; stopped and deleted on drop.
pub struct Garage {
    binary: PathBuf,
    dir: tempfile::TempDir,
    config: PathBuf,
    s3_port: u16,
    admin_port: u16,
    access_key_id: String,
    secret_access_key: String,
    bucket: String,
    child: Option<Child>,
}

impl Garage {
    /// Starts a fresh Garage with an access key and a bucket (`mailvault`) it may use.
    pub fn start() -> Result<Garage, GarageError> {
        let binary = garage_binary()?;
        let dir = tempfile::Builder::new()
            .prefix("mailvault-garage-")
            .tempdir()
            .map_err(io("creating the Garage directory"))?;
        let [rpc_port, s3_port, admin_port] = free_ports()?;
        let config = dir.path().join("garage.toml");
        // Garage's own format; the names are those of `garage server` 2.x's config file.
        let toml = format!(
            r#"metadata_dir = "{meta}"
data_dir = "{data}"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:{rpc_port}"
rpc_public_addr = "127.0.0.1:{rpc_port}"
rpc_secret = "{rpc_secret}"

[s3_api]
s3_region = "{REGION}"
api_bind_addr = "127.0.0.1:{s3_port}"

[admin]
api_bind_addr = "127.0.0.1:{admin_port}"
admin_token = "{admin_token}"
"#,
            meta = dir.path().join("meta").display(),
            data = dir.path().join("data").display(),
            rpc_secret = random_hex(64),
            admin_token = random_hex(32),
        );
        std::fs::write(&config, toml).map_err(io("writing the Garage config"))?;
        let mut garage = Garage {
            binary,
            config,
            s3_port,
            admin_port,
            // Garage's key format: `GK` and 24 hex digits; the secret is 64 hex digits.
            access_key_id: format!("GK{}", random_hex(24)),
            secret_access_key: random_hex(64),
            bucket: "mailvault".to_string(),
            child: None,
            dir,
        };
        garage.spawn()?;
        Ok(garage)
    }

    /// Runs the server. `--single-node` assigns and applies the one-node layout, and
    /// `--default-bucket` creates the key and the bucket (both idempotent, so a restart
    /// finds its data again).
    fn spawn(&mut self) -> Result<(), GarageError> {
        let log_path = self.dir.path().join("garage.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(io("opening the Garage log"))?;
        let log_err = log.try_clone().map_err(io("opening the Garage log"))?;
        let child = Command::new(&self.binary)
            .arg("-c")
            .arg(&self.config)
            .args(["server", "--single-node", "--default-bucket"])
            .env("GARAGE_DEFAULT_ACCESS_KEY", &self.access_key_id)
            .env("GARAGE_DEFAULT_SECRET_KEY", &self.secret_access_key)
            .env("GARAGE_DEFAULT_BUCKET", &self.bucket)
            .env("RUST_LOG", "garage=warn")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(io(format!("starting {}", self.binary.display())))?;
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            if self.healthy() {
                return Ok(());
            }
            if let Some(child) = &mut self.child {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        self.kill();
        Err(GarageError::NotHealthy {
            log: tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
        })
    }

    /// Whether the admin API reports the cluster healthy (`GET /health`, which needs no
    /// token) and the S3 API accepts connections.
    fn healthy(&self) -> bool {
        let probe = || -> std::io::Result<bool> {
            let mut stream = TcpStream::connect(("127.0.0.1", self.admin_port))?;
            stream.set_read_timeout(Some(Duration::from_secs(2)))?;
            stream.write_all(
                b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
            )?;
            let mut response = String::new();
            stream.read_to_string(&mut response)?;
            Ok(response.starts_with("HTTP/1.1 200"))
        };
        probe().unwrap_or(false) && TcpStream::connect(("127.0.0.1", self.s3_port)).is_ok()
    }

    /// The S3 endpoint URL (path-style addressing only).
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.s3_port)
    }

    pub fn region(&self) -> &str {
        REGION
    }

    pub fn access_key_id(&self) -> &str {
        &self.access_key_id
    }

    pub fn secret_access_key(&self) -> &str {
        &self.secret_access_key
    }

    /// The bucket created at start, readable and writable with the key.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// Creates another bucket the key may read, write and administer (S3 bucket names:
    /// 3 to 63 characters of `a-z`, `0-9`, `-`, `.`).
    pub fn create_bucket(&self, name: &str) -> Result<(), GarageError> {
        self.cli(&["bucket", "create", name])?;
        self.cli(&[
            "bucket",
            "allow",
            "--read",
            "--write",
            "--owner",
            name,
            "--key",
            &self.access_key_id,
        ])
    }

    fn cli(&self, args: &[&str]) -> Result<(), GarageError> {
        let output = Command::new(&self.binary)
            .arg("-c")
            .arg(&self.config)
            .args(args)
            .output()
            .map_err(io(format!("running {}", self.binary.display())))?;
        if output.status.success() {
            return Ok(());
        }
        Err(GarageError::Command {
            command: args.join(" "),
            status: output.status,
            output: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        })
    }

    /// Bytes of object data Garage keeps on disk: grows as objects are written (not from
    /// Garage's own bookkeeping, which goes into its metadata), so a test can wait until a
    /// run is under way instead of guessing how long that takes.
    pub fn data_bytes(&self) -> u64 {
        fn below(path: &std::path::Path) -> u64 {
            std::fs::read_dir(path)
                .into_iter()
                .flatten()
                .flatten()
                .fold(0, |sum, e| match e.metadata() {
                    Ok(m) if m.is_dir() => sum + below(&e.path()),
                    Ok(m) => sum + m.len(),
                    Err(_) => sum,
                })
        }
        below(&self.dir.path().join("data"))
    }

    /// Kills the server (as a crash would: no shutdown); its data stays for [`restart`].
    ///
    /// [`restart`]: Garage::restart
    pub fn stop(&mut self) {
        self.kill();
    }

    /// Starts the server again on the same ports with the same data.
    pub fn restart(&mut self) -> Result<(), GarageError> {
        self.kill();
        self.spawn()
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Three distinct ports that were free a moment ago (the listeners are held together so
/// that the operating system cannot hand out the same port twice).
fn free_ports() -> Result<[u16; 3], GarageError> {
    let bind = || TcpListener::bind("127.0.0.1:0").map_err(io("finding a free port"));
    let listeners = [bind()?, bind()?, bind()?];
    let mut ports = [0; 3];
    for (port, listener) in ports.iter_mut().zip(&listeners) {
        *port = listener
            .local_addr()
            .map_err(io("finding a free port"))?
            .port();
    }
    Ok(ports)
}

fn random_hex(digits: usize) -> String {
    let mut out = String::new();
    while out.len() < digits {
        out.push_str(&uuid::Uuid::new_v4().simple().to_string());
    }
    out.truncate(digits);
    out
}

/// The `garage` binary, installed first if need be (once per test process).
fn garage_binary() -> Result<PathBuf, GarageError> {
    static BINARY: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BINARY
        .get_or_init(|| find_or_install().map_err(|e| e.to_string()))
        .clone()
        .map_err(|message| GarageError::Io {
            what: "the garage binary".into(),
            source: std::io::Error::other(message),
        })
}

fn cargo_bin_dir() -> Option<PathBuf> {
    match std::env::var_os("CARGO_HOME") {
        Some(home) => Some(PathBuf::from(home).join("bin")),
        None => std::env::var_os("HOME").map(|home| Path::new(&home).join(".cargo/bin")),
    }
}

fn find_or_install() -> Result<PathBuf, GarageError> {
    let path_dirs = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    let candidates = path_dirs.into_iter().chain(cargo_bin_dir());
    for dir in candidates {
        let binary = dir.join("garage");
        if binary.is_file() {
            return Ok(binary);
        }
    }
    eprintln!(
        "garage not found on PATH or in ~/.cargo/bin: installing it with \
         `cargo install garage --locked --version {GARAGE_VERSION}` (takes about 10 minutes, once)"
    );
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args(["install", "garage", "--locked", "--version", GARAGE_VERSION])
        .status()
        .map_err(io("running cargo install garage"))?;
    if !status.success() {
        return Err(GarageError::Install { status });
    }
    cargo_bin_dir()
        .map(|dir| dir.join("garage"))
        .filter(|binary| binary.is_file())
        .ok_or_else(|| GarageError::Io {
            what: "cargo install garage".into(),
            source: std::io::Error::other("the installed binary is not in $CARGO_HOME/bin"),
        })
}
