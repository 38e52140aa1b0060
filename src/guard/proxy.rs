//! The guard's I/O: an HTTP/1.1 server on the pod's unix socket, a client to
//! the node's socket, and the per-endpoint handling that applies the rules.
//!
//! Bodies stream through untouched except the few the rules must read
//! (creates, exec, update, network connect), which are read up to
//! `body::MAX_BODY_BYTES`, checked, and written out again. Hijacked
//! connections (attach, exec start, BuildKit's `/session` and `/grpc`) are
//! answered `101 Switching Protocols` by dockerd; the guard then joins the
//! two upgraded connections and copies bytes both ways, half-closes
//! included (docker closes its write side to signal the end of stdin).

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Body as _;
use hyper::body::Bytes;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE, HOST, TRANSFER_ENCODING};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{UnixListener, UnixStream};

use super::body::{self, Json, MAX_BODY_BYTES};
use super::config::GuardConfig;
use super::create::{self, Denied, Need, Scope};
use super::drain::Unread;
use super::grpc;
use super::image;
use super::owner::{self, Kind};
use super::path::{self, percent_encode, ApiPath};
use super::query::{self, Query};
use super::subpath;
use crate::budget::{hold, Budget, Charge, ReadError};

/// A body error of any kind: the daemon's or the client's connection, or a
/// refusal the guard makes while a body streams through (`docker load`).
#[derive(Debug, thiserror::Error)]
enum BodyError {
    #[error(transparent)]
    Hyper(#[from] hyper::Error),
    #[error("{0}")]
    Refused(String),
}
type Body = BoxBody<Bytes, BodyError>;

fn hyper_error(e: hyper::Error) -> BodyError {
    BodyError::Hyper(e)
}

/// Connections served at once; more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 1024;
/// Time allowed for a request head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest response the guard reads to filter or to decide ownership.
const MAX_RESPONSE_BYTES: usize = 32 << 20;
/// Frames a streamed body may be read ahead of its writer (each at most
/// hyper's read buffer, about 400 KiB): 1.6 MiB per direction at most.
const RELAY_FRAMES: usize = 4;
/// Longest event line the guard holds to rewrite its names.
const MAX_EVENT_BYTES: usize = 1 << 20;
/// Buffer of each direction of a hijacked stream (attach, exec, BuildKit).
const HIJACK_BUFFER: usize = 64 << 10;
/// Bytes of bodies the guard holds whole at once, across all connections:
/// the requests it checks, the answers it rewrites or reads to decide, the
/// Solves it reads. Each has its own bound too (4, 32 and 16 MiB); this one
/// keeps many connections from adding them up past the container's memory
/// limit (128Mi by default: the budget, a parsed answer beside it, and the
/// guard's own few MiB).
const BUDGET_BYTES: usize = 48 << 20;
/// How long a read waits for its share of the budget before it is refused
/// (503), so that readers never wait for each other forever.
const BUDGET_WAIT: Duration = Duration::from_secs(5);

/// The guard's one [`Budget`] (one guard per process).
fn budget() -> &'static Budget {
    static BUDGET: std::sync::OnceLock<Budget> = std::sync::OnceLock::new();
    BUDGET.get_or_init(|| {
        Budget::new(
            BUDGET_BYTES,
            "bodies nestdock guard reads whole",
            "the guard's own, across all its connections",
        )
    })
}

/// Reads a body whole within `limit` and the [`budget`].
async fn read_whole<B>(body: B, limit: usize) -> Result<(Bytes, Charge), ReadError<B::Error>>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
{
    budget().read(body, limit, BUDGET_WAIT).await
}

struct State {
    cfg: GuardConfig,
    /// The API version the node's daemon speaks, asked once.
    daemon_api: tokio::sync::OnceCell<(u32, u32)>,
    /// Set when the pod ends: hijacked streams close.
    stopping: tokio::sync::watch::Sender<bool>,
}

impl State {
    fn new(cfg: GuardConfig) -> Self {
        State {
            cfg,
            daemon_api: tokio::sync::OnceCell::new(),
            stopping: tokio::sync::watch::Sender::new(false),
        }
    }

    /// Where the guard's second socket is, in its own view and as the
    /// node sees it, with the node's path of the pod's socket whose binds
    /// it replaces (see `subpath`): when the guard serves one.
    fn bind_socket(&self) -> Option<(PathBuf, String, String)> {
        let volume = self.cfg.bind_socket_volume.as_ref()?;
        let dir = self.cfg.pod_volumes_dir.as_ref()?;
        let listen = self.cfg.listen.strip_prefix(dir).ok()?.to_str()?;
        let root = self.empty_dir_root();
        Some((
            dir.join(volume).join("docker.sock"),
            format!("{root}/{listen}"),
            format!("{root}/{volume}/docker.sock"),
        ))
    }

    fn empty_dir_root(&self) -> String {
        create::empty_dir_root(&self.cfg.kubelet_root, &self.cfg.pod_uid)
    }
}

pub async fn serve(cfg: GuardConfig, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    use std::os::unix::fs::FileTypeExt as _;
    if let Ok(meta) = std::fs::symlink_metadata(&cfg.listen) {
        // A socket left by an earlier guard of this pod (a restart) is
        // replaced; anything else at that path is not ours to remove.
        if meta.file_type().is_socket() {
            std::fs::remove_file(&cfg.listen)?;
        } else {
            anyhow::bail!(
                "{} exists and is not a socket; refusing to replace it",
                cfg.listen.display()
            );
        }
    }
    let listener = listen_on(&cfg.listen, &cfg)?;
    let state = Arc::new(State::new(cfg));
    // The socket binds of the pod's socket get (see `subpath`): in a
    // volume only the guard mounts, so that the pod cannot swap it.
    let second = match state.bind_socket() {
        Some((path, _, _)) => {
            if let Ok(meta) = std::fs::symlink_metadata(&path) {
                if meta.file_type().is_socket() {
                    std::fs::remove_file(&path)?;
                }
            }
            Some(listen_on(&path, &state.cfg)?)
        }
        None => {
            if state.cfg.bind_socket_volume.is_some() {
                anyhow::bail!(
                    "--bind-socket-volume needs --pod-volumes-dir, and --listen below it"
                );
            }
            None
        }
    };
    let cfg = &state.cfg;
    tracing::info!(
        listen = %cfg.listen.display(),
        upstream = %cfg.upstream.display(),
        pod_uid = %cfg.pod_uid,
        "guard serving"
    );
    let listen_path = cfg.listen.clone();
    create_marker(&state).await;
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut connections = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        // Ended connections: their results are not kept.
        while connections.try_join_next().is_some() {}
        let Ok(slot) = slots.clone().acquire_owned().await else {
            break;
        };
        let stream = tokio::select! {
            _ = &mut shutdown => break,
            accepted = accept(&listener, second.as_ref()) => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let state = state.clone();
        connections.spawn(async move {
            let _slot = slot;
            serve_connection(state, stream).await;
        });
    }
    // No new connections from here on; the pod is ending (a native sidecar
    // gets SIGTERM once the pod's containers have exited). The connections
    // still open (the pod's sibling containers, say) are closed first, so
    // that nothing they hold, streams or the memory budget, delays the
    // cleanup.
    connections.abort_all();
    state.stopping.send_replace(true);
    while connections.join_next().await.is_some() {}
    let _ = std::fs::remove_file(&listen_path);
    if let Some((path, _, _)) = state.bind_socket() {
        let _ = std::fs::remove_file(path);
    }
    if let Some(limit) = state.cfg.cleanup_timeout {
        match tokio::time::timeout(limit, cleanup(&state)).await {
            Ok(removed) => tracing::info!(removed, "guard cleanup done"),
            Err(_) => tracing::warn!(
                "guard cleanup did not finish within {limit:?}; what is left is for `reap`"
            ),
        }
    }
    tracing::info!("guard stopped");
    Ok(())
}

/// A socket the pod's containers connect to, with the guard's mode and group.
fn listen_on(path: &Path, cfg: &GuardConfig) -> anyhow::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt as _;
    let listener = UnixListener::bind(path)
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(cfg.socket_mode))?;
    if let Some(gid) = cfg.socket_group {
        if let Err(e) = std::os::unix::fs::chown(path, None, Some(gid)) {
            tracing::warn!(
                "cannot give {} to group {gid}: {e}; only its owner can use it",
                path.display()
            );
        }
    }
    Ok(listener)
}

