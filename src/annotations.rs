//! Pod annotations (under construction).
