//! `lldp-replay PCAP INTERFACE SECONDS`: sends every frame of a capture out of an interface,
//! again and again, for some seconds: a switch announcing itself, for the LLDP tests (in a
//! network namespace here, and inside the QEMU guest, which has no Python).

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use pcap_file::pcap::PcapReader;
use pnet_datalink::Channel;

/// Pause between rounds; switches send every 30 s, tests want an answer sooner.
const ROUND: Duration = Duration::from_millis(200);

fn frames(path: &str) -> anyhow::Result<Vec<Vec<u8>>> {
    let file = std::fs::File::open(path).with_context(|| format!("cannot open {path}"))?;
    let mut reader = PcapReader::new(file).with_context(|| format!("{path} is not a pcap file"))?;
    let mut frames = Vec::new();
    while let Some(packet) = reader.next_packet() {
        frames.push(
            packet
                .with_context(|| format!("{path}: broken packet"))?
                .data
                .into_owned(),
        );
    }
    Ok(frames)
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [pcap, interface, seconds] = args.as_slice() else {
        bail!("usage: lldp-replay PCAP INTERFACE SECONDS");
    };
    let seconds: f64 = seconds.parse().context("SECONDS must be a number")?;
    let frames = frames(pcap)?;
    let iface = pnet_datalink::interfaces()
        .into_iter()
        .find(|i| &i.name == interface)
        .with_context(|| format!("no interface {interface}"))?;
    let Channel::Ethernet(mut tx, _rx) = pnet_datalink::channel(&iface, Default::default())
        .with_context(|| format!("cannot open a raw socket on {interface}"))?
    else {
        bail!("{interface} is not an Ethernet interface");
    };
    let end = Instant::now() + Duration::from_secs_f64(seconds.max(0.0));
    while Instant::now() < end {
        for frame in &frames {
            tx.send_to(frame, None)
                .context("the socket refused the frame")?
                .with_context(|| format!("cannot send on {interface}"))?;
        }
        // Pacing, as a switch does; nothing here waits on a condition.
        #[allow(clippy::disallowed_methods)]
        std::thread::sleep(ROUND);
    }
    Ok(())
}
