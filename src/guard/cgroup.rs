//! The pod's own cgroup as a parent for the containers it creates
//! (`dood.guard.cgroupParent: pod`): the kubelet names a pod's cgroup by its
//! QoS class and uid, under its `--cgroup-root`, and spells it by its cgroup
//! driver. The node's dockerd must use the same driver (dockerd's
//! `--exec-opt native.cgroupdriver`) and see the node's cgroup hierarchy (a
//! dockerd in a pod of its own, as manifests/node-docker runs it, sees its
//! own cgroup namespace: this does not apply there).

use super::body::Json;

/// The pod's QoS class, as the kubelet derives it from its containers'
/// requests and limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Qos {
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
    super::check_pod_uid(uid)?;
    let class = match qos {
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
    fn a_create_body_gets_the_parent_whatever_its_spelling() {
        for text in [
            r#"{}"#,
            r#"{"HostConfig":null}"#,
            r#"{"hostconfig":{"cgroupparent":""}}"#,
        ] {
            let mut body = super::super::body::parse(text.as_bytes()).unwrap();
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
