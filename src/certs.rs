//! `nestdock certs`: a CA and a serving certificate for the webhook's Service
//! (the README, *Command line*), for clusters without cert-manager and for local runs.
//!
//! The API server checks the webhook's certificate against the
//! MutatingWebhookConfiguration's `caBundle` and the Service's DNS name
//! (`<service>.<namespace>.svc`), so the serving certificate carries every name
//! that a client inside the cluster may use. It also carries `localhost` and
//! `127.0.0.1` so that `nestdock serve` on a laptop and the tests can use the
//! same files. ECDSA P-256 keeps handshakes cheap.
//!
//! The CA's private key is not written anywhere: nothing signs with it again.
//! Renewal means running the command again and updating the `caBundle`.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use base64::Engine as _;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};

/// Validity of the serving certificate: one year.
const LEAF_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// Validity of the CA: ten years, so that the `caBundle` outlives many leaves.
const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Both certificates start an hour in the past so that a node whose clock is a
/// little behind does not reject a certificate made a second ago.
const BACKDATE: Duration = Duration::from_secs(3600);

/// The PEM files of a generated CA and serving certificate.
#[derive(Clone)]
pub struct Bundle {
    /// The CA certificate (`ca.crt`; its base64 is the `caBundle`).
    pub ca_pem: String,
    /// The serving certificate (`tls.crt`).
    pub cert_pem: String,
    /// The serving certificate's private key, PKCS#8 (`tls.key`).
    pub key_pem: String,
}

impl std::fmt::Debug for Bundle {
    /// Never prints the private key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bundle")
            .field("ca_pem", &self.ca_pem)
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// Checks `value` as an RFC 1123 DNS label (what Service names and namespaces
/// are): 1 to 63 characters, lowercase letters, digits and `-`, starting and
/// ending with a letter or digit.
fn dns_label(what: &str, value: &str) -> anyhow::Result<()> {
    crate::validate::dns_label(value).map_err(|e| anyhow::anyhow!("invalid {what}: {e}"))
}

/// The DNS names the serving certificate is valid for, most specific last.
pub fn service_dns_names(service: &str, namespace: &str) -> Vec<String> {
    vec![
        service.to_string(),
        format!("{service}.{namespace}"),
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
        "localhost".to_string(),
    ]
}

/// Generates a fresh CA (CN "nestdock CA", 10 years) and a serving certificate
/// signed by it (1 year) for `service` in `namespace`.
pub fn generate(service: &str, namespace: &str) -> anyhow::Result<Bundle> {
    dns_label("service name", service)?;
    dns_label("namespace", namespace)?;

    // rcgen takes `time::OffsetDateTime`; the Unix epoch plus the system
    // clock gives "now" without another dependency.
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .context("the system clock is before 1970")?;
    let now = epoch + since_epoch;

    let mut ca_params = CertificateParams::default();
    let mut ca_dn = DistinguishedName::new();
    ca_dn.push(DnType::CommonName, "nestdock CA");
    ca_dn.push(DnType::OrganizationName, "nestdock");
    ca_params.distinguished_name = ca_dn;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca_params.not_before = now - BACKDATE;
    ca_params.not_after = now + CA_VALIDITY;
    let ca_key = KeyPair::generate().context("cannot generate the CA key")?;
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key)
        .context("cannot sign the CA certificate")?;

    let names = service_dns_names(service, namespace);
    let mut leaf_params =
        CertificateParams::new(names).context("cannot use the service's DNS names")?;
    leaf_params
        .subject_alt_names
        .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
    let mut leaf_dn = DistinguishedName::new();
    leaf_dn.push(DnType::CommonName, format!("{service}.{namespace}.svc"));
    leaf_params.distinguished_name = leaf_dn;
    leaf_params.is_ca = IsCa::ExplicitNoCa;
    leaf_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf_params.use_authority_key_identifier_extension = true;
    leaf_params.not_before = now - BACKDATE;
    leaf_params.not_after = now + LEAF_VALIDITY;
    let leaf_key = KeyPair::generate().context("cannot generate the serving key")?;
    let leaf = leaf_params
        .signed_by(&leaf_key, &*ca)
        .context("cannot sign the serving certificate")?;

    Ok(Bundle {
        ca_pem: ca.pem(),
        cert_pem: leaf.pem(),
        key_pem: leaf_key.serialize_pem(),
    })
}

impl Bundle {
    /// Creates `dir` if needed and writes `ca.crt`, `tls.crt` and `tls.key`
    /// (the names cert-manager and `kubernetes.io/tls` Secrets use). The key
    /// file is readable by its owner only.
    pub fn write_to(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create directory {}", dir.display()))?;
        let write = |name: &str, text: &str| -> anyhow::Result<()> {
            let path = dir.join(name);
            std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))
        };
        write("ca.crt", &self.ca_pem)?;
        write("tls.crt", &self.cert_pem)?;
        write_private(&dir.join("tls.key"), &self.key_pem)
    }

    /// The `caBundle` of a MutatingWebhookConfiguration: base64 of `ca.crt`.
    pub fn ca_bundle_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.ca_pem.as_bytes())
    }
}

/// Writes a file that only its owner may read (mode 0600 on Unix), also when
/// it existed before with a wider mode.
fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        options.mode(0o600);
        // `mode` only applies when the file is created; narrow an old one
        // before anything secret goes into it.
        if path.exists() {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                .with_context(|| format!("cannot restrict permissions of {}", path.display()))?;
        }
    }
    let mut file = options
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    file.write_all(text.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_names_that_are_not_dns_labels() {
        let long = "n".repeat(64);
        for (service, namespace, bad) in [
            ("Nestdock", "ns", "Nestdock"),
            ("nestdock", "ns.x", "ns.x"),
            ("", "ns", "\"\""),
            ("-a", "ns", "-a"),
            ("a", long.as_str(), "nnnn"),
        ] {
            let err = generate(service, namespace).unwrap_err().to_string();
            assert!(err.contains(bad), "{err}");
            assert!(err.contains("DNS label"), "{err}");
        }
    }

    #[test]
    fn writes_three_files_with_a_private_key() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("a/b");
        let bundle = generate("nestdock", "nestdock-system").unwrap();
        bundle.write_to(&out).unwrap();
        for name in ["ca.crt", "tls.crt", "tls.key"] {
            assert!(out.join(name).is_file(), "{name}");
        }
        assert!(bundle.ca_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(bundle.key_pem.contains("PRIVATE KEY"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(out.join("tls.key"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(bundle.ca_bundle_base64())
            .unwrap();
        assert_eq!(decoded, bundle.ca_pem.as_bytes());
        assert!(!format!("{bundle:?}").contains("PRIVATE KEY"));
    }
}
