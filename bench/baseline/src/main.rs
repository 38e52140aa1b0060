//! The baseline of nestdock's benchmark: the same dind injection, written the
//! way the kube-rs examples show and most teams would write it today:
//!
//! - axum's `Json` extractor reads a typed `AdmissionReview<DynamicObject>`;
//! - the object is parsed into a typed `k8s_openapi` `Pod`, cloned, the clone
//!   mutated field by field;
//! - the patch is `json_patch::diff` of the two pods serialized back to JSON;
//! - the answer is kube's `AdmissionResponse::with_patch(..).into_review()`,
//!   serialized by axum's `Json`. Note: that type writes the patch as an
//!   array of numbers, not the base64 string the API server reads (kube-rs
//!   issue 1781); it is what users of the type get, so it is measured as is.
//!
//! For the benchmark's pods the result is the pod nestdock produces
//! (`bench/run.sh` checks it): the daemon `nestdock-dind` as the first init
//! container with `restartPolicy: Always`, `DOCKER_HOST` and the socket mount
//! in every init and app container, the targets' mounts mirrored into the
//! daemon, the two emptyDir volumes, group 2375, the `injected` annotation.
//! Policy, annotations other than `mode`, TLS, rootless and dood are left out:
//! none of them is on the benchmark's path.
//!
//! The transport is nestdock's, setting for setting
//! (`nestdock_bench::transport`).

use std::collections::BTreeMap;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::{Json, Router};
use k8s_openapi::api::core::v1::{
    Container, EmptyDirVolumeSource, EnvVar, ExecAction, Pod, PodSecurityContext, Probe,
    ResourceRequirements, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use kube::core::DynamicObject;
use nestdock_bench::transport::{self, Args, MAX_BODY_BYTES};

const MODE: &str = "nestdock.io/mode";
const INJECTED: &str = "nestdock.io/injected";
const DAEMON: &str = "nestdock-dind";
const VOL_SOCKET: &str = "nestdock-docker-sock";
const VOL_STORAGE: &str = "nestdock-docker-storage";
const SOCKET_DIR: &str = "/var/run";
const DOCKER_HOST: &str = "unix:///var/run/docker.sock";
const STORAGE_DIR: &str = "/var/lib/docker";
const GROUP: i64 = 2375;
const SA_TOKEN_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// The daemon's start script (nestdock's, for the default configuration).
const SCRIPT: &str = r#"mtu="${NESTDOCK_MTU:-auto}"
if [ "$mtu" = auto ]; then mtu="$(cat /sys/class/net/eth0/mtu 2>/dev/null || echo 1500)"; fi
export DOCKERD_ROOTLESS_ROOTLESSKIT_MTU="$mtu"
exec dockerd-entrypoint.sh dockerd --mtu="$mtu" --default-network-opt="bridge=com.docker.network.driver.mtu=$mtu" "$@"
"#;

fn main() -> std::process::ExitCode {
    let args = Args::from_env("nestdock-baseline");
    let router = Router::new()
        .route("/mutate", post(mutate))
        .route("/healthz", get(|| async { "ok\n" }))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES));
    match transport::run(args, router) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn mutate(
    Json(review): Json<AdmissionReview<DynamicObject>>,
) -> Json<AdmissionReview<DynamicObject>> {
    let req: AdmissionRequest<DynamicObject> = match review.try_into() {
        Ok(req) => req,
        Err(e) => return Json(AdmissionResponse::invalid(e.to_string()).into_review()),
    };
    let res = AdmissionResponse::from(&req);
    let is_pod_create =
        req.operation == Operation::Create && req.kind.group.is_empty() && req.kind.kind == "Pod";
    let res = match req.object {
        Some(obj) if is_pod_create => match patch_for(obj) {
            Ok(Some(patch)) => match res.clone().with_patch(patch) {
                Ok(res) => res,
                Err(e) => res.deny(e.to_string()),
            },
            Ok(None) => res,
            Err(e) => res.deny(e),
        },
        _ => res,
    };
    Json(res.into_review())
}

/// The patch for one pod: mutate a typed clone, diff the two.
fn patch_for(obj: DynamicObject) -> Result<Option<json_patch::Patch>, String> {
    let pod: Pod = obj.try_parse().map_err(|e| e.to_string())?;
    let mut mutated = pod.clone();
    if !inject(&mut mutated) {
        return Ok(None);
    }
    let before = serde_json::to_value(&pod).map_err(|e| e.to_string())?;
    let after = serde_json::to_value(&mutated).map_err(|e| e.to_string())?;
    Ok(Some(json_patch::diff(&before, &after)))
}

