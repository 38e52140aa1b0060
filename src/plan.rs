//! Deciding, as data: what nestdock will do to a pod and why.
//!
//! [`decide`] reads the pod, its annotations, the namespace's policy and the
//! config, applies every rule, and returns a [`Plan`]: the mode and where it
//! came from, and either nothing to do, every reason the pod is denied, or an
//! [`Injection`] (targets, the daemon container, volumes, group, node
//! selector, mirrored and skipped mounts, warnings). It writes no patch:
//! [`crate::render`] alone turns an injection into JSON Patch operations, so
//! operation order and index arithmetic live in one place, and `explain`,
//! the audit annotation, the log line and the metrics all read the same plan.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::LazyLock;

use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};

use crate::config::{Config, Mtu, Sidecar, SidecarConfig, Storage, TestcontainersHost};
use crate::denial::Denial;
use crate::mode::Mode;
use crate::pod::{Container, Items, Metadata, Pairs, Spec, Volume};
use crate::policy::{NamespacePolicy, Source};
use crate::quantity::Quantity;

/// Everything besides the pod that a decision depends on.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    pub config: &'a Config,
    pub namespace: NamespacePolicy<'a>,
    /// Whether the API server runs native sidecars (1.29+); resolves `sidecar: auto`.
    pub native_sidecars: bool,
}

/// Where a plan's mode came from: what `explain` tells a user to change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModeFrom {
    /// Chosen by the rules (annotation, namespace label, inject flag, default).
    Chosen(Source),
    /// The pod already carries nestdock's injection of this mode, so it is
    /// left as it is (a second pass).
    AlreadyInjected,
    /// The pod could not be read; the mode is the config default.
    Unreadable,
}

/// How many warnings a plan carries; the API server shows each to the user.
pub const MAX_WARNINGS: usize = 16;

/// What nestdock will do to one pod, and why.
#[derive(Debug)]
pub struct Plan<'a> {
    /// The mode that applies (for audit annotations, logs and metrics).
    pub mode: Mode,
    pub from: ModeFrom,
    pub action: Action<'a>,
    /// Each under 120 characters, as the API server requires; at most
    /// [`MAX_WARNINGS`] (+1 saying how many more there were).
    pub warnings: Vec<String>,
}

/// What happens to the pod.
#[derive(Debug)]
pub enum Action<'a> {
    /// Nothing to add: mode `none`, or the pod already carries the injection.
    Nothing,
    /// Refused, for every reason that applies.
    Deny(Denial),
    /// The pod gets nestdock's wiring.
    Inject(Box<Injection<'a>>),
}

/// Everything an injection adds to the pod, with what [`crate::render`]
/// needs to know of the pod as sent (which lists and maps exist).
#[derive(Debug)]
pub struct Injection<'a> {
    /// Where the `nestdock.io/injected` marker goes.
    pub(crate) marker_at: MarkerAt,
    /// The containers that get the daemon, in pod order.
    pub targets: Vec<Target<'a>>,
    /// The environment every target gets (unless it set the name itself).
    pub env: Vec<EnvOut<'a>>,
    /// The mount every target gets.
    pub target_mount: MountOut<'a>,
    /// Volumes added to the pod.
    pub volumes: Vec<Value>,
    pub(crate) volumes_exist: bool,
    /// The group added to `supplementalGroups`, and where it goes; `None`
    /// when the pod needs none or already has it.
    pub group: Option<(i64, GroupAt)>,
    /// `nodeSelector` entries added (dood), and whether the pod had a map.
    pub node_selector: Vec<(&'a str, &'a str)>,
    pub(crate) node_selector_exists: bool,
    /// The daemon container (dind modes), and where it goes.
    pub daemon: Option<Daemon<'a>>,
    /// Target mounts not mirrored into the daemon, and why.
    pub skipped_mounts: Vec<SkippedMount<'a>>,
}

/// One container that gets the daemon.
#[derive(Debug)]
pub struct Target<'a> {
    /// `initContainers` or `containers`.
    pub list: &'static str,
    pub index: usize,
    pub name: &'a str,
    /// Names of [`Injection::env`] the container sets itself (it keeps them).
    pub kept_env: Vec<&'static str>,
    pub(crate) env_exists: bool,
    pub(crate) mounts_exist: bool,
}

/// The daemon container and its place in the pod.
#[derive(Debug)]
pub struct Daemon<'a> {
    pub container: DaemonOut<'a>,
    /// `Native`: the first init container; `Container`: the last app container.
    pub placement: Sidecar,
    /// Whether the list it goes into exists in the pod as sent.
    pub(crate) list_exists: bool,
}

/// A target mount the daemon does not get, and why.
#[derive(Debug)]
pub struct SkippedMount<'a> {
    pub container: &'a str,
    pub volume: &'a str,
    pub path: Cow<'a, str>,
    pub reason: SkipReason<'a>,
}

/// Where the marker annotation goes, given what the pod's metadata has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MarkerAt {
    /// `metadata.annotations` exists: add one key.
    Annotations,
    /// `metadata` exists without annotations: add the map.
    Metadata,
    /// No `metadata`: add it.
    Nothing,
}

/// How the group reaches `spec.securityContext.supplementalGroups`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupAt {
    /// Appended to the existing list.
    Append,
    /// The list is added to an existing `securityContext`.
    NewList,
    /// A `securityContext` is added with the list.
    NewContext,
}

/// Decides what happens to `pod` (exactly as the API server sent it).
///
/// Order: every annotation is read and every policy rule applied first, so
/// that a denial names all of them; then the idempotency marker is honoured
/// only when the pod really carries that injection; then the injection.
pub fn decide<'a>(pod: &'a crate::pod::Pod<'a>, ctx: &Context<'a>) -> Plan<'a> {
    let annotations = pod.metadata.as_ref().and_then(|m| m.annotations.as_ref());
    let (ann, mut reasons) =
        crate::annotations::read(annotations.into_iter().flat_map(Pairs::iter));
    let choice = crate::policy::choose(ann.mode, ctx.namespace, ctx.config);
    let mut code = if reasons.is_empty() { 403 } else { 400 };
    if let Err(d) = crate::policy::resolve(ann.mode, ctx.namespace, ctx.config) {
        code = code.min(d.code);
        reasons.extend(d.reasons);
    }
    let mode = choice.mode;
    let plan = |action, warnings| Plan {
        mode,
        from: ModeFrom::Chosen(choice.source),
        action,
        warnings,
    };
    if !reasons.is_empty() {
        return plan(Action::Deny(Denial::new(code, reasons)), Vec::new());
    }
    let view = match PodView::new(pod) {
        Ok(v) => v,
        Err(d) => return plan(Action::Deny(d), Vec::new()),
    };
    let mut warnings = Warnings::default();
    // Idempotency: the API server may call again (reinvocationPolicy:
    // IfNeeded) and `inject` may run twice. The marker is whatever the pod's
    // author wrote, so it counts only when the pod carries that injection.
    if let Some(marker) = ann.injected.as_deref() {
        if marker == mode.as_str() && view.carries_injection(mode, ctx.config.dood.guard.enabled) {
            return Plan {
                mode,
                from: ModeFrom::AlreadyInjected,
                action: Action::Nothing,
                warnings: Vec::new(),
            };
        }
        warnings.push(format!(
            "{}={} ignored: the pod does not carry nestdock's {mode} injection",
            crate::annotations::INJECTED,
            crate::validate::shown(marker)
        ));
    }
    let mut planner = Planner {
        view: &view,
        ann: &ann,
        mode,
        ctx,
        warnings,
    };
    match planner.plan() {
        Ok(Some(injection)) => plan(
            Action::Inject(Box::new(injection)),
            planner.warnings.finish(),
        ),
        Ok(None) => plan(Action::Nothing, planner.warnings.finish()),
        Err(d) => plan(Action::Deny(d), Vec::new()),
    }
}

