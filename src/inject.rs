//! Offline injection (placeholder while under construction).
use crate::config::Config;
use crate::mode::Mode;

pub struct InjectOptions<'a> {
    pub mode: Option<Mode>,
    pub config: &'a Config,
}

pub struct InjectOutput {
    pub yaml: String,
    pub warnings: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct InjectError(pub String);

pub fn inject(input: &str, opts: &InjectOptions<'_>) -> Result<InjectOutput, InjectError> {
    let _ = (input, opts);
    todo!()
}
