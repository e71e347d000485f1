//! Reading only some top-level fields of a stored document (a MessagePack map written by
//! `rmp_serde::to_vec_named`), skipping the others without allocating: a scan decodes what its
//! filter reads, not every inventory whole.

use std::collections::BTreeSet;

use serde_json::{Map, Value};

/// Why stored bytes are not the MessagePack map they should be.
#[derive(Debug, thiserror::Error)]
pub enum PartialError {
    /// The bytes end inside a value.
    #[error("truncated MessagePack")]
    Truncated,
    /// A marker that cannot start a value here.
    #[error("unexpected MessagePack marker {0:#04x}")]
    Marker(u8),
    /// A map key that is not UTF-8 text.
    #[error("a map key is not UTF-8 text")]
    Key,
    /// A wanted value did not decode.
    #[error("{0}")]
    Value(String),
}

fn take<'a>(buf: &mut &'a [u8], n: usize) -> Result<&'a [u8], PartialError> {
    if buf.len() < n {
        return Err(PartialError::Truncated);
    }
    let (head, rest) = buf.split_at(n);
    *buf = rest;
    Ok(head)
}

fn byte(buf: &mut &[u8]) -> Result<u8, PartialError> {
    Ok(take(buf, 1)?[0])
}

fn be(buf: &mut &[u8], n: usize) -> Result<usize, PartialError> {
    let bytes = take(buf, n)?;
    let mut v = 0usize;
    for b in bytes {
        v = (v << 8) | usize::from(*b);
    }
    Ok(v)
}

/// Skips one value (iteratively over containers, so depth costs no stack).
fn skip(buf: &mut &[u8]) -> Result<(), PartialError> {
    let mut pending: usize = 1;
    while pending > 0 {
        pending -= 1;
        let m = byte(buf)?;
        let extra = match m {
            0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => 0,
            0x80..=0x8f => {
                pending += 2 * usize::from(m & 0x0f);
                0
            }
            0x90..=0x9f => {
                pending += usize::from(m & 0x0f);
                0
            }
            0xa0..=0xbf => usize::from(m & 0x1f),
            0xc4 | 0xd9 => be(buf, 1)?,
            0xc5 | 0xda => be(buf, 2)?,
            0xc6 | 0xdb => be(buf, 4)?,
            0xc7 => 1 + be(buf, 1)?,
            0xc8 => 1 + be(buf, 2)?,
            0xc9 => 1 + be(buf, 4)?,
            0xca => 4,
            0xcb => 8,
            0xcc | 0xd0 => 1,
            0xcd | 0xd1 => 2,
            0xce | 0xd2 => 4,
            0xcf | 0xd3 => 8,
            0xd4 => 2,
            0xd5 => 3,
            0xd6 => 5,
            0xd7 => 9,
            0xd8 => 17,
            0xdc => {
                pending = pending.saturating_add(be(buf, 2)?);
                0
            }
            0xdd => {
                pending = pending.saturating_add(be(buf, 4)?);
                0
            }
            0xde => {
                pending = pending.saturating_add(2 * be(buf, 2)?);
                0
            }
            0xdf => {
                pending = pending.saturating_add(2 * be(buf, 4)?);
                0
            }
            other => return Err(PartialError::Marker(other)),
        };
        take(buf, extra)?;
    }
    Ok(())
}

fn map_len(buf: &mut &[u8]) -> Result<usize, PartialError> {
    match byte(buf)? {
        m @ 0x80..=0x8f => Ok(usize::from(m & 0x0f)),
        0xde => be(buf, 2),
        0xdf => be(buf, 4),
        other => Err(PartialError::Marker(other)),
    }
}

fn key<'a>(buf: &mut &'a [u8]) -> Result<&'a str, PartialError> {
    let len = match byte(buf)? {
        m @ 0xa0..=0xbf => usize::from(m & 0x1f),
        0xd9 => be(buf, 1)?,
        0xda => be(buf, 2)?,
        0xdb => be(buf, 4)?,
        other => return Err(PartialError::Marker(other)),
    };
    std::str::from_utf8(take(buf, len)?).map_err(|_| PartialError::Key)
}

/// The fields of a stored document named in `wanted`, in their stored order; the others are
/// skipped undecoded.
pub fn fields(bytes: &[u8], wanted: &BTreeSet<String>) -> Result<Map<String, Value>, PartialError> {
    let mut buf = bytes;
    let len = map_len(&mut buf)?;
    let mut out = Map::new();
    for _ in 0..len {
        let k = key(&mut buf)?;
        if wanted.contains(k) {
            let mut rest = buf;
            skip(&mut rest)?;
            let value = &buf[..buf.len() - rest.len()];
            buf = rest;
            let v: Value =
                rmp_serde::from_slice(value).map_err(|e| PartialError::Value(e.to_string()))?;
            out.insert(k.to_owned(), v);
            if out.len() == wanted.len() {
                break;
            }
        } else {
            skip(&mut buf)?;
        }
    }
    Ok(out)
}

/// What of a value a reader needs: all of it, or some fields of the documents in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Need {
    /// The value whole.
    Whole,
    /// Of a document, these fields (each as its `Need` says); of an array, each element cut
    /// the same way (positions kept); anything else whole.
    Fields(std::collections::BTreeMap<String, Need>),
}

