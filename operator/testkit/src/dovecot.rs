//! A private, throw-away Dovecot 2.3 IMAP server for integration tests,
//! benchmarks and demos.
//!
//! Every [`Dovecot`] is its own instance: its own config (started with
//! `dovecot -c`, so the system config is never read), sockets, state, log file
//! (`dovecot.log` in [`Dovecot::dir`]), users and mail. It listens on
//! 127.0.0.1 only, with one plain/STARTTLS listener and one implicit-TLS
//! listener whose certificate is signed by a CA made for this instance.
//!
//! # Who the server runs as
//!
//! Dovecot runs "rootless": every process of an instance runs as one
//! unprivileged account, which also owns every file in its directory. For a
//! caller that is not root that is the caller. For root it is the `dovecot`
//! system account that the package creates (`nobody` if it is missing),
//! because Dovecot refuses to access mail as root, and because only an
//! unprivileged auth process can be kept away from anvil's per-IP login
//! penalty, which would otherwise make every failed login after the first
//! wait 2 to 15 seconds. Files this module writes (messages, users) are
//! chowned to that account.
//!
//! The helpers that touch mail or folders go through `doveadm`, which looks
//! users up via the running server, so they need it started.
//!
//! # Byte-exact messages
//!
//! Dovecot serves a Maildir message file as it is stored, with two exceptions:
//! a bare LF (one not preceded by CR) goes out as CRLF, and a NUL byte goes out
//! as 0x80. So a message round-trips byte for byte through `BODY.PEEK[]`
//! exactly when every LF in it is part of a CRLF and it has no NUL byte; bare
//! CRs, 8-bit bytes and a last line without line ending are all kept.
//! [`Dovecot::deliver`] and [`Dovecot::deliver_many`] reject anything else
//! instead of letting a test compare against bytes the server will not send.
//!
//! # INTERNALDATE
//!
//! Maildir has no field for it: Dovecot takes a message's INTERNALDATE from
//! its file's modification time. The deliver functions write each file into
//! the folder's `tmp/`, set its mtime to the given unix time and rename it
//! into `cur/` (the Maildir delivery protocol), so Dovecot sees it complete.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tempfile::TempDir;

/// The master user whose password lets a SASL PLAIN login act as any user.
const MASTER_USER: &str = "archiver";
/// How often `start` picks new ports when Dovecot finds one taken.
const START_ATTEMPTS: u32 = 3;
const READY_TIMEOUT: Duration = Duration::from_secs(10);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
const POLL_INTERVAL: Duration = Duration::from_millis(20);
/// Where Dovecot's binaries live when they are not on PATH (a non-root PATH
/// often lacks the sbin directories).
const BINARY_DIRS: &[&str] = &["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"];
/// Debian's hook that tells package scripts whether they may start services.
const POLICY_RC_D: &str = "/usr/sbin/policy-rc.d";

/// Settings for [`Dovecot::start_with`]; `Default` gives free ports, a temp
/// dir and no failure delay.
#[derive(Debug, Clone, Default)]
pub struct DovecotOptions {
    /// Port of the plain/STARTTLS listener; a free one when `None`.
    pub imap_port: Option<u16>,
    /// Port of the implicit-TLS listener; a free one when `None`.
    pub imaps_port: Option<u16>,
    /// Directory for config, TLS material, users, mail and log. `None` makes a
    /// temp dir that is removed on drop. A given dir is kept, and a later
    /// instance on it reuses its CA, master password, users and mail. When
    /// running as root it is handed to the account Dovecot runs as, so that
    /// account must be able to reach it.
    pub dir: Option<PathBuf>,
    /// How long a failed login waits before its `NO`. Dovecot 2.3 only knows
    /// whole seconds here, so this is rounded up; and it answers failures from
    /// a half-second timer, so even 0 means up to about 0.5 s.
    pub auth_failure_delay_ms: u32,
    /// The master user's password; a random one when `None` (the demo needs a fixed one
    /// that its example YAML can name).
    pub master_password: Option<String>,
    /// The hierarchy delimiter clients see; `/` when `None`. With another one, folder
    /// names may contain `/` (the mail is then stored in Dovecot's index layout, which
    /// keeps names in its index rather than in directory names).
    pub separator: Option<char>,
    /// Accept only OAuth2 logins, checked by an introspection endpoint.
    pub oauth2: Option<OAuth2Login>,
}

/// An OAuth2-only server: logins with SASL XOAUTH2 or OAUTHBEARER (nothing else is
/// offered, and only after TLS), the token checked by Dovecot's `oauth2` passdb through
/// `introspection_url` (`POST token=...`, RFC 7662 style, as
/// [`crate::cloud::Cloud`] serves it).
///
/// Which mailboxes a token opens is decided like Exchange Online's mailbox permissions: the
/// introspection answer names the token's principal (`mailvault_principal`), and a second
/// passdb lets the login through only if [`Dovecot::grant_oauth2`] granted that principal
/// the mailbox. (Dovecot 2.3 sends no user name to the introspection endpoint, so the
/// endpoint itself cannot decide per mailbox.)
#[derive(Debug, Clone)]
pub struct OAuth2Login {
    pub introspection_url: String,
    /// SASL mechanisms offered, lower case: `xoauth2`, `oauthbearer` or both.
    pub mechanisms: Vec<String>,
}

