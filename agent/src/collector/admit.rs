//! Admission of the collector's TCP connections. The TLS handshake and the start of HTTP/2 are
//! checked here, before tonic sees a connection, so that no refusal is silent: each is counted
//! by reason (the `podflow_collector_refused_connections` metric) and logged with the peer's
//! address and the reason, once per peer and reason per minute (and at most [`LOG_BUDGET`] lines
//! a minute in all, the rest summed up in the next line).
//!
//! What is refused, and why: random bytes, an HTTP/1 request (answered with a one-line HTTP
//! error before closing), a plaintext gRPC client on the TLS port, a TLS client on a plaintext
//! port, a client without a certificate or with one the client CA did not sign (mutual TLS), a
//! client that refuses the collector's certificate, and a client that sends nothing decidable
//! within [`ADMISSION_TIMEOUT`]. A peer that connects and closes without sending anything (a TCP
//! health check) is not a refusal.
use std::{
    collections::{BTreeMap, HashMap},
    fmt::Write as _,
    future::Future,
    io,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::{Arc, Mutex, PoisonError},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{Semaphore, mpsc},
};
use tokio_rustls::{TlsAcceptor, rustls, server::TlsStream};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;
use tracing::warn;

/// What every HTTP/2 connection starts with (RFC 9113 §3.4).
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// How long a new connection has to finish its TLS handshake and send the HTTP/2 preface.
pub const ADMISSION_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections admitted concurrently; beyond that, new ones wait in the listen backlog.
const MAX_PENDING: usize = 1024;
/// One log line per peer and reason per window.
const LOG_WINDOW: Duration = Duration::from_secs(60);
/// Log lines per window over all peers (a scan from many addresses is summed up, not listed).
pub const LOG_BUDGET: u32 = 50;
/// Peers remembered by the log limiter.
const LOG_PEERS: usize = 4096;

/// Why a connection was refused: the `reason` label of the refusal metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RefusalReason {
    /// Bytes that are neither TLS nor HTTP.
    NotGrpc,
    /// An HTTP/1 request, in plaintext or inside TLS.
    Http1,
    /// A plaintext HTTP/2 client (gRPC without TLS) on the TLS port.
    PlaintextOnTls,
    /// A TLS ClientHello on a plaintext port.
    TlsOnPlaintext,
    /// Mutual TLS: the client presented no certificate.
    NoClientCertificate,
    /// Mutual TLS: the client's certificate does not chain to the client CA, has expired, ...
    UntrustedClientCertificate,
    /// The client refused the collector's certificate (it sent an alert).
    ServerCertificateRefused,
    /// Another TLS handshake failure: versions, ciphers, ALPN without h2, a broken message.
    TlsHandshake,
    /// Nothing decidable within [`ADMISSION_TIMEOUT`].
    Timeout,
}

impl RefusalReason {
    pub const ALL: [RefusalReason; 9] = [
        RefusalReason::NotGrpc,
        RefusalReason::Http1,
        RefusalReason::PlaintextOnTls,
        RefusalReason::TlsOnPlaintext,
        RefusalReason::NoClientCertificate,
        RefusalReason::UntrustedClientCertificate,
        RefusalReason::ServerCertificateRefused,
        RefusalReason::TlsHandshake,
        RefusalReason::Timeout,
    ];

    pub fn label(self) -> &'static str {
        match self {
            RefusalReason::NotGrpc => "not_grpc",
            RefusalReason::Http1 => "http1",
            RefusalReason::PlaintextOnTls => "plaintext_on_tls",
            RefusalReason::TlsOnPlaintext => "tls_on_plaintext",
            RefusalReason::NoClientCertificate => "no_client_certificate",
            RefusalReason::UntrustedClientCertificate => "untrusted_client_certificate",
            RefusalReason::ServerCertificateRefused => "server_certificate_refused",
            RefusalReason::TlsHandshake => "tls_handshake",
            RefusalReason::Timeout => "timeout",
        }
    }
}

