//! The relay state machine (`relay::Relay`, splice, copy and auto paths) driven by random
//! interleavings of writes, reads, FINs and resets from both peers, over real loopback TCP
//! connections (the relay needs `TcpStream`s; socketpairs are not TCP).
//!
//! For any schedule: no panic; what each peer reads is a prefix of what the other wrote (never
//! corrupted, duplicated or reordered); the relay's byte counts never exceed what was written.
//! Without resets, once both peers have sent FIN and read to the end, every byte arrived and the
//! relay ended `Closed`, with the side that sent the first FIN. With a reset, the relay ends.
//!
//! Timing on real sockets is not fully deterministic, so a crash may need a few replays to
//! reproduce; the invariants hold for every timing.
#![no_main]

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;


use l4relay::relay::{self, Ended, Relay};
use libfuzzer_sys::fuzz_target;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;

struct Harness {
    runtime: Runtime,
    listener: TcpListener,
    addr: SocketAddr,
}

thread_local! {
    static HARNESS: Harness = {
        // SAFETY: setting a signal's disposition to SIG_IGN has no memory-safety preconditions.
        // Rust's runtime does this before `main` in every Rust binary (the daemon included),
        // but libFuzzer supplies `main` here: without it, splice(2) into a reset socket would
        // kill the fuzzer with SIGPIPE instead of returning EPIPE.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
        let addr = listener.local_addr().unwrap();
        Harness { runtime, listener, addr }
    };
}

/// A connected pair (ours, the relay's). Ours closes with a RST (the reset step, and no
/// TIME_WAIT piling up); the relay's is left as a session has it: its close after a clean end
/// must still deliver what it has queued.
///
/// Segments are limited to an Ethernet-sized MSS, as on a real network. Loopback's own MSS
/// (~64 KiB) is as large as the peers' receive buffers, and a receiver then withholds window
/// updates until a whole MSS is free (silly-window avoidance): the sender waits for
/// zero-window probes on a backing-off timer, 0.2 s and more per stall, which made a run slow
/// and could outlast the time allowed for the end.
async fn pair(listener: &TcpListener, addr: SocketAddr) -> (TcpStream, TcpStream) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket2::SockRef::from(&socket).set_tcp_mss(1460).unwrap();
    let (ours, theirs) = tokio::join!(socket.connect(addr), listener.accept());
    let (ours, theirs) = (ours.unwrap(), theirs.unwrap().0);
    let _ = socket2::SockRef::from(&ours).set_linger(Some(Duration::ZERO));
    let _ = ours.set_nodelay(true);
    let _ = theirs.set_nodelay(true);
    (ours, theirs)
}

/// One peer of the relay: what it wrote and read, and whether it sent FIN or reset.
struct Peer {
    stream: Option<TcpStream>,
    written: Vec<u8>,
    read: Vec<u8>,
    fin: bool,
    eof: bool,
    /// How the final read ended, when not at EOF (for the failure message).
    error: Option<std::io::ErrorKind>,
    counter: u8,
}

impl Peer {
    fn new(stream: TcpStream) -> Peer {
        Peer {
            stream: Some(stream),
            written: Vec::new(),
            read: Vec::new(),
            fin: false,
            eof: false,
            error: None,
            counter: 0,
        }
    }

    fn write(&mut self, len: usize) {
        let (Some(s), false) = (&self.stream, self.fin) else {
            return;
        };
        let data: Vec<u8> = (0..len)
            .map(|_| {
                self.counter = self.counter.wrapping_add(1);
                self.counter
            })
            .collect();
        let n = s.try_write(&data).unwrap_or(0);
        self.written.extend_from_slice(&data[..n]);
        // Bytes not taken are not part of the stream; rewind the counter over them.
        self.counter = self.counter.wrapping_sub((len - n) as u8);
    }

    fn read(&mut self, len: usize) {
        let Some(s) = &self.stream else { return };
        let mut buf = vec![0u8; len.max(1)];
        match s.try_read(&mut buf) {
            Ok(0) => self.eof = true,
            Ok(n) => self.read.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
    }

    async fn shutdown(&mut self) {
        if let (Some(s), false) = (&mut self.stream, self.fin) {
            let _ = s.shutdown().await;
            self.fin = true;
        }
    }

    /// Reads until EOF or an error, within `limit`.
    async fn drain(&mut self, limit: Duration) {
        let Some(s) = &mut self.stream else { return };
        let mut buf = vec![0u8; 64 * 1024];
        let _ = tokio::time::timeout(limit, async {
            loop {
                match tokio::io::AsyncReadExt::read(s, &mut buf).await {
                    Ok(0) => {
                        self.eof = true;
                        return;
                    }
                    Ok(n) => self.read.extend_from_slice(&buf[..n]),
                    Err(e) => {
                        self.error = Some(e.kind());
                        return;
                    }
                }
            }
        })
        .await;
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, ops)) = data.split_first() else {
        return;
    };
    let ops = &ops[..ops.len().min(256)];
    let settings = relay::Settings {
        mode: match mode % 3 {
            0 => relay::Mode::Splice,
            1 => relay::Mode::Copy,
            _ => relay::Mode::Auto,
        },
        pipe_size: 4096,
        buffer_size: 1024 << (mode / 3 % 4),
    };
    HARNESS.with(|h| h.runtime.block_on(run(h, settings, ops)));
});

