//! The operator on an API server, for the operator suite (`operator/tests/operator.rs`):
//! a private fakekube (a fake Kubernetes API server whose job runner runs each Job's pods
//! as local processes, kept beside the repository in `../shared/fakekube`), kubectl
//! against it, and the real `mailvault operator` process, started as the manifests'
//! Deployment would start it.
//!
//! fakekube is found at `$MAILVAULT_FAKEKUBE`, else at `<repository>/../shared/fakekube/
//! fakekube.py`. Where it is absent (a user's clone) the suite says so and passes; with CI
//! set it must be there. It needs Python 3 with PyYAML and jsonschema, kubectl, and
//! `unshare` (root) for the pods' volume mounts; [`prerequisites`] names what is missing.
//!
//! Every [`FakeKube`] and [`Operator`] runs in its own process group with a watchdog that
//! stops it when the test process goes away, even killed: nothing outlives the tests.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// How long fakekube may take to say `ready`.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// The Python that runs fakekube: `$MAILVAULT_FAKEKUBE_PYTHON`, else `python3`.
fn python() -> String {
    std::env::var("MAILVAULT_FAKEKUBE_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// Where fakekube is, if it is there.
pub fn locate() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("MAILVAULT_FAKEKUBE") {
        return Some(PathBuf::from(path)).filter(|p| p.is_file());
    }
    // This crate is operator/testkit in the repository.
    let repository = Path::new(env!("CARGO_MANIFEST_DIR")).parent()?.parent()?;
    Some(repository.join("../shared/fakekube/fakekube.py")).filter(|p| p.is_file())
}

/// What fakekube and the suite need besides fakekube itself, each missing piece with how
/// to get it.
pub fn prerequisites() -> Vec<String> {
    let mut missing = Vec::new();
    let python_ok = Command::new(python())
        .args(["-c", "import yaml, jsonschema"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !python_ok {
        missing.push(format!(
            "{} with PyYAML and jsonschema (Debian: apt-get install python3-yaml \
             python3-jsonschema; or set MAILVAULT_FAKEKUBE_PYTHON)",
            python()
        ));
    }
    let kubectl_ok = Command::new("kubectl")
        .args(["version", "--client"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !kubectl_ok {
        missing.push("kubectl (https://kubernetes.io/docs/tasks/tools/)".into());
    }
    if Command::new("unshare")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_err()
    {
        missing.push("unshare (Debian: util-linux)".into());
    }
    missing
}

/// A free loopback port (bound and released: another process may take it first, which
/// the callers here notice as a failed start).
pub fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

/// A child in its own process group, and a shell that sends that group SIGTERM when its
/// stdin closes: when the value is dropped, or when the test process dies.
struct Guarded {
    child: Child,
    watchdog: Child,
}

impl Guarded {
    fn spawn(command: &mut Command) -> io::Result<Guarded> {
        let mut child = command.process_group(0).spawn()?;
        let watchdog = Command::new("sh")
            .arg("-c")
            .arg("read -r line; kill -s TERM -- \"-$1\" 2>/dev/null")
            .arg("mailvault-test-watchdog")
            .arg(child.id().to_string())
            .process_group(0)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        match watchdog {
            Ok(watchdog) => Ok(Guarded { child, watchdog }),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(e)
            }
        }
    }

    fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on a process group we created; no memory is involved.
        unsafe {
            libc::kill(-(self.child.id() as i32), signal);
        }
    }

    /// SIGTERM, then SIGKILL after `grace`; waits for the child.
    fn stop(&mut self, grace: Duration) {
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if let Ok(None) = self.child.try_wait() {
            self.signal(libc::SIGKILL);
        }
        let _ = self.child.wait();
        drop(self.watchdog.stdin.take());
        let _ = self.watchdog.wait();
    }
}

/// A running private fakekube; stopped (with every pod it runs) on drop.
pub struct FakeKube {
    dir: tempfile::TempDir,
    server: Guarded,
    kubeconfig: PathBuf,
}

impl FakeKube {
    /// Starts `script` on a free port with a data directory of its own; `binaries` maps
    /// image (or command) names to the executables the job runner runs for them.
    pub fn start(script: &Path, binaries: &[(&str, &Path)]) -> io::Result<FakeKube> {
        let dir = tempfile::Builder::new()
            .prefix("mailvault-fakekube-")
            .tempdir()?;
        let kubeconfig = dir.path().join("kubeconfig");
        let mut command = Command::new(python());
        command
            .arg(script)
            .args(["--port", "0", "--data-dir"])
            .arg(dir.path())
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .arg("--binary")
            .arg("sh=/bin/sh");
        for (name, path) in binaries {
            command
                .arg("--binary")
                .arg(format!("{name}={}", path.display()));
        }
        let stderr = File::create(dir.path().join("fakekube.stderr"))?;
        let mut server = Guarded::spawn(
            command
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(stderr),
        )?;
        let stdout = server.child.stdout.take().expect("stdout is piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.trim() == "ready" {
                    let _ = tx.send(());
                }
            }
        });
        let fake = FakeKube {
            dir,
            server,
            kubeconfig,
        };
        if rx.recv_timeout(START_TIMEOUT).is_err() {
            let log = std::fs::read_to_string(fake.dir.path().join("fakekube.stderr"))
                .unwrap_or_default();
            return Err(io::Error::other(format!(
                "fakekube did not get ready within {START_TIMEOUT:?}: {log}"
            )));
        }
        Ok(fake)
    }

    /// The kubeconfig that reaches it (a dummy token; context namespace `default`).
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// Its data directory: `requests.log`, `runner.log`, pod directories and logs, and
    /// `pvc/<namespace>/<claim>/`, where PersistentVolumeClaims live.
    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// The directory of a PersistentVolumeClaim, as the pods see it mounted.
    pub fn claim_dir(&self, namespace: &str, claim: &str) -> PathBuf {
        self.dir.path().join("pvc").join(namespace).join(claim)
    }

    /// One line per request: time, method, path and query, content type, status,
    /// duration, `ua=` the client's User-Agent up to the first space.
    pub fn requests_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("requests.log")).unwrap_or_default()
    }

    /// Runs kubectl with `args` against this server, `stdin` as its input.
    pub fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> io::Result<Output> {
        let mut child = Command::new("kubectl")
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        if let Some(input) = stdin {
            let mut pipe = child.stdin.take().expect("stdin is piped");
            let input = input.to_string();
            // From another thread, so that a large input cannot deadlock with the output.
            let writer = std::thread::spawn(move || pipe.write_all(input.as_bytes()));
            let output = child.wait_with_output()?;
            writer.join().expect("the writer does not panic")?;
            return Ok(output);
        }
        child.wait_with_output()
    }
}