/// One refused connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub peer: SocketAddr,
    pub reason: RefusalReason,
    /// What was seen, for the log: the TLS error, the first bytes, the HTTP/1 request line.
    pub detail: String,
}

/// The refusals of one collector: counts by reason, and the log limiter.
#[derive(Debug)]
pub struct Refusals {
    counts: Mutex<BTreeMap<RefusalReason, u64>>,
    limiter: Mutex<LogLimiter<(IpAddr, RefusalReason)>>,
}

impl Default for Refusals {
    fn default() -> Self {
        Refusals {
            counts: Mutex::default(),
            limiter: Mutex::new(LogLimiter::new(LOG_WINDOW, LOG_BUDGET, LOG_PEERS)),
        }
    }
}

impl Refusals {
    /// Counts a refusal and logs it unless the limiter holds it back.
    pub fn record(&self, refusal: &Refusal) {
        *self
            .counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(refusal.reason)
            .or_default() += 1;
        let decision = self
            .limiter
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .admit((refusal.peer.ip(), refusal.reason), Instant::now());
        match decision {
            Log::Line {
                suppressed,
                others_unlogged,
            } => {
                warn!(
                    peer = %refusal.peer,
                    reason = %refusal.reason.label(),
                    detail = %refusal.detail,
                    same_since_last_line = suppressed,
                    "collector refused a connection"
                );
                if others_unlogged > 0 {
                    warn!(
                        refusals = others_unlogged,
                        "collector refused further connections without logging each (more than \
                         {LOG_BUDGET} log lines a minute); podflow_collector_refused_connections \
                         counts them all"
                    );
                }
            }
            Log::Held => {}
        }
    }

    /// Refusals so far, every reason listed (zero included).
    pub fn counts(&self) -> BTreeMap<&'static str, u64> {
        let counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        RefusalReason::ALL
            .iter()
            .map(|reason| (reason.label(), counts.get(reason).copied().unwrap_or(0)))
            .collect()
    }
}

/// The limiter's decision for one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Log {
    /// Log it. `suppressed`: events of the same key held back since its last line;
    /// `others_unlogged`: events of any key held back by the budget since the last line.
    Line {
        suppressed: u64,
        others_unlogged: u64,
    },
    /// Held back (counted into the next line).
    Held,
}

/// One line per key per window, and at most `budget` lines per window in all. Remembers at most
/// `capacity` keys: when full, keys whose window has passed are forgotten, and a new key beyond
/// that is held back (counted in `others_unlogged`).
#[derive(Debug)]
pub struct LogLimiter<K> {
    window: Duration,
    budget: u32,
    capacity: usize,
    keys: HashMap<K, (Instant, u64)>,
    window_start: Option<Instant>,
    lines_in_window: u32,
    unlogged: u64,
}

impl<K: std::hash::Hash + Eq> LogLimiter<K> {
    pub fn new(window: Duration, budget: u32, capacity: usize) -> Self {
        LogLimiter {
            window,
            budget,
            capacity,
            keys: HashMap::new(),
            window_start: None,
            lines_in_window: 0,
            unlogged: 0,
        }
    }

    pub fn admit(&mut self, key: K, now: Instant) -> Log {
        let window = self.window;
        let fresh = |at: Instant| now.saturating_duration_since(at) < window;
        if self.window_start.is_none_or(|start| !fresh(start)) {
            self.window_start = Some(now);
            self.lines_in_window = 0;
        }
        let known = match self.keys.get_mut(&key) {
            Some((last, suppressed)) if fresh(*last) => {
                *suppressed += 1;
                return Log::Held;
            }
            Some(_) => true,
            None => false,
        };
        if !known && self.keys.len() >= self.capacity {
            self.keys.retain(|_, (last, _)| fresh(*last));
        }
        if self.lines_in_window >= self.budget || (!known && self.keys.len() >= self.capacity) {
            self.unlogged += 1;
            return Log::Held;
        }
        self.lines_in_window += 1;
        let suppressed = self
            .keys
            .insert(key, (now, 0))
            .map_or(0, |(_, suppressed)| suppressed);
        Log::Line {
            suppressed,
            others_unlogged: std::mem::take(&mut self.unlogged),
        }
    }
}

