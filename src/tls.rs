//! rustls server configuration for the webhook's HTTPS port (docs/behaviour.md, *The server*).
//!
//! Three decisions live here:
//!
//! - **One crypto provider, ring, chosen explicitly.** rustls panics at the first
//!   handshake when it cannot tell which provider to use, and a second provider
//!   pulled in by a dependency would make that choice implicit. [`install_ring`]
//!   installs ring as the process default once, and every config built here names
//!   ring directly as well, so nothing depends on what else is linked in.
//! - **TLS 1.2 and 1.3, ALPN `h2` then `http/1.1`.** The API server speaks
//!   HTTP/1.1 to webhooks (HTTP/2 only to loopback URLs); offering both lets
//!   either kind of client in.
//! - **The certificate sits behind a resolver that can swap it.** cert-manager
//!   rotates the serving certificate by rewriting the files (in a Secret volume:
//!   a new timestamped directory, then an atomic rename of the `..data` symlink).
//!   [`watch`] follows the files' directories with inotify (debounced) and
//!   compares the files every minute as a fallback; when their contents
//!   changed, [`CertResolver::reload_if_changed`] loads the pair and swaps it in
//!   for new handshakes only, so open connections are untouched. A broken or
//!   mismatched new pair keeps the old one, and the log says why.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// ALPN protocols offered, in order of preference.
pub const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// Why a certificate/key pair could not be loaded. Every variant names the file
/// and what is wrong with it, because the operator reading the log has to fix
/// that file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} file {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("certificate file {path} is not valid PEM: {reason}")]
    BadCertPem { path: PathBuf, reason: String },
    #[error(
        "certificate file {path} holds no certificate (expected a PEM block \"BEGIN CERTIFICATE\")"
    )]
    NoCertificate { path: PathBuf },
    #[error("key file {path} holds no private key (expected a PEM block \"BEGIN PRIVATE KEY\", \"BEGIN EC PRIVATE KEY\" or \"BEGIN RSA PRIVATE KEY\")")]
    NoKey { path: PathBuf },
    #[error("key file {path} is not valid PEM: {reason}")]
    BadKeyPem { path: PathBuf, reason: String },
    #[error("key file {path} holds a private key that cannot be used: {reason}")]
    UnusableKey { path: PathBuf, reason: String },
    #[error("the first certificate in {cert} is not a valid X.509 certificate: {reason}")]
    BadCertificate { cert: PathBuf, reason: String },
    #[error("key file {key} does not match the certificate in {cert} (the first certificate must be the serving certificate, signed for this key)")]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error("cannot build the TLS configuration: {0}")]
    Config(#[source] rustls::Error),
}

/// Installs ring as the process-wide rustls crypto provider. Safe to call more
/// than once: "already installed" is not an error (tests and the server both
/// call it).
pub fn install_ring() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The ring provider as an `Arc`, for the builders that take one explicitly.
fn ring() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads and checks a PEM certificate chain and private key: both files exist
/// and parse, the chain is not empty, the key is usable by ring, and the key
/// belongs to the first certificate.
pub fn load_certified_key(
    cert_path: &Path,
    key_path: &Path,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    let cert_pem = read_file("certificate", cert_path)?;
    let key_pem = read_file("key", key_path)?;
    certified_key_from_pem(&cert_pem, &key_pem, cert_path, key_path, provider)
}

fn read_file(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_owned(),
        source,
    })
}

