//! The mutation engine: one pure function from (pod, namespace policy, config)
//! to a decision. The webhook, `nestdock inject` and the tests all go through
//! [`mutate`]; nothing here does I/O.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::LazyLock;

use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};

use crate::config::{Config, Mtu, Sidecar, SidecarConfig, Storage};
use crate::mode::Mode;
use crate::patch::Patch;
use crate::pod::{Container, Field, Metadata, Pairs, Spec, Volume};
use crate::quantity::Quantity;

/// What the engine knows about the pod's namespace.
#[derive(Debug, Clone, Copy)]
pub enum NamespacePolicy<'a> {
    /// Namespace policy is off (`--kube=false`): annotations and config only,
    /// and dood only when `dood.allowWithoutNamespacePolicy` is set.
    Off,
    /// Offline `inject`: `--mode` acts like a namespace label and no gate applies.
    Offline { mode: Option<Mode> },
    /// The labels of the pod's namespace, from the namespace cache.
    Labels {
        namespace: &'a str,
        labels: &'a BTreeMap<String, String>,
    },
}

/// Everything besides the pod that a decision depends on.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    pub config: &'a Config,
    pub namespace: NamespacePolicy<'a>,
    /// Whether the API server runs native sidecars (1.29+); resolves `sidecar: auto`.
    pub native_sidecars: bool,
}

/// A refusal: the HTTP-like status code for the AdmissionReview and every
/// reason that applies, each naming what was wrong and what is accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// 400 for a bad annotation value or a pod nestdock cannot serve as asked,
    /// 403 for a policy or safety rule.
    pub code: u16,
    /// One sentence (or so) each; never empty.
    pub reasons: Vec<String>,
}

impl Denial {
    /// A denial for these reasons, bounded: at most [`MAX_REASONS`] reasons
    /// of at most [`MAX_REASON_BYTES`] each, so that a pod with a thousand
    /// bad annotations gets a readable (and small) answer.
    pub fn new(code: u16, reasons: Vec<String>) -> Denial {
        let total = reasons.len();
        let mut kept: Vec<String> = reasons
            .into_iter()
            .take(MAX_REASONS)
            .map(|r| cut(r, MAX_REASON_BYTES))
            .collect();
        if total > kept.len() {
            kept.push(format!("({} more reasons not shown)", total - kept.len()));
        }
        Denial {
            code,
            reasons: kept,
        }
    }

    /// A denial for one reason.
    pub fn one(code: u16, reason: String) -> Denial {
        Denial::new(code, vec![reason])
    }

    /// The reasons as one message, as the AdmissionReview's status carries it.
    pub fn message(&self) -> String {
        self.reasons.join(" ")
    }
}

/// How many reasons a denial names.
pub const MAX_REASONS: usize = 16;
/// How long one reason may be.
pub const MAX_REASON_BYTES: usize = 1024;
/// How many warnings a decision carries; the API server shows each to the user.
pub const MAX_WARNINGS: usize = 16;
/// Largest JSON patch nestdock writes. Why this much: the API server takes
/// request bodies up to 3 MiB and etcd stores objects under 1.5 MiB, so a
/// pod whose patch alone is past 4 MiB could never be stored; refusing it
/// keeps the response (and the memory behind it) bounded whatever a client
/// sends. A typical pod's patch is 2-3 KiB; 1,000 targets take about 250 KiB.
pub const MAX_PATCH_BYTES: usize = 4 * 1024 * 1024;

/// `s` cut to at most `max` bytes on a character boundary, marked when cut.
fn cut(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max.saturating_sub(3);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push_str("...");
    }
    s
}

/// What happens to the pod.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Allowed as it is (mode `none`, already injected, not a pod to touch).
    Unchanged,
    /// Allowed with these JSON Patch operations, built against the pod as received.
    Patched(Patch),
    /// Refused.
    Denied(Denial),
}

/// Where the decision's mode came from: what `explain` tells a user to change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModeFrom {
    /// Chosen by the rules (annotation, namespace label, inject flag, default).
    Chosen(crate::policy::Source),
    /// The pod already carries nestdock's injection of this mode, so it is
    /// left as it is (a second pass).
    AlreadyInjected,
    /// The pod could not be read; the mode is the config default.
    Unreadable,
}

