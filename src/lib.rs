//! nestdock: a Kubernetes mutating admission webhook that gives pods a Docker daemon.
//!
//! The crate is laid out by concern: [`engine`] decides (pure), [`config`] and
//! [`annotations`] read what users wrote, [`policy`] applies namespace rules,
//! and the edges ([`admission`], [`server`], [`tls`], [`inject`], [`certs`],
//! [`cli`]) do the I/O. [`guard`] is `nestdock guard`, the Docker API proxy of
//! guarded DooD.

pub mod admission;
pub mod annotations;
pub mod budget;
pub mod certs;
pub mod cli;
pub mod config;
pub mod denial;
pub mod duration;
pub mod engine;
pub mod explain;
pub mod guard;
pub mod inject;
pub mod metrics;
pub mod mode;
pub mod namespaces;
pub mod outcome;
pub mod patch;
pub mod plan;
pub mod pod;
pub mod policy;
pub mod probe;
pub mod quantity;
pub mod render;
pub mod server;
pub mod tls;
pub mod validate;
pub mod yaml;
