//! Namespace labels for policy (docs/behaviour.md, *Namespace policy*), from
//! a watch-backed cache; the request path asks through [`NamespaceSource`].
//!
//! A kube reflector keeps every Namespace's labels in memory, so a review
//! never waits on the API server: the request path reads the store. Only a
//! namespace the watch has not delivered yet (created a moment ago) is
//! fetched once directly and remembered. The watcher relists and resumes on
//! its own after a disconnect; meanwhile the last known labels keep serving.
//!
//! The name comes from the review (`request.namespace`), which any client of
//! the webhook's Service can write (docs/behaviour.md, *Who can call*): it is checked as
//! a DNS-1123 label ([`check_name`]) before any lookup, and the namespaces
//! fetched directly are kept in a bounded cache ([`FETCHED_CAPACITY`]
//! entries, oldest evicted first, each dropped after [`FETCHED_TTL`] so that
//! a direct fetch never outlives what the watch says for long).

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::core::{PartialObjectMeta, PartialObjectMetaExt as _};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client};

/// A namespace as policy reads it: its metadata only. The watch and the
/// direct fetches ask the API server for metadata (PartialObjectMetadata),
/// so spec and status are never transferred, and the labels are all policy
/// reads of it.
pub type NamespaceMeta = PartialObjectMeta<Namespace>;

/// How long a direct fetch of a missing namespace may take on the request path.
const FETCH_TIMEOUT: Duration = Duration::from_secs(2);

/// Most namespaces kept from direct fetches; the oldest goes first. The
/// watch delivers a new namespace within seconds, so only a burst of new
/// namespaces (or a client naming made-up ones) ever fills it.
pub const FETCHED_CAPACITY: usize = 1024;

/// How long a directly fetched namespace is used before it is fetched again
/// (unless the watch has delivered it meanwhile, which then wins).
pub const FETCHED_TTL: Duration = Duration::from_secs(60);

/// Longest namespace name (a DNS-1123 label).
pub const MAX_NAME_LEN: usize = 63;

/// Why a namespace's labels are not available.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    #[error("the namespace cache has not finished its first list yet")]
    NotReady,
    #[error("namespace {name} is not in the cache and could not be fetched: {reason}")]
    Unavailable { name: String, reason: String },
    #[error("{0}")]
    InvalidName(String),
}

/// Checks a namespace name as Kubernetes does (a DNS-1123 label: at most 63
/// characters, lower-case letters, digits and `-`, starting and ending with a
/// letter or digit). The error names the value (quoted, shortened past 100
/// characters) and what is accepted.
pub fn check_name(name: &str) -> Result<(), String> {
    if crate::validate::is_dns_label(name) {
        return Ok(());
    }
    let shown: String = name.chars().take(100).collect();
    let more = if shown.len() < name.len() {
        format!("... ({} bytes)", name.len())
    } else {
        String::new()
    };
    Err(format!(
        "request.namespace {shown:?}{more} is not a valid namespace name: expected a DNS-1123 \
         label (at most {MAX_NAME_LEN} characters of a-z, 0-9 and '-', starting and ending \
         with a letter or digit)"
    ))
}

/// Namespaces fetched directly: at most [`FETCHED_CAPACITY`], each for
/// [`FETCHED_TTL`]. Times are passed in, so tests need no clock.
#[derive(Debug, Default)]
pub struct Fetched {
    entries: HashMap<String, (Instant, Arc<NamespaceMeta>)>,
}