/// The engine's answer for one pod.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// The mode that applied (for audit annotations, logs and metrics).
    pub mode: Mode,
    pub from: ModeFrom,
    pub outcome: Outcome,
    /// Each under 120 characters, as the API server requires; at most
    /// [`MAX_WARNINGS`] (+1 saying how many more there were).
    pub warnings: Vec<String>,
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

/// Decides what happens to `pod` (the object exactly as the API server sent it).
pub fn mutate(pod: &Value, ctx: &Context<'_>) -> Decision {
    match crate::pod::from_value(pod) {
        Ok(pod) => mutate_pod(&pod, ctx),
        Err(message) => unreadable(ctx, message),
    }
}

/// [`mutate`] on the pod's JSON text, as the webhook receives it: the pod is
/// read borrowed and typed, without building a tree of it.
pub fn mutate_json(pod: &str, ctx: &Context<'_>) -> Decision {
    match crate::pod::from_json(pod) {
        Ok(pod) => mutate_pod(&pod, ctx),
        Err(message) => unreadable(ctx, message),
    }
}

/// [`mutate`] on a pod already read (the webhook reads it with the review).
///
/// Order: every annotation is read and every policy rule applied first, so
/// that a denial names all of them; then the idempotency marker is honoured
/// only when the pod really carries that injection; then the plan.
pub fn mutate_pod(pod: &crate::pod::Pod<'_>, ctx: &Context<'_>) -> Decision {
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
    let decided = |outcome, warnings| Decision {
        mode,
        from: ModeFrom::Chosen(choice.source),
        outcome,
        warnings,
    };
    if !reasons.is_empty() {
        return decided(Outcome::Denied(Denial::new(code, reasons)), Vec::new());
    }
    let view = match PodView::new(pod) {
        Ok(v) => v,
        Err(d) => return decided(Outcome::Denied(d), Vec::new()),
    };
    let mut warnings = Warnings::default();
    // Idempotency: the API server may call again (reinvocationPolicy:
    // IfNeeded) and `inject` may run twice. The marker is whatever the pod's
    // author wrote, so it counts only when the pod carries that injection.
    if let Some(marker) = ann.injected.as_deref() {
        if marker == mode.as_str() && view.carries_injection(mode) {
            return Decision {
                mode,
                from: ModeFrom::AlreadyInjected,
                outcome: Outcome::Unchanged,
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
        patch: Patch::new(),
        warnings,
    };
    let planned = planner.plan();
    let Planner {
        patch, warnings, ..
    } = planner;
    match planned {
        Ok(()) if patch.as_json().len() > MAX_PATCH_BYTES => decided(
            Outcome::Denied(Denial::one(
                400,
                format!(
                    "the patch for this pod would be over {MAX_PATCH_BYTES} bytes, more than any pod \
                     Kubernetes can store; name fewer containers with nestdock.io/containers"
                ),
            )),
            Vec::new(),
        ),
        Ok(()) => decided(
            if patch.is_empty() {
                Outcome::Unchanged
            } else {
                Outcome::Patched(patch)
            },
            warnings.finish(),
        ),
        Err(d) => decided(Outcome::Denied(d), Vec::new()),
    }
}

/// The decision for a pod that cannot be read.
fn unreadable(ctx: &Context<'_>, message: String) -> Decision {
    Decision {
        mode: ctx.config.default_mode,
        from: ModeFrom::Unreadable,
        outcome: Outcome::Denied(Denial::one(400, message)),
        warnings: Vec::new(),
    }
}

fn bad(message: String) -> Denial {
    Denial::one(400, message)
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
            self.kept.push(limit_warning(msg));
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
struct Wiring {
    /// Environment for every target container: name, value, and whether a
    /// target that sets the name itself is warned about (it is kept either
    /// way; an override such as Testcontainers' is the user's to set).
    env: Vec<(&'static str, String, bool)>,
    /// The mount every target gets.
    target_mount: Value,
    /// Target mount paths that would shadow or duplicate that mount.
    reserved_target_paths: Vec<String>,
    /// Group to add to `supplementalGroups`.
    group: Option<i64>,
}

fn slots<'a>(list: &'static str, items: &'a Field<Vec<Container<'a>>>) -> Vec<Slot<'a>> {
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

fn limit_warning(mut s: String) -> String {
    const MAX: usize = 119;
    if s.len() > MAX {
        let mut cut = MAX - 3;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str("...");
    }
    s
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
            .ok_or_else(|| bad("the pod has no spec object".to_string()))?;
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
    /// dind, the host-socket volume for dood. What makes a marker credible.
    fn carries_injection(&self, mode: Mode) -> bool {
        match mode {
            Mode::Dind | Mode::DindRootless => {
                self.init
                    .iter()
                    .chain(self.app.iter())
                    .any(|s| s.name == DAEMON_CONTAINER)
                    && self.volume(VOL_STORAGE).is_some()
                    && (self.volume(VOL_SOCKET).is_some() || self.volume(VOL_CERTS).is_some())
            }
            Mode::Dood => self.volume(VOL_HOST_SOCKET).is_some(),
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

struct Planner<'v, 'a> {
    view: &'v PodView<'a>,
    ann: &'v crate::annotations::PodAnnotations,
    mode: Mode,
    ctx: &'v Context<'v>,
    patch: Patch,
    warnings: Warnings,
}

impl<'v, 'a> Planner<'v, 'a> {
    fn cfg(&self) -> &'v Config {
        self.ctx.config
    }

    fn warn(&mut self, msg: String) {
        self.warnings.push(msg);
    }

    /// Adds one operation; past [`MAX_PATCH_BYTES`] nothing more is written
    /// (the decision is then a denial), so a hostile pod cannot make the
    /// engine build a patch of hundreds of MiB first.
    fn add(&mut self, path: &[&str], value: &impl serde::Serialize) {
        if self.patch.as_json().len() <= MAX_PATCH_BYTES {
            self.patch.add(path, value);
        }
    }

    /// Appends `items` to the list at `path`. A list that is absent or null
    /// in the object as sent is added whole, because `add .../-` needs the
    /// list to exist.
    fn append<T: Serialize>(&mut self, exists: bool, path: &[&str], items: Vec<T>) {
        if items.is_empty() {
            return;
        }
        if exists {
            let mut p: Vec<&str> = path.to_vec();
            p.push("-");
            for item in items {
                self.add(&p, &item);
            }
        } else {
            self.add(path, &items);
        }
    }

    fn plan(&mut self) -> Result<(), Denial> {
        // Values whose meaning does not depend on the mode are checked in every mode.
        if self.ann.tls == Some(true) && self.mode != Mode::Dind {
            return Err(bad(format!(
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
            Mode::None => Ok(()),
            Mode::Dood => {
                for k in self.ann.daemon_only_keys() {
                    self.warn(format!(
                        "annotation nestdock.io/{k} has no effect in mode dood"
                    ));
                }
                self.plan_dood(&targets)
            }
            Mode::Dind | Mode::DindRootless => self.plan_dind(&targets, sidecar, resources),
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
    fn resources(&self) -> Result<ResourcesOut<'v>, Denial> {
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
                    return Err(bad(format!(
                        "the daemon's {what} request {req} is above its limit {lim} (annotations \
                         nestdock.io/{what}-request, nestdock.io/{what}-limit or the config); \
                         a request must not exceed its limit"
                    )));
                }
            }
        }
        let list = |cpu: Option<&'v Quantity>, mem: Option<&'v Quantity>| {
            (cpu.is_some() || mem.is_some()).then(|| CpuMemory {
                cpu: cpu.map(Quantity::as_str),
                memory: mem.map(Quantity::as_str),
            })
        };
        Ok(ResourcesOut {
            requests: list(cpu_req, mem_req),
            limits: list(cpu_lim, mem_lim),
        })
    }

    /// The containers that get the daemon: the `containers` annotation, or every
    /// container the mode can serve (SPEC section 8, "Targets"), in pod order.
    fn targets(&self, sidecar: Sidecar) -> Result<Vec<&'v Slot<'a>>, Denial> {
        let view = self.view;
        let init_ok = !(self.mode.has_daemon() && sidecar == Sidecar::Container);
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
                    return Err(bad(format!(
                        "annotation nestdock.io/containers names init container {}, but with \
                         nestdock.io/sidecar: container the daemon starts after the init containers; \
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
                    return Err(bad(format!(
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
                return Err(bad(format!(
                    "the pod already has a container named {name} (in spec.{list}), the name of the \
                     daemon container nestdock adds; rename that container"
                )));
            }
        }
        Ok(())
    }

    fn check_volume_names_free(&self, names: &[&str]) -> Result<(), Denial> {
        for name in names {
            if self.view.volume(name).is_some() {
                return Err(bad(format!(
                    "the pod already has a volume named {name}, a name nestdock uses for the docker \
                     daemon's wiring; rename that volume"
                )));
            }
        }
        Ok(())
    }

    /// Gives every target the environment and the mount of `wiring`.
    fn wire_targets(&mut self, targets: &[&'v Slot<'a>], wiring: &Wiring) -> Result<(), Denial> {
        for t in targets {
            for m in t.obj.volume_mounts.items() {
                let path = m.path();
                if wiring
                    .reserved_target_paths
                    .iter()
                    .any(|r| crate::pod::normalize_path(r) == path)
                {
                    let vol = &m.name;
                    return Err(bad(format!(
                        "container {} already mounts volume {vol} at {path}, where nestdock puts the docker \
                         socket; remove that mount, or leave the container out with nestdock.io/containers",
                        t.name
                    )));
                }
            }
        }
        for t in targets {
            let index = t.index.to_string();
            let existing: Vec<&str> = t.obj.env.items().iter().map(|e| e.name.as_ref()).collect();
            let mut env = Vec::with_capacity(wiring.env.len());
            for (k, v, warn) in &wiring.env {
                if existing.contains(k) {
                    if *warn {
                        self.warn(format!(
                            "container {} keeps its own {k}; nestdock's daemon is at {v}",
                            t.name
                        ));
                    }
                } else {
                    env.push(json!({ "name": k, "value": v }));
                }
            }
            let env_path = ["spec", t.list, index.as_str(), "env"];
            self.append(t.obj.env.is_present(), &env_path, env);
            let mounts_path = ["spec", t.list, index.as_str(), "volumeMounts"];
            self.append(
                t.obj.volume_mounts.is_present(),
                &mounts_path,
                vec![wiring.target_mount.clone()],
            );
        }
        Ok(())
    }

    fn add_supplemental_group(&mut self, gid: i64) {
        match &self.view.spec.security_context {
            Field::Present(sc) => {
                let groups = &sc.supplemental_groups;
                if !groups.items().contains(&gid) {
                    self.append(
                        groups.is_present(),
                        &["spec", "securityContext", "supplementalGroups"],
                        vec![json!(gid)],
                    );
                }
            }
            _ => self.add(
                &["spec", "securityContext"],
                &json!({ "supplementalGroups": [gid] }),
            ),
        }
    }

    fn add_volumes(&mut self, volumes: Vec<Value>) {
        let exists = self.view.spec.volumes.is_present();
        self.append(exists, &["spec", "volumes"], volumes);
    }

    /// Records the idempotency marker `nestdock.io/injected: <mode>`.
    fn mark_injected(&mut self) {
        let key = crate::annotations::INJECTED;
        let mode = Value::String(self.mode.as_str().into());
        match self.view.meta {
            Some(meta) if meta.annotations.is_present() => {
                self.add(&["metadata", "annotations", key], &mode)
            }
            Some(_) => self.add(&["metadata", "annotations"], &json!({ key: mode })),
            None => self.add(&["metadata"], &json!({ "annotations": { key: mode } })),
        }
    }

    fn plan_dood(&mut self, targets: &[&'v Slot<'a>]) -> Result<(), Denial> {
        let cfg = self.cfg();
        self.check_volume_names_free(&[VOL_HOST_SOCKET])?;
        let socket = cfg.socket_path();
        let mut env = vec![("DOCKER_HOST", format!("unix://{socket}"), true)];
        // The node's daemon resolves bind sources on the node, where the
        // socket is at hostSocket: helpers that bind-mount the socket
        // (Testcontainers' Ryuk) need that path.
        if crate::pod::normalize_path(&cfg.dood.host_socket) != socket.as_str() {
            env.push((TC_SOCKET_OVERRIDE, cfg.dood.host_socket.clone(), false));
        }
        let wiring = Wiring {
            env,
            target_mount: json!({ "name": VOL_HOST_SOCKET, "mountPath": socket }),
            reserved_target_paths: vec![socket.clone()],
            group: cfg.dood.socket_group,
        };
        self.mark_injected();
        self.wire_targets(targets, &wiring)?;
        self.add_volumes(vec![json!({
            "name": VOL_HOST_SOCKET,
            "hostPath": { "path": cfg.dood.host_socket, "type": "Socket" },
        })]);
        if let Some(gid) = wiring.group {
            self.add_supplemental_group(gid);
        }
        self.merge_node_selector(&cfg.dood.node_selector);
        Ok(())
    }

    /// Adds the config's dood `nodeSelector`; a key the pod already selects on
    /// with another value keeps the pod's value, with a warning.
    fn merge_node_selector(&mut self, wanted: &BTreeMap<String, String>) {
        if wanted.is_empty() {
            return;
        }
        match self.view.spec.node_selector.as_ref() {
            Some(existing) => {
                for (k, v) in wanted {
                    match existing.get(k) {
                        Some(have) if have == v => {}
                        Some(have) => self.warn(format!(
                            "nodeSelector {k}={have} kept; dood expects {k}={v} (nodes with a docker daemon)"
                        )),
                        None => self.add(&["spec", "nodeSelector", k.as_str()], &Value::String(v.clone()),
                        ),
                    }
                }
            }
            None => {
                let map: Map<String, Value> = wanted
                    .iter()
                    .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                    .collect();
                self.add(&["spec", "nodeSelector"], &Value::Object(map));
            }
        }
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
        resources: ResourcesOut<'v>,
    ) -> Result<(), Denial> {
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
                    ("DOCKER_HOST", TLS_HOST.to_string(), true),
                    ("DOCKER_TLS_VERIFY", "1".to_string(), true),
                    ("DOCKER_CERT_PATH", CERTS_CLIENT_DIR.to_string(), true),
                ],
                target_mount: json!({
                    "name": VOL_CERTS, "mountPath": CERTS_CLIENT_DIR, "subPath": "client", "readOnly": true,
                }),
                reserved_target_paths: vec![CERTS_CLIENT_DIR.to_string()],
                group: None,
            }
        } else {
            let mut env = vec![("DOCKER_HOST", format!("unix://{socket}"), true)];
            // The rootless daemon sees the same socket file at its own
            // runtime directory, and resolves bind sources there.
            if rootless {
                env.push((
                    TC_SOCKET_OVERRIDE,
                    format!("{ROOTLESS_RUNTIME_DIR}/docker.sock"),
                    false,
                ));
            }
            Wiring {
                env,
                target_mount: json!({ "name": VOL_SOCKET, "mountPath": socket_dir }),
                reserved_target_paths: vec![socket_dir.to_string(), socket.clone()],
                group: Some(if rootless {
                    ROOTLESS_ID
                } else {
                    cfg.socket_group
                }),
            }
        };
        self.mark_injected();
        self.wire_targets(targets, &wiring)?;

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
        if cfg.mirror_mounts {
            self.mirror_mounts(targets, &own_paths, &mut daemon_mounts);
        }

        let daemon =
            self.daemon_container(sidecar, tls, resources, daemon_socket_dir, daemon_mounts);

        let mut volumes = Vec::new();
        volumes.push(json!({ "name": shared, "emptyDir": {} }));
        volumes.push(self.storage_volume());
        self.add_volumes(volumes);
        if let Some(gid) = wiring.group {
            self.add_supplemental_group(gid);
        }
        // Last: inserting at initContainers/0 shifts indices the target ops used.
        let spec = self.view.spec;
        match sidecar {
            Sidecar::Native => {
                if spec.init_containers.is_present() {
                    self.add(&["spec", "initContainers", "0"], &daemon);
                } else {
                    self.add(&["spec", "initContainers"], &[daemon]);
                }
            }
            Sidecar::Container => {
                self.warn(
                    "sidecar: container: the daemon may start after your containers, and Jobs will not \
                     complete while it runs"
                        .to_string(),
                );
                self.append(
                    spec.containers.is_present(),
                    &["spec", "containers"],
                    vec![daemon],
                );
            }
        }
        Ok(())
    }

    /// Mirrors the targets' mounts into the daemon (same volume, path and
    /// subPath) so that `docker run -v $PWD:/src` sees the app's files.
    fn mirror_mounts(
        &mut self,
        targets: &[&'v Slot<'a>],
        own: &[&str],
        out: &mut Vec<MountOut<'v>>,
    ) {
        let view = self.view;
        let ours = [VOL_SOCKET, VOL_STORAGE, VOL_CERTS, VOL_HOST_SOCKET];
        // Path -> (volume, subPath) of what is mirrored so far: one entry
        // per path, looked up once per mount (pods may have 1000 containers).
        let mut seen: HashMap<Cow<'a, str>, (&str, &str)> = HashMap::new();
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
                let skip = |reason: &str| {
                    format!(
                        "mount {name} at {path} (container {}) not mirrored into the daemon: {reason}",
                        t.name
                    )
                };
                if m.sub_path_expr.is_some() {
                    let w = skip("subPathExpr cannot be expanded there");
                    self.warn(w);
                    continue;
                }
                if let Some(p) = own.iter().find(|p| under(&path, p) || under(p, &path)) {
                    let w = skip(&format!("the daemon keeps its own {p}"));
                    self.warn(w);
                    continue;
                }
                if hides_system_path(&path) {
                    let w = skip("it would hide the daemon's own files");
                    self.warn(w);
                    continue;
                }
                if let Some(&(first, first_sub)) = seen.get(&path) {
                    if (first, first_sub) != (name, sub) {
                        let w = skip(&format!("the path already holds volume {first}"));
                        self.warn(w);
                    }
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
        resources: ResourcesOut<'v>,
        socket_dir: &str,
        mounts: Vec<MountOut<'v>>,
    ) -> DaemonOut<'v> {
        let cfg = self.cfg();
        let dind = &cfg.dind;
        let ann = self.ann;
        let rootless = self.mode == Mode::DindRootless;
        let image = match &ann.image {
            Some(image) => image.as_str(),
            None if rootless => dind.rootless_image.as_str(),
            None => dind.image.as_str(),
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
        });
        if rootless {
            env.push(EnvOut::new("XDG_RUNTIME_DIR", ROOTLESS_RUNTIME_DIR));
        }
        env.extend(dind.env.iter().map(|e| EnvOut::new(&e.name, &e.value)));

        let probe = if tls {
            ProbeCommand::Static(&PROBE_TLS)
        } else {
            ProbeCommand::Socket([
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
            command: if tls { &COMMAND_TLS } else { &COMMAND_SOCKET },
            args,
            env,
            security_context: SecurityOut {
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
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct DaemonOut<'a> {
    name: &'static str,
    image: &'a str,
    command: &'static RawValue,
    args: Vec<String>,
    env: Vec<EnvOut<'a>>,
    security_context: SecurityOut,
    startup_probe: ProbeOut,
    #[serde(skip_serializing_if = "Option::is_none")]
    resources: Option<ResourcesOut<'a>>,
    volume_mounts: Vec<MountOut<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    restart_policy: Option<&'static str>,
}

#[derive(Serialize)]
struct EnvOut<'a> {
    name: &'a str,
    value: Cow<'a, str>,
}

impl<'a> EnvOut<'a> {
    fn new(name: &'a str, value: &'a str) -> EnvOut<'a> {
        EnvOut {
            name,
            value: Cow::Borrowed(value),
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SecurityOut {
    privileged: bool,
    run_as_user: i64,
    run_as_group: i64,
    run_as_non_root: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ProbeOut {
    exec: ExecOut,
    period_seconds: u32,
    timeout_seconds: u32,
    failure_threshold: u32,
}

#[derive(Serialize)]
struct ExecOut {
    command: ProbeCommand,
}

#[derive(Serialize)]
#[serde(untagged)]
enum ProbeCommand {
    Static(&'static RawValue),
    Socket([String; 3]),
}

/// `requests`/`limits` of the daemon.
#[derive(Serialize)]
struct ResourcesOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    requests: Option<CpuMemory<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    limits: Option<CpuMemory<'a>>,
}

#[derive(Serialize)]
struct CpuMemory<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    cpu: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    memory: Option<&'a str>,
}

/// A volume mount, as the daemon gets it.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct MountOut<'a> {
    name: &'a str,
    mount_path: Cow<'a, str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sub_path: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    read_only: Option<bool>,
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
