//! The shape of the file: every unknown key and every value of the wrong
//! type, all at once, before the file is deserialized.
//!
//! serde stops at the first unknown key or wrong type, which hid every
//! other error of the file. Here the parsed document is walked against
//! the file's own JSON Schema (generated from the types of
//! [`crate::core::config`], so a key added there is known here without
//! another list to keep in step): each offending entry is reported at its
//! position and removed, and what remains deserializes, so that the
//! semantic checks still run on everything else.

use std::ops::Range;

use serde_json::Value as Schema;
use toml::Spanned;
use toml::de::{DeArray, DeTable, DeValue};

use crate::core::diag::{Diag, suggest};

/// What the walk found.
#[derive(Debug, Default)]
pub struct Shape {
    /// One per unknown key (at the key) and per wrongly typed value (at
    /// the value).
    pub diags: Vec<Diag>,
    /// Spans of the tables that lost an entry: an error about such a
    /// table as a whole (a missing key) may only be the echo of a removed
    /// value, and is dropped.
    pub pruned_tables: Vec<Range<usize>>,
}

/// Checks `doc` against `schema` (the file's JSON Schema), removing every
/// entry that does not fit, and reports each.
pub fn check(doc: &mut Spanned<DeTable<'_>>, schema: &Schema) -> Shape {
    let mut w = Walker {
        root: schema,
        out: Shape::default(),
    };
    let span = doc.span();
    w.table(doc.get_mut(), span, schema, "");
    w.out
}

struct Walker<'s> {
    root: &'s Schema,
    out: Shape,
}

