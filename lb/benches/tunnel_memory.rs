//! Heap bytes the balancer holds per open, idle WebSocket tunnel, counted exactly with a
//! counting allocator (kernel socket buffers are not heap and not counted). The client and the
//! node here are raw sockets that allocate nothing per connection after the handshake, so the
//! figure is the balancer's own. Target: under 4 KiB of resident memory per tunnel.
//!
//! `cargo bench -p lb --bench tunnel_memory`

// A global allocator is unsafe by definition; this one only counts and forwards to System.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::Path;
use std::sync::atomic::{AtomicIsize, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

struct Counting;
static LIVE: AtomicIsize = AtomicIsize::new(0);
/// Live allocations by size class (power of two), to see what a tunnel is made of.
static BY_CLASS: [AtomicIsize; 32] = [const { AtomicIsize::new(0) }; 32];

fn class(size: usize) -> usize {
    (usize::BITS - size.max(1).leading_zeros()) as usize % 32
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        BY_CLASS[class(l.size())].fetch_add(1, Ordering::Relaxed);
        System.alloc(l)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        BY_CLASS[class(l.size())].fetch_sub(1, Ordering::Relaxed);
        System.dealloc(p, l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        LIVE.fetch_add(n as isize - l.size() as isize, Ordering::Relaxed);
        BY_CLASS[class(l.size())].fetch_sub(1, Ordering::Relaxed);
        BY_CLASS[class(n)].fetch_add(1, Ordering::Relaxed);
        System.realloc(p, l, n)
    }
}

#[global_allocator]
static A: Counting = Counting;

const N: usize = 2000;

/// A node that answers every upgrade with 101 and then holds the socket, idle.
async fn node(l: TcpListener) {
    let mut held = Vec::with_capacity(N + 8);
    loop {
        let Ok((mut s, _)) = l.accept().await else {
            return;
        };
        let mut buf = [0u8; 2048];
        let mut n = 0;
        while !buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut buf[n..]).await {
                Ok(0) | Err(_) => break,
                Ok(m) => n += m,
            }
        }
        let _ = s
            .write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n")
            .await;
        held.push(s);
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let node_addr = l.local_addr().unwrap();
        tokio::spawn(node(l));
        let cfg = format!(
            "[server]\naccess_log = false\n[listener]\naddress = \"127.0.0.1:0\"\n[health]\nenabled = false\n\
             [[nodes]]\nid = \"qps1\"\naddress = \"{node_addr}\"\n"
        );
        let cfg = lb_config::Config::from_toml(&cfg, Path::new(".")).unwrap();
        let server = lb::Server::start(cfg).await.unwrap();
        let addr = server.proxy_addr();
        let open = |k: usize| async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            let req = format!(
                "GET /app/{k} HTTP/1.1\r\nHost: q\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
                 Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
            );
            s.write_all(req.as_bytes()).await.unwrap();
            let mut buf = [0u8; 1024];
            let mut n = 0;
            while !buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                n += s.read(&mut buf[n..]).await.unwrap();
            }
            assert!(buf.starts_with(b"HTTP/1.1 101"));
            s
        };
        // Warm up (pools, tables, timers), then count.
        let mut warm = Vec::new();
        for k in 0..100 {
            warm.push(open(k).await);
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let mut clients = Vec::with_capacity(N);
        let tasks_before = tokio::runtime::Handle::current().metrics().num_alive_tasks();
        let before = LIVE.load(Ordering::Relaxed);
        let classes_before: Vec<isize> = BY_CLASS.iter().map(|c| c.load(Ordering::Relaxed)).collect();
        for k in 0..N {
            clients.push(open(k).await);
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        let after = LIVE.load(Ordering::Relaxed);
        let tasks_after = tokio::runtime::Handle::current().metrics().num_alive_tasks();
        println!("tasks per tunnel: {:.2}", (tasks_after - tasks_before) as f64 / N as f64);
        // The clients vector itself and the node's held sockets are the harness's share.
        let harness = (N * std::mem::size_of::<TcpStream>()) as isize;
        let per = (after - before - harness) as f64 / N as f64;
        println!(
            "heap per idle tunnel: {per:.0} bytes ({} tunnels open; balancer and both sockets' user-space state)",
            server.test_handle().open_tunnels()
        );
        for (i, c) in BY_CLASS.iter().enumerate() {
            let d = c.load(Ordering::Relaxed) - classes_before[i];
            if d.abs() >= (N / 4) as isize {
                println!("  allocations of {:>6}..{:<6} bytes: {:+.2} per tunnel", 1usize << (i.max(1) - 1), (1usize << i) - 1, d as f64 / N as f64);
            }
        }
        drop(clients);
        drop(warm);
        server.shutdown().await;
    });
}
