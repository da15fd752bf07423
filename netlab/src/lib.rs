//! Small networks of Linux network namespaces joined by slow, lossy,
//! partitionable "WAN" links, for tests.
//!
//! A [`Lab`] owns everything it creates: one network namespace per
//! [`Host`], the [`Link`]s between them, processes started with
//! [`Lab::spawn`] and TCP forwards made with [`Host::forward_tcp`]. Dropping
//! the lab (also while a test panics) kills those processes, stops every
//! thread and deletes the namespaces.
//!
//! ```no_run
//! # fn main() -> Result<(), netlab::LabError> {
//! use std::net::Ipv4Addr;
//! use std::time::Duration;
//!
//! let lab = netlab::Lab::new("demo")?;
//! let dc1 = lab.add_host("dc1", &[Ipv4Addr::new(10, 213, 1, 1)])?;
//! let dc2 = lab.add_host("dc2", &[Ipv4Addr::new(10, 213, 2, 1)])?;
//! let wan = lab.link(&dc1, &dc2)?;
//! wan.set_delay(Duration::from_millis(25)); // 50 ms round trip
//! let agent = lab.spawn(dc1.command("sleep").arg("60"))?;
//! # let _ = agent;
//! wan.partition();
//! wan.heal();
//! # Ok(()) }
//! ```
//!
//! # How links work
//!
//! The kernel this runs on has no `tc netem`, so a link is emulated in user
//! space: a TUN device (`wan0`, `wan1`, … — names are per namespace) in each
//! of the two namespaces, routes (`/32`, one per address of the far host) in
//! each namespace through its TUN device, and one relay thread that reads raw
//! IP packets from either device, holds each in a FIFO until its release
//! time (`max(arrival + delay, release time of the packet ahead)`, so packets
//! are never reordered), drops it with the configured probability or while
//! partitioned, and writes it to the other device. A direction holds at most
//! 10,000 packets or 16 MiB; beyond that it drops, like a full router queue.
//!
//! Only IPv4 between the hosts' own addresses goes over links; loopback
//! addresses (127/8) never leave a namespace.
//!
//! # Requirements
//!
//! Root (or at least `CAP_SYS_ADMIN` and `CAP_NET_ADMIN` with an effective
//! uid of 0), `/dev/net/tun` and `ip` from iproute2. Tests call
//! [`test_lab`], which skips (returns `None`) when these are missing unless
//! the environment has `NETLAB_REQUIRE=1`.
#![warn(missing_docs)]

mod forward;
mod relay;
mod sys;

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use relay::{Link, LinkStats};

/// Where `ip netns` keeps its named namespaces.
const NETNS_DIR: &str = "/run/netns";
/// How long a closure given to [`Host::run`] may take.
const RUN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long [`Host::tcp_connect`] waits for the connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long dropping a lab waits for its threads and processes to end.
const DROP_WAIT: Duration = Duration::from_secs(5);
/// The MTU of the TUN devices of links.
const LINK_MTU: &str = "1500";

/// Numbers labs of this process, so that their namespace names differ.
static NEXT_LAB: AtomicU64 = AtomicU64::new(0);
/// Serialises `ip netns add`/`del` within the process: the first `add` sets
/// up the `/run/netns` mount, which is racy when done concurrently.
static NETNS_LOCK: Mutex<()> = Mutex::new(());

/// What can go wrong while building or running a lab.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// The effective user is not root.
    #[error("netlab needs root (network namespaces, TUN devices, routes)")]
    NotRoot,
    /// `/dev/net/tun` cannot be opened.
    #[error("/dev/net/tun is not usable: {0}")]
    NoTun(#[source] io::Error),
    /// A command (normally `ip ...`) failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// How it exited.
        status: String,
        /// What it wrote to stderr.
        stderr: String,
    },
    /// A system call or I/O operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A lab prefix or host name with characters or a length not allowed.
    #[error("invalid name {0:?}: {1}")]
    InvalidName(String, &'static str),
    /// A host without addresses cannot be linked.
    #[error("host {0} has no address to route over a link")]
    NoAddress(String),
    /// A host cannot be linked to itself.
    #[error("cannot link host {0} to itself")]
    SameHost(String),
    /// The lab is being dropped, or the host's namespace thread is gone.
    #[error("the lab is shutting down")]
    Stopped,
    /// A closure given to [`Host::run`] did not finish in time.
    #[error("timed out: {0}")]
    Timeout(String),
    /// A closure given to [`Host::run`] panicked.
    #[error("a closure run in the namespace of host {0} panicked")]
    Panicked(String),
}

