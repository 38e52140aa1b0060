//! rustls server configuration (under construction).
