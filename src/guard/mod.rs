//! `nestdock guard`: a Docker API proxy that makes the node's daemon safe to
//! share between pods (guarded DooD). It serves the pod's socket and forwards
//! to the node's, and on the way: refuses endpoints that act on the whole
//! node, refuses creates that would reach the node (privileges, host
//! namespaces, host paths, devices, fixed host ports), labels what the pod
//! creates with its uid, narrows lists, prunes and events to the pod's own
//! objects, and answers "no such object" for another pod's.
//!
//! Layout, one concern per file: [`path`] (normalised paths and the endpoint
//! allow list), [`query`] (query strings as Go reads them), [`body`] (JSON
//! bodies as Go's `encoding/json` reads them), [`create`] (the create rules,
//! pure), [`owner`] (labels, filters, names, not-found answers),
//! [`subpath`] (binds below an emptyDir's root, safe against swapped
//! links), [`ports`] (the publish policy), [`grpc`] (BuildKit's Solve
//! requests), [`image`] (tag ownership), [`cgroup`] (the pod's cgroup),
//! `config` ([`GuardConfig`]), `drain` (request bodies answered before their
//! end) and `proxy` (the I/O: the server, the upstream client, hijacked
//! streams, cleanup and reap).

pub mod binds;
pub mod body;
pub mod cgroup;
mod config;
pub mod create;
mod drain;
pub mod grpc;
pub mod image;
pub mod owner;
pub mod path;
pub mod ports;
mod proxy;
pub mod query;
pub mod subpath;

pub use config::GuardConfig;

/// Checks a pod uid: what Kubernetes writes (a UUID): letters, digits and
/// `-`. It becomes a label value and part of container names, where `_`
/// separates it from the pod's own name, so nothing else is accepted.
pub fn check_pod_uid(uid: &str) -> Result<(), String> {
    let ok = !uid.is_empty()
        && uid.len() <= 63
        && uid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && uid
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && uid
            .bytes()
            .last()
            .is_some_and(|b| b.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "pod uid {} is not a pod's uid (expected the Downward API's metadata.uid, a UUID: \
             letters, digits and '-', at most 63 characters)",
            crate::validate::shown(uid)
        ))
    }
}

/// Serves until SIGTERM or SIGINT, then removes the socket and (unless
/// turned off) everything the pod owns.
pub async fn run(config: GuardConfig) -> anyhow::Result<()> {
    check_pod_uid(&config.pod_uid).map_err(anyhow::Error::msg)?;
    let shutdown = async {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async {
                match term.as_mut() {
                    Some(t) => { t.recv().await; }
                    None => std::future::pending::<()>().await,
                }
            } => {}
        }
    };
    proxy::serve(config, shutdown).await
}

/// `nestdock guard reap`: removes the containers, networks and volumes
/// labelled with a pod uid whose directory under `<kubelet_root>/pods/` is
/// gone (the kubelet removes it once the pod is deleted). Returns what was
/// removed (or, with `dry_run`, would be). Refuses to run when
/// `<kubelet_root>/pods` does not exist: a wrong root would make every pod
/// look gone.
pub async fn reap(
    upstream: &std::path::Path,
    kubelet_root: &std::path::Path,
    dry_run: bool,
) -> anyhow::Result<Vec<String>> {
    let pods = kubelet_root.join("pods");
    if !pods.is_dir() {
        anyhow::bail!(
            "{} is not a directory: is --kubelet-root the kubelet's root on this node? \
             (nothing removed)",
            pods.display()
        );
    }
    // A pods directory the reaper cannot read would make every pod look
    // gone: refuse, as for a missing one.
    if let Err(e) = std::fs::read_dir(&pods) {
        anyhow::bail!(
            "cannot read {}: {e} (reap runs as root on the node; nothing removed)",
            pods.display()
        );
    }
    // A pod whose directory cannot be looked at is taken as alive.
    let alive =
        |uid: &str| check_pod_uid(uid).is_err() || pods.join(uid).try_exists().unwrap_or(true);
    proxy::reap(upstream, &alive, dry_run).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_uids() {
        for ok in ["0b5f0a0e-5c1e-4f8e-9a43-0c6f3b2f1d11", "u1", "a-b"] {
            check_pod_uid(ok).unwrap();
        }
        for bad in [
            "",
            "-a",
            "a b",
            "a=b",
            "a/b",
            "a_b",
            "a.b",
            &"a".repeat(64),
            "é",
        ] {
            assert!(
                check_pod_uid(bad).unwrap_err().contains("Downward API"),
                "{bad}"
            );
        }
    }
}
