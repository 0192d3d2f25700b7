//! Generation of a JSON instance of a JSON schema, with values derived from the request.
//!
//! Supported: `type` (string or array of types, `null` skipped when another type is given),
//! `object`/`properties`, `array`/`items`/`minItems`/`maxItems`, `string` (`format`,
//! `minLength`/`maxLength`), `integer`/`number` (`minimum`/`maximum`, exclusive bounds),
//! `boolean`, `null`, `enum`, `const`, `anyOf`/`oneOf`/`allOf` (first non-null branch),
//! `$ref` to `#/...` (e.g. `#/$defs/X`).

use serde_json::{Map, Number, Value};

use crate::media::Dimensions;
use crate::text;

/// What values are derived from.
pub(crate) struct Facts<'a> {
    /// The text to extract values from (the user messages).
    pub text: &'a str,
    /// Dimensions of the first image sent, if any.
    pub image: Option<Dimensions>,
    /// Name of the fake provider.
    pub name: &'a str,
}

/// Generates an instance of `schema`.
pub(crate) fn instance(schema: &Value, facts: &Facts<'_>) -> Value {
    Generator { root: schema, facts }.value(schema, None, None, 0)
}

struct Generator<'a> {
    root: &'a Value,
    facts: &'a Facts<'a>,
}

const MAX_DEPTH: usize = 32;