async fn run(h: &Harness, settings: relay::Settings, ops: &[u8]) {
    let (client_peer, relay_client) = pair(&h.listener, h.addr).await;
    let (server_peer, relay_server) = pair(&h.listener, h.addr).await;
    let mut relay = Relay::new(relay_client, relay_server, settings);
    let mut client = Peer::new(client_peer);
    let mut server = Peer::new(server_peer);
    let mut ended = None;
    let mut reset = false;

    for &op in ops {
        let size = 1usize << (op >> 4 & 0x0f).min(17);
        match op & 0x0f {
            0 | 1 => client.write(size),
            2 | 3 => server.write(size),
            4 | 5 => client.read(size),
            6 | 7 => server.read(size),
            8 => client.shutdown().await,
            9 => server.shutdown().await,
            10 if op >> 4 < 2 => {
                client.stream = None;
                reset = true;
            }
            11 if op >> 4 < 2 => {
                server.stream = None;
                reset = true;
            }
            _ => {}
        }
        // Let the relay move: poll it a few times (a no-op once it has ended). One poll each,
        // by hand: a zero timeout would wait for the timer wheel's next millisecond.
        for _ in 0..(op >> 6) + 1 {
            if ended.is_none() {
                let poll = std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut relay).poll(cx)));
                if let Poll::Ready(end) = poll.await {
                    ended = Some(end);
                }
            }
            tokio::task::yield_now().await;
        }
    }

    // The end: FIN from every peer still there, read everything, wait for the relay (which
    // learns of a reset peer only when it reads from or writes to it).
    client.shutdown().await;
    server.shutdown().await;
    let limit = Duration::from_secs(5);
    let ended_during_ops = ended.is_some();
    // As in a session, the relay is dropped once it has ended: that is when its sockets close
    // (with a RST after a failure).
    let finish = async move {
        let end = match ended {
            Some(end) => Some(end),
            None => tokio::time::timeout(limit, &mut relay).await.ok(),
        };
        (end, relay.bytes())
    };
    let started = std::time::Instant::now();
    let (finished, (), ()) = tokio::join!(finish, client.drain(limit), server.drain(limit));
    let elapsed = started.elapsed();
    let (ended, (to_server, to_client)) = finished;

    assert!(
        server.written.starts_with(&client.read),
        "the client read bytes the server never wrote"
    );
    assert!(
        client.written.starts_with(&server.read),
        "the server read bytes the client never wrote"
    );
    assert!(to_server as usize <= client.written.len());
    assert!(to_client as usize <= server.written.len());
    let ended = ended.expect("the relay did not end within 5 s of the FINs");
    if !reset {
        // The relay's own count first: it tells a byte the relay never wrote (the relay's
        // fault) from one it wrote that the peer never got (the kernel's or this harness's).
        assert!(
            to_server as usize == client.written.len()
                && to_client as usize == server.written.len(),
            "the relay wrote {to_server} of {} bytes to the server and {to_client} of {} to the \
             client, ended {ended:?}",
            client.written.len(),
            server.written.len()
        );
        assert!(
            server.read == client.written,
            "client → server: {} of {} bytes arrived (eof {}, error {:?}) in {elapsed:?}, ended {ended:?} (during the steps: {ended_during_ops})",
            server.read.len(),
            client.written.len(),
            server.eof,
            server.error
        );
        assert!(
            client.read == server.written,
            "server → client: {} of {} bytes arrived (eof {}, error {:?}) in {elapsed:?}, ended {ended:?} (during the steps: {ended_during_ops})",
            client.read.len(),
            server.written.len(),
            client.eof,
            client.error
        );
        assert!(
            client.eof && server.eof,
            "a FIN was not carried through: client eof {} ({:?}), server eof {} ({:?}) in \
             {elapsed:?}, ended {ended:?} (during the steps: {ended_during_ops})",
            client.eof,
            client.error,
            server.eof,
            server.error
        );
        match ended {
            Ended::Closed { .. } => {}
            Ended::Failed { side, error } => {
                panic!("no reset, yet the relay failed on {side:?}: {error}")
            }
        }
    }
}
