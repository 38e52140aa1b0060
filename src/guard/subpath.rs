//! Binds below an emptyDir's root, made safe against a pod that swaps a
//! directory for a symbolic link.
//!
//! dockerd resolves a bind source on the node when the container *starts*,
//! following symbolic links from the node's root. A pod owns everything
//! below its emptyDir's root: it can create a container binding
//! `<volume>/src` while `src` is a directory, then replace `src` with a link
//! to `/` and start the container, which then has the node's root. No check
//! the guard makes at create time (or at start: it would race the kubelet's
//! runc) closes that. Two things do:
//!
//! - A volume's root itself is made by the kubelet, in directories the pod
//!   cannot write: it stays a plain bind.
//! - Below the root, the bind becomes a `volume` mount of a local volume
//!   that binds the emptyDir's root, with `VolumeOptions.Subpath` (Docker
//!   26, API 1.45). dockerd resolves a subpath *inside* the volume and
//!   refuses one that leads out of it ("path concatenation escapes the base
//!   directory"); a link that stays inside works as a bind would. A daemon
//!   without subpaths cannot do this, so there the guard refuses such binds
//!   and says to bind the volume's root.
//!
//! The pod's docker socket is a file below its socket volume's root, so a
//! bind of it (Ryuk, docker-in-a-container tools) would be exposed the same
//! way; it becomes a bind of a second socket the guard serves in a volume
//! that only the guard mounts (`--bind-socket-volume`), a path the pod
//! cannot touch.
//!
//! Pure: the body in, the body rewritten (or a refusal) out.

use super::body::{self, Json};
use super::create::{bad, deny, Denied};
use super::owner::GUARD_OF_LABEL;

/// The API version whose `VolumeOptions.Subpath` dockerd accepts.
pub const SUBPATH_API: (u32, u32) = (1, 45);

/// What the guard knows when it rewrites a create's binds.
#[derive(Debug, Clone)]
pub struct Binding<'a> {
    pub uid: &'a str,
    /// `<kubelet-root>/pods/<uid>/volumes/kubernetes.io~empty-dir`.
    pub empty_dir_root: &'a str,
    /// The pod's docker socket as the node sees it, and the node's path of
    /// the socket a bind of it gets instead.
    pub socket: Option<(String, String)>,
    /// The API version the node's daemon speaks, when known.
    pub daemon_api: Option<(u32, u32)>,
}

/// What the rewrite did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Rewritten {
    /// A subpath mount was written: the request must be sent as API 1.45
    /// or later, or dockerd refuses it.
    pub subpath_mounts: bool,
    /// `-v` binds below a volume's root, as (volume, components): dockerd
    /// creates a missing `-v` source, and a subpath must exist, so the
    /// guard creates them first.
    pub directories: Vec<(String, Vec<String>)>,
}

/// The name of the local volume that binds the pod's emptyDir `volume`:
/// not a name the pod can make (its volumes are stored as `nd_<uid>_...`).
pub fn volume_name(uid: &str, volume: &str) -> String {
    format!("nestdock-emptydir-{uid}-{volume}")
}

/// Reads `1.45`.
pub fn parse_api(v: &str) -> Option<(u32, u32)> {
    let (major, minor) = v.split_once('.')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

/// Where a node path lies: the volume and the components below its root,
/// or `None` when it is not under `root` (create's rules decided already).
fn split<'p>(root: &str, path: &'p str) -> Option<(&'p str, Vec<&'p str>)> {
    let below = path.strip_prefix(root.trim_end_matches('/'))?;
    if !below.starts_with('/') {
        return None;
    }
    let mut parts = below.split('/').filter(|p| !p.is_empty() && *p != ".");
    let volume = parts.next()?;
    Some((volume, parts.collect()))
}