/// TOML's name of a value's type, with its article, for messages.
fn kind(v: &DeValue<'_>) -> &'static str {
    match v {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a date-time",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

/// The JSON Schema type names a TOML value satisfies.
fn fits(v: &DeValue<'_>, ty: &str) -> bool {
    matches!(
        (v, ty),
        (DeValue::String(_), "string")
            | (DeValue::Integer(_), "integer" | "number")
            | (DeValue::Float(_), "number")
            | (DeValue::Boolean(_), "boolean")
            | (DeValue::Array(_), "array")
            | (DeValue::Table(_), "object")
    )
}

fn type_word(ty: &str) -> Option<&'static str> {
    Some(match ty {
        "string" => "a string",
        "integer" => "an integer",
        "number" => "a number",
        "boolean" => "a boolean (true or false)",
        "array" => "an array",
        "object" => "a table",
        _ => return None,
    })
}

impl<'s> Walker<'s> {
    /// Follows `$ref` to the definition it names.
    fn resolve(&self, mut s: &'s Schema) -> &'s Schema {
        // A chain of references is short; the bound only guards a cycle.
        for _ in 0..8 {
            let Some(r) = s.get("$ref").and_then(Schema::as_str) else {
                break;
            };
            let Some(name) = r.strip_prefix("#/$defs/") else {
                break;
            };
            match self.root.get("$defs").and_then(|d| d.get(name)) {
                Some(def) => s = def,
                None => break,
            }
        }
        s
    }

    /// The alternatives of a schema: its `anyOf`/`oneOf` branches, or
    /// itself.
    fn alternatives(&self, s: &'s Schema) -> Vec<&'s Schema> {
        let s = self.resolve(s);
        for key in ["anyOf", "oneOf"] {
            if let Some(list) = s.get(key).and_then(Schema::as_array) {
                return list.iter().flat_map(|b| self.alternatives(b)).collect();
            }
        }
        vec![s]
    }

    /// The type names a schema allows (empty: any).
    fn types(s: &Schema) -> Vec<&str> {
        match s.get("type") {
            Some(Schema::String(t)) => vec![t.as_str()],
            Some(Schema::Array(ts)) => ts.iter().filter_map(Schema::as_str).collect(),
            _ => Vec::new(),
        }
    }

    /// The branch of `s` that a value of `v`'s type takes, or, when none
    /// does, the words for what was expected.
    fn branch(&self, v: &DeValue<'_>, s: &'s Schema) -> Result<&'s Schema, Vec<&'static str>> {
        let mut expected = Vec::new();
        for alt in self.alternatives(s) {
            let types = Self::types(alt);
            if types.is_empty() || types.iter().any(|t| fits(v, t)) {
                return Ok(alt);
            }
            for t in types {
                if let Some(w) = type_word(t) {
                    if !expected.contains(&w) {
                        expected.push(w);
                    }
                }
            }
        }
        Err(expected)
    }

    /// Checks `v` (named `what` in messages) against `s`; false when it
    /// does not fit and must be removed.
    fn value(&mut self, v: &mut Spanned<DeValue<'_>>, s: &'s Schema, what: &str) -> bool {
        let span = v.span();
        let alt = match self.branch(v.get_ref(), s) {
            Ok(alt) => alt,
            Err(expected) => {
                let msg = format!(
                    "`{what}` must be {}, not {}",
                    expected.join(" or "),
                    kind(v.get_ref())
                );
                self.out.diags.push(Diag::new(span, msg));
                return false;
            }
        };
        match v.get_mut() {
            DeValue::Table(t) => self.table(t, span, alt, what),
            DeValue::Array(a) => {
                if let Some(items) = alt.get("items") {
                    self.array(a, items, what);
                }
            }
            _ => {}
        }
        true
    }

    fn array(&mut self, a: &mut DeArray<'_>, items: &'s Schema, what: &str) {
        let old = std::mem::replace(a, DeArray::new());
        let mut kept = DeArray::new();
        for (i, mut item) in old.into_iter().enumerate() {
            if self.value(&mut item, items, &format!("{what}[{i}]")) {
                kept.push(item);
            }
        }
        *a = kept;
    }

    /// Checks each entry of table `t` (at `span`, named `what`).
    fn table(&mut self, t: &mut DeTable<'_>, span: Range<usize>, s: &'s Schema, what: &str) {
        let s = self.resolve(s);
        let props = s.get("properties").and_then(Schema::as_object);
        let extra = s.get("additionalProperties");
        let mut pruned = false;
        // Rebuilt rather than `retain`ed: the key's span is needed for
        // the message, and `retain` hands out the bare key.
        let old = std::mem::take(t);
        for (key, mut v) in old {
            let name: &str = key.get_ref().as_ref();
            let path = if what.is_empty() {
                name.to_string()
            } else {
                format!("{what}.{name}")
            };
            let sub = props.and_then(|p| p.get(name));
            let keep = match (sub, extra) {
                (Some(sub), _) => self.value(&mut v, sub, &path),
                // A map (`[networks]`): every key takes the same schema.
                (None, Some(extra)) if extra.is_object() => self.value(&mut v, extra, &path),
                (None, _) => {
                    let known: Vec<&str> = props
                        .map(|p| p.keys().map(String::as_str).collect())
                        .unwrap_or_default();
                    let msg = match suggest(name, known.iter().copied()) {
                        Some(s) => format!("unknown key `{name}`; did you mean `{s}`?"),
                        None if known.is_empty() => format!("unknown key `{name}`"),
                        None => format!(
                            "unknown key `{name}` (expected one of: {})",
                            known.join(", ")
                        ),
                    };
                    self.out.diags.push(Diag::new(key.span(), msg));
                    false
                }
            };
            if keep {
                t.insert(key, v);
            } else {
                pruned = true;
            }
        }
        if pruned {
            self.out.pruned_tables.push(span);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(text: &str) -> Vec<(usize, String)> {
        let mut doc = DeTable::parse(text).expect("valid TOML");
        let schema: Schema =
            serde_json::from_str(&crate::core::config::schema_json()).expect("schema");
        let mut out: Vec<(usize, String)> = check(&mut doc, &schema)
            .diags
            .into_iter()
            .map(|d| (d.span.start, d.message))
            .collect();
        out.sort();
        out
    }

    #[test]
    fn every_unknown_key_and_wrong_type() {
        let t = "[settings]\nport_rnge = \"1-2\"\n[networks.n]\nsubnet = 5\nmtu = \"x\"\n\
                 [containers.a]\nports = [80, \"81\"]\nnetworks = { n = { ipp = \"1\" } }\n\
                 [bogus]\n";
        let d = run(t);
        let msgs: Vec<&str> = d.iter().map(|(_, m)| m.as_str()).collect();
        assert_eq!(
            msgs,
            [
                "unknown key `port_rnge`; did you mean `port_range`?",
                "`networks.n.subnet` must be a string, not an integer",
                "`networks.n.mtu` must be an integer, not a string",
                "`containers.a.ports[0]` must be a string, not an integer",
                "unknown key `ipp`; did you mean `ip`?",
                "unknown key `bogus` (expected one of: cluster, containers, hosts, networks, settings)",
            ],
            "{d:?}"
        );
    }

    #[test]
    fn both_forms_of_networks_fit() {
        assert!(run("[containers.a]\nnetworks = [\"x\"]\n").is_empty());
        assert!(run("[containers.a]\nnetworks = { x = { ip = \"10.0.0.2\" } }\n").is_empty());
        let d = run("[containers.a]\nnetworks = 3\n");
        assert_eq!(
            d[0].1,
            "`containers.a.networks` must be an array or a table, not an integer"
        );
    }
}
