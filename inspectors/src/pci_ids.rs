//! Names from the PCI ID database (`pci.ids`, 1.3 MB, 36,000 lines). Its vendor lines are
//! sorted by id, so each vendor a machine has is found by binary search over byte offsets and
//! only that vendor's block is read: a few dozen small reads instead of the whole file.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;

/// How much is read at a time.
const CHUNK: usize = 8 * 1024;
/// Below this span the binary search gives way to reading forward.
const LINEAR_SPAN: u64 = 16 * 1024;
/// How far a probe reads for a vendor line: big vendors' blocks (Intel's is 300 KB) would
/// otherwise be read whole by every probe that lands in them.
const PROBE_SPAN: u64 = 32 * 1024;

/// A database that can be read at any offset (a file, or bytes in tests).
pub trait Database {
    /// Its size in bytes.
    fn size(&self) -> u64;
    /// Reads into `buf` from `offset`; 0 at the end.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize>;
}

impl Database for std::fs::File {
    fn size(&self) -> u64 {
        self.metadata().map(|m| m.len()).unwrap_or(0)
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        std::os::unix::fs::FileExt::read_at(self, buf, offset)
    }
}

impl Database for [u8] {
    fn size(&self) -> u64 {
        self.len() as u64
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(self.len());
        let n = buf.len().min(self.len() - start);
        buf[..n].copy_from_slice(&self[start..start + n]);
        Ok(n)
    }
}

/// Lines of the database from an offset on, each with the offset it starts at.
struct Lines<'a, D: Database + ?Sized> {
    db: &'a D,
    buf: Vec<u8>,
    /// Offset in the database of `buf[0]`.
    base: u64,
    /// Next unread position in `buf`.
    pos: usize,
    eof: bool,
}

impl<'a, D: Database + ?Sized> Lines<'a, D> {
    /// Lines from `offset`; when `offset` may be inside a line, that partial line is skipped.
    fn at(db: &'a D, offset: u64, inside_a_line: bool) -> Self {
        let mut lines = Self {
            db,
            buf: Vec::with_capacity(CHUNK),
            base: offset,
            pos: 0,
            eof: false,
        };
        if inside_a_line && offset > 0 {
            lines.next();
        }
        lines
    }

    fn fill(&mut self) {
        self.buf.drain(..self.pos);
        self.base += self.pos as u64;
        self.pos = 0;
        let have = self.buf.len();
        self.buf.resize(have + CHUNK, 0);
        let read = self
            .db
            .read_at(&mut self.buf[have..], self.base + have as u64);
        let n = read.unwrap_or(0);
        self.buf.truncate(have + n);
        self.eof = n == 0;
    }

    /// The next line's offset and its range in [`Lines::buf`].
    fn next(&mut self) -> Option<(u64, Range<usize>)> {
        loop {
            if let Some(i) = memchr::memchr(b'\n', &self.buf[self.pos..]) {
                let line = self.pos..self.pos + i;
                let offset = self.base + self.pos as u64;
                self.pos += i + 1;
                return Some((offset, line));
            }
            if self.eof {
                if self.pos < self.buf.len() {
                    let line = self.pos..self.buf.len();
                    let offset = self.base + self.pos as u64;
                    self.pos = self.buf.len();
                    return Some((offset, line));
                }
                return None;
            }
            // A line longer than a few chunks is not pci.ids.
            if self.buf.len() - self.pos > 4 * CHUNK {
                return None;
            }
            self.fill();
        }
    }
}

/// What a line of pci.ids is, as far as finding vendors goes.
#[derive(Debug, PartialEq, Eq)]
enum Kind {
    /// `8086  Intel Corporation`.
    Vendor(Id),
    /// `C 02  Network controller`: the class list that follows the last vendor.
    Classes,
    /// Devices, subsystems, comments, blank lines.
    Other,
}

fn kind(line: &[u8]) -> Kind {
    if line.starts_with(b"C ") {
        return Kind::Classes;
    }
    match (line.get(..4), line.get(4..6)) {
        (Some(id), Some(b"  ")) if id.iter().all(u8::is_ascii_hexdigit) => {
            <Id>::try_from(id).map_or(Kind::Other, Kind::Vendor)
        }
        _ => Kind::Other,
    }
}

/// What a probe found after an offset.
enum Probe {
    /// The first vendor line after it.
    Vendor(Id),
    /// No vendor line before the class list or the end.
    End,
    /// Only device lines within [`PROBE_SPAN`]: somewhere inside a big vendor's block.
    Unknown,
}

/// The first vendor after `offset`, looking no further than [`PROBE_SPAN`].
fn vendor_after<D: Database + ?Sized>(db: &D, offset: u64) -> Probe {
    let mut lines = Lines::at(db, offset, true);
    while let Some((at, line)) = lines.next() {
        if at > offset + PROBE_SPAN {
            return Probe::Unknown;
        }
        match kind(&lines.buf[line]) {
            Kind::Vendor(id) => return Probe::Vendor(id),
            Kind::Classes => return Probe::End,
            Kind::Other => {}
        }
    }
    Probe::End
}