/// The plan for a pod that cannot be read.
pub fn unreadable<'a>(ctx: &Context<'_>, message: String) -> Plan<'a> {
    Plan {
        mode: ctx.config.default_mode,
        from: ModeFrom::Unreadable,
        action: Action::Deny(Denial::bad(message)),
        warnings: Vec::new(),
    }
}

/// Name of the daemon container nestdock adds.
pub const DAEMON_CONTAINER: &str = "nestdock-dind";
/// emptyDir shared by the daemon and the targets; holds `docker.sock`.
pub const VOL_SOCKET: &str = "nestdock-docker-sock";
/// The daemon's `/var/lib/docker`.
pub const VOL_STORAGE: &str = "nestdock-docker-storage";
/// TLS certificates the dind entrypoint generates (`tls: "true"`).
pub const VOL_CERTS: &str = "nestdock-docker-certs";
/// dood: the node's docker socket.
pub const VOL_HOST_SOCKET: &str = "nestdock-host-docker";
/// Name of the guard container (dood with `dood.guard` on).
pub const GUARD_CONTAINER: &str = "nestdock-guard";
/// Guarded dood: an emptyDir only the guard mounts, where it serves the
/// socket that binds of the pod's socket get (a path the pod cannot swap).
pub const VOL_GUARD_SOCKET: &str = "nestdock-guard-socket";
/// Where the guard mounts the pod's socket volume and listens: among the
/// pod's volumes, so that a bind of the targets' socket, moved to the
/// volume's directory on the node, passes the guard's check like any other.
const GUARD_SOCKET_DIR: &str = "/run/nestdock/volumes/nestdock-docker-sock";
const GUARD_SOCKET: &str = "/run/nestdock/volumes/nestdock-docker-sock/docker.sock";
/// Where the guard mounts the node's docker socket (and nothing else does).
const GUARD_NODE_SOCKET: &str = "/run/nestdock/node/docker.sock";
/// Where the guard sees the targets' emptyDir volumes, one directory each.
const GUARD_VOLUMES_DIR: &str = "/run/nestdock/volumes";

const SA_TOKEN_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
const DIND_STORAGE: &str = "/var/lib/docker";
/// The rootless image runs dockerd as this uid and gid; outside the user
/// namespace the socket belongs to it, so it is the socket's group too.
const ROOTLESS_ID: i64 = 1000;
/// The rootless daemon's `XDG_RUNTIME_DIR`. rootlesskit copies up `/run`, so a
/// socket created directly in `/run` would stay inside its namespace; a
/// subdirectory that is a mount point is shared (the layout ARC uses).
const ROOTLESS_RUNTIME_DIR: &str = "/run/user/1000";
const ROOTLESS_STORAGE: &str = "/home/rootless/.local/share/docker";
/// The rootless daemon's `--data-root`: below the storage volume's mount point.
const ROOTLESS_DATA_ROOT: &str = "/home/rootless/.local/share/docker/data";
const CERTS_DIR: &str = "/certs";
const CERTS_CLIENT_DIR: &str = "/certs/client";
const TLS_HOST: &str = "tcp://localhost:2376";
/// Testcontainers reads the socket path *as the daemon sees it* from here
/// when it bind-mounts the socket into Ryuk.
const TC_SOCKET_OVERRIDE: &str = "TESTCONTAINERS_DOCKER_SOCKET_OVERRIDE";
/// Where Testcontainers connects to the ports its containers publish.
const TC_HOST_OVERRIDE: &str = "TESTCONTAINERS_HOST_OVERRIDE";

/// Starts dockerd listening on the shared socket. It reads the pod
/// interface's MTU when the daemon starts (or takes the fixed value) and
/// applies it to the default bridge and to user-defined networks, and (for
/// rootless, where rootlesskit's own network sits between the pod and
/// dockerd) to rootlesskit's interface, which otherwise stays at 1500. Static
/// arguments come after it as `"$@"`, never through the shell.
const START_SOCKET: &str = r#"mtu="${NESTDOCK_MTU:-auto}"
if [ "$mtu" = auto ]; then mtu="$(cat /sys/class/net/eth0/mtu 2>/dev/null || echo 1500)"; fi
export DOCKERD_ROOTLESS_ROOTLESSKIT_MTU="$mtu"
exec dockerd-entrypoint.sh dockerd --mtu="$mtu" --default-network-opt="bridge=com.docker.network.driver.mtu=$mtu" "$@"
"#;

/// [`START_SOCKET`] for TLS mode: without `dockerd` first, the entrypoint
/// generates certificates into `DOCKER_TLS_CERTDIR` and listens on :2376 with
/// `--tlsverify`.
const START_TLS: &str = r#"mtu="${NESTDOCK_MTU:-auto}"
if [ "$mtu" = auto ]; then mtu="$(cat /sys/class/net/eth0/mtu 2>/dev/null || echo 1500)"; fi
exec dockerd-entrypoint.sh --mtu="$mtu" --default-network-opt="bridge=com.docker.network.driver.mtu=$mtu" "$@"
"#;

/// TLS mode's startup probe: the client certificates exist and dockerd answers over TLS.
const TLS_PROBE: &str = "test -f /certs/client/cert.pem && docker --host=tcp://localhost:2376 \
    --tlsverify --tlscacert=/certs/client/ca.pem --tlscert=/certs/client/cert.pem \
    --tlskey=/certs/client/key.pem version >/dev/null";

/// Static parts of the daemon container, serialised once per process: the
/// start script is the longest string of the patch, and escaping it for every
/// pod would be the single largest cost of writing the patch.
static COMMAND_SOCKET: LazyLock<Box<RawValue>> =
    LazyLock::new(|| raw(&["/bin/sh", "-c", START_SOCKET, DAEMON_CONTAINER]));
static COMMAND_TLS: LazyLock<Box<RawValue>> =
    LazyLock::new(|| raw(&["/bin/sh", "-c", START_TLS, DAEMON_CONTAINER]));
static PROBE_TLS: LazyLock<Box<RawValue>> = LazyLock::new(|| raw(&["sh", "-c", TLS_PROBE]));

fn raw(items: &[&str]) -> Box<RawValue> {
    serde_json::value::to_raw_value(items).expect("a list of strings serialises")
}

/// Paths of the daemon image that a mirrored mount must never reach, besides
/// the daemon's own mounts: a mount at, below or above one of them would
/// replace files the privileged daemon executes or trusts (its entrypoint,
/// `sh`, its config, root's home). Every `/lib*` directory counts too.
const DAEMON_SYSTEM_PATHS: [&str; 9] = [
    "/bin",
    "/sbin",
    "/usr",
    "/etc",
    "/root",
    "/proc",
    "/sys",
    "/dev",
    "/home/rootless",
];

/// Whether a mount at `path` (normalised) would reach a daemon system path.
fn hides_system_path(path: &str) -> bool {
    let first = path.trim_start_matches('/').split('/').next().unwrap_or("");
    path == "/"
        || first.starts_with("lib")
        || DAEMON_SYSTEM_PATHS
            .iter()
            .any(|p| under(path, p) || under(p, path))
}

/// A decision's warnings, bounded in number and each in length.
#[derive(Default)]
struct Warnings {
    kept: Vec<String>,
    dropped: usize,
}

