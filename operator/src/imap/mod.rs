//! The IMAP side of archiving: connecting (implicit TLS, STARTTLS, plain), logging in
//! (LOGIN, SASL PLAIN with an authorization identity for master users, or an OAuth2 access
//! token with SASL OAUTHBEARER or XOAUTH2), listing folders,
//! and reading messages without changing the mailbox: folders are opened with EXAMINE and
//! bodies fetched with `BODY.PEEK[]`, so that not even `\Seen` changes.
//!
//! Every command is bounded by the profile's timeout; a fetch is bounded per response, so a
//! large but flowing download is never cut off while a silent server is.

mod oauth2;
mod stream;
pub mod utf7;

use std::collections::HashSet;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, FixedOffset};
use futures::{Stream, StreamExt, TryStreamExt};
use tokio::net::TcpStream;

use crate::oauth2::ImapTokens;
use crate::resources::Security;
use crate::sensitive::Sensitive;
use stream::ImapStream;

/// Where and how to connect.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub host: String,
    pub port: u16,
    pub security: Security,
    pub insecure_skip_tls_verify: bool,
    pub extra_ca_pem: Option<Vec<u8>>,
    pub timeout: Duration,
}

/// How to log in.
#[derive(Clone, Debug)]
pub enum Credentials {
    /// The user's own name and password (IMAP LOGIN).
    User { login: String, password: Sensitive },
    /// A master user acting for `authorization_identity` (SASL PLAIN, RFC 4616).
    Master {
        authorization_identity: String,
        master_user: String,
        password: Sensitive,
    },
    /// An app logging in as `user` (the mailbox address) with an OAuth2 access token,
    /// fetched (or taken from the cache) right before each login.
    OAuth2 { user: String, tokens: ImapTokens },
}

