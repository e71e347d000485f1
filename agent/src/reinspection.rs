//! What the agent learns about its machine after registering: the slow facts, hotplug and link
//! changes (re-inspection), and LLDP neighbours. Each background task publishes on a `watch`
//! channel the session sends from.

use std::time::Duration;

use qs_inspectors::SysRoot;
use qs_proto::inventory::Inventory;
use qs_proto::ErrorReport;
use serde_json::Value;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::identity;
use crate::kernel_events;

/// How long a burst of kernel events (a disk and its partitions, a link and its addresses)
/// gets to settle before inspecting again.
const HOTPLUG_SETTLE: Duration = Duration::from_secs(2);

/// How long to wait between LLDP listening windows: switches announce every 30 s, and
/// neighbours change only when someone recables.
const LLDP_PAUSE: Duration = Duration::from_secs(300);

/// What the next background inspection has to look at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reinspect {
    /// Only the slow facts, added to the inventory the agent identified itself with: the first
    /// pass after start-up, which must not inspect everything a second time.
    SlowFacts,
    /// Everything, slow facts included: a device came or went.
    Everything,
    /// Only interfaces and routes: a link went up or down, an address or route changed.
    Network,
}

/// Waits for a kernel event counter to move; a source that is missing or stopped never does.
pub(crate) async fn changed(events: &mut Option<watch::Receiver<u64>>) {
    match events {
        Some(rx) => {
            if rx.changed().await.is_err() {
                *events = None;
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending::<()>().await,
    }
}

/// One background inspection: `previous` is the last inventory (the identifying one at first).
fn reinspect(root: &SysRoot, what: Reinspect, previous: Option<Inventory>) -> Inventory {
    match (what, previous) {
        (Reinspect::SlowFacts, Some(mut inventory)) => {
            qs_inspectors::add_slow_facts(root, &mut inventory);
            inventory
        }
        (Reinspect::Network, Some(previous)) => reinspect_network(root, previous),
        _ => identity::inspect(root, None),
    }
}

/// Inspections in the background, publishing each full inventory: once after start-up, adding
/// the slow facts (SMART, BMC) to `identified` (the inventory the MercuryId came from) so
/// registration never waits for them and nothing is inspected twice; everything again whenever
/// the kernel reports a network or block device appearing or disappearing; and, for link,
/// address and route changes, the network inspectors alone (live machine only).
pub fn spawn_inspections(
    root: SysRoot,
    identified: Inventory,
    mut links: Option<watch::Receiver<u64>>,
) -> watch::Receiver<Option<Value>> {
    let (tx, rx) = watch::channel(None);
    let mut devices = if root.is_live() {
        kernel_events::devices()
    } else {
        None
    };
    tokio::spawn(async move {
        let mut last = Some(identified);
        let mut next = Reinspect::SlowFacts;
        loop {
            let r = root.clone();
            let previous = last.take();
            let inspected =
                tokio::task::spawn_blocking(move || reinspect(&r, next, previous)).await;
            match inspected {
                Ok(inventory) => {
                    match serde_json::to_value(&inventory) {
                        Ok(doc) => {
                            tx.send_if_modified(|current| {
                                let changed = current.as_ref() != Some(&doc);
                                *current = Some(doc);
                                changed
                            });
                        }
                        Err(error) => warn!(error = %error, "full inventory is not serialisable"),
                    }
                    last = Some(inventory);
                }
                Err(error) => warn!(error = %error, "inspection panicked"),
            }
            if devices.is_none() && links.is_none() {
                return;
            }
            next = tokio::select! {
                () = changed(&mut devices) => Reinspect::Everything,
                () = changed(&mut links) => Reinspect::Network,
            };
            tokio::time::sleep(HOTPLUG_SETTLE).await;
            // A device event during the settling time widens a network-only look.
            if devices
                .as_ref()
                .is_some_and(|d| d.has_changed().unwrap_or(false))
            {
                next = Reinspect::Everything;
            }
            for events in [&mut devices, &mut links].into_iter().flatten() {
                events.borrow_and_update();
            }
            match next {
                Reinspect::Network => info!("links changed: inspecting the network again"),
                _ => info!("hardware changed: inspecting again"),
            }
        }
    });
    rx
}

/// The previous inventory with its interfaces and routes inspected again.
fn reinspect_network(root: &SysRoot, mut inventory: Inventory) -> Inventory {
    use qs_inspectors::InspectorName as N;
    let network = [N::Interfaces, N::Routes];
    let fresh = qs_inspectors::run_all(root, Some(&network));
    inventory.interfaces = fresh.interfaces;
    inventory.routes = fresh.routes;
    inventory
        .errors
        .retain(|e| !network.iter().any(|n| n.as_str() == e.inspector));
    inventory.errors.extend(fresh.errors);
    inventory
}

/// Listens for LLDP in the background for `window` at a time, publishing each window's
/// neighbours when they change. Between windows it waits [`LLDP_PAUSE`], or less when a link
/// comes up or goes down: a server recabled to another switch port shows its new neighbour
/// within one window. `None` never listens (the channel then never changes).
pub fn spawn_lldp_listener(
    root: SysRoot,
    window: Option<Duration>,
    mut links: Option<watch::Receiver<u64>>,
) -> watch::Receiver<Option<Value>> {
    let (tx, rx) = watch::channel(None);
    let Some(window) = window else {
        return rx;
    };
    tokio::spawn(async move {
        loop {
            let r = root.clone();
            let listened_on = qs_inspectors::lldp::up_interfaces(&root).ok();
            let names = listened_on.clone();
            let heard = tokio::task::spawn_blocking(move || match names {
                Some(names) if r.is_live() => qs_inspectors::lldp::listen_on(&names, window),
                _ => qs_inspectors::lldp::listen(&r, window),
            })
            .await;
            match heard {
                Ok(Ok(neighbours)) => {
                    info!(
                        neighbours = neighbours.len(),
                        "LLDP listening window closed"
                    );
                    let value = serde_json::to_value(&neighbours).ok();
                    tx.send_if_modified(|current| {
                        let changed = *current != value;
                        *current = value;
                        changed
                    });
                }
                Ok(Err(qs_inspectors::lldp::LldpError::NotLive)) => {
                    info!("not listening for LLDP: the root is a captured tree");
                    return;
                }
                Ok(Err(error)) => {
                    warn!(error = %ErrorReport::from_error(&error), "LLDP listening failed")
                }
                Err(error) => warn!(error = %error, "LLDP listener panicked"),
            }
            let pause_over = tokio::time::sleep(LLDP_PAUSE);
            tokio::pin!(pause_over);
            loop {
                tokio::select! {
                    () = &mut pause_over => break,
                    () = changed(&mut links) => {
                        tokio::time::sleep(HOTPLUG_SETTLE).await;
                        if let Some(events) = links.as_mut() {
                            events.borrow_and_update();
                        }
                        if qs_inspectors::lldp::up_interfaces(&root).ok() != listened_on {
                            info!("links went up or down: listening for LLDP now");
                            break;
                        }
                    }
                }
            }
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn fixture_host(name: &str) -> SysRoot {
        SysRoot::new(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../inspectors/fixtures/hosts")
                .join(name),
        )
    }

    /// The identifying inventory with a product name no inspector writes: a pass that ran the
    /// inspectors again would replace it.
    fn marked_identifying_inventory(root: &SysRoot) -> Inventory {
        let mut identified = identity::inspect_quickly(root, None);
        identified.dmi.as_mut().unwrap().product_name = Some("marked at identification".into());
        identified
    }

    #[tokio::test]
    async fn the_first_pass_adds_only_the_slow_facts_to_the_identifying_inventory() {
        let root = fixture_host("qemu-q35");
        let identified = marked_identifying_inventory(&root);
        assert!(identified.os_storage.as_ref().unwrap()[0].smart.is_none());
        let mut published = spawn_inspections(root, identified, None);
        tokio::time::timeout(Duration::from_secs(60), published.changed())
            .await
            .expect("the first pass publishes within a minute")
            .unwrap();
        let doc = published.borrow().clone().unwrap();
        assert_eq!(doc["dmi"]["product_name"], "marked at identification");
        assert_eq!(doc["os_storage"][0]["smart"]["passed"], true, "{doc}");
        assert_eq!(doc["bmc"]["firmware"]["manufacturer_id"], 10876, "{doc}");
    }

    #[test]
    fn a_device_change_inspects_everything_again() {
        let root = fixture_host("qemu-q35");
        let again = reinspect(
            &root,
            Reinspect::Everything,
            Some(marked_identifying_inventory(&root)),
        );
        assert_eq!(again.dmi.unwrap().product_name.as_deref(), Some("QS-Guest"));
        assert!(again.os_storage.unwrap()[0].smart.is_some());
    }

    #[test]
    fn a_link_change_inspects_only_the_network_again() {
        let root = fixture_host("qemu-q35");
        let mut previous = marked_identifying_inventory(&root);
        previous.interfaces = Some(Vec::new());
        let again = reinspect(&root, Reinspect::Network, Some(previous));
        assert_eq!(
            again.dmi.unwrap().product_name.as_deref(),
            Some("marked at identification")
        );
        assert!(!again.interfaces.unwrap().is_empty());
    }
}
