//! A fault-injecting HTTP/1.1 proxy on loopback, in front of a real KMS emulator (local-kms).
//!
//! AWS KMS speaks a JSON protocol over HTTP/1.1: every request is a `POST /` whose
//! `X-Amz-Target` header names the operation (`TrentService.Sign`, `TrentService.GetPublicKey`,
//! ...). The proxy parses each request (request line, headers, a `Content-Length` or chunked
//! body) and, for `TrentService.Sign` only, decides one of:
//!
//! - **throttle**: answer as KMS does when a request quota is exceeded, `HTTP/1.1 400` with
//!   `Content-Type: application/x-amz-json-1.1` and
//!   `{"__type":"ThrottlingException","message":"Rate exceeded"}`; the connection stays open;
//! - **drop**: close the connection without answering (the request never reaches KMS);
//! - **forward**: pass the request to the emulator and its answer back.
//!
//! Every other operation is forwarded. The shares of throttled and dropped Sign calls are set at
//! start and can be changed at run time ([`FaultProxy::set_faults`]); [`FaultProxy::counters`]
//! says how many Sign calls were forwarded, throttled and dropped.
//!
//! Forwarding opens one upstream connection per request (`Connection: close` upstream), reads
//! the whole answer (`Content-Length`, chunked, or until the emulator closes) and re-frames it
//! with a `Content-Length` for the client, whose connection is kept alive as HTTP/1.1 intends.
//! Request signatures (SigV4) cover the `Host` header, which is passed through unchanged; the
//! emulators do not check signatures.
//!
//! The proxy runs on its own thread with its own tokio runtime, so it serves synchronous tests
//! (which run `kubesign` as a child process) as well as async ones; dropping the [`FaultProxy`]
//! stops it. It listens on 127.0.0.1 only.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// The body of the throttling answer, exactly as KMS sends it.
pub const THROTTLING_BODY: &str = r#"{"__type":"ThrottlingException","message":"Rate exceeded"}"#;

/// The `X-Amz-Target` of the KMS `Sign` operation.
pub const SIGN_TARGET: &str = "TrentService.Sign";

/// The largest request or response head the proxy accepts.
const MAX_HEAD: usize = 64 * 1024;
/// The largest body the proxy accepts (KMS requests and answers are a few KiB).
const MAX_BODY: usize = 16 * 1024 * 1024;

/// How the faulty Sign calls are chosen among all Sign calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pattern {
    /// Spread evenly and deterministically: after `n` Sign calls, `floor(n * share)` (give or
    /// take one) were faulty. With a throttle share of 0.9: forward, then 9 throttled, repeat.
    Even,
    /// Independently at random for each Sign call, from a seeded generator (print the seed to
    /// reproduce a run).
    Random {
        /// The generator's seed.
        seed: u64,
    },
}

/// The faults to inject into Sign calls. `throttle + drop` must not exceed 1.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Faults {
    /// The share of Sign calls answered with ThrottlingException.
    pub throttle: f64,
    /// The share of Sign calls whose connection is closed without an answer.
    pub drop: f64,
    /// How the faulty calls are chosen.
    pub pattern: Pattern,
}

impl Faults {
    /// No faults: everything is forwarded.
    pub const NONE: Faults = Faults {
        throttle: 0.0,
        drop: 0.0,
        pattern: Pattern::Even,
    };

    /// `throttle` and `drop` shares, chosen at random from `seed`.
    pub fn random(throttle: f64, drop: f64, seed: u64) -> Faults {
        Faults {
            throttle,
            drop,
            pattern: Pattern::Random { seed },
        }
    }

    /// `throttle` and `drop` shares, spread evenly.
    pub fn even(throttle: f64, drop: f64) -> Faults {
        Faults {
            throttle,
            drop,
            pattern: Pattern::Even,
        }
    }

