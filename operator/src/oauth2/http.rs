//! A small HTTPS client for token endpoints and directory APIs.
//!
//! Bearer tokens and client secrets cross these connections, so the rules are strict: a URL
//! must be `https://` (certificates verified against the system's and Mozilla's roots plus
//! an optional private CA), or plain `http://` on a loopback address (tests, a local proxy
//! such as a sidecar). Redirects are never followed: a token endpoint or directory that
//! redirects elsewhere would take the credentials with it.
//!
//! Requests that fail in a way a retry can fix (no connection, a timeout, 429, 5xx) are
//! retried with backoff, honouring `Retry-After`; a directory sync of thousands of users
//! should not fail on one throttled page.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::rustls::ClientConfig;
use tokio_rustls::TlsConnector;
use url::{Host, Url};

/// Largest response body accepted: a page of 999 directory users with all their addresses
/// is a few MB; anything far beyond is not an answer to our request.
const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

/// Whether `url` may carry credentials: `https://`, or `http://` on a loopback address,
/// without user name, password or fragment. The error says what is wrong in plain words.
pub fn check_url(url: &Url) -> Result<(), String> {
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not contain a user name or password".into());
    }
    if url.fragment().is_some() {
        return Err("must not contain a #fragment".into());
    }
    let Some(host) = url.host() else {
        return Err("has no host".into());
    };
    match url.scheme() {
        "https" => Ok(()),
        "http" if is_loopback(&host) => Ok(()),
        "http" => Err(format!(
            "plain http:// is accepted only on a loopback address (127.0.0.1, ::1, localhost), \
             not on {host}: use https://"
        )),
        other => Err(format!("scheme must be https, not {other}")),
    }
}

fn is_loopback(host: &Host<&str>) -> bool {
    match host {
        Host::Ipv4(ip) => ip.is_loopback(),
        Host::Ipv6(ip) => ip.is_loopback(),
        Host::Domain(name) => name.eq_ignore_ascii_case("localhost"),
    }
}

/// Parses and checks a URL from a resource; `field` names it in the error.
pub fn parse_url(field: &str, text: &str) -> Result<Url, String> {
    parse_checked(text).map_err(|e| format!("{field}: {e}"))
}

/// An API endpoint from a resource, `given` or else `default`, checked; the error as
/// (field, message), as resource validation reports problems.
pub fn endpoint(field: &str, given: Option<&str>, default: &str) -> Result<Url, (String, String)> {
    parse_checked(given.unwrap_or(default)).map_err(|e| (field.to_string(), e))
}

fn parse_checked(text: &str) -> Result<Url, String> {
    let url = Url::parse(text.trim()).map_err(|e| format!("not a URL: {e}"))?;
    check_url(&url)?;
    Ok(url)
}

/// How often and how patiently to retry.
#[derive(Clone, Copy, Debug)]
pub struct Retry {
    /// Attempts in all, the first included.
    pub attempts: u32,
    /// Wait before the second attempt; doubled for each further one.
    pub first_delay: Duration,
    /// Longest wait, also for a server's `Retry-After`.
    pub max_delay: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            attempts: 4,
            first_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(60),
        }
    }
}

#[derive(Clone, Debug, thiserror::Error)]
pub enum HttpError {
    #[error("{url}: {reason}")]
    Url { url: String, reason: String },
    #[error("cannot connect to {url}: {message}")]
    Connect { url: String, message: String },
    #[error("TLS with {url} failed: {message}")]
    Tls { url: String, message: String },
    #[error("no answer from {url} within {seconds} s")]
    Timeout { url: String, seconds: u64 },
    #[error("{url}: {message}")]
    Protocol { url: String, message: String },
}

/// An answer, whatever its status.
#[derive(Debug)]
pub struct Response {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Response {
    /// Whether a later attempt may get a different answer.
    fn is_transient(&self) -> bool {
        self.status == StatusCode::TOO_MANY_REQUESTS
            || matches!(self.status.as_u16(), 500 | 502 | 503 | 504)
    }