impl Credentials {
    /// Who we log in as, for messages (never the password).
    pub fn describe(&self) -> String {
        match self {
            Credentials::User { login, .. } => login.clone(),
            Credentials::Master {
                authorization_identity,
                master_user,
                ..
            } => format!("{authorization_identity} (via master user {master_user})"),
            Credentials::OAuth2 { user, .. } => format!("{user} (OAuth2)"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ImapError {
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("TLS with {host} failed: {message}")]
    Tls { host: String, message: String },
    #[error("login as {who} failed: {message}")]
    Login { who: String, message: String },
    #[error("no answer from the server within {seconds} s while {during}")]
    Timeout { seconds: u64, during: String },
    #[error("{during}: {message}")]
    Command { during: String, message: String },
    #[error("the server closed the connection while {during}")]
    Closed { during: String },
    /// No token, no mechanism for it, or no TLS to send it over.
    #[error("OAuth2 login as {who}: {message}")]
    OAuth2 {
        who: String,
        message: String,
        permanent: bool,
    },
}

impl ImapError {
    /// Errors that no retry will fix (a wrong password), as opposed to a server that is
    /// down or slow.
    pub fn is_permanent(&self) -> bool {
        match self {
            ImapError::Login { .. } => true,
            ImapError::OAuth2 { permanent, .. } => *permanent,
            _ => false,
        }
    }
}

type Result<T> = std::result::Result<T, ImapError>;

/// A folder as listed by the server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Folder {
    /// The name as the server spells it (modified UTF-7), for EXAMINE.
    pub raw: String,
    /// UTF-8 path segments (split at the server's hierarchy delimiter). A `/` inside a
    /// level's name, possible on servers with another delimiter, is shown as that
    /// delimiter, which no level's name can contain: `a/b` on a server with `.` between
    /// levels is the level `a.b`, never the folder `b` inside `a`.
    pub segments: Vec<String>,
    /// Special use (RFC 6154), if the server says.
    pub special_use: Option<SpecialUse>,
    /// Whether [`Folder::path`] tells this folder from every other: the server sent its
    /// name in the one valid encoding, and the name needed no escaping. Otherwise (a name
    /// that is not modified UTF-7, a `/` inside a level), the archive keys the folder by
    /// `raw`.
    pub named_by_path: bool,
}

impl Folder {
    /// The UTF-8 path with `/` between levels, as users write it in include/exclude patterns.
    pub fn path(&self) -> String {
        self.segments.join("/")
    }

    /// A folder as listed: `raw` the server's name, `delimiter` its hierarchy delimiter.
    pub fn from_listing(
        raw: String,
        delimiter: Option<&str>,
        special_use: Option<SpecialUse>,
    ) -> Folder {
        let decoded = utf7::decode(&raw);
        let canonical = decoded.as_deref().is_some_and(|d| utf7::encode(d) == raw);
        let name = decoded.unwrap_or_else(|| raw.clone());
        let (segments, escaped): (Vec<String>, bool) = match delimiter {
            Some(d) if !d.is_empty() => {
                let segments: Vec<String> = name.split(d).map(|s| s.replace('/', d)).collect();
                let escaped = d != "/" && name.contains('/');
                (segments, escaped)
            }
            // A flat server: every name is one level, and the path is the name.
            _ => (vec![name], false),
        };
        Folder {
            raw,
            segments,
            special_use,
            named_by_path: canonical && !escaped,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpecialUse {
    Sent,
    Trash,
    Junk,
    Drafts,
    Other,
}

/// What EXAMINE tells about a folder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FolderStatus {
    pub uid_validity: u32,
    pub exists: u32,
    pub uid_next: Option<u32>,
}

/// Size, date and flags of a message, fetched before deciding whether to download it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MessageMeta {
    pub uid: u32,
    pub size: u64,
    pub internal_date: Option<DateTime<FixedOffset>>,
    pub flags: Vec<String>,
}

/// A downloaded message; `bytes` is `None` when the server sent no body for it.
pub struct FetchedMessage {
    pub uid: u32,
    /// Its flags as the body was read.
    pub flags: Vec<String>,
    pub bytes: Option<Bytes>,
}

/// The body of a FETCH response, left in the buffer the response was read into rather than
/// copied out: no second allocation and copy of every message, and a large message is in
/// memory once, not twice.
struct Body(async_imap::types::Fetch);

impl AsRef<[u8]> for Body {
    fn as_ref(&self) -> &[u8] {
        self.0.body().unwrap_or_default()
    }
}

/// A logged-in IMAP session.
pub struct Session {
    inner: async_imap::Session<ImapStream>,
    timeout: Duration,
    /// The server's capabilities, asked for only when something needs one (the deletion
    /// pass), so that archiving costs no extra round trip.
    capabilities: Option<HashSet<String>>,
}

impl Session {
    /// Connects, secures the connection as configured and logs in.
    pub async fn connect(server: &ServerConfig, credentials: &Credentials) -> Result<Session> {
        let seconds = server.timeout.as_secs();
        let addr = format!("{}:{}", server.host, server.port);
        let who = credentials.describe();
        if matches!(credentials, Credentials::OAuth2 { .. }) && server.security == Security::None {
            return Err(ImapError::OAuth2 {
                who,
                message: "refusing to send an access token over an unencrypted connection: \
                          set the server's security to Tls or StartTls"
                    .into(),
                permanent: true,
            });
        }
        let tcp = tokio::time::timeout(
            server.timeout,
            TcpStream::connect((server.host.as_str(), server.port)),
        )
        .await
        .map_err(|_| ImapError::Timeout {
            seconds,
            during: format!("connecting to {addr}"),
        })?
        .map_err(|source| ImapError::Connect {
            addr: addr.clone(),
            source,
        })?;
        let _ = tcp.set_nodelay(true);
        let client = match server.security {
            Security::Tls => {
                let tls = within(
                    server.timeout,
                    "the TLS handshake",
                    stream::tls(tcp, server),
                )
                .await??;
                let mut client = async_imap::Client::new(tls);
                read_greeting(&mut client, server.timeout).await?;
                client
            }
            Security::StartTls => {
                let mut client = async_imap::Client::new(ImapStream::Plain(tcp));
                read_greeting(&mut client, server.timeout).await?;
                within(
                    server.timeout,
                    "starting TLS",
                    client.run_command_and_check_ok("STARTTLS", None),
                )
                .await?
                .map_err(|e| ImapError::Tls {
                    host: server.host.clone(),
                    message: format!("STARTTLS refused: {e}"),
                })?;
                let ImapStream::Plain(tcp) = client.into_inner() else {
                    unreachable!("STARTTLS starts from a plain stream")
                };
                let tls = within(
                    server.timeout,
                    "the TLS handshake",
                    stream::tls(tcp, server),
                )
                .await??;
                async_imap::Client::new(tls)
            }
            Security::None => {
                let mut client = async_imap::Client::new(ImapStream::Plain(tcp));
                read_greeting(&mut client, server.timeout).await?;
                client
            }
        };
        if let Credentials::OAuth2 { user, tokens } = credentials {
            let inner = oauth2::login(client, user, tokens, server, &who).await?;
            return Ok(Session {
                inner,
                timeout: server.timeout,
                capabilities: None,
            });
        }
        let login = async {
            match credentials {
                Credentials::User { login, password } => client
                    .login(login, password.expose())
                    .await
                    .map_err(|(e, _)| e),
                Credentials::Master {
                    authorization_identity,
                    master_user,
                    password,
                } => client
                    .authenticate(
                        "PLAIN",
                        SaslPlain {
                            authorization_identity,
                            authentication_identity: master_user,
                            password,
                        },
                    )
                    .await
                    .map_err(|(e, _)| e),
                Credentials::OAuth2 { .. } => unreachable!("OAuth2 logins are handled above"),
            }
        };
        let inner = within(server.timeout, "logging in", login)
            .await?
            .map_err(|e| ImapError::Login {
                who: who.clone(),
                message: login_failure(&e),
            })?;
        // No CAPABILITY command: nothing here depends on extensions, and it cost every
        // mailbox a round trip.
        Ok(Session {
            inner,
            timeout: server.timeout,
            capabilities: None,
        })
    }

    /// Whether the server announces a capability (asking it once per session).
    pub async fn has_capability(&mut self, name: &str) -> Result<bool> {
        if self.capabilities.is_none() {
            let during = "asking for capabilities";
            let capabilities = within(self.timeout, during, self.inner.capabilities())
                .await?
                .map_err(|e| command_error(during, e))?;
            self.capabilities = Some(
                capabilities
                    .iter()
                    .filter_map(|c| match c {
                        async_imap::types::Capability::Atom(a) => Some(a.to_ascii_uppercase()),
                        _ => None,
                    })
                    .collect(),
            );
        }
        Ok(self
            .capabilities
            .as_ref()
            .is_some_and(|c| c.contains(&name.to_ascii_uppercase())))
    }

    /// Every selectable folder.
    pub async fn folders(&mut self) -> Result<Vec<Folder>> {
        let during = "listing folders";
        let names: Vec<_> = within(self.timeout, during, async {
            self.inner
                .list(Some(""), Some("*"))
                .await?
                .try_collect::<Vec<_>>()
                .await
        })
        .await?
        .map_err(|e| command_error(during, e))?;
        let mut folders = Vec::new();
        for name in &names {
            use async_imap::types::NameAttribute as A;
            let attributes = name.attributes();
            if attributes.iter().any(|a| matches!(a, A::NoSelect))
                || attributes.iter().any(
                    |a| matches!(a, A::Extension(e) if e.eq_ignore_ascii_case("\\NonExistent")),
                )
            {
                continue;
            }
            let special_use = attributes.iter().find_map(|a| match a {
                A::Sent => Some(SpecialUse::Sent),
                A::Trash => Some(SpecialUse::Trash),
                A::Junk => Some(SpecialUse::Junk),
                A::Drafts => Some(SpecialUse::Drafts),
                A::All | A::Archive | A::Flagged => Some(SpecialUse::Other),
                _ => None,
            });
            let raw = unescape_quoted(name.name());
            folders.push(Folder::from_listing(raw, name.delimiter(), special_use));
        }
        folders.sort_by(|a, b| a.segments.cmp(&b.segments));
        Ok(folders)
    }

    /// Opens a folder read-only: archiving never changes a mailbox.
    pub async fn examine(&mut self, folder: &Folder) -> Result<FolderStatus> {
        self.open(folder, false).await
    }

    /// Opens a folder read-write, for the deletion pass only.
    pub async fn select(&mut self, folder: &Folder) -> Result<FolderStatus> {
        self.open(folder, true).await
    }

    async fn open(&mut self, folder: &Folder, read_write: bool) -> Result<FolderStatus> {
        let during = format!("opening folder {:?}", folder.path());
        let command = async {
            if read_write {
                self.inner.select(&folder.raw).await
            } else {
                self.inner.examine(&folder.raw).await
            }
        };
        let mailbox = within(self.timeout, &during, command)
            .await?
            .map_err(|e| command_error(&during, e))?;
        let uid_validity = mailbox.uid_validity.ok_or_else(|| ImapError::Command {
            during: during.clone(),
            message: "the server sent no UIDVALIDITY".into(),
        })?;
        Ok(FolderStatus {
            uid_validity,
            exists: mailbox.exists,
            uid_next: mailbox.uid_next,
        })
    }

    /// Deletes exactly the given messages from the selected folder: flags them `\Deleted`
    /// and expunges only those UIDs (UIDPLUS), so that messages the user had flagged
    /// `\Deleted` themselves stay. Returns how many the server expunged.
    pub async fn delete_messages(&mut self, uids: &[u32]) -> Result<u64> {
        let mut expunged = 0;
        for chunk in uids.chunks(500) {
            let set = uid_set(chunk);
            let during = "flagging archived messages as deleted";
            within(self.timeout, during, async {
                self.inner
                    .uid_store(&set, "+FLAGS.SILENT (\\Deleted)")
                    .await?
                    .try_collect::<Vec<_>>()
                    .await
            })
            .await?
            .map_err(|e| command_error(during, e))?;
            let during = "expunging archived messages";
            let gone = within(self.timeout, during, async {
                self.inner
                    .uid_expunge(&set)
                    .await?
                    .try_collect::<Vec<_>>()
                    .await
            })
            .await?
            .map_err(|e| command_error(during, e))?;
            expunged += gone.len() as u64;
        }
        Ok(expunged)
    }

    /// UID, size and internal date (and flags, if asked for) of every message in the open
    /// folder, by ascending UID: one command, whose answer tells which messages are there
    /// and, by size and date, whether each is still the one archived at its UID. Without
    /// flags it is the smallest answer that does (flags come with the bodies).
    pub async fn messages(&mut self, flags: bool) -> Result<Vec<MessageMeta>> {
        let items = if flags {
            "(UID RFC822.SIZE INTERNALDATE FLAGS)"
        } else {
            "(UID RFC822.SIZE INTERNALDATE)"
        };
        self.fetch_meta("1:*", items).await
    }

    /// Runs a FETCH of sizes, dates (and flags) and reads its answer. A folder's listing is
    /// one response per message, run on every archiving run, so the attributes are taken
    /// from the parsed responses directly and dates parsed without a format interpreter.
    async fn fetch_meta(&mut self, set: &str, items: &str) -> Result<Vec<MessageMeta>> {
        use async_imap::imap_proto::{AttributeValue, Response, Status};
        let during = "reading message sizes and dates";
        let command = format!("UID FETCH {set} {items}");
        let tag = within(self.timeout, during, self.inner.run_command(&command))
            .await?
            .map_err(|e| command_error(during, e))?;
        let mut out = Vec::new();
        loop {
            let response = within(self.timeout, during, self.inner.read_response())
                .await?
                .map_err(|e| command_error(during, e.into()))?
                .ok_or(ImapError::Closed {
                    during: during.into(),
                })?;
            match response.parsed() {
                Response::Fetch(_, attributes) => {
                    let mut meta = MessageMeta {
                        uid: 0,
                        size: 0,
                        internal_date: None,
                        flags: Vec::new(),
                    };
                    for attribute in attributes {
                        match attribute {
                            AttributeValue::Uid(uid) => meta.uid = *uid,
                            AttributeValue::Rfc822Size(size) => meta.size = u64::from(*size),
                            AttributeValue::InternalDate(date) => {
                                meta.internal_date = parse_internal_date(date)
                            }
                            AttributeValue::Flags(flags) => {
                                meta.flags = flags.iter().map(|f| f.to_string()).collect()
                            }
                            _ => {}
                        }
                    }
                    if meta.uid != 0 {
                        out.push(meta);
                    }
                }
                Response::Done {
                    tag: done,
                    status,
                    outcome,
                } if *done == tag => {
                    if *status == Status::Ok {
                        break;
                    }
                    return Err(ImapError::Command {
                        during: during.into(),
                        message: format!(
                            "the server said: {}",
                            outcome.information.as_deref().unwrap_or("no reason given")
                        ),
                    });
                }
                // Unsolicited responses (EXISTS, EXPUNGE, another client's flag changes)
                // change nothing here: the next run sees their effect.
                _ => {}
            }
        }
        // An unsolicited FETCH (another client changed flags) may come along with flags
        // only: for each UID the answer with the size wins.
        out.sort_by_key(|m| (m.uid, std::cmp::Reverse(m.size)));
        out.dedup_by_key(|m| m.uid);
        Ok(out)
    }

    /// Downloads the given messages in one pipelined command; the server streams them back
    /// and each arrives as soon as it is parsed.
    pub async fn fetch_bodies<'a>(
        &'a mut self,
        uids: &[u32],
    ) -> Result<impl Stream<Item = Result<FetchedMessage>> + 'a> {
        let during = "downloading messages";
        let timeout = self.timeout;
        let wanted: HashSet<u32> = uids.iter().copied().collect();
        let stream = within(
            timeout,
            during,
            self.inner
                .uid_fetch(uid_set(uids), "(UID FLAGS BODY.PEEK[])"),
        )
        .await?
        .map_err(|e| command_error(during, e))?;
        let stream = Box::pin(stream);
        Ok(futures::stream::unfold(
            (stream, wanted),
            move |(mut stream, wanted)| async move {
                loop {
                    match next_within(timeout, during, &mut stream).await {
                        Err(e) => return Some((Err(e), (stream, wanted))),
                        Ok(None) => return None,
                        Ok(Some(item)) => {
                            let Some(uid) = item.uid.filter(|u| wanted.contains(u)) else {
                                continue;
                            };
                            // A message the server cannot read comes back without a body;
                            // the caller reports it rather than store an empty message.
                            let flags = item.flags().map(|f| flag_name(&f)).collect();
                            let bytes =
                                item.body().is_some().then(|| Bytes::from_owner(Body(item)));
                            let result = Ok(FetchedMessage { uid, flags, bytes });
                            return Some((result, (stream, wanted)));
                        }
                    }
                }
            },
        ))
    }

    /// Ends the session politely; errors are irrelevant at that point.
    pub async fn logout(mut self) {
        let _ = tokio::time::timeout(self.timeout, self.inner.logout()).await;
    }
}

/// Parses an INTERNALDATE, RFC 3501's `date-time`: `" 7-Jul-1996 02:44:25 -0700"` (the
/// day may be padded with a space).
fn parse_internal_date(text: &str) -> Option<DateTime<FixedOffset>> {
    use chrono::{NaiveDate, TimeZone};
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let mut fields = text.trim_start().split(' ');
    let (date, time, zone) = (fields.next()?, fields.next()?, fields.next()?);
    if fields.next().is_some() {
        return None;
    }
    let mut date = date.split('-');
    let day: u32 = date.next()?.parse().ok()?;
    let month = date.next()?;
    let month = MONTHS.iter().position(|m| m.eq_ignore_ascii_case(month))? as u32 + 1;
    let year: i32 = date.next()?.parse().ok()?;
    let mut time = time.split(':');
    let mut number = || time.next()?.parse::<u32>().ok();
    let (hour, minute, second) = (number()?, number()?, number()?);
    let (sign, digits) = match zone.as_bytes().first()? {
        b'+' => (1, &zone[1..]),
        b'-' => (-1, &zone[1..]),
        _ => return None,
    };
    if digits.len() != 4 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let hours: i32 = digits[..2].parse().ok()?;
    let minutes: i32 = digits[2..].parse().ok()?;
    let offset = FixedOffset::east_opt(sign * (hours * 3600 + minutes * 60))?;
    let local = NaiveDate::from_ymd_opt(year, month, day)?.and_hms_opt(hour, minute, second)?;
    offset.from_local_datetime(&local).single()
}

/// SASL PLAIN (RFC 4616): `authzid NUL authcid NUL password`.
struct SaslPlain<'a> {
    authorization_identity: &'a str,
    authentication_identity: &'a str,
    password: &'a Sensitive,
}