    fn check(&self) -> io::Result<()> {
        let ok = |x: f64| x.is_finite() && (0.0..=1.0).contains(&x);
        if ok(self.throttle) && ok(self.drop) && self.throttle + self.drop <= 1.0 + 1e-9 {
            Ok(())
        } else {
            Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "fault shares must be in [0, 1] and add up to at most 1: throttle {}, drop {}",
                    self.throttle, self.drop
                ),
            ))
        }
    }
}

/// What the proxy did, counted since it started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Sign calls passed to the emulator (and answered by it).
    pub sign_forwarded: u64,
    /// Sign calls answered with ThrottlingException.
    pub sign_throttled: u64,
    /// Sign calls whose connection was closed without an answer.
    pub sign_dropped: u64,
    /// Other KMS calls (GetPublicKey, DescribeKey, CreateKey, ...) passed to the emulator.
    pub other_forwarded: u64,
    /// Requests that could not be passed to the emulator (answered 502).
    pub upstream_errors: u64,
    /// Client connections accepted.
    pub connections: u64,
}

impl Counters {
    /// Sign calls seen, whatever their fate.
    pub fn sign_calls(&self) -> u64 {
        self.sign_forwarded + self.sign_throttled + self.sign_dropped
    }

    /// What happened between `earlier` and `self`.
    pub fn since(&self, earlier: &Counters) -> Counters {
        Counters {
            sign_forwarded: self.sign_forwarded - earlier.sign_forwarded,
            sign_throttled: self.sign_throttled - earlier.sign_throttled,
            sign_dropped: self.sign_dropped - earlier.sign_dropped,
            other_forwarded: self.other_forwarded - earlier.other_forwarded,
            upstream_errors: self.upstream_errors - earlier.upstream_errors,
            connections: self.connections - earlier.connections,
        }
    }
}

impl fmt::Display for Counters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Sign calls: {} ({} forwarded, {} throttled, {} dropped); other calls forwarded: {}; \
             upstream errors: {}; client connections: {}",
            self.sign_calls(),
            self.sign_forwarded,
            self.sign_throttled,
            self.sign_dropped,
            self.other_forwarded,
            self.upstream_errors,
            self.connections
        )
    }
}

#[derive(Default)]
struct AtomicCounters {
    sign_forwarded: AtomicU64,
    sign_throttled: AtomicU64,
    sign_dropped: AtomicU64,
    other_forwarded: AtomicU64,
    upstream_errors: AtomicU64,
    connections: AtomicU64,
}

impl AtomicCounters {
    fn snapshot(&self) -> Counters {
        Counters {
            sign_forwarded: self.sign_forwarded.load(Ordering::SeqCst),
            sign_throttled: self.sign_throttled.load(Ordering::SeqCst),
            sign_dropped: self.sign_dropped.load(Ordering::SeqCst),
            other_forwarded: self.other_forwarded.load(Ordering::SeqCst),
            upstream_errors: self.upstream_errors.load(Ordering::SeqCst),
            connections: self.connections.load(Ordering::SeqCst),
        }
    }
}

/// The fate of one Sign call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fate {
    Forward,
    Throttle,
    Drop,
}

/// Chooses fates according to [`Faults`]. Decisions are serialised, so the even pattern holds
/// across concurrent connections.
struct Decider {
    faults: Faults,
    throttle_acc: f64,
    drop_acc: f64,
    rng: u64,
}

impl Decider {
    fn new(faults: Faults) -> Self {
        let seed = match faults.pattern {
            Pattern::Random { seed } => seed,
            Pattern::Even => 0,
        };
        Decider {
            faults,
            throttle_acc: 0.0,
            drop_acc: 0.0,
            // xorshift must not start at zero.
            rng: seed ^ 0x9e37_79b9_7f4a_7c15,
        }
    }

    /// xorshift64*: a uniform number in [0, 1).
    fn unit(&mut self) -> f64 {
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }

