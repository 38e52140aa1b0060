//! Request paths, normalised once, and the endpoint allow list.
//!
//! dockerd routes on the *decoded* path (`/v1.41/%73warm` reaches the swarm
//! handler, `/containers%2Fjson` lists containers) and answers `//` and `..`
//! with a redirect to the cleaned path, which Go clients follow. A filter
//! that matches the raw text is therefore bypassed by encoding. The guard
//! decodes, splits and resolves the path itself, decides on the result, and
//! forwards that canonical path, so dockerd routes exactly what was checked.

use std::fmt;

/// A normalised API path: the optional version prefix and the segments after
/// it, none empty, `.` or `..`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiPath {
    /// `1.41` of `/v1.41/...`.
    pub version: Option<String>,
    pub segments: Vec<String>,
}

/// Why a path was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathError(pub String);

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "nestdock guard: {}", self.0)
    }
}

/// Paths longer than this are refused (dockerd's own limit on a request head
/// is 1 MiB; no API path is near this).
pub const MAX_PATH_BYTES: usize = 16 * 1024;

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Percent-decodes `raw` (no `+` rule: that is for query strings). A `%` not
/// followed by two hex digits is an error, as in Go's URL parser.
pub fn percent_decode(raw: &str) -> Result<Vec<u8>, String> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hi = bytes.get(i + 1).copied().and_then(hex);
            let lo = bytes.get(i + 2).copied().and_then(hex);
            match (hi, lo) {
                (Some(h), Some(l)) => out.push(h * 16 + l),
                _ => {
                    let end = (i + 3).min(bytes.len());
                    return Err(format!(
                        "{:?} is not a percent escape (expected % and two hex digits)",
                        String::from_utf8_lossy(&bytes[i..end])
                    ));
                }
            }
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Ok(out)
}

/// Bytes a path segment or query component may carry unescaped.
fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Percent-encodes every byte but the unreserved ones and `extra`.
pub fn percent_encode(s: &str, extra: &[u8]) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if unreserved(b) || extra.contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn is_version(segment: &str) -> Option<&str> {
    let v = segment.strip_prefix('v')?;
    (!v.is_empty() && v.bytes().all(|b| b.is_ascii_digit() || b == b'.')).then_some(v)
}

/// Normalises a request path: decodes it, collapses `//`, drops `.`,
/// resolves `..`, strips one `/v1.xx` version prefix. Refuses what has no
/// clean reading: no leading `/`, bad escapes, bytes that are not UTF-8 or
/// are control characters, `..` above the root.
pub fn normalise(raw: &str) -> Result<ApiPath, PathError> {
    if raw.len() > MAX_PATH_BYTES {
        return Err(PathError(format!(
            "the request path is over {MAX_PATH_BYTES} bytes"
        )));
    }
    if !raw.starts_with('/') {
        return Err(PathError(format!(
            "the request path {} does not start with / (expected /v1.xx/<endpoint>)",
            crate::validate::shown(raw)
        )));
    }
    let decoded = percent_decode(raw).map_err(|e| PathError(format!("bad request path: {e}")))?;
    let decoded = String::from_utf8(decoded)
        .map_err(|_| PathError("the request path is not UTF-8 once decoded".into()))?;
    if decoded.chars().any(char::is_control) {
        return Err(PathError(
            "the request path has control characters once decoded".into(),
        ));
    }
    let mut segments: Vec<String> = Vec::new();
    for part in decoded.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if segments.pop().is_none() {
                    return Err(PathError(format!(
                        "the request path {} climbs above / with ..",
                        crate::validate::shown(raw)
                    )));
                }
            }
            p => segments.push(p.to_string()),
        }
    }
    let version = match segments.first().and_then(|s| is_version(s)) {
        Some(v) => {
            let v = v.to_string();
            segments.remove(0);
            Some(v)
        }
        None => None,
    };
    let path = ApiPath { version, segments };
    // Found by fuzzing: re-encoding can triple a path (a raw non-ASCII byte
    // becomes %XX), and what the guard forwards must itself be a path the
    // guard would accept.
    if path.upstream().len() > MAX_PATH_BYTES {
        return Err(PathError(format!(
            "the request path is over {MAX_PATH_BYTES} bytes once percent-encoded"
        )));
    }
    Ok(path)
}

impl ApiPath {
    /// The path without its version, as the rules see it: `/containers/x/json`.
    pub fn canonical(&self) -> String {
        format!("/{}", self.segments.join("/"))
    }

    /// The path forwarded to dockerd: the version prefix kept (it picks the
    /// API version dockerd answers in), every segment re-encoded.
    pub fn upstream(&self) -> String {
        let mut out = String::new();
        if let Some(v) = &self.version {
            out.push_str("/v");
            out.push_str(v);
        }
        for s in &self.segments {
            out.push('/');
            out.push_str(&percent_encode(s, b":@!$&'()*+,;="));
        }
        if self.segments.is_empty() {
            out.push('/');
        }
        out
    }

    pub fn segment(&self, i: usize) -> Option<&str> {
        self.segments.get(i).map(String::as_str)
    }
}

