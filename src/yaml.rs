//! YAML for the JSON data model, both ways, for the command line's
//! manifests: [`to_json`] turns one parsed document into what the API server
//! works with, and [`emit_document`] writes YAML that `kubectl` and the API
//! server read back as the same object.
//!
//! Why our own writer rather than `serde_norway`'s: the API server and
//! `kubectl` read YAML 1.1, where a plain `on`, `no` or `y` is a boolean;
//! `serde_norway` (YAML 1.2) writes the string `"no"` unquoted, and an env
//! value or annotation would come back as a bool that the API server
//! refuses. Keys are written in the input's order (the parsed YAML is the
//! hint: `serde_json::Value` sorts keys), then new keys `name` first.
//!
//! Why a hint rather than serde_json's `preserve_order`: that feature is
//! crate-wide (features unify across the workspace and every dependency),
//! turning every `serde_json::Map` of the process into an `IndexMap`. The
//! benchmark floor, which parses reviews into a `Value`, took 20 % more
//! instructions with it (474,725 -> 570,734 per review, bench/callgrind.sh),
//! and the Docker API guard reads bodies as `Value`s on its hot path.

use serde_json::{Map, Value};

/// Converts one parsed YAML document to the JSON data model the API server
/// works in: scalar keys become strings (as `sigs.k8s.io/yaml` does), and what
/// JSON cannot hold (custom tags, `.inf`, complex keys) is an error rather than
/// a silent change.
pub fn to_json(v: &serde_norway::Value) -> Result<Value, String> {
    use serde_norway::Value as Y;
    Ok(match v {
        Y::Null => Value::Null,
        Y::Bool(b) => Value::Bool(*b),
        Y::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::from(i)
            } else if let Some(u) = n.as_u64() {
                Value::from(u)
            } else {
                let f = n.as_f64().unwrap_or(f64::NAN);
                match serde_json::Number::from_f64(f) {
                    Some(n) => Value::Number(n),
                    None => return Err(format!("the number {n} cannot be represented in JSON")),
                }
            }
        }
        Y::String(s) => Value::String(s.clone()),
        Y::Sequence(items) => Value::Array(items.iter().map(to_json).collect::<Result<_, _>>()?),
        Y::Mapping(m) => {
            let mut out = Map::new();
            for (k, v) in m {
                let key = yaml_key(k).ok_or_else(|| {
                    "a mapping key must be a string or another scalar".to_string()
                })?;
                // The YAML reader takes every `<<` key, quoted or not, as a
                // merge key, so a `<<` left after merging (a merged mapping
                // with a `<<: null` entry) could never be read back from
                // what nestdock writes. No Kubernetes field or map key
                // (labels, annotations, ConfigMap data) may be `<<`.
                if key == "<<" {
                    return Err(
                        "a key \"<<\" remains after YAML merge keys were applied (a merge of a \
                         mapping that itself has a \"<<\" entry); Kubernetes has no such key"
                            .to_string(),
                    );
                }
                out.insert(key, to_json(v)?);
            }
            Value::Object(out)
        }
        Y::Tagged(t) => {
            return Err(format!(
                "the YAML tag {} is not supported (Kubernetes manifests use plain YAML)",
                t.tag
            ))
        }
    })
}

/// The JSON key for a YAML mapping key, `None` for keys JSON cannot have.
fn yaml_key(k: &serde_norway::Value) -> Option<String> {
    use serde_norway::Value as Y;
    match k {
        Y::String(s) => Some(s.clone()),
        Y::Number(n) => Some(n.to_string()),
        Y::Bool(b) => Some(b.to_string()),
        Y::Null => Some("null".to_string()),
        _ => None,
    }
}

type Hint<'a> = Option<&'a serde_norway::Value>;

/// Appends one document (a mapping) ending in a newline. `hint` is the
/// document as read, for key order.
pub fn emit_document(out: &mut String, value: &Value, hint: Hint<'_>) {
    match value {
        Value::Object(m) if !m.is_empty() => emit_mapping(out, m, hint, 0, false),
        other => {
            emit_inline(out, other);
            out.push('\n');
        }
    }
}

fn indent(out: &mut String, n: usize) {
    out.extend(std::iter::repeat_n(' ', n));
}