impl Warnings {
    fn push(&mut self, msg: String) {
        if self.kept.len() < MAX_WARNINGS {
            // The API server refuses warnings of 120 characters or more.
            self.kept.push(crate::denial::cut(msg, 119));
        } else {
            self.dropped += 1;
        }
    }

    fn finish(mut self) -> Vec<String> {
        if self.dropped > 0 {
            self.kept.push(format!(
                "{} more warnings like these not shown",
                self.dropped
            ));
        }
        self.kept
    }
}

/// A container of the pod, where it sits, and whether it gets the daemon.
struct Slot<'a> {
    /// `initContainers` or `containers`.
    list: &'static str,
    index: usize,
    name: &'a str,
    obj: &'a Container<'a>,
}

/// The pieces of a mode's wiring that differ between dind, rootless, TLS and dood.
struct Wiring<'a> {
    /// Environment for every target container.
    env: Vec<WiredEnv>,
    /// The mount every target gets.
    target_mount: MountOut<'a>,
    /// Target mount paths that would shadow or duplicate that mount.
    reserved_target_paths: Vec<String>,
    /// Group to add to `supplementalGroups`.
    group: Option<i64>,
}

/// One variable every target gets, and whether a target that sets the name
/// itself is warned about (it is kept either way; an override such as
/// Testcontainers' is the user's to set).
struct WiredEnv {
    env: EnvOut<'static>,
    warn: bool,
}

impl WiredEnv {
    /// `DOCKER_HOST` and its like: a target's own value is warned about.
    fn daemon(name: &'static str, value: String) -> WiredEnv {
        WiredEnv {
            env: EnvOut {
                name,
                value: Cow::Owned(value),
                field_path: None,
            },
            warn: true,
        }
    }

    /// A tool's override: a target's own value is kept silently.
    fn hint(name: &'static str, value: String) -> WiredEnv {
        WiredEnv {
            warn: false,
            ..WiredEnv::daemon(name, value)
        }
    }

    /// Testcontainers' host in dood (`dood.testcontainersHost: nodeIP`): the
    /// node's address from the Downward API, where the node's daemon
    /// publishes ports.
    fn node_ip_hint(cfg: &Config) -> Option<WiredEnv> {
        (cfg.dood.testcontainers_host == TestcontainersHost::NodeIp).then_some(WiredEnv {
            env: EnvOut {
                name: TC_HOST_OVERRIDE,
                value: Cow::Borrowed(""),
                field_path: Some("status.hostIP"),
            },
            warn: false,
        })
    }
}

fn slots<'a>(list: &'static str, items: &'a Option<Vec<Container<'a>>>) -> Vec<Slot<'a>> {
    items
        .items()
        .iter()
        .enumerate()
        .map(|(index, c)| Slot {
            list,
            index,
            name: c.name.as_ref(),
            obj: c,
        })
        .collect()
}

/// True when `path` is `base` or lies below it.
fn under(path: &str, base: &str) -> bool {
    path == base
        || (path.starts_with(base)
            && (base == "/" || path.as_bytes().get(base.len()) == Some(&b'/')))
}

/// The parts of the pod the engine reads, resolved once.
struct PodView<'a> {
    spec: &'a Spec<'a>,
    meta: Option<&'a Metadata<'a>>,
    init: Vec<Slot<'a>>,
    app: Vec<Slot<'a>>,
    /// Names of the projected service-account token volumes (usually one),
    /// in a set so that each mount's check is constant however many there are.
    token_volumes: HashSet<&'a str>,
}

impl<'a> PodView<'a> {
    fn new(pod: &'a crate::pod::Pod<'a>) -> Result<PodView<'a>, Denial> {
        let spec = pod
            .spec
            .as_ref()
            .ok_or_else(|| Denial::bad("the pod has no spec object".to_string()))?;
        Ok(PodView {
            spec,
            meta: pod.metadata.as_ref(),
            init: slots("initContainers", &spec.init_containers),
            app: slots("containers", &spec.containers),
            token_volumes: spec
                .volumes
                .items()
                .iter()
                .filter(|v| v.is_service_account_token())
                .map(|v| v.name.as_ref())
                .collect(),
        })
    }

    fn volume(&self, name: &str) -> Option<&'a Volume<'a>> {
        self.spec.volumes.items().iter().find(|v| v.name == name)
    }

    /// Whether the pod carries nestdock's injection of `mode`: the daemon
    /// container with its storage and socket (or certificates) volumes for
    /// dind, the host-socket volume for dood (with the guard and the socket
    /// volume when the guard is on). What makes a marker credible.
    fn carries_injection(&self, mode: Mode, guarded: bool) -> bool {
        match mode {
            Mode::Dind | Mode::DindRootless => {
                self.init
                    .iter()
                    .chain(self.app.iter())
                    .any(|s| s.name == DAEMON_CONTAINER)
                    && self.volume(VOL_STORAGE).is_some()
                    && (self.volume(VOL_SOCKET).is_some() || self.volume(VOL_CERTS).is_some())
            }
            Mode::Dood => {
                self.volume(VOL_HOST_SOCKET).is_some()
                    && (!guarded
                        || (self.volume(VOL_SOCKET).is_some()
                            && self
                                .init
                                .iter()
                                .chain(self.app.iter())
                                .any(|s| s.name == GUARD_CONTAINER)))
            }
            Mode::None => false,
        }
    }
}

/// Mounts of the service-account token: the ServiceAccount admission plugin
/// adds them to every container, and the daemon has no use for them.
fn is_service_account_token(view: &PodView<'_>, name: &str, path: &str) -> bool {
    under(path, SA_TOKEN_PATH)
        || name.starts_with("kube-api-access-")
        || view.token_volumes.contains(&name)
}

/// Works out an injection. Each method decides one thing and returns it as
/// data; none writes patch operations (that is [`crate::render`]'s job).
struct Planner<'v, 'a> {
    view: &'v PodView<'a>,
    ann: &'v crate::annotations::PodAnnotations,
    mode: Mode,
    ctx: &'v Context<'a>,
    warnings: Warnings,
}