impl Fetched {
    /// The namespace when fetched less than [`FETCHED_TTL`] before `now`.
    pub fn get(&self, name: &str, now: Instant) -> Option<Arc<NamespaceMeta>> {
        self.entries
            .get(name)
            .filter(|(at, _)| now.saturating_duration_since(*at) < FETCHED_TTL)
            .map(|(_, ns)| ns.clone())
    }

    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    /// Remembers `ns`; when full, drops expired entries, then the oldest.
    pub fn insert(&mut self, name: &str, ns: Arc<NamespaceMeta>, now: Instant) {
        if !self.entries.contains_key(name) && self.entries.len() >= FETCHED_CAPACITY {
            self.entries
                .retain(|_, (at, _)| now.saturating_duration_since(*at) < FETCHED_TTL);
            if self.entries.len() >= FETCHED_CAPACITY {
                // O(n) on a full cache only: at most 1024 entries.
                let oldest = self
                    .entries
                    .iter()
                    .min_by_key(|(_, (at, _))| *at)
                    .map(|(name, _)| name.clone());
                if let Some(oldest) = oldest {
                    self.entries.remove(&oldest);
                }
            }
        }
        self.entries.insert(name.to_string(), (now, ns));
    }

    pub fn remove(&mut self, name: &str) {
        self.entries.remove(name);
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Labels of namespaces, kept current by a watch.
#[derive(Clone)]
pub struct NamespaceCache {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store<NamespaceMeta>,
    ready: AtomicBool,
    native_sidecars: AtomicBool,
    /// Whether the API server's version has been read; until then native
    /// sidecars are not assumed (on 1.28 a `restartPolicy: Always` init
    /// container would hold the pod in Init forever).
    version_known: AtomicBool,
    api: Api<NamespaceMeta>,
    /// Namespaces fetched directly because the watch had not delivered them.
    fetched: RwLock<Fetched>,
}

impl std::fmt::Debug for NamespaceCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NamespaceCache")
            .field("ready", &self.is_ready())
            .field("namespaces", &self.len())
            .finish()
    }
}

/// Connects to the cluster and starts the cache, or says once why namespace
/// policy is off: `--kube=false`, or no cluster configuration (no in-cluster
/// service account, no kubeconfig) when run locally.
pub async fn connect(kube: bool) -> Option<NamespaceCache> {
    if !kube {
        tracing::info!(
            "namespace policy is off (--kube=false): pod annotations and the config decide alone"
        );
        return None;
    }
    // The kube client's TLS uses the process-wide rustls provider, which
    // `nestdock serve` installs (ring) before anything else.
    let config = match kube::Config::infer().await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(
                error = %e,
                "namespace policy is off: no cluster configuration found (in-cluster or kubeconfig)"
            );
            return None;
        }
    };
    match client_for(config) {
        Ok(client) => Some(NamespaceCache::start(client)),
        Err(e) => {
            tracing::warn!(error = %e, "namespace policy is off: cannot build a Kubernetes client");
            None
        }
    }
}

/// A client that leaves retries to the watcher: kube's own retry of 429/503
/// would hide an outage from the watcher (no reconnect logged, recovery
/// delayed past the watcher's backoff) and spend a direct fetch's whole
/// timeout on retries.
pub fn client_for(mut config: kube::Config) -> Result<Client, kube::Error> {
    config.default_retry = false;
    Client::try_from(config)
}

/// Keeps only what policy reads: the labels (10,000 namespaces stay small).
fn strip(ns: &mut NamespaceMeta) {
    ns.metadata.managed_fields = None;
    ns.metadata.annotations = None;
    ns.metadata.owner_references = None;
    ns.metadata.finalizers = None;
}

/// Parses the API server's version and says whether it runs native sidecars
/// (1.29 and newer). Minor versions may carry a suffix (`"29+"` on EKS/GKE).
pub fn supports_native_sidecars(major: &str, minor: &str) -> bool {
    let digits = |s: &str| -> Option<u32> {
        let d: String = s.chars().take_while(char::is_ascii_digit).collect();
        d.parse().ok()
    };
    match (digits(major), digits(minor)) {
        (Some(maj), Some(min)) => maj > 1 || (maj == 1 && min >= 29),
        _ => true,
    }
}

async fn detect_native_sidecars(client: &Client) -> Option<bool> {
    match client.apiserver_version().await {
        Ok(info) => {
            let native = supports_native_sidecars(&info.major, &info.minor);
            tracing::info!(
                version = %info.git_version,
                native_sidecars = native,
                "API server version read"
            );
            Some(native)
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the API server version; keeping the previous sidecar choice");
            None
        }
    }
}