/// Entries of `m` in the order of the hint (the input), then the new keys:
/// `name` first (as Kubernetes writes containers and volumes), then sorted.
fn ordered<'a>(
    m: &'a Map<String, Value>,
    hint: Hint<'a>,
) -> Vec<(&'a String, &'a Value, Hint<'a>)> {
    let mut out = Vec::with_capacity(m.len());
    let mut seen = std::collections::HashSet::new();
    if let Some(serde_norway::Value::Mapping(h)) = hint {
        for (hk, hv) in h {
            let Some(k) = yaml_key(hk) else {
                continue;
            };
            if let Some((key, v)) = m.get_key_value(&k) {
                if seen.insert(key.as_str()) {
                    out.push((key, v, Some(hv)));
                }
            }
        }
    }
    if let Some((k, v)) = m.get_key_value("name") {
        if seen.insert("name") {
            out.push((k, v, None));
        }
    }
    for (k, v) in m {
        if seen.insert(k.as_str()) {
            out.push((k, v, None));
        }
    }
    out
}

/// The hint for item `i` of a sequence: the input item with the same
/// `name` when the item has one (nestdock inserts its containers first),
/// else the input item at the same index.
fn item_hint<'a>(item: &Value, i: usize, hint: Hint<'a>) -> Hint<'a> {
    let Some(serde_norway::Value::Sequence(h)) = hint else {
        return None;
    };
    if let Some(name) = item.get("name").and_then(Value::as_str) {
        return h
            .iter()
            .find(|x| x.get("name").and_then(|n| n.as_str()) == Some(name));
    }
    h.get(i)
}

/// Written keys longer than this use the explicit form (YAML's limit for an
/// implicit key is 1024 characters; no Kubernetes key comes close).
const EXPLICIT_KEY_OVER: usize = 1000;

/// A non-empty mapping whose entries start at column `n`; with
/// `first_inline` the first entry follows a `- ` already written.
fn emit_mapping(
    out: &mut String,
    m: &Map<String, Value>,
    hint: Hint<'_>,
    n: usize,
    first_inline: bool,
) {
    for (i, (k, v, h)) in ordered(m, hint).into_iter().enumerate() {
        if i > 0 || !first_inline {
            indent(out, n);
        }
        let start = out.len();
        emit_string(out, k);
        if out.len() - start > EXPLICIT_KEY_OVER {
            // YAML allows at most 1024 characters in an implicit key;
            // longer ones are written in the explicit `? key` form.
            let key = out.split_off(start);
            out.push_str("? ");
            out.push_str(&key);
            out.push('\n');
            indent(out, n);
        }
        out.push(':');
        emit_value(out, v, h, n);
    }
}

/// A non-empty sequence whose dashes sit at column `n` (Kubernetes style:
/// under a key, not indented further).
fn emit_sequence(out: &mut String, s: &[Value], hint: Hint<'_>, n: usize, first_inline: bool) {
    for (i, item) in s.iter().enumerate() {
        if i > 0 || !first_inline {
            indent(out, n);
        }
        out.push('-');
        let h = item_hint(item, i, hint);
        match item {
            Value::Object(m) if !m.is_empty() => {
                out.push(' ');
                emit_mapping(out, m, h, n + 2, true);
            }
            Value::Array(a) if !a.is_empty() => {
                out.push(' ');
                emit_sequence(out, a, h, n + 2, true);
            }
            _ => emit_value(out, item, h, n),
        }
    }
}

/// The value after `key:` (column `n` of the key) or after `-`; writes the
/// separating space or newline itself, and ends with a newline.
fn emit_value(out: &mut String, v: &Value, hint: Hint<'_>, n: usize) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            out.push('\n');
            emit_mapping(out, m, hint, n + 2, false);
        }
        Value::Array(a) if !a.is_empty() => {
            out.push('\n');
            emit_sequence(out, a, hint, n, false);
        }
        Value::String(s) if literal_ok(s) => {
            out.push(' ');
            emit_literal(out, s, n + 2);
        }
        other => {
            out.push(' ');
            emit_inline(out, other);
            out.push('\n');
        }
    }
}

/// Scalars and empty collections, on one line.
fn emit_inline(out: &mut String, v: &Value) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(num) => out.push_str(&number(num)),
        Value::String(s) => emit_string(out, s),
        Value::Array(_) => out.push_str("[]"),
        Value::Object(_) => out.push_str("{}"),
    }
}

/// Numbers as both YAML 1.1 and 1.2 read them back: a float needs a `.`
/// and a signed exponent in YAML 1.1 (`1e300` would be a string there).
fn number(num: &serde_json::Number) -> String {
    let s = num.to_string();
    if !num.is_f64() {
        return s;
    }
    match s.split_once(['e', 'E']) {
        Some((mantissa, exp)) => {
            let mantissa = if mantissa.contains('.') {
                mantissa.to_string()
            } else {
                format!("{mantissa}.0")
            };
            let exp = if exp.starts_with(['-', '+']) {
                exp.to_string()
            } else {
                format!("+{exp}")
            };
            format!("{mantissa}e{exp}")
        }
        None if s.contains('.') => s,
        None => format!("{s}.0"),
    }
}