impl<'v, 'a> Planner<'v, 'a> {
    fn cfg(&self) -> &'a Config {
        self.ctx.config
    }

    fn warn(&mut self, msg: String) {
        self.warnings.push(msg);
    }

    fn plan(&mut self) -> Result<Option<Injection<'a>>, Denial> {
        // Values whose meaning does not depend on the mode are checked in every mode.
        if self.ann.tls == Some(true) && self.mode != Mode::Dind {
            return Err(Denial::bad(format!(
                "annotation nestdock.io/tls: \"true\" needs mode dind, but the mode is {}; \
                 remove the annotation or use mode dind",
                self.mode
            )));
        }
        self.check_image_allowed()?;
        let resources = self.resources()?;
        let sidecar = self.sidecar();
        let targets = self.targets(sidecar)?;
        match self.mode {
            Mode::None => Ok(None),
            Mode::Dood => {
                let guarded = self.cfg().dood.guard.enabled;
                for k in self.ann.daemon_only_keys() {
                    // The guard is a sidecar: where it goes matters.
                    if guarded && k == "sidecar" {
                        continue;
                    }
                    self.warn(format!(
                        "annotation nestdock.io/{k} has no effect in mode dood"
                    ));
                }
                if guarded {
                    self.plan_guarded_dood(&targets, sidecar).map(Some)
                } else {
                    self.plan_dood(&targets).map(Some)
                }
            }
            Mode::Dind | Mode::DindRootless => {
                self.plan_dind(&targets, sidecar, resources).map(Some)
            }
        }
    }

    fn sidecar(&self) -> Sidecar {
        match self.ann.sidecar {
            Some(s) => s,
            None => match self.cfg().sidecar {
                SidecarConfig::Native => Sidecar::Native,
                SidecarConfig::Container => Sidecar::Container,
                SidecarConfig::Auto if self.ctx.native_sidecars => Sidecar::Native,
                SidecarConfig::Auto => Sidecar::Container,
            },
        }
    }

    /// The `image` annotation picks what runs privileged: only images the
    /// platform lists in `dind.allowedImages` may be chosen.
    fn check_image_allowed(&self) -> Result<(), Denial> {
        let Some(image) = &self.ann.image else {
            return Ok(());
        };
        let allowed = &self.cfg().dind.allowed_images;
        let ok = allowed.iter().any(|a| match a.strip_suffix('*') {
            Some(prefix) => image.starts_with(prefix),
            None => a == image,
        });
        if ok {
            return Ok(());
        }
        let accepted = if allowed.is_empty() {
            "none: dind.allowedImages is empty, so pods use the configured image".to_string()
        } else {
            allowed.join(", ")
        };
        Err(Denial::one(
            403,
            format!(
                "annotation nestdock.io/image: image {} is not allowed (it would run privileged); \
                 accepted are {accepted}",
                crate::validate::shown(image)
            ),
        ))
    }

    /// The daemon's resources: config, overridden by annotations; a request
    /// above its limit is denied, not adjusted.
    fn resources(&self) -> Result<ResourcesOut<'a>, Denial> {
        let r = &self.cfg().dind.resources;
        let a = self.ann;
        fn pick<'q>(ann: &'q Option<Quantity>, cfg: &'q Option<Quantity>) -> Option<&'q Quantity> {
            ann.as_ref().or(cfg.as_ref())
        }
        let cpu_req = pick(&a.cpu_request, &r.requests.cpu);
        let cpu_lim = pick(&a.cpu_limit, &r.limits.cpu);
        let mem_req = pick(&a.memory_request, &r.requests.memory);
        let mem_lim = pick(&a.memory_limit, &r.limits.memory);
        for (what, req, lim) in [("cpu", cpu_req, cpu_lim), ("memory", mem_req, mem_lim)] {
            if let (Some(req), Some(lim)) = (req, lim) {
                if req.value() > lim.value() {
                    return Err(Denial::bad(format!(
                        "the daemon's {what} request {req} is above its limit {lim} (annotations \
                         nestdock.io/{what}-request, nestdock.io/{what}-limit or the config); \
                         a request must not exceed its limit"
                    )));
                }
            }
        }
        // The config's values are borrowed; the annotations' (this
        // decision's own) are copied into the plan.
        fn text<'q>(ann: &Option<Quantity>, cfg: &'q Option<Quantity>) -> Option<Cow<'q, str>> {
            match ann {
                Some(q) => Some(Cow::Owned(q.as_str().to_string())),
                None => cfg.as_ref().map(|q| Cow::Borrowed(q.as_str())),
            }
        }
        let list = |cpu: Option<Cow<'a, str>>, mem: Option<Cow<'a, str>>| {
            (cpu.is_some() || mem.is_some()).then_some(CpuMemory { cpu, memory: mem })
        };
        Ok(ResourcesOut {
            requests: list(
                text(&a.cpu_request, &r.requests.cpu),
                text(&a.memory_request, &r.requests.memory),
            ),
            limits: list(
                text(&a.cpu_limit, &r.limits.cpu),
                text(&a.memory_limit, &r.limits.memory),
            ),
        })
    }

    /// The containers that get the daemon: the `containers` annotation, or every
    /// container the mode can serve (docs/behaviour.md, *Targets*), in pod order.
    fn targets(&self, sidecar: Sidecar) -> Result<Vec<&'v Slot<'a>>, Denial> {
        let view = self.view;
        let has_sidecar =
            self.mode.has_daemon() || (self.mode == Mode::Dood && self.cfg().dood.guard.enabled);
        let init_ok = !(has_sidecar && sidecar == Sidecar::Container);
        let Some(names) = &self.ann.containers else {
            return Ok(if init_ok {
                view.init.iter().chain(view.app.iter()).collect()
            } else {
                view.app.iter().collect()
            });
        };
        // One lookup per name: the annotation may name tens of thousands.
        let by_name: HashMap<&str, &'v Slot<'a>> = view
            .init
            .iter()
            .chain(view.app.iter())
            .map(|s| (s.name, s))
            .collect();
        let mut out = Vec::with_capacity(names.len());
        for n in names {
            match by_name.get(n.as_str()) {
                Some(s) if s.list == "initContainers" && !init_ok => {
                    return Err(Denial::bad(format!(
                        "annotation nestdock.io/containers names init container {}, but with \
                         nestdock.io/sidecar: container the daemon (or guard) starts after the init containers; \
                         name app containers only, or use the native sidecar",
                        crate::validate::shown(n)
                    )));
                }
                Some(s) => out.push(*s),
                None => {
                    let all: Vec<&str> = view
                        .init
                        .iter()
                        .chain(view.app.iter())
                        .map(|s| s.name)
                        .take(20)
                        .collect();
                    return Err(Denial::bad(format!(
                        "annotation nestdock.io/containers names {}, which is not a container of this pod; \
                         accepted are: {}",
                        crate::validate::shown(n),
                        all.join(", ")
                    )));
                }
            }
        }
        out.sort_by_key(|s| (s.list == "containers", s.index));
        Ok(out)
    }

    fn check_container_name_free(&self, name: &str) -> Result<(), Denial> {
        let spec = self.view.spec;
        let lists: [(&str, Vec<&str>); 3] = [
            (
                "initContainers",
                spec.init_containers
                    .items()
                    .iter()
                    .map(|c| c.name.as_ref())
                    .collect(),
            ),
            (
                "containers",
                spec.containers
                    .items()
                    .iter()
                    .map(|c| c.name.as_ref())
                    .collect(),
            ),
            (
                "ephemeralContainers",
                spec.ephemeral_containers
                    .items()
                    .iter()
                    .map(|c| c.name.as_ref())
                    .collect(),
            ),
        ];
        for (list, names) in lists {
            if names.contains(&name) {
                return Err(Denial::bad(format!(
                    "the pod already has a container named {name} (in spec.{list}), the name of a \
                     container nestdock adds; rename that container"
                )));
            }
        }
        Ok(())
    }

    /// The volumes nestdock adds are its own: the pod may neither define
    /// one by that name nor mount one. A container of the pod's own that
    /// names `nestdock-host-docker` in its `volumeMounts` would, once the
    /// webhook adds that volume, get the node's docker socket past the
    /// guard (the API server sees a mount of a volume that exists).
    fn check_volume_names_free(&self, names: &[&str]) -> Result<(), Denial> {
        for name in names {
            if self.view.volume(name).is_some() {
                return Err(Denial::bad(format!(
                    "the pod already has a volume named {name}, a name nestdock uses for the docker \
                     daemon's wiring; rename that volume"
                )));
            }
        }
        let spec = self.view.spec;
        for (list, containers) in [
            ("initContainers", spec.init_containers.items()),
            ("containers", spec.containers.items()),
        ] {
            for c in containers {
                if let Some(m) = c
                    .volume_mounts
                    .items()
                    .iter()
                    .find(|m| names.contains(&m.name.as_ref()))
                {
                    return Err(Denial::bad(format!(
                        "container {} (spec.{list}) mounts volume {}, which nestdock adds and \
                         mounts only where its wiring needs it; remove that mount",
                        c.name, m.name
                    )));
                }
            }
        }
        Ok(())
    }

    /// The targets as the plan holds them: a target that already mounts
    /// something where the wiring goes is denied; one that sets a wired
    /// variable itself keeps it (with a warning where the wiring says so).
    fn wire_targets(
        &mut self,
        targets: &[&'v Slot<'a>],
        wiring: &Wiring<'a>,
    ) -> Result<Vec<Target<'a>>, Denial> {
        let reserved: Vec<Cow<'_, str>> = wiring
            .reserved_target_paths
            .iter()
            .map(|r| crate::pod::normalize_path(r))
            .collect();
        for t in targets {
            for m in t.obj.volume_mounts.items() {
                let path = m.path();
                if reserved.contains(&path) {
                    let vol = &m.name;
                    return Err(Denial::bad(format!(
                        "container {} already mounts volume {vol} at {path}, where nestdock puts the docker \
                         socket; remove that mount, or leave the container out with nestdock.io/containers",
                        t.name
                    )));
                }
            }
        }
        let mut out = Vec::with_capacity(targets.len());
        for t in targets {
            let mut kept_env = Vec::new();
            // At most four wired names, each looked for once: linear in env.
            let existing = t.obj.env.items();
            for WiredEnv { env: e, warn } in &wiring.env {
                if existing.iter().any(|x| x.name == e.name) {
                    kept_env.push(e.name);
                    if *warn {
                        self.warn(format!(
                            "container {} keeps its own {}; nestdock's daemon is at {}",
                            t.name, e.name, e.value
                        ));
                    }
                }
            }
            out.push(Target {
                list: t.list,
                index: t.index,
                name: t.name,
                kept_env,
                env_exists: t.obj.env.is_some(),
                mounts_exist: t.obj.volume_mounts.is_some(),
            });
        }
        Ok(out)
    }

    /// Where `gid` goes in `supplementalGroups`; `None` when it is there.
    fn group_at(&self, gid: i64) -> Option<(i64, GroupAt)> {
        match &self.view.spec.security_context {
            Some(sc) => {
                let groups = &sc.supplemental_groups;
                if groups.items().contains(&gid) {
                    None
                } else if groups.is_some() {
                    Some((gid, GroupAt::Append))
                } else {
                    Some((gid, GroupAt::NewList))
                }
            }
            _ => Some((gid, GroupAt::NewContext)),
        }
    }

    /// Where the idempotency marker goes.
    fn marker_at(&self) -> MarkerAt {
        match self.view.meta {
            Some(meta) if meta.annotations.is_some() => MarkerAt::Annotations,
            Some(_) => MarkerAt::Metadata,
            None => MarkerAt::Nothing,
        }
    }

    /// An injection with what every mode has; the dind modes add the daemon.
    fn injection(
        &self,
        targets: Vec<Target<'a>>,
        wiring: Wiring<'a>,
        volumes: Vec<Value>,
    ) -> Injection<'a> {
        Injection {
            marker_at: self.marker_at(),
            targets,
            env: wiring
                .env
                .into_iter()
                .map(|e| -> EnvOut<'a> { e.env })
                .collect(),
            target_mount: wiring.target_mount,
            volumes,
            volumes_exist: self.view.spec.volumes.is_some(),
            group: wiring.group.and_then(|gid| self.group_at(gid)),
            node_selector: Vec::new(),
            node_selector_exists: self.view.spec.node_selector.is_some(),
            daemon: None,
            skipped_mounts: Vec::new(),
        }
    }

    fn plan_dood(&mut self, targets: &[&'v Slot<'a>]) -> Result<Injection<'a>, Denial> {
        let cfg = self.cfg();
        self.check_volume_names_free(&[VOL_HOST_SOCKET])?;
        let socket = cfg.socket_path();
        let mut env = vec![WiredEnv::daemon("DOCKER_HOST", format!("unix://{socket}"))];
        // The node's daemon resolves bind sources on the node, where the
        // socket is at hostSocket: helpers that bind-mount the socket
        // (Testcontainers' Ryuk) need that path.
        if crate::pod::normalize_path(&cfg.dood.host_socket) != socket.as_str() {
            env.push(WiredEnv::hint(
                TC_SOCKET_OVERRIDE,
                cfg.dood.host_socket.clone(),
            ));
        }
        env.extend(WiredEnv::node_ip_hint(cfg));
        let reserved_target_paths = vec![socket.clone()];
        let wiring = Wiring {
            env,
            target_mount: MountOut {
                name: VOL_HOST_SOCKET,
                mount_path: Cow::Owned(socket),
                sub_path: None,
                read_only: None,
            },
            reserved_target_paths,
            group: cfg.dood.socket_group,
        };
        let targets = self.wire_targets(targets, &wiring)?;
        let volumes = vec![json!({
            "name": VOL_HOST_SOCKET,
            "hostPath": { "path": cfg.dood.host_socket, "type": "Socket" },
        })];
        let mut injection = self.injection(targets, wiring, volumes);
        injection.node_selector = self.node_selector(&cfg.dood.node_selector);
        Ok(injection)
    }

    /// Guarded dood: the node's socket is mounted in the `nestdock-guard`
    /// sidecar alone, which serves a filtered Docker API on the pod's socket
    /// volume; the targets are wired to that volume exactly as in dind.
    fn plan_guarded_dood(
        &mut self,
        targets: &[&'v Slot<'a>],
        sidecar: Sidecar,
    ) -> Result<Injection<'a>, Denial> {
        let cfg = self.cfg();
        self.check_container_name_free(GUARD_CONTAINER)?;
        self.check_volume_names_free(&[VOL_SOCKET, VOL_HOST_SOCKET, VOL_GUARD_SOCKET])?;
        let socket_dir = cfg.socket_dir.as_str();
        let socket = cfg.socket_path();
        // No socket override: a bind of the docker socket reaches the guard,
        // which points it at its own socket. Published ports are on the
        // node's daemon, as in plain dood.
        let mut env = vec![WiredEnv::daemon("DOCKER_HOST", format!("unix://{socket}"))];
        env.extend(WiredEnv::node_ip_hint(cfg));
        let wiring = Wiring {
            env,
            target_mount: MountOut::new(VOL_SOCKET, socket_dir),
            reserved_target_paths: vec![socket_dir.to_string(), socket.clone()],
            group: Some(cfg.socket_group),
        };
        let wired = self.wire_targets(targets, &wiring)?;
        let mut mounts = vec![
            MountOut::new(VOL_SOCKET, GUARD_SOCKET_DIR),
            MountOut::new(VOL_HOST_SOCKET, GUARD_NODE_SOCKET),
            MountOut {
                name: VOL_GUARD_SOCKET,
                mount_path: Cow::Owned(format!("{GUARD_VOLUMES_DIR}/{VOL_GUARD_SOCKET}")),
                sub_path: None,
                read_only: None,
            },
        ];
        // The targets' emptyDir volumes, one directory each: the guard checks
        // that a bind names one, and creates a missing `-v` directory below
        // one's root (the node's daemon mounts it as a volume subpath, which
        // must exist). And where the targets mount them (`--mount`),
        // so that a bind source as a target sees it moves to the node's path;
        // a path two targets fill differently is left out (no one answer).
        let mut seen = HashSet::new();
        let mut at: BTreeMap<Cow<'a, str>, Option<(&'a str, &'a str)>> = BTreeMap::new();
        at.insert(Cow::Borrowed(socket_dir), Some((VOL_SOCKET, "")));
        for t in targets {
            for m in t.obj.volume_mounts.items() {
                let name = m.name.as_ref();
                let empty_dir = self
                    .view
                    .volume(name)
                    .is_some_and(|v| v.empty_dir.is_some());
                if !empty_dir || m.sub_path_expr.is_some() {
                    continue;
                }
                if seen.insert(name) {
                    mounts.push(MountOut {
                        name,
                        mount_path: Cow::Owned(format!("{GUARD_VOLUMES_DIR}/{name}")),
                        sub_path: None,
                        read_only: None,
                    });
                }
                let this = Some((name, m.sub_path.as_deref().unwrap_or("")));
                at.entry(m.path())
                    .and_modify(|e| {
                        if *e != this {
                            *e = None;
                        }
                    })
                    .or_insert(this);
            }
        }
        let bind_paths: Vec<String> = at
            .into_iter()
            .filter_map(|(path, to)| {
                let (volume, sub) = to?;
                Some(if sub.is_empty() {
                    format!("--mount={path}={volume}")
                } else {
                    format!("--mount={path}={volume}/{sub}")
                })
            })
            .collect();
        let guard = self.guard_container(sidecar, mounts, bind_paths);
        let volumes = vec![
            json!({ "name": VOL_SOCKET, "emptyDir": {} }),
            json!({
                "name": VOL_HOST_SOCKET,
                "hostPath": { "path": cfg.dood.host_socket, "type": "Socket" },
            }),
            json!({ "name": VOL_GUARD_SOCKET, "emptyDir": {} }),
        ];
        let list_exists = self.sidecar_list_exists(sidecar, "the guard");
        let mut injection = self.injection(wired, wiring, volumes);
        injection.node_selector = self.node_selector(&cfg.dood.node_selector);
        injection.daemon = Some(Daemon {
            container: guard,
            placement: sidecar,
            list_exists,
        });
        Ok(injection)
    }

    /// Whether the list a sidecar goes into exists; a plain container (not
    /// native) is warned about.
    fn sidecar_list_exists(&mut self, sidecar: Sidecar, what: &str) -> bool {
        let spec = self.view.spec;
        match sidecar {
            Sidecar::Native => spec.init_containers.is_some(),
            Sidecar::Container => {
                self.warn(format!(
                    "sidecar: container: {what} may start after your containers, and Jobs will not \
                     complete while it runs"
                ));
                spec.containers.is_some()
            }
        }
    }

    /// The `nestdock-guard` container: nestdock's own image, no privileges,
    /// root (uid 0) only to open the node's socket, with the socket group as
    /// its group so that its socket is the targets'.
    fn guard_container(
        &self,
        sidecar: Sidecar,
        mounts: Vec<MountOut<'a>>,
        bind_paths: Vec<String>,
    ) -> DaemonOut<'a> {
        let cfg = self.cfg();
        let guard = &cfg.dood.guard;
        let image = match &guard.image {
            Some(image) => Cow::Borrowed(image.as_str()),
            None => Cow::Borrowed(crate::config::DEFAULT_GUARD_IMAGE),
        };
        let r = &guard.resources;
        let quantity = |q: &'a Option<crate::quantity::Quantity>| {
            q.as_ref().map(|q| Cow::Borrowed(q.as_str()))
        };
        let list = |cpu: Option<Cow<'a, str>>, memory: Option<Cow<'a, str>>| {
            (cpu.is_some() || memory.is_some()).then_some(CpuMemory { cpu, memory })
        };
        let resources = ResourcesOut {
            requests: list(quantity(&r.requests.cpu), quantity(&r.requests.memory)),
            limits: list(quantity(&r.limits.cpu), quantity(&r.limits.memory)),
        };
        DaemonOut {
            name: GUARD_CONTAINER,
            image,
            command: None,
            args: [
                "guard".to_string(),
                format!("--listen={GUARD_SOCKET}"),
                format!("--upstream={GUARD_NODE_SOCKET}"),
                format!("--socket-group={}", cfg.socket_group),
                format!("--kubelet-root={}", cfg.dood.kubelet_root),
                format!("--pod-volumes-dir={GUARD_VOLUMES_DIR}"),
                format!("--bind-socket-volume={VOL_GUARD_SOCKET}"),
            ]
            .into_iter()
            .chain(
                (guard.cgroup_parent == crate::config::CgroupParent::Pod)
                    .then(|| "--pod-cgroup=auto".to_string()),
            )
            .chain(guard.host_ports.iter().map(|r| format!("--host-ports={r}")))
            .chain(bind_paths)
            .collect(),
            env: vec![EnvOut {
                name: "NESTDOCK_POD_UID",
                value: Cow::Borrowed(""),
                field_path: Some("metadata.uid"),
            }],
            security_context: SecurityOut::Guard {
                run_as_user: 0,
                run_as_group: cfg.socket_group,
                run_as_non_root: false,
                allow_privilege_escalation: false,
                read_only_root_filesystem: true,
                capabilities: Capabilities { drop: ["ALL"] },
            },
            startup_probe: ProbeOut {
                exec: ExecOut {
                    command: ProbeCommand::Args(vec![
                        "nestdock".to_string(),
                        "probe".to_string(),
                        format!("--socket={GUARD_SOCKET}"),
                    ]),
                },
                period_seconds: 1,
                timeout_seconds: 5,
                failure_threshold: 60,
            },
            resources: (resources.requests.is_some() || resources.limits.is_some())
                .then_some(resources),
            volume_mounts: mounts,
            restart_policy: (sidecar == Sidecar::Native).then_some("Always"),
        }
    }

    /// The config's dood `nodeSelector` entries the pod lacks; a key the pod
    /// already selects on with another value keeps the pod's value, with a
    /// warning.
    fn node_selector(&mut self, wanted: &'a BTreeMap<String, String>) -> Vec<(&'a str, &'a str)> {
        let existing = self.view.spec.node_selector.as_ref();
        let mut add = Vec::new();
        for (k, v) in wanted {
            match existing.and_then(|e| e.get(k)) {
                Some(have) if have == v => {}
                Some(have) => self.warn(format!(
                    "nodeSelector {k}={have} kept; dood expects {k}={v} (nodes with a docker daemon)"
                )),
                None => add.push((k.as_str(), v.as_str())),
            }
        }
        add
    }

    /// A privileged daemon must not share the node's namespaces: with
    /// hostNetwork it rewrites the node's iptables, with hostPID or hostIPC a
    /// privileged container sees the node's processes and memory. And a
    /// user-namespaced pod cannot run it. Every field that applies is named.
    fn check_host_namespaces(&self) -> Result<(), Denial> {
        let spec = self.view.spec;
        let mode = self.mode;
        let mut reasons = Vec::new();
        let shared = [
            (
                "hostNetwork",
                spec.host_network,
                "the inner daemon would rewrite the node's iptables",
            ),
            (
                "hostPID",
                spec.host_pid,
                "a privileged container would see and signal the node's processes",
            ),
            (
                "hostIPC",
                spec.host_ipc,
                "a privileged container would share the node's IPC namespace",
            ),
        ];
        for (field, value, why) in shared {
            if value == Some(true) {
                reasons.push(format!(
                    "mode {mode} is denied for a pod with {field}: true: {why}; drop {field}, or use mode dood."
                ));
            }
        }
        if spec.host_users == Some(false) {
            reasons.push(format!(
                "mode {mode} is denied for a pod with hostUsers: false: its daemon must be privileged, \
                 which a user-namespaced pod cannot be; remove hostUsers: false, or use mode dood."
            ));
        }
        if reasons.is_empty() {
            Ok(())
        } else {
            Err(Denial::new(403, reasons))
        }
    }

    fn plan_dind(
        &mut self,
        targets: &[&'v Slot<'a>],
        sidecar: Sidecar,
        resources: ResourcesOut<'a>,
    ) -> Result<Injection<'a>, Denial> {
        let cfg = self.cfg();
        let mode = self.mode;
        let rootless = mode == Mode::DindRootless;
        let tls = self.ann.tls == Some(true);
        self.check_host_namespaces()?;
        self.check_container_name_free(DAEMON_CONTAINER)?;
        let shared = if tls { VOL_CERTS } else { VOL_SOCKET };
        self.check_volume_names_free(&[shared, VOL_STORAGE])?;

        let socket_dir = cfg.socket_dir.as_str();
        let socket = cfg.socket_path();
        let wiring = if tls {
            Wiring {
                env: vec![
                    WiredEnv::daemon("DOCKER_HOST", TLS_HOST.to_string()),
                    WiredEnv::daemon("DOCKER_TLS_VERIFY", "1".to_string()),
                    WiredEnv::daemon("DOCKER_CERT_PATH", CERTS_CLIENT_DIR.to_string()),
                ],
                target_mount: MountOut {
                    name: VOL_CERTS,
                    mount_path: Cow::Borrowed(CERTS_CLIENT_DIR),
                    sub_path: Some("client"),
                    read_only: Some(true),
                },
                reserved_target_paths: vec![CERTS_CLIENT_DIR.to_string()],
                group: None,
            }
        } else {
            let mut env = vec![WiredEnv::daemon("DOCKER_HOST", format!("unix://{socket}"))];
            // The rootless daemon sees the same socket file at its own
            // runtime directory, and resolves bind sources there.
            if rootless {
                env.push(WiredEnv::hint(
                    TC_SOCKET_OVERRIDE,
                    format!("{ROOTLESS_RUNTIME_DIR}/docker.sock"),
                ));
            }
            Wiring {
                env,
                target_mount: MountOut::new(VOL_SOCKET, socket_dir),
                reserved_target_paths: vec![socket_dir.to_string(), socket.clone()],
                group: Some(if rootless {
                    ROOTLESS_ID
                } else {
                    cfg.socket_group
                }),
            }
        };
        let wired = self.wire_targets(targets, &wiring)?;

        // The daemon's own mounts, then the targets' mounts mirrored at the same paths.
        let daemon_socket_dir = if rootless {
            ROOTLESS_RUNTIME_DIR
        } else {
            socket_dir
        };
        let storage_path = if rootless {
            ROOTLESS_STORAGE
        } else {
            DIND_STORAGE
        };
        let mut daemon_mounts = Vec::new();
        if !tls {
            daemon_mounts.push(MountOut::new(VOL_SOCKET, daemon_socket_dir));
        }
        daemon_mounts.push(MountOut::new(VOL_STORAGE, storage_path));
        if tls {
            daemon_mounts.push(MountOut::new(VOL_CERTS, CERTS_DIR));
        }
        let own_paths = [
            daemon_socket_dir,
            storage_path,
            CERTS_DIR,
            "/var/run",
            "/run",
        ];
        let skipped = if cfg.mirror_mounts {
            self.mirror_mounts(targets, &own_paths, &mut daemon_mounts)
        } else {
            Vec::new()
        };

        let daemon =
            self.daemon_container(sidecar, tls, resources, daemon_socket_dir, daemon_mounts);

        let volumes = vec![
            json!({ "name": shared, "emptyDir": {} }),
            self.storage_volume(),
        ];
        let list_exists = self.sidecar_list_exists(sidecar, "the daemon");
        let mut injection = self.injection(wired, wiring, volumes);
        injection.skipped_mounts = skipped;
        injection.daemon = Some(Daemon {
            container: daemon,
            placement: sidecar,
            list_exists,
        });
        Ok(injection)
    }

    /// Mirrors the targets' mounts into the daemon (same volume, path and
    /// subPath) so that `docker run -v $PWD:/src` sees the app's files;
    /// returns the mounts it skipped, each also a warning.
    fn mirror_mounts(
        &mut self,
        targets: &[&'v Slot<'a>],
        own: &[&'a str],
        out: &mut Vec<MountOut<'a>>,
    ) -> Vec<SkippedMount<'a>> {
        let view = self.view;
        let ours = [
            VOL_SOCKET,
            VOL_STORAGE,
            VOL_CERTS,
            VOL_HOST_SOCKET,
            VOL_GUARD_SOCKET,
        ];
        // Path -> (volume, subPath) of what is mirrored so far: one entry
        // per path, looked up once per mount (pods may have 1000 containers).
        let mut seen: HashMap<Cow<'a, str>, (&'a str, &'a str)> = HashMap::new();
        let mut skipped = Vec::new();
        for t in targets {
            for m in t.obj.volume_mounts.items() {
                let name = m.name.as_ref();
                let path = m.path();
                let sub = m.sub_path.as_deref().unwrap_or("");
                if name.is_empty() || path.is_empty() || ours.contains(&name) {
                    continue;
                }
                if is_service_account_token(view, name, &path) {
                    continue;
                }
                let reason = if m.sub_path_expr.is_some() {
                    Some(SkipReason::SubPathExpr)
                } else if let Some(p) = own.iter().find(|p| under(&path, p) || under(p, &path)) {
                    Some(SkipReason::DaemonPath(p))
                } else if hides_system_path(&path) {
                    Some(SkipReason::SystemPath)
                } else if let Some(&(first, first_sub)) = seen.get(&path) {
                    if (first, first_sub) == (name, sub) {
                        continue; // the same mount in another target
                    }
                    Some(SkipReason::Taken(first))
                } else {
                    None
                };
                if let Some(reason) = reason {
                    self.warn(format!(
                        "mount {name} at {path} (container {}) not mirrored into the daemon: {reason}",
                        t.name
                    ));
                    skipped.push(SkippedMount {
                        container: t.name,
                        volume: name,
                        path,
                        reason,
                    });
                    continue;
                }
                seen.insert(path.clone(), (name, sub));
                out.push(MountOut {
                    name,
                    mount_path: path,
                    sub_path: (!sub.is_empty()).then_some(sub),
                    read_only: (m.read_only == Some(true)).then_some(true),
                });
            }
        }
        skipped
    }

    fn storage_volume(&self) -> Value {
        let storage = &self.cfg().dind.storage;
        let limit = self.ann.storage_limit.as_ref();
        match storage {
            Storage::EmptyDir { size_limit } => match limit.or(size_limit.as_ref()) {
                Some(q) => json!({ "name": VOL_STORAGE, "emptyDir": { "sizeLimit": q.as_str() } }),
                None => json!({ "name": VOL_STORAGE, "emptyDir": {} }),
            },
            Storage::Ephemeral {
                storage_class_name,
                size,
            } => {
                let size = limit.unwrap_or(size);
                let mut spec = json!({
                    "accessModes": ["ReadWriteOnce"],
                    "resources": { "requests": { "storage": size.as_str() } },
                });
                if let Some(sc) = storage_class_name {
                    spec["storageClassName"] = Value::String(sc.clone());
                }
                json!({
                    "name": VOL_STORAGE,
                    "ephemeral": { "volumeClaimTemplate": { "spec": spec } },
                })
            }
        }
    }

    fn daemon_container(
        &self,
        sidecar: Sidecar,
        tls: bool,
        resources: ResourcesOut<'a>,
        socket_dir: &str,
        mounts: Vec<MountOut<'a>>,
    ) -> DaemonOut<'a> {
        let cfg = self.cfg();
        let dind = &cfg.dind;
        let ann = self.ann;
        let rootless = self.mode == Mode::DindRootless;
        let image = match &ann.image {
            Some(image) => Cow::Owned(image.clone()),
            None if rootless => Cow::Borrowed(dind.rootless_image.as_str()),
            None => Cow::Borrowed(dind.image.as_str()),
        };
        let host = format!("unix://{socket_dir}/docker.sock");
        let mut args: Vec<String> = Vec::new();
        if !tls {
            args.push(format!("--host={host}"));
            // Rootless: gid 0 inside the user namespace is the daemon's own
            // gid (1000) outside, the group the pod's supplementalGroups
            // carry. Without --group, dockerd would pick its image's
            // `docker` group, which maps to no group of the pod.
            args.push(if rootless {
                "--group=0".to_string()
            } else {
                format!("--group={}", cfg.socket_group)
            });
        }
        if rootless {
            // dockerd chmods its data root, which fails inside the user
            // namespace on the root-owned directory the kubelet makes for an
            // emptyDir: the data root is a directory the daemon creates inside.
            args.push(format!("--data-root={ROOTLESS_DATA_ROOT}"));
        }
        for m in ann
            .registry_mirrors
            .as_ref()
            .unwrap_or(&dind.registry_mirrors)
        {
            args.push(format!("--registry-mirror={m}"));
        }
        for r in ann
            .insecure_registries
            .as_ref()
            .unwrap_or(&dind.insecure_registries)
        {
            args.push(format!("--insecure-registry={r}"));
        }
        if let Some(bip) = &dind.bip {
            args.push(format!("--bip={bip}"));
        }
        for p in &dind.default_address_pools {
            args.push(format!(
                "--default-address-pool=base={},size={}",
                p.base, p.size
            ));
        }
        args.extend(dind.extra_args.iter().cloned());

        let mtu = match ann.mtu.unwrap_or(dind.mtu) {
            Mtu::Auto => Cow::Borrowed("auto"),
            Mtu::Fixed(n) => Cow::Owned(n.to_string()),
        };
        let mut env = Vec::with_capacity(3 + dind.env.len());
        env.push(EnvOut::new(
            "DOCKER_TLS_CERTDIR",
            if tls { CERTS_DIR } else { "" },
        ));
        env.push(EnvOut {
            name: "NESTDOCK_MTU",
            value: mtu,
            field_path: None,
        });
        if rootless {
            env.push(EnvOut::new("XDG_RUNTIME_DIR", ROOTLESS_RUNTIME_DIR));
        }
        env.extend(dind.env.iter().map(|e| EnvOut::new(&e.name, &e.value)));

        let probe = if tls {
            ProbeCommand::Static(&PROBE_TLS)
        } else {
            ProbeCommand::Args(vec![
                "docker".to_string(),
                format!("--host={host}"),
                "version".to_string(),
            ])
        };
        DaemonOut {
            name: DAEMON_CONTAINER,
            image,
            // Through the image's entrypoint (cgroup v2 nesting, tini);
            // `dockerd` first skips its default TCP listener, which TLS mode
            // wants instead.
            command: Some(if tls { &COMMAND_TLS } else { &COMMAND_SOCKET }),
            args,
            env,
            security_context: SecurityOut::Daemon {
                privileged: true,
                run_as_user: if rootless { ROOTLESS_ID } else { 0 },
                run_as_group: if rootless { ROOTLESS_ID } else { 0 },
                run_as_non_root: rootless,
            },
            startup_probe: ProbeOut {
                exec: ExecOut { command: probe },
                period_seconds: 1,
                timeout_seconds: 5,
                failure_threshold: 300,
            },
            resources: (resources.requests.is_some() || resources.limits.is_some())
                .then_some(resources),
            volume_mounts: mounts,
            restart_policy: (sidecar == Sidecar::Native).then_some("Always"),
        }
    }
}

