//! The `aggregate` kind, run by the scheduler itself once every dependency has ended: it
//! combines the dependencies' results.
//!
//! Payload: `{"sum": ["/total"], "count": ["/items"]}`, JSON pointers into each dependency's
//! result metadata. `sum` adds the numbers found there (a number, or an array of numbers);
//! `count` adds the lengths of the arrays found there (any other non-null value counts 1).
//! The result metadata holds, per pointer, the totals over the dependencies that SUCCEEDED,
//! and how many dependencies ended in each state.

use std::collections::BTreeMap;

use chrono::Utc;
use mediamesh_core::Error;
use mediamesh_store::{ChildResult, CompletedTransition, DueJob, Store};
use serde::Deserialize;
use serde_json::{Value, json};

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Plan {
    sum: Vec<String>,
    count: Vec<String>,
}

impl Plan {
    /// Checks an aggregate payload; a bad one is `BAD_INPUT`.
    pub fn parse(payload: &Value) -> Result<Self, Error> {
        let plan: Plan =
            serde_json::from_value(payload.clone()).map_err(|e| Error::bad_input(format!("aggregate payload: {e}")))?;
        for pointer in plan.sum.iter().chain(&plan.count) {
            if !(pointer.is_empty() || pointer.starts_with('/')) {
                return Err(Error::bad_input(format!(
                    "aggregate payload: {pointer:?} is not a JSON pointer (it starts with /)"
                )));
            }
        }
        Ok(plan)
    }

    /// Combines the dependencies' results.
    pub fn combine(&self, children: &[ChildResult]) -> Value {
        let mut states: BTreeMap<&str, u64> = BTreeMap::new();
        let mut sums: BTreeMap<&str, f64> = self.sum.iter().map(|p| (p.as_str(), 0.0)).collect();
        let mut counts: BTreeMap<&str, u64> = self.count.iter().map(|p| (p.as_str(), 0)).collect();
        for child in children {
            *states.entry(child.state.as_str()).or_default() += 1;
            if child.state != "SUCCEEDED" {
                continue;
            }
            let metadata = child
                .result
                .as_ref()
                .and_then(|r| r.get("metadata"))
                .cloned()
                .unwrap_or(Value::Null);
            for (pointer, total) in &mut sums {
                match metadata.pointer(pointer) {
                    Some(Value::Number(n)) => *total += n.as_f64().unwrap_or(0.0),
                    Some(Value::Array(items)) => *total += items.iter().filter_map(Value::as_f64).sum::<f64>(),
                    _ => {}
                }
            }
            for (pointer, total) in &mut counts {
                match metadata.pointer(pointer) {
                    Some(Value::Array(items)) => *total += items.len() as u64,
                    Some(Value::Null) | None => {}
                    Some(_) => *total += 1,
                }
            }
        }
        let sums: serde_json::Map<String, Value> = sums
            .into_iter()
            .map(|(pointer, total)| (pointer.to_owned(), number(total)))
            .collect();
        json!({
            "outputs": [],
            "metadata": {
                "dependencies": children.len(),
                "succeeded": states.get("SUCCEEDED").copied().unwrap_or(0),
                "failed": states.get("FAILED").copied().unwrap_or(0),
                "cancelled": states.get("CANCELLED").copied().unwrap_or(0),
                "sum": sums,
                "count": counts,
            }
        })
    }
}

/// A whole number as an integer, anything else as a float.
fn number(x: f64) -> Value {
    if x.fract() == 0.0 && x.abs() < 9.0e15 {
        json!(x as i64)
    } else {
        json!(x)
    }
}

/// Runs one claimed aggregate job to its end. Returns the transitions it made.
pub async fn run(store: &Store, job: &DueJob, worker_id: &str) -> mediamesh_store::Result<Vec<CompletedTransition>> {
    let mut transitions = Vec::new();
    let Some(started) = store.mark_started(job.id, job.attempt, worker_id, Utc::now()).await? else {
        return Ok(transitions);
    };
    transitions.push(started);
    let outcome = match Plan::parse(&job.payload) {
        Ok(plan) => Ok(plan.combine(&store.dependency_results(job.id).await?)),
        Err(err) => Err(err),
    };
    let ended = match outcome {
        Ok(result) => {
            store
                .mark_succeeded(job.id, job.attempt, worker_id, &result, Utc::now())
                .await?
        }
        Err(err) => {
            store
                .mark_failed(
                    job.id,
                    job.attempt,
                    worker_id,
                    err.code.as_str(),
                    &err.message,
                    false,
                    std::time::Duration::ZERO,
                    Utc::now(),
                )
                .await?
        }
    };
    transitions.extend(ended);
    Ok(transitions)
}

#[cfg(test)]
mod tests {
    use mediamesh_core::ErrorCode;

    use super::*;

    fn child(state: &str, metadata: Value) -> ChildResult {
        ChildResult {
            id: uuid::Uuid::now_v7(),
            kind: "test.sleep".to_owned(),
            state: state.to_owned(),
            result: Some(json!({ "outputs": [], "metadata": metadata })),
        }
    }

    #[test]
    fn sums_and_counts_only_what_succeeded() {
        let plan = Plan::parse(&json!({"sum": ["/total"], "count": ["/items"]})).unwrap();
        let children = [
            child("SUCCEEDED", json!({"total": 2, "items": ["a", "b"]})),
            child("SUCCEEDED", json!({"total": 1.5, "items": ["c"]})),
            child("FAILED", json!({"total": 100, "items": ["x"]})),
            child("SUCCEEDED", json!({})),
        ];
        let result = plan.combine(&children);
        let metadata = &result["metadata"];
        assert_eq!(metadata["sum"]["/total"], json!(3.5));
        assert_eq!(metadata["count"]["/items"], json!(3));
        assert_eq!(metadata["succeeded"], json!(3));
        assert_eq!(metadata["failed"], json!(1));
        assert_eq!(metadata["dependencies"], json!(4));
    }

    #[test]
    fn rejects_what_is_not_a_pointer() {
        assert_eq!(
            Plan::parse(&json!({"sum": ["total"]})).unwrap_err().code,
            ErrorCode::BadInput
        );
        assert!(Plan::parse(&json!({"avg": []})).is_err());
    }
}
