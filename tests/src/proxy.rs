//! A fault-injecting TCP proxy: the network between a device and the server, with knobs.
//!
//! It accepts a connection, connects to the upstream (the server), and copies bytes both ways.
//! A [`Rule`], switchable at any time, decides per HTTP request what happens to it:
//!
//! - [`Fault::Pass`]: nothing, bytes flow.
//! - [`Fault::CutRequest`]: half of the request's first bytes reach the server, then both
//!   connections close — the server never sees a whole request.
//! - [`Fault::DropAnswer`]: the request reaches the server, which handles it; when its answer
//!   starts, the device's connection is closed (FIN) instead. The work is done, the device
//!   does not know it.
//! - [`Fault::ResetAnswer`]: the same with a reset (`SO_LINGER 0`, RST) instead of a close.
//! - [`Fault::StallAnswer`]: the request reaches the server; its answer is read and thrown
//!   away for as long as the connection lives, so the device waits until it times out (or the
//!   server's side closes, which closes the device's side too).
//!
//! The proxy only peeks at the first bytes of each request and answer (request line, status
//! line, `Retry-After`), to target a route (`POST /v1/sync/push`) and to log an [`Exchange`] per
//! request with its times, which scenarios use to check when a device sent what.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

use crate::Result;

/// What happens to a request the rule applies to. See the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Pass,
    CutRequest,
    DropAnswer,
    ResetAnswer,
    StallAnswer,
}

/// Which requests get which fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub fault: Fault,
    /// Only requests whose first bytes start with this (e.g. `"POST /v1/sync/push"`).
    pub only: Option<String>,
    /// Matching requests let through before the fault applies.
    pub skip: u32,
    /// Matching requests that get the fault; `None`: every one until the rule is replaced.
    pub times: Option<u32>,
}

impl Rule {
    /// Everything passes.
    pub fn pass() -> Self {
        Self::new(Fault::Pass)
    }

    /// `fault` for every request.
    pub fn new(fault: Fault) -> Self {
        Self {
            fault,
            only: None,
            skip: 0,
            times: None,
        }
    }

    /// Only for requests starting with `prefix`.
    pub fn only(mut self, prefix: &str) -> Self {
        self.only = Some(prefix.to_owned());
        self
    }

    /// After letting `n` matching requests through.
    pub fn skip(mut self, n: u32) -> Self {
        self.skip = n;
        self
    }

    /// For `n` matching requests, then pass.
    pub fn times(mut self, n: u32) -> Self {
        self.times = Some(n);
        self
    }
}

/// One request the proxy saw, and the start of its answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exchange {
    /// Connection number (in accept order).
    pub connection: u64,
    /// `POST /v1/sync/push HTTP/1.1`.
    pub request_line: String,
    /// When its first bytes arrived from the device.
    pub sent_at: Instant,
    /// When the first bytes of the answer arrived from the server.
    pub answered_at: Option<Instant>,
    pub status: Option<u16>,
    /// The answer's `Retry-After`, in seconds.
    pub retry_after: Option<u64>,
    /// The fault applied to it, if any.
    pub fault: Option<Fault>,
}

#[derive(Debug)]
struct Shared {
    rule: Mutex<Rule>,
    log: Mutex<Vec<Exchange>>,
    fired: AtomicU64,
    connections: AtomicU64,
}

impl Shared {
    /// The fault for a new request starting with `head`; consumes `skip`/`times`.
    fn decide(&self, head: &[u8]) -> Fault {
        let mut rule = self.rule.lock().unwrap_or_else(PoisonError::into_inner);
        if rule.fault == Fault::Pass {
            return Fault::Pass;
        }
        if let Some(prefix) = &rule.only
            && !head.starts_with(prefix.as_bytes())
        {
            return Fault::Pass;
        }
        if rule.skip > 0 {
            rule.skip -= 1;
            return Fault::Pass;
        }
        match &mut rule.times {
            Some(0) => return Fault::Pass,
            Some(n) => *n -= 1,
            None => {}
        }
        rule.fault
    }

    fn log(&self) -> std::sync::MutexGuard<'_, Vec<Exchange>> {
        self.log.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A running proxy; stops (with every connection) on drop.
#[derive(Debug)]
pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Closed,
    Reset,
}