/// The next connection on either socket.
async fn accept(
    first: &UnixListener,
    second: Option<&UnixListener>,
) -> std::io::Result<(UnixStream, tokio::net::unix::SocketAddr)> {
    match second {
        Some(second) => tokio::select! {
            a = first.accept() => a,
            b = second.accept() => b,
        },
        None => first.accept().await,
    }
}

/// Removes the objects whose pod is not `alive` (see `guard::reap`).
pub async fn reap(
    upstream: &Path,
    alive: &dyn Fn(&str) -> bool,
    dry_run: bool,
) -> anyhow::Result<Vec<String>> {
    let state = State::new(GuardConfig {
        listen: Default::default(),
        upstream: upstream.to_path_buf(),
        pod_uid: String::new(),
        kubelet_root: String::new(),
        pod_volumes_dir: None,
        socket_mode: 0,
        socket_group: None,
        cleanup_timeout: None,
        mounts: Vec::new(),
        cgroup_parent: None,
        host_ports: Default::default(),
        bind_socket_volume: None,
    });
    // Every object that carries the label, whatever its value.
    let having = |label: &str| percent_encode(&format!(r#"{{"label":{{"{label}":true}}}}"#), b"");
    let filters = having(owner::POD_UID_LABEL);
    let mut removed = Vec::new();
    for (kind, list, delete, label) in [
        (
            "container",
            format!("/containers/json?all=1&filters={filters}"),
            "/containers/{}?force=1&v=1",
            owner::POD_UID_LABEL,
        ),
        (
            "network",
            format!("/networks?filters={filters}"),
            "/networks/{}",
            owner::POD_UID_LABEL,
        ),
        (
            "volume",
            format!("/volumes?filters={filters}"),
            "/volumes/{}",
            owner::POD_UID_LABEL,
        ),
        // The marker of a guard whose pod is gone: its image tags are free.
        (
            "volume",
            format!("/volumes?filters={}", having(owner::GUARD_OF_LABEL)),
            "/volumes/{}",
            owner::GUARD_OF_LABEL,
        ),
    ] {
        let (status, bytes) = ask(&state, Method::GET, &list, None).await.map_err(|_| {
            anyhow::anyhow!("the docker daemon at {} did not answer", upstream.display())
        })?;
        if !status.is_success() {
            anyhow::bail!(
                "listing {kind}s: {status}: {}",
                String::from_utf8_lossy(&bytes)
            );
        }
        let value: Json = serde_json::from_slice(&bytes)
            .map_err(|e| anyhow::anyhow!("listing {kind}s: not JSON: {e}"))?;
        let items = match &value {
            Json::Array(items) => items.clone(),
            other => match other.field("Volumes") {
                Some(Json::Array(items)) => items.clone(),
                _ => Vec::new(),
            },
        };
        for item in &items {
            let uid = item
                .field("Labels")
                .and_then(|l| l.entry(label))
                .and_then(Json::as_str)
                .unwrap_or("");
            if alive(uid) {
                continue;
            }
            let key = if kind == "volume" { "Name" } else { "Id" };
            let Some(id) = item.field(key).and_then(Json::as_str) else {
                continue;
            };
            let what = format!("{kind} {id} (pod {uid})");
            if !dry_run {
                let path = delete.replace("{}", &percent_encode(id, b""));
                match ask(&state, Method::DELETE, &path, None).await {
                    Ok((status, _)) if status.is_success() => {}
                    Ok((status, body)) => {
                        tracing::warn!(
                            "reap: {what} not removed: {status}: {}",
                            String::from_utf8_lossy(&body).trim()
                        );
                        continue;
                    }
                    Err(_) => {
                        tracing::warn!("reap: {what}: the daemon did not answer");
                        continue;
                    }
                }
            }
            removed.push(what);
        }
    }
    Ok(removed)
}

/// Removes everything the pod owns: containers (forced, with their
/// anonymous volumes), then networks, then volumes. Two passes, since a
/// request that was in flight when the listener closed may still create
/// something. Images stay: they are the node's shared cache. Returns how
/// many objects were removed.
async fn cleanup(state: &State) -> usize {
    let filters = match owner::with_pod_filter(None, &state.cfg.pod_uid) {
        Ok(f) => percent_encode(&f, b""),
        Err(_) => return 0,
    };
    let mut removed = 0;
    for _pass in 0..2 {
        for (list, field, delete) in [
            (
                format!("/containers/json?all=1&filters={filters}"),
                "Id",
                "/containers/{}?force=1&v=1",
            ),
            (format!("/networks?filters={filters}"), "Id", "/networks/{}"),
            (format!("/volumes?filters={filters}"), "Name", "/volumes/{}"),
            // The local volumes that bind the pod's emptyDirs (`subpath`).
            (
                format!(
                    "/volumes?filters={}",
                    percent_encode(
                        &format!(
                            r#"{{"label":{{"{}={}":true}}}}"#,
                            owner::GUARD_OF_LABEL,
                            state.cfg.pod_uid
                        ),
                        b""
                    )
                ),
                "Name",
                "/volumes/{}",
            ),
        ] {
            let Ok((status, bytes)) = ask(state, Method::GET, &list, None).await else {
                continue;
            };
            let Ok(value) = serde_json::from_slice::<Json>(&bytes) else {
                continue;
            };
            if !status.is_success() {
                continue;
            }
            let items = match &value {
                Json::Array(items) => items.as_slice(),
                other => match other.field("Volumes") {
                    Some(Json::Array(items)) => items.as_slice(),
                    _ => &[],
                },
            };
            for item in items {
                let Some(id) = item.field(field).and_then(Json::as_str) else {
                    continue;
                };
                if id == marker_name(&state.cfg.pod_uid) {
                    continue; // last, below
                }
                let path = delete.replace("{}", &percent_encode(id, b""));
                match ask(state, Method::DELETE, &path, None).await {
                    Ok((status, _)) if status.is_success() => removed += 1,
                    Ok((status, body)) => tracing::warn!(
                        id,
                        status = status.as_u16(),
                        "cleanup: not removed: {}",
                        String::from_utf8_lossy(&body).trim()
                    ),
                    Err(_) => tracing::warn!(id, "cleanup: the daemon did not answer"),
                }
            }
        }
    }
    // Last: the pod's image tags become free for other pods.
    let marker = format!(
        "/volumes/{}",
        percent_encode(&marker_name(&state.cfg.pod_uid), b"")
    );
    if let Ok((status, _)) = ask(state, Method::DELETE, &marker, None).await {
        if status.is_success() {
            removed += 1;
        }
    }
    removed
}

async fn serve_connection(state: Arc<State>, stream: UnixStream) {
    let service = hyper::service::service_fn(move |req| {
        let state = state.clone();
        async move { Ok::<_, Infallible>(handle(&state, req.map(Unread::new)).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    if let Err(e) = conn.await {
        tracing::debug!("connection ended: {e}");
    }
}

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never: Infallible| match never {})
        .boxed()
}

/// An answer in dockerd's shape: `{"message": "..."}`.
fn error(status: StatusCode, message: &str) -> Response<Body> {
    let body = serde_json::json!({ "message": message }).to_string();
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

fn refused(method: &Method, path: &str, status: StatusCode, message: &str) -> Response<Body> {
    tracing::info!(%method, path, status = status.as_u16(), "guard refused: {message}");
    error(status, message)
}

fn denied(method: &Method, path: &str, d: Denied) -> Response<Body> {
    let status = StatusCode::from_u16(d.status).unwrap_or(StatusCode::FORBIDDEN);
    refused(method, path, status, &d.message)
}

/// Why a request's headers are refused: form bodies, whose fields Go's
/// `ParseForm` puts *before* the query string's (a `filters` in the body
/// would replace the pod's filter in the query), and repeated
/// `Content-Type` headers.
fn header_problem(headers: &hyper::HeaderMap) -> Option<String> {
    let mut types = headers.get_all(CONTENT_TYPE).iter();
    let first = types.next();
    if types.next().is_some() {
        return Some("nestdock guard: more than one Content-Type header".into());
    }
    // Read as bytes: Go takes the media type even when the parameters after
    // it do not parse, so a value with odd bytes must not slip past.
    let media = first
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default();
    if media == "application/x-www-form-urlencoded" || media == "multipart/form-data" {
        return Some(format!(
            "nestdock guard: Content-Type {media} is refused: dockerd reads a form body's fields \
             as query parameters, ahead of the query string (send parameters in the query)"
        ));
    }
    None
}

async fn handle(state: &Arc<State>, req: Request<Unread>) -> Response<Body> {
    // Boxed once, so that a body read for the rules can be put back.
    let mut req = req.map(|b| b.map_err(hyper_error).boxed());
    let method = req.method().clone();
    let raw_path = req.uri().path().to_string();
    let path = match path::normalise(&raw_path) {
        Ok(p) => p,
        Err(e) => return refused(&method, &raw_path, StatusCode::BAD_REQUEST, &e.to_string()),
    };
    let shown = path.canonical();
    // `docker inspect NAME` tries every object type in turn and reports "No
    // such object" only if each answers 404: a plugin lookup answers as
    // dockerd does for a plugin that is not installed.
    if let (&Method::GET, ["plugins", name, "json"]) = (
        &method,
        path.segments
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .as_slice(),
    ) {
        return error(
            StatusCode::NOT_FOUND,
            &format!("plugin {:?} not found", name),
        );
    }
    if let Some(why) = path::refused_endpoint(&path) {
        return refused(&method, &shown, StatusCode::FORBIDDEN, &why);
    }
    let mut query = match query::parse(req.uri().query()) {
        Ok(q) => q,
        Err(e) => return refused(&method, &shown, StatusCode::BAD_REQUEST, &e),
    };
    if let Some(why) = header_problem(req.headers()) {
        return refused(&method, &shown, StatusCode::BAD_REQUEST, &why);
    }
    let uid = state.cfg.pod_uid.clone();
    let segments: Vec<&str> = path.segments.iter().map(String::as_str).collect();
    let mut path_out = path.clone();
    match (&method, segments.as_slice()) {
        // Lists, prunes and events: narrowed to the pod's own objects.
        (&Method::GET, ["containers", "json"])
        | (&Method::POST, ["containers", "prune"])
        | (&Method::GET, ["networks"])
        | (&Method::POST, ["networks", "prune"])
        | (&Method::GET, ["volumes"])
        | (&Method::POST, ["volumes", "prune"])
        | (&Method::POST, ["images", "prune"])
        | (&Method::GET, ["events"]) => {
            let filters = match query.single("filters") {
                Ok(f) => f.map(str::to_string),
                Err(e) => return refused(&method, &shown, StatusCode::BAD_REQUEST, &e),
            };
            let list = (method == Method::GET && segments[0] != "events").then(|| segments[0]);
            // A list's `name` filter is applied here, to the names the pod
            // sees; prunes and events have none worth keeping from dockerd.
            let (filters, names) = match list {
                Some(_) => match owner::take_name_filter(filters.as_deref()) {
                    Ok(split) => split,
                    Err(e) => return refused(&method, &shown, StatusCode::BAD_REQUEST, &e),
                },
                None if segments[0] == "events" => {
                    match owner::with_private_event_names(filters.as_deref(), &uid) {
                        Ok(f) => (f, owner::NameFilter::default()),
                        Err(e) => return refused(&method, &shown, StatusCode::BAD_REQUEST, &e),
                    }
                }
                None => (filters, owner::NameFilter::default()),
            };
            match owner::with_pod_filter(filters.as_deref(), &uid) {
                Ok(f) => query.set("filters", f),
                Err(e) => return refused(&method, &shown, StatusCode::BAD_REQUEST, &e),
            }
            let resp = forward(state, req, &path_out, &query, None).await;
            let publish_list = |v: &mut Json, uid: &str| {
                match list {
                    Some("containers") => owner::publish_container_names(v, uid),
                    Some("networks") => owner::publish_network_names(v, uid),
                    _ => owner::publish_volume_names(v, uid),
                }
                names.apply(v);
            };
            match list {
                Some(_) if !resp.status().is_success() => publish_errors(resp, &uid).await,
                Some(_) => rewrite_json(resp, |v| publish_list(v, &uid)).await,
                None if segments[0] == "events" && resp.status().is_success() => {
                    publish_events(resp, uid.clone())
                }
                None => resp,
            }
        }
        (&Method::GET, ["system", "df"]) => system_df(state, req, &path_out, &query).await,
        // The build cache is shared by every pod on the node: pruning it
        // through the guard is accepted and does nothing.
        (&Method::POST, ["build", "prune"]) => {
            tracing::info!("guard: build cache prune answered without pruning (shared cache)");
            let mut resp = Response::new(full(r#"{"CachesDeleted":null,"SpaceReclaimed":0}"#));
            resp.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            resp
        }
        (&Method::POST, ["containers", "create"]) => {
            let mut body = match read_json(&mut req).await {
                Ok(b) => b,
                Err(resp) => return resp,
            };
            let scope = Scope {
                uid: &uid,
                kubelet_root: &state.cfg.kubelet_root,
                host_ports: &state.cfg.host_ports,
            };
            let public = query.single("name").ok().flatten().map(str::to_string);
            if let Err(d) = create::container_name(&mut query, &uid) {
                return denied(&method, &shown, d);
            }
            if let Some(name) = public {
                create::alias_public_name(&mut body, &name);
            }
            // Same paths: sources as the pod sees them, moved to the node's.
            let root = scope.empty_dir_root();
            super::binds::translate(&mut body, &state.cfg.mounts, &root);
            let needs = match create::container_create(&mut body, &scope) {
                Ok(n) => n,
                Err(d) => return denied(&method, &shown, d),
            };
            let ids = match resolve(state, &needs).await {
                Ok(ids) => ids,
                Err(resp) => return resp,
            };
            create::pin_refs(&mut body, &|kind, r: &str| {
                ids.get(&(kind, r.to_string())).cloned()
            });
            let binding = subpath::Binding {
                uid: &uid,
                empty_dir_root: &root,
                socket: state.bind_socket().map(|(_, from, to)| (from, to)),
                daemon_api: daemon_api(state).await,
            };
            let rewritten = match subpath::rewrite(&mut body, &binding) {
                Ok(r) => r,
                Err(d) => return denied(&method, &shown, d),
            };
            if let Err(why) = make_directories(state, &rewritten.directories) {
                return refused(&method, &shown, StatusCode::BAD_REQUEST, &why);
            }
            if rewritten.subpath_mounts {
                let (major, minor) = subpath::SUBPATH_API;
                let older = path_out
                    .version
                    .as_deref()
                    .and_then(subpath::parse_api)
                    .is_some_and(|v| v < subpath::SUBPATH_API);
                if older {
                    path_out.version = Some(format!("{major}.{minor}"));
                }
            }
            if let Some(parent) = &state.cfg.cgroup_parent {
                super::cgroup::place(&mut body, parent);
            }
            let resp = forward(state, req, &path_out, &query, Some(body.to_bytes())).await;
            publish_errors(resp, &uid).await
        }
        (_, ["containers", id, rest @ ..]) => {
            let full_id = match owned(state, Kind::Container, id).await {
                Ok(Some(full)) => full,
                Ok(None) => {
                    return refused(
                        &method,
                        &shown,
                        StatusCode::NOT_FOUND,
                        &owner::not_found(Kind::Container, id),
                    )
                }
                Err(resp) => return resp,
            };
            path_out.segments[1] = full_id;
            let body = match (&method, rest) {
                (&Method::POST, ["exec"]) => match read_json(&mut req).await {
                    Ok(b) => match create::exec_create(&b) {
                        Ok(()) => Some(b.to_bytes()),
                        Err(d) => return denied(&method, &shown, d),
                    },
                    Err(resp) => return resp,
                },
                (&Method::POST, ["rename"]) => {
                    if let Err(d) = create::container_name(&mut query, &uid) {
                        return denied(&method, &shown, d);
                    }
                    None
                }
                (&Method::POST, ["update"]) => match read_json(&mut req).await {
                    Ok(b) => match create::container_update(&b) {
                        Ok(()) => Some(b.to_bytes()),
                        Err(d) => return denied(&method, &shown, d),
                    },
                    Err(resp) => return resp,
                },
                _ => None,
            };
            let inspect = method == Method::GET && rest == ["json"];
            let resp = forward(state, req, &path_out, &query, body).await;
            if inspect {
                publish_names(resp, &uid).await
            } else {
                publish_errors(resp, &uid).await
            }
        }
        (_, ["exec", id, ..]) => match owned(state, Kind::Exec, id).await {
            Ok(Some(_)) => forward(state, req, &path_out, &query, None).await,
            Ok(None) => refused(
                &method,
                &shown,
                StatusCode::NOT_FOUND,
                &owner::not_found(Kind::Exec, id),
            ),
            Err(resp) => resp,
        },
        (&Method::POST, ["networks", "create"]) => {
            let mut body = match read_json(&mut req).await {
                Ok(b) => b,
                Err(resp) => return resp,
            };
            if let Err(d) = create::network_create(&mut body, &uid) {
                return denied(&method, &shown, d);
            }
            let resp = forward(state, req, &path_out, &query, Some(body.to_bytes())).await;
            publish_errors(resp, &uid).await
        }
        (_, ["networks", id, rest @ ..]) => {
            match owned(state, Kind::Network, id).await {
                Ok(Some(full_id)) => path_out.segments[1] = full_id,
                Ok(None) => {
                    return refused(
                        &method,
                        &shown,
                        StatusCode::NOT_FOUND,
                        &owner::not_found(Kind::Network, id),
                    )
                }
                Err(resp) => return resp,
            }
            let body = if method == Method::POST && matches!(rest, ["connect"] | ["disconnect"]) {
                let b = match read_json(&mut req).await {
                    Ok(b) => b,
                    Err(resp) => return resp,
                };
                let mut b = b;
                let needs = match create::network_connect(&b) {
                    Ok(n) => n,
                    Err(d) => return denied(&method, &shown, d),
                };
                let ids = match resolve(state, &needs).await {
                    Ok(ids) => ids,
                    Err(resp) => return resp,
                };
                if let Some(full_id) = ids.values().next().filter(|_| ids.len() == 1) {
                    b.set_field("Container", Json::String(full_id.clone()));
                    if rest == ["connect"] {
                        match find(state, Kind::Container, full_id).await {
                            Ok(Found::Owned(_, stored)) => {
                                create::alias_on_connect(&mut b, &owner::public_name(&uid, &stored))
                            }
                            Ok(_) => {}
                            Err(resp) => return resp,
                        }
                    }
                }
                Some(b.to_bytes())
            } else {
                None
            };
            let inspect = method == Method::GET && rest.is_empty();
            let resp = forward(state, req, &path_out, &query, body).await;
            if inspect {
                publish(resp, &uid, owner::publish_network_names).await
            } else {
                publish_errors(resp, &uid).await
            }
        }
        (&Method::POST, ["volumes", "create"]) => {
            let mut body = match read_json(&mut req).await {
                Ok(b) => b,
                Err(resp) => return resp,
            };
            if let Err(d) = create::volume_create(&mut body, &uid) {
                return denied(&method, &shown, d);
            }
            let resp = forward(state, req, &path_out, &query, Some(body.to_bytes())).await;
            publish(resp, &uid, owner::publish_volume_names).await
        }
        (_, ["volumes", name, rest @ ..]) => match owned(state, Kind::Volume, name).await {
            Ok(Some(stored)) => {
                path_out.segments[1] = stored;
                let inspect = method == Method::GET && rest.is_empty();
                let resp = forward(state, req, &path_out, &query, None).await;
                if inspect {
                    publish(resp, &uid, owner::publish_volume_names).await
                } else {
                    publish_errors(resp, &uid).await
                }
            }
            Ok(None) => refused(
                &method,
                &shown,
                StatusCode::NOT_FOUND,
                &owner::not_found(Kind::Volume, name),
            ),
            Err(resp) => resp,
        },
        (&Method::POST, ["images", "create"]) => {
            if let Err(d) = create::image_create(&query) {
                return denied(&method, &shown, d);
            }
            let checked = if param(&query, "fromSrc").is_ok_and(|s| !s.is_empty()) {
                // An import: labelled with the pod, like a build.
                query.push("changes", owner::label_change(&uid));
                tag_write_allowed(state, &query, "repo", "tag").await
            } else {
                pull_allowed(state, &query).await
            };
            match checked {
                Ok(()) => forward(state, req, &path_out, &query, None).await,
                Err(resp) => resp,
            }
        }
        (&Method::POST, ["images", "load"]) => load(state, req, &path_out, &query).await,
        (&Method::POST, ["images", name @ .., "tag"]) if !name.is_empty() => {
            match retag_allowed(state, &name.join("/"), &query).await {
                Ok(()) => forward(state, req, &path_out, &query, None).await,
                Err(resp) => resp,
            }
        }
        (&Method::POST, ["images", name @ .., "push"]) if !name.is_empty() => {
            match push_allowed(state, &name.join("/"), &query).await {
                Ok(()) => forward(state, req, &path_out, &query, None).await,
                Err(resp) => resp,
            }
        }
        (&Method::DELETE, ["images", name @ ..]) if !name.is_empty() => {
            let name = name.join("/");
            match inspect_image(state, &name).await {
                Ok(Some((_, owner))) => {
                    let owner = alive_owner(state, owner).await;
                    if let Some(why) = image::refuse_remove(&name, owner.as_deref(), &uid) {
                        return refused(&method, &shown, StatusCode::FORBIDDEN, &why);
                    }
                    forward(state, req, &path_out, &query, None).await
                }
                Ok(None) => forward(state, req, &path_out, &query, None).await,
                Err(resp) => resp,
            }
        }
        (&Method::POST, ["build"]) => {
            if let Err(d) = create::build(&mut query, &uid) {
                return denied(&method, &shown, d);
            }
            if let Some(parent) = &state.cfg.cgroup_parent {
                query.set("cgroupparent", parent.clone());
            }
            let mut tags = Vec::new();
            for t in query.all("t") {
                match image::normalise(t) {
                    Ok(t) => tags.push(t),
                    Err(e) => return refused(&method, &shown, StatusCode::BAD_REQUEST, &e),
                }
            }
            match tags_writable(state, &tags, None).await {
                Ok(()) => forward(state, req, &path_out, &query, None).await,
                Err(resp) => resp,
            }
        }
        (_, ["commit"]) => {
            let container = match query.single("container") {
                Ok(Some(c)) => c.to_string(),
                Ok(None) => String::new(),
                Err(e) => return refused(&method, &shown, StatusCode::BAD_REQUEST, &e),
            };
            match owned(state, Kind::Container, &container).await {
                Ok(Some(full_id)) => {
                    query.set("container", full_id);
                    query.push("changes", owner::label_change(&uid));
                    if let Err(resp) = tag_write_allowed(state, &query, "repo", "tag").await {
                        return resp;
                    }
                    forward(state, req, &path_out, &query, None).await
                }
                Ok(None) => refused(
                    &method,
                    &shown,
                    StatusCode::NOT_FOUND,
                    &owner::not_found(Kind::Container, &container),
                ),
                Err(resp) => resp,
            }
        }
        // Everything else the allow list admits (ping, version, info,
        // images, distribution, auth, session, grpc) passes as it is.
        _ => forward(state, req, &path_out, &query, None).await,
    }
}

/// A query parameter given at most once (empty when absent).
fn param(query: &Query, key: &str) -> Result<String, String> {
    query.single(key).map(|v| v.unwrap_or("").to_string())
}

/// The tag the `repo` and `tag` parameters name (see [`image::repo_tag`]).
fn named_tag(query: &Query, repo: &str, tag: &str) -> Result<Option<String>, String> {
    image::repo_tag(&param(query, repo)?, &param(query, tag)?)
}

/// The answer for a parameter or image reference that does not read.
fn bad_request(why: String) -> Response<Body> {
    error(StatusCode::BAD_REQUEST, &why)
}

/// The name of the marker volume a guard keeps while its pod lives: a tag
/// whose owner has no marker belongs to a pod that is gone, and is free.
fn marker_name(uid: &str) -> String {
    format!("nestdock-guard-{uid}")
}

/// Creates the pod's marker volume (see [`marker_name`]).
async fn create_marker(state: &State) {
    let body = serde_json::json!({
        "Name": marker_name(&state.cfg.pod_uid),
        "Labels": { owner::GUARD_OF_LABEL: state.cfg.pod_uid },
    });
    match ask(
        state,
        Method::POST,
        "/volumes/create",
        Some(body.to_string().into_bytes()),
    )
    .await
    {
        Ok((status, _)) if status.is_success() => {}
        Ok((status, bytes)) => tracing::warn!(
            status = status.as_u16(),
            "cannot create the pod's marker volume (its image tags look unowned to other \
             pods): {}",
            String::from_utf8_lossy(&bytes).trim()
        ),
        Err(_) => {
            tracing::warn!("cannot create the pod's marker volume: the daemon did not answer")
        }
    }
}

/// `owner` when that pod is alive (its guard's marker volume exists).
async fn alive_owner(state: &State, owner: Option<String>) -> Option<String> {
    let uid = owner?;
    if uid == state.cfg.pod_uid {
        return Some(uid);
    }
    let path = format!("/volumes/{}", percent_encode(&marker_name(&uid), b""));
    match ask(state, Method::GET, &path, None).await {
        Ok((status, _)) if status == StatusCode::NOT_FOUND => None,
        // When in doubt, the tag stays held.
        _ => Some(uid),
    }
}

/// Every tag on the node the pod may not move: the node's own, and those
/// of pods that are alive.
async fn held_tags(state: &State) -> Result<HashMap<String, image::Held>, Response<Body>> {
    let (status, bytes) = ask(state, Method::GET, "/images/json", None).await?;
    let list = match serde_json::from_slice::<Json>(&bytes) {
        Ok(list) if status.is_success() => list,
        _ => {
            return Err(error(
                StatusCode::BAD_GATEWAY,
                &format!("nestdock guard: the daemon's image list did not come ({status})"),
            ))
        }
    };
    let mut held = image::held_tags(&list, &state.cfg.pod_uid);
    let mut owners: Vec<String> = held.values().filter_map(|h| h.owner.clone()).collect();
    owners.sort_unstable();
    owners.dedup();
    for uid in owners {
        if alive_owner(state, Some(uid.clone())).await.is_none() {
            held.retain(|_, h| h.owner.as_deref() != Some(uid.as_str()));
        }
    }
    Ok(held)
}

/// An image's id and the pod its label names; `None` when there is no such
/// image.
async fn inspect_image(
    state: &State,
    name: &str,
) -> Result<Option<(String, Option<String>)>, Response<Body>> {
    let path = format!("/images/{}/json", percent_encode(name, b":@/"));
    let (status, bytes) = ask(state, Method::GET, &path, None).await?;
    if status == StatusCode::NOT_FOUND {
        return Ok(None);
    }
    match serde_json::from_slice::<Json>(&bytes) {
        Ok(value) if status.is_success() => {
            let id = value.field("Id").and_then(Json::as_str).unwrap_or("");
            let owner = image::owner_of(value.field("Config").and_then(|c| c.field("Labels")));
            Ok(Some((id.to_string(), owner)))
        }
        _ => Err(error(
            StatusCode::BAD_GATEWAY,
            &format!("nestdock guard: the daemon's image inspect answer did not come ({status})"),
        )),
    }
}

/// Refuses when one of `tags` (normalised) is held by the node or another
/// pod, unless it already points at `source` (tagging again is no change).
async fn tags_writable(
    state: &State,
    tags: &[String],
    source: Option<&str>,
) -> Result<(), Response<Body>> {
    if tags.is_empty() {
        return Ok(());
    }
    let held = held_tags(state).await?;
    for tag in tags {
        let h = held.get(tag).filter(|h| Some(h.image.as_str()) != source);
        if let Some(why) = image::refuse_write(tag, h) {
            return Err(refused(&Method::POST, tag, StatusCode::FORBIDDEN, &why));
        }
    }
    Ok(())
}

/// The tag named by the `repo` and `tag` parameters (import, commit) may be
/// set by the pod.
async fn tag_write_allowed(
    state: &State,
    query: &Query,
    repo: &str,
    tag: &str,
) -> Result<(), Response<Body>> {
    let target = named_tag(query, repo, tag).map_err(bad_request)?;
    tags_writable(state, &target.into_iter().collect::<Vec<_>>(), None).await
}

/// `POST /images/{name}/tag`: the target may be set by the pod, or already
/// points at the same image.
async fn retag_allowed(state: &State, source: &str, query: &Query) -> Result<(), Response<Body>> {
    let Some(target) = named_tag(query, "repo", "tag").map_err(bad_request)? else {
        return Ok(()); // dockerd answers a tag without repo itself.
    };
    let Some((id, _)) = inspect_image(state, source).await? else {
        return Ok(()); // dockerd answers "No such image".
    };
    tags_writable(state, &[target], Some(&id)).await
}

/// The tags a pull or push of `name` with `tag` acts on: one, or with
/// neither a tag nor a digest, every tag of the repository.
fn tags_of<'a>(
    held: &'a HashMap<String, image::Held>,
    name: &str,
    tag: &str,
) -> Result<Vec<(&'a String, &'a image::Held)>, String> {
    let tail = name.rsplit('/').next().unwrap_or(name);
    if tag.is_empty() && !tail.contains(':') && !name.contains('@') {
        let repo = image::normalise(name)?;
        let repo = image::repository(&repo).to_string();
        return Ok(held
            .iter()
            .filter(|(t, _)| image::repository(t) == repo)
            .collect());
    }
    let target = image::repo_tag(name, tag)?;
    Ok(target
        .and_then(|t| held.get_key_value(&t))
        .into_iter()
        .collect())
}

/// A pull may refresh the node's tags, never another pod's.
async fn pull_allowed(state: &State, query: &Query) -> Result<(), Response<Body>> {
    let name = param(query, "fromImage").map_err(bad_request)?;
    if name.is_empty() {
        return Ok(());
    }
    let tag = param(query, "tag").map_err(bad_request)?;
    let held = held_tags(state).await?;
    for (t, h) in tags_of(&held, &name, &tag).map_err(bad_request)? {
        if h.owner.is_some() {
            let why = image::refuse_write(t, Some(h)).unwrap_or_default();
            return Err(refused(&Method::POST, t, StatusCode::FORBIDDEN, &why));
        }
    }
    Ok(())
}

/// A push of another pod's tag is refused.
async fn push_allowed(state: &State, name: &str, query: &Query) -> Result<(), Response<Body>> {
    let tag = param(query, "tag").map_err(bad_request)?;
    let held = held_tags(state).await?;
    for (t, h) in tags_of(&held, name, &tag).map_err(bad_request)? {
        if let Some(why) = image::refuse_push(t, Some(h)) {
            return Err(refused(&Method::POST, t, StatusCode::FORBIDDEN, &why));
        }
    }
    Ok(())
}

/// `POST /images/load`: the archive streams through while the guard reads
/// the tags it sets; at the first tag the pod may not set, the upload is cut
/// off before that part reaches dockerd (which unpacks the whole archive
/// before it tags anything, so nothing is loaded) and the load is refused.
async fn load(
    state: &Arc<State>,
    mut req: Request<Body>,
    path: &ApiPath,
    query: &Query,
) -> Response<Body> {
    let held = match held_tags(state).await {
        Ok(h) => h,
        Err(resp) => return resp,
    };
    let verdict = Arc::new(std::sync::Mutex::new(None));
    let mut upload = std::mem::replace(req.body_mut(), full(Bytes::new()));
    let hint = upload.size_hint();
    let (tx, rx) = tokio::sync::mpsc::channel(RELAY_FRAMES);
    let refusal = verdict.clone();
    // The upload goes through a task that reads each frame before passing
    // it on (as `relay` does), so a refused one never reaches dockerd.
    let checker = tokio::spawn(async move {
        let mut check = LoadCheck::default();
        while let Some(frame) = upload.frame().await {
            let why = match &frame {
                Ok(f) => f.data_ref().and_then(|d| check.refusal(&held, d)),
                Err(_) => None,
            };
            if let Some(why) = why {
                if let Ok(mut v) = refusal.lock() {
                    *v = Some(why.clone());
                }
                let _ = tx.send(Err(BodyError::Refused(why))).await;
                drop(tx);
                // The rest of the upload is read and dropped, so that the
                // client, still writing, reads the refusal, not a broken pipe.
                while let Some(Ok(_)) = upload.frame().await {}
                return;
            }
            let failed = frame.is_err();
            if tx.send(frame).await.is_err() || failed {
                return;
            }
        }
    });
    *req.body_mut() = Relayed { rx, hint }.boxed();
    let resp = forward(state, req, path, query, None).await;
    let why = verdict.lock().ok().and_then(|mut v| v.take());
    let Some(why) = why else {
        return resp;
    };
    let _ = checker.await;
    refused(&Method::POST, "/images/load", StatusCode::FORBIDDEN, &why)
}

/// What a `docker load` archive sets, read as it streams. dockerd's image
/// store reads `manifest.json` and ignores the legacy `repositories` and the
/// OCI `index.json` when it is there; only `manifest.json` says which image
/// a tag gets. So a tag that another pod (or the node) holds is refused at
/// once when `manifest.json` would move it, and otherwise, when only the
/// other files name it, at the archive's end unless `manifest.json` has
/// kept it by then (loading the image the tag already has moves nothing).
#[derive(Default)]
struct LoadCheck {
    scan: image::TarScan,
    /// Held tags that `manifest.json` points at the image they have.
    kept: HashSet<String>,
    /// Held tags that only `repositories` or `index.json` named so far (a
    /// set: however often an archive repeats them, at most the held tags).
    pending: HashSet<String>,
}

impl LoadCheck {
    /// Why the next bytes are refused: a tag the pod may not set, or an
    /// archive the scan cannot follow.
    fn refusal(&mut self, held: &HashMap<String, image::Held>, data: &[u8]) -> Option<String> {
        let files = match self.scan.feed(data) {
            Ok(files) => files,
            Err(why) => return Some(why),
        };
        for (file, bytes) in files {
            let tags = match image::archive_tags(file, &bytes) {
                Ok(tags) => tags,
                Err(why) => return Some(why),
            };
            for t in tags {
                let Some(h) = held.get(&t.tag) else { continue };
                if file != "manifest.json" {
                    self.pending.insert(t.tag);
                } else if t.keeps(h) {
                    self.kept.insert(t.tag);
                } else {
                    return image::refuse_write(&t.tag, Some(h));
                }
            }
        }
        if self.scan.ended() {
            let moved = self.pending.iter().find(|t| !self.kept.contains(*t))?;
            return image::refuse_write(moved, held.get(moved));
        }
        None
    }
}

/// Reads a request body the rules must see.
async fn read_json(req: &mut Request<Body>) -> Result<Json, Response<Body>> {
    let method = req.method().clone();
    let shown = req.uri().path().to_string();
    let body = std::mem::replace(req.body_mut(), full(Bytes::new()));
    // The charge goes when the checked body has been parsed: what is sent on
    // is written from the parsed value, and streams to the daemon.
    let (bytes, _charge) = match read_whole(body, MAX_BODY_BYTES).await {
        Ok(read) => read,
        Err(e) => {
            let (status, msg) = match e {
                ReadError::TooLarge(_) => (
                    StatusCode::PAYLOAD_TOO_LARGE,
                    body::BodyError::TooLarge(MAX_BODY_BYTES).to_string(),
                ),
                ReadError::Budget(e) => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("nestdock guard: {e}"),
                ),
                ReadError::Body(e) => (
                    StatusCode::BAD_REQUEST,
                    format!("nestdock guard: cannot read the request body: {e}"),
                ),
            };
            return Err(refused(&method, &shown, status, &msg));
        }
    };
    // dockerd reads an empty body as "no options".
    let bytes = if bytes.iter().all(u8::is_ascii_whitespace) {
        Bytes::from_static(b"{}")
    } else {
        bytes
    };
    body::parse(&bytes).map_err(|e| {
        let status = match e {
            body::BodyError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            _ => StatusCode::BAD_REQUEST,
        };
        refused(&method, &shown, status, &e.to_string())
    })
}

/// Sends one request to the node's daemon on a connection of its own (so a
/// hijacked stream never shares one).
async fn send(state: &State, req: Request<Body>) -> Result<Response<Incoming>, Response<Body>> {
    let unreachable = |e: &dyn std::fmt::Display| {
        tracing::warn!("upstream {}: {e}", state.cfg.upstream.display());
        error(
            StatusCode::BAD_GATEWAY,
            &format!(
                "nestdock guard: cannot reach the node's docker daemon at {}: {e}",
                state.cfg.upstream.display()
            ),
        )
    };
    let stream = UnixStream::connect(&state.cfg.upstream)
        .await
        .map_err(|e| unreachable(&e))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| unreachable(&e))?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!("upstream connection ended: {e}");
        }
    });
    sender.send_request(req).await.map_err(|e| unreachable(&e))
}

fn upstream_uri(path: &ApiPath, query: &Query) -> String {
    let q = query.encode();
    if q.is_empty() {
        path.upstream()
    } else {
        format!("{}?{q}", path.upstream())
    }
}

/// Forwards a request (its body streamed, or `body` in its place) and
/// streams the answer back; joins the two sides of a hijacked connection.
async fn forward(
    state: &Arc<State>,
    mut req: Request<Body>,
    path: &ApiPath,
    query: &Query,
    body: Option<Vec<u8>>,
) -> Response<Body> {
    let client_upgrade = hyper::upgrade::on(&mut req);
    let (parts, incoming) = req.into_parts();
    let mut builder = Request::builder()
        .method(parts.method)
        .uri(upstream_uri(path, query));
    let mut headers = parts.headers;
    // Headers about this hop only. The upstream connection is used for this
    // one request; `Connection` and `Upgrade` stay (hijacks need them).
    for name in ["keep-alive", "proxy-connection", "te", "trailer"] {
        headers.remove(name);
    }
    // hyper has already framed the body it hands over; one framing header
    // goes on, never both (a request with both is read differently by
    // different servers).
    if headers.contains_key(TRANSFER_ENCODING) {
        headers.remove(CONTENT_LENGTH);
    }
    if !headers.contains_key(HOST) {
        headers.insert(HOST, HeaderValue::from_static("docker"));
    }
    let body = match body {
        Some(bytes) => {
            headers.remove(TRANSFER_ENCODING);
            headers.insert(CONTENT_LENGTH, HeaderValue::from(bytes.len()));
            full(bytes)
        }
        None => relay(incoming),
    };
    if let Some(h) = builder.headers_mut() {
        *h = headers;
    }
    let upstream_req = match builder.body(body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("nestdock guard: cannot forward the request: {e}"),
            )
        }
    };
    let mut resp = match send(state, upstream_req).await {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let upstream_upgrade = hyper::upgrade::on(&mut resp);
        // BuildKit's control API is read, not copied (`grpc`).
        let grpc = path.segments.len() == 1 && path.segments[0] == "grpc";
        let grpc_state = grpc.then(|| state.clone());
        let mut stopping = state.stopping.subscribe();
        let stream = async move {
            match tokio::try_join!(client_upgrade, upstream_upgrade) {
                Ok((client, upstream)) if grpc_state.is_some() => {
                    if let Some(state) = grpc_state {
                        grpc_proxy(state, client, upstream).await;
                    }
                }
                Ok((client, upstream)) => {
                    let mut client = TokioIo::new(client);
                    let mut upstream = TokioIo::new(upstream);
                    if let Err(e) = tokio::io::copy_bidirectional_with_sizes(
                        &mut client,
                        &mut upstream,
                        HIJACK_BUFFER,
                        HIJACK_BUFFER,
                    )
                    .await
                    {
                        tracing::debug!("hijacked stream ended: {e}");
                    }
                }
                Err(e) => tracing::warn!("hijacked stream not joined: {e}"),
            }
        };
        tokio::spawn(async move {
            tokio::select! {
                () = stream => {}
                _ = stopping.wait_for(|stop| *stop) => {}
            }
        });
    }
    resp.map(|b| relay(b.map_err(hyper_error).boxed()))
}