/// First segments the guard serves. Everything else is refused: swarm, nodes,
/// services, secrets, configs, plugins and tasks act on the whole node (or
/// the cluster) and belong to no pod.
pub const ALLOWED: &[&str] = &[
    "_ping",
    "version",
    "info",
    "events",
    "system",
    "containers",
    "images",
    "networks",
    "volumes",
    "exec",
    "build",
    "session",
    "grpc",
    "auth",
    "commit",
    "distribution",
];

/// Why an endpoint is not served, or `None` when it is.
pub fn refused_endpoint(path: &ApiPath) -> Option<String> {
    let first = path.segment(0).unwrap_or("");
    let node_wide = [
        "swarm", "nodes", "services", "secrets", "configs", "plugins", "tasks",
    ];
    if node_wide.contains(&first) {
        return Some(format!(
            "nestdock guard: /{first} is not available to pods: it acts on the whole node, not on \
             this pod's objects"
        ));
    }
    if first == "system" && path.segments.len() == 2 && path.segment(1) == Some("df") {
        return None;
    }
    if ALLOWED.contains(&first) && first != "system" {
        return None;
    }
    Some(format!(
        "nestdock guard: {} is not an endpoint the guard serves (served: /{} and /system/df)",
        crate::validate::shown(&path.canonical()),
        ALLOWED
            .iter()
            .filter(|e| **e != "system")
            .copied()
            .collect::<Vec<_>>()
            .join(", /")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_normalise_as_dockerd_routes_them() {
        let cases = [
            ("/_ping", None, "/_ping"),
            ("/v1.41/containers/json", Some("1.41"), "/containers/json"),
            ("/v1/containers/json", Some("1"), "/containers/json"),
            ("//v1.41//swarm", Some("1.41"), "/swarm"),
            ("/v1.41/containers/..%2Fswarm", Some("1.41"), "/swarm"),
            ("/v1.41/containers/../swarm", Some("1.41"), "/swarm"),
            ("/v1.41/%73warm", Some("1.41"), "/swarm"),
            ("/v1.41/containers%2Fjson", Some("1.41"), "/containers/json"),
            (
                "/v1.41/./containers/./json/",
                Some("1.41"),
                "/containers/json",
            ),
            ("/x/%2e%2e/containers", None, "/containers"),
            ("/v1.41/v1.40/containers", Some("1.41"), "/v1.40/containers"),
            ("/version", None, "/version"),
            ("/vx/containers", None, "/vx/containers"),
            (
                "/images/library%2Fbusybox/json",
                None,
                "/images/library/busybox/json",
            ),
            ("/", None, "/"),
        ];
        for (raw, version, canonical) in cases {
            let p = normalise(raw).unwrap_or_else(|e| panic!("{raw}: {e}"));
            assert_eq!(p.version.as_deref(), version, "{raw}");
            assert_eq!(p.canonical(), canonical, "{raw}");
            // What is forwarded normalises to the same thing again.
            assert_eq!(normalise(&p.upstream()).unwrap(), p, "{raw}");
        }
    }

    #[test]
    fn paths_without_a_clean_reading_are_refused() {
        let cases = [
            ("containers/json", "does not start with /"),
            ("/..", "climbs above /"),
            ("/v1.41/../../swarm", "climbs above /"),
            ("/a/%2e%2e/%2E%2E/..", "climbs above /"),
            ("/containers/%zz/json", "not a percent escape"),
            ("/containers/%4", "not a percent escape"),
            ("/containers/%ff/json", "not UTF-8"),
            ("/containers/a%00b/json", "control characters"),
            ("/containers/a%0ab/json", "control characters"),
        ];
        for (raw, want) in cases {
            let e = normalise(raw).expect_err(raw);
            assert!(e.to_string().contains(want), "{raw}: {e}");
        }
        assert!(normalise(&format!("/{}", "a".repeat(MAX_PATH_BYTES)))
            .unwrap_err()
            .to_string()
            .contains("over"));
        // Within the limit as sent, over it once encoded for forwarding.
        let wide = format!("/{}", "\u{e9}".repeat(MAX_PATH_BYTES / 3));
        assert!(wide.len() <= MAX_PATH_BYTES);
        assert!(normalise(&wide)
            .unwrap_err()
            .to_string()
            .contains("once percent-encoded"));
    }

    #[test]
    fn the_allow_list() {
        let refused = [
            "/v1.41/swarm",
            "/swarm/init",
            "/nodes",
            "/services/create",
            "/secrets",
            "/configs",
            "/plugins",
            "/plugins/pull",
            "/tasks",
            "/system",
            "/system/events",
            "/",
            "/v1.41/v1.40/containers/json",
            "/debug/pprof",
        ];
        for raw in refused {
            let p = normalise(raw).unwrap();
            let why = refused_endpoint(&p).unwrap_or_else(|| panic!("{raw} was allowed"));
            assert!(why.starts_with("nestdock guard: "), "{why}");
        }
        for raw in [
            "/_ping",
            "/v1.41/containers/json",
            "/containers/abc/attach",
            "/images/library/busybox/json",
            "/system/df",
            "/session",
            "/grpc",
            "/exec/abc/start",
        ] {
            assert_eq!(refused_endpoint(&normalise(raw).unwrap()), None, "{raw}");
        }
    }
}