/// What the first bytes of a connection say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Opening {
    /// A TLS handshake record (on the TLS port).
    Tls,
    /// The HTTP/2 preface (on the plaintext port, or inside TLS).
    Http2,
    /// Closed before anything decidable.
    Closed,
    Refused(RefusalReason, String),
}

const HTTP1_METHODS: [&str; 9] = [
    "GET ", "POST ", "PUT ", "HEAD ", "DELETE ", "OPTIONS ", "PATCH ", "CONNECT ", "TRACE ",
];

/// Classifies the first bytes of a connection; `None` while more bytes are needed to decide.
/// `tls`: the connection is on the TLS port and TLS has not been spoken yet.
pub fn classify(first: &[u8], tls: bool) -> Option<Opening> {
    let byte = *first.first()?;
    if tls && byte == 0x16 {
        return Some(Opening::Tls);
    }
    if PREFACE.starts_with(first) {
        return (first.len() == PREFACE.len()).then(|| {
            if tls {
                Opening::Refused(
                    RefusalReason::PlaintextOnTls,
                    "plaintext HTTP/2 (a gRPC client without TLS) on the TLS port".to_owned(),
                )
            } else {
                Opening::Http2
            }
        });
    }
    if !tls && byte == 0x16 {
        return Some(Opening::Refused(
            RefusalReason::TlsOnPlaintext,
            "a TLS handshake on the plaintext port (the collector serves no TLS here)".to_owned(),
        ));
    }
    let text = String::from_utf8_lossy(first);
    if HTTP1_METHODS.iter().any(|m| text.starts_with(m)) {
        let line = text.split(['\r', '\n']).next().unwrap_or_default();
        return Some(Opening::Refused(
            RefusalReason::Http1,
            format!("an HTTP/1 request: {}", line.escape_debug()),
        ));
    }
    if HTTP1_METHODS.iter().any(|m| m.starts_with(&*text)) {
        return None;
    }
    let mut hex = String::new();
    for b in first.iter().take(16) {
        let _ = write!(hex, "{b:02x}");
    }
    Some(Opening::Refused(
        RefusalReason::NotGrpc,
        format!("neither TLS nor HTTP/2: first bytes {hex}"),
    ))
}

/// Reads until the first bytes are decidable (at most the preface's 24 bytes). Returns the
/// decision and the bytes read, which are replayed to whoever reads the connection next.
async fn sniff<IO: AsyncRead + Unpin>(io: &mut IO, tls: bool) -> io::Result<(Opening, Vec<u8>)> {
    let mut first = Vec::with_capacity(PREFACE.len());
    loop {
        if let Some(opening) = classify(&first, tls) {
            return Ok((opening, first));
        }
        let mut chunk = [0u8; PREFACE.len()];
        let n = io.read(&mut chunk[..PREFACE.len() - first.len()]).await?;
        if n == 0 {
            return Ok((Opening::Closed, first));
        }
        first.extend_from_slice(&chunk[..n]);
    }
}