impl async_imap::Authenticator for SaslPlain<'_> {
    type Response = Vec<u8>;

    fn process(&mut self, _challenge: &[u8]) -> Vec<u8> {
        let mut response = Vec::new();
        response.extend_from_slice(self.authorization_identity.as_bytes());
        response.push(0);
        response.extend_from_slice(self.authentication_identity.as_bytes());
        response.push(0);
        response.extend_from_slice(self.password.expose().as_bytes());
        response
    }
}

async fn read_greeting(
    client: &mut async_imap::Client<ImapStream>,
    timeout: Duration,
) -> Result<()> {
    let during = "waiting for the server greeting";
    let greeting = within(timeout, during, client.read_response())
        .await?
        .map_err(|e| ImapError::Command {
            during: during.into(),
            message: e.to_string(),
        })?
        .ok_or(ImapError::Closed {
            during: during.into(),
        })?;
    use async_imap::imap_proto::{Response, Status};
    match greeting.parsed() {
        Response::Data {
            status: Status::Ok | Status::PreAuth,
            ..
        } => Ok(()),
        other => Err(ImapError::Command {
            during: during.into(),
            message: format!("unexpected greeting {other:?}"),
        }),
    }
}

async fn within<F: std::future::Future>(
    timeout: Duration,
    during: &str,
    f: F,
) -> Result<F::Output> {
    tokio::time::timeout(timeout, f)
        .await
        .map_err(|_| ImapError::Timeout {
            seconds: timeout.as_secs(),
            during: during.to_string(),
        })
}