impl<'a> Generator<'a> {
    fn resolve(&self, mut schema: &'a Value) -> &'a Value {
        for _ in 0..16 {
            let Some(reference) = schema.get("$ref").and_then(Value::as_str) else {
                break;
            };
            let Some(pointer) = reference.strip_prefix('#') else {
                break;
            };
            match self.root.pointer(pointer) {
                Some(target) => schema = target,
                None => break,
            }
        }
        schema
    }

    /// `name` is the property name the value is for; `index` is the position of the enclosing
    /// object in an array of objects describing an image.
    fn value(&self, schema: &'a Value, name: Option<&str>, index: Option<usize>, depth: usize) -> Value {
        if depth > MAX_DEPTH {
            return Value::Null;
        }
        let schema = self.resolve(schema);
        if let Some(value) = schema.get("const") {
            return value.clone();
        }
        if let Some(first) = schema
            .get("enum")
            .and_then(Value::as_array)
            .and_then(|values| values.iter().find(|v| !v.is_null()).or_else(|| values.first()))
        {
            return first.clone();
        }
        for combinator in ["anyOf", "oneOf", "allOf"] {
            if let Some(branches) = schema.get(combinator).and_then(Value::as_array) {
                let branch = branches
                    .iter()
                    .find(|branch| !is_null_schema(self.resolve(branch)))
                    .or_else(|| branches.first());
                if let Some(branch) = branch {
                    return self.value(branch, name, index, depth + 1);
                }
            }
        }
        match schema_type(schema) {
            "object" => self.object(schema, index, depth),
            "array" => self.array(schema, name, index, depth),
            "string" => Value::String(self.string(schema, name, index)),
            "integer" => Value::Number(Number::from(self.integer(schema, name, index))),
            "number" => number(self.number(schema, name, index)),
            "boolean" => Value::Bool(true),
            _ => Value::Null,
        }
    }

    fn object(&self, schema: &'a Value, index: Option<usize>, depth: usize) -> Value {
        let mut out = Map::new();
        if let Some(properties) = schema.get("properties").and_then(Value::as_object) {
            for (key, property) in properties {
                out.insert(key.clone(), self.value(property, Some(key), index, depth + 1));
            }
        }
        Value::Object(out)
    }

    fn array(&self, schema: &'a Value, name: Option<&str>, index: Option<usize>, depth: usize) -> Value {
        let items = schema.get("items").map(|items| self.resolve(items));
        let mut out: Vec<Value> = match items {
            None => Vec::new(),
            Some(items) => {
                let plain = items.get("enum").is_none() && items.get("const").is_none();
                match schema_type(items) {
                    "string" if plain && index.is_none() => match self.facts.image {
                        Some(image) => image.tags().into_iter().map(Value::String).collect(),
                        None => text::long_words(self.facts.text, 3)
                            .into_iter()
                            .map(Value::String)
                            .collect(),
                    },
                    "object" if self.facts.image.is_some() => {
                        (0..2).map(|i| self.value(items, name, Some(i), depth + 1)).collect()
                    }
                    _ => vec![self.value(items, name, index, depth + 1)],
                }
            }
        };
        let max = usize_keyword(schema, "maxItems");
        if let Some(max) = max {
            out.truncate(max);
        }
        let min = usize_keyword(schema, "minItems").unwrap_or(0);
        while out.len() < min {
            let next = match items {
                Some(items) if schema_type(items) == "string" && out.iter().all(Value::is_string) => {
                    Value::String(format!("item{}", out.len() + 1))
                }
                Some(items) => self.value(items, name, index, depth + 1),
                None => Value::Null,
            };
            out.push(next);
        }
        Value::Array(out)
    }

    fn string(&self, schema: &Value, name: Option<&str>, index: Option<usize>) -> String {
        let name = name.unwrap_or("").to_ascii_lowercase();
        let format = schema.get("format").and_then(Value::as_str);
        let mut value = match format {
            Some("date-time") => "1970-01-01T00:00:00Z".to_owned(),
            Some("date") => "1970-01-01".to_owned(),
            Some("time") => "00:00:00".to_owned(),
            Some("email") => format!("{}@example.com", self.facts.name),
            Some("uuid") => "00000000-0000-4000-8000-000000000000".to_owned(),
            Some("uri") => "https://example.com/".to_owned(),
            _ => match (self.facts.image, index) {
                (Some(_), Some(i)) => ["person", "chair"][i % 2].to_owned(),
                (Some(image), None) => match name.as_str() {
                    "scene" | "scene_type" => image.scene().to_owned(),
                    "orientation" => image.orientation().to_owned(),
                    _ => image.caption(self.facts.name),
                },
                (None, _) if name.contains("need") || name.contains("summary") => {
                    let sentence = text::first_sentence(self.facts.text);
                    if sentence.is_empty() {
                        "unknown".to_owned()
                    } else {
                        sentence
                    }
                }
                (None, _) => text::first_capitalized_word(self.facts.text).unwrap_or_else(|| "unknown".to_owned()),
            },
        };
        if let Some(max) = usize_keyword(schema, "maxLength") {
            value = text::prefix(&value, max).to_owned();
        }
        if let Some(min) = usize_keyword(schema, "minLength") {
            while value.chars().count() < min {
                value.push('_');
            }
        }
        value
    }

    fn integer(&self, schema: &Value, name: Option<&str>, index: Option<usize>) -> i64 {
        let name = name.unwrap_or("").to_ascii_lowercase();
        let raw = match (self.facts.image, index) {
            (Some(_), Some(i)) => [1, 2][i % 2],
            (Some(image), None) if name.contains("width") => i64::from(image.width),
            (Some(image), None) if name.contains("height") => i64::from(image.height),
            _ => text::first_integer(self.facts.text).unwrap_or(0),
        };
        let (low, high) = bounds(schema);
        let mut value = raw;
        if let Some(low) = low {
            value = value.max(low.ceil() as i64);
        }
        if let Some(high) = high {
            value = value.min(high.floor() as i64);
        }
        value
    }

    fn number(&self, schema: &Value, name: Option<&str>, index: Option<usize>) -> f64 {
        let name = name.unwrap_or("").to_ascii_lowercase();
        let raw = match (self.facts.image, index) {
            (Some(_), Some(i)) => [0.9, 0.8][i % 2],
            (Some(_), None) if ["confidence", "score", "probability"].iter().any(|w| name.contains(w)) => 0.9,
            (Some(image), None) if name.contains("width") => f64::from(image.width),
            (Some(image), None) if name.contains("height") => f64::from(image.height),
            _ => text::first_integer(self.facts.text).unwrap_or(0) as f64,
        };
        let (low, high) = bounds(schema);
        let mut value = raw;
        if let Some(low) = low {
            value = value.max(low);
        }
        if let Some(high) = high {
            value = value.min(high);
        }
        value
    }
}

fn is_null_schema(schema: &Value) -> bool {
    schema.get("type").and_then(Value::as_str) == Some("null")
}

/// The schema's type: the first non-null entry of `type`, else inferred from the keywords.
fn schema_type(schema: &Value) -> &str {
    match schema.get("type") {
        Some(Value::String(ty)) => ty,
        Some(Value::Array(types)) => {
            let mut names = types.iter().filter_map(Value::as_str);
            let first = names.clone().next().unwrap_or("null");
            names.find(|t| *t != "null").unwrap_or(first)
        }
        _ if schema.get("properties").is_some() => "object",
        _ if schema.get("items").is_some() => "array",
        _ => "string",
    }
}

fn usize_keyword(schema: &Value, key: &str) -> Option<usize> {
    schema
        .get(key)
        .and_then(Value::as_u64)
        .and_then(|n| usize::try_from(n).ok())
}

/// Inclusive bounds from `minimum`/`maximum`/`exclusiveMinimum`/`exclusiveMaximum`.
fn bounds(schema: &Value) -> (Option<f64>, Option<f64>) {
    let get = |key: &str| schema.get(key).and_then(Value::as_f64);
    let low = match (get("minimum"), get("exclusiveMinimum")) {
        (Some(a), Some(b)) => Some(a.max(b + 1.0)),
        (a, b) => a.or(b.map(|b| b + 1.0)),
    };
    let high = match (get("maximum"), get("exclusiveMaximum")) {
        (Some(a), Some(b)) => Some(a.min(b - 1.0)),
        (a, b) => a.or(b.map(|b| b - 1.0)),
    };
    (low, high)
}

fn number(value: f64) -> Value {
    Number::from_f64(value).map_or(Value::Null, Value::Number)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn facts(text: &str, image: Option<Dimensions>) -> Facts<'_> {
        Facts {
            text,
            image,
            name: "fake",
        }
    }

