//! Same paths: a bind source as the pod's containers see it, moved to where
//! the node's daemon finds it. `docker run -v $PWD:/src` names `$PWD` in
//! the target's filesystem; the node's dockerd resolves it in the node's.
//! The webhook tells the guard where the targets mount the pod's emptyDir
//! volumes (`--mount PATH=VOLUME[/SUBPATH]`, one per mount, the socket
//! volume among them), and a source at or below such a path becomes the
//! same place below the kubelet's directory of that volume. The socket the
//! targets use is one of those places: a bind of `/var/run/docker.sock`
//! (Ryuk, docker-in-a-container tools) lands on the guard's own socket.
//!
//! Only the translation is here; the result then meets the create rules
//! like any other source (inside the pod's emptyDirs, no `..`, no symbolic
//! link on the way). A source under no mount is left as it is.

use super::body::Json;

/// One `--mount`: where the targets see a volume (normalised), the volume,
/// and the subPath they mount (empty for the whole volume).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodMount {
    pub path: String,
    pub volume: String,
    pub sub_path: String,
}

/// Reads `PATH=VOLUME[/SUBPATH]`.
pub fn parse_mount(spec: &str) -> Result<PodMount, String> {
    let bad = |why: &str| {
        format!(
            "--mount {spec:?}: {why} (expected PATH=VOLUME or PATH=VOLUME/SUBPATH, PATH absolute)"
        )
    };
    let (path, target) = spec.split_once('=').ok_or_else(|| bad("no '='"))?;
    if !path.starts_with('/') {
        return Err(bad("the path is not absolute"));
    }
    let path = clean(path).ok_or_else(|| bad("the path climbs with .."))?;
    let (volume, sub) = target.split_once('/').unwrap_or((target, ""));
    let ok_name = |s: &str| {
        !s.is_empty()
            && s.len() <= 63
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    };
    if !ok_name(volume) {
        return Err(bad("the volume is not a volume name"));
    }
    let sub_path = clean(&format!("/{sub}")).ok_or_else(|| bad("the subPath climbs with .."))?;
    Ok(PodMount {
        path,
        volume: volume.to_string(),
        sub_path: sub_path.trim_start_matches('/').to_string(),
    })
}

/// `p` without empty and `.` segments, as an absolute path; `None` when it
/// has a `..` segment (refused later, never resolved here).
fn clean(p: &str) -> Option<String> {
    let mut out = String::new();
    for seg in p.split('/') {
        match seg {
            "" | "." => {}
            ".." => return None,
            s => {
                out.push('/');
                out.push_str(s);
            }
        }
    }
    Some(if out.is_empty() { "/".to_string() } else { out })
}

/// The node's path for `source`, when it lies at or below one of `mounts`
/// (the longest match wins, as in the target's filesystem).
pub fn to_node(source: &str, mounts: &[PodMount], empty_dir_root: &str) -> Option<String> {
    let source = clean(source)?;
    let m = mounts
        .iter()
        .filter(|m| {
            m.path == "/"
                || source == m.path
                || (source.starts_with(&m.path) && source.as_bytes()[m.path.len()] == b'/')
        })
        .max_by_key(|m| m.path.len())?;
    let rest = if m.path == "/" {
        &source[..]
    } else {
        &source[m.path.len()..]
    };
    let mut out = format!("{}/{}", empty_dir_root.trim_end_matches('/'), m.volume);
    if !m.sub_path.is_empty() {
        out.push('/');
        out.push_str(&m.sub_path);
    }
    out.push_str(rest);
    Some(out)
}

/// Moves the bind sources of a container create body (`HostConfig.Binds`
/// and bind `HostConfig.Mounts`) to the node's paths.
pub fn translate(body: &mut Json, mounts: &[PodMount], empty_dir_root: &str) {
    if mounts.is_empty() {
        return;
    }
    let Some(hc) = body.field_mut("HostConfig") else {
        return;
    };
    if let Some(Json::Array(binds)) = hc.field_mut("Binds") {
        for b in binds {
            if let Json::String(s) = b {
                if let Some((src, rest)) = s.split_once(':') {
                    if src.starts_with('/') {
                        if let Some(node) = to_node(src, mounts, empty_dir_root) {
                            *s = format!("{node}:{rest}");
                        }
                    }
                }
            }
        }
    }
    if let Some(Json::Array(list)) = hc.field_mut("Mounts") {
        for m in list {
            let is_bind = m.field("Type").and_then(Json::as_str) == Some("bind");
            if let (true, Some(Json::String(src))) = (is_bind, m.field_mut("Source")) {
                if let Some(node) = to_node(src, mounts, empty_dir_root) {
                    *src = node;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROOT: &str = "/var/lib/kubelet/pods/u1/volumes/kubernetes.io~empty-dir";

    fn mounts() -> Vec<PodMount> {
        [
            "/var/run=nestdock-docker-sock",
            "/src=work",
            "/src/cache=cache",
            "/logs=work/logs",
        ]
        .iter()
        .map(|s| parse_mount(s).unwrap())
        .collect()
    }

    #[test]
    fn sources_under_a_mount_move_to_the_kubelets_directory() {
        let m = mounts();
        for (source, want) in [
            (
                "/var/run/docker.sock",
                Some(format!("{ROOT}/nestdock-docker-sock/docker.sock")),
            ),
            ("/src", Some(format!("{ROOT}/work"))),
            ("//src/./app/", Some(format!("{ROOT}/work/app"))),
            ("/src/cache/m2", Some(format!("{ROOT}/cache/m2"))),
            ("/logs/x", Some(format!("{ROOT}/work/logs/x"))),
            ("/srcx", None),
            ("/etc", None),
            ("/src/../etc", None),
        ] {
            assert_eq!(to_node(source, &m, ROOT), want, "{source}");
        }
    }

    #[test]
    fn mount_specs_are_checked() {
        assert_eq!(
            parse_mount("/w/./x=work/a/b").unwrap(),
            PodMount {
                path: "/w/x".into(),
                volume: "work".into(),
                sub_path: "a/b".into()
            }
        );
        for bad in [
            "w=work",
            "/w",
            "/w=",
            "/w=Work",
            "/w=work/../x",
            "/../w=work",
        ] {
            assert!(parse_mount(bad).is_err(), "{bad}");
        }
    }
}
