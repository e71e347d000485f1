//! Linux software RAID from `/proc/mdstat`.

use qs_proto::inventory::{MdArray, MdMember, MdSync};

/// Parses `/proc/mdstat`; lines it does not understand are skipped, never fatal.
pub fn parse_mdstat(text: &str) -> Vec<MdArray> {
    let mut arrays = Vec::new();
    let mut current: Option<MdArray> = None;
    for line in text.lines() {
        if let Some(array) = parse_header(line) {
            if let Some(done) = current.replace(array) {
                arrays.push(done);
            }
            continue;
        }
        let Some(array) = current.as_mut() else {
            continue;
        };
        let trimmed = line.trim();
        if trimmed.is_empty() {
            if let Some(done) = current.take() {
                arrays.push(done);
            }
            continue;
        }
        if trimmed.contains(" blocks") {
            parse_blocks_line(array, trimmed);
        } else if let Some(sync) = parse_sync_line(trimmed) {
            array.sync = Some(sync);
        }
    }
    arrays.extend(current);
    arrays.sort_by(|a, b| a.name.cmp(&b.name));
    arrays
}

/// `md0 : active (auto-read-only) raid1 sda1[0] sdb1[1](S)`
fn parse_header(line: &str) -> Option<MdArray> {
    let (name, rest) = line.split_once(" : ")?;
    let name = name.trim();
    if !name.starts_with("md") || name.contains(' ') {
        return None;
    }
    let mut words = rest.split_whitespace().peekable();
    let state = words.next()?.to_owned();
    let mut array = MdArray {
        name: name.to_owned(),
        state,
        ..MdArray::default()
    };
    while let Some(word) = words.peek() {
        if word.starts_with('(') {
            array.read_only |= word.contains("read-only");
            words.next();
        } else {
            break;
        }
    }
    for word in words {
        match parse_member(word) {
            Some(member) => array.members.push(member),
            None if array.level.is_none() && array.members.is_empty() => {
                array.level = Some(word.to_owned())
            }
            None => {}
        }
    }
    array.members.sort_by_key(|m| m.index);
    Some(array)
}

/// `sdb1[1](S)` -> member.
fn parse_member(word: &str) -> Option<MdMember> {
    let (device, rest) = word.split_once('[')?;
    let (index, flags) = rest.split_once(']')?;
    let state = match flags {
        "" => "active",
        "(F)" => "faulty",
        "(S)" => "spare",
        "(W)" => "write_mostly",
        "(R)" => "replacement",
        _ => return None,
    };
    Some(MdMember {
        device: device.to_owned(),
        index: index.parse().ok()?,
        state: state.to_owned(),
    })
}

/// `5853468288 blocks super 1.2 level 6, 64k chunk, algorithm 2 [8/8] [UUUUUUUU]`
fn parse_blocks_line(array: &mut MdArray, line: &str) {
    let mut words = line.split_whitespace();
    if let Some(blocks) = words.next().and_then(|b| b.parse::<u64>().ok()) {
        // mdstat counts 1 KiB blocks.
        array.size = blocks.checked_mul(1024);
    }
    for word in line.split_whitespace() {
        let Some(inner) = word.strip_prefix('[').and_then(|w| w.strip_suffix(']')) else {
            continue;
        };
        if let Some((want, have)) = inner.split_once('/') {
            array.raid_disks = want.parse().ok();
            array.working_disks = have.parse().ok();
        }
    }
    if let (Some(want), Some(have)) = (array.raid_disks, array.working_disks) {
        array.degraded = have < want;
    }
}

/// `[=>...]  recovery =  8.5% (…)` or `resync=DELAYED`.
fn parse_sync_line(line: &str) -> Option<MdSync> {
    if let Some((action, waiting)) = line.split_once('=') {
        let action = action.trim();
        if ["resync", "recovery", "check", "reshape", "repair"].contains(&action)
            && !waiting.contains('%')
        {
            return Some(MdSync {
                action: action.to_owned(),
                percent: None,
                waiting: Some(waiting.trim().to_owned()),
            });
        }
    }
    let after_bar = line.strip_prefix('[')?.split_once(']')?.1;
    let (action, rest) = after_bar.split_once('=')?;
    let percent = rest
        .split_whitespace()
        .next()?
        .strip_suffix('%')?
        .parse()
        .ok()?;
    Some(MdSync {
        action: action.trim().to_owned(),
        percent: Some(percent),
        waiting: None,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    const MIXED: &str =
        include_str!("../../fixtures/shared/mdadm/procfs-composite-mixed-states.proc-mdstat.txt");

    fn array<'a>(arrays: &'a [MdArray], name: &str) -> &'a MdArray {
        arrays.iter().find(|a| a.name == name).unwrap()
    }

    #[test]
    fn parses_every_array_of_a_real_capture() {
        let arrays = parse_mdstat(MIXED);
        assert_eq!(arrays.len(), 18);
        let md3 = array(&arrays, "md3");
        assert_eq!(md3.level.as_deref(), Some("raid6"));
        assert_eq!(md3.size, Some(5853468288 * 1024));
        assert_eq!(
            (md3.raid_disks, md3.working_disks, md3.degraded),
            (Some(8), Some(8), false)
        );
        assert_eq!(md3.members.len(), 10);
        assert_eq!(md3.members.iter().filter(|m| m.state == "spare").count(), 2);

        let md6 = array(&arrays, "md6");
        assert!(md6.degraded);
        let sync = md6.sync.as_ref().unwrap();
        assert_eq!(
            (sync.action.as_str(), sync.percent),
            ("recovery", Some(8.5))
        );
        assert_eq!(
            md6.members
                .iter()
                .find(|m| m.device == "sdb2")
                .unwrap()
                .state,
            "faulty"
        );

        let md4 = array(&arrays, "md4");
        assert_eq!(md4.state, "inactive");
        let md11 = array(&arrays, "md11");
        assert!(md11.read_only);
        assert_eq!(
            md11.sync.as_ref().unwrap().waiting.as_deref(),
            Some("PENDING")
        );
        assert_eq!(
            array(&arrays, "md9")
                .sync
                .as_ref()
                .unwrap()
                .waiting
                .as_deref(),
            Some("DELAYED")
        );
        assert_eq!(
            array(&arrays, "md42").sync.as_ref().unwrap().action,
            "reshape"
        );
        let md219 = array(&arrays, "md219");
        assert_eq!(
            (md219.state.as_str(), md219.level.as_deref()),
            ("inactive", None)
        );
        assert_eq!(array(&arrays, "md120").level.as_deref(), Some("linear"));
        assert!(array(&arrays, "md101").read_only);
    }

    #[test]
    fn no_arrays() {
        assert!(parse_mdstat("Personalities : \nunused devices: <none>\n").is_empty());
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 5000, failure_persistence: None, ..ProptestConfig::default() })]
        #[test]
        fn arbitrary_text_never_panics(text in ".{0,400}") {
            let _ = parse_mdstat(&text);
        }

        #[test]
        fn mutated_captures_never_panic(cut in 0usize..2000, insert in ".{0,20}") {
            let _ = parse_mdstat(&super::super::spliced(MIXED, cut, &insert));
        }
    }
}