impl Need {
    /// What reading these dotted paths needs: everything along each path, each path's value
    /// whole. A path with a numeric component (an array position) keeps the value where the
    /// component starts whole, so positions in nested arrays stay as they were.
    pub fn of_paths<'a>(paths: impl IntoIterator<Item = &'a str>) -> Need {
        let mut root = Need::Fields(Default::default());
        for path in paths {
            let parts: Vec<&str> = path.split('.').collect();
            let mut at = &mut root;
            for (i, part) in parts.iter().enumerate() {
                if part.bytes().all(|b| b.is_ascii_digit()) {
                    *at = Need::Whole;
                    break;
                }
                let Need::Fields(fields) = at else { break };
                let next = fields
                    .entry((*part).to_owned())
                    .or_insert_with(|| Need::Fields(Default::default()));
                if i + 1 == parts.len() {
                    *next = Need::Whole;
                    break;
                }
                at = next;
            }
        }
        root
    }
}

/// Decodes one value as `need` says, skipping what it does not need.
fn pruned(buf: &mut &[u8], need: &Need) -> Result<Value, PartialError> {
    let Need::Fields(fields) = need else {
        return whole(buf);
    };
    let marker = *buf.first().ok_or(PartialError::Truncated)?;
    match marker {
        0x80..=0x8f | 0xde | 0xdf => {
            let len = map_len(buf)?;
            let mut out = Map::new();
            for _ in 0..len {
                let k = key(buf)?;
                match fields.get(k) {
                    Some(n) => {
                        let v = pruned(buf, n)?;
                        out.insert(k.to_owned(), v);
                    }
                    None => skip(buf)?,
                }
            }
            Ok(Value::Object(out))
        }
        0x90..=0x9f | 0xdc | 0xdd => {
            let len = match byte(buf)? {
                m @ 0x90..=0x9f => usize::from(m & 0x0f),
                0xdc => be(buf, 2)?,
                _ => be(buf, 4)?,
            };
            let mut out = Vec::with_capacity(len.min(1024));
            for _ in 0..len {
                out.push(pruned(buf, need)?);
            }
            Ok(Value::Array(out))
        }
        _ => whole(buf),
    }
}

fn whole(buf: &mut &[u8]) -> Result<Value, PartialError> {
    let mut rest = *buf;
    skip(&mut rest)?;
    let value = &buf[..buf.len() - rest.len()];
    *buf = rest;
    rmp_serde::from_slice(value).map_err(|e| PartialError::Value(e.to_string()))
}

/// The top-level fields of a stored document that `need` names, each cut as it says, in
/// their stored order; everything else skipped undecoded.
pub fn pruned_fields(
    bytes: &[u8],
    need: &std::collections::BTreeMap<String, Need>,
) -> Result<Map<String, Value>, PartialError> {
    let mut buf = bytes;
    let len = map_len(&mut buf)?;
    let mut out = Map::new();
    for _ in 0..len {
        let k = key(&mut buf)?;
        match need.get(k) {
            Some(n) => {
                let v = pruned(&mut buf, n)?;
                out.insert(k.to_owned(), v);
            }
            None => skip(&mut buf)?,
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn pruned_documents_keep_everything_along_the_paths() {
        let doc = json!({
            "dmi": {"board_serial": "B1", "memory_devices": [{"serial": "x"}], "bios": {"v": 1, "d": 2}},
            "nics": [{"mac": "m1", "speed": 1}, 7, [{"mac": "nested"}], {"speed": 2}],
            "disks": [{"size": 1}, {"size": 2}],
            "other": "skipped",
        });
        let bytes = rmp_serde::to_vec_named(&doc).unwrap();
        let need = Need::of_paths(["dmi.board_serial", "dmi.bios", "nics.mac", "disks.1.size"]);
        let Need::Fields(top) = &need else {
            panic!("{need:?}")
        };
        let got = Value::Object(pruned_fields(&bytes, top).unwrap());
        assert_eq!(
            got,
            json!({
                "dmi": {"board_serial": "B1", "bios": {"v": 1, "d": 2}},
                "nics": [{"mac": "m1"}, 7, [{"mac": "nested"}], {}],
                "disks": [{"size": 1}, {"size": 2}],
            })
        );
        // A shorter path after a longer one is read whole.
        assert_eq!(Need::of_paths(["a.b.c", "a.b"]), Need::of_paths(["a.b"]));
        assert_eq!(Need::of_paths(["0"]), Need::Whole);
    }

    #[test]
    fn wanted_fields_come_back_exactly_and_the_rest_is_skipped() {
        let big: Vec<Value> = (0..70_000).map(|i| json!(i)).collect();
        let long = "x".repeat(70_000);
        let doc = json!({
            "a": {"z": 1, "b": [1.5, -3, null, true, "s"]},
            "skip_ints": [0, 127, 128, 255, 256, 65_535, 65_536, -1, -33, -129, -32_769, -2_147_483_649_i64, u64::MAX, 1e300],
            "skip_strs": ["", "a".repeat(31), "b".repeat(32), "c".repeat(256), long],
            "skip_big": big,
            "skip_nested": {"m": {"n": [[[]], {}]}, "k": (0..20).map(|i| (i.to_string(), json!(i))).collect::<Map<_, _>>()},
            "c": "last",
        });
        let bytes = rmp_serde::to_vec_named(&doc).unwrap();
        let wanted: BTreeSet<String> = ["a", "c", "missing"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let got = fields(&bytes, &wanted).unwrap();
        assert_eq!(Value::Object(got), json!({"a": doc["a"], "c": "last"}));
        // Skipping everything walks the whole document.
        let none = BTreeSet::new();
        assert!(fields(&bytes, &none).unwrap().is_empty());
        let mut all = bytes.as_slice();
        skip(&mut all).unwrap();
        assert!(all.is_empty());
        assert!(fields(&bytes[..bytes.len() - 3], &wanted).is_err());
        assert!(fields(&[0x93, 1, 2, 3], &wanted).is_err());
    }
}
