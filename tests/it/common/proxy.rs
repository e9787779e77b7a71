//! An HTTP/1.1 proxy between pgwal and the S3 test server, for tests that
//! count round trips or inject faults. It forwards one request at a time per
//! connection (object_store never pipelines), so it sees each request and its
//! response whole and can:
//! - count requests (method and path), so that a regression of the per-call
//!   round trips of `archive` or `fetch` shows up as a number, not a timing;
//! - add latency in each direction, as a real object store has;
//! - answer a matching request with a fault instead: `503 SlowDown`, a
//!   connection reset, a response cut short in its body, or a stall longer
//!   than the client's timeout (matching one part of an object read in
//!   ranged parts, too);
//! - run a test's hook before a matching request is forwarded (to change
//!   an object between two reads of its parts).
//!
//! It runs on threads of the test process and stops when dropped.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// One request as the proxy saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// `GET`, `PUT`, `HEAD`, ...
    pub method: String,
    /// The path and query, e.g. `/bucket/prefix/wal/...`.
    pub target: String,
    /// The `Range` header, e.g. `bytes=8388608-16777215`.
    pub range: Option<String>,
}

impl Request {
    /// The first byte of a ranged request (`Range: bytes=FIRST-...`).
    pub fn range_start(&self) -> Option<u64> {
        self.range.as_deref()?.strip_prefix("bytes=")?.split('-').next()?.parse().ok()
    }
}

impl std::fmt::Display for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.method, self.target)
    }
}

/// What the proxy does instead of forwarding a matching request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Answers `503 Service Unavailable` with S3's `SlowDown` error body.
    SlowDown,
    /// Answers `403 Forbidden` with S3's `AccessDenied` error body.
    AccessDenied,
    /// Resets the client's connection (RST) without answering.
    Reset,
    /// Forwards the request, then sends the response's head and only half of
    /// its body, and closes the connection.
    Truncate,
    /// Holds the request this long without answering, then closes.
    Stall(Duration),
}

struct Rule {
    method: String,
    target_contains: String,
    range_start: Option<u64>,
    fault: Fault,
    remaining: usize,
}

impl Rule {
    fn matches(&self, seen: &Request) -> bool {
        self.method == seen.method
            && seen.target.contains(&self.target_contains)
            && self.range_start.is_none_or(|r| seen.range_start() == Some(r))
    }
}

/// Something to run once, before a matching request is forwarded.
struct Hook {
    rule: Rule,
    run: Option<Box<dyn FnOnce() + Send>>,
}

#[derive(Default)]
struct State {
    requests: Vec<Request>,
    faults_done: Vec<(Request, Fault)>,
    rules: Vec<Rule>,
    hooks: Vec<Hook>,
    latency: Duration,
}

/// A running proxy to `127.0.0.1:upstream`.
pub struct HttpProxy {
    port: u16,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
}

