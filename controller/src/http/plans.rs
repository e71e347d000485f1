//! `/api/v1/plans`: the plan sets under `--config-dir`, read from disk at each request so an
//! edited plan shows (and runs) without a restart.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use qs_plans::{PlanLookupError, PlanSets};
use serde_json::{json, Value};

use super::{ApiError, AppState};

/// `GET /api/v1/plans`: `{"config_dir", "plans": [{id, name, description, steps}], "errors":
/// ["FILE:LINE: reason"]}`, plans sorted by `SET/NAME`.
pub async fn list(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let dir = state.config_dir.clone();
    let sets = blocking(move || PlanSets::load(&dir))
        .await?
        .map_err(|e| ApiError::internal(&e))?;
    let plans: Vec<Value> = sets
        .list()
        .map(|(id, plan)| {
            json!({
                "id": id,
                "name": plan.name,
                "description": plan.description,
                "steps": plan.steps.len(),
            })
        })
        .collect();
    let errors: Vec<String> = sets.errors().iter().map(ToString::to_string).collect();
    Ok(Json(json!({
        "config_dir": state.config_dir.display().to_string(),
        "plans": plans,
        "errors": errors,
    })))
}

/// `GET /api/v1/plans/{set}/{name}`: the validated plan with its `id`; 404 when there is no
/// such file, 422 naming file, line and reason when it does not validate.
pub async fn show(
    State(state): State<AppState>,
    Path((set, name)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let id = format!("{set}/{name}");
    let dir = state.config_dir.clone();
    let lookup = id.clone();
    let plan = blocking(move || qs_plans::load_plan(&dir, &lookup))
        .await?
        .map_err(|error| match &error {
            PlanLookupError::BadName(_) => {
                ApiError::bad_request("bad_plan_name", error.to_string())
            }
            PlanLookupError::NotFound { .. } => ApiError::not_found(error.to_string()),
            PlanLookupError::Invalid(qs_plans::PlanError::Invalid { .. }) => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_plan",
                error.to_string(),
            ),
            PlanLookupError::Invalid(qs_plans::PlanError::Read { .. }) => {
                ApiError::internal(&error)
            }
        })?;
    let mut value = serde_json::to_value(&plan).map_err(|e| ApiError::internal(&e))?;
    if let Some(map) = value.as_object_mut() {
        map.insert("id".into(), json!(id));
    }
    Ok(Json(value))
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| ApiError::internal(&e))
}
