//! Plans of steps, per-host argument templates and asset sets, for the job engine.
//!
//! Principal items:
//! - [`Plan`] and [`Step`]: a validated plan file ([`validate_file`]); plan sets are folders
//!   under the config dir, each plan named `SET/NAME` ([`PlanSets::load`], [`load_plan`]);
//! - [`render_args`]: a step's or job's arguments rendered for one host ([`HostContext`]);
//! - [`Condition`]: a step's `when`, compiled at validation, evaluated per host;
//! - [`parse_assets`]: the per-host asset sets of `qs assets import`.
//!
//! The only I/O is reading plan files.
//!
//! ```
//! use qs_plans::{render_args, HostContext};
//! use serde_json::json;
//!
//! let mut host = HostContext::new("013c16030373937262a32e831ff18c941b6481ded8",
//!     json!({"dmi": {"product_serial": "SN1"}}), Some(json!({"rack": 7})));
//! host.record_step("check", "succeeded", json!({"exit_code": 1}), json!(null));
//! let args = json!({"serial": "{{ inventory.dmi.product_serial }}", "rack": "{{ assets.rack }}"});
//! let rendered = render_args(&args, host.as_value()).unwrap();
//! assert_eq!(rendered, json!({"serial": "SN1", "rack": 7}));
//! let when = qs_plans::Condition::compile("steps.check.output.exit_code == 1").unwrap();
//! assert!(when.evaluate(host.as_value()).unwrap());
//! ```

pub mod assets;
pub mod lazy_json;
pub mod plan;
pub mod sets;
pub mod template;
pub mod yaml;

pub use assets::{parse_assets, AssetError};
pub use plan::{parse_plan, validate_file, Plan, PlanError, Step};
pub use sets::{load_plan, PlanLookupError, PlanSetError, PlanSets};
pub use template::{render_args, Condition, HostContext, RenderContext, TemplateError};
