//! A private OpenLDAP `slapd` for integration tests.
//!
//! Every [`Slapd`] owns a fresh temporary directory with its own cn=config
//! (`slapd.d`, built offline with `slapd -T add -n0`, the same as `slapadd`),
//! an mdb database for [`SUFFIX`], its log and a password file, and listens
//! on a free loopback port. So tests can run in parallel without sharing
//! state, need neither root nor the system's slapd service, and leave
//! nothing behind: dropping the value kills the server and removes the
//! directory.
//!
//! Needs the `slapd` binary (Debian package `slapd`) and `ldapmodify` and
//! `ldapwhoami` on `PATH` (Debian package `ldap-utils`). Where a
//! distribution keeps things elsewhere than Debian, Fedora, Arch or Alpine,
//! `SLAPD_BIN`, `SLAPD_MODULE_DIR` and `SLAPD_SCHEMA_DIR` point at them.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// Naming context of the test database; its entry exists from the start.
pub const SUFFIX: &str = "dc=example,dc=org";

/// Where [`SAMPLE_LDIF`] keeps its people.
pub const PEOPLE_DN: &str = "ou=people,dc=example,dc=org";

/// An identity of [`SAMPLE_LDIF`] that may read the directory, as a
/// MailboxSet's `bindSecretRef` would name it.
pub const READER_DN: &str = "cn=reader,dc=example,dc=org";

/// The password of [`READER_DN`].
pub const READER_PASSWORD: &str = "reader-pw-7f3a";

/// A small directory for [`Slapd::add_ldif`], with a case of each kind the
/// directory source must handle: the reader identity; under [`PEOPLE_DN`]
/// alice (one address), bob (two), carol (none), dave (one, and
/// `employeeType: disabled`), a person without `uid` and a device; under
/// `ou=groups`, `staff` (groupOfNames: alice, and carol spelled in other case
/// and spacing), `ops` (posixGroup: bob) and `auditors` (groupOfUniqueNames:
/// dave, with an optional UID).
pub const SAMPLE_LDIF: &str = "\
dn: cn=reader,dc=example,dc=org
objectClass: organizationalRole
objectClass: simpleSecurityObject
cn: reader
userPassword: reader-pw-7f3a

dn: ou=people,dc=example,dc=org
objectClass: organizationalUnit
ou: people

dn: uid=alice,ou=people,dc=example,dc=org
objectClass: inetOrgPerson
uid: alice
cn: Alice Archer
sn: Archer
mail: alice@example.org

dn: uid=bob,ou=people,dc=example,dc=org
objectClass: inetOrgPerson
uid: bob
cn: Bob Baker
sn: Baker
mail: bob@example.org
mail: robert.baker@example.org

dn: uid=carol,ou=people,dc=example,dc=org
objectClass: inetOrgPerson
uid: carol
cn: Carol Cook
sn: Cook

dn: uid=dave,ou=people,dc=example,dc=org
objectClass: inetOrgPerson
uid: dave
cn: Dave Dean
sn: Dean
employeeType: disabled
mail: dave@example.org

dn: cn=No Uid,ou=people,dc=example,dc=org
objectClass: inetOrgPerson
cn: No Uid
sn: Uid
mail: nouid@example.org

dn: cn=printer,ou=people,dc=example,dc=org
objectClass: device
cn: printer

dn: ou=groups,dc=example,dc=org
objectClass: organizationalUnit
ou: groups

dn: cn=staff,ou=groups,dc=example,dc=org
objectClass: groupOfNames
cn: staff
member: uid=alice,ou=people,dc=example,dc=org
member: UID=Carol, OU=People, DC=Example, DC=Org

dn: cn=ops,ou=groups,dc=example,dc=org
objectClass: posixGroup
cn: ops
gidNumber: 1000
memberUid: bob

dn: cn=auditors,ou=groups,dc=example,dc=org
objectClass: groupOfUniqueNames
cn: auditors
uniqueMember: uid=dave,ou=people,dc=example,dc=org#'0101'B
";

/// Manager of the test database. Size limits do not apply to it, so tests
/// that exercise limits must search as another identity.
const ROOT_DN: &str = "cn=admin,dc=example,dc=org";

