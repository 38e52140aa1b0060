//! HTTPS server (placeholder while under construction).
use std::net::SocketAddr;
use std::path::PathBuf;

use crate::config::Config;

/// What `nestdock serve` needs to run.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub listen: SocketAddr,
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
    pub config: Config,
    pub max_body_bytes: usize,
}

pub async fn serve(opts: ServeOptions) -> anyhow::Result<()> {
    let _ = opts;
    todo!()
}