    fn next(&mut self) -> Fate {
        const EPS: f64 = 1e-9;
        match self.faults.pattern {
            Pattern::Even => {
                self.throttle_acc += self.faults.throttle;
                self.drop_acc += self.faults.drop;
                if self.throttle_acc >= 1.0 - EPS {
                    self.throttle_acc -= 1.0;
                    Fate::Throttle
                } else if self.drop_acc >= 1.0 - EPS {
                    self.drop_acc -= 1.0;
                    Fate::Drop
                } else {
                    Fate::Forward
                }
            }
            Pattern::Random { .. } => {
                let u = self.unit();
                if u < self.faults.throttle {
                    Fate::Throttle
                } else if u < self.faults.throttle + self.faults.drop {
                    Fate::Drop
                } else {
                    Fate::Forward
                }
            }
        }
    }
}

struct Shared {
    upstream: SocketAddr,
    decider: Mutex<Decider>,
    counters: AtomicCounters,
}

impl Shared {
    fn decide(&self) -> Fate {
        self.decider
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .next()
    }
}

/// A running fault proxy. Stops when dropped.
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl fmt::Debug for FaultProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultProxy")
            .field("addr", &self.addr)
            .field("upstream", &self.shared.upstream)
            .finish_non_exhaustive()
    }
}

/// `http://127.0.0.1:PORT` (or `http://localhost:PORT`) as a socket address.
fn loopback_addr(endpoint: &str) -> io::Result<SocketAddr> {
    let bad = || {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{endpoint:?}: expected http://127.0.0.1:PORT (the proxy talks to loopback only)"
            ),
        )
    };
    let rest = endpoint.strip_prefix("http://").ok_or_else(bad)?;
    let hostport = rest.trim_end_matches('/');
    let (host, port) = hostport.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    let ip = match host {
        "127.0.0.1" | "localhost" => std::net::Ipv4Addr::LOCALHOST,
        _ => return Err(bad()),
    };
    Ok(SocketAddr::from((ip, port)))
}

impl FaultProxy {
    /// Starts a proxy on a free loopback port in front of `upstream` (`http://127.0.0.1:PORT`),
    /// injecting `faults` into Sign calls.
    pub fn start(upstream: &str, faults: Faults) -> io::Result<FaultProxy> {
        faults.check()?;
        let upstream = loopback_addr(upstream)?;
        let shared = Arc::new(Shared {
            upstream,
            decider: Mutex::new(Decider::new(faults)),
            counters: AtomicCounters::default(),
        });
        let std_listener = std::net::TcpListener::bind(("127.0.0.1", 0))?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<io::Result<()>>();
        let task_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("kms-fault-proxy-{}", addr.port()))
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let listener = match TcpListener::from_std(std_listener) {
                        Ok(l) => l,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    let _ = ready_tx.send(Ok(()));
                    tokio::select! {
                        _ = stop_rx => {}
                        _ = accept_loop(listener, task_shared) => {}
                    }
                });
                // Connections still open are cut when the runtime drops here.
            })?;
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                return Err(io::Error::other(
                    "the fault proxy thread died while starting",
                ));
            }
        }
        Ok(FaultProxy {
            addr,
            shared,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// The proxy's endpoint, `http://127.0.0.1:PORT`, to put into key URIs.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The proxy's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Replaces the faults (and restarts the pattern) for the Sign calls to come.
    pub fn set_faults(&self, faults: Faults) -> io::Result<()> {
        faults.check()?;
        *self
            .shared
            .decider
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Decider::new(faults);
        Ok(())
    }

    /// What the proxy did so far.
    pub fn counters(&self) -> Counters {
        self.shared.counters.snapshot()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                shared.counters.connections.fetch_add(1, Ordering::SeqCst);
                let shared = shared.clone();
                tokio::spawn(async move {
                    // A broken client connection ends its task; nothing to report.
                    let _ = serve_connection(stream, shared).await;
                });
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
        }
    }
}

