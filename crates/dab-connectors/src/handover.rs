//! Listening sockets handed from a source that a reload retires to the
//! source that replaces it at the same address (issue 11, "reload without
//! surprises"): the new source takes the very socket, with the connections
//! still waiting in its accept queue, instead of binding anew (which would
//! fail with EADDRINUSE while the old one still listens, and refuse clients
//! in between if it did not).
//!
//! A source claims its address when it is built; the runtime builds every
//! new piece of a reload before it stops the old ones, so a retiring source
//! knows whether a successor wants its socket. The connections a retiring
//! source accepted stay open and keep being read (into the old pipelines,
//! which drain into the same sinks) until the line of sources on that
//! address really stops: they share one stop token, handed on with the
//! socket.

use std::collections::HashMap;
use std::io;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// How long a new source waits for its predecessor to hand the socket
/// over (the predecessor stops accepting as soon as the reload commits).
const WAIT: Duration = Duration::from_secs(10);
/// Between two looks for the socket while the address is in use.
const POLL: Duration = Duration::from_millis(5);

#[derive(Default)]
struct Entry {
    /// Sources built for this address that have not listened yet.
    wanted: usize,
    /// A source of this process listens on the address (or left its
    /// socket here): an address in use is then waited for, not an error.
    held: bool,
    /// The socket a retired source left, and its connections' stop.
    left: Option<(std::net::TcpListener, CancellationToken)>,
}

impl Entry {
    fn idle(&self) -> bool {
        self.wanted == 0 && !self.held && self.left.is_none()
    }
}

/// Forgets `addr` once nothing refers to it.
fn tidy(t: &mut HashMap<String, Entry>, addr: &str) {
    if t.get(addr).is_some_and(Entry::idle) {
        t.remove(addr);
    }
}

fn table() -> MutexGuard<'static, HashMap<String, Entry>> {
    static TABLE: OnceLock<Mutex<HashMap<String, Entry>>> = OnceLock::new();
    TABLE
        .get_or_init(Mutex::default)
        .lock()
        // Every update is a single field write: a panic elsewhere leaves
        // the table usable.
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A built source's claim on its listen address. Dropped without
/// listening (a reload rolled back, or a source that failed first), it is
/// withdrawn, and a socket left for it is closed.
#[derive(Debug)]
pub(crate) struct Claim {
    addr: String,
    live: bool,
}

impl Claim {
    pub(crate) fn new(addr: &str) -> Claim {
        table().entry(addr.to_owned()).or_default().wanted += 1;
        Claim {
            addr: addr.to_owned(),
            live: true,
        }
    }

    /// The socket to serve on, with the token that stops its connections:
    /// the one a retiring source left, waited for while the address is in
    /// use, or a fresh one.
    pub(crate) async fn listen(mut self) -> io::Result<(TcpListener, CancellationToken)> {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some((listener, stop)) = self.take() {
                return Ok((TcpListener::from_std(listener)?, stop));
            }
            match crate::settings::listen_tcp(&self.addr).await {
                Ok(listener) => {
                    self.withdraw();
                    table().entry(self.addr.clone()).or_default().held = true;
                    return Ok((listener, CancellationToken::new()));
                }
                Err(e)
                    if e.kind() == io::ErrorKind::AddrInUse
                        && Instant::now() < deadline
                        && self.predecessor() =>
                {
                    tokio::time::sleep(POLL).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Whether a source of this process holds the address (and is about
    /// to hand it over), rather than another process.
    fn predecessor(&self) -> bool {
        table().get(&self.addr).is_some_and(|e| e.held)
    }

    fn take(&mut self) -> Option<(std::net::TcpListener, CancellationToken)> {
        let mut t = table();
        let entry = t.get_mut(&self.addr)?;
        let left = entry.left.take()?;
        entry.wanted -= 1;
        self.live = false;
        Some(left)
    }

    fn withdraw(&mut self) {
        if !std::mem::replace(&mut self.live, false) {
            return;
        }
        let mut t = table();
        let Some(entry) = t.get_mut(&self.addr) else {
            return;
        };
        entry.wanted = entry.wanted.saturating_sub(1);
        if entry.wanted == 0 {
            if let Some((_, stop)) = entry.left.take() {
                // Nobody will take the socket: it closes, and the
                // connections it served end.
                entry.held = false;
                stop.cancel();
            }
        }
        tidy(&mut t, &self.addr);
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.withdraw();
    }
}

/// A stopping source's socket: handed to a successor built for `addr`, or
/// closed with its connections (`stop` is cancelled) when there is none.
/// True when handed over: the caller's connections then run on until the
/// successor's line stops.
pub(crate) fn leave(addr: &str, listener: TcpListener, stop: &CancellationToken) -> bool {
    let mut t = table();
    let handed = match (t.get_mut(addr), listener.into_std()) {
        (Some(entry), Ok(std)) if entry.wanted > 0 && entry.left.is_none() => {
            entry.left = Some((std, stop.clone()));
            true
        }
        (entry, _) => {
            if let Some(entry) = entry {
                entry.held = false;
            }
            stop.cancel();
            false
        }
    };
    tidy(&mut t, addr);
    handed
}
