//! Plan files, asset files and templates come from operators: no input makes the parsers or
//! the renderer panic, and what they refuse says where.

#![allow(clippy::unwrap_used)]

use std::path::Path;

use proptest::prelude::*;
use serde_json::json;

/// Fragments that steer random text toward YAML and template syntax.
fn yamlish() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("name: p\n".to_owned()),
        Just("steps:\n".to_owned()),
        Just("  - name: a\n    capability: run\n".to_owned()),
        Just("    when: ".to_owned()),
        Just("    timeout: ".to_owned()),
        Just("    on_failure:\n".to_owned()),
        Just("    args: {x: ".to_owned()),
        Just("{{ steps.a.output }}".to_owned()),
        Just("{% if %}".to_owned()),
        Just("[".to_owned()),
        Just("}".to_owned()),
        Just("&a *a !!str ".to_owned()),
        Just("\n".to_owned()),
        "[ -~]{0,12}",
    ];
    prop::collection::vec(piece, 0..24).prop_map(|parts| parts.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn plan_text_never_panics_and_errors_carry_a_line(text in yamlish()) {
        match qs_plans::parse_plan(&text, Path::new("p.yaml")) {
            Ok(plan) => prop_assert!(!plan.steps.is_empty()),
            Err(qs_plans::PlanError::Invalid { line, .. }) => {
                prop_assert!(line >= 1 && line <= text.lines().count() + 1, "line {line}")
            }
            Err(other) => prop_assert!(false, "unexpected {other}"),
        }
    }

    #[test]
    fn asset_text_never_panics(text in yamlish()) {
        let _ = qs_plans::parse_assets(&text);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let text = String::from_utf8_lossy(&bytes);
        let _ = qs_plans::parse_plan(&text, Path::new("p.yaml"));
        let _ = qs_plans::parse_assets(&text);
    }

    #[test]
    fn rendering_never_panics(template in "[ -~]{0,40}") {
        let host = qs_plans::HostContext::new("h", json!({"dmi": {"v": 1}}), None);
        let _ = qs_plans::render_args(&json!({"a": template.clone()}), host.as_value());
        let _ = qs_plans::Condition::compile(&template)
            .map(|c| c.evaluate(host.as_value()));
    }
}