/// Manager of cn=config, so that tests can change server settings (size
/// limit, TLS) at run time. It shares the root DN's random password.
const CONFIG_ROOT_DN: &str = "cn=admin,cn=config";

/// `cosine` and `inetorgperson` give person and group classes, `nis` gives
/// `posixGroup`/`memberUid`; `core` is what they build on.
const SCHEMAS: [&str; 4] = ["core", "cosine", "inetorgperson", "nis"];

/// How long a freshly started server may take to accept a bind.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// The free port is found by binding port 0 and releasing it, so another
/// process can take it before slapd does; such a start is tried again.
const START_ATTEMPTS: u32 = 3;

/// Lines of the server log quoted when it fails to start.
const LOG_TAIL_LINES: usize = 30;

/// Where distributions install the back-end modules (Debian and Ubuntu,
/// Fedora and RHEL, Arch and Alpine, a source build). Builds that link
/// `back_mdb` into slapd have no module at all, which is fine too.
const MODULE_DIRS: [&str; 4] = [
    "/usr/lib/ldap",
    "/usr/lib64/openldap",
    "/usr/lib/openldap",
    "/usr/local/libexec/openldap",
];

/// Where distributions install the LDIF schema files.
const SCHEMA_DIRS: [&str; 3] = [
    "/etc/ldap/schema",
    "/etc/openldap/schema",
    "/usr/local/etc/openldap/schema",
];

/// `slapd` lives in an sbin directory, which is often not on a normal
/// user's `PATH`.
const SBIN_DIRS: [&str; 2] = ["/usr/sbin", "/usr/local/sbin"];

/// A running private slapd; see the module documentation.
pub struct Slapd {
    dir: PathBuf,
    child: Option<Child>,
    url: String,
    root_password: String,
}

impl Slapd {
    /// Creates the configuration and database, starts slapd on a free port
    /// of 127.0.0.1 and waits until it accepts a bind as the root DN.
    ///
    /// The server has no size limit until [`Slapd::set_size_limit`] sets
    /// one, and lets anyone read everything except `userPassword`.
    pub fn start() -> io::Result<Slapd> {
        Self::start_with_entries("")
    }

    /// [`Slapd::start`] with the entries of `ldif` (records without `changetype`, below
    /// [`SUFFIX`]) loaded before the server starts, as `slapadd` does: a directory of a
    /// hundred thousand users loads in seconds, where adding them over LDAP takes minutes.
    pub fn start_with_entries(ldif: &str) -> io::Result<Slapd> {
        let slapd_bin = find_slapd()?;
        let mut slapd = Slapd {
            dir: make_temp_dir()?,
            child: None,
            url: String::new(),
            root_password: random_hex(16)?,
        };
        // From here on an early return drops `slapd`, which removes the
        // directory again.
        slapd.write_password_file()?;
        slapd.build_database(&slapd_bin, ldif)?;
        let mut attempt = 1;
        loop {
            match slapd.spawn(&slapd_bin) {
                Ok(()) => return Ok(slapd),
                Err(StartError::PortTaken) if attempt < START_ATTEMPTS => attempt += 1,
                Err(StartError::PortTaken) => {
                    return Err(io::Error::other(format!(
                        "slapd found its port taken {START_ATTEMPTS} times; log tail:\n{}",
                        slapd.log_tail()
                    )));
                }
                Err(StartError::Io(e)) => return Err(e),
            }
        }
    }

    /// `ldap://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// The database's manager, who may add entries and is not bound by
    /// size limits.
    pub fn root_dn(&self) -> &str {
        ROOT_DN
    }

    /// The random password of [`Slapd::root_dn`].
    pub fn root_password(&self) -> &str {
        &self.root_password
    }

    /// Adds the entries of `ldif` (records without `changetype`) as the
    /// root DN, with `ldapmodify -a`; the error carries its stderr.
    pub fn add_ldif(&self, ldif: &str) -> io::Result<()> {
        self.ldapmodify(ROOT_DN, &["-a"], ldif)
    }