impl OAuth2Login {
    /// Both mechanisms.
    pub fn new(introspection_url: &str) -> OAuth2Login {
        OAuth2Login {
            introspection_url: introspection_url.to_string(),
            mechanisms: vec!["xoauth2".into(), "oauthbearer".into()],
        }
    }
}

/// A running private Dovecot; see the module docs. Dropping it stops the
/// server and, unless [`DovecotOptions::dir`] was given, removes its files.
pub struct Dovecot {
    dir: PathBuf,
    /// Dovecot's `base_dir` (sockets, pid file). Kept apart from `dir` in a
    /// fresh short temp path because unix socket paths are limited to about
    /// 100 bytes and `dir` may be deep.
    run_dir: TempDir,
    /// The temp dir behind `dir` when none was given; held so that dropping
    /// the instance removes it.
    _temp_dir: Option<TempDir>,
    dovecot_bin: PathBuf,
    doveadm_bin: PathBuf,
    account: Account,
    imap_port: u16,
    imaps_port: u16,
    ca_pem: String,
    master_password: String,
    oauth2: Option<OAuth2Login>,
    /// Unique greeting, so readiness checks cannot mistake another server
    /// that grabbed the port for this one.
    greeting: String,
    separator: char,
    server: Option<Server>,
}

/// The account every process of the instance runs as (see module docs).
struct Account {
    user: String,
    group: String,
    uid: u32,
    gid: u32,
    /// Whether it differs from the caller, so that files and commands must be
    /// switched over to it.
    switch: bool,
}

struct Server {
    /// The Dovecot master, leader of a process group of its own that holds
    /// all of the instance's processes.
    master: Child,
    /// `sh` that sends SIGTERM to that process group when its stdin closes:
    /// on [`Dovecot::stop`], and also when this process dies without running
    /// destructors, so that no Dovecot outlives the test that started it.
    watchdog: Child,
}

impl Dovecot {
    /// Starts a private Dovecot on 127.0.0.1: one plain/STARTTLS listener and
    /// one implicit-TLS listener, on free ports unless given.
    ///
    /// If the dovecot binary is missing and we run as root, installs
    /// `dovecot-imapd` with apt-get (noninteractive) first; otherwise returns
    /// a clear error.
    pub fn start() -> io::Result<Dovecot> {
        Self::start_with(DovecotOptions::default())
    }

    /// [`Dovecot::start`] with explicit options.
    pub fn start_with(opts: DovecotOptions) -> io::Result<Dovecot> {
        let run_dir = tempfile::Builder::new().prefix("mvdc-").tempdir()?;
        // We just made this dir, so its owner is our effective uid and gid.
        let me = fs::metadata(run_dir.path())?;
        let (dovecot_bin, doveadm_bin) = locate_binaries(me.uid() == 0)?;
        let account = Account::pick(me.uid(), me.gid())?;
        let (dir, temp_dir) = match &opts.dir {
            Some(dir) => {
                fs::create_dir_all(dir)?;
                (dir.canonicalize()?, None)
            }
            None => {
                let temp = tempfile::Builder::new()
                    .prefix("mailvault-dovecot-")
                    .tempdir()?;
                (temp.path().to_path_buf(), Some(temp))
            }
        };
        check_config_path(&dir)?;
        check_config_path(run_dir.path())?;
        let mut dovecot = Dovecot {
            dir,
            run_dir,
            _temp_dir: temp_dir,
            dovecot_bin,
            doveadm_bin,
            account,
            imap_port: 0,
            imaps_port: 0,
            ca_pem: String::new(),
            master_password: String::new(),
            oauth2: opts.oauth2.clone(),
            greeting: format!("mailvault test server {} ready.", random_hex(8)?),
            separator: opts.separator.unwrap_or('/'),
            server: None,
        };
        dovecot.prepare_dir(opts.master_password.as_deref())?;

        let mut attempt = 1;
        loop {
            let (imap, imaps) = pick_ports(opts.imap_port, opts.imaps_port)?;
            dovecot.imap_port = imap;
            dovecot.imaps_port = imaps;
            dovecot.write_config(opts.auth_failure_delay_ms)?;
            match dovecot.launch() {
                Err(e)
                    if e.kind() == io::ErrorKind::AddrInUse
                        && attempt < START_ATTEMPTS
                        && (opts.imap_port.is_none() || opts.imaps_port.is_none()) =>
                {
                    attempt += 1;
                }
                result => return result.map(|()| dovecot),
            }
        }
    }

    /// Port of the plain listener, which also offers STARTTLS.
    pub fn imap_port(&self) -> u16 {
        self.imap_port
    }

    /// Port of the implicit-TLS listener.
    pub fn imaps_port(&self) -> u16 {
        self.imaps_port
    }

    /// PEM of the private CA that signed the server certificate (which names
    /// DNS:localhost and IP:127.0.0.1), for clients to trust.
    pub fn ca_pem(&self) -> String {
        self.ca_pem.clone()
    }