/// One HTTP/1.1 message: start line, headers in order, de-chunked body.
struct Message {
    start_line: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Message {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn wants_close(&self) -> bool {
        self.header("connection")
            .is_some_and(|v| v.to_ascii_lowercase().contains("close"))
            || self.start_line.ends_with("HTTP/1.0")
    }

    /// The message re-framed: hop-by-hop and framing headers replaced by `Content-Length` and
    /// the given `Connection` value (if any).
    fn encode(&self, connection: Option<&str>) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.body.len() + 512);
        out.extend_from_slice(self.start_line.as_bytes());
        out.extend_from_slice(b"\r\n");
        for (n, v) in &self.headers {
            let drop = [
                "connection",
                "keep-alive",
                "proxy-connection",
                "transfer-encoding",
                "content-length",
            ]
            .iter()
            .any(|h| n.eq_ignore_ascii_case(h));
            if !drop {
                out.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
            }
        }
        out.extend_from_slice(format!("Content-Length: {}\r\n", self.body.len()).as_bytes());
        if let Some(c) = connection {
            out.extend_from_slice(format!("Connection: {c}\r\n").as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&self.body);
        out
    }
}

fn invalid(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

/// Reads one line (without its CRLF); `None` at a clean end of stream before any byte.
async fn read_line<R: AsyncBufRead + Unpin>(
    r: &mut R,
    budget: &mut usize,
) -> io::Result<Option<String>> {
    let mut buf = Vec::new();
    let n = r.read_until(b'\n', &mut buf).await?;
    if n == 0 {
        return Ok(None);
    }
    if n > *budget {
        return Err(invalid("HTTP head too large"));
    }
    *budget -= n;
    if buf.last() != Some(&b'\n') {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed inside a line",
        ));
    }
    while matches!(buf.last(), Some(b'\n' | b'\r')) {
        buf.pop();
    }
    String::from_utf8(buf)
        .map(Some)
        .map_err(|_| invalid("HTTP head is not UTF-8"))
}

/// Reads one message. `None` when the peer closed the connection before sending anything.
/// A response without `Content-Length` or chunked encoding runs until the peer closes.
async fn read_message<R: AsyncBufRead + Unpin>(
    r: &mut R,
    is_response: bool,
) -> io::Result<Option<Message>> {
    let mut budget = MAX_HEAD;
    let start_line = loop {
        match read_line(r, &mut budget).await? {
            None => return Ok(None),
            // Tolerate stray empty lines between messages (RFC 9112 section 2.2).
            Some(l) if l.is_empty() => continue,
            Some(l) => break l,
        }
    };
    let mut headers = Vec::new();
    loop {
        let line = read_line(r, &mut budget).await?.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed inside the head",
            )
        })?;
        if line.is_empty() {
            break;
        }
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| invalid(format!("malformed header line {line:?}")))?;
        headers.push((name.trim().to_owned(), value.trim().to_owned()));
    }
    let mut msg = Message {
        start_line,
        headers,
        body: Vec::new(),
    };
    let chunked = msg
        .header("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    if chunked {
        msg.body = read_chunked(r).await?;
    } else if let Some(len) = msg.header("content-length") {
        let len: usize = len
            .parse()
            .map_err(|_| invalid(format!("bad Content-Length {len:?}")))?;
        if len > MAX_BODY {
            return Err(invalid("body too large"));
        }
        let mut body = vec![0u8; len];
        r.read_exact(&mut body).await?;
        msg.body = body;
    } else if is_response {
        let status: u16 = msg
            .start_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        // 1xx, 204 and 304 have no body; anything else runs until the peer closes.
        if !(status < 200 || status == 204 || status == 304) {
            let mut body = Vec::new();
            r.take(MAX_BODY as u64 + 1).read_to_end(&mut body).await?;
            if body.len() > MAX_BODY {
                return Err(invalid("body too large"));
            }
            msg.body = body;
        }
    }
    Ok(Some(msg))
}

