//! The difference between two inventories as an RFC 6902 patch, kept small.
//!
//! A generic JSON diff compares arrays position by position, so a server that loses its first
//! disk would send every later disk again. Here arrays are also aligned on their longest
//! common subsequence: a lost disk is one `remove`, a new NIC one `add`, and an element that
//! changed in place (a disk's SMART health) is diffed into. Each array keeps whichever of the
//! two patches encodes smaller, so the result is never bigger than a positional diff.

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, Patch, PatchOperation, RemoveOperation, ReplaceOperation};
use serde_json::{Map, Value};

/// Above this many element pairs an array is compared by position: aligning costs
/// `left × right` comparisons and inventories' lists are far smaller.
const MAX_ALIGNED_PAIRS: usize = 1 << 20;

/// The patch that turns `left` into `right`.
pub fn diff(left: &Value, right: &Value) -> Patch {
    let mut ops = Vec::new();
    value(left, right, &mut PointerBuf::new(), &mut ops);
    Patch(ops)
}

fn value(left: &Value, right: &Value, at: &mut PointerBuf, ops: &mut Vec<PatchOperation>) {
    match (left, right) {
        (Value::Object(l), Value::Object(r)) => object(l, r, at, ops),
        (Value::Array(l), Value::Array(r)) => array(l, r, at, ops),
        _ if left == right => {}
        _ => ops.push(PatchOperation::Replace(ReplaceOperation {
            path: at.clone(),
            value: right.clone(),
        })),
    }
}

fn object(
    left: &Map<String, Value>,
    right: &Map<String, Value>,
    at: &mut PointerBuf,
    ops: &mut Vec<PatchOperation>,
) {
    for key in left.keys().filter(|k| !right.contains_key(*k)) {
        ops.push(PatchOperation::Remove(RemoveOperation {
            path: at.with_trailing_token(key.as_str()),
        }));
    }
    for (key, r) in right {
        at.push_back(key.as_str());
        match left.get(key) {
            Some(l) => value(l, r, at, ops),
            None => ops.push(PatchOperation::Add(AddOperation {
                path: at.clone(),
                value: r.clone(),
            })),
        }
        at.pop_back();
    }
}

fn array(left: &[Value], right: &[Value], at: &mut PointerBuf, ops: &mut Vec<PatchOperation>) {
    // What is the same at both ends needs no alignment.
    let prefix = left.iter().zip(right).take_while(|(l, r)| l == r).count();
    let (l, r) = (&left[prefix..], &right[prefix..]);
    let suffix = l
        .iter()
        .rev()
        .zip(r.iter().rev())
        .take_while(|(a, b)| a == b)
        .count();
    let (l, r) = (&l[..l.len() - suffix], &r[..r.len() - suffix]);
    let mut positional = Vec::new();
    by_position(l, r, prefix, at, &mut positional);
    if l.len().saturating_mul(r.len()) > MAX_ALIGNED_PAIRS {
        ops.extend(positional);
        return;
    }
    let mut aligned = Vec::new();
    align(l, r, prefix, at, &mut aligned);
    let size = |ops: &[PatchOperation]| serde_json::to_vec(ops).map_or(usize::MAX, |v| v.len());
    ops.extend(if size(&aligned) <= size(&positional) {
        aligned
    } else {
        positional
    });
}

/// The patch that follows the longest common subsequence of `l` and `r`, which start at
/// index `prefix` of the array.
fn align(
    l: &[Value],
    r: &[Value],
    prefix: usize,
    at: &mut PointerBuf,
    ops: &mut Vec<PatchOperation>,
) {
    // common[i][j]: length of the longest common subsequence of l[i..] and r[j..].
    let width = r.len() + 1;
    let mut common = vec![0u32; (l.len() + 1) * width];
    for i in (0..l.len()).rev() {
        for j in (0..r.len()).rev() {
            common[i * width + j] = if l[i] == r[j] {
                common[(i + 1) * width + j + 1] + 1
            } else {
                common[(i + 1) * width + j].max(common[i * width + j + 1])
            };
        }
    }
    let lcs = |i: usize, j: usize| common[i * width + j];
    // `index` is the position in the array as patched so far.
    let (mut i, mut j, mut index) = (0, 0, prefix);
    while i < l.len() || j < r.len() {
        if i < l.len() && j < r.len() {
            if l[i] == r[j] {
                (i, j, index) = (i + 1, j + 1, index + 1);
                continue;
            }
            // Neither is part of the alignment: the element changed where it stands.
            if lcs(i, j) == lcs(i + 1, j + 1) {
                at.push_back(index);
                value(&l[i], &r[j], at, ops);
                at.pop_back();
                (i, j, index) = (i + 1, j + 1, index + 1);
                continue;
            }
        }
        if i < l.len() && (j == r.len() || lcs(i + 1, j) >= lcs(i, j + 1)) {
            ops.push(PatchOperation::Remove(RemoveOperation {
                path: at.with_trailing_token(index),
            }));
            i += 1;
        } else {
            ops.push(PatchOperation::Add(AddOperation {
                path: at.with_trailing_token(index),
                value: r[j].clone(),
            }));
            (j, index) = (j + 1, index + 1);
        }
    }
}