    /// The file holding [`Dovecot::ca_pem`].
    pub fn ca_path(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// Authentication identity of the master user: SASL PLAIN with
    /// authorization identity = a user, authentication identity = this and
    /// password = [`Dovecot::master_password`] logs in as that user.
    pub fn master_user(&self) -> &str {
        MASTER_USER
    }

    /// Random password of the master user, kept across restarts and reuses of
    /// a given dir.
    pub fn master_password(&self) -> &str {
        &self.master_password
    }

    /// Adds (or replaces the password of) a normal user; user names are email
    /// addresses like "alice@example.org".
    ///
    /// Dovecot lower-cases login names, so the user is stored lower-cased.
    /// Each user has its own passwd-file because Dovecot re-reads a
    /// passwd-file at most once a second: with one shared file, a user added
    /// right after another user's login would be unknown for up to a second.
    /// Replacing a password still has that problem for its own file, so it
    /// waits for the next second before returning.
    pub fn add_user(&self, user: &str, password: &str) -> io::Result<()> {
        let user = normalize_user(user)?;
        let path = self.users_dir().join(&user);
        let previous = fs::metadata(&path).ok();
        let home = self.dir.join("home").join(&user);
        let line = format!(
            "{user}:{{PLAIN.HEX}}{}::::{}::\n",
            hex(password.as_bytes()),
            home.display()
        );
        self.write_private(&path, line.as_bytes())?;
        if let Some(previous) = previous {
            // Dovecot reloads the file only if its mtime or size changed.
            let now = unix_now();
            let stamp = now.max(previous.mtime() + 1);
            File::options()
                .write(true)
                .open(&path)?
                .set_modified(unix_time(stamp))?;
            wait_for_next_second();
        }
        Ok(())
    }

    /// Lets OAuth2 tokens of `principal` (a name from the introspection answer, see
    /// [`OAuth2Login`]) open `mailbox`: what `Add-MailboxPermission` does in Exchange Online.
    /// One file per grant, so that a change is seen at once.
    pub fn grant_oauth2(&self, principal: &str, mailbox: &str) -> io::Result<()> {
        let mailbox = normalize_user(mailbox)?;
        let dir = self.grants_dir().join(normalize_user(principal)?);
        if !dir.is_dir() {
            fs::create_dir(&dir)?;
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))?;
            self.own(&dir)?;
        }
        self.write_private(&dir.join(&mailbox), format!("{mailbox}::::::\n").as_bytes())
    }

    /// Takes a grant of [`Dovecot::grant_oauth2`] back.
    pub fn revoke_oauth2(&self, principal: &str, mailbox: &str) -> io::Result<()> {
        let path = self
            .grants_dir()
            .join(normalize_user(principal)?)
            .join(normalize_user(mailbox)?);
        match fs::remove_file(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            other => other?,
        }
        // Dovecot looks at a passwd-file it has open at most once a second.
        wait_for_next_second();
        Ok(())
    }

    fn grants_dir(&self) -> PathBuf {
        self.dir.join("auth").join("oauth2-grants")
    }

    /// Creates a folder (path uses the separator, '/' unless
    /// [`DovecotOptions::separator`] says otherwise; UTF-8, may contain
    /// non-ASCII like "Archiv/Größe", spaces, and dots like "Projects.2024")
    /// for a user, and subscribes it. An existing folder is only subscribed.
    /// Dovecot stores the name in modified UTF-7, as clients see it in LIST.
    pub fn create_folder(&self, user: &str, folder: &str) -> io::Result<()> {
        let user = normalize_user(user)?;
        check_folder(folder)?;
        let out = self.doveadm_output(&["mailbox", "create", "-s", "-u", &user, folder])?;
        if out.status.success() {
            return Ok(());
        }
        if String::from_utf8_lossy(&out.stderr).contains("already exists") {
            self.doveadm(&["mailbox", "subscribe", "-u", &user, folder])?;
            return Ok(());
        }
        Err(command_error("doveadm mailbox create", &out))
    }

    /// Puts one raw RFC 5322 message into a user's folder (creating the folder
    /// if needed) with the given INTERNALDATE (unix seconds) and flags, e.g.
    /// `&["\\Seen", "\\Flagged"]` or keywords like `"$Forwarded"`.
    ///
    /// Fetching `BODY.PEEK[]` returns exactly `raw`; messages that Dovecot
    /// could not return unchanged (bare LF, NUL) are rejected, see the module
    /// docs. `\Recent` and unknown system flags are rejected too.
    pub fn deliver(
        &self,
        user: &str,
        folder: &str,
        raw: &[u8],
        internal_date: i64,
        flags: &[&str],
    ) -> io::Result<()> {
        let user = normalize_user(user)?;
        check_storable(raw)?;
        let (letters, keywords) = maildir_flags(flags)?;
        let maildir = self.ensure_folder(&user, folder)?;
        let name = self.write_message(&maildir, raw, internal_date, &letters)?;
        if !keywords.is_empty() {
            // Keyword letters live in a per-folder table that Dovecot owns, so
            // let Dovecot set them; a Maildir message's GUID is its base name.
            let keywords = keywords.join(" ");
            self.doveadm(&[
                "flags", "add", "-u", &user, &keywords, "mailbox", folder, "guid", &name,
            ])?;
        }
        Ok(())
    }

    /// Puts many `(raw message, INTERNALDATE)` pairs, without flags, into a
    /// user's folder. They get UIDs in slice order. The same byte-exactness
    /// rule as [`Dovecot::deliver`] applies; all messages are checked before
    /// any is written.
    ///
    /// Writes the Maildir files directly (one doveadm run per message would
    /// take minutes for the 5,000-message benchmark mailboxes) and then has
    /// Dovecot index the folder once, so a client's first SELECT is not the
    /// one that pays for it.
    pub fn deliver_many(
        &self,
        user: &str,
        folder: &str,
        messages: &[(Vec<u8>, i64)],
    ) -> io::Result<()> {
        let user = normalize_user(user)?;
        for (raw, _) in messages {
            check_storable(raw)?;
        }
        let maildir = self.ensure_folder(&user, folder)?;
        for (raw, internal_date) in messages {
            self.write_message(&maildir, raw, *internal_date, "")?;
        }
        // Searching syncs the folder, which assigns the UIDs and indexes it.
        self.doveadm(&["search", "-u", &user, "mailbox", folder, "uid", "1"])?;
        Ok(())
    }

    /// Forces a new UIDVALIDITY on a folder, like a server migration does:
    /// the messages stay (with their flags and INTERNALDATEs) but get new
    /// UIDs, above the old UIDNEXT, and UIDVALIDITY becomes the old one + 1.
    ///
    /// The renumbering moves the messages through a temporary folder
    /// (`mailvault-renumber-…`, visible to clients while it exists), because
    /// Dovecot has no command that renumbers in place.
    pub fn reset_uidvalidity(&self, user: &str, folder: &str) -> io::Result<()> {
        let user = normalize_user(user)?;
        check_folder(folder)?;
        let status = self.doveadm(&[
            "-f",
            "tab",
            "mailbox",
            "status",
            "-u",
            &user,
            "uidvalidity",
            folder,
        ])?;
        let old: u32 = status
            .lines()
            .last()
            .and_then(|line| line.rsplit('\t').next()?.trim().parse().ok())
            .ok_or_else(|| {
                io::Error::other(format!(
                    "unexpected doveadm mailbox status output: {status:?}"
                ))
            })?;
        let temp = format!("mailvault-renumber-{}", random_hex(6)?);
        self.doveadm(&["mailbox", "create", "-u", &user, &temp])?;
        let moved = self
            .doveadm(&["move", "-u", &user, &temp, "mailbox", folder, "all"])
            .and_then(|_| self.doveadm(&["move", "-u", &user, folder, "mailbox", &temp, "all"]));
        let deleted = self.doveadm(&["mailbox", "delete", "-u", &user, &temp]);
        moved?;
        deleted?;
        let new = old.checked_add(1).unwrap_or(1).to_string();
        self.doveadm(&[
            "mailbox",
            "update",
            "-u",
            &user,
            "--uid-validity",
            &new,
            folder,
        ])?;
        Ok(())
    }

    /// Runs doveadm with this instance's config (as the instance's account),
    /// returning stdout (lossily decoded). Mail commands need the server to
    /// be running, since doveadm looks users up through it.
    pub fn doveadm(&self, args: &[&str]) -> io::Result<String> {
        let out = self.doveadm_output(args)?;
        if !out.status.success() {
            return Err(command_error(&format!("doveadm {}", args.join(" ")), &out));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Stops the server (also done on drop); a no-op when it is not running.
    ///
    /// All of the instance's processes get SIGTERM at once. Signalling only
    /// the master would make it wait a fixed second for its children, and up
    /// to six more for one that is just starting, on every stop.
    pub fn stop(&mut self) {
        let Some(mut server) = self.server.take() else {
            return;
        };
        // EOF on its stdin makes the watchdog signal the group. It is reaped
        // first, so it can never signal a recycled process group id.
        drop(server.watchdog.stdin.take());
        let _ = server.watchdog.wait();
        if wait_timeout(&mut server.master, STOP_TIMEOUT).is_none() {
            // Not yet reaped, so its pid still names the process group.
            let _ = Command::new("sh")
                .args(["-c", "kill -s KILL -- \"-$1\"", "sh"])
                .arg(server.master.id().to_string())
                .status();
            let _ = server.master.kill();
            let _ = server.master.wait();
        }
    }

    /// Starts the server again after [`Dovecot::stop`] (or stops it first),
    /// with the same ports, users and mail.
    pub fn restart(&mut self) -> io::Result<()> {
        self.stop();
        self.launch()
    }

    /// The instance's directory: config, `dovecot.log`, `ca.pem`, users and
    /// mail (under `home/<user>/Maildir`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn config_path(&self) -> PathBuf {
        self.dir.join("dovecot.conf")
    }

    fn users_dir(&self) -> PathBuf {
        self.dir.join("auth").join("users")
    }

    /// Creates the directory layout, TLS material and master user, keeping
    /// whatever a reused dir already has.
    fn prepare_dir(&mut self, master_password: Option<&str>) -> io::Result<()> {
        // The account must be able to reach and write everything Dovecot uses.
        self.own(self.run_dir.path())?;
        fs::set_permissions(self.run_dir.path(), fs::Permissions::from_mode(0o755))?;
        self.own(&self.dir)?;
        for sub in [
            "auth",
            "auth/users",
            "auth/oauth2-grants",
            "tls",
            "home",
            "state",
        ] {
            let path = self.dir.join(sub);
            fs::create_dir_all(&path)?;
            fs::set_permissions(&path, fs::Permissions::from_mode(0o700))?;
            self.own(&path)?;
        }
        self.make_tls()?;
        self.ca_pem = fs::read_to_string(self.ca_path())?;

        let master_file = self.dir.join("auth").join("master-users");
        let prefix = format!("{MASTER_USER}:{{PLAIN}}");
        let existing = fs::read_to_string(&master_file).unwrap_or_default();
        self.master_password = match (existing.trim_end().strip_prefix(&prefix), master_password) {
            (Some(password), None) => password.to_string(),
            (Some(password), Some(wanted)) if password == wanted => password.to_string(),
            (_, wanted) => {
                let password = match wanted {
                    Some(w) => w.to_string(),
                    None => random_hex(16)?,
                };
                self.write_private(&master_file, format!("{prefix}{password}\n").as_bytes())?;
                password
            }
        };
        Ok(())
    }

    /// Makes a CA and a server certificate for localhost/127.0.0.1 signed by
    /// it (P-256 keys: fast to make and accepted by rustls and openssl).
    fn make_tls(&self) -> io::Result<()> {
        let tls = self.dir.join("tls");
        let (ca_key, ca_cert) = (tls.join("ca.key"), self.ca_path());
        let (key, csr, cert) = (
            tls.join("server.key"),
            tls.join("server.csr"),
            tls.join("server.pem"),
        );
        if cert.exists() && ca_cert.exists() {
            return Ok(());
        }
        let path = |file: &Path| file.display().to_string();
        let new_key = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
        openssl(&format!(
            "req -x509 {new_key} -keyout {} -out {} -days 3650 -subj /CN=mailvault-test-CA \
             -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign",
            path(&ca_key),
            path(&ca_cert),
        ))?;
        openssl(&format!(
            "req -new {new_key} -keyout {} -out {} -subj /CN=localhost",
            path(&key),
            path(&csr),
        ))?;
        let extensions = tls.join("server.ext");
        fs::write(
            &extensions,
            "subjectAltName = DNS:localhost, IP:127.0.0.1\n\
             basicConstraints = critical, CA:FALSE\n\
             keyUsage = critical, digitalSignature, keyEncipherment\n\
             extendedKeyUsage = serverAuth\n",
        )?;
        openssl(&format!(
            "x509 -req -in {} -CA {} -CAkey {} -set_serial 0x{} -days 825 -extfile {} -out {}",
            path(&csr),
            path(&ca_cert),
            path(&ca_key),
            random_hex(12)?,
            path(&extensions),
            path(&cert),
        ))?;
        for file in [&ca_key, &key] {
            fs::set_permissions(file, fs::Permissions::from_mode(0o600))?;
        }
        fs::set_permissions(&ca_cert, fs::Permissions::from_mode(0o644))?;
        for file in [&ca_key, &ca_cert, &key, &csr, &cert, &extensions] {
            self.own(file)?;
        }
        Ok(())
    }

    fn write_config(&self, auth_failure_delay_ms: u32) -> io::Result<()> {
        let dir = self.dir.display();
        let (auth, passdbs) = match &self.oauth2 {
            None => (
                "disable_plaintext_auth = no\nauth_mechanisms = plain login".to_string(),
                format!(
                    "# SASL PLAIN with authzid=<user> and authcid={MASTER_USER} logs in as <user>.
passdb {{
  driver = passwd-file
  args = {dir}/auth/master-users
  master = yes
  result_success = continue
}}
passdb {{
  driver = passwd-file
  args = {dir}/auth/users/%u
}}"
                ),
            ),
            Some(oauth2) => {
                self.write_oauth2_config(oauth2)?;
                (
                    format!(
                        "disable_plaintext_auth = yes\nauth_mechanisms = {}",
                        oauth2.mechanisms.join(" ")
                    ),
                    format!(
                        "# The token must be valid (introspection), and its principal granted the
# mailbox (a file per grant; a missing one fails the login).
passdb {{
  driver = oauth2
  mechanisms = {mechanisms}
  args = {dir}/auth/oauth2.conf.ext
  result_success = continue-ok
  result_failure = return-fail
  result_internalfail = return-fail
}}
passdb {{
  driver = passwd-file
  args = {dir}/auth/oauth2-grants/%{{passdb:mailvault_principal}}/%u
  result_success = return-ok
  result_failure = return-fail
  result_internalfail = return-fail
}}",
                        mechanisms = oauth2.mechanisms.join(" "),
                    ),
                )
            }
        };
        let Account {
            user,
            group,
            uid,
            gid,
            ..
        } = &self.account;
        let special_use: String = ["Drafts", "Junk", "Trash", "Sent"]
            .iter()
            .map(|name| {
                format!(
                    "  mailbox {name} {{\n    special_use = \\{name}\n    auto = subscribe\n  }}\n"
                )
            })
            .collect();
        let config = format!(
            r"# One private Dovecot instance for mailvault's tests (testkit/dovecot.rs).
base_dir = {run}
state_dir = {dir}/state
log_path = {dir}/dovecot.log
protocols = imap
listen = 127.0.0.1
# Unique, so the readiness check knows it is talking to this instance.
login_greeting = {greeting}
default_internal_user = {user}
default_internal_group = {group}
default_login_user = {user}
mail_uid = {uid}
mail_gid = {gid}
first_valid_uid = {uid}
first_valid_gid = {gid}
{layout}
# Benchmarks open many parallel sessions per user (default limit: 10).
mail_max_userip_connections = 100
{auth}
auth_failure_delay = {delay} secs
auth_verbose = yes
ssl = yes
ssl_cert = <{dir}/tls/server.pem
ssl_key = <{dir}/tls/server.key
ssl_min_protocol = TLSv1.2

# Rootless, so no chroot. Mode 0 keeps the auth process from connecting to
# anvil's penalty socket, which switches off the growing delay after failures.
service anvil {{
  chroot =
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
service imap-login {{
  chroot =
  inet_listener imap {{
    address = 127.0.0.1
    port = {imap}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {imaps}
    ssl = yes
  }}
}}

namespace inbox {{
  inbox = yes
  separator = {separator}
{special_use}}}

{passdbs}
userdb {{
  driver = passwd-file
  args = {dir}/auth/users/%u
}}
",
            run = self.run_dir.path().display(),
            greeting = self.greeting,
            separator = self.separator,
            layout = if self.separator == '/' {
                "# LAYOUT=fs: '/' makes directories, so folder names may contain dots.\n\
                 mail_location = maildir:~/Maildir:LAYOUT=fs"
            } else {
                "# LAYOUT=index: names live in the index, so they may contain '/'.\n\
                 mail_location = maildir:~/Maildir:LAYOUT=index"
            },
            delay = auth_failure_delay_ms.div_ceil(1000),
            imap = self.imap_port,
            imaps = self.imaps_port,
            auth = auth,
            passdbs = passdbs,
        );
        let path = self.config_path();
        fs::write(&path, config)?;
        self.own(&path)
    }

    /// The oauth2 passdb's settings. The user name check is switched off (a constant
    /// format on both sides): app-only tokens name no user; the grants passdb decides.
    fn write_oauth2_config(&self, oauth2: &OAuth2Login) -> io::Result<()> {
        let path = self.dir.join("auth").join("oauth2.conf.ext");
        let config = format!(
            "introspection_mode = post
introspection_url = {url}
username_attribute = mailvault_principal
username_format = any
active_attribute = active
active_value = true
pass_attrs = mailvault_principal=%{{oauth2:mailvault_principal}}
timeout_msecs = 10000
",
            url = oauth2.introspection_url,
        );
        self.write_private(&path, config.as_bytes())
    }

    /// Spawns the master (and its watchdog) and waits until it greets.
    fn launch(&mut self) -> io::Result<()> {
        let stderr = File::create(self.dir.join("dovecot.stderr"))?;
        let mut command = Command::new(&self.dovecot_bin);
        command
            .arg("-F")
            .arg("-c")
            .arg(self.config_path())
            .current_dir(self.run_dir.path())
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        self.account.apply(&mut command);
        let mut master = command.spawn()?;
        let watchdog = Command::new("sh")
            .arg("-c")
            .arg("read -r line; kill -s TERM -- \"-$1\" 2>/dev/null")
            .arg("mailvault-dovecot-watchdog")
            .arg(master.id().to_string())
            // Its own group, so a Ctrl-C meant for the tests cannot kill it
            // before it has passed the stop on.
            .process_group(0)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let watchdog = match watchdog {
            Ok(watchdog) => watchdog,
            Err(e) => {
                let _ = master.kill();
                let _ = master.wait();
                return Err(e);
            }
        };
        self.server = Some(Server { master, watchdog });
        let ready = self.wait_ready();
        if ready.is_err() {
            self.stop();
        }
        ready
    }

    fn wait_ready(&mut self) -> io::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let exited = match self.server.as_mut() {
                Some(server) => server.master.try_wait()?,
                None => return Err(io::Error::other("dovecot is not running")),
            };
            if let Some(status) = exited {
                return Err(
                    self.startup_error(&format!("dovecot exited during startup ({status})"))
                );
            }
            let imaps = SocketAddr::from((Ipv4Addr::LOCALHOST, self.imaps_port));
            if self.greets() && TcpStream::connect_timeout(&imaps, POLL_INTERVAL * 10).is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(self.startup_error(&format!(
                    "dovecot did not greet on 127.0.0.1:{} within {} s",
                    self.imap_port,
                    READY_TIMEOUT.as_secs()
                )));
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    /// Whether the plain port answers with this instance's `* OK` greeting.
    fn greets(&self) -> bool {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.imap_port));
        let Ok(stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
            return false;
        };
        let mut line = String::new();
        stream
            .set_read_timeout(Some(Duration::from_secs(2)))
            .is_ok()
            && BufReader::new(stream).read_line(&mut line).is_ok()
            && line.starts_with("* OK")
            && line.contains(&self.greeting)
    }

    /// An error carrying the tail of Dovecot's log and stderr; of kind
    /// `AddrInUse` when a port was taken, so `start` can retry.
    fn startup_error(&self, what: &str) -> io::Error {
        let log = tail(&self.dir.join("dovecot.log"), 20);
        let stderr = tail(&self.dir.join("dovecot.stderr"), 20);
        let kind = if log.contains("Address already in use")
            || stderr.contains("Address already in use")
        {
            io::ErrorKind::AddrInUse
        } else {
            io::ErrorKind::Other
        };
        io::Error::new(
            kind,
            format!(
                "{what} (config {}).\n--- dovecot.log (tail) ---\n{log}--- stderr ---\n{stderr}",
                self.config_path().display()
            ),
        )
    }

    fn doveadm_output(&self, args: &[&str]) -> io::Result<Output> {
        let mut command = Command::new(&self.doveadm_bin);
        command
            .arg("-c")
            .arg(self.config_path())
            .args(args)
            .current_dir(self.run_dir.path())
            .stdin(Stdio::null());
        self.account.apply(&mut command);
        command.output()
    }

    /// Creates the folder if needed; returns its Maildir directory (asked for after
    /// creating: in the index layout a folder's directory is named at creation).
    fn ensure_folder(&self, user: &str, folder: &str) -> io::Result<PathBuf> {
        check_folder(folder)?;
        let path = || -> io::Result<PathBuf> {
            let out = self.doveadm(&["mailbox", "path", "-u", user, folder])?;
            Ok(PathBuf::from(out.trim_end_matches('\n')))
        };
        let maildir = path().ok().filter(|m| m.join("cur").is_dir());
        match maildir {
            Some(maildir) => Ok(maildir),
            None => {
                self.create_folder(user, folder)?;
                path()
            }
        }
    }

    /// Delivers one message file; returns its base name (the message's GUID).
    fn write_message(
        &self,
        maildir: &Path,
        raw: &[u8],
        internal_date: i64,
        flag_letters: &str,
    ) -> io::Result<String> {
        let name = unique_name(raw.len());
        let tmp = maildir.join("tmp").join(&name);
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(raw)?;
        file.set_modified(unix_time(internal_date))?;
        drop(file);
        self.own(&tmp)?;
        fs::rename(
            &tmp,
            maildir.join("cur").join(format!("{name}:2,{flag_letters}")),
        )?;
        Ok(name)
    }

    /// Writes a file that only the instance's account may read, atomically.
    fn write_private(&self, path: &Path, contents: &[u8]) -> io::Result<()> {
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(contents)?;
        drop(file);
        self.own(&tmp)?;
        fs::rename(&tmp, path)
    }

    fn own(&self, path: &Path) -> io::Result<()> {
        if self.account.switch {
            std::os::unix::fs::chown(path, Some(self.account.uid), Some(self.account.gid))?;
        }
        Ok(())
    }
}