fn io_error(context: impl Into<String>) -> impl FnOnce(io::Error) -> LabError {
    let context = context.into();
    move |source| LabError::Io { context, source }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Checks that labs can be built here: effective uid 0, `/dev/net/tun`
/// usable, `ip` runnable.
pub fn available() -> Result<(), LabError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(LabError::NotRoot);
    }
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map_err(LabError::NoTun)?;
    sys::ip(&["-V"])?;
    Ok(())
}

/// For tests: a new [`Lab`], or `None` after printing a skip message when
/// [`available`] says labs cannot be built here.
///
/// With `NETLAB_REQUIRE=1` in the environment, unavailability panics
/// instead, so that CI cannot silently skip. Failing to build the lab once
/// available also panics.
///
/// ```no_run
/// let Some(lab) = netlab::test_lab("mytest") else { return };
/// # drop(lab);
/// ```
pub fn test_lab(prefix: &str) -> Option<Lab> {
    if let Err(e) = available() {
        if std::env::var("NETLAB_REQUIRE").is_ok_and(|v| v == "1") {
            panic!("netlab is required (NETLAB_REQUIRE=1) but unavailable: {e}");
        }
        eprintln!("skipping netlab test: {e} (set NETLAB_REQUIRE=1 to fail instead)");
        return None;
    }
    match Lab::new(prefix) {
        Ok(lab) => Some(lab),
        Err(e) => panic!("cannot build a netlab lab: {e}"),
    }
}

/// What the lab and all of its threads share.
pub(crate) struct Shared {
    stop: AtomicBool,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Shared {
    pub(crate) fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Spawns a thread the lab waits for when dropped. The thread starts in
    /// the calling thread's network namespace.
    pub(crate) fn spawn(
        &self,
        name: String,
        f: impl FnOnce() + Send + 'static,
    ) -> Result<(), LabError> {
        let handle = std::thread::Builder::new()
            .name(name)
            .spawn(f)
            .map_err(io_error("spawning a netlab thread"))?;
        let mut threads = lock(&self.threads);
        threads.retain(|t| !t.is_finished());
        threads.push(handle);
        Ok(())
    }
}

/// A set of network namespaces, links, processes and forwards that is torn
/// down as a whole when dropped.
///
/// `Lab` is `Send + Sync`; its methods take `&self`.
pub struct Lab {
    prefix: String,
    id: u64,
    shared: Arc<Shared>,
    hosts: Mutex<Vec<Host>>,
    children: Mutex<Vec<Child>>,
}

impl std::fmt::Debug for Lab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lab")
            .field("prefix", &self.prefix)
            .field("id", &self.id)
            .field("hosts", &*lock(&self.hosts))
            .finish_non_exhaustive()
    }
}

fn check_name(name: &str, max: usize, dash: bool) -> Result<(), LabError> {
    let bad = |why| Err(LabError::InvalidName(name.to_string(), why));
    if name.is_empty() || name.len() > max {
        return bad("must be 1 to 32 (host) or 16 (prefix) characters");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || (dash && c == '-'))
    {
        return bad("only ASCII letters, digits and '_' (and '-' in host names)");
    }
    Ok(())
}