/// Names a failed TLS handshake.
pub fn tls_refusal(err: &io::Error) -> (RefusalReason, String) {
    use rustls::{AlertDescription as A, Error as E};
    let Some(tls) = err.get_ref().and_then(|e| e.downcast_ref::<E>()) else {
        return (
            RefusalReason::TlsHandshake,
            format!("TLS handshake: {err} (the client closed or reset the connection)"),
        );
    };
    match tls {
        E::NoCertificatesPresented => (
            RefusalReason::NoClientCertificate,
            "mutual TLS: the client presented no certificate".to_owned(),
        ),
        E::InvalidCertificate(why) => (
            RefusalReason::UntrustedClientCertificate,
            format!("mutual TLS: the client's certificate is refused: {why}"),
        ),
        E::AlertReceived(
            alert @ (A::BadCertificate
            | A::UnknownCA
            | A::CertificateUnknown
            | A::CertificateExpired
            | A::CertificateRevoked
            | A::UnsupportedCertificate
            | A::AccessDenied),
        ) => (
            RefusalReason::ServerCertificateRefused,
            format!("the client refused the collector's certificate (alert {alert:?})"),
        ),
        other => (
            RefusalReason::TlsHandshake,
            format!("TLS handshake: {other}"),
        ),
    }
}

/// A connection whose first bytes were read to decide on it, replayed before the rest.
#[derive(Debug)]
pub struct Sniffed<IO> {
    first: Vec<u8>,
    pos: usize,
    inner: IO,
}

