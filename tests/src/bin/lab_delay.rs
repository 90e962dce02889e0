//! Latency for a lab host (`tests/src/lab.rs` starts one per host that
//! has a delay; root only). This kernel has no `tc netem`, so what a host
//! sends to the lab goes through a TUN device of its own: this process
//! holds each packet for the delay of its destination, then writes it
//! back, and the kernel forwards it out of `eth0` as if it had just been
//! sent. Prints `ready` once the device exists.
//!
//! usage: maki-lab-delay DEV MS [IP=MS ...]
//!   MS     the delay of packets to any address not listed
//!   IP=MS  the delay of packets to IP

use std::{
    collections::{BinaryHeap, HashMap},
    io::Write,
    net::IpAddr,
    sync::{Arc, Condvar, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use defguard_boringtun::device::tun::TunSocket;

/// How much early a packet may leave: a fraction of any delay asked for.
const SLACK: Duration = Duration::from_micros(500);

/// A packet waiting for its time; the heap's top is the earliest.
struct Due {
    at: Instant,
    seq: u64,
    packet: Vec<u8>,
}

impl PartialEq for Due {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Due {}
impl PartialOrd for Due {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Due {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

/// Where an IP packet goes.
fn destination(packet: &[u8]) -> Option<IpAddr> {
    match packet.first()? >> 4 {
        4 => {
            let b: [u8; 4] = packet.get(16..20)?.try_into().ok()?;
            Some(b.into())
        }
        6 => {
            let b: [u8; 16] = packet.get(24..40)?.try_into().ok()?;
            Some(b.into())
        }
        _ => None,
    }
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let dev = args
        .next()
        .context("usage: maki-lab-delay DEV MS [IP=MS ...]")?;
    let ms = |s: &str| -> Result<Duration> { Ok(Duration::from_millis(s.parse()?)) };
    let default = ms(&args.next().context("no delay given")?)?;
    let mut by_ip = HashMap::new();
    for arg in args {
        let Some((ip, d)) = arg.split_once('=') else {
            bail!("{arg}: not IP=MS");
        };
        by_ip.insert(ip.parse::<IpAddr>()?, ms(d)?);
    }
    let tun = Arc::new(TunSocket::new(&dev).map_err(|e| anyhow::anyhow!("tun {dev}: {e:?}"))?);
    let queue = Arc::new((Mutex::new(BinaryHeap::<Due>::new()), Condvar::new()));
    let writer = {
        let (tun, queue) = (tun.clone(), queue.clone());
        std::thread::spawn(move || {
            let (heap, ready) = &*queue;
            let Ok(mut heap) = heap.lock() else { return };
            loop {
                // Packets due within SLACK go out together: one wakeup for
                // a burst, not one per packet (wakeups are what this
                // process costs the machine).
                let soon = Instant::now() + SLACK;
                match heap.peek() {
                    Some(due) if due.at <= soon => {
                        if let Some(due) = heap.pop() {
                            // A full device queue drops it, as a link would.
                            let _ = tun.write4(&due.packet);
                        }
                    }
                    Some(due) => {
                        let wait = due.at.saturating_duration_since(Instant::now());
                        let Ok((h, _)) = ready.wait_timeout(heap, wait) else {
                            return;
                        };
                        heap = h;
                    }
                    None => {
                        let Ok(h) = ready.wait(heap) else { return };
                        heap = h;
                    }
                }
            }
        })
    };
    println!("ready");
    std::io::stdout().flush()?;
    let mut buf = vec![0u8; 65536];
    let mut seq = 0u64;
    loop {
        let packet = match tun.read(&mut buf) {
            Ok(p) => p.to_vec(),
            Err(e) => bail!("read {dev}: {e:?}"),
        };
        let delay = destination(&packet)
            .and_then(|ip| by_ip.get(&ip).copied())
            .unwrap_or(default);
        seq += 1;
        let at = Instant::now() + delay;
        let (heap, ready) = &*queue;
        let mut heap = heap.lock().map_err(|_| anyhow::anyhow!("writer died"))?;
        // The writer sleeps until the earliest packet is due: it needs
        // waking only when this one is due before that.
        let sooner = heap.peek().is_none_or(|top| at < top.at);
        heap.push(Due { at, seq, packet });
        drop(heap);
        if sooner {
            ready.notify_one();
        }
        if writer.is_finished() {
            bail!("writer died");
        }
    }
}
