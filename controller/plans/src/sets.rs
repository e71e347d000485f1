//! Plan sets: each folder under the config dir is a set, each `*.yaml` (or `*.yml`) file in it
//! a plan, named `SET/NAME` (NAME = the file stem). Files are read when asked for, so an edited
//! plan takes effect without a restart.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::plan::{validate_file, Plan, PlanError};

/// Why a plan could not be had by its `SET/NAME`.
#[derive(Debug, thiserror::Error)]
pub enum PlanLookupError {
    /// The name is not `SET/NAME` with safe parts.
    #[error("`{0}` is not a plan name: write SET/NAME (letters, digits, `.`, `_`, `-`)")]
    BadName(String),
    /// No such file in the config dir.
    #[error("no plan `{name}` in {}", dir.display())]
    NotFound {
        /// The plan's name.
        name: String,
        /// The config dir looked in.
        dir: PathBuf,
    },
    /// The file exists but is not a valid plan.
    #[error(transparent)]
    Invalid(#[from] PlanError),
}

/// Why the config dir could not be listed.
#[derive(Debug, thiserror::Error)]
#[error("cannot list plans in {}", dir.display())]
pub struct PlanSetError {
    /// The folder.
    pub dir: PathBuf,
    /// Why.
    #[source]
    pub source: std::io::Error,
}

/// Every plan under a config dir at the time it was loaded, and the files that did not validate.
#[derive(Debug, Default)]
pub struct PlanSets {
    plans: BTreeMap<String, Plan>,
    errors: Vec<PlanError>,
}

impl PlanSets {
    /// Reads every plan under `dir`; a missing `dir` is an empty library (a fresh controller).
    pub fn load(dir: &Path) -> Result<PlanSets, PlanSetError> {
        let mut sets = PlanSets::default();
        let list_error = |source| PlanSetError {
            dir: dir.to_owned(),
            source,
        };
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(sets),
            Err(e) => return Err(list_error(e)),
        };
        for entry in entries {
            let set_dir = entry.map_err(list_error)?.path();
            let Some(set) = safe_part(&set_dir) else {
                continue;
            };
            if !set_dir.is_dir() {
                continue;
            }
            let files = std::fs::read_dir(&set_dir).map_err(|source| PlanSetError {
                dir: set_dir.clone(),
                source,
            })?;
            for file in files {
                let path = file
                    .map_err(|source| PlanSetError {
                        dir: set_dir.clone(),
                        source,
                    })?
                    .path();
                let Some(name) = plan_stem(&path) else {
                    continue;
                };
                let id = format!("{set}/{name}");
                // `x.yaml` wins over `x.yml`, as in `load_plan`.
                if path.extension().is_some_and(|e| e == "yml")
                    && path.with_extension("yaml").is_file()
                {
                    continue;
                }
                match validate_file(&path) {
                    Ok(plan) => {
                        sets.plans.insert(id, plan);
                    }
                    Err(error) => sets.errors.push(error),
                }
            }
        }
        Ok(sets)
    }

    /// Valid plans by `SET/NAME`, sorted.
    pub fn list(&self) -> impl Iterator<Item = (&str, &Plan)> {
        self.plans.iter().map(|(id, plan)| (id.as_str(), plan))
    }

    /// One plan by `SET/NAME`.
    pub fn get(&self, id: &str) -> Option<&Plan> {
        self.plans.get(id)
    }

    /// Files that did not validate, each with its file, line and reason.
    pub fn errors(&self) -> &[PlanError] {
        &self.errors
    }
}

/// Reads and validates one plan by `SET/NAME` from `dir` (`SET/NAME.yaml`, else `.yml`).
pub fn load_plan(dir: &Path, id: &str) -> Result<Plan, PlanLookupError> {
    let bad = || PlanLookupError::BadName(id.to_owned());
    let (set, name) = id.split_once('/').ok_or_else(bad)?;
    if !is_safe(set) || !is_safe(name) {
        return Err(bad());
    }
    for extension in ["yaml", "yml"] {
        let path = dir.join(set).join(format!("{name}.{extension}"));
        if path.is_file() {
            return Ok(validate_file(&path)?);
        }
    }
    Err(PlanLookupError::NotFound {
        name: id.to_owned(),
        dir: dir.to_owned(),
    })
}

/// A set or plan name: no separators, no leading dot (hidden files, `..`).
fn is_safe(part: &str) -> bool {
    !part.is_empty()
        && !part.starts_with('.')
        && part
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

fn safe_part(path: &Path) -> Option<&str> {
    path.file_name()
        .and_then(|n| n.to_str())
        .filter(|n| is_safe(n))
}

fn plan_stem(path: &Path) -> Option<&str> {
    let extension = path.extension()?;
    if extension != "yaml" && extension != "yml" {
        return None;
    }
    path.file_stem()
        .and_then(|n| n.to_str())
        .filter(|n| is_safe(n))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn fixtures() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/plans")
    }

    #[test]
    fn sets_list_every_plan_by_set_and_stem() {
        let sets = PlanSets::load(&fixtures()).unwrap();
        let ids: Vec<&str> = sets.list().map(|(id, _)| id).collect();
        assert_eq!(ids, ["firmware/bios-update", "raid/raid10"]);
        assert!(sets.errors().is_empty());
        assert_eq!(sets.get("raid/raid10").unwrap().name, "raid10");
    }

    #[test]
    fn a_bad_file_is_reported_and_the_rest_still_load() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("ops")).unwrap();
        std::fs::write(
            dir.path().join("ops/good.yml"),
            "name: good\nsteps:\n  - name: a\n    capability: run\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("ops/bad.yaml"), "name: bad\nsteps: []\n").unwrap();
        std::fs::write(dir.path().join("ops/notes.txt"), "not a plan").unwrap();
        std::fs::write(dir.path().join("stray.yaml"), "not in a set").unwrap();
        let sets = PlanSets::load(dir.path()).unwrap();
        assert_eq!(sets.list().count(), 1);
        assert_eq!(sets.errors().len(), 1);
        assert!(sets.errors()[0]
            .to_string()
            .ends_with("bad.yaml:2: `steps` is empty"));
        assert_eq!(load_plan(dir.path(), "ops/good").unwrap().name, "good");
    }

    #[test]
    fn a_missing_config_dir_is_an_empty_library() {
        let sets = PlanSets::load(Path::new("/nonexistent/quicksilver-config")).unwrap();
        assert_eq!(sets.list().count(), 0);
    }

    #[test]
    fn names_cannot_escape_the_config_dir() {
        for id in [
            "../etc/passwd",
            "raid",
            "raid/../x",
            "a/b/c",
            ".hidden/x",
            "raid/",
        ] {
            assert!(
                matches!(load_plan(&fixtures(), id), Err(PlanLookupError::BadName(_))),
                "{id}"
            );
        }
        assert!(matches!(
            load_plan(&fixtures(), "raid/raid5"),
            Err(PlanLookupError::NotFound { .. })
        ));
        assert_eq!(
            load_plan(&fixtures(), "firmware/bios-update")
                .unwrap()
                .steps
                .len(),
            4
        );
    }
}
