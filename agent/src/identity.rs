//! The server's identity: inventory plus MercuryId, and the words that explain it.

use qs_inspectors::{InspectorName, SysRoot};
use qs_proto::inventory::Inventory;
use qs_proto::mercury_id::{self, Derivation, NoMercuryId};

/// Runs the inspectors, slow facts included, and fills in `mercury_id` when one can be derived.
pub fn inspect(root: &SysRoot, only: Option<&[InspectorName]>) -> Inventory {
    let mut inventory = inspect_quickly(root, only);
    qs_inspectors::add_slow_facts(root, &mut inventory);
    inventory
}

/// Like [`inspect`] without the slow facts (SMART), to register without waiting for them.
pub fn inspect_quickly(root: &SysRoot, only: Option<&[InspectorName]>) -> Inventory {
    let mut inventory = qs_inspectors::run_all(root, only);
    if let Ok(derivation) = derive(&inventory) {
        inventory.mercury_id = Some(derivation.id.to_string());
    }
    inventory
}

/// The MercuryId of an inventory.
pub fn derive(inventory: &Inventory) -> Result<Derivation, NoMercuryId> {
    mercury_id::derive(&qs_inspectors::id_sources(inventory))
}

/// `--explain`: the rule, the hashed string, and why earlier rules did not apply.
pub fn explain(d: &Derivation) -> String {
    let mut out = format!("rule: {}\nhashed: {:?}\n", d.rule, d.source);
    for r in &d.rejected {
        out.push_str(&format!("skipped rule {}: {}\n", r.rule, r.reason));
    }
    out.trim_end().to_owned()
}

/// The Linux boot id: from the root when it has one (a captured tree), else this kernel's.
pub fn boot_id(root: &SysRoot) -> String {
    let rel = "proc/sys/kernel/random/boot_id";
    root.read_trimmed(rel)
        .ok()
        .or_else(|| SysRoot::live().read_trimmed(rel).ok())
        .unwrap_or_else(|| "unknown".into())
}