/// [`load_certified_key`] on contents already read; the paths name the files
/// in errors.
pub fn certified_key_from_pem(
    cert_pem: &[u8],
    key_pem: &[u8],
    cert_path: &Path,
    key_path: &Path,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::BadCertPem {
            path: cert_path.to_owned(),
            reason: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: cert_path.to_owned(),
        });
    }

    let key = match PrivateKeyDer::from_pem_slice(key_pem) {
        Ok(key) => key,
        Err(rustls_pki_types::pem::Error::NoItemsFound) => {
            return Err(TlsError::NoKey {
                path: key_path.to_owned(),
            })
        }
        Err(e) => {
            return Err(TlsError::BadKeyPem {
                path: key_path.to_owned(),
                reason: e.to_string(),
            })
        }
    };
    let signing_key =
        provider
            .key_provider
            .load_private_key(key)
            .map_err(|e| TlsError::UnusableKey {
                path: key_path.to_owned(),
                reason: e.to_string(),
            })?;

    let certified = CertifiedKey::new(chain, signing_key);
    match certified.keys_match() {
        // ring always knows the public key of its keys; `Unknown` would only
        // mean "cannot tell", which is not a reason to refuse the pair.
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
            Ok(certified)
        }
        Err(rustls::Error::InconsistentKeys(_)) => Err(TlsError::KeyMismatch {
            cert: cert_path.to_owned(),
            key: key_path.to_owned(),
        }),
        Err(e) => Err(TlsError::BadCertificate {
            cert: cert_path.to_owned(),
            reason: e.to_string(),
        }),
    }
}

/// What the files held at the last reload attempt: a reload is only tried
/// (and counted) when this changes. `Err` keeps the read error's text, so
/// that a file that stays missing is reported once, not at every check.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    cert: Result<Vec<u8>, String>,
    key: Result<Vec<u8>, String>,
}

/// What [`CertResolver::reload_if_changed`] did.
#[derive(Debug)]
pub enum Reload {
    /// The files hold what was last seen: nothing to do.
    Unchanged,
    /// A new pair is served to new handshakes.
    Reloaded,
    /// The files changed but cannot be served; the previous pair stays.
    Failed(TlsError),
}

/// Serves the current certificate to every handshake and swaps it on
/// [`reload`](CertResolver::reload).
///
/// A read-locked `Arc` clone per handshake is cheap next to the handshake
/// itself, and a write only happens on rotation, so a `RwLock` is enough.
pub struct CertResolver {
    cert_path: PathBuf,
    key_path: PathBuf,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
    /// The file contents behind the last reload attempt (or the first load).
    seen: Mutex<Seen>,
}

impl CertResolver {
    /// Loads the pair once; fails with the reason when it cannot be served.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<CertResolver, TlsError> {
        let provider = ring();
        let cert_pem = read_file("certificate", cert_path)?;
        let key_pem = read_file("key", key_path)?;
        let key = certified_key_from_pem(&cert_pem, &key_pem, cert_path, key_path, &provider)?;
        Ok(CertResolver {
            cert_path: cert_path.to_owned(),
            key_path: key_path.to_owned(),
            provider,
            current: RwLock::new(Arc::new(key)),
            seen: Mutex::new(Seen {
                cert: Ok(cert_pem),
                key: Ok(key_pem),
            }),
        })
    }

    /// Reads both files, retrying while they change under the read (a
    /// rotation that lands between the two reads would pair an old
    /// certificate with a new key).
    fn read_pair(&self) -> Seen {
        let read = |path: &Path| std::fs::read(path).map_err(|e| e.to_string());
        let mut cert = read(&self.cert_path);
        let mut key = read(&self.key_path);
        for _ in 0..3 {
            let again = read(&self.cert_path);
            if again == cert {
                break;
            }
            cert = again;
            key = read(&self.key_path);
        }
        Seen { cert, key }
    }

    /// Loads the pair again when the files' contents differ from what was
    /// last seen (a first load or an earlier attempt). On success new
    /// handshakes get the new certificate and open connections keep theirs;
    /// on failure the previous pair stays and the error says why. The same
    /// broken contents are not tried twice.
    pub fn reload_if_changed(&self) -> Reload {
        let now = self.read_pair();
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if *seen == now {
            return Reload::Unchanged;
        }
        *seen = now.clone();
        drop(seen);
        let loaded = match (&now.cert, &now.key) {
            (Err(e), _) => Err(TlsError::Read {
                what: "certificate",
                path: self.cert_path.clone(),
                source: std::io::Error::other(e.clone()),
            }),
            (_, Err(e)) => Err(TlsError::Read {
                what: "key",
                path: self.key_path.clone(),
                source: std::io::Error::other(e.clone()),
            }),
            (Ok(cert), Ok(key)) => {
                certified_key_from_pem(cert, key, &self.cert_path, &self.key_path, &self.provider)
            }
        };
        match loaded {
            Ok(key) => {
                *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(key);
                Reload::Reloaded
            }
            Err(e) => Reload::Failed(e),
        }
    }

    /// Loads the pair again from the same files. On success new handshakes get
    /// the new certificate; on error the old one stays and the error says why.
    pub fn reload(&self) -> Result<(), TlsError> {
        let now = self.read_pair();
        *self.seen.lock().unwrap_or_else(|e| e.into_inner()) = now;
        let key = load_certified_key(&self.cert_path, &self.key_path, &self.provider)?;
        // A poisoned lock only means a writer panicked between two plain
        // assignments; the value inside is still a whole `Arc`.
        let mut slot = self.current.write().unwrap_or_else(|e| e.into_inner());
        *slot = Arc::new(key);
        Ok(())
    }

    /// The certificate new handshakes get.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The certificate file this resolver reads.
    pub fn cert_path(&self) -> &Path {
        &self.cert_path
    }

    /// The key file this resolver reads.
    pub fn key_path(&self) -> &Path {
        &self.key_path
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

impl fmt::Debug for CertResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertResolver")
            .field("cert_path", &self.cert_path)
            .field("key_path", &self.key_path)
            .finish_non_exhaustive()
    }
}

