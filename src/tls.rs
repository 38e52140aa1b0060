//! rustls server configuration for the webhook's HTTPS port (SPEC section 5).
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
//!   rotates the serving certificate by rewriting the files; [`CertResolver::reload`]
//!   loads the pair again and swaps it in for new handshakes only, so open
//!   connections are untouched, and a bad new pair keeps the old one.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

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
    let cert_pem = std::fs::read(cert_path).map_err(|source| TlsError::Read {
        what: "certificate",
        path: cert_path.to_owned(),
        source,
    })?;
    let key_pem = std::fs::read(key_path).map_err(|source| TlsError::Read {
        what: "key",
        path: key_path.to_owned(),
        source,
    })?;

    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
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

    let key = match PrivateKeyDer::from_pem_slice(&key_pem) {
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
}

impl CertResolver {
    /// Loads the pair once; fails with the reason when it cannot be served.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<CertResolver, TlsError> {
        let provider = ring();
        let key = load_certified_key(cert_path, key_path, &provider)?;
        Ok(CertResolver {
            cert_path: cert_path.to_owned(),
            key_path: key_path.to_owned(),
            provider,
            current: RwLock::new(Arc::new(key)),
        })
    }

    /// Loads the pair again from the same files. On success new handshakes get
    /// the new certificate; on error the old one stays and the error says why.
    pub fn reload(&self) -> Result<(), TlsError> {
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
}