async fn read_chunked<R: AsyncBufRead + Unpin>(r: &mut R) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    let mut budget = MAX_HEAD;
    loop {
        let line = read_line(r, &mut budget).await?.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed inside a chunked body",
            )
        })?;
        let size_text = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| invalid(format!("bad chunk size {line:?}")))?;
        if size == 0 {
            // Trailers, up to the empty line.
            loop {
                match read_line(r, &mut budget).await? {
                    Some(l) if !l.is_empty() => continue,
                    _ => return Ok(body),
                }
            }
        }
        if body.len() + size > MAX_BODY {
            return Err(invalid("body too large"));
        }
        let start = body.len();
        body.resize(start + size, 0);
        r.read_exact(&mut body[start..]).await?;
        let mut crlf = [0u8; 2];
        r.read_exact(&mut crlf).await?;
        if &crlf != b"\r\n" {
            return Err(invalid("chunk not followed by CRLF"));
        }
    }
}

/// Serves one client connection: requests one after another (keep-alive) until the client
/// closes, asks to close, or a Sign call is dropped.
async fn serve_connection(stream: TcpStream, shared: Arc<Shared>) -> io::Result<()> {
    let _ = stream.set_nodelay(true);
    let (read_half, mut write_half) = stream.into_split();
    let mut reader = BufReader::new(read_half);
    while let Some(request) = read_message(&mut reader, false).await? {
        let is_sign = request
            .header("x-amz-target")
            .is_some_and(|t| t.trim() == SIGN_TARGET);
        let fate = if is_sign {
            shared.decide()
        } else {
            Fate::Forward
        };
        let close = request.wants_close();
        let answer = match fate {
            Fate::Drop => {
                shared.counters.sign_dropped.fetch_add(1, Ordering::SeqCst);
                // Close without a byte of answer: the client sees the connection end.
                let _ = write_half.shutdown().await;
                return Ok(());
            }
            Fate::Throttle => {
                shared
                    .counters
                    .sign_throttled
                    .fetch_add(1, Ordering::SeqCst);
                throttling_answer()
            }
            Fate::Forward => match forward(&request, shared.upstream).await {
                Ok(response) => {
                    let c = if is_sign {
                        &shared.counters.sign_forwarded
                    } else {
                        &shared.counters.other_forwarded
                    };
                    c.fetch_add(1, Ordering::SeqCst);
                    response
                }
                Err(e) => {
                    shared
                        .counters
                        .upstream_errors
                        .fetch_add(1, Ordering::SeqCst);
                    bad_gateway(&e)
                }
            },
        };
        write_half
            .write_all(&answer.encode(close.then_some("close")))
            .await?;
        write_half.flush().await?;
        if close {
            let _ = write_half.shutdown().await;
            return Ok(());
        }
    }
    Ok(())
}

fn throttling_answer() -> Message {
    Message {
        start_line: "HTTP/1.1 400 Bad Request".into(),
        headers: vec![
            ("Content-Type".into(), "application/x-amz-json-1.1".into()),
            (
                "x-amzn-RequestId".into(),
                "00000000-0000-4000-8000-kubesignfault".into(),
            ),
        ],
        body: THROTTLING_BODY.as_bytes().to_vec(),
    }
}

fn bad_gateway(e: &io::Error) -> Message {
    Message {
        start_line: "HTTP/1.1 502 Bad Gateway".into(),
        headers: vec![("Content-Type".into(), "text/plain".into())],
        body: format!("kms fault proxy: upstream failed: {e}").into_bytes(),
    }
}