async fn next_within<S, T>(timeout: Duration, during: &str, stream: &mut S) -> Result<Option<T>>
where
    S: Stream<Item = async_imap::error::Result<T>> + Unpin,
{
    match within(timeout, during, stream.next()).await? {
        None => Ok(None),
        Some(Ok(item)) => Ok(Some(item)),
        Some(Err(e)) => Err(command_error(during, e)),
    }
}

fn command_error(during: &str, e: async_imap::error::Error) -> ImapError {
    use async_imap::error::Error as E;
    match e {
        E::ConnectionLost => ImapError::Closed {
            during: during.into(),
        },
        E::Io(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => ImapError::Closed {
            during: during.into(),
        },
        E::No(text) | E::Bad(text) => ImapError::Command {
            during: during.into(),
            message: format!("the server said: {}", server_text(&text)),
        },
        other => ImapError::Command {
            during: during.into(),
            message: other.to_string(),
        },
    }
}

/// The server's own words from an async-imap NO/BAD error, which wraps them in the Debug
/// form of its response type (`... information: Some("text") ...`).
fn server_text(error: &str) -> String {
    let Some(start) = error.find("Some(\"") else {
        return error.to_string();
    };
    let mut out = String::new();
    let mut chars = error[start + 6..].chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.extend(chars.next()),
            '"' => return out,
            c => out.push(c),
        }
    }
    error.to_string()
}

