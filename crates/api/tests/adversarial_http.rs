//! Attacks on the HTTP edge by unauthenticated clients, over real loopback sockets: slow
//! bodies, half-sent headers, and one client opening every connection. Distinct clients are
//! distinct loopback addresses (127.0.0.2, 127.0.0.3, …), which Linux routes to a listener on
//! 127.0.0.1. Timeouts are short and test-configured; every wait is bounded with a wide margin.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::{Duration, Instant},
};

use medledger_api::HttpLimits;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
};

mod common;

use common::world::{Served, World};

/// Added to every wait for the server to act, so a slow, shared machine never fails a test.
const MARGIN: Duration = Duration::from_secs(10);

const ATTACKER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
const VICTIM: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3));
const OTHER_VICTIM: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 4));

/// Each test opens hundreds of sockets (both ends in this process): one test at a time keeps
/// the process well under a 1,024 open-file limit.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A request whose headers promise a body of which only the first byte is sent.
const SLOW_BODY: &[u8] = b"POST /v1/transactions HTTP/1.1\r\nHost: node\r\n\
    Content-Type: application/octet-stream\r\nContent-Length: 1000\r\n\r\nx";

/// A one-organisation chain's API served on a loopback socket with `http` limits.
struct Node {
    addr: SocketAddr,
    server: Served,
    _world: World,
}

impl Node {
    async fn start(http: HttpLimits) -> Self {
        let world = World::builder("medledger.api-adversarial").genesis_age_ms(3_600_000).http_limits(http).build();
        let server = world.serve().await;
        Self { addr: server.addr, server, _world: world }
    }

    /// Stops the server and checks that it finishes (graceful shutdown still works).
    async fn stop(mut self) {
        self.server.stop(MARGIN).await;
    }
}

/// A connection to `addr` from the loopback address `client`.
async fn connect_from(client: IpAddr, addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(client, 0)).unwrap();
    tokio::time::timeout(MARGIN, socket.connect(addr)).await.expect("connect in time").unwrap()
}

/// Opens `count` connections from `client`, each sending `request` (a write the server refused
/// by closing is ignored: the connection's ending says what happened).
async fn open(count: usize, client: IpAddr, addr: SocketAddr, request: &[u8]) -> Vec<TcpStream> {
    let mut streams = Vec::with_capacity(count);
    for _ in 0..count {
        let mut stream = connect_from(client, addr).await;
        let _ = stream.write_all(request).await;
        streams.push(stream);
    }
    streams
}

/// The status of `GET path` sent from `client` on a fresh connection; 0 if the connection was
/// closed without an answer.
async fn get_status(client: IpAddr, addr: SocketAddr, path: &str) -> u16 {
    let mut stream = connect_from(client, addr).await;
    let request = format!("GET {path} HTTP/1.1\r\nHost: node\r\nConnection: close\r\n\r\n");
    let _ = stream.write_all(request.as_bytes()).await;
    match ending(stream, MARGIN).await {
        Ending::Closed(bytes) => status_of(&bytes),
        Ending::Open(bytes) => panic!("GET {path} got no complete answer: {:?}", String::from_utf8_lossy(&bytes)),
    }
}

/// What became of a connection: closed by the server (end of stream or reset) with what it
/// sent before, or still open at the deadline.
enum Ending {
    Closed(Vec<u8>),
    Open(Vec<u8>),
}

async fn ending(mut stream: TcpStream, within: Duration) -> Ending {
    let mut received = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return Ending::Open(received),
            Ok(Ok(0) | Err(_)) => return Ending::Closed(received),
            Ok(Ok(n)) => received.extend_from_slice(&buf[..n]),
        }
    }
}

/// The endings of all `streams`, each waited for at most `within` (concurrently).
async fn endings(streams: Vec<TcpStream>, within: Duration) -> Vec<Ending> {
    let tasks: Vec<_> = streams.into_iter().map(|s| tokio::spawn(ending(s, within))).collect();
    let mut out = Vec::with_capacity(tasks.len());
    for task in tasks {
        out.push(task.await.unwrap());
    }
    out
}

