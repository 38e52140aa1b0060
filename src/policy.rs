//! Namespace policy (under construction).