/// BuildKit's control API on a hijacked connection: served here as HTTP/2,
/// each call forwarded on an HTTP/2 connection over the daemon's side of
/// the hijack, `Control/Solve` read and rewritten on the way (`grpc`).
async fn grpc_proxy(
    state: Arc<State>,
    client: hyper::upgrade::Upgraded,
    upstream: hyper::upgrade::Upgraded,
) {
    let executor = hyper_util::rt::TokioExecutor::new();
    let (sender, conn) =
        match hyper::client::conn::http2::handshake(executor.clone(), upstream).await {
            Ok(pair) => pair,
            Err(e) => {
                tracing::warn!("BuildKit: no HTTP/2 connection to the daemon: {e}");
                return;
            }
        };
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!("BuildKit: the daemon's connection ended: {e}");
        }
    });
    let service = hyper::service::service_fn(move |req| {
        let state = state.clone();
        let sender = sender.clone();
        async move { Ok::<_, Infallible>(grpc_call(&state, sender, req).await) }
    });
    if let Err(e) = hyper::server::conn::http2::Builder::new(executor)
        .serve_connection(client, service)
        .await
    {
        tracing::debug!("BuildKit: the client's connection ended: {e}");
    }
}

/// One gRPC call: forwarded, a Solve read first (bounded) and refused with
/// gRPC's `PERMISSION_DENIED` or sent rewritten.
async fn grpc_call(
    state: &State,
    mut sender: hyper::client::conn::http2::SendRequest<Body>,
    req: Request<Incoming>,
) -> Response<Body> {
    let (mut parts, body) = req.into_parts();
    let body = if let Some(call) = grpc::Call::of(parts.uri.path()) {
        let (bytes, _charge) = match read_whole(body, grpc::MAX_SOLVE_BYTES).await {
            Ok(read) => read,
            // RESOURCE_EXHAUSTED: BuildKit's clients report it as it is.
            Err(ReadError::Budget(e)) => return grpc_error(8, &format!("nestdock guard: {e}")),
            Err(e) => {
                return grpc_error(
                    3,
                    &format!(
                        "nestdock guard: BuildKit Solve: the request cannot be read (at most {} \
                         bytes): {e}",
                        grpc::MAX_SOLVE_BYTES
                    ),
                )
            }
        };
        let policy = grpc::Policy {
            uid: &state.cfg.pod_uid,
            cgroup_parent: state.cfg.cgroup_parent.as_deref(),
        };
        let solve = match grpc::solve(call, &bytes, &policy) {
            Ok(s) => s,
            Err(why) => {
                tracing::info!("guard refused: {why}");
                return grpc_error(7, &why);
            }
        };
        if let Err(why) = solve_tags_allowed(state, &solve.tags).await {
            tracing::info!("guard refused: {why}");
            return grpc_error(7, &why);
        }
        parts.headers.remove(CONTENT_LENGTH);
        full(solve.body)
    } else {
        body.map_err(hyper_error).boxed()
    };
    if sender.ready().await.is_err() {
        return grpc_error(
            14,
            "nestdock guard: the daemon's BuildKit connection is gone",
        );
    }
    match sender.send_request(Request::from_parts(parts, body)).await {
        Ok(resp) => resp.map(|b| b.map_err(hyper_error).boxed()),
        Err(e) => grpc_error(
            14,
            &format!("nestdock guard: the daemon did not answer: {e}"),
        ),
    }
}