/// The status code of an HTTP/1.1 response, 0 if there is none.
fn status_of(bytes: &[u8]) -> u16 {
    let text = String::from_utf8_lossy(bytes);
    text.strip_prefix("HTTP/1.1 ").and_then(|rest| rest.get(..3)).and_then(|code| code.parse().ok()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_body_connections_do_not_close_the_api() {
    const SLOW: usize = 300;
    let _serial = ONE_AT_A_TIME.lock().await;
    let body_read_timeout = Duration::from_secs(5);
    let node = Node::start(HttpLimits {
        body_read_timeout_ms: body_read_timeout.as_millis() as u64,
        // This attack is about the concurrency permits, not the per-client connection cap.
        connections_per_client_max: 1_000,
        ..HttpLimits::default()
    })
    .await;

    let attack_started = Instant::now();
    let slow = open(SLOW, ATTACKER, node.addr, SLOW_BODY).await;
    // Lets the server take in every slow request before asking for anything else.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let health = get_status(VICTIM, node.addr, "/v1/health").await;
    let head = get_status(OTHER_VICTIM, node.addr, "/v1/head").await;
    assert_eq!(health, 200, "/v1/health while {SLOW} slow bodies are open");
    assert_eq!(head, 200, "/v1/head while {SLOW} slow bodies are open");
    assert!(
        attack_started.elapsed() < body_read_timeout,
        "the answers must come while the slow bodies are still open; the test machine is too slow"
    );

    // The slow bodies are cut off by the server: 408, then the connection is closed.
    for (i, end) in endings(slow, body_read_timeout + MARGIN).await.into_iter().enumerate() {
        match end {
            Ending::Closed(bytes) => assert_eq!(status_of(&bytes), 408, "slow connection {i}"),
            Ending::Open(_) => panic!("slow connection {i} is still open after the body timeout"),
        }
    }
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn half_sent_headers_are_closed_after_the_header_timeout() {
    const HALF: usize = 300;
    let _serial = ONE_AT_A_TIME.lock().await;
    let header_read_timeout = Duration::from_secs(1);
    let node = Node::start(HttpLimits {
        header_read_timeout_ms: header_read_timeout.as_millis() as u64,
        connections_per_client_max: 1_000,
        ..HttpLimits::default()
    })
    .await;

    let half = open(HALF, ATTACKER, node.addr, b"GET /v1/health HTTP/1.1\r\nHost: node\r\nX-Pad: aaaa").await;
    // A kept-alive connection that answers one request and then sends nothing is closed too:
    // the header clock starts again when a response is done.
    let mut idle = connect_from(ATTACKER, node.addr).await;
    idle.write_all(b"GET /v1/health HTTP/1.1\r\nHost: node\r\n\r\n").await.unwrap();
    let mut first = [0u8; 12];
    tokio::time::timeout(MARGIN, idle.read_exact(&mut first)).await.expect("an answer").unwrap();
    assert_eq!(&first, b"HTTP/1.1 200");

    let mut streams = half;
    streams.push(idle);
    let open_after: Vec<usize> = endings(streams, header_read_timeout + MARGIN)
        .await
        .iter()
        .enumerate()
        .filter_map(|(i, end)| matches!(end, Ending::Open(_)).then_some(i))
        .collect();
    assert!(
        open_after.is_empty(),
        "{} of {} connections (the last one idle after a response) are still open {:?} after the header timeout: {:?}",
        open_after.len(),
        HALF + 1,
        MARGIN,
        &open_after[..open_after.len().min(10)]
    );
    // The server still serves everyone else.
    assert_eq!(get_status(VICTIM, node.addr, "/v1/health").await, 200);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn one_client_cannot_use_every_connection() {
    const OPENED: usize = 300;
    const PER_CLIENT: usize = 16;
    let _serial = ONE_AT_A_TIME.lock().await;
    let body_read_timeout = Duration::from_secs(5);
    let node = Node::start(HttpLimits {
        connections_per_client_max: PER_CLIENT,
        // Without a per-client cap, the attacker alone would fill this.
        connections_max: 64,
        body_read_timeout_ms: body_read_timeout.as_millis() as u64,
        ..HttpLimits::default()
    })
    .await;

    // Every connection the attacker gets holds on as long as it can (a slow body).
    let attacker = open(OPENED, ATTACKER, node.addr, SLOW_BODY).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    assert_eq!(get_status(VICTIM, node.addr, "/v1/head").await, 200, "another client is served");
    assert_eq!(get_status(OTHER_VICTIM, node.addr, "/v1/health").await, 200, "a third client is served");

    // The attacker's excess was refused at once (503 or closed); only its share was served,
    // until the body timeout cut it off with 408.
    let (mut served, mut refused) = (0, 0);
    for end in endings(attacker, body_read_timeout + MARGIN).await {
        match end {
            Ending::Closed(bytes) if status_of(&bytes) == 408 => served += 1,
            Ending::Closed(bytes) => {
                assert!(matches!(status_of(&bytes), 0 | 503), "{:?}", String::from_utf8_lossy(&bytes));
                refused += 1;
            }
            Ending::Open(_) => panic!("an attacker connection is still open after the body timeout"),
        }
    }
    assert!(served <= PER_CLIENT, "{served} attacker connections were served; the cap is {PER_CLIENT}");
    assert_eq!(served + refused, OPENED);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn clients_that_stop_reading_are_disconnected() {
    const PIPELINED: usize = 1_000;
    let _serial = ONE_AT_A_TIME.lock().await;
    let write_stall_timeout = Duration::from_millis(500);
    let node = Node::start(HttpLimits {
        write_stall_timeout_ms: write_stall_timeout.as_millis() as u64,
        // Only the stalled write may close this connection here, not an idle timeout.
        header_read_timeout_ms: 600_000,
        ..HttpLimits::default()
    })
    .await;

    // About 23 MB of answers asked for, far more than the socket buffers hold (the client's
    // receive buffer is made small), and then nothing read.
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.bind(SocketAddr::new(ATTACKER, 0)).unwrap();
    let mut stream = tokio::time::timeout(MARGIN, socket.connect(node.addr)).await.expect("connect in time").unwrap();
    let request = b"GET /portal/app.js HTTP/1.1\r\nHost: node\r\n\r\n".repeat(PIPELINED);
    tokio::time::timeout(MARGIN, stream.write_all(&request)).await.expect("requests sent").unwrap();
    tokio::time::sleep(write_stall_timeout + Duration::from_secs(4)).await;

    // What the kernel buffered still arrives, then the end: the server gave up on the client.
    match ending(stream, MARGIN).await {
        Ending::Closed(received) => {
            assert!(received.len() < PIPELINED * 20_000, "the server wrote every answer ({} bytes)", received.len());
        }
        Ending::Open(received) => {
            panic!("a client that stopped reading is still connected ({} bytes arrived since)", received.len())
        }
    }
    assert_eq!(get_status(VICTIM, node.addr, "/v1/health").await, 200);
    node.stop().await;
}