/// Rewrites the binds of a checked create body (sources already moved to
/// the node's paths and confined to the pod's emptyDirs).
pub fn rewrite(body: &mut Json, b: &Binding) -> Result<Rewritten, Denied> {
    let mut out = Rewritten::default();
    let Some(hc) = body.field_mut("HostConfig") else {
        return Ok(out);
    };
    let mut mounts: Vec<Json> = Vec::new();
    if let Some(Json::Array(binds)) = hc.field_mut("Binds") {
        let mut kept = Vec::with_capacity(binds.len());
        for entry in binds.drain(..) {
            let Json::String(text) = &entry else {
                kept.push(entry);
                continue;
            };
            let parts: Vec<&str> = text.splitn(3, ':').collect();
            let (source, target, opts) = (parts[0], parts.get(1), parts.get(2));
            match classify(b, source) {
                Place::Other | Place::Root => kept.push(entry),
                Place::Socket(to) => kept.push(Json::String(match opts {
                    Some(o) => format!("{to}:{}:{o}", target.unwrap_or(&"")),
                    None => format!("{to}:{}", target.unwrap_or(&"")),
                })),
                Place::Below(volume, rest) => {
                    let field = "HostConfig.Binds";
                    refuse_without_subpaths(b, field, &entry)?;
                    let read_only = bind_options(field, &entry, opts.copied().unwrap_or(""))?;
                    let target = target.copied().unwrap_or("");
                    mounts.push(subpath_mount(b, &volume, &rest, target, read_only));
                    out.directories.push((volume, rest));
                    out.subpath_mounts = true;
                }
            }
        }
        *binds = kept;
    }
    if let Some(Json::Array(list)) = hc.field_mut("Mounts") {
        for m in list.iter_mut() {
            if m.field("Type").and_then(Json::as_str) != Some("bind") {
                continue;
            }
            let source = m.field("Source").and_then(Json::as_str).unwrap_or("");
            match classify(b, source) {
                Place::Other | Place::Root => {}
                Place::Socket(to) => m.set_field("Source", Json::String(to)),
                Place::Below(volume, rest) => {
                    let field = "HostConfig.Mounts";
                    refuse_without_subpaths(b, field, m)?;
                    let (target, read_only) = bind_mount_fields(m)?;
                    *m = subpath_mount(b, &volume, &rest, &target, read_only);
                    out.subpath_mounts = true;
                }
            }
        }
    }
    if !mounts.is_empty() {
        match hc.field_mut("Mounts") {
            Some(Json::Array(list)) => list.extend(mounts),
            _ => hc.set_field("Mounts", Json::Array(mounts)),
        }
    }
    Ok(out)
}

enum Place {
    /// Not below the pod's emptyDirs (a named volume, or refused already).
    Other,
    /// A volume's root.
    Root,
    /// The pod's docker socket: becomes this path.
    Socket(String),
    /// Below a volume's root: the volume and the components under it
    /// (owned, so that the body they came from can be rewritten).
    Below(String, Vec<String>),
}

fn classify(b: &Binding, source: &str) -> Place {
    let Some((volume, rest)) = split(b.empty_dir_root, source) else {
        return Place::Other;
    };
    if let Some((socket, to)) = &b.socket {
        if split(b.empty_dir_root, socket) == Some((volume, rest.clone())) {
            return Place::Socket(to.clone());
        }
    }
    if rest.is_empty() {
        Place::Root
    } else {
        Place::Below(
            volume.to_string(),
            rest.into_iter().map(str::to_string).collect(),
        )
    }
}

fn refuse_without_subpaths(b: &Binding, field: &str, value: &Json) -> Result<(), Denied> {
    match b.daemon_api {
        Some(v) if v >= SUBPATH_API => Ok(()),
        known => Err(deny(
            field,
            value,
            &format!(
                "a path below an emptyDir volume's root is bound only as a volume subpath, which \
                 dockerd resolves inside the volume (a bind would follow a symbolic link the pod \
                 puts there onto the node); the node's daemon {} (Docker 26 has them): bind the \
                 volume's root instead (-v /builds:/builds -w \"$PWD\")",
                match known {
                    Some((major, minor)) => format!("speaks API {major}.{minor}, without subpaths"),
                    None => "did not say which API version it speaks".to_string(),
                }
            ),
        )),
    }
}

/// Reads a `-v` bind's options; returns whether it is read-only. SELinux
/// relabelling (`z`, `Z`), `nocopy` and the consistency hints mean nothing
/// for a subpath mount; propagation other than private cannot be had.
fn bind_options(field: &str, entry: &Json, opts: &str) -> Result<bool, Denied> {
    let mut read_only = false;
    for o in opts.split(',').filter(|o| !o.is_empty()) {
        match o {
            "ro" => read_only = true,
            "rw" | "z" | "Z" | "nocopy" | "consistent" | "cached" | "delegated" | "private"
            | "rprivate" => {}
            "shared" | "rshared" | "slave" | "rslave" => {
                return Err(deny(
                    field,
                    entry,
                    "mount propagation is not available below an emptyDir volume's root",
                ))
            }
            _ => {
                return Err(bad(
                    field,
                    entry,
                    "source:target[:options], options ro, rw, z, Z, nocopy, private, rprivate",
                ))
            }
        }
    }
    Ok(read_only)
}