/// Huge arrays: element by element, then the tail removed or added.
fn by_position(
    l: &[Value],
    r: &[Value],
    offset: usize,
    at: &mut PointerBuf,
    ops: &mut Vec<PatchOperation>,
) {
    for (n, (a, b)) in l.iter().zip(r).enumerate() {
        at.push_back(offset + n);
        value(a, b, at, ops);
        at.pop_back();
    }
    let common = l.len().min(r.len());
    for _ in common..l.len() {
        ops.push(PatchOperation::Remove(RemoveOperation {
            path: at.with_trailing_token(offset + common),
        }));
    }
    for (n, b) in r.iter().enumerate().skip(common) {
        ops.push(PatchOperation::Add(AddOperation {
            path: at.with_trailing_token(offset + n),
            value: b.clone(),
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn applied(left: &Value, patch: &Patch) -> Value {
        let mut doc = left.clone();
        json_patch::patch(&mut doc, patch).unwrap_or_else(|e| panic!("{e}: {patch:?}"));
        doc
    }

    #[test]
    fn losing_the_first_disk_is_one_remove() {
        let disk = |n: &str| json!({"name": n, "size": 1u64 << 40, "model": "SAMSUNG MZ7LH960"});
        let before =
            json!({"os_storage": [disk("sda"), disk("sdb"), disk("sdc"), disk("nvme0n1")]});
        let after = json!({"os_storage": [disk("sdb"), disk("sdc"), disk("nvme0n1")]});
        let patch = diff(&before, &after);
        assert_eq!(
            serde_json::to_value(&patch).unwrap_or_default(),
            json!([{"op": "remove", "path": "/os_storage/0"}])
        );
        assert_eq!(applied(&before, &patch), after);
    }

    #[test]
    fn an_element_changed_in_place_is_diffed_into() {
        let before = json!([{"name": "sda", "smart": {"passed": true}}, {"name": "sdb"}]);
        let after = json!([{"name": "sda", "smart": {"passed": false}}, {"name": "sdb"}]);
        let patch = diff(&before, &after);
        assert_eq!(
            serde_json::to_value(&patch).unwrap_or_default(),
            json!([{"op": "replace", "path": "/0/smart/passed", "value": false}])
        );
    }

    #[test]
    fn keys_that_need_escaping_survive() {
        let before = json!({"a/b": 1, "c~d": [1, 2]});
        let after = json!({"c~d": [2, 3], "e": null});
        assert_eq!(applied(&before, &diff(&before, &after)), after);
    }

    #[test]
    fn huge_arrays_fall_back_to_positions() {
        let before = Value::Array((0..1500).map(Value::from).collect());
        let after = Value::Array((1..1501).map(Value::from).collect());
        assert_eq!(applied(&before, &diff(&before, &after)), after);
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            (0u8..6).prop_map(Value::from),
            "[a-c/~]{0,2}".prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                proptest::collection::btree_map("[a-c/~]{1,2}", inner, 0..5)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]

        /// Applying the patch to the left gives exactly the right, whatever the two are.
        #[test]
        fn the_patch_turns_left_into_right(left in json_value(), right in json_value()) {
            prop_assert_eq!(applied(&left, &diff(&left, &right)), right);
        }

        /// Lists that differ by a few elements (the usual re-inspection) give patches no
        /// bigger than a positional diff's.
        #[test]
        fn near_lists_get_small_patches(
            list in proptest::collection::vec(json_value(), 0..12),
            edits in proptest::collection::vec((any::<bool>(), 0usize..12, json_value()), 0..3),
        ) {
            let mut edited = list.clone();
            for (insert, at, v) in edits {
                let at = at.min(edited.len());
                if insert || edited.is_empty() {
                    edited.insert(at, v);
                } else {
                    edited.remove(at.min(edited.len() - 1));
                }
            }
            let (left, right) = (Value::Array(list), Value::Array(edited));
            let ours = diff(&left, &right);
            prop_assert_eq!(applied(&left, &ours), right.clone());
            let size = |p: &Patch| serde_json::to_vec(p).map(|v| v.len()).unwrap_or(0);
            prop_assert!(size(&ours) <= size(&json_patch::diff(&left, &right)));
        }
    }
}