impl HttpProxy {
    /// Starts a proxy on a free port of 127.0.0.1 in front of `upstream`.
    pub fn start(upstream: u16) -> Result<HttpProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").context("binding the proxy")?;
        let port = listener.local_addr()?.port();
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (state.clone(), stop.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if sp.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = client else { continue };
                let st = st.clone();
                std::thread::spawn(move || {
                    let _ = serve(client, upstream, &st);
                });
            }
        });
        Ok(HttpProxy { port, state, stop })
    }

    /// The proxy's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT`, to use as the S3 endpoint.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Delay added before each request is forwarded and before each response
    /// is returned (so a round trip costs twice this).
    pub fn set_latency(&self, latency: Duration) {
        self.lock().latency = latency;
    }

    /// Every request seen since the last [`HttpProxy::take_requests`], faulted ones included.
    pub fn take_requests(&self) -> Vec<Request> {
        std::mem::take(&mut self.lock().requests)
    }

    /// The next `times` requests with this method whose target contains
    /// `target_contains` get `fault` instead of an answer from the server.
    pub fn inject(&self, method: &str, target_contains: &str, fault: Fault, times: usize) {
        self.lock().rules.push(Rule {
            method: method.to_string(),
            target_contains: target_contains.to_string(),
            range_start: None,
            fault,
            remaining: times,
        });
    }

    /// As [`HttpProxy::inject`], for ranged requests whose range starts at
    /// byte `range_start` only (one part of an object read in parts).
    pub fn inject_range(&self, method: &str, target_contains: &str, range_start: u64, fault: Fault, times: usize) {
        self.lock().rules.push(Rule {
            method: method.to_string(),
            target_contains: target_contains.to_string(),
            range_start: Some(range_start),
            fault,
            remaining: times,
        });
    }

    /// Runs `hook` once, when the first request with this method, whose
    /// target contains `target_contains` (and whose range starts at
    /// `range_start`, if given) arrives, before it is forwarded.
    pub fn on_request(
        &self,
        method: &str,
        target_contains: &str,
        range_start: Option<u64>,
        hook: impl FnOnce() + Send + 'static,
    ) {
        let rule = Rule {
            method: method.to_string(),
            target_contains: target_contains.to_string(),
            range_start,
            fault: Fault::SlowDown,
            remaining: 1,
        };
        self.lock().hooks.push(Hook { rule, run: Some(Box::new(hook)) });
    }

    /// The faults injected so far, with the request each one answered.
    pub fn faults_done(&self) -> Vec<(Request, Fault)> {
        self.lock().faults_done.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for HttpProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// A request or response as raw bytes: the head and the body, framed as
/// received (chunked bodies stay chunked).
struct Message {
    head: Vec<u8>,
    first_line: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Message {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// Reads one message head; `None` at a clean end of the stream.
fn read_head(r: &mut BufReader<TcpStream>) -> Result<Option<Message>> {
    let mut head = Vec::new();
    let mut lines = Vec::new();
    loop {
        let mut line = Vec::new();
        let n = r.read_until(b'\n', &mut line)?;
        if n == 0 {
            if head.is_empty() {
                return Ok(None);
            }
            bail!("connection closed inside a message head");
        }
        head.extend_from_slice(&line);
        let text = String::from_utf8_lossy(&line).trim_end().to_string();
        if text.is_empty() {
            break;
        }
        lines.push(text);
    }
    let first_line = lines.first().cloned().unwrap_or_default();
    let headers = lines
        .iter()
        .skip(1)
        .filter_map(|l| l.split_once(':').map(|(k, v)| (k.trim().to_string(), v.trim().to_string())))
        .collect();
    Ok(Some(Message { head, first_line, headers, body: Vec::new() }))
}

/// Reads the body that `msg`'s headers announce; `to_eof` when the message
/// has neither a length nor chunking (a response that ends with the stream).
fn read_body(r: &mut BufReader<TcpStream>, msg: &mut Message, to_eof: bool) -> Result<()> {
    if msg.header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        loop {
            let mut size_line = Vec::new();
            r.read_until(b'\n', &mut size_line)?;
            msg.body.extend_from_slice(&size_line);
            let text = String::from_utf8_lossy(&size_line);
            let size = usize::from_str_radix(text.trim().split(';').next().unwrap_or("0"), 16)
                .with_context(|| format!("bad chunk size {text:?}"))?;
            if size == 0 {
                // Trailers, up to the empty line.
                loop {
                    let mut line = Vec::new();
                    r.read_until(b'\n', &mut line)?;
                    msg.body.extend_from_slice(&line);
                    if line == b"\r\n" || line.is_empty() {
                        return Ok(());
                    }
                }
            }
            let mut chunk = vec![0; size + 2];
            r.read_exact(&mut chunk)?;
            msg.body.extend_from_slice(&chunk);
        }
    } else if let Some(len) = msg.header("content-length") {
        let len: usize = len.parse().context("bad content-length")?;
        msg.body.resize(len, 0);
        r.read_exact(&mut msg.body)?;
    } else if to_eof {
        r.read_to_end(&mut msg.body)?;
    }
    Ok(())
}

fn error_response(status: &str, code: &str) -> Vec<u8> {
    let body = format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code><Message>injected by the test proxy</Message></Error>");
    format!("HTTP/1.1 {status}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\r\n{body}", body.len())
        .into_bytes()
}

/// Closes `stream` with a reset instead of an orderly FIN.
fn reset(stream: &TcpStream) {
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: setsockopt on our own open socket with a properly sized struct.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

/// Serves one client connection until either side closes it.
fn serve(client: TcpStream, upstream_port: u16, state: &Mutex<State>) -> Result<()> {
    let lock = || state.lock().unwrap_or_else(|e| e.into_inner());
    let mut from_client = BufReader::new(client.try_clone()?);
    let mut to_client = client;
    let mut upstream: Option<(BufReader<TcpStream>, TcpStream)> = None;
    loop {
        let Some(mut request) = read_head(&mut from_client)? else { return Ok(()) };
        read_body(&mut from_client, &mut request, false)?;
        let mut parts = request.first_line.split_whitespace();
        let seen = Request {
            method: parts.next().unwrap_or_default().to_string(),
            target: parts.next().unwrap_or_default().to_string(),
            range: request.header("range").map(str::to_string),
        };
        let (fault, latency, hook) = {
            let mut st = lock();
            st.requests.push(seen.clone());
            let fault = st.rules.iter_mut().find(|r| r.remaining > 0 && r.matches(&seen)).map(|r| {
                r.remaining -= 1;
                r.fault
            });
            if let Some(f) = fault {
                st.faults_done.push((seen.clone(), f));
            }
            let hook =
                st.hooks.iter_mut().find(|h| h.run.is_some() && h.rule.matches(&seen)).and_then(|h| h.run.take());
            (fault, st.latency, hook)
        };
        if let Some(hook) = hook {
            hook();
        }
        std::thread::sleep(latency);
        match fault {
            Some(Fault::SlowDown) => {
                to_client.write_all(&error_response("503 Service Unavailable", "SlowDown"))?;
                continue;
            }
            Some(Fault::AccessDenied) => {
                to_client.write_all(&error_response("403 Forbidden", "AccessDenied"))?;
                continue;
            }
            Some(Fault::Reset) => {
                reset(&to_client);
                return Ok(());
            }
            Some(Fault::Stall(d)) => {
                std::thread::sleep(d);
                let _ = to_client.shutdown(Shutdown::Both);
                return Ok(());
            }
            Some(Fault::Truncate) | None => {}
        }
        if upstream.is_none() {
            let s = TcpStream::connect(("127.0.0.1", upstream_port)).context("connecting to the S3 server")?;
            upstream = Some((BufReader::new(s.try_clone()?), s));
        }
        let Some((up_read, up_write)) = upstream.as_mut() else { unreachable!("connected above") };
        up_write.write_all(&request.head)?;
        up_write.write_all(&request.body)?;
        let Some(mut response) = read_head(up_read)? else { bail!("the S3 server closed the connection") };
        let status: u16 = response.first_line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        let bodiless = seen.method == "HEAD" || status == 204 || status == 304 || (100..200).contains(&status);
        if !bodiless {
            read_body(up_read, &mut response, true)?;
        }
        std::thread::sleep(latency);
        to_client.write_all(&response.head)?;
        if fault == Some(Fault::Truncate) {
            to_client.write_all(&response.body[..response.body.len() / 2])?;
            to_client.flush()?;
            let _ = to_client.shutdown(Shutdown::Both);
            return Ok(());
        }
        to_client.write_all(&response.body)?;
    }
}