/// Reads a bind mount's fields for its subpath replacement: its target and
/// whether it is read-only. Options a volume mount cannot have are refused
/// rather than dropped.
fn bind_mount_fields(m: &Json) -> Result<(String, bool), Denied> {
    let field = "HostConfig.Mounts";
    let Json::Object(entries) = m else {
        return Err(bad(field, m, "a mount object"));
    };
    for (key, value) in entries {
        match body::fold(key).as_str() {
            "type" | "source" | "target" | "readonly" | "consistency" => {}
            "bindoptions" => {
                let plain = match value {
                    Json::Null => true,
                    Json::Object(opts) => opts.iter().all(|(k, v)| {
                        let k = body::fold(k);
                        v.is_unset()
                            || (k == "propagation"
                                && matches!(v.as_str(), Some("private" | "rprivate")))
                    }),
                    _ => false,
                };
                if !plain {
                    return Err(deny(
                        &format!("{field}.BindOptions"),
                        value,
                        "bind options are not available below an emptyDir volume's root",
                    ));
                }
            }
            _ if value.is_unset() => {}
            _ => {
                return Err(deny(
                    &format!("{field}.{key}"),
                    value,
                    "not available on a bind below an emptyDir volume's root",
                ))
            }
        }
    }
    let target = match m.field("Target") {
        Some(Json::String(t)) => t.clone(),
        Some(v) => return Err(bad(&format!("{field}.Target"), v, "a path")),
        None => String::new(),
    };
    let read_only = match m.field("ReadOnly") {
        None | Some(Json::Null) => false,
        Some(Json::Bool(r)) => *r,
        Some(v) => return Err(bad(&format!("{field}.ReadOnly"), v, "true or false")),
    };
    Ok((target, read_only))
}

