//! Checks of single values that come from users (annotations, the config file).
//!
//! Each returns a message that names the value and what is accepted, so callers
//! only add *where* the value came from. Values reach dockerd as separate argv
//! entries (never through a shell), but they are still checked here so that a
//! typo is reported at admission time rather than as a crash-looping daemon.

use std::fmt::Write as _;
use std::net::IpAddr;

/// A user's value as error messages quote it: Debug-escaped and cut after
/// [`SHOWN_MAX`] characters, so that a 256 KiB annotation does not come back
/// whole in every message that names it (responses stay bounded).
pub fn shown(s: &str) -> String {
    match s.char_indices().nth(SHOWN_MAX) {
        None => format!("{s:?}"),
        Some((cut, _)) => {
            let mut out = format!("{:?}", &s[..cut]);
            let _ = write!(out, "... ({} bytes in all)", s.len());
            out
        }
    }
}

/// How many characters of a value [`shown`] keeps.
pub const SHOWN_MAX: usize = 80;

/// An RFC 1123 subdomain (storage class names, for example).
pub fn dns_subdomain(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !part.starts_with('-')
                && !part.ends_with('-')
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{} is not a DNS subdomain: lower-case letters, digits, '-' and '.', at most 253 characters", shown(s)
        ))
    }
}

/// Whether `s` is an RFC 1123 label (namespace and service names): 1-63
/// lower-case letters, digits or '-', starting and ending with a letter or
/// digit. The one copy of the rule; callers word the error for their input.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// [`is_dns_label`], with an error naming the value and what is accepted.
pub fn dns_label(s: &str) -> Result<(), String> {
    if is_dns_label(s) {
        Ok(())
    } else {
        Err(format!(
            "{} is not a DNS label: 1-63 lower-case letters, digits or '-', starting and ending \
             with a letter or digit",
            shown(s)
        ))
    }
}

/// `address/prefix`, IPv4 or IPv6.
pub fn cidr(s: &str) -> Result<(), String> {
    let bad = || {
        format!(
            "{} is not a CIDR: expected address/prefix, e.g. 172.30.0.1/16",
            shown(s)
        )
    };
    let (addr, prefix) = s.split_once('/').ok_or_else(bad)?;
    let addr: IpAddr = addr.parse().map_err(|_| bad())?;
    let prefix: u8 = prefix.parse().map_err(|_| bad())?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    if prefix > max {
        return Err(bad());
    }
    Ok(())
}

/// A registry mirror: an `http://` or `https://` URL with a host.
pub fn registry_mirror(s: &str) -> Result<(), String> {
    let bad = || {
        format!("{} is not a registry mirror: expected an http:// or https:// URL, e.g. https://mirror.example.com", shown(s))
    };
    let rest = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"))
        .ok_or_else(bad)?;
    let host = rest.split('/').next().unwrap_or("");
    if host.is_empty()
        || !rest
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b',' && b != b'"' && b != b'\'')
    {
        return Err(bad());
    }
    host_port(host).map_err(|_| bad())
}

/// An insecure registry: `host[:port]` or a CIDR.
pub fn insecure_registry(s: &str) -> Result<(), String> {
    if s.contains('/') {
        return cidr(s).map_err(|_| {
            format!(
                "{} is not an insecure registry: expected host[:port] or a CIDR such as 10.0.0.0/8",
                shown(s)
            )
        });
    }
    host_port(s).map_err(|_| {
        format!(
            "{} is not an insecure registry: expected host[:port] or a CIDR such as 10.0.0.0/8",
            shown(s)
        )
    })
}

fn host_port(s: &str) -> Result<(), ()> {
    // Bracketed IPv6 with optional port.
    if let Some(rest) = s.strip_prefix('[') {
        let (addr, after) = rest.split_once(']').ok_or(())?;
        addr.parse::<std::net::Ipv6Addr>().map_err(|_| ())?;
        return match after {
            "" => Ok(()),
            p => port(p.strip_prefix(':').ok_or(())?),
        };
    }
    let (host, p) = match s.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (s, None),
    };
    if let Some(p) = p {
        port(p)?;
    }
    let ok = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        });
    if ok {
        Ok(())
    } else {
        Err(())
    }
}

fn port(p: &str) -> Result<(), ()> {
    match p.parse::<u16>() {
        Ok(n) if n > 0 && p.bytes().all(|b| b.is_ascii_digit()) => Ok(()),
        _ => Err(()),
    }
}

/// A container image reference: non-empty, no white space or control characters.
pub fn image(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("an image reference must not be empty".into());
    }
    if s.len() > 4096
        || !s.bytes().all(|b| b.is_ascii_graphic())
        || s.starts_with(['-', ':', '@', '/'])
    {
        return Err(format!(
            "{} is not an image reference: expected [registry/]name[:tag][@digest], e.g. docker:28-dind", shown(s)
        ));
    }
    Ok(())
}

/// An environment variable name as Kubernetes accepts it (C identifier, plus '.' and '-').
pub fn env_name(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && !s.starts_with(|c: char| c.is_ascii_digit())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{} is not a valid environment variable name",
            shown(s)
        ))
    }
}

/// A label key: optional DNS-subdomain prefix and `/`, then a name of up to 63 characters.
pub fn label_key(s: &str) -> Result<(), String> {
    let (prefix, name) = match s.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    if let Some(p) = prefix {
        dns_subdomain(p).map_err(|_| {
            format!(
                "{} is not a valid label key: bad prefix {}",
                shown(s),
                shown(p)
            )
        })?;
    }
    label_value(name)
        .ok()
        .filter(|_| !name.is_empty())
        .ok_or_else(|| format!("{} is not a valid label key", shown(s)))
}

/// A label value: at most 63 alphanumerics, '-', '_' or '.', starting and ending alphanumeric.
pub fn label_value(s: &str) -> Result<(), String> {
    let ok = s.is_empty()
        || (s.len() <= 63
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
            && s.starts_with(|c: char| c.is_ascii_alphanumeric())
            && s.ends_with(|c: char| c.is_ascii_alphanumeric()));
    if ok {
        Ok(())
    } else {
        Err(format!("{} is not a valid label value", shown(s)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_values() {
        assert!(registry_mirror("https://mirror.gcr.io").is_ok());
        assert!(registry_mirror("http://10.0.0.5:5000/").is_ok());
        assert!(registry_mirror("mirror.gcr.io").is_err());
        assert!(registry_mirror("https://").is_err());
        assert!(registry_mirror("https://a b").is_err());
        assert!(insecure_registry("registry.local:5000").is_ok());
        assert!(insecure_registry("10.0.0.0/8").is_ok());
        assert!(insecure_registry("[::1]:5000").is_ok());
        assert!(insecure_registry("http://x").is_err());
        assert!(insecure_registry("x:0").is_err());
        assert!(insecure_registry("10.0.0.0/40").is_err());
    }

    #[test]
    fn names() {
        assert!(label_key("nestdock.io/docker").is_ok());
        assert!(label_key("Bad Key").is_err());
        assert!(env_name("HTTPS_PROXY").is_ok());
        assert!(env_name("1X").is_err());
        assert!(image("docker:28-dind").is_ok());
        assert!(image("docker 28").is_err());
        assert!(cidr("172.17.0.1/16").is_ok());
        assert!(cidr("172.17.0.1").is_err());
    }
}