/// Passes one request to the emulator on a fresh connection and reads its whole answer.
async fn forward(request: &Message, upstream: SocketAddr) -> io::Result<Message> {
    let stream = TcpStream::connect(upstream).await?;
    let _ = stream.set_nodelay(true);
    let (read_half, mut write_half) = stream.into_split();
    write_half.write_all(&request.encode(Some("close"))).await?;
    write_half.flush().await?;
    let mut reader = BufReader::new(read_half);
    read_message(&mut reader, true).await?.ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the emulator closed without answering",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn even_pattern_hits_the_share_exactly() {
        for (throttle, drop) in [(0.1, 0.0), (0.5, 0.1), (0.9, 0.0), (0.3, 0.3)] {
            let mut d = Decider::new(Faults::even(throttle, drop));
            let fates: Vec<Fate> = (0..1000).map(|_| d.next()).collect();
            let t = fates.iter().filter(|f| **f == Fate::Throttle).count();
            let x = fates.iter().filter(|f| **f == Fate::Drop).count();
            assert!(
                (t as f64 - 1000.0 * throttle).abs() <= 1.0,
                "{throttle}: {t}"
            );
            assert!((x as f64 - 1000.0 * drop).abs() <= 1.0, "{drop}: {x}");
        }
        // 90%: one forwarded, then nine throttled, repeatedly.
        let mut d = Decider::new(Faults::even(0.9, 0.0));
        let first: Vec<Fate> = (0..20).map(|_| d.next()).collect();
        assert_eq!(first[0], Fate::Forward);
        assert!(
            first[1..10].iter().all(|f| *f == Fate::Throttle),
            "{first:?}"
        );
        assert_eq!(first[10], Fate::Forward);
    }

    #[test]
    fn random_pattern_is_reproducible_and_near_the_share() {
        let run = |seed| {
            let mut d = Decider::new(Faults::random(0.5, 0.1, seed));
            (0..10_000).map(|_| d.next()).collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
        let fates = run(42);
        let t = fates.iter().filter(|f| **f == Fate::Throttle).count() as f64 / 10_000.0;
        let x = fates.iter().filter(|f| **f == Fate::Drop).count() as f64 / 10_000.0;
        assert!((t - 0.5).abs() < 0.03, "{t}");
        assert!((x - 0.1).abs() < 0.02, "{x}");
    }

    #[test]
    fn shares_are_checked_and_endpoints_must_be_loopback() {
        assert!(Faults::even(0.9, 0.2).check().is_err());
        assert!(Faults::even(-0.1, 0.0).check().is_err());
        assert!(Faults::even(f64::NAN, 0.0).check().is_err());
        assert!(Faults::even(0.5, 0.5).check().is_ok());
        assert_eq!(
            loopback_addr("http://127.0.0.1:4566/").ok(),
            Some(SocketAddr::from(([127, 0, 0, 1], 4566)))
        );
        assert!(loopback_addr("https://127.0.0.1:4566").is_err());
        assert!(loopback_addr("http://kms.us-east-1.amazonaws.com:443").is_err());
    }

    #[tokio::test]
    async fn parses_and_reframes_chunked_messages() {
        let raw: &[u8] = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: application/x-amz-json-1.1\r\n\r\n4\r\n{\"a\"\r\n3;ext=1\r\n:1}\r\n0\r\nTrailer: x\r\n\r\n";
        let mut r = BufReader::new(raw);
        let m = read_message(&mut r, true).await.unwrap().unwrap();
        assert_eq!(m.body, b"{\"a\":1}");
        let text = String::from_utf8(m.encode(None)).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(text.contains("Content-Length: 7\r\n"), "{text}");
        assert!(
            !text.to_ascii_lowercase().contains("transfer-encoding"),
            "{text}"
        );
        assert!(text.ends_with("\r\n\r\n{\"a\":1}"), "{text}");

        let raw: &[u8] = b"POST / HTTP/1.1\r\nX-Amz-Target: TrentService.Sign\r\nContent-Length: 2\r\n\r\n{}POST / HTTP/1.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
        let mut r = BufReader::new(raw);
        let a = read_message(&mut r, false).await.unwrap().unwrap();
        assert_eq!(a.header("x-amz-target"), Some(SIGN_TARGET));
        assert_eq!(a.body, b"{}");
        assert!(!a.wants_close());
        let b = read_message(&mut r, false).await.unwrap().unwrap();
        assert!(b.wants_close() && b.body.is_empty());
        assert!(read_message(&mut r, false).await.unwrap().is_none());
    }
}