/// The daemon container as it goes into the patch.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DaemonOut<'a> {
    pub name: &'static str,
    pub image: Cow<'a, str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    command: Option<&'static RawValue>,
    pub args: Vec<String>,
    pub env: Vec<EnvOut<'a>>,
    security_context: SecurityOut,
    startup_probe: ProbeOut,
    #[serde(skip_serializing_if = "Option::is_none")]
    resources: Option<ResourcesOut<'a>>,
    pub volume_mounts: Vec<MountOut<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    restart_policy: Option<&'static str>,
}

/// Why a target mount is not mirrored into the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason<'a> {
    /// The daemon cannot expand the target's variables.
    SubPathExpr,
    /// At, below or above one of the daemon's own paths.
    DaemonPath(&'a str),
    /// At, below or above a system path of the daemon image.
    SystemPath,
    /// Another volume is mirrored at that path already.
    Taken(&'a str),
}

impl std::fmt::Display for SkipReason<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SkipReason::SubPathExpr => f.write_str("subPathExpr cannot be expanded there"),
            SkipReason::DaemonPath(p) => write!(f, "the daemon keeps its own {p}"),
            SkipReason::SystemPath => f.write_str("it would hide the daemon's own files"),
            SkipReason::Taken(first) => write!(f, "the path already holds volume {first}"),
        }
    }
}