impl Drop for Dovecot {
    /// Stops Dovecot; the temp dirs (if any) are removed as the fields drop.
    fn drop(&mut self) {
        self.stop();
    }
}

impl Account {
    fn pick(euid: u32, egid: u32) -> io::Result<Account> {
        if euid != 0 {
            return Ok(Account {
                user: id(&["-un"])?,
                group: id(&["-gn"])?,
                uid: euid,
                gid: egid,
                switch: false,
            });
        }
        for user in ["dovecot", "nobody"] {
            if let Ok(uid) = id(&["-u", user]) {
                return Ok(Account {
                    user: user.to_string(),
                    group: id(&["-gn", user])?,
                    uid: parse_id(&uid)?,
                    gid: parse_id(&id(&["-g", user])?)?,
                    switch: true,
                });
            }
        }
        Err(io::Error::new(
            io::ErrorKind::NotFound,
            "running as root, but neither a `dovecot` nor a `nobody` account exists to run Dovecot as",
        ))
    }

    fn apply(&self, command: &mut Command) {
        if self.switch {
            command.uid(self.uid).gid(self.gid);
        }
    }
}

/// Finds dovecot and doveadm, installing them first if allowed (root).
fn locate_binaries(may_install: bool) -> io::Result<(PathBuf, PathBuf)> {
    /// Parallel tests must not run apt-get at the same time.
    static INSTALL: Mutex<()> = Mutex::new(());
    let find = || Some((find_program("dovecot")?, find_program("doveadm")?));
    if let Some(found) = find() {
        return Ok(found);
    }
    if !may_install {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            "Dovecot is not installed (no dovecot/doveadm on PATH or in /usr/sbin, /usr/bin); \
             install it with `apt-get install dovecot-imapd` (Debian/Ubuntu) or run as root \
             to have it installed automatically",
        ));
    }
    let _guard = INSTALL.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(found) = find() {
        return Ok(found);
    }
    install_dovecot()?;
    find().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            "installed dovecot-imapd, but still found no dovecot/doveadm binary",
        )
    })
}

fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(BINARY_DIRS.iter().map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| {
            fs::metadata(candidate)
                .map(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

/// Installs `dovecot-imapd` with apt-get. Package scripts would start the
/// system-wide Dovecot on all addresses; a temporary policy-rc.d that denies
/// service starts (Debian's documented way, see invoke-rc.d(8)) prevents that
/// unless the machine already has its own policy.
fn install_dovecot() -> io::Result<()> {
    struct DenyServiceStarts;
    impl Drop for DenyServiceStarts {
        fn drop(&mut self) {
            let _ = fs::remove_file(POLICY_RC_D);
        }
    }
    let _policy = if Path::new(POLICY_RC_D).exists() {
        None
    } else {
        fs::write(POLICY_RC_D, "#!/bin/sh\nexit 101\n")?;
        fs::set_permissions(POLICY_RC_D, fs::Permissions::from_mode(0o755))?;
        Some(DenyServiceStarts)
    };
    for args in [
        &["-q", "update"][..],
        &[
            "-q",
            "-y",
            "--no-install-recommends",
            "install",
            "dovecot-imapd",
        ][..],
    ] {
        let out = Command::new("apt-get")
            .args(["-o", "DPkg::Lock::Timeout=300"])
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("cannot run apt-get to install Dovecot: {e}"),
                )
            })?;
        if !out.status.success() {
            return Err(command_error(&format!("apt-get {}", args.join(" ")), &out));
        }
    }
    Ok(())
}