fn subpath_mount(b: &Binding, volume: &str, rest: &[String], target: &str, ro: bool) -> Json {
    let s = |v: &str| Json::String(v.to_string());
    let device = format!("{}/{volume}", b.empty_dir_root.trim_end_matches('/'));
    Json::Object(vec![
        ("Type".into(), s("volume")),
        ("Source".into(), s(&volume_name(b.uid, volume))),
        ("Target".into(), s(target)),
        ("ReadOnly".into(), Json::Bool(ro)),
        (
            "VolumeOptions".into(),
            Json::Object(vec![
                ("NoCopy".into(), Json::Bool(true)),
                ("Subpath".into(), s(&rest.join("/"))),
                (
                    "Labels".into(),
                    Json::Object(vec![(GUARD_OF_LABEL.into(), s(b.uid))]),
                ),
                (
                    "DriverConfig".into(),
                    Json::Object(vec![
                        ("Name".into(), s("local")),
                        (
                            "Options".into(),
                            Json::Object(vec![
                                ("type".into(), s("none")),
                                ("o".into(), s("bind")),
                                ("device".into(), s(&device)),
                            ]),
                        ),
                    ]),
                ),
            ]),
        ),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED: &str = "/var/lib/kubelet/pods/u1/volumes/kubernetes.io~empty-dir";

    fn binding(api: Option<(u32, u32)>) -> Binding<'static> {
        Binding {
            uid: "u1",
            empty_dir_root: ED,
            socket: Some((
                format!("{ED}/nestdock-docker-sock/docker.sock"),
                format!("{ED}/nestdock-guard-socket/docker.sock"),
            )),
            daemon_api: api,
        }
    }

    fn run(text: &str, api: Option<(u32, u32)>) -> Result<(Json, Rewritten), Denied> {
        let mut b = body::parse(text.as_bytes()).unwrap();
        let r = rewrite(&mut b, &binding(api))?;
        Ok((b, r))
    }

    #[test]
    fn a_path_below_a_volumes_root_becomes_a_subpath_mount() {
        let (out, r) = run(
            &format!(
                r#"{{"HostConfig":{{"Binds":["{ED}/work:/w","{ED}/work/src/./app:/src:ro,z","data:/d"],
                "Mounts":[{{"Type":"bind","Source":"{ED}/cache/m2","Target":"/m2","ReadOnly":true}}]}}}}"#
            ),
            Some((1, 45)),
        )
        .unwrap();
        assert!(r.subpath_mounts);
        assert_eq!(
            r.directories,
            vec![(
                "work".to_string(),
                vec!["src".to_string(), "app".to_string()]
            )]
        );
        let hc = out.field("HostConfig").unwrap();
        // The volume root and the named volume stay binds.
        assert_eq!(
            hc.field("Binds").unwrap(),
            &Json::Array(vec![
                Json::String(format!("{ED}/work:/w")),
                Json::String("data:/d".into())
            ])
        );
        let Some(Json::Array(mounts)) = hc.field("Mounts") else {
            panic!("{hc:?}")
        };
        let text = |m: &Json| String::from_utf8(m.to_bytes()).unwrap();
        assert_eq!(
            text(&mounts[0]),
            format!(
                r#"{{"Type":"volume","Source":"nestdock-emptydir-u1-cache","Target":"/m2","ReadOnly":true,"VolumeOptions":{{"NoCopy":true,"Subpath":"m2","Labels":{{"io.nestdock.guard-of":"u1"}},"DriverConfig":{{"Name":"local","Options":{{"type":"none","o":"bind","device":"{ED}/cache"}}}}}}}}"#
            )
        );
        let m = &mounts[1];
        assert_eq!(m.field("Target").and_then(Json::as_str), Some("/src"));
        assert_eq!(m.field("ReadOnly"), Some(&Json::Bool(true)));
        assert_eq!(
            m.field("VolumeOptions")
                .and_then(|v| v.field("Subpath"))
                .and_then(Json::as_str),
            Some("src/app")
        );
    }

    #[test]
    fn the_pods_socket_becomes_the_guards_own() {
        let (out, r) = run(
            &format!(
                r#"{{"HostConfig":{{"Binds":["{ED}/nestdock-docker-sock/docker.sock:/var/run/docker.sock:rw"],
                "Mounts":[{{"Type":"bind","Source":"{ED}/nestdock-docker-sock//docker.sock","Target":"/s"}}]}}}}"#
            ),
            // Whatever the daemon speaks.
            Some((1, 41)),
        )
        .unwrap();
        assert!(!r.subpath_mounts);
        let text = String::from_utf8(out.to_bytes()).unwrap();
        assert!(
            text.contains(&format!(
                r#""{ED}/nestdock-guard-socket/docker.sock:/var/run/docker.sock:rw""#
            )) && text.contains(&format!(
                r#""Source":"{ED}/nestdock-guard-socket/docker.sock""#
            )),
            "{text}"
        );
    }

    #[test]
    fn below_a_root_is_refused_where_the_daemon_has_no_subpaths() {
        for api in [Some((1, 41)), Some((1, 44)), None] {
            let e = run(
                &format!(r#"{{"HostConfig":{{"Binds":["{ED}/work/src:/src"]}}}}"#),
                api,
            )
            .unwrap_err();
            assert_eq!(e.status, 403);
            assert!(
                e.message.contains("HostConfig.Binds")
                    && e.message.contains("bind the volume's root"),
                "{}",
                e.message
            );
        }
        // The root itself is fine on any daemon.
        assert!(run(
            &format!(r#"{{"HostConfig":{{"Binds":["{ED}/work:/src"]}}}}"#),
            Some((1, 41))
        )
        .is_ok());
    }

    #[test]
    fn what_a_subpath_mount_cannot_carry_is_refused() {
        for (text, says) in [
            (
                format!(r#"{{"HostConfig":{{"Binds":["{ED}/work/a:/a:rshared"]}}}}"#),
                "propagation",
            ),
            (
                format!(r#"{{"HostConfig":{{"Binds":["{ED}/work/a:/a:bogus"]}}}}"#),
                "options ro, rw",
            ),
            (
                format!(
                    r#"{{"HostConfig":{{"Mounts":[{{"Type":"bind","Source":"{ED}/work/a","Target":"/a","BindOptions":{{"Propagation":"rslave"}}}}]}}}}"#
                ),
                "HostConfig.Mounts.BindOptions",
            ),
            (
                format!(
                    r#"{{"HostConfig":{{"Mounts":[{{"Type":"bind","Source":"{ED}/work/a","Target":"/a","TmpfsOptions":{{"SizeBytes":1}}}}]}}}}"#
                ),
                "HostConfig.Mounts.TmpfsOptions",
            ),
        ] {
            let e = run(&text, Some((1, 45))).unwrap_err();
            assert!(e.message.contains(says), "{text}: {}", e.message);
        }
        // Private propagation is what a subpath mount has anyway.
        assert!(run(
            &format!(
                r#"{{"HostConfig":{{"Mounts":[{{"Type":"bind","Source":"{ED}/work/a","Target":"/a","BindOptions":{{"Propagation":"rprivate"}}}}]}}}}"#
            ),
            Some((1, 45))
        )
        .is_ok());
    }

    #[test]
    fn api_versions_read() {
        assert_eq!(parse_api("1.45"), Some((1, 45)));
        assert_eq!(parse_api("1.41"), Some((1, 41)));
        assert_eq!(parse_api("1"), None);
        assert_eq!(parse_api("x.1"), None);
        assert!((1, 50) >= SUBPATH_API && (1, 44) < SUBPATH_API);
    }
}