/// The tags a BuildKit image export would set may be set by the pod.
async fn solve_tags_allowed(state: &State, tags: &[String]) -> Result<(), String> {
    let tags = tags
        .iter()
        .map(|t| image::normalise(t))
        .collect::<Result<Vec<_>, _>>()?;
    if tags.is_empty() {
        return Ok(());
    }
    let held = held_tags(state)
        .await
        .map_err(|_| "nestdock guard: the daemon's image list did not come".to_string())?;
    for tag in &tags {
        if let Some(why) = image::refuse_write(tag, held.get(tag)) {
            return Err(why);
        }
    }
    Ok(())
}

/// A gRPC error as a trailers-only answer: HTTP 200 with `grpc-status`
/// and a percent-encoded `grpc-message`.
fn grpc_error(code: u8, message: &str) -> Response<Body> {
    let mut encoded = String::with_capacity(message.len());
    for b in message.bytes() {
        if (0x20..0x7f).contains(&b) && b != b'%' {
            encoded.push(b as char);
        } else {
            encoded.push_str(&format!("%{b:02X}"));
        }
    }
    let mut resp = Response::new(full(Bytes::new()));
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    h.insert("grpc-status", HeaderValue::from(u16::from(code)));
    if let Ok(v) = HeaderValue::from_str(&encoded) {
        h.insert("grpc-message", v);
    }
    resp
}

