//! What the HTTP server and its routes accept: the server's timeouts and per-client shares
//! ([`HttpLimits`]), the concurrency bound, and the largest body each kind of route reads.
//! Constants only: `server.rs` and `admission.rs` enforce them, the router applies the body
//! limits per route.

/// Most requests handled at once; more are refused with 503 rather than queued, so a flood
/// cannot grow memory or starve the blocking pool that chain calls run on.
pub const CONCURRENT_REQUESTS_MAX: usize = 256;

/// Largest FHIR resource accepted, in bytes.
pub(crate) const RECORD_BODY_BYTES_MAX: usize = medledger_records::RECORD_PLAINTEXT_BYTES_MAX;

/// Largest Bundle accepted (its records' plaintexts are stored off-chain, so this is not bound
/// by the batch transaction's size; directory entries are).
pub const BUNDLE_BODY_BYTES_MAX: usize = 16 * 1024 * 1024;

/// What one client may hold of the node's HTTP server, and for how long. A client is an IPv4
/// address or an IPv6 /64. The defaults suit a node; tests shorten the timeouts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpLimits {
    /// A connection must send a request's complete headers within this long of opening or of
    /// its previous answer, or it is closed; so this also closes idle kept-alive connections.
    pub header_read_timeout_ms: u64,
    /// A request's whole body must arrive within this long of its headers, or the answer is
    /// 408 and the connection is closed.
    pub body_read_timeout_ms: u64,
    /// A connection whose answer makes no write progress for this long (the client stopped
    /// reading) is closed.
    pub write_stall_timeout_ms: u64,
    /// Open connections per client; more are answered 503 with `Retry-After` and closed.
    pub connections_per_client_max: usize,
    /// Open connections in all; more are answered 503 and closed. Keep it well below the
    /// process's open-file limit (`ulimit -n`), which storage and p2p need too.
    pub connections_max: usize,
    /// Request-body bytes one client may have in memory at once (bodies are read whole before
    /// a request is served); more is answered 503. At least the largest body a route takes.
    pub body_buffer_bytes_per_client_max: usize,
    /// Request-body bytes in memory at once in all; more is answered 503.
    pub body_buffer_bytes_max: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            header_read_timeout_ms: 10_000,
            body_read_timeout_ms: 30_000,
            write_stall_timeout_ms: 30_000,
            // A hospital's integration engine behind one address opens many connections; one
            // address still holds at most a sixteenth of the node's.
            connections_per_client_max: 256,
            connections_max: 4_096,
            body_buffer_bytes_per_client_max: 64 * 1024 * 1024,
            body_buffer_bytes_max: 512 * 1024 * 1024,
        }
    }
}