/// An environment variable as it goes into the patch: a value, or a field
/// of the pod from the Downward API.
#[derive(Debug)]
pub struct EnvOut<'a> {
    pub name: &'a str,
    pub value: Cow<'a, str>,
    /// `valueFrom.fieldRef.fieldPath` instead of the value.
    pub field_path: Option<&'static str>,
}

impl<'a> EnvOut<'a> {
    fn new(name: &'a str, value: &'a str) -> EnvOut<'a> {
        EnvOut {
            name,
            value: Cow::Borrowed(value),
            field_path: None,
        }
    }
}

impl Serialize for EnvOut<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap as _;
        let mut map = s.serialize_map(Some(2))?;
        map.serialize_entry("name", self.name)?;
        match self.field_path {
            Some(path) => map.serialize_entry(
                "valueFrom",
                &serde_json::json!({ "fieldRef": { "fieldPath": path } }),
            )?,
            None => map.serialize_entry("value", &self.value)?,
        }
        map.end()
    }
}

#[derive(Debug, Serialize)]
#[serde(untagged)]
enum SecurityOut {
    #[serde(rename_all = "camelCase")]
    Daemon {
        privileged: bool,
        run_as_user: i64,
        run_as_group: i64,
        run_as_non_root: bool,
    },
    #[serde(rename_all = "camelCase")]
    Guard {
        run_as_user: i64,
        run_as_group: i64,
        run_as_non_root: bool,
        allow_privilege_escalation: bool,
        read_only_root_filesystem: bool,
        capabilities: Capabilities,
    },
}

