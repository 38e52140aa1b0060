//! The publish policy: which fixed host ports a pod may publish on the node.
//!
//! A fixed host port (`-p 8080:80`) is taken on the node's address for
//! every pod on that node: two jobs that both publish 8080 collide, the
//! second failing at start. So by default only random host ports pass
//! (`-p 80`, `-P`). A platform whose jobs need fixed ports (a compose file
//! it cannot change) names ranges in `dood.guard.hostPorts`, which the
//! webhook passes as `--host-ports`, and accepts that jobs on one node may
//! then collide there.

use std::fmt;
use std::str::FromStr;

/// An inclusive range of ports, `8000-8999` or `5432`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    /// Whether every port of `other` is in this range.
    pub fn covers(&self, other: &PortRange) -> bool {
        self.first <= other.first && other.last <= self.last
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

/// A port as Go's `strconv.ParseUint(s, 10, 16)` reads it (dockerd parses
/// `HostPort` so): ASCII digits only, no sign or space. Leading zeros are
/// accepted there too.
fn port(s: &str) -> Option<u16> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

impl FromStr for PortRange {
    type Err = String;

    /// `N` or `N-M` with `1 <= N <= M <= 65535`.
    fn from_str(s: &str) -> Result<Self, String> {
        let (first, last) = match s.split_once('-') {
            Some((a, b)) => (port(a), port(b)),
            None => (port(s), port(s)),
        };
        match (first, last) {
            (Some(first), Some(last)) if first >= 1 && first <= last => {
                Ok(PortRange { first, last })
            }
            _ => Err(format!(
                "{s:?} is not a port range: expected PORT or FIRST-LAST, ports 1 to 65535, \
                 FIRST <= LAST"
            )),
        }
    }
}

/// The ranges in which fixed host ports are allowed; none: random only.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostPorts(pub Vec<PortRange>);

impl HostPorts {
    /// Why `host_port` (a `PortBindings` `HostPort`, already known not to
    /// be empty or `0`) may not be published, or `None` when it may.
    pub fn refuse(&self, host_port: &str) -> Option<String> {
        let random = "fixed host ports collide between jobs on the node; publish with a random \
                      port (-p 80 or -P)";
        let wanted: PortRange = match host_port.parse() {
            Ok(r) => r,
            Err(_) if self.0.is_empty() => return Some(random.into()),
            Err(e) => return Some(e),
        };
        if self.0.iter().any(|r| r.covers(&wanted)) {
            return None;
        }
        if self.0.is_empty() {
            return Some(random.into());
        }
        Some(format!(
            "{random}, or with a host port in {} (dood.guard.hostPorts)",
            self
        ))
    }
}

impl fmt::Display for HostPorts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_read_as_dockerd_reads_host_ports() {
        assert_eq!(
            "8000-8999".parse(),
            Ok(PortRange {
                first: 8000,
                last: 8999
            })
        );
        assert_eq!(
            "5432".parse(),
            Ok(PortRange {
                first: 5432,
                last: 5432
            })
        );
        for bad in [
            "", "0", "-1", "+80", " 80", "80 ", "9-8", "1-65536", "a", "80-", "-80", "1-2-3",
        ] {
            let e = bad.parse::<PortRange>().unwrap_err();
            assert!(e.contains("PORT or FIRST-LAST"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn a_fixed_port_passes_only_inside_a_named_range() {
        let none = HostPorts::default();
        assert!(none.refuse("8080").unwrap().contains("random port"));
        let some = HostPorts(vec!["8000-8099".parse().unwrap(), "5432".parse().unwrap()]);
        assert_eq!(some.refuse("8080"), None);
        assert_eq!(some.refuse("8000-8099"), None);
        assert_eq!(some.refuse("5432"), None);
        let outside = some.refuse("8090-8100").unwrap();
        assert!(outside.contains("8000-8099,5432"), "{outside}");
        assert!(some.refuse("5433").is_some());
        assert!(some.refuse("80x").unwrap().contains("not a port range"));
    }
}
