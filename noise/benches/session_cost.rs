//! Figures for issue 12: CPU cost of a handshake per agent, and throughput of sealed envelopes
//! against plain ones over loopback TCP (ZMTP-style length-prefixed frames, one sender thread,
//! one receiver thread that opens what it reads). `cargo bench -p qs-noise`.
//!
//! Each figure is the best of three runs, to keep other work on the machine out of it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufReader, BufWriter, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use qs_noise::{respond, Initiator, KeyPair, Opener, Sealer};

fn session() -> (Sealer, Opener) {
    let server = KeyPair::generate().unwrap();
    let agent = KeyPair::generate().unwrap();
    let (init, first) = Initiator::new(&agent, server.public()).unwrap();
    let (reply, controller) = respond(&server, &first).unwrap();
    let (seal, _) = init.finish(&reply).unwrap().split();
    let (_, open) = controller.split();
    (seal, open)
}

fn handshakes(n: usize) -> (Duration, Duration) {
    let server = KeyPair::generate().unwrap();
    let agents: Vec<KeyPair> = (0..n).map(|_| KeyPair::generate().unwrap()).collect();
    let t = Instant::now();
    let firsts: Vec<_> = agents
        .iter()
        .map(|a| Initiator::new(a, server.public()).unwrap())
        .collect();
    let agent_first = t.elapsed();
    let t = Instant::now();
    let replies: Vec<_> = firsts
        .iter()
        .map(|(_, first)| respond(&server, first).unwrap().0)
        .collect();
    let controller = t.elapsed();
    let t = Instant::now();
    for ((init, _), reply) in firsts.into_iter().zip(replies) {
        init.finish(&reply).unwrap();
    }
    (controller, agent_first + t.elapsed())
}

/// Sends `count` messages of `size` bytes over loopback; returns the receiver's MB/s.
fn throughput(size: usize, count: usize, sealed: bool) -> f64 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (mut seal, mut open) = session();
    let envelope: Vec<u8> = (0..size).map(|i| (i * 7) as u8).collect();
    let sender = thread::spawn(move || {
        let mut w = BufWriter::with_capacity(256 * 1024, TcpStream::connect(addr).unwrap());
        for _ in 0..count {
            let body = if sealed {
                seal.seal(&envelope).unwrap()
            } else {
                envelope.clone()
            };
            w.write_all(&(body.len() as u64).to_be_bytes()).unwrap();
            w.write_all(&body).unwrap();
        }
        w.flush().unwrap();
    });
    let (stream, _) = listener.accept().unwrap();
    let mut r = BufReader::with_capacity(256 * 1024, stream);
    let t = Instant::now();
    let mut len = [0u8; 8];
    for _ in 0..count {
        r.read_exact(&mut len).unwrap();
        let mut body = vec![0u8; u64::from_be_bytes(len) as usize];
        r.read_exact(&mut body).unwrap();
        let plain = if sealed {
            open.open(&body, 16 << 20).unwrap()
        } else {
            body
        };
        assert_eq!(plain.len(), size);
    }
    let secs = t.elapsed().as_secs_f64();
    sender.join().unwrap();
    (size * count) as f64 / secs / 1e6
}

/// Seals and opens `count` messages of `size` bytes in one thread; returns MB/s.
fn crypto_only(size: usize, count: usize) -> f64 {
    let (mut seal, mut open) = session();
    let envelope: Vec<u8> = (0..size).map(|i| (i * 7) as u8).collect();
    let t = Instant::now();
    for _ in 0..count {
        let sealed = seal.seal(&envelope).unwrap();
        assert_eq!(open.open(&sealed, 16 << 20).unwrap().len(), size);
    }
    (size * count) as f64 / t.elapsed().as_secs_f64() / 1e6
}

fn best<T: PartialOrd + Copy>(runs: impl Iterator<Item = T>, better: fn(T, T) -> bool) -> T {
    runs.reduce(|a, b| if better(b, a) { b } else { a })
        .unwrap()
}

fn main() {
    let n = 2000;
    let (controller, agent) = best((0..3).map(|_| handshakes(n)), |a, b| a.0 < b.0);
    println!(
        "handshake CPU per agent: controller {:.0} µs, agent {:.0} µs ({n} handshakes, one thread)",
        controller.as_secs_f64() * 1e6 / n as f64,
        agent.as_secs_f64() * 1e6 / n as f64
    );
    for (size, count) in [
        (200usize, 200_000usize),
        (16 * 1024, 20_000),
        (1 << 20, 400),
    ] {
        let crypto = best((0..3).map(|_| crypto_only(size, count)), |a, b| a > b);
        println!("envelopes of {size} bytes sealed and opened in one thread: {crypto:.0} MB/s");
        let plain = best((0..3).map(|_| throughput(size, count, false)), |a, b| a > b);
        let sealed = best((0..3).map(|_| throughput(size, count, true)), |a, b| a > b);
        println!(
            "envelopes of {size} bytes over loopback: plain {plain:.0} MB/s, sealed {sealed:.0} MB/s ({:.0}% of plain)",
            100.0 * sealed / plain
        );
    }
}