/// A body read by a task of its own, up to [`RELAY_FRAMES`] frames ahead of
/// the side that writes it out: the connection it comes from keeps reading
/// while the other writes (hyper hands a body over one frame at a time, so
/// without this, reading and writing take turns).
fn relay(mut body: Body) -> Body {
    if body.is_end_stream() {
        return body;
    }
    let hint = body.size_hint();
    let (tx, rx) = tokio::sync::mpsc::channel(RELAY_FRAMES);
    tokio::spawn(async move {
        while let Some(frame) = body.frame().await {
            let failed = frame.is_err();
            // The other side is gone: dropping the body ends this side too.
            if tx.send(frame).await.is_err() || failed {
                break;
            }
        }
    });
    Relayed { rx, hint }.boxed()
}

/// The events stream, each event (a line of JSON) with the pod's names,
/// rewritten as it streams: a line is held until its end, up to
/// [`MAX_EVENT_BYTES`] (past that it goes on as it is).
fn publish_events(resp: Response<Body>, uid: String) -> Response<Body> {
    let (mut parts, mut body) = resp.into_parts();
    parts.headers.remove(CONTENT_LENGTH);
    let (tx, rx) = tokio::sync::mpsc::channel(RELAY_FRAMES);
    tokio::spawn(async move {
        let mut line: Vec<u8> = Vec::new();
        let mut ended = false;
        while !ended {
            let mut out = Vec::new();
            match body.frame().await {
                Some(Ok(frame)) => {
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    for piece in data.split_inclusive(|&b| b == b'\n') {
                        line.extend_from_slice(piece);
                        if line.ends_with(b"\n") {
                            out.extend(owner::publish_event(line.trim_ascii_end(), &uid));
                            out.push(b'\n');
                            line.clear();
                        } else if line.len() > MAX_EVENT_BYTES {
                            out.append(&mut line);
                        }
                    }
                }
                Some(Err(e)) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
                None => {
                    ended = true;
                    if !line.is_empty() {
                        out.extend(owner::publish_event(&line, &uid));
                    }
                }
            }
            if !out.is_empty()
                && tx
                    .send(Ok(hyper::body::Frame::data(Bytes::from(out))))
                    .await
                    .is_err()
            {
                return;
            }
        }
    });
    let body = Relayed {
        rx,
        hint: hyper::body::SizeHint::default(),
    };
    Response::from_parts(parts, body.boxed())
}

