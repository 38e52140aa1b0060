//! Certificates (placeholder while under construction).
use std::path::Path;

pub struct Bundle {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

pub fn generate(service: &str, namespace: &str) -> anyhow::Result<Bundle> {
    let _ = (service, namespace);
    todo!()
}

impl Bundle {
    pub fn write_to(&self, dir: &Path) -> anyhow::Result<()> {
        let _ = dir;
        todo!()
    }
    pub fn ca_bundle_base64(&self) -> String {
        todo!()
    }
}