/// Injects dind into `pod`; false when the pod does not ask for it.
fn inject(pod: &mut Pod) -> bool {
    let annotations = pod.metadata.annotations.get_or_insert_with(BTreeMap::new);
    if annotations.get(MODE).map(String::as_str) != Some("dind")
        || annotations.contains_key(INJECTED)
    {
        return false;
    }
    annotations.insert(INJECTED.into(), "dind".into());
    let Some(spec) = pod.spec.as_mut() else {
        return false;
    };

    // Every init and app container gets DOCKER_HOST and the socket; their
    // mounts are mirrored into the daemon at the same paths.
    let volumes = spec.volumes.clone().unwrap_or_default();
    let mut mirrored: Vec<VolumeMount> = Vec::new();
    let targets = spec
        .init_containers
        .iter_mut()
        .flatten()
        .chain(spec.containers.iter_mut());
    for c in targets {
        for m in c.volume_mounts.iter().flatten() {
            if mirrorable(m, &volumes) && !mirrored.iter().any(|x| x.mount_path == m.mount_path) {
                mirrored.push(VolumeMount {
                    name: m.name.clone(),
                    mount_path: m.mount_path.clone(),
                    sub_path: m.sub_path.clone().filter(|s| !s.is_empty()),
                    read_only: m.read_only.filter(|r| *r),
                    ..Default::default()
                });
            }
        }
        let env = c.env.get_or_insert_with(Vec::new);
        if !env.iter().any(|e| e.name == "DOCKER_HOST") {
            env.push(EnvVar {
                name: "DOCKER_HOST".into(),
                value: Some(DOCKER_HOST.into()),
                ..Default::default()
            });
        }
        c.volume_mounts
            .get_or_insert_with(Vec::new)
            .push(VolumeMount {
                name: VOL_SOCKET.into(),
                mount_path: SOCKET_DIR.into(),
                ..Default::default()
            });
    }

    let mut mounts = vec![
        VolumeMount {
            name: VOL_SOCKET.into(),
            mount_path: SOCKET_DIR.into(),
            ..Default::default()
        },
        VolumeMount {
            name: VOL_STORAGE.into(),
            mount_path: STORAGE_DIR.into(),
            ..Default::default()
        },
    ];
    mounts.extend(mirrored);

    let vols = spec.volumes.get_or_insert_with(Vec::new);
    for name in [VOL_SOCKET, VOL_STORAGE] {
        vols.push(Volume {
            name: name.into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Default::default()
        });
    }
    let groups = spec
        .security_context
        .get_or_insert_with(PodSecurityContext::default)
        .supplemental_groups
        .get_or_insert_with(Vec::new);
    if !groups.contains(&GROUP) {
        groups.push(GROUP);
    }
    spec.init_containers
        .get_or_insert_with(Vec::new)
        .insert(0, daemon(mounts));
    true
}

/// Whether a target's mount is mirrored into the daemon: not the
/// service-account token, not where the daemon keeps its own files.
fn mirrorable(m: &VolumeMount, volumes: &[Volume]) -> bool {
    let path = m.mount_path.trim_end_matches('/');
    let under = |p: &str, base: &str| p == base || p.starts_with(&format!("{base}/"));
    let token = m.name.starts_with("kube-api-access-")
        || under(path, SA_TOKEN_PATH)
        || volumes.iter().any(|v| {
            v.name == m.name
                && v.projected.as_ref().is_some_and(|p| {
                    p.sources
                        .iter()
                        .flatten()
                        .any(|s| s.service_account_token.is_some())
                })
        });
    let own = ["/var/run", "/run", STORAGE_DIR]
        .iter()
        .any(|o| under(path, o) || under(o, path));
    // The daemon image's system paths, at, below or above.
    let system = path == "/"
        || path.trim_start_matches('/').starts_with("lib")
        || [
            "/bin",
            "/sbin",
            "/usr",
            "/etc",
            "/root",
            "/proc",
            "/sys",
            "/dev",
            "/home/rootless",
        ]
        .iter()
        .any(|s| under(path, s) || under(s, path));
    !m.name.starts_with("nestdock-") && !token && !own && !system && m.sub_path_expr.is_none()
}

fn daemon(mounts: Vec<VolumeMount>) -> Container {
    let host = format!("--host={DOCKER_HOST}");
    Container {
        name: DAEMON.into(),
        image: Some("docker:28-dind".into()),
        command: Some(vec![
            "/bin/sh".into(),
            "-c".into(),
            SCRIPT.into(),
            DAEMON.into(),
        ]),
        args: Some(vec![host.clone(), format!("--group={GROUP}")]),
        env: Some(vec![
            EnvVar {
                name: "DOCKER_TLS_CERTDIR".into(),
                value: Some(String::new()),
                ..Default::default()
            },
            EnvVar {
                name: "NESTDOCK_MTU".into(),
                value: Some("auto".into()),
                ..Default::default()
            },
        ]),
        security_context: Some(SecurityContext {
            privileged: Some(true),
            run_as_user: Some(0),
            run_as_group: Some(0),
            run_as_non_root: Some(false),
            ..Default::default()
        }),
        startup_probe: Some(Probe {
            exec: Some(ExecAction {
                command: Some(vec!["docker".into(), host, "version".into()]),
            }),
            period_seconds: Some(1),
            timeout_seconds: Some(5),
            failure_threshold: Some(300),
            ..Default::default()
        }),
        resources: Some(ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".into(), Quantity("250m".into())),
                ("memory".into(), Quantity("256Mi".into())),
            ])),
            ..Default::default()
        }),
        restart_policy: Some("Always".into()),
        volume_mounts: Some(mounts),
        ..Default::default()
    }
}