impl Lab {
    /// Starts an empty lab whose namespaces are named
    /// `<prefix>-<pid>-<lab number>-<host name>`.
    ///
    /// Fails with [`LabError::NotRoot`] unless running as root. First removes
    /// namespaces left behind by dead processes with the same prefix (see
    /// [`Lab::cleanup_stale`]). `prefix` is 1 to 16 ASCII letters, digits or
    /// `_`.
    pub fn new(prefix: &str) -> Result<Lab, LabError> {
        check_name(prefix, 16, false)?;
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err(LabError::NotRoot);
        }
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/net/tun")
            .map_err(LabError::NoTun)?;
        Lab::cleanup_stale(prefix)?;
        Ok(Lab {
            prefix: prefix.to_string(),
            id: NEXT_LAB.fetch_add(1, Ordering::Relaxed),
            shared: Arc::new(Shared {
                stop: AtomicBool::new(false),
                threads: Mutex::new(Vec::new()),
            }),
            hosts: Mutex::new(Vec::new()),
            children: Mutex::new(Vec::new()),
        })
    }

    /// Deletes namespaces named `<prefix>-<pid>-...` whose process `<pid>`
    /// no longer exists: leftovers of runs that crashed or were killed before
    /// their labs were dropped. Returns how many were deleted.
    pub fn cleanup_stale(prefix: &str) -> Result<usize, LabError> {
        let entries = match std::fs::read_dir(NETNS_DIR) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(io_error(format!("listing {NETNS_DIR}"))(e)),
        };
        let mut deleted = 0;
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let Some(rest) = name.strip_prefix(prefix).and_then(|r| r.strip_prefix('-')) else {
                continue;
            };
            let Some((pid, _)) = rest.split_once('-') else {
                continue;
            };
            let Ok(pid) = pid.parse::<u32>() else {
                continue;
            };
            if std::path::Path::new(&format!("/proc/{pid}")).exists() {
                continue;
            }
            let _guard = lock(&NETNS_LOCK);
            sys::ip(&["netns", "del", name])?;
            deleted += 1;
        }
        Ok(deleted)
    }

    /// Creates a host: a new network namespace with `lo` up (so 127.0.0.0/8
    /// works inside) and each of `addrs` as a `/32` on `lo`. These addresses
    /// are what other hosts reach over [`Lab::link`]s; the first one is the
    /// source address of packets the host sends over links.
    ///
    /// `name` is 1 to 32 ASCII letters, digits, `_` or `-`, unique within the
    /// lab.
    pub fn add_host(&self, name: &str, addrs: &[Ipv4Addr]) -> Result<Host, LabError> {
        check_name(name, 32, true)?;
        if self.shared.stopping() {
            return Err(LabError::Stopped);
        }
        let netns = format!(
            "{}-{}-{}-{}",
            self.prefix,
            std::process::id(),
            self.id,
            name
        );
        {
            let _guard = lock(&NETNS_LOCK);
            sys::ip(&["netns", "add", &netns])?;
        }
        // From here on the namespace exists: make sure a failure deletes it.
        let host = match Host::start(name, &netns, addrs, &self.shared) {
            Ok(host) => host,
            Err(e) => {
                let _guard = lock(&NETNS_LOCK);
                let _ = sys::ip(&["netns", "del", &netns]);
                return Err(e);
            }
        };
        lock(&self.hosts).push(host.clone());
        let setup = (|| {
            host.ip(&["link", "set", "lo", "up"])?;
            for addr in addrs {
                host.ip(&["addr", "add", &format!("{addr}/32"), "dev", "lo"])?;
            }
            Ok(())
        })();
        // On failure the host stays in `hosts`, so the lab's drop cleans up.
        setup.map(|()| host)
    }

    /// Joins hosts `a` and `b` with a WAN link (no delay, no loss at first):
    /// a TUN device in each namespace, `/32` routes to each of the other
    /// host's addresses through it, and a relay thread between the two
    /// devices. A host can have any number of links (to different hosts).
    pub fn link(&self, a: &Host, b: &Host) -> Result<Link, LabError> {
        if a.netns() == b.netns() {
            return Err(LabError::SameHost(a.name().to_string()));
        }
        if self.shared.stopping() {
            return Err(LabError::Stopped);
        }
        let src_a = a.first_addr()?;
        let src_b = b.first_addr()?;
        let (dev_a, fd_a) = a.create_tun()?;
        let (dev_b, fd_b) = b.create_tun()?;
        for (host, dev, src, far) in [(a, &dev_a, src_a, b), (b, &dev_b, src_b, a)] {
            host.ip(&["link", "set", dev, "mtu", LINK_MTU, "up"])?;
            for addr in far.addrs() {
                host.ip(&[
                    "route",
                    "add",
                    &format!("{addr}/32"),
                    "dev",
                    dev,
                    "src",
                    &src.to_string(),
                ])?;
            }
        }
        let ctl = Arc::new(relay::LinkCtl::new(
            a.netns().to_string(),
            b.netns().to_string(),
            dev_a,
            dev_b,
        ));
        let (c, s) = (ctl.clone(), self.shared.clone());
        self.shared.spawn(
            format!("netlab-link-{}-{}", a.name(), b.name()),
            move || relay::run(fd_a, fd_b, c, s),
        )?;
        Ok(Link { ctl })
    }

    /// Spawns `command` (normally made with [`Host::command`]) in a process
    /// group of its own and returns its pid. The lab owns the process: when
    /// the lab is dropped it SIGKILLs the process group and reaps the
    /// process. Tests may signal the pid themselves (SIGSTOP, SIGKILL, ...).
    ///
    /// To wait for the process or read its output, spawn it yourself and keep
    /// the [`Child`] instead.
    pub fn spawn(&self, command: &mut Command) -> Result<u32, LabError> {
        if self.shared.stopping() {
            return Err(LabError::Stopped);
        }
        let child = command
            .process_group(0)
            .spawn()
            .map_err(io_error(format!("spawning {:?}", command.get_program())))?;
        let pid = child.id();
        lock(&self.children).push(child);
        Ok(pid)
    }

    /// The hosts of this lab, in the order they were added.
    pub fn hosts(&self) -> Vec<Host> {
        lock(&self.hosts).clone()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        let hosts = std::mem::take(&mut *lock(&self.hosts));
        for host in &hosts {
            lock(&host.inner.jobs).take();
        }

        // Processes: SIGKILL the group (and the process, should it have left
        // its group), then reap.
        let mut children = std::mem::take(&mut *lock(&self.children));
        for child in &children {
            if let Ok(pid) = libc::pid_t::try_from(child.id()) {
                // SAFETY: plain syscalls; the pids are our unreaped children.
                unsafe {
                    libc::kill(-pid, libc::SIGKILL);
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
        let deadline = Instant::now() + DROP_WAIT;
        while !children.is_empty() && Instant::now() < deadline {
            children.retain_mut(|c| matches!(c.try_wait(), Ok(None)));
            if !children.is_empty() {
                std::thread::sleep(Duration::from_millis(5));
            }
        }

        // Threads: all of them look at the stop flag at least every 200 ms.
        // One stuck in a user's closure is left behind after DROP_WAIT.
        let deadline = Instant::now() + DROP_WAIT;
        loop {
            let mut threads = std::mem::take(&mut *lock(&self.shared.threads));
            let (done, running): (Vec<_>, Vec<_>) =
                threads.drain(..).partition(|t| t.is_finished());
            for t in done {
                let _ = t.join();
            }
            if running.is_empty() {
                break;
            }
            lock(&self.shared.threads).extend(running);
            if Instant::now() >= deadline {
                eprintln!("netlab: some threads of the lab did not stop in time");
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }

        // Namespaces. TUN devices went with the relay threads' descriptors.
        let _guard = lock(&NETNS_LOCK);
        for host in &hosts {
            if let Err(e) = sys::ip(&["netns", "del", host.netns()]) {
                eprintln!("netlab: {e}");
            }
        }
    }
}

type Job = Box<dyn FnOnce() + Send + 'static>;

/// A host of a [`Lab`]: one network namespace. Cheap to clone; usable from
/// any thread. Once the lab is dropped, operations on it fail.
#[derive(Clone)]
pub struct Host {
    inner: Arc<HostInner>,
}

struct HostInner {
    name: String,
    netns: String,
    addrs: Vec<Ipv4Addr>,
    /// `/run/netns/<netns>`, open with O_CLOEXEC.
    ns_file: Arc<File>,
    /// Jobs for the thread that lives in the namespace; `None` once the lab
    /// is stopping.
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    next_dev: AtomicU32,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host")
            .field("name", &self.inner.name)
            .field("netns", &self.inner.netns)
            .field("addrs", &self.inner.addrs)
            .finish()
    }
}

impl Host {
    /// Opens the namespace and starts the thread that lives in it.
    fn start(
        name: &str,
        netns: &str,
        addrs: &[Ipv4Addr],
        shared: &Arc<Shared>,
    ) -> Result<Host, LabError> {
        let path = format!("{NETNS_DIR}/{netns}");
        // std opens files with O_CLOEXEC.
        let ns_file = Arc::new(File::open(&path).map_err(io_error(format!("opening {path}")))?);
        let (tx, rx) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = mpsc::sync_channel(1);
        let (file, stop) = (ns_file.clone(), shared.clone());
        shared.spawn(format!("netlab-ns-{name}"), move || {
            let entered = sys::setns(&file);
            let ok = entered.is_ok();
            let _ = ready_tx.send(entered);
            if !ok {
                return;
            }
            while !stop.stopping() {
                match rx.recv_timeout(Duration::from_millis(100)) {
                    Ok(job) => job(),
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                }
            }
        })?;
        match ready_rx.recv_timeout(RUN_TIMEOUT) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(io_error(format!("setns into {netns}"))(e)),
            Err(_) => return Err(LabError::Stopped),
        }
        Ok(Host {
            inner: Arc::new(HostInner {
                name: name.to_string(),
                netns: netns.to_string(),
                addrs: addrs.to_vec(),
                ns_file,
                jobs: Mutex::new(Some(tx)),
                next_dev: AtomicU32::new(0),
                shared: shared.clone(),
            }),
        })
    }

    /// The name given to [`Lab::add_host`].
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The network namespace's name, as `ip netns list` shows it (for
    /// `ip netns exec <netns> ...`).
    pub fn netns(&self) -> &str {
        &self.inner.netns
    }

    /// The host's addresses, as given to [`Lab::add_host`].
    pub fn addrs(&self) -> &[Ipv4Addr] {
        &self.inner.addrs
    }

    fn first_addr(&self) -> Result<Ipv4Addr, LabError> {
        self.addrs()
            .first()
            .copied()
            .ok_or_else(|| LabError::NoAddress(self.name().to_string()))
    }

    /// Runs `ip -n <netns> <args>`.
    fn ip(&self, args: &[&str]) -> Result<(), LabError> {
        let mut all = vec!["-n", self.netns()];
        all.extend_from_slice(args);
        sys::ip(&all)
    }

    /// Creates the next `wanN` TUN device in this namespace and makes sure
    /// reverse-path filtering will not drop what arrives on it.
    fn create_tun(&self) -> Result<(String, OwnedFd), LabError> {
        let n = self.inner.next_dev.fetch_add(1, Ordering::Relaxed);
        let dev = format!("wan{n}");
        let name = dev.clone();
        let fd = self.run(move || -> io::Result<OwnedFd> {
            let fd = sys::open_tun(&name)?;
            for conf in ["all", "default", name.as_str()] {
                sys::write_sysctl(&format!("net/ipv4/conf/{conf}/rp_filter"), "0")?;
            }
            // Keep IPv6 chatter (router solicitations, MLD) off the link.
            let _ = sys::write_sysctl(&format!("net/ipv6/conf/{name}/disable_ipv6"), "1");
            Ok(fd)
        })?;
        let fd = fd.map_err(io_error(format!(
            "creating TUN device {dev} in {}",
            self.netns()
        )))?;
        Ok((dev, fd))
    }

    /// Runs `f` on a thread that lives in this host's network namespace and
    /// returns its result. Sockets created by `f` belong to the namespace and
    /// stay usable from any thread; so do threads spawned by `f` (a thread
    /// starts in the namespace of the thread that spawned it), which is how
    /// to run long work in the namespace: closures run one at a time and
    /// must finish within 30 s ([`LabError::Timeout`]).
    pub fn run<T, F>(&self, f: F) -> Result<T, LabError>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let (tx, rx) = mpsc::sync_channel(1);
        let job: Job = Box::new(move || {
            let _ = tx.send(catch_unwind(AssertUnwindSafe(f)));
        });
        {
            let jobs = lock(&self.inner.jobs);
            let sender = jobs.as_ref().ok_or(LabError::Stopped)?;
            sender.send(job).map_err(|_| LabError::Stopped)?;
        }
        match rx.recv_timeout(RUN_TIMEOUT) {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(_)) => Err(LabError::Panicked(self.name().to_string())),
            Err(mpsc::RecvTimeoutError::Timeout) => Err(LabError::Timeout(format!(
                "closure in the namespace of host {}",
                self.name()
            ))),
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(LabError::Stopped),
        }
    }

    /// A [`Command`] whose process runs in this host's network namespace.
    ///
    /// The child calls `setns(2)` between `fork` and `exec` (through
    /// [`CommandExt::pre_exec`]), so its pid is the program's own (not that
    /// of an `ip netns exec` wrapper) and signals reach it directly. Only the
    /// network namespace changes: `/proc/net` and sockets see the host's
    /// network, but unlike with `ip netns exec`, `/sys/class/net` and
    /// `/etc/netns/<name>` still show the test's view.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut command = Command::new(program);
        // The closure holds the namespace file open until the command is
        // dropped; the descriptor is O_CLOEXEC so the program does not
        // inherit it.
        let ns = self.inner.ns_file.clone();
        // SAFETY: the closure only makes the setns syscall and reads errno,
        // both async-signal-safe.
        unsafe {
            command.pre_exec(move || {
                if libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) == 0 {
                    Ok(())
                } else {
                    Err(io::Error::last_os_error())
                }
            });
        }
        command
    }

    /// A UDP socket bound to `bind` in this host's namespace.
    pub fn udp_socket(&self, bind: SocketAddr) -> Result<UdpSocket, LabError> {
        self.run(move || UdpSocket::bind(bind))?
            .map_err(io_error(format!("binding UDP {bind} in {}", self.netns())))
    }

    /// A TCP listener bound to `bind` in this host's namespace.
    pub fn tcp_listener(&self, bind: SocketAddr) -> Result<TcpListener, LabError> {
        self.run(move || TcpListener::bind(bind))?
            .map_err(io_error(format!("binding TCP {bind} in {}", self.netns())))
    }

    /// A TCP connection to `addr` made from this host's namespace (waiting
    /// at most 5 s for it to be accepted).
    pub fn tcp_connect(&self, addr: SocketAddr) -> Result<TcpStream, LabError> {
        self.run(move || TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT))?
            .map_err(io_error(format!(
                "connecting to {addr} from {}",
                self.netns()
            )))
    }

    /// Makes `target` (an address as seen from inside this host, e.g. an
    /// HTTP API on `127.0.0.1:8500`) reachable from the calling thread's
    /// namespace: returns a `127.0.0.1:<port>` address there; each connection
    /// to it is joined to a new connection to `target` made inside the host.
    ///
    /// Bytes are copied as they come, with `TCP_NODELAY` on both sides, so
    /// a keep-alive connection costs one pipe and adds no delay per request.
    /// A connection the target refuses is closed at once. The forward stops
    /// when the lab is dropped.
    pub fn forward_tcp(&self, target: SocketAddr) -> Result<SocketAddr, LabError> {
        forward::start(self, target)
    }
}
