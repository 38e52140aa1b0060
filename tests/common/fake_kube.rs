//! A small fake Kubernetes API server for tests and benches: plain HTTP on
//! 127.0.0.1, serving real Kubernetes JSON for what nestdock's namespace cache
//! asks (the requests kube-runtime 5's `watcher` makes with its default
//! `ListWatch` strategy):
//!
//! - `GET /version`: a full `version.Info`;
//! - `GET /api/v1/namespaces?limit=500[&continue=T]`: a `NamespaceList` page
//!   with `metadata.resourceVersion` (and `continue` while more remain);
//! - `GET /api/v1/namespaces?watch=true&timeoutSeconds=290&allowWatchBookmarks=true&resourceVersion=N`:
//!   a chunked stream of newline-delimited watch events, kept open; the events
//!   after `N` are replayed first, and an `N` older than the fake's history
//!   gets the API server's `410 Expired` ERROR event (the watcher relists);
//!   `sendInitialEvents=true` (streaming lists) is answered too;
//! - `GET /api/v1/namespaces/{name}`: the Namespace, or a 404 `Status`.
//!
//! Tests drive it from plain threads: change labels (each change bumps the
//! resourceVersion and is pushed to open watches), add a namespace without
//! telling the watches (watch lag), hold list requests until released, take
//! the API away and bring it back, and count requests per path. It runs its
//! own tokio runtime on a background thread and writes a kubeconfig that
//! points at it.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Map, Value};
use tokio::sync::{mpsc, oneshot, watch};

/// How the API goes away in [`FakeKube::go_down`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outage {
    /// Connections are accepted and closed at once (an API server restarting,
    /// a network cut).
    Unreachable,
    /// Every request gets `503 ServiceUnavailable` (a load balancer with no
    /// healthy API server behind it).
    Unavailable,
}