/// Runs openssl with whitespace-separated arguments (our paths have no
/// whitespace, see `check_config_path`).
fn openssl(args: &str) -> io::Result<()> {
    let out = Command::new("openssl")
        .args(args.split_whitespace())
        .stdin(Stdio::null())
        .output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(command_error(&format!("openssl {args}"), &out))
    }
}

fn id(args: &[&str]) -> io::Result<String> {
    let out = Command::new("id")
        .args(args)
        .stdin(Stdio::null())
        .output()?;
    if !out.status.success() {
        return Err(command_error(&format!("id {}", args.join(" ")), &out));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn parse_id(text: &str) -> io::Result<u32> {
    text.parse()
        .map_err(|_| io::Error::other(format!("`id` printed {text:?}, not a number")))
}

fn command_error(what: &str, out: &Output) -> io::Error {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let output: Vec<&str> = [stderr.trim(), stdout.trim()]
        .into_iter()
        .filter(|text| !text.is_empty())
        .collect();
    io::Error::other(format!(
        "{what} failed ({}): {}",
        out.status,
        output.join("\n")
    ))
}

/// Free ports for the listeners not given, found by binding 127.0.0.1:0.
/// Another process may take one before Dovecot binds it; `start` retries.
fn pick_ports(imap: Option<u16>, imaps: Option<u16>) -> io::Result<(u16, u16)> {
    let first = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    let second = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    let imap = imap.unwrap_or(first.local_addr()?.port());
    let imaps = imaps.unwrap_or(second.local_addr()?.port());
    if imap == imaps {
        return Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!("imap and imaps would both use port {imap}"),
        ));
    }
    Ok((imap, imaps))
}

