//! Tests of netlab. Each builds its own lab (unique namespace names), so they
//! run concurrently. Without root or /dev/net/tun they skip, unless
//! `NETLAB_REQUIRE=1`.

#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use netlab::{Host, Lab};

fn sa(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(ip, port))
}

fn ip(a: u8, b: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 213, a, b)
}

/// A UDP echo server on `addr` in `host`, stopped when dropped.
struct UdpEcho {
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl UdpEcho {
    fn start(host: &Host, addr: SocketAddr) -> UdpEcho {
        let socket = host.udp_socket(addr).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !flag.load(Ordering::Relaxed) {
                if let Ok((n, from)) = socket.recv_from(&mut buf) {
                    let _ = socket.send_to(&buf[..n], from);
                }
            }
        });
        UdpEcho {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for UdpEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Round trip of one datagram to `to`, or None if no answer within `wait`.
fn ping(socket: &UdpSocket, to: SocketAddr, seq: u32, wait: Duration) -> Option<Duration> {
    let start = Instant::now();
    socket.send_to(&seq.to_be_bytes(), to).unwrap();
    let mut buf = [0u8; 64];
    while start.elapsed() < wait {
        let left = wait
            .saturating_sub(start.elapsed())
            .max(Duration::from_millis(1));
        socket.set_read_timeout(Some(left)).unwrap();
        match socket.recv_from(&mut buf) {
            Ok((4, _)) if buf[..4] == seq.to_be_bytes() => return Some(start.elapsed()),
            Ok(_) => continue, // a late answer to an earlier ping
            Err(_) => break,
        }
    }
    None
}

fn median_rtt(socket: &UdpSocket, to: SocketAddr, count: u32) -> Duration {
    let mut rtts: Vec<Duration> = (0..count)
        .map(|seq| ping(socket, to, seq, Duration::from_secs(1)).expect("echo answered"))
        .collect();
    rtts.sort();
    rtts[rtts.len() / 2]
}

/// Two linked hosts: (lab, a, b, link); a has 10.213.<net>.1, b .2.
fn pair(prefix: &str, net: u8) -> Option<(Lab, Host, Host, netlab::Link)> {
    let lab = netlab::test_lab(prefix)?;
    let a = lab.add_host("a", &[ip(net, 1)]).unwrap();
    let b = lab.add_host("b", &[ip(net, 2)]).unwrap();
    let link = lab.link(&a, &b).unwrap();
    Some((lab, a, b, link))
}

fn netns_list() -> String {
    let out = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn delay_sets_round_trip_time() {
    let Some((_lab, a, b, link)) = pair("nldelay", 1) else {
        return;
    };
    let _echo = UdpEcho::start(&b, sa(ip(1, 2), 7000));
    let client = a.udp_socket(sa(ip(1, 1), 0)).unwrap();

    link.set_delay(Duration::from_millis(25));
    let slow = median_rtt(&client, sa(ip(1, 2), 7000), 7);
    eprintln!("median RTT with 25 ms one-way delay: {slow:?}");
    assert!(slow >= Duration::from_millis(50), "{slow:?}");
    assert!(slow < Duration::from_millis(80), "{slow:?}");

    link.set_delay(Duration::ZERO);
    // Let packets still queued at the old delay drain.
    thread::sleep(Duration::from_millis(60));
    let fast = median_rtt(&client, sa(ip(1, 2), 7000), 7);
    eprintln!("median RTT without delay: {fast:?}");
    assert!(fast < Duration::from_millis(5), "{fast:?}");
    // 14 round trips went over the link (the relay may count the last
    // packet a moment after the client has it).
    assert!(link.stats().delivered >= 27, "{:?}", link.stats());
}

#[test]
fn full_loss_and_partition_drop_everything_until_healed() {
    let Some((_lab, a, b, link)) = pair("nlpart", 2) else {
        return;
    };
    let _echo = UdpEcho::start(&b, sa(ip(2, 2), 7000));
    let client = a.udp_socket(sa(ip(2, 1), 0)).unwrap();
    let to = sa(ip(2, 2), 7000);
    let wait = Duration::from_millis(500);
    assert!(ping(&client, to, 1, wait).is_some(), "link works at first");

    link.set_loss(1.0);
    assert_eq!(
        ping(&client, to, 2, wait),
        None,
        "loss 1.0 drops everything"
    );
    link.set_loss(0.0);
    assert!(ping(&client, to, 3, wait).is_some(), "loss 0.0 delivers");

    link.partition();
    assert!(link.is_partitioned());
    assert_eq!(
        ping(&client, to, 4, wait),
        None,
        "partition drops everything"
    );
    assert_eq!(
        ping(&client, to, 5, wait),
        None,
        "partition drops everything"
    );
    link.heal();
    assert!(ping(&client, to, 6, wait).is_some(), "heal delivers again");
}

#[test]
fn half_loss_drops_about_half() {
    let Some((_lab, a, b, link)) = pair("nlloss", 3) else {
        return;
    };
    let receiver = b.udp_socket(sa(ip(3, 2), 7000)).unwrap();
    receiver
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let sender = a.udp_socket(sa(ip(3, 1), 0)).unwrap();
    link.set_loss(0.5);
    let counter = thread::spawn(move || {
        let mut buf = [0u8; 64];
        let mut got = 0;
        while receiver.recv_from(&mut buf).is_ok() {
            got += 1;
        }
        got
    });
    for i in 0u32..400 {
        sender
            .send_to(&i.to_be_bytes(), sa(ip(3, 2), 7000))
            .unwrap();
        if i % 50 == 49 {
            thread::sleep(Duration::from_millis(2));
        }
    }
    let got = counter.join().unwrap();
    eprintln!("loss 0.5: {got} of 400 arrived; {:?}", link.stats());
    assert!((100..=300).contains(&got), "{got}");
}

#[test]
fn tcp_moves_a_mebibyte_intact() {
    let Some((_lab, a, b, link)) = pair("nltcp", 4) else {
        return;
    };
    link.set_delay(Duration::from_millis(2));
    let listener = b.tcp_listener(sa(ip(4, 2), 7001)).unwrap();
    let server = thread::spawn(move || {
        let (mut conn, peer) = listener.accept().unwrap();
        assert_eq!(peer.ip(), ip(4, 1), "source address is a's");
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut buf = vec![0u8; 65536];
        loop {
            let n = conn.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            conn.write_all(&buf[..n]).unwrap();
        }
    });
    let data: Vec<u8> = (0..1 << 20).map(|i: u32| (i * 7 + i / 251) as u8).collect();
    let client = a.tcp_connect(sa(ip(4, 2), 7001)).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut writer = client.try_clone().unwrap();
    let sent = data.clone();
    let started = Instant::now();
    let write = thread::spawn(move || {
        writer.write_all(&sent).unwrap();
        writer.shutdown(std::net::Shutdown::Write).unwrap();
    });
    let mut back = Vec::new();
    (&client).read_to_end(&mut back).unwrap();
    write.join().unwrap();
    server.join().unwrap();
    eprintln!(
        "1 MiB echoed over a 2 ms link in {:?}; {:?}",
        started.elapsed(),
        link.stats()
    );
    assert_eq!(back.len(), data.len());
    assert!(back == data, "echoed bytes differ");
}

#[test]
fn forward_reaches_a_service_inside_the_namespace() {
    let Some(lab) = netlab::test_lab("nlfwd") else {
        return;
    };
    let h = lab.add_host("h", &[ip(5, 1)]).unwrap();
    let listener = h.tcp_listener(sa(Ipv4Addr::LOCALHOST, 7002)).unwrap();
    thread::spawn(move || {
        // Serves connections until the listener's namespace goes away.
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = conn.read(&mut buf) {
                    if n == 0 || conn.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    let fwd = h.forward_tcp(sa(Ipv4Addr::LOCALHOST, 7002)).unwrap();
    assert!(fwd.ip().is_loopback());
    let mut conn = std::net::TcpStream::connect(fwd).unwrap();
    conn.set_nodelay(true).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let started = Instant::now();
    for i in 0..200u32 {
        let msg = format!("request {i}");
        conn.write_all(msg.as_bytes()).unwrap();
        let mut back = vec![0u8; msg.len()];
        conn.read_exact(&mut back).unwrap();
        assert_eq!(back, msg.as_bytes());
    }
    let per_request = started.elapsed() / 200;
    eprintln!("forward: {per_request:?} per round trip on one connection");
    assert!(per_request < Duration::from_millis(5), "{per_request:?}");

    // A second connection through the same forward.
    let mut other = std::net::TcpStream::connect(fwd).unwrap();
    other
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    other.write_all(b"ping").unwrap();
    let mut back = [0u8; 4];
    other.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"ping");
}

#[test]
fn commands_run_in_the_host_namespace() {
    let Some(lab) = netlab::test_lab("nlcmd") else {
        return;
    };
    let h = lab.add_host("h", &[ip(6, 1), ip(6, 9)]).unwrap();
    let out = h
        .command("ip")
        .args(["-o", "addr", "show"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("10.213.6.1/32"), "{text}");
    assert!(text.contains("10.213.6.9/32"), "{text}");
    assert!(!text.contains("eth0"), "{text}");

    // A process owned by the lab: it is the program itself (no wrapper), in
    // the namespace, and it dies with the lab.
    let pid = lab.spawn(h.command("sleep").arg("30")).unwrap();
    let ns_ino = std::fs::metadata(format!("/run/netns/{}", h.netns()))
        .unwrap()
        .ino();
    let proc_ns = format!("/proc/{pid}/ns/net");
    let deadline = Instant::now() + Duration::from_secs(2);
    // Right after fork the child may still be in the parent's namespace.
    while std::fs::metadata(&proc_ns).unwrap().ino() != ns_ino {
        assert!(
            Instant::now() < deadline,
            "child never entered the namespace"
        );
        thread::sleep(Duration::from_millis(5));
    }
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap();
    assert_eq!(comm.trim(), "sleep");
    drop(lab);
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "process {pid} survived the lab"
    );
}

#[test]
fn star_of_three_hosts() {
    let Some(lab) = netlab::test_lab("nlstar") else {
        return;
    };
    let hosts: Vec<Host> = (1..=3)
        .map(|i| lab.add_host(&format!("dc{i}"), &[ip(7, i)]).unwrap())
        .collect();
    let mut links = Vec::new();
    for (i, j) in [(0, 1), (0, 2), (1, 2)] {
        let link = lab.link(&hosts[i], &hosts[j]).unwrap();
        link.set_delay(Duration::from_millis(5));
        links.push(link);
    }
    let _echoes: Vec<UdpEcho> = hosts
        .iter()
        .zip(1..)
        .map(|(h, i)| UdpEcho::start(h, sa(ip(7, i), 7000)))
        .collect();
    for (from, i) in hosts.iter().zip(1u8..) {
        let socket = from.udp_socket(sa(ip(7, i), 0)).unwrap();
        for j in (1..=3u8).filter(|&j| j != i) {
            let rtt = ping(&socket, sa(ip(7, j), 7000), 0, Duration::from_secs(1));
            let rtt = rtt.unwrap_or_else(|| panic!("dc{i} -> dc{j}: no answer"));
            assert!(rtt >= Duration::from_millis(10), "dc{i} -> dc{j}: {rtt:?}");
        }
    }
    // Cutting dc1-dc2 leaves dc1-dc3 alone.
    links[0].partition();
    let socket = hosts[0].udp_socket(sa(ip(7, 1), 0)).unwrap();
    let wait = Duration::from_millis(300);
    assert_eq!(ping(&socket, sa(ip(7, 2), 7000), 1, wait), None);
    assert!(ping(&socket, sa(ip(7, 3), 7000), 2, wait).is_some());
}

#[test]
fn drop_removes_namespaces_even_on_panic() {
    let Some(lab) = netlab::test_lab("nldrop") else {
        return;
    };
    let a = lab.add_host("a", &[ip(8, 1)]).unwrap();
    let b = lab.add_host("b", &[ip(8, 2)]).unwrap();
    lab.link(&a, &b).unwrap();
    let _fwd = a.forward_tcp(sa(Ipv4Addr::LOCALHOST, 1)).unwrap();
    lab.spawn(a.command("sleep").arg("30")).unwrap();
    let names = [a.netns().to_string(), b.netns().to_string()];
    assert!(names.iter().all(|n| netns_list().contains(n.as_str())));
    drop(lab);
    let list = netns_list();
    assert!(names.iter().all(|n| !list.contains(n.as_str())), "{list}");
    assert!(matches!(
        a.udp_socket(sa(ip(8, 1), 0)),
        Err(netlab::LabError::Stopped)
    ));

    // A test that panics half-way still cleans up.
    let made = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = made.clone();
    let result = std::panic::catch_unwind(move || {
        let lab = netlab::test_lab("nldrop").unwrap();
        let a = lab.add_host("a", &[ip(8, 1)]).unwrap();
        let b = lab.add_host("b", &[ip(8, 2)]).unwrap();
        lab.link(&a, &b).unwrap();
        seen.lock()
            .unwrap()
            .extend([a.netns().to_string(), b.netns().to_string()]);
        panic!("test failure while the lab is up");
    });
    assert!(result.is_err());
    let made = made.lock().unwrap().clone();
    assert_eq!(made.len(), 2);
    let list = netns_list();
    assert!(made.iter().all(|n| !list.contains(n.as_str())), "{list}");
}

#[test]
fn cleanup_stale_removes_namespaces_of_dead_processes() {
    if netlab::test_lab("nlstale").is_none() {
        return;
    }
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    let stale = format!("nlstale-{dead}-0-old");
    let live = format!("nlstale-{}-999-mine", std::process::id());
    for name in [&stale, &live] {
        let ok = std::process::Command::new("ip")
            .args(["netns", "add", name])
            .status()
            .unwrap();
        assert!(ok.success());
    }
    let removed = Lab::cleanup_stale("nlstale").unwrap();
    let list = netns_list();
    let _ = std::process::Command::new("ip")
        .args(["netns", "del", &live])
        .status();
    assert!(removed >= 1);
    assert!(!list.contains(&stale), "{list}");
    assert!(
        list.contains(&live),
        "namespace of a live process was removed"
    );
}