struct Relayed {
    rx: tokio::sync::mpsc::Receiver<Result<hyper::body::Frame<Bytes>, BodyError>>,
    /// The relayed body's size, as it said when relaying began (hyper frames
    /// a known length with Content-Length).
    hint: hyper::body::SizeHint,
}

impl hyper::body::Body for Relayed {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, BodyError>>> {
        self.rx.poll_recv(cx)
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.hint
    }
}

/// A request of the guard's own to the node's daemon, its answer read whole.
async fn ask(
    state: &State,
    method: Method,
    path: &str,
    body: Option<Vec<u8>>,
) -> Result<(StatusCode, Bytes), Response<Body>> {
    let mut builder = Request::builder()
        .method(method)
        .uri(path)
        .header(HOST, "docker");
    let body = match body {
        Some(b) => {
            builder = builder.header(CONTENT_TYPE, "application/json");
            full(b)
        }
        None => full(Bytes::new()),
    };
    let req = builder.body(body).map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            &format!("nestdock guard: bad object reference: {e}"),
        )
    })?;
    let resp = send(state, req).await?;
    let status = resp.status();
    // Callers read the answer at once; the charge goes with this call.
    let (bytes, _charge) = read_whole(resp.into_body(), MAX_RESPONSE_BYTES)
        .await
        .map_err(answer_unread)?;
    Ok((status, bytes))
}