impl Drop for FakeKube {
    fn drop(&mut self) {
        // fakekube stops its pods (SIGTERM, then SIGKILL after its grace) and removes its
        // mount points on SIGTERM.
        self.server.stop(Duration::from_secs(15));
    }
}

/// The real `mailvault operator`, run as `manifests/`' Deployment runs it.
pub struct Operator {
    process: Guarded,
    listen: SocketAddr,
    log: PathBuf,
}

impl Operator {
    /// Starts `binary` with the args and environment of the Deployment
    /// `mailvault-system/mailvault-operator` as installed in `kube` (its `fieldRef`s
    /// resolved as for a pod named `mailvault-operator-0`), with `KUBECONFIG` pointing at
    /// `kube` and `--listen` on a free loopback port instead of the pod's port 8080. The
    /// log (stdout and stderr) goes to `log`, appended.
    pub fn start(kube: &FakeKube, binary: &Path, log: &Path) -> io::Result<Operator> {
        let out = kube.kubectl(
            &[
                "-n",
                "mailvault-system",
                "get",
                "deployment",
                "mailvault-operator",
                "-o",
                "json",
            ],
            None,
        )?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "reading the operator's Deployment: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        let deployment: serde_json::Value = serde_json::from_slice(&out.stdout)
            .map_err(|e| io::Error::other(format!("the Deployment is not JSON: {e}")))?;
        let container = &deployment["spec"]["template"]["spec"]["containers"][0];
        let args: Vec<String> = container["args"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| a.as_str().map(String::from))
            .collect();
        let listen = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()?));
        let mut command = Command::new(binary);
        command
            .args(&args)
            .arg("--listen")
            .arg(listen.to_string())
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("KUBECONFIG", kube.kubeconfig());
        for env in container["env"].as_array().into_iter().flatten() {
            let name = env["name"].as_str().unwrap_or_default();
            let value = match (&env["value"], &env["valueFrom"]["fieldRef"]["fieldPath"]) {
                (serde_json::Value::String(v), _) => v.clone(),
                (_, serde_json::Value::String(path)) if path == "metadata.name" => {
                    "mailvault-operator-0".to_string()
                }
                (_, serde_json::Value::String(path)) if path == "metadata.namespace" => {
                    "mailvault-system".to_string()
                }
                _ => continue,
            };
            command.env(name, value);
        }
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)?;
        let process = Guarded::spawn(
            command
                .stdin(Stdio::null())
                .stdout(out.try_clone()?)
                .stderr(out),
        )?;
        Ok(Operator {
            process,
            listen,
            log: log.to_path_buf(),
        })
    }

    /// A GET of `path` on its HTTP endpoint: status code and body.
    pub fn get(&self, path: &str) -> io::Result<(u16, String)> {
        let mut stream = TcpStream::connect_timeout(&self.listen, Duration::from_secs(2))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.listen
        )?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        let code = response
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| io::Error::other(format!("not an HTTP response: {response:?}")))?;
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        Ok((code, body))
    }

    /// Whether `/readyz` answers 200.
    pub fn ready(&self) -> bool {
        self.get("/readyz").is_ok_and(|(code, _)| code == 200)
    }

    /// Kills the operator with SIGKILL, as a node failure or an OOM kill would.
    pub fn kill(&mut self) {
        self.process.signal(libc::SIGKILL);
        let _ = self.process.child.wait();
    }

    /// What it logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.process.stop(Duration::from_secs(5));
    }
}

/// Calls `probe` every 100 ms until it returns `Some`, for at most `timeout`.
pub fn wait_until<T>(timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe() {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