    /// `Retry-After` in seconds (the HTTP-date form is rare for these APIs and ignored).
    fn retry_after(&self) -> Option<Duration> {
        let value = self.headers.get(header::RETRY_AFTER)?.to_str().ok()?;
        value.trim().parse().ok().map(Duration::from_secs)
    }
}

/// A request body and its media type.
pub struct Body {
    pub content_type: &'static str,
    pub bytes: Bytes,
}

impl Body {
    /// `application/x-www-form-urlencoded`, as token endpoints take it.
    pub fn form(fields: &[(&str, &str)]) -> Body {
        let mut encoder = url::form_urlencoded::Serializer::new(String::new());
        for (name, value) in fields {
            encoder.append_pair(name, value);
        }
        Body {
            content_type: "application/x-www-form-urlencoded",
            bytes: Bytes::from(encoder.finish()),
        }
    }
}

/// A client; cheap to clone. Each request opens its own connection: token requests are
/// rare and directory pages few, so pooling would buy nothing but state.
#[derive(Clone)]
pub struct HttpClient {
    tls: Arc<ClientConfig>,
    timeout: Duration,
    retry: Retry,
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpClient")
            .field("timeout", &self.timeout)
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

impl HttpClient {
    /// `extra_ca_pem` adds trust anchors (a private CA); `timeout` bounds each attempt.
    pub fn new(extra_ca_pem: Option<&[u8]>, timeout: Duration) -> Result<HttpClient, String> {
        let tls = crate::tls::client_config(false, extra_ca_pem).map_err(|e| e.to_string())?;
        Ok(HttpClient {
            tls,
            timeout,
            retry: Retry::default(),
        })
    }

    /// The same client with another retry policy (tests use short delays).
    pub fn with_retry(mut self, retry: Retry) -> HttpClient {
        self.retry = retry;
        self
    }

    /// Sends a request, retrying transient failures. A final answer of any status is
    /// `Ok`; the caller interprets it.
    pub async fn send(
        &self,
        method: Method,
        url: &Url,
        headers: &[(HeaderName, HeaderValue)],
        body: Option<&Body>,
    ) -> Result<Response, HttpError> {
        check_url(url).map_err(|reason| HttpError::Url {
            url: shown(url),
            reason,
        })?;
        let mut delay = self.retry.first_delay;
        let mut attempt = 1;
        loop {
            let result = self.send_once(&method, url, headers, body).await;
            let wait = match &result {
                Ok(response) if response.is_transient() => {
                    Some(response.retry_after().unwrap_or(delay))
                }
                Ok(_) => None,
                Err(HttpError::Connect { .. } | HttpError::Timeout { .. }) => Some(delay),
                Err(_) => None,
            };
            match wait {
                Some(wait) if attempt < self.retry.attempts => {
                    let wait = wait.min(self.retry.max_delay);
                    tracing::debug!(url = %shown(url), attempt, ?wait, "retrying");
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                    delay = (delay * 2).min(self.retry.max_delay);
                }
                _ => return result,
            }
        }
    }

    /// `GET` with a bearer token (directory APIs).
    pub async fn get_with_token(
        &self,
        url: &Url,
        token: &crate::sensitive::Sensitive,
    ) -> Result<Response, HttpError> {
        let mut value =
            HeaderValue::from_str(&format!("Bearer {}", token.expose())).map_err(|_| {
                HttpError::Protocol {
                    url: shown(url),
                    message: "the access token is not a valid header value".into(),
                }
            })?;
        value.set_sensitive(true);
        self.send(Method::GET, url, &[(header::AUTHORIZATION, value)], None)
            .await
    }

    async fn send_once(
        &self,
        method: &Method,
        url: &Url,
        headers: &[(HeaderName, HeaderValue)],
        body: Option<&Body>,
    ) -> Result<Response, HttpError> {
        let seconds = self.timeout.as_secs();
        tokio::time::timeout(self.timeout, self.exchange(method, url, headers, body))
            .await
            .map_err(|_| HttpError::Timeout {
                url: shown(url),
                seconds,
            })?
    }

