//! TCP port forwards from the test's namespace into a host's namespace.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use crate::{Host, LabError, Shared, sys};

/// How long a forwarded connection waits for the target to accept.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest a forwarding thread sleeps before looking at the stop flag.
const WAKEUP: Duration = Duration::from_millis(200);

/// Listens on 127.0.0.1:0 in the calling thread's namespace and forwards each
/// connection to `target` as seen from inside `host`'s namespace.
pub(crate) fn start(host: &Host, target: SocketAddr) -> Result<SocketAddr, LabError> {
    let io_err = |context: &str| {
        let context = context.to_string();
        move |source| LabError::Io { context, source }
    };
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .map_err(io_err("binding the forward listener on 127.0.0.1"))?;
    listener
        .set_nonblocking(true)
        .map_err(io_err("setting the forward listener non-blocking"))?;
    let local = listener
        .local_addr()
        .map_err(io_err("reading the forward listener's address"))?;
    let shared = host.inner.shared.clone();
    let name = format!("netlab-fwd-{}", host.name());
    // The accept thread is spawned from the host's namespace thread, so it and
    // every thread it spawns live in the host's namespace: sockets they create
    // belong to it. The listener was made here and stays where it was made.
    host.run(move || {
        let inner = shared.clone();
        shared.spawn(name, move || accept_loop(listener, target, inner))
    })??;
    Ok(local)
}

fn accept_loop(listener: TcpListener, target: SocketAddr, shared: Arc<Shared>) {
    while !shared.stopping() {
        match sys::poll_read([listener.as_raw_fd()], WAKEUP) {
            Ok([0]) => continue,
            Ok(_) => {}
            Err(_) => return,
        }
        loop {
            match listener.accept() {
                Ok((client, _)) => {
                    let inner = shared.clone();
                    let spawned = shared.spawn("netlab-fwd-conn".to_string(), move || {
                        connection(client, target, inner)
                    });
                    if spawned.is_err() {
                        // Out of threads: the client sees its connection close.
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // ECONNABORTED and friends: that client is gone, keep serving.
                Err(_) => break,
            }
        }
    }
}

fn connection(client: TcpStream, target: SocketAddr, shared: Arc<Shared>) {
    let Ok(server) = TcpStream::connect_timeout(&target, CONNECT_TIMEOUT) else {
        return;
    };
    let setup = |s: &TcpStream| -> io::Result<TcpStream> {
        s.set_nonblocking(false)?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(WAKEUP))?;
        s.set_write_timeout(Some(WAKEUP))?;
        s.try_clone()
    };
    let (Ok(client2), Ok(server2)) = (setup(&client), setup(&server)) else {
        return;
    };
    let inner = shared.clone();
    let back = shared.spawn("netlab-fwd-pipe".to_string(), move || {
        pipe(server2, client2, &inner)
    });
    if back.is_ok() {
        pipe(client, server, &shared);
    }
}

/// Copies `from` to `to` until end of stream, an error, or the lab stopping.
fn pipe(mut from: TcpStream, mut to: TcpStream, shared: &Shared) {
    let mut buf = vec![0u8; 64 * 1024];
    'copy: while !shared.stopping() {
        let n = match from.read(&mut buf) {
            Ok(0) => {
                let _ = to.shutdown(Shutdown::Write);
                return;
            }
            Ok(n) => n,
            Err(e) if is_retry(&e) => continue,
            Err(_) => break,
        };
        let mut sent = 0;
        while sent < n {
            if shared.stopping() {
                break 'copy;
            }
            match to.write(&buf[sent..n]) {
                Ok(0) => break 'copy,
                Ok(k) => sent += k,
                Err(e) if is_retry(&e) => continue,
                Err(_) => break 'copy,
            }
        }
    }
    // Error or stop: tear down both sockets so the other direction ends too.
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

fn is_retry(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}