/// What the daemon says of an object the pod names.
enum Found {
    /// The pod's own: its full id (a volume's: its name) and its stored
    /// name.
    Owned(String, String),
    /// Another pod's, or nobody's.
    Foreign,
    Missing,
}

async fn find(state: &State, kind: Kind, id: &str) -> Result<Found, Response<Body>> {
    if id.is_empty() {
        return Ok(Found::Missing);
    }
    // A container is named as the pod named it (stored with the pod's
    // prefix); an id or id prefix is looked up as it is.
    if kind != Kind::Exec && owner::is_name(id) {
        let private = owner::private_name(&state.cfg.pod_uid, id);
        if let found @ Found::Owned(..) = Box::pin(find_as_is(state, kind, &private)).await? {
            return Ok(found);
        }
    }
    find_as_is(state, kind, id).await
}

async fn find_as_is(state: &State, kind: Kind, id: &str) -> Result<Found, Response<Body>> {
    let enc = percent_encode(id, b":@");
    let path = match kind {
        Kind::Container => format!("/containers/{enc}/json"),
        Kind::Network => format!("/networks/{enc}"),
        Kind::Volume => format!("/volumes/{enc}"),
        Kind::Exec => format!("/exec/{enc}/json"),
    };
    let (status, bytes) = ask(state, Method::GET, &path, None).await?;
    if status == StatusCode::NOT_FOUND {
        return Ok(Found::Missing);
    }
    if !status.is_success() {
        let mut resp = Response::new(full(bytes));
        *resp.status_mut() = status;
        resp.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        return Err(resp);
    }
    let Ok(value) = serde_json::from_slice::<Json>(&bytes) else {
        return Err(error(
            StatusCode::BAD_GATEWAY,
            "nestdock guard: the daemon's inspect answer is not JSON",
        ));
    };
    if kind == Kind::Exec {
        let container = value
            .field("ContainerID")
            .and_then(Json::as_str)
            .unwrap_or("")
            .to_string();
        return Ok(
            match Box::pin(find(state, Kind::Container, &container)).await? {
                Found::Owned(..) => Found::Owned(id.to_string(), id.to_string()),
                _ => Found::Foreign,
            },
        );
    }
    if !owner::owned_by(&value, kind, &state.cfg.pod_uid) {
        return Ok(Found::Foreign);
    }
    let text = |key: &str| {
        value
            .field(key)
            .and_then(Json::as_str)
            .unwrap_or(id)
            .trim_start_matches('/')
            .to_string()
    };
    let key = if kind == Kind::Volume { "Name" } else { "Id" };
    Ok(Found::Owned(text(key), text("Name")))
}