/// Dovecot's config syntax has no escaping that works for every setting, so
/// paths that end up in it are kept to characters that need none.
fn check_config_path(path: &Path) -> io::Result<()> {
    let text = path.to_str().unwrap_or("\u{fffd}");
    if text
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-+@=,".contains(c))
    {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} cannot be used in dovecot.conf: only ASCII letters, digits and /._-+@=, are allowed",
                path.display()
            ),
        ))
    }
}

/// Lower-cases a login name (as Dovecot does) and refuses ones that would
/// break the passwd-file format or escape the users directory.
fn normalize_user(user: &str) -> io::Result<String> {
    let ok = !user.is_empty()
        && !user.starts_with('.')
        && user
            .chars()
            .all(|c| c.is_ascii_graphic() && !":/\\%*\"'".contains(c));
    if ok {
        Ok(user.to_ascii_lowercase())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("user name {user:?} must be printable ASCII without : / \\ % * quotes or a leading dot"),
        ))
    }
}

fn check_folder(folder: &str) -> io::Result<()> {
    // doveadm would take a leading '-' for an option.
    if folder.is_empty() || folder.starts_with('-') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("folder name {folder:?} must be non-empty and not start with '-'"),
        ));
    }
    Ok(())
}

/// Refuses messages that Dovecot would not serve byte for byte.
fn check_storable(raw: &[u8]) -> io::Result<()> {
    let problem = raw.iter().enumerate().find_map(|(i, &byte)| match byte {
        0 => Some((i, "a NUL byte, which Dovecot sends as 0x80")),
        b'\n' if i == 0 || raw[i - 1] != b'\r' => {
            Some((i, "a bare LF, which Dovecot sends as CRLF"))
        }
        _ => None,
    });
    match problem {
        None => Ok(()),
        Some((offset, what)) => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("message has {what} at offset {offset}; use CRLF line endings and no NUL bytes so it round-trips exactly"),
        )),
    }
}