#[derive(Debug)]
struct Conn {
    /// The next device bytes start a new request.
    new_request: bool,
    answered: bool,
    fault: Fault,
    index: Option<usize>,
}

fn request_line(head: &[u8]) -> String {
    let line = head.split(|b| *b == b'\r').next().unwrap_or_default();
    String::from_utf8_lossy(line).into_owned()
}

/// Status and `Retry-After` of an answer's first bytes.
fn answer_facts(head: &[u8]) -> (Option<u16>, Option<u64>) {
    let text = String::from_utf8_lossy(head);
    let headers = text.split("\r\n\r\n").next().unwrap_or_default();
    let mut lines = headers.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok());
    let retry_after = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("retry-after"))
        .and_then(|(_, v)| v.trim().parse().ok());
    (status, retry_after)
}

async fn handle(client: TcpStream, upstream: SocketAddr, shared: Arc<Shared>, id: u64) {
    let Ok(server) = TcpStream::connect(upstream).await else {
        // Nobody upstream: the device sees its connection closed.
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let conn = Mutex::new(Conn {
        new_request: true,
        answered: false,
        fault: Fault::Pass,
        index: None,
    });
    let lock = || conn.lock().unwrap_or_else(PoisonError::into_inner);

    let upward = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match client_read.read(&mut buf).await {
                Ok(0) | Err(_) => return End::Closed,
                Ok(n) => n,
            };
            let chunk = &buf[..n];
            let fault = {
                let mut c = lock();
                if c.new_request {
                    c.new_request = false;
                    c.answered = false;
                    c.fault = shared.decide(chunk);
                    let mut log = shared.log();
                    log.push(Exchange {
                        connection: id,
                        request_line: request_line(chunk),
                        sent_at: Instant::now(),
                        answered_at: None,
                        status: None,
                        retry_after: None,
                        fault: (c.fault != Fault::Pass).then_some(c.fault),
                    });
                    c.index = Some(log.len() - 1);
                }
                c.fault
            };
            if fault == Fault::CutRequest {
                shared.fired.fetch_add(1, Ordering::SeqCst);
                let _ = server_write.write_all(&chunk[..n / 2]).await;
                let _ = server_write.flush().await;
                return End::Closed;
            }
            if server_write.write_all(chunk).await.is_err() {
                return End::Closed;
            }
        }
    };
    let downward = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match server_read.read(&mut buf).await {
                Ok(0) | Err(_) => return End::Closed,
                Ok(n) => n,
            };
            let chunk = &buf[..n];
            let (fault, first) = {
                let mut c = lock();
                let first = !c.answered;
                if first {
                    c.answered = true;
                    c.new_request = true;
                    let (status, retry_after) = answer_facts(chunk);
                    if let Some(index) = c.index
                        && let Some(entry) = shared.log().get_mut(index)
                    {
                        entry.answered_at = Some(Instant::now());
                        entry.status = status;
                        entry.retry_after = retry_after;
                    }
                }
                (c.fault, first)
            };
            match fault {
                Fault::DropAnswer if first => {
                    shared.fired.fetch_add(1, Ordering::SeqCst);
                    return End::Closed;
                }
                Fault::ResetAnswer if first => {
                    shared.fired.fetch_add(1, Ordering::SeqCst);
                    return End::Reset;
                }
                Fault::StallAnswer => {
                    if first {
                        shared.fired.fetch_add(1, Ordering::SeqCst);
                    }
                }
                _ => {
                    if client_write.write_all(chunk).await.is_err() {
                        return End::Closed;
                    }
                }
            }
        }
    };
    let end = tokio::select! {
        end = upward => end,
        end = downward => end,
    };
    if end == End::Reset {
        // RST instead of FIN: no linger, and the write half must not send a FIN first.
        let _ = client_write.as_ref().set_zero_linger();
        client_write.forget();
        drop(client_read);
    }
}