/// The server's words on a failed login. async-imap's errors carry only the server's
/// response text, which never contains what we sent.
fn login_failure(e: &async_imap::error::Error) -> String {
    use async_imap::error::Error as E;
    match e {
        E::No(text) | E::Bad(text) => format!("the server said: {}", server_text(text)),
        E::ConnectionLost => "the server closed the connection".into(),
        other => other.to_string(),
    }
}

fn flag_name(flag: &async_imap::types::Flag<'_>) -> String {
    use async_imap::types::Flag as F;
    match flag {
        F::Seen => "\\Seen".into(),
        F::Answered => "\\Answered".into(),
        F::Flagged => "\\Flagged".into(),
        F::Deleted => "\\Deleted".into(),
        F::Draft => "\\Draft".into(),
        F::Recent => "\\Recent".into(),
        F::MayCreate => "\\*".into(),
        F::Custom(c) => c.to_string(),
    }
}

/// imap-proto hands out a quoted mailbox name with its escapes (`\\`, `\"`) still in
/// place, while async-imap escapes names again when it sends them; the name is unescaped
/// once here so that both directions agree.
fn unescape_quoted(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut chars = name.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.extend(chars.next()),
            c => out.push(c),
        }
    }
    out
}

/// Compresses ascending UIDs into an IMAP sequence set (`1:5,7,9:12`).
pub fn uid_set(uids: &[u32]) -> String {
    let mut out = String::new();
    let mut i = 0;
    while i < uids.len() {
        let start = uids[i];
        let mut end = start;
        while i + 1 < uids.len() && uids[i + 1] == end + 1 {
            i += 1;
            end = uids[i];
        }
        if !out.is_empty() {
            out.push(',');
        }
        if start == end {
            out.push_str(&start.to_string());
        } else {
            out.push_str(&format!("{start}:{end}"));
        }
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folder_paths_are_distinct_and_plain_names_keep_theirs() {
        let dotted = |raw: &str| Folder::from_listing(raw.into(), Some("."), None);
        // A `/` inside a name on a `.` server is not a level.
        let slash = dotted("a/b");
        let nested = dotted("a.b");
        assert_eq!(slash.segments, ["a.b"]);
        assert_eq!(nested.segments, ["a", "b"]);
        assert_ne!(slash.path(), nested.path());
        assert!(!slash.named_by_path && nested.named_by_path);
        // Names in no valid (or not the one) encoding are keyed by the server's name.
        assert!(!dotted("R&D").named_by_path);
        assert!(dotted("R&-D").named_by_path);
        assert_eq!(dotted("R&D").path(), dotted("R&-D").path());
        assert!(!dotted("&APY-&AN8-").named_by_path);
        let plain = Folder::from_listing("Archiv/Gr&APYA3w-e".into(), Some("/"), None);
        assert_eq!(plain.path(), "Archiv/Größe");
        assert!(plain.named_by_path);
        let flat = Folder::from_listing("x/y".into(), None, None);
        assert_eq!(flat.segments, ["x/y"]);
        assert!(
            flat.named_by_path,
            "on a flat server every name is one level"
        );
    }

    #[test]
    fn internal_dates_parse_as_rfc_3501_writes_them() {
        let chrono_says = |text: &str| {
            DateTime::parse_from_str(text.trim_start(), "%d-%b-%Y %H:%M:%S %z").unwrap()
        };
        for text in [
            "17-Jul-1996 02:44:25 -0700",
            " 7-Jul-1996 02:44:25 -0700",
            "06-Jan-2025 10:00:00 +0000",
            "29-Feb-2024 23:59:59 +0530",
            "01-dec-2025 00:00:00 -1200",
        ] {
            assert_eq!(parse_internal_date(text), Some(chrono_says(text)), "{text}");
        }
        for bad in [
            "",
            "31-Feb-2025 10:00:00 +0000",
            "06-Jan-2025 10:00:00",
            "06-Jan-2025 10:00:00 0000",
            "06-Foo-2025 10:00:00 +0000",
            "06-Jan-2025 10:00 +0000",
            "06-Jan-2025 10:00:00 +00:00",
            "06-Jan-2025 10:00:00 +0000 x",
        ] {
            assert_eq!(parse_internal_date(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn uid_sets_are_compressed() {
        assert_eq!(uid_set(&[1, 2, 3, 5, 7, 8]), "1:3,5,7:8");
        assert_eq!(uid_set(&[42]), "42");
    }

    #[test]
    fn quoted_names_are_unescaped() {
        assert_eq!(unescape_quoted(r#"back\\slash \"q\""#), r#"back\slash "q""#);
        assert_eq!(unescape_quoted("plain"), "plain");
    }

    #[test]
    fn server_text_is_taken_from_the_outcome() {
        let e = r#"outcome: Outcome { code: None, information: Some("Mailbox doesn't exist: \"X\" (0.001 secs).") }"#;
        assert_eq!(
            server_text(e),
            r#"Mailbox doesn't exist: "X" (0.001 secs)."#
        );
        assert_eq!(
            server_text("code: None, info: None"),
            "code: None, info: None"
        );
    }

    #[test]
    fn sasl_plain_response_is_rfc4616() {
        let password = Sensitive::new("pw");
        let mut auth = SaslPlain {
            authorization_identity: "alice@example.org",
            authentication_identity: "archiver",
            password: &password,
        };
        use async_imap::Authenticator;
        assert_eq!(auth.process(b""), b"alice@example.org\0archiver\0pw");
    }
}
