//! The API contract, checked on every answer a test sees: the answer's status must be declared for its operation
//! in the hub's OpenAPI document, its content type must be the declared one, and its body must validate against
//! the declared schema (JSON Schema 2020-12, the dialect of OpenAPI 3.1). [`crate::TestHub`]'s requests go
//! through [`check`], so every hub test is also a contract test.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use serde_json::{Value, json};

/// The document and the validators built from it so far, per (path template, method, status).
struct Contract {
    doc: Value,
    validators: Mutex<HashMap<(String, String, String), Arc<jsonschema::Validator>>>,
}

fn contract() -> &'static Contract {
    static CONTRACT: OnceLock<Contract> = OnceLock::new();
    CONTRACT.get_or_init(|| Contract {
        doc: serde_json::to_value(hearth_hub::transport::https::api::openapi_document())
            .unwrap_or_else(|e| panic!("the OpenAPI document does not serialize: {e}")),
        validators: Mutex::new(HashMap::new()),
    })
}

/// The OpenAPI document as JSON.
pub fn document() -> &'static Value {
    &contract().doc
}

/// The document's path template that `path` (without query) matches, if any. Literal segments beat templated
/// ones, so `/api/v1/devices/{id}` never claims a literal sibling.
pub fn template_for(path: &str) -> Option<String> {
    let segments: Vec<&str> = path.split('/').collect();
    let paths = document()["paths"].as_object()?;
    paths
        .keys()
        .filter_map(|template| {
            let parts: Vec<&str> = template.split('/').collect();
            if parts.len() != segments.len() {
                return None;
            }
            let mut literal = 0;
            for (t, s) in parts.iter().zip(&segments) {
                if t.starts_with('{') && t.ends_with('}') {
                    if s.is_empty() {
                        return None;
                    }
                } else if t == s {
                    literal += 1;
                } else {
                    return None;
                }
            }
            Some((literal, template.clone()))
        })
        .max_by_key(|(literal, _)| *literal)
        .map(|(_, template)| template)
}

/// Checks one answer against the document. `path` may carry a query. A path the document does not describe must
/// be answered `404` with the error body (only the document itself is served outside it), and a method it does
/// not list for a path `405`: a route missing from the document shows up here as a breach.
pub fn check(method: &str, path: &str, status: u16, content_type: Option<&str>, body: &[u8]) -> Result<(), String> {
    let path = path.split('?').next().unwrap_or_default();
    let method = method.to_ascii_lowercase();
    if !path.starts_with("/api/") && path != "/healthz" {
        // The web app's pages (HTML for people) are not part of the API contract; the browser tests check them.
        return Ok(());
    }
    let Some(template) = template_for(path) else {
        if path == "/api/v1/openapi.json" && method == "get" {
            return Ok(());
        }
        let error = serde_json::from_slice::<Value>(body).ok();
        let is_error = error.as_ref().is_some_and(|e| e["error"]["code"].is_string());
        return if status == 404 && is_error {
            Ok(())
        } else {
            Err(format!("{method} {path}, which the document does not describe, answered {status}"))
        };
    };
    let op = &document()["paths"][&template][&method];
    if op.is_null() {
        return if status == 405 {
            Ok(())
        } else {
            Err(format!("{method} {template}, a method the document does not list, answered {status}"))
        };
    }
    let what = format!("{} {template} answered {status}", method.to_ascii_uppercase());
    let response = &op["responses"][status.to_string()];
    if response.is_null() {
        return Err(format!("{what}, which the OpenAPI document does not declare: {}", String::from_utf8_lossy(body)));
    }
    let Some(content) = response["content"].as_object().and_then(|c| c.iter().next()) else {
        return if body.is_empty() {
            Ok(())
        } else {
            Err(format!("{what} with a body, where the document declares none"))
        };
    };
    let (declared_type, media) = content;
    if !media["schema"].is_object() {
        return Err(format!("{what}: the document declares {declared_type} without a schema"));
    }
    let media_type = content_type.unwrap_or_default().split(';').next().unwrap_or_default().trim();
    if media_type != declared_type {
        return Err(format!("{what} as {media_type:?}, where the document declares {declared_type:?}"));
    }
    if declared_type.starts_with("text/") {
        // Text (security.txt, drafts): declared as a string; it must be UTF-8 text.
        return std::str::from_utf8(body).map(|_| ()).map_err(|_| format!("{what} with a body that is not UTF-8 text"));
    }
    let value: Value =
        serde_json::from_slice(body).map_err(|e| format!("{what} with a body that is not JSON ({e})"))?;
    let validator = validator(&template, &method, status, &media["schema"])?;
    let errors: Vec<String> =
        validator.iter_errors(&value).map(|e| format!("{} at {}", e, e.instance_path())).collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(format!("{what} with a body the schema refuses: {}; body: {value}", errors.join("; ")))
    }
}

fn validator(template: &str, method: &str, status: u16, schema: &Value) -> Result<Arc<jsonschema::Validator>, String> {
    let c = contract();
    let key = (template.to_owned(), method.to_owned(), status.to_string());
    let mut cache = c.validators.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(v) = cache.get(&key) {
        return Ok(v.clone());
    }
    // The response schema, with the document's components beside it so that `#/components/schemas/…` resolves;
    // in answers an object carries only its declared properties (a field leaked into an answer is a breach).
    let mut root = json!({ "$schema": "https://json-schema.org/draft/2020-12/schema" });
    if let (Some(root), Some(schema)) = (root.as_object_mut(), schema.as_object()) {
        root.extend(schema.clone());
        let mut components = c.doc["components"].clone();
        close_objects(&mut components);
        root.insert("components".into(), components);
    }
    let v = Arc::new(
        jsonschema::validator_for(&root)
            .map_err(|e| format!("the document's schema for {method} {template} {status} does not compile: {e}"))?,
    );
    cache.insert(key, v.clone());
    Ok(v)
}

/// Sets `additionalProperties: false` on every object schema that lists its properties and says nothing of others.
fn close_objects(schema: &mut Value) {
    match schema {
        Value::Object(map) => {
            if map.contains_key("properties") && !map.contains_key("additionalProperties") {
                map.insert("additionalProperties".into(), Value::Bool(false));
            }
            map.values_mut().for_each(close_objects);
        }
        Value::Array(items) => items.iter_mut().for_each(close_objects),
        _ => {}
    }
}