impl Proxy {
    /// Listens on `127.0.0.1:0` and forwards to `upstream`, passing everything until told
    /// otherwise.
    pub async fn start(upstream: SocketAddr) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            rule: Mutex::new(Rule::pass()),
            log: Mutex::new(Vec::new()),
            fired: AtomicU64::new(0),
            connections: AtomicU64::new(0),
        });
        let accept_shared = shared.clone();
        let task = tokio::spawn(async move {
            // Dropped with the task: every connection ends with the proxy.
            let mut connections = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((client, _)) = accepted else { continue };
                        let id = accept_shared.connections.fetch_add(1, Ordering::SeqCst);
                        connections.spawn(handle(client, upstream, accept_shared.clone(), id));
                    }
                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                }
            }
        });
        Ok(Self { addr, shared, task })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:{port}`: give this to agents instead of the server's URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Replaces the rule; takes effect from the next request.
    pub fn set_rule(&self, rule: Rule) {
        *self
            .shared
            .rule
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = rule;
    }

    /// How many times a fault took effect (a request cut, an answer dropped, reset or
    /// withheld — the last three only once the server had answered).
    pub fn fired(&self) -> u64 {
        self.shared.fired.load(Ordering::SeqCst)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// Every request seen so far, in arrival order.
    pub fn exchanges(&self) -> Vec<Exchange> {
        self.shared.log().clone()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use std::time::Duration;

    use super::*;

    /// An upstream that answers every request (one read) with a fixed 200, and counts them.
    async fn upstream() -> (SocketAddr, Arc<AtomicU64>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(AtomicU64::new(0));
        let count = seen.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let count = count.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    while let Ok(n) = stream.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        // Only a complete request (headers ended) is handled.
                        if !buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                            continue;
                        }
                        count.fetch_add(1, Ordering::SeqCst);
                        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        if stream.write_all(answer).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        (addr, seen)
    }

    /// Sends one request through the proxy; returns what reading the answer gave.
    async fn exchange(proxy: &Proxy) -> std::io::Result<Vec<u8>> {
        let mut stream = TcpStream::connect(proxy.addr()).await?;
        stream
            .write_all(b"POST /v1/sync/push HTTP/1.1\r\nhost: x\r\n\r\n")
            .await?;
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(1), stream.read(&mut buf))
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        Ok(buf[..n].to_vec())
    }

    #[tokio::test]
    async fn each_fault_does_what_it_says() {
        let (addr, seen) = upstream().await;
        let proxy = Proxy::start(addr).await.unwrap();

        assert!(exchange(&proxy).await.unwrap().ends_with(b"ok"));
        assert_eq!(seen.load(Ordering::SeqCst), 1);

        proxy.set_rule(Rule::new(Fault::CutRequest).times(1));
        assert_eq!(exchange(&proxy).await.unwrap(), b"", "closed, unanswered");
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            seen.load(Ordering::SeqCst),
            1,
            "a cut request reached the server whole"
        );

        proxy.set_rule(Rule::new(Fault::DropAnswer).times(1));
        assert_eq!(
            exchange(&proxy).await.unwrap(),
            b"",
            "closed after the server answered"
        );
        assert_eq!(seen.load(Ordering::SeqCst), 2);

        proxy.set_rule(Rule::new(Fault::ResetAnswer).times(1));
        let error = exchange(&proxy).await.unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::ConnectionReset);
        assert_eq!(seen.load(Ordering::SeqCst), 3);

        proxy.set_rule(Rule::new(Fault::StallAnswer).only("POST").times(1));
        let error = exchange(&proxy).await.unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::TimedOut);
        assert_eq!(seen.load(Ordering::SeqCst), 4);

        // Rules spent: back to passing.
        assert!(exchange(&proxy).await.unwrap().ends_with(b"ok"));
        assert_eq!(proxy.fired(), 4);
        let faults: Vec<_> = proxy.exchanges().iter().map(|e| e.fault).collect();
        assert_eq!(
            faults,
            [
                None,
                Some(Fault::CutRequest),
                Some(Fault::DropAnswer),
                Some(Fault::ResetAnswer),
                Some(Fault::StallAnswer),
                None
            ]
        );
    }

    #[test]
    fn reads_status_and_retry_after() {
        let head = b"HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\nRetry-After: 3\r\n\r\n{}";
        assert_eq!(answer_facts(head), (Some(429), Some(3)));
        assert_eq!(answer_facts(b"HTTP/1.1 200 OK\r\n\r\n"), (Some(200), None));
        assert_eq!(
            request_line(b"POST /v1/sync/push HTTP/1.1\r\nhost: x\r\n"),
            "POST /v1/sync/push HTTP/1.1"
        );
    }
}