impl Inner {
    async fn refresh_version(&self, client: &Client) {
        if let Some(native) = detect_native_sidecars(client).await {
            self.native_sidecars.store(native, Ordering::Relaxed);
            self.version_known.store(true, Ordering::Relaxed);
        }
    }
}

impl NamespaceCache {
    /// Starts the watch in the background and returns at once; [`is_ready`]
    /// turns true when the first full list has arrived.
    ///
    /// [`is_ready`]: NamespaceCache::is_ready
    pub fn start(client: Client) -> NamespaceCache {
        // `Api<PartialObjectMeta<_>>` asks for metadata only, in the list,
        // the watch and the direct fetch alike.
        let api: Api<NamespaceMeta> = Api::all(client.clone());
        let (store, writer) = reflector::store();
        let inner = Arc::new(Inner {
            store,
            ready: AtomicBool::new(false),
            native_sidecars: AtomicBool::new(false),
            version_known: AtomicBool::new(false),
            api: api.clone(),
            fetched: RwLock::new(Fetched::default()),
        });
        let task_inner = inner.clone();
        tokio::spawn(async move {
            task_inner.refresh_version(&client).await;
            let stream = watcher(api, watcher::Config::default())
                .default_backoff()
                .modify(strip);
            let mut stream = std::pin::pin!(reflector::reflector(writer, stream));
            let mut failed = false;
            while let Some(event) = stream.next().await {
                match event {
                    Ok(watcher::Event::InitDone) => {
                        let count = task_inner.store.len();
                        // After a reconnect the server may have been upgraded;
                        // an unknown version is asked again at every relist.
                        if failed || !task_inner.version_known.load(Ordering::Relaxed) {
                            task_inner.refresh_version(&client).await;
                        }
                        if failed {
                            tracing::info!(
                                namespaces = count,
                                "namespace watch reconnected and relisted"
                            );
                        } else if !task_inner.ready.load(Ordering::Relaxed) {
                            tracing::info!(namespaces = count, "namespace cache synced");
                        }
                        failed = false;
                        task_inner.ready.store(true, Ordering::Release);
                    }
                    Ok(_) => {}
                    Err(e) => {
                        if !failed {
                            tracing::warn!(
                                error = %e,
                                "namespace watch lost; reconnecting with backoff, last known labels keep serving"
                            );
                        }
                        failed = true;
                    }
                }
            }
        });
        NamespaceCache { inner }
    }

    /// True once the first full list has arrived (and ever after: a lost watch
    /// keeps serving the last known labels while it reconnects).
    pub fn is_ready(&self) -> bool {
        self.inner.ready.load(Ordering::Acquire)
    }

    /// Whether the API server runs native sidecars (resolves `sidecar: auto`);
    /// false until its version has been read.
    pub fn native_sidecars(&self) -> bool {
        self.inner.native_sidecars.load(Ordering::Relaxed)
    }

    /// Number of namespaces in the watch-backed store.
    pub fn len(&self) -> usize {
        self.inner.store.len()
    }

    pub fn is_empty(&self) -> bool {
        self.inner.store.is_empty()
    }

    /// The namespace as cached, without any I/O; `None` when it is not there.
    pub fn cached(&self, name: &str) -> Option<Arc<NamespaceMeta>> {
        if let Some(ns) = self.inner.store.get(&ObjectRef::new(name)) {
            return Some(ns);
        }
        self.inner
            .fetched
            .read()
            .ok()
            .and_then(|f| f.get(name, Instant::now()))
    }

    /// Namespaces kept from direct fetches now (at most [`FETCHED_CAPACITY`]).
    pub fn fetched_len(&self) -> usize {
        self.inner.fetched.read().map_or(0, |f| f.len())
    }