#[derive(Debug, Serialize)]
struct Capabilities {
    drop: [&'static str; 1],
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ProbeOut {
    exec: ExecOut,
    period_seconds: u32,
    timeout_seconds: u32,
    failure_threshold: u32,
}

#[derive(Debug, Serialize)]
struct ExecOut {
    command: ProbeCommand,
}

#[derive(Debug, Serialize)]
#[serde(untagged)]
enum ProbeCommand {
    Static(&'static RawValue),
    Args(Vec<String>),
}

/// `requests`/`limits` of the daemon.
#[derive(Debug, Serialize)]
struct ResourcesOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    requests: Option<CpuMemory<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    limits: Option<CpuMemory<'a>>,
}

#[derive(Debug, Serialize)]
struct CpuMemory<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    cpu: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    memory: Option<Cow<'a, str>>,
}

/// A volume mount, as the daemon gets it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MountOut<'a> {
    pub name: &'a str,
    pub mount_path: Cow<'a, str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sub_path: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_only: Option<bool>,
}

impl<'a> MountOut<'a> {
    fn new(name: &'a str, mount_path: &'a str) -> MountOut<'a> {
        MountOut {
            name,
            mount_path: Cow::Borrowed(mount_path),
            sub_path: None,
            read_only: None,
        }
    }
}