/// A one-line string: plain when no YAML reader could take it for
/// anything else, else single-quoted, else double-quoted with escapes.
fn emit_string(out: &mut String, s: &str) {
    if plain_ok(s) {
        out.push_str(s);
    } else if single_ok(s) {
        out.push('\'');
        out.push_str(&s.replace('\'', "''"));
        out.push('\'');
    } else {
        emit_double(out, s);
    }
}

/// Characters that YAML treats as line breaks or that it cannot carry
/// unescaped.
fn special(c: char) -> bool {
    matches!(
        c,
        '\u{85}' | '\u{2028}' | '\u{2029}' | '\u{feff}' | '\u{fffe}' | '\u{ffff}'
    ) || (c.is_control() && c != '\n')
        || c == '\t'
}

/// Words that YAML 1.1 (kubectl, the API server) or 1.2 read as null,
/// booleans, infinities or merge keys.
const RESERVED: &[&str] = &[
    "~", "null", "Null", "NULL", "y", "Y", "yes", "Yes", "YES", "n", "N", "no", "No", "NO", "true",
    "True", "TRUE", "false", "False", "FALSE", "on", "On", "ON", "off", "Off", "OFF", ".inf",
    ".Inf", ".INF", "+.inf", "+.Inf", "+.INF", "-.inf", "-.Inf", "-.INF", ".nan", ".NaN", ".NAN",
    "<<", "=",
];

/// Could a YAML 1.1 or 1.2 reader take `s` for a number or a timestamp
/// (`1e3`, `0x1F`, `0755`, `1_000`, `1:30`, `2024-01-01`)? Errs on the side
/// of quoting: `1Gi` and `500m` stay plain, `1d` gets quoted.
fn numeric_like(s: &str) -> bool {
    let body = s.strip_prefix(['+', '-']).unwrap_or(s);
    let starts = body.starts_with(|c: char| c.is_ascii_digit() || c == '.');
    starts
        && body
            .chars()
            .all(|c| c.is_ascii_hexdigit() || "_.:+-xXoOtTzZ ".contains(c))
}

fn plain_ok(s: &str) -> bool {
    let Some(first) = s.chars().next() else {
        return false;
    };
    if RESERVED.contains(&s) || numeric_like(s) {
        return false;
    }
    if s.starts_with("---") || s.starts_with("...") {
        return false;
    }
    if "?:,[]{}#&*!|>'\"%@` ".contains(first) {
        return false;
    }
    if first == '-' {
        // `--flag` and `-x` are fine; `-` alone or `- x` start a sequence.
        match s.chars().nth(1) {
            Some(c) if c != ' ' => {}
            _ => return false,
        }
    }
    !(s.ends_with(' ')
        || s.ends_with(':')
        || s.contains(": ")
        || s.contains(" #")
        || s.contains('\n')
        || s.chars().any(special))
}

fn single_ok(s: &str) -> bool {
    !s.contains('\n') && !s.chars().any(special)
}