/// Where the line of vendor `target` starts, if the database has it.
fn find_vendor<D: Database + ?Sized>(db: &D, target: Id) -> Option<u64> {
    let (mut lo, mut hi) = (0, db.size());
    while hi - lo > LINEAR_SPAN {
        let mid = lo + (hi - lo) / 2;
        match vendor_after(db, mid) {
            // The target's line comes after that vendor's, which comes after `mid`.
            Probe::Vendor(id) if id < target => lo = mid,
            // Either the target is before `mid`, or it is after a big block that the reading
            // below will cross: `lo` only ever moves past lines known to precede the target.
            _ => hi = mid,
        }
    }
    // Reading forward from `lo` finds it even if it lies past `hi`.
    let mut lines = Lines::at(db, lo, true);
    while let Some((offset, line)) = lines.next() {
        match kind(&lines.buf[line]) {
            Kind::Vendor(id) if id == target => return Some(offset),
            Kind::Vendor(id) if id > target => return None,
            Kind::Classes => return None,
            _ => {}
        }
    }
    None
}

/// Vendor and device names for the wanted (vendor id, device id) pairs: lowercase hex, as
/// sysfs gives them.
pub fn lookup<D: Database + ?Sized>(db: &D, wanted: &BTreeSet<(String, String)>) -> Names {
    let mut scanner = PciIdsScanner::new(wanted);
    let vendors: BTreeSet<Id> = scanner.wanted.iter().map(|(v, _)| *v).collect();
    for vendor in vendors {
        let Some(start) = find_vendor(db, vendor) else {
            continue;
        };
        // Devices are sorted too: past the last wanted one the block has nothing more.
        let last_device = scanner
            .wanted
            .iter()
            .filter(|(v, _)| *v == vendor)
            .map(|(_, d)| *d)
            .max();
        let mut lines = Lines::at(db, start, false);
        let mut first = true;
        while let Some((_, line)) = lines.next() {
            let text = &lines.buf[line];
            if !first && kind(text) != Kind::Other {
                break;
            }
            let device = text
                .get(1..5)
                .filter(|_| text.first() == Some(&b'\t') && text.get(1) != Some(&b'\t'));
            if device.is_some_and(|d| last_device.is_some_and(|last| d > &last[..])) {
                break;
            }
            first = false;
            scanner.line(text);
        }
    }
    scanner.names
}

/// Vendor and device names, keyed by (vendor id, device id); the device name is None when
/// the database knows the vendor but not the device.
pub type Names = BTreeMap<(String, String), (String, Option<String>)>;

/// A four-digit lowercase hex id as it appears in pci.ids.
type Id = [u8; 4];

fn id_of(text: &str) -> Option<Id> {
    text.as_bytes().try_into().ok()
}

/// Looks up wanted ids line by line in pci.ids (vendor lines, then their tab-indented devices).
/// Ids are compared as bytes and nothing is allocated until a wanted line is found: the file
/// has 36,000 lines and a machine wants a handful of them.
struct PciIdsScanner {
    /// Wanted (vendor, device) pairs, sorted.
    wanted: Vec<(Id, Id)>,
    /// The vendor whose device lines follow, when it is wanted, with its name.
    current: Option<(Id, String)>,
    names: Names,
}

impl PciIdsScanner {
    fn new(wanted: &BTreeSet<(String, String)>) -> Self {
        let wanted: Vec<(Id, Id)> = wanted
            .iter()
            .filter_map(|(v, d)| Some((id_of(v)?, id_of(d)?)))
            .collect();
        Self {
            wanted,
            current: None,
            names: BTreeMap::new(),
        }
    }