/// Builds the server configuration around `resolver`: ring, TLS 1.3 and 1.2,
/// no client certificates, ALPN `h2` and `http/1.1`.
pub fn server_config(resolver: Arc<CertResolver>) -> Result<ServerConfig, TlsError> {
    install_ring();
    let mut config = ServerConfig::builder_with_provider(ring())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(TlsError::Config)?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// Loads the pair and builds the server configuration; the resolver is
/// returned too so that the caller can reload it later.
pub fn load(
    cert_path: &Path,
    key_path: &Path,
) -> Result<(Arc<ServerConfig>, Arc<CertResolver>), TlsError> {
    let resolver = Arc::new(CertResolver::load(cert_path, key_path)?);
    let config = server_config(resolver.clone())?;
    Ok((Arc::new(config), resolver))
}

/// How [`watch`] follows the certificate files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatchOptions {
    /// Quiet time after the last file event before the files are read: a
    /// rotation writes several entries (cert-manager's Secret volume swaps a
    /// `..data` symlink after writing a new directory).
    pub debounce: Duration,
    /// Files are also compared this often, in case an event was missed
    /// (filesystems without inotify, a watch that could not be set up).
    pub interval: Duration,
}

impl Default for WatchOptions {
    fn default() -> Self {
        WatchOptions {
            debounce: Duration::from_millis(250),
            interval: Duration::from_secs(60),
        }
    }
}

/// Follows the certificate files until dropped; see [`watch`].
pub struct CertWatcher {
    _watcher: Option<notify::RecommendedWatcher>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for CertWatcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl fmt::Debug for CertWatcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertWatcher")
            .field("watching", &self._watcher.is_some())
            .finish_non_exhaustive()
    }
}

/// The directories to watch: those that hold the configured paths. Kubernetes
/// Secret volumes and cert-manager replace the files by swapping a `..data`
/// symlink in that directory, which changes neither watched file's inode, so
/// the directory is what shows the change.
fn watch_dirs(resolver: &CertResolver) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    for path in [resolver.cert_path(), resolver.key_path()] {
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => PathBuf::from("."),
        };
        if !dirs.contains(&dir) {
            dirs.push(dir);
        }
    }
    dirs
}

