//! Query strings read the way Go's `net/url` reads them for dockerd, and
//! written back canonically.
//!
//! Keys and values are percent-decoded (`%66ilters` is `filters`) and `+` is
//! a space; a `;` separator or a bad escape makes Go drop parameters, so the
//! guard refuses those rather than guess which ones dockerd keeps. A
//! parameter the guard rewrites (`filters`, `labels`) must appear at most
//! once: Go takes the first, a careless proxy the last.

use super::path::{percent_decode, percent_encode};

/// A parsed query: decoded pairs in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Query {
    pairs: Vec<(String, String)>,
}

fn decode(part: &str) -> Result<String, String> {
    let spaced = part.replace('+', " ");
    let bytes = percent_decode(&spaced)?;
    String::from_utf8(bytes).map_err(|_| format!("{part:?} is not UTF-8 once decoded"))
}

/// Reads a raw query string (without `?`).
pub fn parse(raw: Option<&str>) -> Result<Query, String> {
    let mut pairs = Vec::new();
    let Some(raw) = raw else {
        return Ok(Query { pairs });
    };
    if raw.contains(';') {
        return Err(
            "nestdock guard: the query string has a ';', which dockerd does not read as a \
             separator (use &)"
                .into(),
        );
    }
    for part in raw.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = part.split_once('=').unwrap_or((part, ""));
        let k = decode(k).map_err(|e| format!("nestdock guard: bad query string: {e}"))?;
        let v = decode(v).map_err(|e| format!("nestdock guard: bad query string: {e}"))?;
        pairs.push((k, v));
    }
    Ok(Query { pairs })
}

impl Query {
    /// The value of `key` when it appears once; an error naming it when it
    /// appears more often (dockerd would take the first).
    pub fn single(&self, key: &str) -> Result<Option<&str>, String> {
        let mut found = self.pairs.iter().filter(|(k, _)| k == key);
        let first = found.next().map(|(_, v)| v.as_str());
        if found.next().is_some() {
            return Err(format!(
                "nestdock guard: the query parameter {key:?} is given more than once; give it once"
            ));
        }
        Ok(first)
    }

    /// Replaces every `key` by one `key=value`.
    pub fn set(&mut self, key: &str, value: String) {
        self.pairs.retain(|(k, _)| k != key);
        self.pairs.push((key.to_string(), value));
    }

    /// Every value of `key`, in order.
    pub fn all(&self, key: &str) -> Vec<&str> {
        self.pairs
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// Adds `key=value` after the others (a parameter dockerd reads as a
    /// list, such as `changes`).
    pub fn push(&mut self, key: &str, value: String) {
        self.pairs.push((key.to_string(), value));
    }

    /// The query string to forward (without `?`), empty when there is none.
    pub fn encode(&self) -> String {
        self.pairs
            .iter()
            .map(|(k, v)| format!("{}={}", percent_encode(k, b""), percent_encode(v, b"")))
            .collect::<Vec<_>>()
            .join("&")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_decode_as_go_decodes_them() {
        let q = parse(Some("all=1&%66ilters=%7B%22a%22%3A1%7D&x=a+b&flag")).unwrap();
        assert_eq!(q.single("filters").unwrap(), Some(r#"{"a":1}"#));
        assert_eq!(q.single("x").unwrap(), Some("a b"));
        assert_eq!(q.single("flag").unwrap(), Some(""));
        assert_eq!(q.single("none").unwrap(), None);
        // Written back, it reads the same.
        assert_eq!(parse(Some(&q.encode())).unwrap(), q);
        assert_eq!(parse(None).unwrap().encode(), "");
    }

    #[test]
    fn ambiguous_queries_are_refused() {
        let cases = [
            ("a=1;filters=x", "';'"),
            ("filters=%zz", "not a percent escape"),
            ("filters=%ff", "not UTF-8"),
        ];
        for (raw, want) in cases {
            let e = parse(Some(raw)).expect_err(raw);
            assert!(e.contains(want), "{raw}: {e}");
        }
        let q = parse(Some("filters=a&%66ilters=b")).unwrap();
        assert!(q.single("filters").unwrap_err().contains("more than once"));
    }

    #[test]
    fn set_replaces_every_occurrence() {
        let mut q = parse(Some("labels=a&x=1&labels=b")).unwrap();
        q.set("labels", "c".into());
        assert_eq!(q.encode(), "x=1&labels=c");
    }
}
