//! The HTTP/1.1 server under the router. Our own accept loop rather than `axum::serve`, which
//! has no timeouts and no connection limits: here a connection must finish each request's
//! headers in time, a client that stops reading its answer is dropped, and each client (see
//! [`budget::client_key`]) holds at most its share of the node's connections.

use std::{
    future::Future,
    io,
    net::SocketAddr,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use axum::{Router, body::Body, extract::ConnectInfo};
use hyper::{body::Incoming, server::conn::http1};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::watch,
    time::Sleep,
};
use tower::ServiceExt;

use crate::{
    budget::{self, ClientBudget, Exhausted, Share},
    http_limits::HttpLimits,
};

/// Most bytes hyper buffers from a connection, which bounds a request's headers (431 beyond):
/// 64 KiB is far above any header this API takes (tokens, signatures) and keeps a crowd of
/// half-sent headers cheap (hyper's default is about 400 KiB).
const READ_BUFFER_BYTES_MAX: usize = 64 * 1024;

/// How long accepting pauses after an error such as running out of file descriptors, instead
/// of spinning on it.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_secs(1);

/// Serves `router` on `listener` until `shutdown` completes; then stops accepting, lets each
/// connection finish the request it is on, and returns once all are closed.
pub(crate) async fn run(
    listener: TcpListener,
    router: Router,
    limits: &HttpLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let connections = ClientBudget::new(limits.connections_per_client_max, limits.connections_max);
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        // The clock runs from the connection's start or its previous answer, so this also closes
        // kept-alive connections that sit idle.
        .header_read_timeout(Duration::from_millis(limits.header_read_timeout_ms))
        .max_buf_size(READ_BUFFER_BYTES_MAX);
    let write_stall_timeout = Duration::from_millis(limits.write_stall_timeout_ms);
    // `stop` tells connections to finish; every connection holds a `done` receiver, so
    // `done_tx.closed()` completes when the last one has ended.
    let (stop_tx, stop_rx) = watch::channel(false);
    let (done_tx, done_rx) = watch::channel(());
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            // The peer gave up before we accepted: nothing to do.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionAborted
                        | io::ErrorKind::ConnectionReset
                        | io::ErrorKind::ConnectionRefused
                ) =>
            {
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot accept HTTP connections; pausing");
                tokio::select! {
                    () = &mut shutdown => break,
                    () = tokio::time::sleep(ACCEPT_ERROR_PAUSE) => continue,
                }
            }
        };
        let slot = match connections.take(budget::client_key(peer.ip()), 1) {
            Ok(slot) => slot,
            Err(exhausted) => {
                refuse(stream, peer, exhausted);
                continue;
            }
        };
        let connection = Connection {
            stream,
            peer,
            router: router.clone(),
            http: http.clone(),
            write_stall_timeout,
            stop: stop_rx.clone(),
            _slot: slot,
            _done: done_rx.clone(),
        };
        tokio::spawn(connection.serve());
    }
    drop(listener);
    let _ = stop_tx.send(true);
    drop(done_rx);
    done_tx.closed().await;
    Ok(())
}

/// Answers a connection over its client's or the node's cap with 503 and closes it. The write
/// is one non-blocking attempt: a short answer fits an empty socket buffer, and a client that
/// cannot take it is not waited for.
fn refuse(stream: TcpStream, peer: SocketAddr, exhausted: Exhausted) {
    let message = match exhausted {
        Exhausted::Client => "too many open connections from this client; retry later",
        Exhausted::Node => "too many open connections to this node; retry later",
    };
    tracing::debug!(%peer, message, "connection refused");
    let body = format!(r#"{{"error":{{"code":503,"message":"{message}"}}}}"#);
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n\
         connection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.try_write(answer.as_bytes());
}

/// One accepted connection and what it holds until it closes.
struct Connection {
    stream: TcpStream,
    peer: SocketAddr,
    router: Router,
    http: http1::Builder,
    write_stall_timeout: Duration,
    stop: watch::Receiver<bool>,
    _slot: Share,
    _done: watch::Receiver<()>,
}

impl Connection {
    async fn serve(mut self) {
        let _ = self.stream.set_nodelay(true);
        let io = TokioIo::new(StallGuard { stream: self.stream, timeout: self.write_stall_timeout, stalled: None });
        let peer = self.peer;
        let router = self.router;
        let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
            let mut request = request.map(Body::new);
            request.extensions_mut().insert(ConnectInfo(peer));
            router.clone().oneshot(request)
        });
        let connection = self.http.serve_connection(io, service);
        let mut connection = std::pin::pin!(connection);
        let mut stopping = false;
        loop {
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(e) = result {
                        // Timeouts, resets and malformed requests: the client's problem, not ours.
                        tracing::debug!(%peer, error = %e, "HTTP connection ended");
                    }
                    break;
                }
                _ = self.stop.wait_for(|stop| *stop), if !stopping => {
                    stopping = true;
                    connection.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

/// A connection's socket that fails a write making no progress for `timeout`: a client that
/// stops reading its answer would otherwise hold the connection forever.
struct StallGuard {
    stream: TcpStream,
    timeout: Duration,
    /// Runs while a write is waiting for the client to read.
    stalled: Option<Pin<Box<Sleep>>>,
}

impl StallGuard {
    /// Whether a pending write has now waited `timeout`; arms the timer on the first wait.
    fn stalled_too_long(&mut self, cx: &mut Context<'_>) -> bool {
        let timeout = self.timeout;
        let timer = self.stalled.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        timer.as_mut().poll(cx).is_ready()
    }

    fn guard<T>(&mut self, cx: &mut Context<'_>, poll: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        match poll {
            Poll::Ready(result) => {
                self.stalled = None;
                Poll::Ready(result)
            }
            Poll::Pending if self.stalled_too_long(cx) => {
                Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "the client stopped reading")))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncRead for StallGuard {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for StallGuard {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.stream).poll_write(cx, buf);
        this.guard(cx, poll)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        this.guard(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.stream).poll_flush(cx);
        this.guard(cx, poll)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.stream).poll_shutdown(cx);
        this.guard(cx, poll)
    }
}