impl<IO> Sniffed<IO> {
    fn new(first: Vec<u8>, inner: IO) -> Self {
        Sniffed {
            first,
            pos: 0,
            inner,
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Sniffed<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.pos < this.first.len() {
            let n = buf.remaining().min(this.first.len() - this.pos);
            buf.put_slice(&this.first[this.pos..this.pos + n]);
            this.pos += n;
            if this.pos == this.first.len() {
                this.first = Vec::new();
                this.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Sniffed<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl<IO: Connected> Connected for Sniffed<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

/// A plaintext connection that opened with the HTTP/2 preface.
pub type PlainConn = Sniffed<TcpStream>;
/// A TLS connection (handshake done) that opened with the HTTP/2 preface inside TLS.
pub type TlsConn = Sniffed<TlsStream<Sniffed<TcpStream>>>;

/// Answers an HTTP/1 client with one line before closing, so that curl or a browser says why.
async fn answer_http1<IO: AsyncWrite + Unpin>(io: &mut IO, tls_port_in_plaintext: bool) {
    let body = if tls_port_in_plaintext {
        "this podflow collector port speaks gRPC over TLS only\n"
    } else {
        "this is a podflow collector: it speaks gRPC (HTTP/2) only\n"
    };
    let response = format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), io.write_all(response.as_bytes())).await;
}

/// Closes a refused connection without resetting it: sends FIN, then reads (and drops) what the
/// peer still sends for up to a second. Closing with unread data would send a RST, which can
/// destroy what was written last (a TLS alert, the HTTP/1 answer) before the peer reads it.
async fn linger_close<IO: AsyncRead + AsyncWrite + Unpin>(io: &mut IO) {
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = io.shutdown().await;
        let mut sink = [0u8; 4096];
        while matches!(io.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
}

/// Says no to a connection: an HTTP/1 client gets a one-line answer (`tls_port`: it spoke
/// plaintext to the TLS port), then the connection is closed without a reset.
async fn refuse<IO: AsyncRead + AsyncWrite + Unpin>(
    io: &mut IO,
    reason: RefusalReason,
    detail: String,
    tls_port: bool,
) -> (RefusalReason, String) {
    if reason == RefusalReason::Http1 {
        answer_http1(io, tls_port).await;
    }
    linger_close(io).await;
    (reason, detail)
}

/// A stream (plaintext, or TLS after the handshake) that must open with the HTTP/2 preface:
/// the stream with its first bytes to replay, a refusal, or `None` when it closed early.
async fn expect_http2<IO: AsyncRead + AsyncWrite + Unpin>(
    mut io: IO,
) -> Result<Option<Sniffed<IO>>, (RefusalReason, String)> {
    match sniff(&mut io, false).await {
        Ok((Opening::Http2, first)) => Ok(Some(Sniffed::new(first, io))),
        Ok((Opening::Refused(reason, detail), _)) => {
            Err(refuse(&mut io, reason, detail, false).await)
        }
        Ok((Opening::Closed | Opening::Tls, _)) | Err(_) => Ok(None),
    }
}

/// Admits one plaintext connection: HTTP/2 or a refusal (`None`: closed early).
async fn admit_plain(tcp: TcpStream) -> Result<Option<PlainConn>, (RefusalReason, String)> {
    expect_http2(tcp).await
}

/// Admits one connection on the TLS port: a TLS handshake, then HTTP/2 inside it.
async fn admit_tls(
    mut tcp: TcpStream,
    acceptor: TlsAcceptor,
) -> Result<Option<TlsConn>, (RefusalReason, String)> {
    let first = match sniff(&mut tcp, true).await {
        Ok((Opening::Tls, first)) => first,
        Ok((Opening::Refused(reason, detail), _)) => {
            return Err(refuse(&mut tcp, reason, detail, true).await);
        }
        Ok((Opening::Closed | Opening::Http2, _)) | Err(_) => return Ok(None),
    };
    // The handshake's failure has written its alert (if any) by now.
    let tls = match acceptor
        .accept(Sniffed::new(first, tcp))
        .into_fallible()
        .await
    {
        Ok(tls) => tls,
        Err((err, mut io)) => {
            linger_close(&mut io).await;
            return Err(tls_refusal(&err));
        }
    };
    expect_http2(tls)
        .await
        .map_err(|(reason, detail)| (reason, format!("inside TLS: {detail}")))
}

/// The connections of `listener` that pass admission, for tonic's `serve_with_incoming`. The
/// accept loop ends when the stream is dropped (the server stopped).
fn incoming<C, F, Fut>(
    listener: TcpListener,
    refusals: Arc<Refusals>,
    admit: F,
) -> ReceiverStream<io::Result<C>>
where
    C: Send + 'static,
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = Result<Option<C>, (RefusalReason, String)>> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        let pending = Arc::new(Semaphore::new(MAX_PENDING));
        loop {
            let Ok(permit) = Arc::clone(&pending).acquire_owned().await else {
                return;
            };
            let (tcp, peer) = tokio::select! {
                () = tx.closed() => return,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(err) => {
                        // Out of file descriptors and the like: say it, do not spin.
                        warn!(error = %err, "collector failed to accept a connection");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let tx = tx.clone();
            let refusals = Arc::clone(&refusals);
            let admitted = admit(tcp);
            tokio::spawn(async move {
                let _permit = permit;
                let refusal = match tokio::time::timeout(ADMISSION_TIMEOUT, admitted).await {
                    Ok(Ok(Some(conn))) => {
                        let _ = tx.send(Ok(conn)).await;
                        return;
                    }
                    Ok(Ok(None)) => return,
                    Ok(Err((reason, detail))) => Refusal {
                        peer,
                        reason,
                        detail,
                    },
                    Err(_) => Refusal {
                        peer,
                        reason: RefusalReason::Timeout,
                        detail: format!(
                            "no TLS handshake or HTTP/2 preface within {ADMISSION_TIMEOUT:?}"
                        ),
                    },
                };
                refusals.record(&refusal);
            });
        }
    });
    ReceiverStream::new(rx)
}

/// Plaintext connections that opened with the HTTP/2 preface.
pub fn plain_incoming(
    listener: TcpListener,
    refusals: Arc<Refusals>,
) -> ReceiverStream<io::Result<PlainConn>> {
    incoming(listener, refusals, admit_plain)
}

/// TLS connections (mutual when the config asks for client certificates) that opened with the
/// HTTP/2 preface.
pub fn tls_incoming(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    refusals: Arc<Refusals>,
) -> ReceiverStream<io::Result<TlsConn>> {
    let acceptor = TlsAcceptor::from(config);
    incoming(listener, refusals, move |tcp| {
        admit_tls(tcp, acceptor.clone())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openings_are_decided_as_soon_as_the_bytes_allow() {
        assert_eq!(classify(b"", true), None);
        assert_eq!(classify(&[0x16, 3, 1], true), Some(Opening::Tls));
        // A preface prefix needs the rest; the whole preface is HTTP/2 in plaintext only.
        assert_eq!(classify(&PREFACE[..10], false), None);
        assert_eq!(classify(PREFACE, false), Some(Opening::Http2));
        assert!(matches!(
            classify(PREFACE, true),
            Some(Opening::Refused(RefusalReason::PlaintextOnTls, _))
        ));
        assert!(matches!(
            classify(&[0x16, 3, 1], false),
            Some(Opening::Refused(RefusalReason::TlsOnPlaintext, _))
        ));
        assert_eq!(classify(b"GE", false), None);
        let Some(Opening::Refused(RefusalReason::Http1, detail)) =
            classify(b"GET /metrics HTTP/1.1\r\n", true)
        else {
            panic!()
        };
        assert!(detail.contains("GET /metrics HTTP/1.1"), "{detail}");
        let Some(Opening::Refused(RefusalReason::NotGrpc, detail)) =
            classify(&[0xde, 0xad, 0xbe, 0xef], false)
        else {
            panic!()
        };
        assert!(detail.contains("deadbeef"), "{detail}");
        // "P" could start the preface or POST: undecided; "PX" is neither.
        assert_eq!(classify(b"P", false), None);
        assert!(matches!(
            classify(b"PX", false),
            Some(Opening::Refused(RefusalReason::NotGrpc, _))
        ));
    }

    #[test]
    fn the_limiter_logs_once_per_key_per_window_within_a_budget() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut lim = LogLimiter::new(Duration::from_secs(60), 3, 100);
        let line = |suppressed, others_unlogged| Log::Line {
            suppressed,
            others_unlogged,
        };
        assert_eq!(lim.admit("a", t0), line(0, 0));
        assert_eq!(lim.admit("a", t0 + s), Log::Held);
        assert_eq!(lim.admit("a", t0 + 2 * s), Log::Held);
        assert_eq!(lim.admit("b", t0 + 2 * s), line(0, 0));
        assert_eq!(lim.admit("c", t0 + 3 * s), line(0, 0));
        // Budget of 3 lines a window spent: a new key is held and counted for the next line.
        assert_eq!(lim.admit("d", t0 + 4 * s), Log::Held);
        // Next window: "a" logs again with its 2 held events and the 1 unlogged other.
        assert_eq!(lim.admit("a", t0 + 61 * s), line(2, 1));
        assert_eq!(lim.admit("d", t0 + 62 * s), line(0, 0));
    }

    #[test]
    fn the_limiter_remembers_a_bounded_number_of_keys() {
        let t0 = Instant::now();
        let mut lim = LogLimiter::new(Duration::from_secs(60), 1000, 10);
        for k in 0..10 {
            assert!(matches!(lim.admit(k, t0), Log::Line { .. }));
        }
        // Full of fresh keys: an 11th is held, not remembered.
        assert_eq!(lim.admit(10, t0), Log::Held);
        assert_eq!(lim.keys.len(), 10);
        // Once their window has passed, old keys make room.
        assert!(matches!(
            lim.admit(10, t0 + Duration::from_secs(61)),
            Log::Line {
                others_unlogged: 1,
                ..
            }
        ));
        assert_eq!(lim.keys.len(), 1);
    }

    #[tokio::test]
    async fn sniffed_bytes_are_replayed_before_the_rest() {
        let (mut client, server) = tokio::io::duplex(64);
        client
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\nrest")
            .await
            .unwrap();
        drop(client);
        let mut server = server;
        let (opening, first) = sniff(&mut server, false).await.unwrap();
        assert_eq!(opening, Opening::Http2);
        let mut all = Vec::new();
        Sniffed::new(first, server)
            .read_to_end(&mut all)
            .await
            .unwrap();
        assert_eq!(all, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\nrest");
    }
}