    #[test]
    fn image_schema_values() {
        let schema = json!({
            "type": "object",
            "properties": {
                "caption": {"type": "string"},
                "scene_type": {"type": "string"},
                "tags": {"type": "array", "items": {"type": "string"}},
                "objects": {"type": "array", "items": {"type": "object", "properties": {
                    "label": {"type": "string"}, "confidence": {"type": "number"}, "count": {"type": "integer"}
                }, "required": ["label", "confidence", "count"], "additionalProperties": false}},
                "kind": {"type": "string", "enum": ["photo", "drawing"]},
                "nsfw": {"type": "boolean"}
            },
            "required": ["caption", "scene_type", "tags", "objects", "kind", "nsfw"],
            "additionalProperties": false
        });
        let image = Dimensions {
            width: 640,
            height: 480,
        };
        let value = instance(&schema, &facts("Describe it", Some(image)));
        assert_eq!(
            value,
            json!({
                "caption": "a landscape photo, 640x480 [fake]",
                "scene_type": "outdoor",
                "tags": ["photo", "landscape", "640x480"],
                "objects": [
                    {"label": "person", "confidence": 0.9, "count": 1},
                    {"label": "chair", "confidence": 0.8, "count": 2}
                ],
                "kind": "photo",
                "nsfw": true
            })
        );
    }

    #[test]
    fn text_schema_values_with_refs_and_nullables() {
        let schema = json!({
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "customer_need": {"type": "string"},
                "quantity": {"type": "integer", "minimum": 0},
                "price": {"type": ["number", "null"]},
                "keywords": {"type": "array", "items": {"type": "string"}, "maxItems": 2},
                "address": {"$ref": "#/$defs/address"},
                "note": {"anyOf": [{"type": "null"}, {"type": "string"}]}
            },
            "$defs": {"address": {"type": "object", "properties": {"street": {"type": "string"}}}}
        });
        let text = "we ship to Berlin soon. Order 12 boxes of apples please";
        let value = instance(&schema, &facts(text, None));
        assert_eq!(
            value,
            json!({
                "city": "Berlin",
                "customer_need": "we ship to Berlin soon.",
                "quantity": 12,
                "price": 12.0,
                "keywords": ["berlin", "order"],
                "address": {"street": "Berlin"},
                "note": "Berlin"
            })
        );
        let empty = instance(&schema, &facts("", None));
        assert_eq!(empty["city"], "unknown");
        assert_eq!(empty["quantity"], 0);
        assert_eq!(empty["keywords"], json!([]));
    }
}