/// The pod's object `id`, by its full id, or `None` when it is not the pod's.
async fn owned(state: &State, kind: Kind, id: &str) -> Result<Option<String>, Response<Body>> {
    Ok(match find(state, kind, id).await? {
        Found::Owned(full, _) => Some(full),
        _ => None,
    })
}

/// Checks the objects a create names; creates the named volumes that do not
/// exist yet, labelled (dockerd would create them unlabelled).
/// What each reference of a request resolved to: a container's full id, a
/// network's or volume's stored name.
type Pins = std::collections::HashMap<(Kind, String), String>;

async fn resolve(state: &State, needs: &[Need]) -> Result<Pins, Response<Body>> {
    let mut pins = Pins::new();
    let refuse = |field: &str, what: String| {
        error(
            StatusCode::FORBIDDEN,
            &format!("nestdock guard: {field}: {what} (only this pod's objects may be used)"),
        )
    };
    for need in needs {
        match need {
            Need::Container { field, id } => match owned(state, Kind::Container, id).await? {
                Some(full) => {
                    pins.insert((Kind::Container, id.clone()), full);
                }
                None => return Err(refuse(field, owner::not_found(Kind::Container, id))),
            },
            Need::Network { field, name } => match find(state, Kind::Network, name).await? {
                Found::Owned(_, stored) => {
                    pins.insert((Kind::Network, name.clone()), stored);
                }
                _ => return Err(refuse(field, owner::not_found(Kind::Network, name))),
            },
            Need::Volume { field, name } => match find(state, Kind::Volume, name).await? {
                Found::Owned(_, stored) => {
                    pins.insert((Kind::Volume, name.clone()), stored);
                }
                Found::Foreign => return Err(refuse(field, owner::not_found(Kind::Volume, name))),
                Found::Missing => {
                    if !owner::is_name(name) {
                        return Err(error(
                            StatusCode::BAD_REQUEST,
                            &format!(
                                "nestdock guard: {field}: volume name {} cannot be read \
                                 (expected [a-zA-Z0-9][a-zA-Z0-9_.-]*)",
                                crate::validate::shown(name)
                            ),
                        ));
                    }
                    let stored = owner::private_name(&state.cfg.pod_uid, name);
                    pins.insert((Kind::Volume, name.clone()), stored.clone());
                    let mut body = Json::Object(vec![("Name".into(), Json::String(stored))]);
                    owner::label_body(&mut body, &state.cfg.pod_uid);
                    let (status, bytes) = ask(
                        state,
                        Method::POST,
                        "/volumes/create",
                        Some(body.to_bytes()),
                    )
                    .await?;
                    if !status.is_success() {
                        let mut resp = Response::new(full(bytes));
                        *resp.status_mut() = status;
                        return Err(resp);
                    }
                }
            },
            Need::HostPath { field, volume, .. } => {
                if let Some(dir) = &state.cfg.pod_volumes_dir {
                    let is_dir =
                        std::fs::symlink_metadata(dir.join(volume)).is_ok_and(|m| m.is_dir());
                    if !is_dir {
                        return Err(error(
                            StatusCode::FORBIDDEN,
                            &format!(
                                "nestdock guard: {field}: the pod has no emptyDir volume {volume:?}"
                            ),
                        ));
                    }
                }
            }
        }
    }
    Ok(pins)
}

/// The API version the node's daemon speaks (`GET /version`), asked once
/// per guard; `None` while the daemon does not say.
async fn daemon_api(state: &State) -> Option<(u32, u32)> {
    state
        .daemon_api
        .get_or_try_init(|| async {
            let (status, bytes) = ask(state, Method::GET, "/version", None)
                .await
                .map_err(|_| ())?;
            if !status.is_success() {
                return Err(());
            }
            let v: Json = serde_json::from_slice(&bytes).map_err(|_| ())?;
            v.field("ApiVersion")
                .and_then(Json::as_str)
                .and_then(subpath::parse_api)
                .ok_or(())
        })
        .await
        .ok()
        .copied()
}

/// Creates the missing directories of `-v` binds below a volume's root, as
/// dockerd creates a missing `-v` source (a subpath must exist). Through
/// the guard's own view of the pod's volumes: a link the pod put on the way
/// leads nowhere outside them there, and dockerd resolves the subpath
/// inside the volume anyway.
fn make_directories(state: &State, dirs: &[(String, Vec<String>)]) -> Result<(), String> {
    let Some(root) = &state.cfg.pod_volumes_dir else {
        return Ok(());
    };
    for (volume, rest) in dirs {
        let mut path = root.join(volume);
        path.extend(rest);
        if path.exists() {
            continue;
        }
        if let Err(e) = std::fs::create_dir_all(&path) {
            return Err(format!(
                "nestdock guard: HostConfig.Binds: cannot create {} in the pod's volume \
                 {volume:?}: {e} (create it first)",
                rest.join("/")
            ));
        }
    }
    Ok(())
}

/// Reads a JSON answer whole (bounded) to rewrite it; an answer that is not
/// JSON, or too large, is an error of the guard's.
async fn rewrite_json(resp: Response<Body>, f: impl FnOnce(&mut Json)) -> Response<Body> {
    let (mut parts, body) = resp.into_parts();
    let (bytes, charge) = match read_whole(body, MAX_RESPONSE_BYTES).await {
        Ok(read) => read,
        Err(e) => return answer_unread(e),
    };
    let Ok(mut value) = serde_json::from_slice::<Json>(&bytes) else {
        return error(
            StatusCode::BAD_GATEWAY,
            "nestdock guard: the daemon's answer is not JSON",
        );
    };
    drop(bytes);
    f(&mut value);
    let out = value.to_bytes();
    drop(value);
    parts.headers.remove(TRANSFER_ENCODING);
    parts
        .headers
        .insert(CONTENT_LENGTH, HeaderValue::from(out.len()));
    // The answer keeps the read's share of the budget until the client has
    // taken it: a client that does not read holds its answer, not more.
    Response::from_parts(parts, hold(full(out), charge).boxed())
}

/// The daemon's answer could not be read whole: too large, the budget
/// spent, or the connection gone.
fn answer_unread<E: std::fmt::Display>(e: ReadError<E>) -> Response<Body> {
    let status = match e {
        ReadError::Budget(_) => StatusCode::SERVICE_UNAVAILABLE,
        ReadError::TooLarge(_) | ReadError::Body(_) => StatusCode::BAD_GATEWAY,
    };
    error(
        status,
        &format!("nestdock guard: cannot read the daemon's answer: {e}"),
    )
}

/// A successful answer's names, as the pod named them.
async fn publish(resp: Response<Body>, uid: &str, f: fn(&mut Json, &str)) -> Response<Body> {
    if !resp.status().is_success() {
        return publish_errors(resp, uid).await;
    }
    rewrite_json(resp, |v| f(v, uid)).await
}

/// Container names in a list or inspect answer, as the pod named them.
async fn publish_names(resp: Response<Body>, uid: &str) -> Response<Body> {
    if !resp.status().is_success() {
        return publish_errors(resp, uid).await;
    }
    rewrite_json(resp, |v| owner::publish_container_names(v, uid)).await
}

/// dockerd's error messages quote stored names (`The container name
/// "/nd_<uid>_db" is already in use`): the pod sees its own.
async fn publish_errors(resp: Response<Body>, uid: &str) -> Response<Body> {
    let is_json = resp
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(resp.status().is_client_error() || resp.status().is_server_error()) || !is_json {
        return resp;
    }
    let prefix = owner::name_prefix(uid);
    rewrite_json(resp, |v| {
        if let Some(Json::String(m)) = v.field_mut("message") {
            *m = m.replace(&prefix, "");
        }
    })
    .await
}

/// `GET /system/df`: the pod's containers and volumes, and the shared images
/// and build cache.
async fn system_df(
    state: &Arc<State>,
    req: Request<Body>,
    path: &ApiPath,
    query: &Query,
) -> Response<Body> {
    let resp = forward(state, req, path, query, None).await;
    if !resp.status().is_success() {
        return resp;
    }
    rewrite_json(resp, |df| owner::filter_df(df, &state.cfg.pod_uid)).await
}
