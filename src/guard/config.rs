//! How a guard runs: its socket, the node's socket, the pod it serves, and
//! what it may see of the pod's volumes.

use std::path::PathBuf;

/// How a guard runs.
#[derive(Debug, Clone)]
pub struct GuardConfig {
    /// The unix socket the pod's containers talk to.
    pub listen: PathBuf,
    /// The node's docker socket.
    pub upstream: PathBuf,
    /// The pod's uid (the Downward API's `metadata.uid`).
    pub pod_uid: String,
    /// The kubelet's root directory on the node; the pod's emptyDirs are
    /// under `<root>/pods/<uid>/volumes/kubernetes.io~empty-dir/`.
    pub kubelet_root: String,
    /// Where the guard sees the pod's emptyDir volumes (one directory per
    /// volume, by name). With it, paths below a volume's root may be bound
    /// after a check for symbolic links; without it only whole volumes.
    pub pod_volumes_dir: Option<PathBuf>,
    /// Permission bits of the listening socket.
    pub socket_mode: u32,
    /// Group of the listening socket (a non-root target joins it through
    /// `supplementalGroups`, as with dind's `--group`).
    pub socket_group: Option<u32>,
    /// On SIGTERM, remove everything the pod owns, for at most this long
    /// (keep it under the pod's termination grace period); `None`: leave
    /// it all.
    pub cleanup_timeout: Option<std::time::Duration>,
    /// Where the pod's containers mount its emptyDir volumes
    /// (`--mount`): bind sources below them are moved to the node's paths.
    pub mounts: Vec<super::binds::PodMount>,
    /// The cgroup parent every container the pod creates is placed under
    /// (the pod's own cgroup), or `None`: dockerd's default.
    pub cgroup_parent: Option<String>,
    /// Where fixed host ports may be published (none: random ports only).
    pub host_ports: super::ports::HostPorts,
    /// An emptyDir volume the guard alone mounts (below `pod_volumes_dir`):
    /// it serves a second socket there, and a bind of the pod's socket
    /// becomes a bind of that one, which the pod cannot swap.
    pub bind_socket_volume: Option<String>,
}