    fn line(&mut self, line: &[u8]) {
        let name_of = |bytes: &[u8]| String::from_utf8_lossy(bytes).trim().to_owned();
        let text_of = |id: &Id| String::from_utf8_lossy(id).into_owned();
        match line.first() {
            Some(b'\t') => {
                let Some((vendor, vendor_name)) = &self.current else {
                    return;
                };
                // Devices are one tab deep, `id  name`; subsystems (two tabs) are skipped.
                if line.len() < 8 || line[1] == b'\t' || &line[5..7] != b"  " {
                    return;
                }
                let Ok(device) = <Id>::try_from(&line[1..5]) else {
                    return;
                };
                if self.wanted.binary_search(&(*vendor, device)).is_ok() {
                    self.names.insert(
                        (text_of(vendor), text_of(&device)),
                        (vendor_name.clone(), Some(name_of(&line[7..]))),
                    );
                }
            }
            Some(b'#') | None => {}
            // The class list follows the last vendor; its entries are not devices.
            Some(b'C') if line.get(1) == Some(&b' ') => self.current = None,
            Some(_) => {
                self.current = None;
                let (Some(id), Some(b"  ")) = (
                    line.get(..4).and_then(|b| <Id>::try_from(b).ok()),
                    line.get(4..6),
                ) else {
                    return;
                };
                if !self.wanted.iter().any(|(v, _)| *v == id) {
                    return;
                }
                let name = name_of(&line[6..]);
                for (_, d) in self.wanted.iter().filter(|(v, _)| *v == id) {
                    self.names
                        .entry((text_of(&id), text_of(d)))
                        .or_insert((name.clone(), None));
                }
                self.current = Some((id, name));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The oracle: every line of the database through the same scanner, in order.
    fn scan_all(text: &[u8], wanted: &BTreeSet<(String, String)>) -> Names {
        let mut scanner = PciIdsScanner::new(wanted);
        for line in text.split(|b| *b == b'\n') {
            scanner.line(line);
        }
        scanner.names
    }

    fn pairs(list: &[(&str, &str)]) -> BTreeSet<(String, String)> {
        list.iter()
            .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
            .collect()
    }

    const SMALL: &str = "# comment\n\n1af4  Red Hat, Inc.\n\t1041  Virtio 1.0 network device\n\t\t1af4 1100  QEMU Virtual Machine\n8086  Intel Corporation\n\t1521  I350 Gigabit Network Connection\n\t\t8086 0001  Ethernet Server Adapter I350-T4\nC 02  Network controller\n\t00  Ethernet controller\n";

    #[test]
    fn names_from_pci_ids() {
        let wanted = pairs(&[
            ("8086", "1521"),
            ("1af4", "1041"),
            ("1af4", "9999"),
            ("dead", "beef"),
        ]);
        let names = lookup(SMALL.as_bytes(), &wanted);
        assert_eq!(
            names.get(&("8086".into(), "1521".into())),
            Some(&(
                "Intel Corporation".to_owned(),
                Some("I350 Gigabit Network Connection".to_owned())
            ))
        );
        assert_eq!(
            names.get(&("1af4".into(), "9999".into())),
            Some(&("Red Hat, Inc.".to_owned(), None)),
            "a known vendor with an unknown device"
        );
        assert_eq!(names.len(), 3, "{names:?}");
        assert_eq!(names, scan_all(SMALL.as_bytes(), &wanted));
    }

    /// A sorted database of `vendors` vendors with a few devices and subsystems each, and a
    /// few with thousands.
    fn database(vendors: &BTreeSet<u16>) -> String {
        let mut text = String::from("# generated\n#\n");
        for v in vendors {
            text.push_str(&format!("{v:04x}  Vendor {v}\n"));
            // Some vendors get blocks bigger than a probe reads, as Intel's is.
            let devices = if v % 509 == 0 { 1500 } else { v % 7 };
            for d in 0..devices {
                text.push_str(&format!("\t{:04x}  Device {v}-{d}\n", d * 3));
                text.push_str(&format!("\t\t{v:04x} {d:04x}  Sub {d}\n"));
            }
        }
        text.push_str("C 00  Unclassified device\n\t00  Non-VGA\n");
        text
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// Binary search finds exactly what reading every line finds.
        #[test]
        fn lookup_agrees_with_a_full_scan(
            vendors in proptest::collection::btree_set(any::<u16>(), 1..2000),
            picks in proptest::collection::vec((any::<u16>(), 0u16..4600), 1..12),
        ) {
            let text = database(&vendors);
            let all: Vec<u16> = vendors.iter().copied().collect();
            let wanted: BTreeSet<(String, String)> = picks
                .iter()
                .map(|(v, d)| {
                    // Device ids in the database are multiples of 3.
                    let d = if d % 2 == 0 { d - d % 3 } else { *d };
                    // Most picks are vendors the database has, some of them big ones.
                    let big: Vec<u16> = all.iter().copied().filter(|v| v % 509 == 0).collect();
                    let v = match v % 4 {
                        0 | 2 => all[usize::from(*v) % all.len()],
                        1 if !big.is_empty() => big[usize::from(*v) % big.len()],
                        _ => *v,
                    };
                    (format!("{v:04x}"), format!("{d:04x}"))
                })
                .collect();
            prop_assert_eq!(lookup(text.as_bytes(), &wanted), scan_all(text.as_bytes(), &wanted));
        }
    }

    #[test]
    fn the_installed_database_agrees_with_a_full_scan() {
        let Some(path) = ["/usr/share/misc/pci.ids", "/usr/share/hwdata/pci.ids"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
        else {
            panic!("no pci.ids installed here (tests/run installs pciutils, which carries it)");
        };
        let text = std::fs::read(path).unwrap_or_default();
        // Every 97th vendor with its first device, and some ids nobody has.
        let mut wanted = pairs(&[("0000", "0000"), ("ffff", "ffff"), ("8086", "1521")]);
        let mut current = None;
        for (i, line) in text.split(|b| *b == b'\n').enumerate() {
            match kind(line) {
                Kind::Vendor(id) => current = (i % 97 == 0).then_some(id),
                Kind::Other if line.starts_with(b"\t") && !line.starts_with(b"\t\t") => {
                    if let (Some(v), Some(d)) = (current.take(), line.get(1..5)) {
                        wanted.insert((
                            String::from_utf8_lossy(&v).into_owned(),
                            String::from_utf8_lossy(d).into_owned(),
                        ));
                    }
                }
                _ => {}
            }
        }
        assert!(wanted.len() > 10, "{wanted:?}");
        let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!(lookup(&file, &wanted), scan_all(&text, &wanted));
    }
}
