//! Out of file descriptors, a proxy's accept loop waits instead of spinning, and serves again
//! once descriptors are free. Its own test binary: it lowers this process's descriptor limit.

use std::time::{Duration, Instant};

use nix::sys::resource::{Resource, UsageWho, getrlimit, getrusage, setrlimit};

fn cpu() -> Duration {
    let u = getrusage(UsageWho::RUSAGE_SELF).expect("getrusage");
    let t = |tv: nix::sys::time::TimeVal| {
        Duration::from_secs(tv.tv_sec() as u64) + Duration::from_micros(tv.tv_usec() as u64)
    };
    t(u.user_time()) + t(u.system_time())
}

/// The descriptor number the next open would get: the lowest free one. A limit of that number
/// makes the next accept fail with EMFILE.
fn lowest_free_fd() -> u64 {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open("/dev/null").expect("/dev/null");
    f.as_raw_fd() as u64
}

#[test]
fn accept_waits_while_out_of_descriptors() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr");
        // The client socket exists before the limit drops; connecting needs no new descriptor.
        let client = tokio::net::TcpSocket::new_v4().expect("socket");
        let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
        setrlimit(Resource::RLIMIT_NOFILE, lowest_free_fd(), hard).expect("setrlimit");
        let _conn = client.connect(addr).await.expect("connect");
        let accepting = tokio::spawn(async move { spar_proxy::accept::next(&l).await });
        let before = (cpu(), Instant::now());
        tokio::time::sleep(Duration::from_millis(600)).await;
        let used = cpu() - before.0;
        assert!(!accepting.is_finished(), "accepted with no descriptor free");
        // Spinning on EMFILE would burn about the whole 600 ms.
        assert!(
            used < Duration::from_millis(150),
            "accept loop used {used:?} of CPU in {:?} while out of descriptors",
            before.1.elapsed()
        );
        setrlimit(Resource::RLIMIT_NOFILE, soft, hard).expect("restore");
        let (_, peer) = tokio::time::timeout(Duration::from_secs(2), accepting)
            .await
            .expect("accepted once descriptors are free")
            .expect("task");
        assert!(peer.ip().is_loopback());
    });
}
