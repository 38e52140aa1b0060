//! The pod's own cgroup as a parent for the containers it creates
//! (`dood.guard.cgroupParent: pod`): the kubelet names a pod's cgroup by its
//! QoS class and uid, under its `--cgroup-root`, and spells it by its cgroup
//! driver. The node's dockerd must use the same driver (dockerd's
//! `--exec-opt native.cgroupdriver`) and see the node's cgroup hierarchy (a
//! dockerd in a pod of its own, as manifests/node-docker runs it, sees its
//! own cgroup namespace: this does not apply there).

use super::body::Json;

/// The pod's QoS class, as the kubelet derives it from its containers'
/// requests and limits; `auto`: the guard reads its own cgroup (what the
/// webhook writes, see [`from_own`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Qos {
    Auto,
    Guaranteed,
    Burstable,
    Besteffort,
}

/// The kubelet's cgroup driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Driver {
    Cgroupfs,
    Systemd,
}

/// The pod's cgroup as dockerd's `CgroupParent` names it: with cgroupfs a
/// path (`/kubepods/burstable/pod<uid>`; a guaranteed pod sits right under
/// `kubepods`), with systemd a slice (`kubepods-burstable-pod<uid with _>.slice`,
/// which systemd nests by its dashes).
pub fn pod_parent(uid: &str, qos: Qos, driver: Driver, root: &str) -> Result<String, String> {
    // `nestdock guard` checked the uid in full (`check_pod_uid`); here
    // only that it cannot reach out of the path or the slice name.
    if uid.is_empty() || !uid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return Err(format!("pod uid {uid:?} cannot name a cgroup"));
    }
    let class = match qos {
        Qos::Auto => {
            let own = std::fs::read_to_string("/proc/self/cgroup")
                .map_err(|e| format!("cannot read /proc/self/cgroup: {e}"))?;
            return from_own(uid, &own).ok_or_else(|| {
                format!(
                    "--pod-cgroup auto: no cgroup of pod {uid} in /proc/self/cgroup (the guard \
                     runs in a cgroup namespace of its own, as with cgroup v2; give the QoS \
                     class instead)"
                )
            });
        }
        Qos::Guaranteed => None,
        Qos::Burstable => Some("burstable"),
        Qos::Besteffort => Some("besteffort"),
    };
    match driver {
        Driver::Cgroupfs => {
            let mut path = root.trim_end_matches('/').to_string();
            path.push_str("/kubepods");
            if let Some(class) = class {
                path.push('/');
                path.push_str(class);
            }
            Ok(format!("{path}/pod{uid}"))
        }
        Driver::Systemd => {
            if root != "/" {
                return Err(format!(
                    "--cgroup-root {root}: with the systemd driver the guard knows the kubelet's \
                     default root (/) only"
                ));
            }
            let class = class.map(|c| format!("-{c}")).unwrap_or_default();
            Ok(format!(
                "kubepods{class}-pod{}.slice",
                uid.replace('-', "_")
            ))
        }
    }
}

/// The pod's cgroup found in the guard's own `/proc/self/cgroup` (a
/// container's cgroup is its pod's plus one level): with cgroupfs the path
/// up to `pod<uid>`, with systemd the `…-pod<uid with _>.slice` itself.
/// `None` when no line names the pod: the guard sees a cgroup namespace of
/// its own (cgroup v2's default), where the node's paths are hidden.
pub fn from_own(uid: &str, proc_self_cgroup: &str) -> Option<String> {
    let cgroupfs = format!("pod{uid}");
    let slice = format!("-pod{}.slice", uid.replace('-', "_"));
    for line in proc_self_cgroup.lines() {
        let path = line.splitn(3, ':').nth(2)?;
        let mut up_to = String::new();
        for part in path.split('/').filter(|p| !p.is_empty()) {
            up_to.push('/');
            up_to.push_str(part);
            if part == cgroupfs {
                return Some(up_to);
            }
            if part.starts_with("kubepods") && part.ends_with(&slice) {
                return Some(part.to_string());
            }
        }
    }
    None
}