    async fn exchange(
        &self,
        method: &Method,
        url: &Url,
        headers: &[(HeaderName, HeaderValue)],
        body: Option<&Body>,
    ) -> Result<Response, HttpError> {
        let protocol = |message: String| HttpError::Protocol {
            url: shown(url),
            message,
        };
        let host = url.host().ok_or_else(|| protocol("no host".into()))?;
        let port = url
            .port_or_known_default()
            .ok_or_else(|| protocol("no port".into()))?;
        let tcp = match &host {
            Host::Domain(name) => TcpStream::connect((*name, port)).await,
            Host::Ipv4(ip) => TcpStream::connect((IpAddr::V4(*ip), port)).await,
            Host::Ipv6(ip) => TcpStream::connect((IpAddr::V6(*ip), port)).await,
        }
        .map_err(|e| HttpError::Connect {
            url: shown(url),
            message: e.to_string(),
        })?;
        let _ = tcp.set_nodelay(true);
        let stream: Box<dyn Io> = if url.scheme() == "https" {
            let name = crate::tls::server_name(&host.to_string().replace(['[', ']'], ""))
                .map_err(protocol)?;
            let tls = TlsConnector::from(self.tls.clone())
                .connect(name, tcp)
                .await
                .map_err(|e| HttpError::Tls {
                    url: shown(url),
                    message: e.to_string(),
                })?;
            Box::new(tls)
        } else {
            Box::new(tcp)
        };
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| protocol(e.to_string()))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });

        let authority = match url.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_string(),
        };
        let path = match url.query() {
            Some(query) => format!("{}?{query}", url.path()),
            None => url.path().to_string(),
        };
        let mut request = Request::builder()
            .method(method.clone())
            .uri(path)
            .header(header::HOST, authority)
            .header(header::ACCEPT, "application/json")
            .header(
                header::USER_AGENT,
                concat!("mailvault/", env!("CARGO_PKG_VERSION")),
            );
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let request = match body {
            Some(body) => request
                .header(header::CONTENT_TYPE, body.content_type)
                .body(Full::new(body.bytes.clone())),
            None => request.body(Full::new(Bytes::new())),
        }
        .map_err(|e| protocol(e.to_string()))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| protocol(e.to_string()))?;
        let (parts, body) = response.into_parts();
        let body = Limited::new(body, MAX_BODY_BYTES)
            .collect()
            .await
            .map_err(|e| protocol(format!("reading the answer: {e}")))?
            .to_bytes();
        Ok(Response {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A URL as shown in messages: without its query, which may carry paging tokens.
pub fn shown(url: &Url) -> String {
    let mut url = url.clone();
    url.set_query(None);
    url.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> Result<(), String> {
        check_url(&Url::parse(text).unwrap())
    }

    #[test]
    fn https_anywhere_http_only_on_loopback() {
        assert!(check("https://login.microsoftonline.com/x/oauth2/v2.0/token").is_ok());
        assert!(check("http://127.0.0.1:8080/token").is_ok());
        assert!(check("http://127.8.9.10/token").is_ok());
        assert!(check("http://[::1]:99/token").is_ok());
        assert!(check("http://localhost:99/token").is_ok());
        let e = check("http://login.example.org/token").unwrap_err();
        assert!(e.contains("loopback"), "{e}");
        assert!(check("http://10.0.0.1/token").is_err());
        assert!(check("http://[::ffff:10.0.0.1]/token").is_err());
        assert!(check("ftp://127.0.0.1/token").is_err());
    }

    #[test]
    fn credentials_and_fragments_in_urls_are_refused() {
        assert!(check("https://user:pw@example.org/token").is_err());
        assert!(check("https://example.org/token#x").is_err());
    }

    #[test]
    fn forms_are_url_encoded() {
        let body = Body::form(&[("a", "x y&z"), ("scope", "https://e.org/.default")]);
        assert_eq!(
            &body.bytes[..],
            b"a=x+y%26z&scope=https%3A%2F%2Fe.org%2F.default"
        );
    }
}