    /// Limits unpaged searches to `n` entries, as Active Directory does
    /// with 1,000, so that only paged searches (RFC 2696) fetch everything.
    /// Unlike OpenLDAP's default, the total over all pages is unlimited,
    /// and pages are as large as the client asks (Active Directory would
    /// shrink pages above its limit; OpenLDAP could only refuse them). The
    /// root DN is exempt from all of this.
    pub fn set_size_limit(&self, n: u32) -> io::Result<()> {
        self.ldapmodify(
            CONFIG_ROOT_DN,
            &[],
            &format!(
                "dn: olcDatabase={{-1}}frontend,cn=config\n\
                 changetype: modify\n\
                 replace: olcSizeLimit\n\
                 olcSizeLimit: size.soft={n} size.hard={n} size.prtotal=unlimited\n"
            ),
        )
    }

    /// Serves StartTLS with this certificate chain and key (PEM), so that
    /// clients' certificate verification can be tested; the tests make the
    /// CA themselves.
    pub fn enable_tls(&self, cert_chain_pem: &str, key_pem: &str) -> io::Result<()> {
        let cert = self.dir.join("server.crt");
        let key = self.dir.join("server.key");
        fs::write(&cert, cert_chain_pem)?;
        write_private(&key, key_pem.as_bytes())?;
        self.ldapmodify(
            CONFIG_ROOT_DN,
            &[],
            &format!(
                "dn: cn=config\n\
                 changetype: modify\n\
                 replace: olcTLSCertificateFile\n\
                 olcTLSCertificateFile: {}\n\
                 -\n\
                 replace: olcTLSCertificateKeyFile\n\
                 olcTLSCertificateKeyFile: {}\n",
                ldif_safe(&cert)?,
                ldif_safe(&key)?
            ),
        )
    }

    /// Kills slapd (SIGKILL: the data is thrown away anyway) and waits for
    /// it; the directory stays until the value is dropped.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Fails only if it has already exited, which is what we want.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn password_file(&self) -> PathBuf {
        self.dir.join("root.pw")
    }

    fn log_file(&self) -> PathBuf {
        self.dir.join("slapd.log")
    }

    /// The LDAP tools read the password from this file (`-y`), which keeps
    /// it out of the process list.
    fn write_password_file(&self) -> io::Result<()> {
        write_private(&self.password_file(), self.root_password.as_bytes())
    }

    /// Builds cn=config and loads the suffix entry (and `entries`) while slapd
    /// is not yet running, which is how slapadd is meant to be used.
    fn build_database(&self, slapd_bin: &Path, entries: &str) -> io::Result<()> {
        let config_dir = self.dir.join("slapd.d");
        let db_dir = self.dir.join("db");
        fs::create_dir(&config_dir)?;
        fs::create_dir(&db_dir)?;

        let config = self.dir.join("config.ldif");
        fs::write(&config, config_ldif(&db_dir, &self.root_password)?)?;
        run_tool(
            Command::new(slapd_bin)
                .args(["-T", "add", "-n", "0", "-F"])
                .arg(&config_dir)
                .arg("-l")
                .arg(&config),
            "slapd -T add -n0 (cn=config)",
        )?;

        let base = self.dir.join("base.ldif");
        fs::write(
            &base,
            format!(
                "dn: {SUFFIX}\nobjectClass: dcObject\nobjectClass: organization\n\
                 o: Example\ndc: example\n\n{entries}"
            ),
        )?;
        run_tool(
            // -q: no consistency checks while loading, as for a bulk import.
            Command::new(slapd_bin)
                .args(["-T", "add", "-q", "-b", SUFFIX, "-F"])
                .arg(&config_dir)
                .arg("-l")
                .arg(&base),
            "slapd -T add (suffix entry)",
        )
    }

    fn spawn(&mut self, slapd_bin: &Path) -> Result<(), StartError> {
        let port = free_port()?;
        self.url = format!("ldap://127.0.0.1:{port}");
        // A fresh log per attempt, so that the port check below does not
        // read an earlier attempt's failure.
        let log = File::create(self.log_file())?;
        // `-d none` keeps slapd in the foreground, so it stays our child
        // and can be killed, and logs only errors (to the log file).
        let child = Command::new(slapd_bin)
            .arg("-F")
            .arg(self.dir.join("slapd.d"))
            .args(["-h", &format!("{}/", self.url), "-d", "none"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("run {}: {e}", slapd_bin.display())))?;
        self.child = Some(child);
        self.wait_ready(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
    }

    fn wait_ready(&mut self, addr: SocketAddr) -> Result<(), StartError> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.exit_status()? {
                self.child = None;
                let tail = self.log_tail();
                if tail.contains("Address already in use") {
                    return Err(StartError::PortTaken);
                }
                return Err(io::Error::other(format!(
                    "slapd exited with {status} before accepting binds; log tail:\n{tail}"
                ))
                .into());
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
                && self.root_bind_works()?
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                self.stop();
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "slapd did not accept a bind on {} within {} s; log tail:\n{}",
                        self.url,
                        READY_TIMEOUT.as_secs(),
                        self.log_tail()
                    ),
                )
                .into());
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn exit_status(&mut self) -> io::Result<Option<ExitStatus>> {
        match self.child.as_mut() {
            Some(child) => child.try_wait(),
            None => Ok(None),
        }
    }

    /// A TCP accept alone is not enough: slapd listens before its
    /// databases are open.
    fn root_bind_works(&self) -> io::Result<bool> {
        let status = Command::new("ldapwhoami")
            .args([
                "-x",
                "-o",
                "nettimeout=2",
                "-H",
                &self.url,
                "-D",
                ROOT_DN,
                "-y",
            ])
            .arg(self.password_file())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map_err(|e| missing_tool("ldapwhoami", e))?;
        Ok(status.success())
    }

    fn ldapmodify(&self, bind_dn: &str, extra_args: &[&str], ldif: &str) -> io::Result<()> {
        let mut child = Command::new("ldapmodify")
            .args(extra_args)
            .args([
                "-x",
                "-o",
                "nettimeout=10",
                "-H",
                &self.url,
                "-D",
                bind_dn,
                "-y",
            ])
            .arg(self.password_file())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| missing_tool("ldapmodify", e))?;
        let mut stdin = child.stdin.take().expect("stdin is piped");
        let input = ldif.to_owned();
        // Written from another thread so that a large LDIF cannot deadlock
        // against a full stderr pipe.
        let writer = thread::spawn(move || stdin.write_all(input.as_bytes()));
        let output = child.wait_with_output()?;
        let written = writer.join().expect("the LDIF writer does not panic");
        if !output.status.success() {
            return Err(io::Error::other(format!(
                "ldapmodify as {bind_dn} on {} failed ({}): {}",
                self.url,
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            )));
        }
        written
    }

    fn log_tail(&self) -> String {
        let mut log = String::new();
        if let Err(e) = File::open(self.log_file()).and_then(|mut f| f.read_to_string(&mut log)) {
            return format!("(no log: {e})");
        }
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
    }
}