/// Sets a checked create body's `HostConfig.CgroupParent` (the pod's own
/// value, if any, was refused before).
pub fn place(body: &mut Json, parent: &str) {
    if !matches!(body, Json::Object(_)) {
        return;
    }
    if body
        .field("HostConfig")
        .is_none_or(|h| !matches!(h, Json::Object(_)))
    {
        body.set_field("HostConfig", Json::Object(Vec::new()));
    }
    if let Some(hc) = body.field_mut("HostConfig") {
        hc.set_field("CgroupParent", Json::String(parent.to_string()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pods_cgroup_is_named_as_the_kubelet_names_it() {
        let uid = "0b5f0a0e-5c1e-4f8e-9a43-0c6f3b2f1d11";
        for (qos, driver, root, parent) in [
            (
                Qos::Burstable,
                Driver::Cgroupfs,
                "/",
                format!("/kubepods/burstable/pod{uid}"),
            ),
            (
                Qos::Besteffort,
                Driver::Cgroupfs,
                "/",
                format!("/kubepods/besteffort/pod{uid}"),
            ),
            (
                Qos::Guaranteed,
                Driver::Cgroupfs,
                "/",
                format!("/kubepods/pod{uid}"),
            ),
            (
                Qos::Burstable,
                Driver::Cgroupfs,
                "/k8s/",
                format!("/k8s/kubepods/burstable/pod{uid}"),
            ),
            (
                Qos::Burstable,
                Driver::Systemd,
                "/",
                "kubepods-burstable-pod0b5f0a0e_5c1e_4f8e_9a43_0c6f3b2f1d11.slice".to_string(),
            ),
            (
                Qos::Guaranteed,
                Driver::Systemd,
                "/",
                "kubepods-pod0b5f0a0e_5c1e_4f8e_9a43_0c6f3b2f1d11.slice".to_string(),
            ),
        ] {
            assert_eq!(pod_parent(uid, qos, driver, root).unwrap(), parent);
        }
        assert!(pod_parent(uid, Qos::Burstable, Driver::Systemd, "/k8s")
            .unwrap_err()
            .contains("systemd"));
        assert!(pod_parent("a/b", Qos::Burstable, Driver::Cgroupfs, "/").is_err());
    }

    #[test]
    fn the_pods_cgroup_is_found_from_the_guards_own() {
        let uid = "0b5f0a0e-5c1e-4f8e-9a43-0c6f3b2f1d11";
        let v1 = format!(
            "12:memory:/kubepods/burstable/pod{uid}/3f4e\n1:name=systemd:/kubepods/burstable/pod{uid}/3f4e\n"
        );
        assert_eq!(
            from_own(uid, &v1).as_deref(),
            Some(format!("/kubepods/burstable/pod{uid}").as_str())
        );
        let systemd = "0::/kubepods.slice/kubepods-burstable.slice/\
            kubepods-burstable-pod0b5f0a0e_5c1e_4f8e_9a43_0c6f3b2f1d11.slice/cri-containerd-3f4e.scope\n";
        assert_eq!(
            from_own(uid, systemd).as_deref(),
            Some("kubepods-burstable-pod0b5f0a0e_5c1e_4f8e_9a43_0c6f3b2f1d11.slice")
        );
        // Another pod's, or a namespaced view: nothing.
        assert_eq!(from_own(uid, "0::/\n"), None);
        assert_eq!(from_own(uid, "4:memory:/kubepods/podother/1\n"), None);
    }

    #[test]
    fn a_create_body_gets_the_parent_whatever_its_spelling() {
        for text in [
            r#"{}"#,
            r#"{"HostConfig":null}"#,
            r#"{"hostconfig":{"cgroupparent":""}}"#,
        ] {
            let mut body = serde_json::from_str::<Json>(text).unwrap();
            place(&mut body, "/kubepods/pod1");
            let hc = body.field("HostConfig").unwrap();
            assert_eq!(
                hc.field("CgroupParent").and_then(Json::as_str),
                Some("/kubepods/pod1"),
                "{text}"
            );
        }
    }
}
