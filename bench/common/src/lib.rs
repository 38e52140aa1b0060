//! Shared parts of nestdock's benchmark (`bench/run.sh`): the transport of the
//! floor and baseline servers, the pods and reviews sent, the checks run on
//! every server's answers before measuring, and the report.

pub mod check;
pub mod pods;
pub mod report;
pub mod transport;
