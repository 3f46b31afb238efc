//! Dot paths into the session's JSON object: `"user.name"`, `"teams.1.name"`.
//!
//! Dots always separate segments. A numeric segment indexes a list; on an
//! object it is an ordinary key. Writing through something that is not a
//! container replaces it with an object, as Laravel's `Arr::set` does.

use serde_json::{Map, Value};

/// The value at `path`, if present (a JSON `null` is present).
pub(crate) fn get<'a>(root: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    let mut segments = path.split('.');
    let first = segments.next()?;
    let mut current = root.get(first)?;
    for segment in segments {
        current = match current {
            Value::Object(map) => map.get(segment)?,
            Value::Array(list) => list.get(segment.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(current)
}

/// A mutable reference to the value at `path`, if present.
pub(crate) fn get_mut<'a>(root: &'a mut Map<String, Value>, path: &str) -> Option<&'a mut Value> {
    let mut segments = path.split('.');
    let first = segments.next()?;
    let mut current = root.get_mut(first)?;
    for segment in segments {
        current = match current {
            Value::Object(map) => map.get_mut(segment)?,
            Value::Array(list) => list.get_mut(segment.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(current)
}

/// Sets `path` to `value`, creating objects along the way.
pub(crate) fn set(root: &mut Map<String, Value>, path: &str, value: Value) {
    let (parents, last) = match path.rsplit_once('.') {
        Some((parents, last)) => (Some(parents), last),
        None => (None, path),
    };
    let Some(parents) = parents else {
        root.insert(path.to_owned(), value);
        return;
    };
    let mut segments = parents.split('.');
    let first = segments.next().unwrap_or_default();
    let mut current = root
        .entry(first.to_owned())
        .or_insert_with(|| Value::Object(Map::new()));
    for segment in segments {
        current = child_mut(current, segment);
    }
    set_child(current, last, value);
}

/// Descends into `segment` of `node`, making `node` a container if needed.
fn child_mut<'a>(node: &'a mut Value, segment: &str) -> &'a mut Value {
    ensure_container_for(node, segment);
    match node {
        Value::Array(list) => {
            let index = segment.parse::<usize>().unwrap_or(usize::MAX);
            if index == list.len() {
                list.push(Value::Object(Map::new()));
            }
            let slot = &mut list[index];
            if !slot.is_object() && !slot.is_array() {
                *slot = Value::Object(Map::new());
            }
            slot
        }
        Value::Object(map) => {
            let slot = map
                .entry(segment.to_owned())
                .or_insert_with(|| Value::Object(Map::new()));
            if !slot.is_object() && !slot.is_array() {
                *slot = Value::Object(Map::new());
            }
            slot
        }
        _ => unreachable!("ensure_container_for leaves an array or an object"),
    }
}

fn set_child(node: &mut Value, segment: &str, value: Value) {
    ensure_container_for(node, segment);
    match node {
        Value::Array(list) => {
            let index = segment.parse::<usize>().unwrap_or(usize::MAX);
            if index == list.len() {
                list.push(value);
            } else {
                list[index] = value;
            }
        }
        Value::Object(map) => {
            map.insert(segment.to_owned(), value);
        }
        _ => unreachable!("ensure_container_for leaves an array or an object"),
    }
}

/// Makes `node` something that `segment` can address: an object, or a list
/// when `segment` is an index within it (or one past its end). A list
/// addressed by any other segment becomes an object keyed by its indices,
/// which is what a PHP array would be.
fn ensure_container_for(node: &mut Value, segment: &str) {
    match node {
        Value::Object(_) => {}
        Value::Array(list) => {
            let fits = segment.parse::<usize>().is_ok_and(|i| i <= list.len());
            if !fits {
                let map = std::mem::take(list)
                    .into_iter()
                    .enumerate()
                    .map(|(i, v)| (i.to_string(), v))
                    .collect();
                *node = Value::Object(map);
            }
        }
        _ => *node = Value::Object(Map::new()),
    }
}

/// Removes `path`; a missing path is a no-op. Forgetting a leaf keeps its parent.
pub(crate) fn remove(root: &mut Map<String, Value>, path: &str) -> Option<Value> {
    let Some((parents, last)) = path.rsplit_once('.') else {
        return root.remove(path);
    };
    match get_mut(root, parents)? {
        Value::Object(map) => map.remove(last),
        Value::Array(list) => {
            let index = last.parse::<usize>().ok()?;
            (index < list.len()).then(|| list.remove(index))
        }
        _ => None,
    }
}

/// The JSON type name of a value, for error messages.
pub(crate) fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_f64() => "float",
        Value::Number(_) => "integer",
        Value::String(_) => "string",
        Value::Array(_) => "list",
        Value::Object(_) => "object",
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn map(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            _ => Map::new(),
        }
    }

    #[test]
    fn nested_set_and_get() {
        let mut root = Map::new();
        set(&mut root, "user.name", json!("x"));
        assert_eq!(Value::Object(root.clone()), json!({"user": {"name": "x"}}));
        assert_eq!(get(&root, "user.name"), Some(&json!("x")));
        assert_eq!(get(&root, "user.missing"), None);
        assert_eq!(get(&root, "user.name.deeper"), None);
    }

    #[test]
    fn numeric_segments_index_lists() {
        let root = map(json!({"teams": [{"name": "a"}, {"name": "b"}]}));
        assert_eq!(get(&root, "teams.1.name"), Some(&json!("b")));
        assert_eq!(get(&root, "teams.2.name"), None);
        assert_eq!(get(&root, "teams.x"), None);
        let mut root = root;
        set(&mut root, "teams.0.name", json!("z"));
        set(&mut root, "teams.2", json!({"name": "c"}));
        assert_eq!(
            Value::Object(root),
            json!({"teams": [{"name": "z"}, {"name": "b"}, {"name": "c"}]})
        );
    }

    #[test]
    fn a_list_addressed_by_a_key_becomes_an_object() {
        let mut root = map(json!({"l": [1, 2]}));
        set(&mut root, "l.k", json!(3));
        assert_eq!(Value::Object(root), json!({"l": {"0": 1, "1": 2, "k": 3}}));
    }

    #[test]
    fn setting_through_a_scalar_replaces_it() {
        let mut root = Map::new();
        set(&mut root, "s", json!("abc"));
        set(&mut root, "s.sub", json!(1));
        assert_eq!(Value::Object(root.clone()), json!({"s": {"sub": 1}}));
        set(&mut root, "n", Value::Null);
        set(&mut root, "n.a.b", json!(true));
        assert_eq!(get(&root, "n.a.b"), Some(&json!(true)));
    }

    #[test]
    fn forgetting_a_leaf_keeps_its_parent() {
        let mut root = Map::new();
        set(&mut root, "u.name", json!("x"));
        assert_eq!(remove(&mut root, "u.name"), Some(json!("x")));
        assert_eq!(Value::Object(root.clone()), json!({"u": {}}));
        assert_eq!(remove(&mut root, "u.name"), None);
        assert_eq!(remove(&mut root, "nope.deeper"), None);
        let mut root = map(json!({"l": [1, 2, 3]}));
        assert_eq!(remove(&mut root, "l.1"), Some(json!(2)));
        assert_eq!(remove(&mut root, "l.9"), None);
        assert_eq!(Value::Object(root), json!({"l": [1, 3]}));
    }

    #[test]
    fn odd_paths_do_not_panic() {
        let mut root = Map::new();
        for path in [
            "",
            ".",
            "..",
            "a..b",
            ".a",
            "a.",
            "0",
            "a.0.1.2",
            "a.18446744073709551616",
        ] {
            set(&mut root, path, json!(1));
            let _ = get(&root, path);
            let _ = remove(&mut root, path);
        }
    }
}