impl Drop for Slapd {
    fn drop(&mut self) {
        self.stop();
        // Nothing sensible to do if it fails inside a destructor.
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Why one start attempt failed: a lost race for the port is retried.
enum StartError {
    PortTaken,
    Io(io::Error),
}

impl From<io::Error> for StartError {
    fn from(e: io::Error) -> Self {
        StartError::Io(e)
    }
}

fn config_ldif(db_dir: &Path, password: &str) -> io::Result<String> {
    let mut ldif = String::from("dn: cn=config\nobjectClass: olcGlobal\ncn: config\n\n");
    if let Some(module_dir) = module_dir() {
        ldif.push_str(&format!(
            "dn: cn=module{{0}},cn=config\nobjectClass: olcModuleList\ncn: module{{0}}\n\
             olcModulePath: {}\nolcModuleLoad: back_mdb\n\n",
            ldif_safe(&module_dir)?
        ));
    }
    ldif.push_str("dn: cn=schema,cn=config\nobjectClass: olcSchemaConfig\ncn: schema\n\n");
    let schema_dir = schema_dir()?;
    for schema in SCHEMAS {
        let path = schema_dir.join(format!("{schema}.ldif"));
        let text = fs::read_to_string(&path)
            .map_err(|e| io::Error::new(e.kind(), format!("read {}: {e}", path.display())))?;
        ldif.push_str(text.trim_end());
        ldif.push_str("\n\n");
    }
    ldif.push_str(&format!(
        "dn: olcDatabase={{-1}}frontend,cn=config\n\
         objectClass: olcDatabaseConfig\n\
         objectClass: olcFrontendConfig\n\
         olcDatabase: {{-1}}frontend\n\
         olcSizeLimit: unlimited\n\
         \n\
         dn: olcDatabase={{0}}config,cn=config\n\
         objectClass: olcDatabaseConfig\n\
         olcDatabase: {{0}}config\n\
         olcRootDN: {CONFIG_ROOT_DN}\n\
         olcRootPW: {password}\n\
         \n\
         dn: olcDatabase={{1}}mdb,cn=config\n\
         objectClass: olcDatabaseConfig\n\
         objectClass: olcMdbConfig\n\
         olcDatabase: {{1}}mdb\n\
         olcSuffix: {SUFFIX}\n\
         olcDbDirectory: {}\n\
         olcRootDN: {ROOT_DN}\n\
         olcRootPW: {password}\n\
         olcDbNoSync: TRUE\n\
         olcDbMaxSize: 4294967296\n\
         olcDbIndex: objectClass,uid,member,uniqueMember,memberUid eq\n\
         olcAccess: {{0}}to attrs=userPassword by anonymous auth by self read by * none\n\
         olcAccess: {{1}}to * by * read\n",
        ldif_safe(db_dir)?
    ));
    Ok(ldif)
}

/// Paths go into LDIF as plain values, which must not start with a space,
/// `:` or `<` and must be ASCII; a temporary directory elsewhere would need
/// base64, which is not worth it for tests.
fn ldif_safe(path: &Path) -> io::Result<&str> {
    match path.to_str() {
        Some(s) if s.is_ascii() && !s.starts_with([' ', ':', '<']) && !s.contains('\n') => Ok(s),
        _ => Err(io::Error::other(format!(
            "path {} cannot go into LDIF as is; set TMPDIR to a plain ASCII path",
            path.display()
        ))),
    }
}

fn find_slapd() -> io::Result<PathBuf> {
    if let Some(path) = std::env::var_os("SLAPD_BIN") {
        return Ok(PathBuf::from(path));
    }
    let path_dirs = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    path_dirs
        .into_iter()
        .chain(SBIN_DIRS.iter().map(PathBuf::from))
        .map(|dir| dir.join("slapd"))
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                "slapd not found on PATH or in /usr/sbin, /usr/local/sbin; \
                 install OpenLDAP's server (Debian: slapd) or set SLAPD_BIN",
            )
        })
}