fn emit_double(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            '\u{85}' => out.push_str("\\N"),
            '\u{2028}' => out.push_str("\\L"),
            '\u{2029}' => out.push_str("\\P"),
            c if special(c) => {
                let code = c as u32;
                if code <= 0xff {
                    out.push_str(&format!("\\x{code:02x}"));
                } else {
                    out.push_str(&format!("\\u{code:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// A multi-line string can be a literal block (`|`) when it reads back the
/// same: no trailing spaces on a line (editors strip them), no tabs or
/// control characters, and a first line that does not start with a space
/// (the block's indentation is taken from it).
fn literal_ok(s: &str) -> bool {
    if !s.contains('\n') || s.chars().any(special) {
        return false;
    }
    let body = s.trim_end_matches('\n');
    if body.is_empty() || body.starts_with('\n') {
        return false;
    }
    if body.starts_with(' ') {
        return false;
    }
    !s.contains(" \n") && !s.ends_with(' ')
}

/// Writes `|`, `|-` or `|+` and the lines at column `n`.
fn emit_literal(out: &mut String, s: &str, n: usize) {
    let body = s.trim_end_matches('\n');
    let trailing = s.len() - body.len();
    out.push_str(match trailing {
        0 => "|-",
        1 => "|",
        _ => "|+",
    });
    out.push('\n');
    for line in body.split('\n') {
        if !line.is_empty() {
            indent(out, n);
            out.push_str(line);
        }
        out.push('\n');
    }
    for _ in 1..trailing {
        out.push('\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn render(v: &Value) -> String {
        let mut s = String::new();
        emit_document(&mut s, v, None);
        s
    }

    fn reread(text: &str) -> Value {
        let y: serde_norway::Value = serde_norway::from_str(text)
            .unwrap_or_else(|e| panic!("emitted YAML does not parse: {e}\n{text}"));
        super::to_json(&y).unwrap()
    }

    #[test]
    fn yaml_1_1_words_and_numbers_are_quoted() {
        for s in [
            "yes",
            "no",
            "on",
            "off",
            "y",
            "N",
            "NO",
            "Off",
            "true",
            "null",
            "~",
            "1_000",
            "2024-01-01",
            "1:30",
            "0755",
            "0x1F",
            "1e3",
            ".5",
            "=",
            "<<",
            ".inf",
            "-1",
            "",
            "- x",
            "-",
            "a: b",
            "a #b",
            "end:",
            " lead",
            "trail ",
            "---",
            "#c",
            "*a",
            "&a",
            "!t",
            "%x",
            "@x",
            "`x",
            "'q'",
            "\"q\"",
            "[x]",
            "{x}",
            "|",
            ">",
            "?",
            "1.0",
        ] {
            let v = serde_json::json!({ "k": s });
            let text = render(&v);
            assert_ne!(text, format!("k: {s}\n"), "{s:?} must be quoted");
            assert_eq!(reread(&text), v, "{text}");
        }
    }

    /// A fuzz finding: merging a mapping whose own entry is `<<: null` left
    /// a `<<` key, which the reader refuses when it reads it back.
    #[test]
    fn a_merge_key_left_after_merging_is_an_error() {
        let read = |text: &str| {
            let mut doc: serde_norway::Value = serde_norway::from_str(text).unwrap();
            doc.apply_merge().unwrap();
            to_json(&doc)
        };
        let e = read("<<:\n- a: 1\n- <<:\nkind: X\n").unwrap_err();
        assert!(e.contains("\"<<\" remains"), "{e}");
        // An ordinary merge is read as it always was.
        let doc = read("base: &b {a: 1}\nkind: X\n<<: *b\n").unwrap();
        assert_eq!(doc["a"], 1);
    }

    #[test]
    fn common_kubernetes_values_stay_plain() {
        for s in [
            "docker:28-dind",
            "1Gi",
            "500m",
            "--group=2375",
            "unix:///var/run/docker.sock",
            "nestdock.io/mode",
            "/var/run",
            "registry.example.com:5000/team/app:1.2.3",
            "dind-rootless",
            "10.0.0.0/8",
        ] {
            let v = serde_json::json!({ "k": s });
            assert_eq!(render(&v), format!("k: {s}\n"));
        }
    }

    #[test]
    fn multi_line_strings_are_literal_blocks() {
        let v = serde_json::json!({"spec": {"args": ["-c", "set -e\ndocker build .\n\ndocker push x\n"], "s": "a\nb", "k": "a\n\n\n"}});
        let text = render(&v);
        assert!(
            text.contains("- |\n    set -e\n    docker build .\n\n    docker push x\n"),
            "{text}"
        );
        assert!(text.contains("s: |-\n    a\n    b\n"), "{text}");
        assert_eq!(reread(&text), v);
    }

    #[test]
    fn floats_read_back_as_floats_in_yaml_1_1() {
        assert_eq!(
            number(&serde_json::Number::from_f64(1e300).unwrap()),
            "1.0e+300"
        );
        assert_eq!(
            number(&serde_json::Number::from_f64(1.5e-7).unwrap()),
            "1.5e-7"
        );
        assert_eq!(number(&serde_json::Number::from_f64(0.5).unwrap()), "0.5");
        assert_eq!(number(&serde_json::Number::from(42)), "42");
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            (-1e6f64..1e6).prop_map(Value::from),
            "\\PC{0,12}".prop_map(Value::String),
            "[ a-z0-9:#'\"\\-\n\t.]{0,12}".prop_map(Value::String),
            prop::sample::select(RESERVED).prop_map(|s| Value::String(s.to_string())),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map("[a-z0-9 :#.-]{0,8}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn emitted_yaml_reads_back_unchanged(
            m in prop::collection::btree_map("[a-zA-Z0-9 :#.-]{0,8}", json_value(), 0..5)
        ) {
            let v = Value::Object(m.into_iter().collect());
            let text = render(&v);
            prop_assert_eq!(reread(&text), v, "{}", text);
        }
    }
}