/// A running fake API server; stopped when dropped.
pub struct FakeKube {
    addr: SocketAddr,
    shared: Arc<Shared>,
    /// Holds the kubeconfig written by [`FakeKube::kubeconfig`].
    dir: OnceLock<tempfile::TempDir>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

struct Shared {
    state: Mutex<State>,
    /// True while list requests wait (see [`FakeKube::hold_lists`]).
    lists_held: watch::Sender<bool>,
    requests: Mutex<HashMap<String, usize>>,
    /// Every request's path and query, in order.
    log: Mutex<Vec<String>>,
}

struct State {
    /// `version.Info.minor`, e.g. "31".
    minor: String,
    /// The last resourceVersion handed out.
    rv: u64,
    uids: u64,
    /// Namespaces by name, as JSON without `apiVersion`/`kind` (the shape of
    /// a list item).
    namespaces: BTreeMap<String, String>,
    /// Watch event lines since `oldest_rv`, for watches that resume.
    history: Vec<(u64, Bytes)>,
    /// A watch from a resourceVersion below this gets `410 Expired`.
    oldest_rv: u64,
    watches: Vec<mpsc::UnboundedSender<Bytes>>,
    outage: Option<Outage>,
    /// When set, `/version` answers this HTTP status with a `Status` body.
    version_error: Option<u16>,
    /// Open connections, to cut them when the API goes down.
    conns: Vec<tokio::task::AbortHandle>,
    lists: usize,
    watch_count: usize,
}

/// Labels as the tests write them.
pub type Labels<'a> = &'a [(&'a str, &'a str)];

impl FakeKube {
    /// Starts a fake API server whose `/version` says `1.<minor>`.
    pub fn start(minor: &str) -> FakeKube {
        let std_listener =
            std::net::TcpListener::bind("127.0.0.1:0").expect("fake API: bind 127.0.0.1:0");
        std_listener
            .set_nonblocking(true)
            .expect("fake API: non-blocking listener");
        let addr = std_listener.local_addr().expect("fake API: local address");
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                minor: minor.to_string(),
                rv: 1000,
                uids: 0,
                namespaces: BTreeMap::new(),
                history: Vec::new(),
                oldest_rv: 0,
                watches: Vec::new(),
                outage: None,
                version_error: None,
                conns: Vec::new(),
                lists: 0,
                watch_count: 0,
            }),
            lists_held: watch::channel(false).0,
            requests: Mutex::new(HashMap::new()),
            log: Mutex::new(Vec::new()),
        });
        let (stop_tx, stop_rx) = oneshot::channel();
        let server_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("fake-kube".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("fake API: runtime");
                rt.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(std_listener)
                        .expect("fake API: tokio listener");
                    serve(listener, server_shared, stop_rx).await;
                });
            })
            .expect("fake API: thread");
        FakeKube {
            addr,
            shared,
            dir: OnceLock::new(),
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kubeconfig whose only cluster is this fake (no authentication), in
    /// a temporary directory removed when the fake is dropped.
    pub fn kubeconfig(&self) -> PathBuf {
        let dir = self.dir.get_or_init(|| {
            tempfile::Builder::new()
                .prefix("nestdock-fake-kube-")
                .tempdir()
                .expect("fake API: temp dir")
        });
        let path = dir.path().join("kubeconfig.yaml");
        if !path.exists() {
            self.write_kubeconfig(&path);
        }
        path
    }

    /// Writes a kubeconfig for this fake at `path` (for a fake that is never
    /// dropped, to keep it out of the system temp dir).
    pub fn write_kubeconfig(&self, path: &Path) {
        let addr = self.addr;
        std::fs::write(
            path,
            format!(
                "apiVersion: v1\n\
                 kind: Config\n\
                 clusters:\n\
                 - name: fake\n  cluster:\n    server: http://{addr}\n\
                 contexts:\n\
                 - name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: default\n\
                 current-context: fake\n\
                 users:\n\
                 - name: fake\n  user: {{}}\n"
            ),
        )
        .unwrap_or_else(|e| panic!("fake API: write {}: {e}", path.display()));
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.shared.state.lock().unwrap()
    }

    /// Changes what `/version` reports from now on.
    pub fn set_minor(&self, minor: &str) {
        self.state().minor = minor.to_string();
    }

    /// Makes `/version` fail with `code` (e.g. 500) from now on, or answer
    /// again with `None`.
    pub fn fail_version(&self, code: Option<u16>) {
        self.state().version_error = code;
    }

    /// Creates the namespace (ADDED) or replaces its labels (MODIFIED), and
    /// tells open watches. `kubernetes.io/metadata.name` is kept, as the API
    /// server does.
    pub fn set_labels(&self, name: &str, labels: Labels<'_>) {
        let labels: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.state().upsert(name, |existing| {
            let mut l = labels.clone();
            if let Some(auto) = existing.get("kubernetes.io/metadata.name") {
                l.insert("kubernetes.io/metadata.name".into(), auto.clone());
            }
            l
        });
    }

    /// Sets one label (creating the namespace when needed), telling watches.
    pub fn set_label(&self, name: &str, key: &str, value: &str) {
        self.state().upsert(name, |existing| {
            let mut l = existing.clone();
            l.insert(key.to_string(), value.to_string());
            l
        });
    }

    /// Removes one label, telling watches.
    pub fn remove_label(&self, name: &str, key: &str) {
        self.state().upsert(name, |existing| {
            let mut l = existing.clone();
            l.remove(key);
            l
        });
    }

    /// Deletes the namespace (DELETED to watches).
    pub fn delete(&self, name: &str) {
        let mut st = self.state();
        let Some(json) = st.namespaces.remove(name) else {
            return;
        };
        let mut obj: Value = serde_json::from_str(&json).unwrap();
        st.rv += 1;
        let rv = st.rv;
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        obj["metadata"]["deletionTimestamp"] = json!("2025-01-15T10:00:00Z");
        obj["status"] = json!({"phase": "Terminating"});
        let json = serde_json::to_string(&obj).unwrap();
        st.publish(rv, "DELETED", &json);
    }

    /// Adds a namespace that watches are not told about (watch lag): only a
    /// list or a direct GET shows it.
    pub fn create_unannounced(&self, name: &str, labels: Labels<'_>) {
        let mut st = self.state();
        st.rv += 1;
        st.uids += 1;
        let labels = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let obj = namespace_object(name, labels, st.rv, st.uids);
        st.namespaces
            .insert(name.to_string(), serde_json::to_string(&obj).unwrap());
    }

    /// Stores a full Namespace object as given (managedFields, annotations and
    /// all), without telling watches; its resourceVersion is set. For seeding
    /// before a client starts (the bench's 10,000 namespaces).
    pub fn insert_object_unannounced(&self, mut obj: Value) {
        let name = obj["metadata"]["name"]
            .as_str()
            .expect("a Namespace has metadata.name")
            .to_string();
        let map = obj.as_object_mut().expect("a Namespace is an object");
        map.remove("apiVersion");
        map.remove("kind");
        let mut st = self.state();
        st.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(st.rv.to_string());
        st.namespaces
            .insert(name, serde_json::to_string(&obj).unwrap());
    }

    /// From now on list requests wait until [`FakeKube::release_lists`]
    /// (they are counted on arrival).
    pub fn hold_lists(&self) {
        self.shared.lists_held.send_replace(true);
    }

    pub fn release_lists(&self) {
        self.shared.lists_held.send_replace(false);
    }

    /// Takes the API away: open watches and connections are cut, and new
    /// requests fail the way `outage` says. Changes made meanwhile are kept
    /// but reach no watch.
    pub fn go_down(&self, outage: Outage) {
        let mut st = self.state();
        st.outage = Some(outage);
        st.watches.clear();
        for conn in st.conns.drain(..) {
            conn.abort();
        }
    }

    /// Brings the API back as a restarted API server would: its watch history
    /// is gone, so a watch resuming from an older resourceVersion gets
    /// `410 Expired` and the client must relist.
    pub fn come_up(&self) {
        let mut st = self.state();
        st.outage = None;
        st.history.clear();
        st.oldest_rv = st.rv;
    }

    /// Requests so far to `path` (query not included; lists and watches of
    /// `/api/v1/namespaces` both count there).
    pub fn requests(&self, path: &str) -> usize {
        self.shared
            .requests
            .lock()
            .unwrap()
            .get(path)
            .copied()
            .unwrap_or(0)
    }

    /// Every request so far, as `path?query` (the query as sent).
    pub fn request_log(&self) -> Vec<String> {
        self.shared.log.lock().unwrap().clone()
    }

    /// List requests (pages) of `/api/v1/namespaces` answered or waiting.
    pub fn lists(&self) -> usize {
        self.state().lists
    }

    /// Watch requests of `/api/v1/namespaces`.
    pub fn watches(&self) -> usize {
        self.state().watch_count
    }

    /// Watches open now.
    pub fn open_watches(&self) -> usize {
        let mut st = self.state();
        st.watches.retain(|w| !w.is_closed());
        st.watches.len()
    }

    pub fn len(&self) -> usize {
        self.state().namespaces.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for FakeKube {
    fn drop(&mut self) {
        self.release_lists();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl State {
    /// Creates or updates `name` with the labels `f` computes from the
    /// current ones, and publishes ADDED or MODIFIED.
    fn upsert(
        &mut self,
        name: &str,
        f: impl FnOnce(&BTreeMap<String, String>) -> BTreeMap<String, String>,
    ) {
        self.rv += 1;
        let rv = self.rv;
        let (kind, json) = match self.namespaces.get(name) {
            Some(json) => {
                let mut obj: Value = serde_json::from_str(json).unwrap();
                let current: BTreeMap<String, String> =
                    serde_json::from_value(obj["metadata"]["labels"].clone()).unwrap_or_default();
                obj["metadata"]["labels"] = json!(f(&current));
                obj["metadata"]["resourceVersion"] = json!(rv.to_string());
                ("MODIFIED", serde_json::to_string(&obj).unwrap())
            }
            None => {
                self.uids += 1;
                let mut labels = f(&BTreeMap::new());
                labels.insert("kubernetes.io/metadata.name".into(), name.to_string());
                let obj = namespace_object(name, labels, rv, self.uids);
                ("ADDED", serde_json::to_string(&obj).unwrap())
            }
        };
        self.namespaces.insert(name.to_string(), json.clone());
        self.publish(rv, kind, &json);
    }

    fn publish(&mut self, rv: u64, kind: &str, json: &str) {
        let line = event_line(kind, json);
        self.history.push((rv, line.clone()));
        self.watches.retain(|w| w.send(line.clone()).is_ok());
    }
}

/// A Namespace as `kubectl create namespace` leaves it (list-item shape: no
/// apiVersion/kind).
fn namespace_object(name: &str, mut labels: BTreeMap<String, String>, rv: u64, uid: u64) -> Value {
    labels.insert("kubernetes.io/metadata.name".into(), name.to_string());
    json!({
        "metadata": {
            "name": name,
            "uid": format!("0b6f4c2e-8a1d-4e3b-9c5f-{uid:012x}"),
            "resourceVersion": rv.to_string(),
            "creationTimestamp": "2025-01-15T09:30:00Z",
            "labels": labels,
            "managedFields": [{
                "manager": "kubectl-create",
                "operation": "Update",
                "apiVersion": "v1",
                "time": "2025-01-15T09:30:00Z",
                "fieldsType": "FieldsV1",
                "fieldsV1": {"f:metadata": {"f:labels": {".": {}, "f:kubernetes.io/metadata.name": {}}}}
            }]
        },
        "spec": {"finalizers": ["kubernetes"]},
        "status": {"phase": "Active"}
    })
}

/// The object with `apiVersion` and `kind` first, as GET and watch send it.
fn with_type_meta(json: &str) -> String {
    let rest = json.strip_prefix('{').unwrap_or(json);
    if rest.starts_with('}') {
        r#"{"apiVersion":"v1","kind":"Namespace"}"#.to_string()
    } else {
        format!(r#"{{"apiVersion":"v1","kind":"Namespace",{rest}"#)
    }
}

fn event_line(kind: &str, json: &str) -> Bytes {
    Bytes::from(format!(
        "{{\"type\":\"{kind}\",\"object\":{}}}\n",
        with_type_meta(json)
    ))
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code
    })
}

// ---------------------------------------------------------------- HTTP

/// A whole body, or a watch stream that ends when its sender is dropped or
/// at `timeoutSeconds`.
enum FakeBody {
    Full(Option<Bytes>),
    Stream {
        rx: mpsc::UnboundedReceiver<Bytes>,
        deadline: Pin<Box<tokio::time::Sleep>>,
    },
}

impl Body for FakeBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            FakeBody::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            FakeBody::Stream { rx, deadline } => {
                if let Poll::Ready(item) = rx.poll_recv(cx) {
                    return Poll::Ready(item.map(|b| Ok(Frame::data(b))));
                }
                if deadline.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(None);
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, FakeBody::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            FakeBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            FakeBody::Full(None) => SizeHint::with_exact(0),
            FakeBody::Stream { .. } => SizeHint::default(),
        }
    }
}

fn respond(code: StatusCode, body: impl Into<Bytes>) -> Response<FakeBody> {
    let mut response = Response::new(FakeBody::Full(Some(body.into())));
    *response.status_mut() = code;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn respond_status(code: u16, reason: &str, message: &str) -> Response<FakeBody> {
    respond(
        StatusCode::from_u16(code).unwrap(),
        serde_json::to_vec(&status(code, reason, message)).unwrap(),
    )
}

async fn serve(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    mut stop: oneshot::Receiver<()>,
) {
    loop {
        let tcp = tokio::select! {
            _ = &mut stop => return,
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        if shared.state.lock().unwrap().outage == Some(Outage::Unreachable) {
            drop(tcp);
            continue;
        }
        let _ = tcp.set_nodelay(true);
        let conn_shared = shared.clone();
        let task = tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let shared = conn_shared.clone();
                async move { Ok::<_, Infallible>(handle(&shared, request).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
        let mut st = shared.state.lock().unwrap();
        st.conns.retain(|c| !c.is_finished());
        st.conns.push(task.abort_handle());
    }
}

/// Decodes `%XX` and `+` in a query component.
fn decode(s: &str) -> String {
    let hex = |b: u8| (b as char).to_digit(16);
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(hi), Some(lo)) => {
                    out.push((hi * 16 + lo) as u8);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn query(request: &Request<Incoming>) -> HashMap<String, String> {
    request
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (decode(k), decode(v)),
            None => (decode(p), String::new()),
        })
        .collect()
}

async fn handle(shared: &Shared, request: Request<Incoming>) -> Response<FakeBody> {
    let path = request.uri().path().to_string();
    shared.log.lock().unwrap().push(
        request
            .uri()
            .path_and_query()
            .map_or(path.clone(), |pq| pq.as_str().to_string()),
    );
    *shared
        .requests
        .lock()
        .unwrap()
        .entry(path.clone())
        .or_default() += 1;
    if shared.state.lock().unwrap().outage == Some(Outage::Unavailable) {
        return respond_status(
            503,
            "ServiceUnavailable",
            "the server is currently unable to handle the request",
        );
    }
    if request.method() != Method::GET {
        return respond_status(
            405,
            "MethodNotAllowed",
            &format!("the fake API serves GET only, not {}", request.method()),
        );
    }
    let q = query(&request);
    if path == "/version" {
        let (minor, error) = {
            let st = shared.state.lock().unwrap();
            (st.minor.clone(), st.version_error)
        };
        if let Some(code) = error {
            return respond_status(code, "InternalError", "version is unavailable");
        }
        return respond(StatusCode::OK, version_info(&minor).to_string());
    }
    if path == "/api/v1/namespaces" {
        if matches!(q.get("watch").map(String::as_str), Some("true" | "1")) {
            return start_watch(shared, &q);
        }
        return list(shared, &q).await;
    }
    if let Some(name) = path.strip_prefix("/api/v1/namespaces/") {
        if !name.is_empty() && !name.contains('/') {
            let st = shared.state.lock().unwrap();
            return match st.namespaces.get(name) {
                Some(json) => respond(StatusCode::OK, with_type_meta(json)),
                None => respond(
                    StatusCode::NOT_FOUND,
                    {
                        let mut s =
                            status(404, "NotFound", &format!("namespaces \"{name}\" not found"));
                        s["details"] = json!({"name": name, "kind": "namespaces"});
                        s
                    }
                    .to_string(),
                ),
            };
        }
    }
    respond_status(
        404,
        "NotFound",
        &format!("the server could not find the requested resource ({path})"),
    )
}

/// `version.Info` as `kubectl get --raw /version` shows it.
fn version_info(minor: &str) -> Value {
    let digits: String = minor.chars().take_while(char::is_ascii_digit).collect();
    let mut info = Map::new();
    info.insert("major".into(), json!("1"));
    info.insert("minor".into(), json!(minor));
    let n: u32 = digits.parse().unwrap_or(0);
    if n >= 33 {
        info.insert("emulationMajor".into(), json!("1"));
        info.insert("emulationMinor".into(), json!(minor));
        info.insert("minCompatibilityMajor".into(), json!("1"));
        info.insert("minCompatibilityMinor".into(), json!((n - 1).to_string()));
    }
    info.insert("gitVersion".into(), json!(format!("v1.{digits}.4")));
    info.insert(
        "gitCommit".into(),
        json!("a1b2c3d4e5f60718293a4b5c6d7e8f9012345678"),
    );
    info.insert("gitTreeState".into(), json!("clean"));
    info.insert("buildDate".into(), json!("2025-01-10T12:00:00Z"));
    info.insert("goVersion".into(), json!("go1.23.4"));
    info.insert("compiler".into(), json!("gc"));
    info.insert("platform".into(), json!("linux/amd64"));
    Value::Object(info)
}

/// One page of the NamespaceList. Continue tokens carry the list's
/// resourceVersion and the last name served.
async fn list(shared: &Shared, q: &HashMap<String, String>) -> Response<FakeBody> {
    shared.state.lock().unwrap().lists += 1;
    let mut held = shared.lists_held.subscribe();
    let _ = held.wait_for(|h| !*h).await;

    let st = shared.state.lock().unwrap();
    let limit: Option<usize> = q
        .get("limit")
        .and_then(|l| l.parse().ok())
        .filter(|&l| l > 0);
    let (list_rv, after) = match q.get("continue").filter(|c| !c.is_empty()) {
        None => (st.rv, None),
        Some(token) => match token
            .split_once('-')
            .and_then(|(rv, name)| Some((rv.parse::<u64>().ok()?, Some(name.to_string()))))
        {
            Some(parsed) => parsed,
            None => {
                return respond_status(
                    400,
                    "BadRequest",
                    &format!("invalid continue token {token:?}"),
                )
            }
        },
    };
    let range = match &after {
        Some(a) => st
            .namespaces
            .range::<str, _>((Bound::Excluded(a.as_str()), Bound::Unbounded)),
        None => st.namespaces.range::<str, _>(..),
    };
    let mut body = format!(
        r#"{{"kind":"NamespaceList","apiVersion":"v1","metadata":{{"resourceVersion":"{list_rv}""#
    );
    let mut items = String::new();
    let mut count = 0usize;
    let mut last: Option<&str> = None;
    let mut remaining = 0usize;
    for (name, json) in range {
        if limit.is_some_and(|l| count == l) {
            remaining += 1;
            continue;
        }
        if count > 0 {
            items.push(',');
        }
        items.push_str(json);
        count += 1;
        last = Some(name);
    }
    if remaining > 0 {
        let last = last.unwrap_or("");
        body.push_str(&format!(
            r#","continue":"{list_rv}-{last}","remainingItemCount":{remaining}"#
        ));
    }
    body.push_str(r#"},"items":["#);
    body.push_str(&items);
    body.push_str("]}");
    respond(StatusCode::OK, body)
}

fn start_watch(shared: &Shared, q: &HashMap<String, String>) -> Response<FakeBody> {
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .unwrap_or(1800);
    let send_initial = q.get("sendInitialEvents").map(String::as_str) == Some("true");
    let mut st = shared.state.lock().unwrap();
    st.watch_count += 1;
    let (tx, rx) = mpsc::unbounded_channel();
    let from = q.get("resourceVersion").map(String::as_str).unwrap_or("");
    if send_initial || from.is_empty() || from == "0" {
        // Synthetic ADDED events for what exists now.
        for json in st.namespaces.values() {
            let _ = tx.send(event_line("ADDED", json));
        }
        if send_initial {
            let bookmark = json!({
                "type": "BOOKMARK",
                "object": {
                    "apiVersion": "v1",
                    "kind": "Namespace",
                    "metadata": {
                        "resourceVersion": st.rv.to_string(),
                        "annotations": {"k8s.io/initial-events-end": "true"}
                    }
                }
            });
            let _ = tx.send(Bytes::from(format!("{bookmark}\n")));
        }
    } else {
        let Ok(from) = from.parse::<u64>() else {
            return respond_status(
                400,
                "BadRequest",
                &format!("invalid resourceVersion {from:?}"),
            );
        };
        if from < st.oldest_rv {
            let expired = json!({
                "type": "ERROR",
                "object": status(
                    410,
                    "Expired",
                    &format!("too old resource version: {from} ({})", st.oldest_rv)
                )
            });
            let _ = tx.send(Bytes::from(format!("{expired}\n")));
            drop(tx);
            return stream(rx, timeout);
        }
        for (rv, line) in &st.history {
            if *rv > from {
                let _ = tx.send(line.clone());
            }
        }
    }
    st.watches.push(tx);
    stream(rx, timeout)
}

fn stream(rx: mpsc::UnboundedReceiver<Bytes>, timeout_secs: u64) -> Response<FakeBody> {
    let mut response = Response::new(FakeBody::Stream {
        rx,
        deadline: Box::pin(tokio::time::sleep(Duration::from_secs(timeout_secs))),
    });
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}