fn module_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("SLAPD_MODULE_DIR") {
        return Some(PathBuf::from(dir));
    }
    MODULE_DIRS
        .iter()
        .map(PathBuf::from)
        .find(|dir| dir.join("back_mdb.so").exists() || dir.join("back_mdb.la").exists())
}

fn schema_dir() -> io::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("SLAPD_SCHEMA_DIR") {
        return Ok(PathBuf::from(dir));
    }
    SCHEMA_DIRS
        .iter()
        .map(PathBuf::from)
        .find(|dir| dir.join("core.ldif").is_file())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "no OpenLDAP schema directory (looked in {}); set SLAPD_SCHEMA_DIR",
                    SCHEMA_DIRS.join(", ")
                ),
            )
        })
}

fn run_tool(command: &mut Command, what: &str) -> io::Result<()> {
    let output = command
        .stdin(Stdio::null())
        .output()
        .map_err(|e| io::Error::new(e.kind(), format!("run {what}: {e}")))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "{what} failed ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr).trim()
        )))
    }
}

fn missing_tool(tool: &str, e: io::Error) -> io::Error {
    if e.kind() == io::ErrorKind::NotFound {
        io::Error::new(
            e.kind(),
            format!("{tool} not found on PATH; install OpenLDAP's clients (Debian: ldap-utils)"),
        )
    } else {
        io::Error::new(e.kind(), format!("run {tool}: {e}"))
    }
}

/// Asks the kernel for a port that is free right now.
fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

/// The directory holds the passwords, hence owner-only.
fn make_temp_dir() -> io::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("mailvault-slapd-{}", random_hex(8)?));
    fs::DirBuilder::new().mode(0o700).create(&dir)?;
    Ok(dir)
}

fn write_private(path: &Path, contents: &[u8]) -> io::Result<()> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?
        .write_all(contents)
}

/// Random bytes from the kernel, as hex; enough for throwaway passwords and
/// directory names without pulling a random-number crate into the project.
fn random_hex(bytes: usize) -> io::Result<String> {
    let mut buf = vec![0u8; bytes];
    File::open("/dev/urandom")?.read_exact(&mut buf)?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}