/// Whether a file event can mean new contents (our own reads of the files
/// show up as opens, which must not trigger more reads).
fn may_change(event: &notify::Event) -> bool {
    use notify::event::{AccessKind, AccessMode, EventKind};
    match event.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

/// Reloads the pair whenever its files change: on any event in their
/// directories (debounced), and every [`WatchOptions::interval`] as a
/// fallback. A reload happens, and `on_reload` is told its result, only
/// when the files' contents changed. Must be called inside a tokio runtime.
pub fn watch(
    resolver: Arc<CertResolver>,
    opts: WatchOptions,
    on_reload: impl Fn(bool) + Send + Sync + 'static,
) -> CertWatcher {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
    let dirs = watch_dirs(&resolver);
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let relevant = match &event {
            Ok(event) => may_change(event),
            // A lost event (queue overflow) may have been the rotation.
            Err(_) => true,
        };
        if relevant {
            // Full means a check is already due.
            let _ = tx.try_send(());
        }
    });
    let watcher = match watcher {
        Ok(mut watcher) => {
            use notify::Watcher as _;
            let mut watched = 0;
            for dir in &dirs {
                match watcher.watch(dir, notify::RecursiveMode::NonRecursive) {
                    Ok(()) => watched += 1,
                    Err(e) => tracing::warn!(
                        dir = %dir.display(),
                        error = %e,
                        interval_secs = opts.interval.as_secs(),
                        "cannot watch the certificate directory; its files are compared periodically instead"
                    ),
                }
            }
            (watched > 0).then_some(watcher)
        }
        Err(e) => {
            tracing::warn!(
                error = %e,
                interval_secs = opts.interval.as_secs(),
                "cannot watch files for certificate rotation; the files are compared periodically instead"
            );
            None
        }
    };
    let task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(opts.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        // False once no watcher is left to send events: the periodic check
        // goes on alone.
        let mut events = true;
        loop {
            tokio::select! {
                event = rx.recv(), if events => {
                    if event.is_none() {
                        events = false;
                        continue;
                    }
                    // Wait until the directory has been quiet for `debounce`.
                    while let Ok(Some(())) = tokio::time::timeout(opts.debounce, rx.recv()).await {}
                }
                _ = tick.tick() => {}
            }
            let check = resolver.clone();
            let result = tokio::task::spawn_blocking(move || check.reload_if_changed()).await;
            match result {
                Ok(Reload::Unchanged) => {}
                Ok(Reload::Reloaded) => {
                    tracing::info!(
                        cert = %resolver.cert_path().display(),
                        "serving certificate reloaded: new connections get the new pair"
                    );
                    on_reload(true);
                }
                Ok(Reload::Failed(e)) => {
                    tracing::warn!(
                        error = %e,
                        "serving certificate reload failed; the previous pair is still served"
                    );
                    on_reload(false);
                }
                Err(e) => tracing::error!(error = %e, "certificate reload check failed"),
            }
        }
    });
    CertWatcher {
        _watcher: watcher,
        task,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_pair(dir: &Path) -> (PathBuf, PathBuf) {
        let bundle = crate::certs::generate("nestdock", "nestdock-system").expect("generate");
        bundle.write_to(dir).expect("write");
        (dir.join("tls.crt"), dir.join("tls.key"))
    }

    #[test]
    fn loads_a_generated_pair_with_alpn() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = write_pair(dir.path());
        let (config, _resolver) = load(&cert, &key).expect("load");
        assert_eq!(
            config.alpn_protocols,
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        );
    }

    #[test]
    fn missing_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let (_cert, key) = write_pair(dir.path());
        let missing = dir.path().join("nope.crt");
        let err = CertResolver::load(&missing, &key).unwrap_err().to_string();
        assert!(err.contains("nope.crt"), "{err}");
        assert!(err.contains("certificate"), "{err}");
    }

    #[test]
    fn no_certificate_and_no_key_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = write_pair(dir.path());
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "hello\n").unwrap();
        let err = CertResolver::load(&empty, &key).unwrap_err().to_string();
        assert!(
            err.contains("no certificate") && err.contains("empty.pem"),
            "{err}"
        );
        let err = CertResolver::load(&cert, &empty).unwrap_err().to_string();
        assert!(
            err.contains("no private key") && err.contains("empty.pem"),
            "{err}"
        );
        // A certificate where the key should be is "no key", not a crash.
        let err = CertResolver::load(&cert, &cert).unwrap_err().to_string();
        assert!(err.contains("no private key"), "{err}");
    }

    #[test]
    fn mismatched_key_is_refused_and_reload_keeps_the_old_pair() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = write_pair(dir.path());
        let other = tempfile::tempdir().unwrap();
        let (_other_cert, other_key) = write_pair(other.path());

        let err = CertResolver::load(&cert, &other_key)
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not match"), "{err}");

        let resolver = CertResolver::load(&cert, &key).expect("load");
        let before = resolver.current();
        std::fs::copy(&other_key, &key).unwrap();
        let err = resolver.reload().unwrap_err().to_string();
        assert!(err.contains("does not match"), "{err}");
        assert!(Arc::ptr_eq(&before, &resolver.current()));

        // A consistent new pair is taken.
        std::fs::copy(other.path().join("tls.crt"), &cert).unwrap();
        resolver.reload().expect("reload");
        assert!(!Arc::ptr_eq(&before, &resolver.current()));
    }

    #[test]
    fn reload_if_changed_counts_only_changes() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = write_pair(dir.path());
        let resolver = CertResolver::load(&cert, &key).expect("load");
        assert!(matches!(resolver.reload_if_changed(), Reload::Unchanged));

        // A broken pair fails once, then is unchanged until it changes.
        std::fs::write(&key, "not a key\n").unwrap();
        let before = resolver.current();
        match resolver.reload_if_changed() {
            Reload::Failed(e) => assert!(e.to_string().contains("no private key"), "{e}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(resolver.reload_if_changed(), Reload::Unchanged));
        assert!(Arc::ptr_eq(&before, &resolver.current()));

        // A missing file is a failure naming it, reported once.
        std::fs::remove_file(&key).unwrap();
        match resolver.reload_if_changed() {
            Reload::Failed(e) => assert!(e.to_string().contains("tls.key"), "{e}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(resolver.reload_if_changed(), Reload::Unchanged));

        // A good new pair is taken.
        write_pair(dir.path());
        assert!(matches!(resolver.reload_if_changed(), Reload::Reloaded));
        assert!(!Arc::ptr_eq(&before, &resolver.current()));
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn watch_reloads_after_a_symlink_swap() {
        // The layout of a Kubernetes Secret volume: tls.crt -> ..data/tls.crt,
        // ..data -> ..v1; a rotation writes ..v2 and renames a new ..data link
        // over the old one.
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir(root.join("..v1")).unwrap();
        write_pair(&root.join("..v1"));
        std::os::unix::fs::symlink("..v1", root.join("..data")).unwrap();
        for f in ["tls.crt", "tls.key"] {
            std::os::unix::fs::symlink(format!("..data/{f}"), root.join(f)).unwrap();
        }
        let resolver =
            Arc::new(CertResolver::load(&root.join("tls.crt"), &root.join("tls.key")).unwrap());
        let before = resolver.current();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let _watcher = watch(
            resolver.clone(),
            WatchOptions {
                debounce: Duration::from_millis(50),
                interval: Duration::from_secs(3600),
            },
            move |ok| {
                let _ = tx.send(ok);
            },
        );
        std::fs::create_dir(root.join("..v2")).unwrap();
        write_pair(&root.join("..v2"));
        std::os::unix::fs::symlink("..v2", root.join("..data_tmp")).unwrap();
        std::fs::rename(root.join("..data_tmp"), root.join("..data")).unwrap();
        let ok = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("a reload within 10 s")
            .unwrap();
        assert!(ok);
        assert!(!Arc::ptr_eq(&before, &resolver.current()));
    }
}
