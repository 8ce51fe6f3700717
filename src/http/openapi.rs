//! `/v1/openapi.json` as the caller's contract: the routes' own document with every
//! `/v1/tasks/{task}/…` operation written out once per configured task the caller may use,
//! each with that task's parameters (names, which are required, and each rule as a
//! `pattern`). Built from the tasks in force at the request, so a reload changes it at once.
//!
//! The document is public, but tasks are not: with tokens configured, a request without a
//! valid token gets the generic `{task}` operations and no task names.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Map, Value};

use super::AppState;
use crate::jobs::Task;

/// The operations whose path names a task.
const TASK_PATHS: [&str; 4] = [
    "/v1/tasks/{task}/jobs",
    "/v1/tasks/{task}/jobs:batch",
    "/v1/tasks/{task}/pause",
    "/v1/tasks/{task}/resume",
];

/// The base document (routes and schemas), made once.
pub struct BaseDoc(pub Value);

impl BaseDoc {
    /// The routes' document, with what their derive cannot say: `run_at` and `delay` of a
    /// start exclude each other. A `null` is "not given" (serde reads it as `None`), so only
    /// two non-null values are excluded: exactly what the server refuses with 422.
    pub fn new() -> Self {
        let mut doc = serde_json::to_value(super::openapi()).expect("the OpenAPI document is JSON");
        for name in ["CreateJob", "BatchJob"] {
            if let Some(Value::Object(schema)) =
                doc.pointer_mut(&format!("/components/schemas/{name}"))
            {
                schema.insert(
                    "not".into(),
                    json!({
                        "required": ["run_at", "delay"],
                        "properties": {
                            "run_at": { "type": "string" },
                            "delay": { "type": "string" }
                        }
                    }),
                );
            }
        }
        Self(doc)
    }
}

impl Default for BaseDoc {
    fn default() -> Self {
        Self::new()
    }
}

pub async fn serve(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let snapshot = state.snapshot();
    let visible: Vec<&Arc<Task>> = match snapshot.auth.authenticate(&headers) {
        Ok(caller) => snapshot
            .tasks
            .values()
            .filter(|t| caller.allows(&t.name))
            .collect(),
        Err(_) => Vec::new(),
    };
    Json(for_tasks(&state.openapi.0, &visible)).into_response()
}

/// The document with the task operations written out for `tasks` (the generic ones are kept
/// when there are none, so the document always describes every route).
pub fn for_tasks(base: &Value, tasks: &[&Arc<Task>]) -> Value {
    let mut doc = base.clone();
    if tasks.is_empty() {
        return doc;
    }
    let schemas = doc["components"]["schemas"].clone();
    let mut added: Map<String, Value> = Map::new();
    let paths = doc["paths"].as_object_mut().expect("paths is an object");
    for template in TASK_PATHS {
        let Some(item) = paths.remove(template) else {
            continue;
        };
        for task in tasks {
            let mut item = item.clone();
            for (method, op) in item.as_object_mut().into_iter().flatten() {
                specialise(method, op, task, &schemas, &mut added);
            }
            paths.insert(template.replace("{task}", &task.name), item);
        }
    }
    let schemas = doc["components"]["schemas"]
        .as_object_mut()
        .expect("schemas is an object");
    schemas.extend(added);
    doc
}

/// One operation for one task: no `task` path parameter, an operation id of its own, and a
/// request body whose `params` are the task's.
fn specialise(
    method: &str,
    op: &mut Value,
    task: &Task,
    schemas: &Value,
    added: &mut Map<String, Value>,
) {
    let Some(op) = op.as_object_mut() else {
        return;
    };
    if let Some(Value::Array(parameters)) = op.get_mut("parameters") {
        parameters.retain(|p| !(p["in"] == "path" && p["name"] == "task"));
    }
    if let Some(Value::String(id)) = op.get_mut("operationId") {
        *id = format!("{id}__{}", task.name.replace('-', "_"));
    } else {
        op.insert(
            "operationId".into(),
            json!(format!("{method}__{}", task.name)),
        );
    }
    if let Some(Value::String(summary)) = op.get_mut("summary") {
        *summary = format!("{} ({})", summary.trim_end_matches('.'), task.name);
    }
    let Some(body) = op
        .get_mut("requestBody")
        .and_then(|b| b.pointer_mut("/content/application~1json/schema"))
    else {
        return;
    };
    if let Some(name) = schema_ref(body) {
        if let Some(own) = task_schema(&name, task, schemas, added) {
            *body = json!({ "$ref": format!("#/components/schemas/{own}") });
        }
    }
}

/// The component a `{"$ref": …}` names.
fn schema_ref(value: &Value) -> Option<String> {
    value
        .get("$ref")?
        .as_str()?
        .strip_prefix("#/components/schemas/")
        .map(str::to_string)
}

/// A copy of schema `name` for `task`: its `params` property is the task's parameters, and
/// a property that refers to a schema with `params` (the jobs of a batch) gets its own copy
/// too. Returns the copy's name, or `None` when the schema has no parameters to specialise.
fn task_schema(
    name: &str,
    task: &Task,
    schemas: &Value,
    added: &mut Map<String, Value>,
) -> Option<String> {
    let own = format!("{name}.{}", task.name);
    if added.contains_key(&own) {
        return Some(own);
    }
    let mut schema = schemas.get(name)?.clone();
    let properties = schema.get_mut("properties")?.as_object_mut()?;
    let mut changed = false;
    let properties_have_params = properties.contains_key("params");
    if properties_have_params {
        properties.insert("params".into(), params_schema(task));
        changed = true;
    }
    for property in properties.values_mut() {
        let Some(items) = property.get_mut("items") else {
            continue;
        };
        if let Some(inner) = schema_ref(items) {
            if let Some(inner) = task_schema(&inner, task, schemas, added) {
                *items = json!({ "$ref": format!("#/components/schemas/{inner}") });
                changed = true;
            }
        }
    }
    if !changed {
        return None;
    }
    if properties_have_params && !task.required_params().is_empty() {
        // Without `params` the required ones are missing: the body must have it.
        if let Some(list) = schema
            .as_object_mut()?
            .entry("required")
            .or_insert_with(|| json!([]))
            .as_array_mut()
        {
            if !list.contains(&json!("params")) {
                list.push(json!("params"));
            }
        }
    }
    added.insert(own.clone(), schema);
    Some(own)
}

/// The JSON Schema of a task's parameters: each a string matching its rule in full, the
/// ones the command uses required, no others.
fn params_schema(task: &Task) -> Value {
    let properties: BTreeMap<&str, Value> = task
        .config
        .params
        .iter()
        .map(|(name, rule)| {
            (
                name.as_str(),
                json!({
                    "type": "string",
                    // The rule must match the whole value; the anchors say so to a validator.
                    "pattern": format!("^(?:{rule})$"),
                    "description": format!("Must match `{rule}` in full (Rust regex syntax)."),
                }),
            )
        })
        .collect();
    json!({
        "type": "object",
        "description": format!("The parameters of task `{}`.", task.name),
        "properties": properties,
        "required": task.required_params(),
        "additionalProperties": false,
    })
}
