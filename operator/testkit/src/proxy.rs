//! A TCP proxy in front of a test server that misbehaves on cue: for the connections of
//! one user, once a message download has started, it stops answering (the server hangs)
//! or drops the connection (the server goes away). Other connections pass untouched, so a
//! test can show that one broken mailbox does not stop the others. Or, for every connection,
//! it passes the server's bytes at a set rate only: a slow link that makes a run last as long
//! as a test needs (a token outliving), whatever the speed of the machine.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

/// What happens to a targeted connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Keep the connection open but forward nothing more from the server.
    Stall,
    /// Close the connection.
    Cut,
}

pub struct Proxy {
    port: u16,
    stop: Arc<AtomicBool>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards to `127.0.0.1:target`. Connections whose
    /// client sends `user` (as in `LOGIN user ...`) meet `fault` once they send a
    /// `BODY.PEEK[]` fetch and `after_bytes` more bytes of the answer have passed.
    pub fn start(target: u16, user: &str, fault: Fault, after_bytes: usize) -> io::Result<Proxy> {
        let user = user.as_bytes().to_vec();
        Proxy::listen(target, move |client, server| {
            relay(client, server, user.clone(), fault, after_bytes)
        })
    }

    /// Listens on a free loopback port and forwards to `127.0.0.1:target`, passing what the
    /// server sends at `bytes_per_second` at most on each connection (what the client sends
    /// passes freely). It works below TLS, on any protocol.
    pub fn throttled(target: u16, bytes_per_second: usize) -> io::Result<Proxy> {
        Proxy::listen(target, move |client, server| {
            throttle(client, server, bytes_per_second)
        })
    }

    /// Accepts connections until dropped, handing each, with one to the target, to `relay`.
    fn listen(
        target: u16,
        relay: impl Fn(TcpStream, TcpStream) + Send + 'static,
    ) -> io::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        thread::spawn(move || {
            for client in listener.incoming() {
                if stopping.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                relay(client, server);
            }
        });
        Ok(Proxy { port, stop })
    }

    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so that it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len().max(1)).any(|w| w == needle)
}

fn relay(client: TcpStream, server: TcpStream, user: Vec<u8>, fault: Fault, after_bytes: usize) {
    let armed = Arc::new(AtomicBool::new(false));
    let (mut client_read, mut server_write) = (
        client.try_clone().expect("clone"),
        server.try_clone().expect("clone"),
    );
    let arming = armed.clone();
    thread::spawn(move || {
        let mut seen_user = false;
        let mut recent = Vec::new();
        let mut buf = [0u8; 16 * 1024];
        while let Ok(n) = client_read.read(&mut buf) {
            if n == 0 {
                break;
            }
            recent.extend_from_slice(&buf[..n]);
            seen_user |= contains(&recent, &user);
            if seen_user && contains(&recent, b"BODY.PEEK[]") {
                arming.store(true, Ordering::SeqCst);
            }
            if recent.len() > 4096 {
                recent.drain(..recent.len() - 1024);
            }
            if server_write.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = server_write.shutdown(Shutdown::Write);
    });
    let (mut server_read, mut client_write) = (server, client);
    thread::spawn(move || {
        let mut passed_since_armed = 0;
        let mut buf = [0u8; 16 * 1024];
        while let Ok(n) = server_read.read(&mut buf) {
            if n == 0 {
                break;
            }
            if armed.load(Ordering::SeqCst) {
                if passed_since_armed >= after_bytes {
                    match fault {
                        Fault::Stall => {
                            // Swallow everything from now on; the client hears nothing.
                            while matches!(server_read.read(&mut buf), Ok(n) if n > 0) {}
                            return;
                        }
                        Fault::Cut => {
                            let _ = client_write.shutdown(Shutdown::Both);
                            let _ = server_read.shutdown(Shutdown::Both);
                            return;
                        }
                    }
                }
                passed_since_armed += n;
            }
            if client_write.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = client_write.shutdown(Shutdown::Write);
    });
}

fn throttle(client: TcpStream, server: TcpStream, bytes_per_second: usize) {
    let (mut client_read, mut server_write) = (
        client.try_clone().expect("clone"),
        server.try_clone().expect("clone"),
    );
    thread::spawn(move || {
        let _ = io::copy(&mut client_read, &mut server_write);
        let _ = server_write.shutdown(Shutdown::Write);
    });
    let (mut server_read, mut client_write) = (server, client);
    thread::spawn(move || {
        // Small chunks, each followed by its share of a second: a smooth rate.
        let chunk = (bytes_per_second / 20).max(1);
        let mut buf = vec![0u8; chunk];
        while let Ok(n) = server_read.read(&mut buf) {
            if n == 0 || client_write.write_all(&buf[..n]).is_err() {
                break;
            }
            thread::sleep(Duration::from_secs_f64(n as f64 / bytes_per_second as f64));
        }
        let _ = client_write.shutdown(Shutdown::Write);
    });
}
