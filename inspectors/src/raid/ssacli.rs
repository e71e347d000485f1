//! HPE Smart Array and Smart HBA controllers from `ssacli ctrl all show config detail`.
//!
//! The output is indented text: a controller line at the margin, then nested sections
//! (`Array:`, `Logical Drive:`, `physicaldrive …`) whose `key: value` lines are indented
//! deeper than their header. One-line drive summaries (`physicaldrive 1I:1:4 (port …)`) repeat
//! the detailed entries and are skipped. ssacli prints logical sizes in binary units and
//! physical drive sizes in the decimal units drives are sold in.

use qs_proto::inventory::{LogicalDrive, PhysicalDrive, RaidController};

use super::{size_bytes, size_bytes_decimal};

#[derive(Clone, Copy)]
enum Section {
    Controller,
    Other,
    Logical(usize),
    Physical(usize),
}

fn set(slot: &mut Option<String>, value: &str) {
    let value = value.split_whitespace().collect::<Vec<_>>().join(" ");
    if !value.is_empty() {
        *slot = Some(value);
    }
}

/// Parses the text; lines it does not understand are skipped, never fatal.
pub fn parse(text: &str) -> Vec<RaidController> {
    let mut controllers: Vec<RaidController> = Vec::new();
    // (indent, section) of the open headers, innermost last.
    let mut stack: Vec<(usize, Section)> = Vec::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.is_empty() {
            continue;
        }
        let indent = line.len() - line.trim_start().len();
        if indent == 0 {
            if let Some((_, slot)) = trimmed.split_once(" in Slot ") {
                let model = trimmed.split(" in Slot ").next().unwrap_or_default();
                controllers.push(RaidController {
                    tool: "ssacli".into(),
                    id: slot
                        .split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_owned(),
                    model: Some(model.to_owned()),
                    ..RaidController::default()
                });
                stack.clear();
                stack.push((0, Section::Controller));
            }
            continue;
        }
        let Some(controller) = controllers.last_mut() else {
            continue;
        };
        while stack.last().is_some_and(|(i, _)| *i >= indent && *i > 0) {
            stack.pop();
        }
        if let Some(id) = trimmed.strip_prefix("Logical Drive: ") {
            controller.logical_drives.push(LogicalDrive {
                id: id.trim().to_owned(),
                ..LogicalDrive::default()
            });
            stack.push((
                indent,
                Section::Logical(controller.logical_drives.len() - 1),
            ));
            continue;
        }
        if let Some(id) = trimmed.strip_prefix("physicaldrive ") {
            if !id.contains('(') {
                controller.physical_drives.push(PhysicalDrive {
                    id: id.trim().to_owned(),
                    ..PhysicalDrive::default()
                });
                stack.push((
                    indent,
                    Section::Physical(controller.physical_drives.len() - 1),
                ));
            }
            continue;
        }
        let Some((key, value)) = trimmed.split_once(':') else {
            // A header without a value ("unassigned", "Physical Drives", a drive cage).
            stack.push((indent, Section::Other));
            continue;
        };
        if key.starts_with("Array") || key.starts_with("Mirror Group") {
            stack.push((indent, Section::Other));
            continue;
        }
        let (key, value) = (key.trim(), value.trim());
        match stack.last().map(|(_, s)| *s).unwrap_or(Section::Controller) {
            Section::Controller => match key {
                "Serial Number" => set(&mut controller.serial, value),
                "Firmware Version" => set(&mut controller.firmware, value),
                "Controller Status" => set(&mut controller.status, value),
                _ => {}
            },
            Section::Logical(i) => {
                let Some(ld) = controller.logical_drives.get_mut(i) else {
                    continue;
                };
                match key {
                    "Size" => ld.size = size_bytes(value),
                    "Status" => set(&mut ld.state, value),
                    "Fault Tolerance" => set(&mut ld.raid_level, &format!("RAID{value}")),
                    "Disk Name" => set(&mut ld.device, value),
                    "Logical Drive Label" => set(&mut ld.name, value),
                    _ => {}
                }
            }
            Section::Physical(i) => {
                let Some(pd) = controller.physical_drives.get_mut(i) else {
                    continue;
                };
                match key {
                    "Size" => pd.size = size_bytes_decimal(value),
                    "Status" => set(&mut pd.state, value),
                    "Interface Type" => set(&mut pd.interface, value),
                    "Serial Number" => set(&mut pd.serial, value),
                    "Model" => set(&mut pd.model, value),
                    "Rotational Speed" => {
                        let ssd = value.eq_ignore_ascii_case("Solid State") || value == "0";
                        pd.media = Some(if ssd { "SSD" } else { "HDD" }.to_owned());
                    }
                    _ => {}
                }
            }
            Section::Other => {}
        }
    }
    controllers
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    const P822: &str = include_str!(
        "../../fixtures/shared/ssacli/hp-smart-array-p822.ssacli-ctrl-all-show-config-detail.txt"
    );
    const H240: &str = include_str!(
        "../../fixtures/shared/ssacli/hp-smart-hba-h240.ssacli-ctrl-all-show-config-detail.txt"
    );

    #[test]
    fn smart_array_with_a_mirror_and_a_spare() {
        let c = parse(P822);
        assert_eq!(c.len(), 1);
        let c = &c[0];
        assert_eq!(
            (c.model.as_deref(), c.id.as_str()),
            (Some("Smart Array P822"), "2")
        );
        assert_eq!(c.serial.as_deref(), Some("PDVTF0BRH5T0MO"));
        assert_eq!(c.firmware.as_deref(), Some("4.68"));
        assert_eq!(c.status.as_deref(), Some("OK"));
        let ld = &c.logical_drives[0];
        assert_eq!(ld.device.as_deref(), Some("/dev/sda"));
        assert_eq!(ld.raid_level.as_deref(), Some("RAID1"));
        assert_eq!(ld.state.as_deref(), Some("OK"));
        let ids: Vec<&str> = c.physical_drives.iter().map(|p| p.id.as_str()).collect();
        assert_eq!(ids[..3], ["5I:1:1", "5I:1:2", "5I:1:3"]);
        let pd = &c.physical_drives[0];
        assert_eq!(pd.serial.as_deref(), Some("6SL7G55D0000N4173JLT"));
        assert_eq!(pd.model.as_deref(), Some("HP EF0600FARNA"));
        assert_eq!(pd.size, Some(500_000_000_000));
        assert_eq!(pd.media.as_deref(), Some("HDD"));
    }

    #[test]
    fn several_hbas_and_summary_lines() {
        let c = parse(H240);
        let slots: Vec<&str> = c.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(slots, vec!["1", "2", "3", "0"]);
        assert_eq!(
            c[0].physical_drives.len(),
            1,
            "summary lines are not drives"
        );
        assert_eq!(c[1].logical_drives[0].id, "8");
        assert_eq!(c[1].logical_drives[0].size, size_bytes("838.3 GB"));
        assert_eq!(c[3].model.as_deref(), Some("Smart HBA H240ar"));
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 3000, failure_persistence: None, ..ProptestConfig::default() })]
        #[test]
        fn arbitrary_text_never_panics(text in "( {0,9}[a-zA-Z :0-9()]{0,30}\n){0,20}") {
            let _ = parse(&text);
        }

        #[test]
        fn mutated_captures_never_panic(cut in 0usize..8000, insert in ".{0,20}") {
            let _ = parse(&super::super::spliced(P822, cut, &insert));
        }
    }
}