    /// The namespace for a review: from the cache, or fetched once directly
    /// when the watch has not delivered it yet. `name` must pass
    /// [`check_name`] (checked again here, before any lookup).
    pub async fn get(&self, name: &str) -> Result<Arc<NamespaceMeta>, LookupError> {
        check_name(name).map_err(LookupError::InvalidName)?;
        if !self.is_ready() {
            return Err(LookupError::NotReady);
        }
        if let Some(ns) = self.inner.store.get(&ObjectRef::new(name)) {
            // The watch caught up: forget a direct fetch of it (checked under
            // the read lock first: the common case takes no write lock).
            let fetched_too = self.inner.fetched.read().is_ok_and(|f| f.contains(name));
            if fetched_too {
                if let Ok(mut f) = self.inner.fetched.try_write() {
                    f.remove(name);
                }
            }
            return Ok(ns);
        }
        if let Some(ns) = self
            .inner
            .fetched
            .read()
            .ok()
            .and_then(|f| f.get(name, Instant::now()))
        {
            return Ok(ns);
        }
        let unavailable = |reason: String| LookupError::Unavailable {
            name: name.to_string(),
            reason,
        };
        // kube puts `name` into the URL path as it is (kube-core 5's
        // metadata `get` formats it without escaping): safe only
        // because `check_name` admitted nothing but [a-z0-9-]. Metadata only
        // (PartialObjectMetadata): the labels are all policy reads.
        let meta = tokio::time::timeout(FETCH_TIMEOUT, self.inner.api.get(name))
            .await
            .map_err(|_| unavailable(format!("no answer within {FETCH_TIMEOUT:?}")))?
            .map_err(|e| unavailable(e.to_string()))?;
        let mut ns = meta;
        strip(&mut ns);
        let ns = Arc::new(ns);
        let cached = match self.inner.fetched.write() {
            Ok(mut f) => {
                f.insert(name, ns.clone(), Instant::now());
                f.len()
            }
            Err(_) => 0,
        };
        tracing::info!(
            namespace = name,
            cached,
            "namespace fetched directly (not yet in the watch cache)"
        );
        Ok(ns)
    }
}

/// Where the request path gets a namespace's labels: the watch-backed
/// [`NamespaceCache`] in the server, a [`StaticNamespaces`] map in tests
/// (and wherever the router runs without a cluster).
pub trait NamespaceSource: Send + Sync + std::fmt::Debug + 'static {
    /// The namespace called `name`, which has passed [`check_name`].
    fn get<'a>(
        &'a self,
        name: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<Arc<NamespaceMeta>, LookupError>> + Send + 'a>>;

    /// False until the source can answer (the server's `/readyz` follows it).
    fn is_ready(&self) -> bool;

    /// Whether the cluster runs native sidecars (resolves `sidecar: auto`).
    fn native_sidecars(&self) -> bool;
}

impl NamespaceSource for NamespaceCache {
    fn get<'a>(
        &'a self,
        name: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<Arc<NamespaceMeta>, LookupError>> + Send + 'a>> {
        Box::pin(NamespaceCache::get(self, name))
    }

    fn is_ready(&self) -> bool {
        NamespaceCache::is_ready(self)
    }

    fn native_sidecars(&self) -> bool {
        NamespaceCache::native_sidecars(self)
    }
}

/// A fixed set of namespaces and their labels: always ready; a name not in
/// the set is unavailable (HTTP 503), as a namespace the API server cannot
/// deliver would be.
#[derive(Debug, Clone, Default)]
pub struct StaticNamespaces {
    namespaces: HashMap<String, Arc<NamespaceMeta>>,
    native_sidecars: bool,
}

impl StaticNamespaces {
    /// `namespaces`: each name with its labels. Native sidecars are on, as on
    /// every Kubernetes since 1.29.
    pub fn new<'a>(
        namespaces: impl IntoIterator<Item = (&'a str, &'a [(&'a str, &'a str)])>,
    ) -> StaticNamespaces {
        let namespaces = namespaces
            .into_iter()
            .map(|(name, labels)| {
                let meta = ObjectMeta {
                    name: Some(name.to_string()),
                    labels: Some(
                        labels
                            .iter()
                            .map(|(k, v)| (k.to_string(), v.to_string()))
                            .collect(),
                    ),
                    ..ObjectMeta::default()
                };
                (name.to_string(), Arc::new(meta.into_response_partial()))
            })
            .collect();
        StaticNamespaces {
            namespaces,
            native_sidecars: true,
        }
    }

    /// As a cluster older than 1.29 would answer `sidecar: auto`.
    pub fn without_native_sidecars(mut self) -> StaticNamespaces {
        self.native_sidecars = false;
        self
    }
}