/// Splits IMAP flags into sorted Maildir info letters and keywords.
fn maildir_flags(flags: &[&str]) -> io::Result<(String, Vec<String>)> {
    let mut letters = Vec::new();
    let mut keywords = Vec::new();
    for &flag in flags {
        let letter = match flag.to_ascii_lowercase().as_str() {
            "\\answered" => 'R',
            "\\deleted" => 'T',
            "\\draft" => 'D',
            "\\flagged" => 'F',
            "\\seen" => 'S',
            _ if !flag.is_empty()
                && flag
                    .chars()
                    .all(|c| c.is_ascii_graphic() && !"(){%*\"\\]".contains(c)) =>
            {
                keywords.push(flag.to_string());
                continue;
            }
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("cannot set flag {flag:?}: not \\Answered, \\Deleted, \\Draft, \\Flagged, \\Seen or a valid keyword"),
                ))
            }
        };
        letters.push(letter);
    }
    letters.sort_unstable();
    letters.dedup();
    Ok((letters.into_iter().collect(), keywords))
}

/// A unique Maildir base name that carries the size, so Dovecot need not
/// stat the file for RFC822.SIZE (W= equals S= as the message is all CRLF).
///
/// Dovecot gives new files UIDs sorted by the leading seconds and then the
/// number after `M`, so a per-process start time plus a counter makes UIDs
/// follow delivery order.
fn unique_name(size: usize) -> String {
    static STARTED: OnceLock<i64> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let started = *STARTED.get_or_init(unix_now);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!(
        "{started}.M{n}P{}.mailvault,S={size},W={size}",
        std::process::id()
    )
}

/// Sleeps into the next wall-clock second, after which Dovecot sees changed passwd-files.
fn wait_for_next_second() {
    let into_second = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos();
    thread::sleep(
        Duration::from_nanos(1_000_000_000 - u64::from(into_second)) + Duration::from_millis(10),
    );
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn unix_time(secs: i64) -> SystemTime {
    let offset = Duration::from_secs(secs.unsigned_abs());
    if secs >= 0 {
        UNIX_EPOCH + offset
    } else {
        UNIX_EPOCH - offset
    }
}

fn random_hex(bytes: usize) -> io::Result<String> {
    let mut buf = vec![0; bytes];
    File::open("/dev/urandom")?.read_exact(&mut buf)?;
    Ok(hex(&buf))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..]
        .iter()
        .map(|line| format!("{line}\n"))
        .collect()
}

fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => thread::sleep(POLL_INTERVAL),
            _ => return None,
        }
    }
}