impl NamespaceSource for StaticNamespaces {
    fn get<'a>(
        &'a self,
        name: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<Arc<NamespaceMeta>, LookupError>> + Send + 'a>> {
        let found = self
            .namespaces
            .get(name)
            .cloned()
            .ok_or_else(|| LookupError::Unavailable {
                name: name.to_string(),
                reason: "not among the namespaces this source knows".to_string(),
            });
        Box::pin(std::future::ready(found))
    }

    fn is_ready(&self) -> bool {
        true
    }

    fn native_sidecars(&self) -> bool {
        self.native_sidecars
    }
}

/// The labels of a cached namespace (empty when it has none).
pub fn labels(ns: &NamespaceMeta) -> &BTreeMap<String, String> {
    static EMPTY: BTreeMap<String, String> = BTreeMap::new();
    ns.metadata.labels.as_ref().unwrap_or(&EMPTY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_names_are_dns_1123_labels() {
        for good in ["a", "ci", "team-a", "0", "a1-b2", &"x".repeat(63)] {
            assert_eq!(check_name(good), Ok(()), "{good:?}");
        }
        let long = "x".repeat(64);
        let huge = "y".repeat(5000);
        for bad in [
            "",
            "builds?n=1",
            "builds/../kube-system",
            "Builds",
            "-a",
            "a-",
            "a.b",
            "a_b",
            "a b",
            "%2e%2e",
            "é",
            &long,
            &huge,
        ] {
            let err = check_name(bad).unwrap_err();
            assert!(err.contains("DNS-1123") && err.contains("63"), "{err}");
            assert!(err.len() < 400, "{err}");
        }
        let err = check_name("builds?n=1").unwrap_err();
        assert!(err.contains("\"builds?n=1\""), "{err}");
    }

    fn ns(name: &str) -> Arc<NamespaceMeta> {
        let meta = ObjectMeta {
            name: Some(name.to_string()),
            ..ObjectMeta::default()
        };
        Arc::new(meta.into_response_partial())
    }

    #[test]
    fn fetched_namespaces_are_bounded_and_expire() {
        let t0 = Instant::now();
        let mut fetched = Fetched::default();
        for i in 0..4000 {
            let name = format!("ns-{i}");
            fetched.insert(&name, ns(&name), t0 + Duration::from_millis(i));
            assert!(fetched.len() <= FETCHED_CAPACITY);
        }
        assert_eq!(fetched.len(), FETCHED_CAPACITY);
        let now = t0 + Duration::from_secs(5);
        // The oldest went first; the newest are there.
        assert!(fetched.get("ns-0", now).is_none());
        assert!(fetched.get("ns-2975", now).is_none());
        assert!(fetched.get("ns-2976", now).is_some());
        assert!(fetched.get("ns-3999", now).is_some());
        // Past the time to live nothing is served, and a full cache drops
        // the expired entries first.
        let later = t0 + Duration::from_secs(4) + FETCHED_TTL;
        assert!(fetched.get("ns-3999", later).is_none());
        fetched.insert("fresh", ns("fresh"), later);
        assert_eq!(fetched.len(), 1);
        assert!(fetched.get("fresh", later).is_some());
        // Inserting a name again refreshes it, without eviction.
        fetched.insert("fresh", ns("fresh"), later + Duration::from_secs(1));
        assert_eq!(fetched.len(), 1);
    }

    #[test]
    fn native_sidecars_from_version() {
        assert!(supports_native_sidecars("1", "29"));
        assert!(supports_native_sidecars("1", "31+"));
        assert!(!supports_native_sidecars("1", "28"));
        assert!(!supports_native_sidecars("1", "27+"));
        assert!(supports_native_sidecars("2", "0"));
        assert!(supports_native_sidecars("?", ""));
    }
}
