//! BuildKit's control API (`/grpc`, what `docker buildx` with the docker
//! driver and `docker build` of Docker 23+ use), as the guard reads it.
//!
//! The connection is hijacked into HTTP/2 with gRPC on it; the guard serves
//! it itself and forwards every call (`proxy::grpc`), reading two:
//! `Control/Solve`, whose request says what the build may do, and the
//! frontend gateway's `LLBBridge/Solve`, through which buildx runs the
//! Dockerfile frontend (its `FrontendOpt`, field 3, is read as
//! `FrontendAttrs` below). In a Control Solve:
//!
//! - `Entitlements` (field 9) grant `network.host` (steps in the node's
//!   network namespace: dockerd allows it by default) and
//!   `security.insecure` (privileged steps): refused, as the classic
//!   builder's `networkmode=host` is.
//! - `FrontendAttrs` (field 7): `cgroup-parent` is refused as the classic
//!   builder's `cgroupparent`; a `label:io.nestdock.*` the pod sets itself
//!   is refused; the pod's label is added (`label:io.nestdock.pod-uid`, so a
//!   BuildKit build's image is the pod's, as a classic build's is), and with
//!   `--pod-cgroup` the pod's cgroup as the steps' parent.
//! - `ExporterAttrs` (field 4) `name`: the tags the image exporter sets,
//!   returned for the tag ownership check.
//!
//! Hand-written: a protobuf walker for three top-level fields is smaller
//! and easier to trust than generated code for BuildKit's whole API. Fields
//! are appended, never rewritten in place: protobuf map entries that come
//! later replace earlier ones, so what the guard appends is what BuildKit
//! reads.

use super::owner::POD_UID_LABEL;

/// The calls the guard reads.
pub const SOLVE: &str = "/moby.buildkit.v1.Control/Solve";
pub const GATEWAY_SOLVE: &str = "/moby.buildkit.v1.frontend.LLBBridge/Solve";

/// Which Solve a request is, by its gRPC path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    Control,
    Gateway,
}

impl Call {
    pub fn of(path: &str) -> Option<Call> {
        match path {
            SOLVE => Some(Call::Control),
            GATEWAY_SOLVE => Some(Call::Gateway),
            _ => None,
        }
    }

    /// Field numbers: entitlements, frontend attributes, exporter attributes.
    fn fields(self) -> (Option<u64>, u64, Option<u64>) {
        match self {
            Call::Control => (Some(ENTITLEMENTS), FRONTEND_ATTRS, Some(EXPORTER_ATTRS)),
            Call::Gateway => (None, GATEWAY_FRONTEND_OPT, None),
        }
    }
}
/// The largest Solve request the guard reads (an LLB definition of a large
/// Dockerfile is a few hundred KiB). HTTP/2 lets one connection open many
/// streams, each with a Solve: what they hold together is bounded by the
/// guard's memory budget for bodies (`proxy`).
pub const MAX_SOLVE_BYTES: usize = 16 << 20;

const ENTITLEMENTS: u64 = 9;
const FRONTEND_ATTRS: u64 = 7;
const EXPORTER_ATTRS: u64 = 4;
const GATEWAY_FRONTEND_OPT: u64 = 3;

/// What the guard knows when it reads a Solve.
#[derive(Debug, Clone)]
pub struct Policy<'a> {
    pub uid: &'a str,
    /// The pod's cgroup, for the build's steps (`--pod-cgroup`).
    pub cgroup_parent: Option<&'a str>,
}

/// A Solve the guard lets through: the request body to send instead, and
/// the tags its image exporter would set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Solve {
    pub body: Vec<u8>,
    pub tags: Vec<String>,
}

/// Reads a Solve request body (one gRPC message) and rewrites it, or says
/// why it is refused.
pub fn solve(call: Call, body: &[u8], policy: &Policy) -> Result<Solve, String> {
    let refuse = |why: String| format!("nestdock guard: BuildKit Solve: {why}");
    let (entitlements, attrs, exporter) = call.fields();
    if body.len() < 5 {
        return Err(refuse("the request is not one gRPC message".into()));
    }
    if body[0] != 0 {
        return Err(refuse(
            "a compressed request cannot be read (send it uncompressed)".into(),
        ));
    }
    let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
    if body.len() - 5 != len {
        return Err(refuse("the request is not one gRPC message".into()));
    }
    let payload = &body[5..];
    let mut tags = Vec::new();
    for (number, value) in fields(payload).map_err(|e| refuse(format!("cannot be read: {e}")))? {
        let field = if Some(number) == entitlements {
            ENTITLEMENTS
        } else if number == attrs {
            FRONTEND_ATTRS
        } else if Some(number) == exporter {
            EXPORTER_ATTRS
        } else {
            continue;
        };
        match (field, value) {
            (ENTITLEMENTS, Value::Bytes(e)) => {
                return Err(refuse(format!(
                    "entitlement {:?} is refused: network.host would run the build's steps in \
                     the node's network namespace, security.insecure privileged",
                    String::from_utf8_lossy(e)
                )))
            }
            (ENTITLEMENTS, _) => return Err(refuse("Entitlements cannot be read".into())),
            (FRONTEND_ATTRS, Value::Bytes(entry)) => {
                let (key, value) =
                    map_entry(entry).map_err(|e| refuse(format!("FrontendAttrs: {e}")))?;
                if key == "cgroup-parent" && !value.is_empty() {
                    return Err(refuse(format!(
                        "FrontendAttrs cgroup-parent {value:?} is refused: the build's steps \
                         stay where the guard puts them"
                    )));
                }
                if key.starts_with("label:io.nestdock.") {
                    return Err(refuse(format!(
                        "FrontendAttrs {key:?} is refused: nestdock's labels are the guard's to set"
                    )));
                }
            }
            (EXPORTER_ATTRS, Value::Bytes(entry)) => {
                let (key, value) =
                    map_entry(entry).map_err(|e| refuse(format!("ExporterAttrs: {e}")))?;
                if key == "name" {
                    tags.extend(
                        value
                            .split(',')
                            .map(str::trim)
                            .filter(|t| !t.is_empty())
                            .map(str::to_string),
                    );
                }
            }
            _ => return Err(refuse("a map entry cannot be read".into())),
        }
    }
    let mut out = payload.to_vec();
    append_entry(
        &mut out,
        attrs,
        &format!("label:{POD_UID_LABEL}"),
        policy.uid,
    );
    if let Some(parent) = policy.cgroup_parent {
        append_entry(&mut out, attrs, "cgroup-parent", parent);
    }
    let len = u32::try_from(out.len()).map_err(|_| refuse("the request is too large".into()))?;
    let mut framed = Vec::with_capacity(out.len() + 5);
    framed.push(0);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(&out);
    Ok(Solve { body: framed, tags })
}

enum Value<'a> {
    Varint,
    Fixed,
    Bytes(&'a [u8]),
}

fn varint(buf: &[u8], pos: &mut usize) -> Result<u64, String> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *buf.get(*pos).ok_or("a varint runs past the end")?;
        *pos += 1;
        value |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err("a varint is longer than 10 bytes".into())
}

/// The top-level fields of a message, in order.
fn fields(buf: &[u8]) -> Result<Vec<(u64, Value<'_>)>, String> {
    let mut pos = 0;
    let mut out = Vec::new();
    while pos < buf.len() {
        let key = varint(buf, &mut pos)?;
        let (number, wire) = (key >> 3, key & 7);
        if number == 0 {
            return Err("field number 0".into());
        }
        let value = match wire {
            0 => {
                varint(buf, &mut pos)?;
                Value::Varint
            }
            1 | 5 => {
                let n = if wire == 1 { 8 } else { 4 };
                if buf.len() - pos < n {
                    return Err("a fixed-size field runs past the end".into());
                }
                pos += n;
                Value::Fixed
            }
            2 => {
                let len =
                    usize::try_from(varint(buf, &mut pos)?).map_err(|_| "a length does not fit")?;
                if buf.len() - pos < len {
                    return Err("a length-delimited field runs past the end".into());
                }
                let v = &buf[pos..pos + len];
                pos += len;
                Value::Bytes(v)
            }
            w => return Err(format!("wire type {w} (groups or unknown)")),
        };
        out.push((number, value));
    }
    Ok(out)
}

/// A `map<string, string>` entry: key (1) and value (2), either absent.
fn map_entry(entry: &[u8]) -> Result<(String, String), String> {
    let (mut key, mut value) = (String::new(), String::new());
    for (number, v) in fields(entry)? {
        let text = match v {
            Value::Bytes(b) => {
                String::from_utf8(b.to_vec()).map_err(|_| "a string is not UTF-8".to_string())?
            }
            _ => return Err("a map entry field is not a string".into()),
        };
        match number {
            1 => key = text,
            2 => value = text,
            _ => return Err(format!("a map entry has field {number}")),
        }
    }
    Ok((key, value))
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn append_entry(out: &mut Vec<u8>, field: u64, key: &str, value: &str) {
    let mut entry = Vec::with_capacity(key.len() + value.len() + 6);
    for (n, s) in [(1u64, key), (2, value)] {
        put_varint(&mut entry, (n << 3) | 2);
        put_varint(&mut entry, s.len() as u64);
        entry.extend_from_slice(s.as_bytes());
    }
    put_varint(out, (field << 3) | 2);
    put_varint(out, entry.len() as u64);
    out.extend_from_slice(&entry);
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: Policy = Policy {
        uid: "u1",
        cgroup_parent: None,
    };

    fn string_field(out: &mut Vec<u8>, n: u64, s: &str) {
        put_varint(out, (n << 3) | 2);
        put_varint(out, s.len() as u64);
        out.extend_from_slice(s.as_bytes());
    }

    fn framed(payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0];
        f.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    /// A Solve as the dockerfile frontend's client sends one: a ref, the
    /// frontend, an attribute, an exporter with a name.
    fn request(extra: impl Fn(&mut Vec<u8>)) -> Vec<u8> {
        let mut p = Vec::new();
        string_field(&mut p, 1, "ref1");
        string_field(&mut p, 6, "dockerfile.v0");
        append_entry(&mut p, FRONTEND_ATTRS, "filename", "Dockerfile");
        append_entry(&mut p, EXPORTER_ATTRS, "name", "app:ci, app:latest");
        put_varint(&mut p, 11 << 3); // a varint field (wire type 0) the guard skips
        put_varint(&mut p, 300);
        extra(&mut p);
        framed(&p)
    }

    fn frontend_attrs(payload: &[u8]) -> Vec<(String, String)> {
        fields(payload)
            .unwrap()
            .into_iter()
            .filter_map(|(n, v)| match (n, v) {
                (FRONTEND_ATTRS, Value::Bytes(e)) => Some(map_entry(e).unwrap()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_plain_solve_passes_labelled_with_its_tags_named() {
        let s = solve(Call::Control, &request(|_| {}), &POLICY).unwrap();
        assert_eq!(s.tags, vec!["app:ci", "app:latest"]);
        let len = u32::from_be_bytes(s.body[1..5].try_into().unwrap()) as usize;
        assert_eq!(len, s.body.len() - 5);
        assert_eq!(
            frontend_attrs(&s.body[5..]),
            vec![
                ("filename".into(), "Dockerfile".into()),
                ("label:io.nestdock.pod-uid".into(), "u1".into())
            ]
        );
        // With --pod-cgroup the steps' parent is the pod's cgroup.
        let placed = solve(
            Call::Control,
            &request(|_| {}),
            &Policy {
                cgroup_parent: Some("/kubepods/burstable/podu1"),
                ..POLICY
            },
        )
        .unwrap();
        assert!(frontend_attrs(&placed.body[5..])
            .contains(&("cgroup-parent".into(), "/kubepods/burstable/podu1".into())));
    }

    /// buildx runs the Dockerfile frontend through the gateway: its options
    /// are field 3 there, and get the same treatment.
    #[test]
    fn a_gateway_solve_gets_the_label_and_no_cgroup_parent() {
        let mut p = Vec::new();
        string_field(&mut p, 2, "dockerfile.v0");
        append_entry(&mut p, GATEWAY_FRONTEND_OPT, "filename", "Dockerfile");
        // Field 9 of a gateway request is not an entitlement.
        string_field(&mut p, 9, "anything");
        let s = solve(Call::Gateway, &framed(&p), &POLICY).unwrap();
        let opts: Vec<(String, String)> = fields(&s.body[5..])
            .unwrap()
            .into_iter()
            .filter_map(|(n, v)| match (n, v) {
                (GATEWAY_FRONTEND_OPT, Value::Bytes(e)) => Some(map_entry(e).unwrap()),
                _ => None,
            })
            .collect();
        assert_eq!(
            opts,
            vec![
                ("filename".into(), "Dockerfile".into()),
                ("label:io.nestdock.pod-uid".into(), "u1".into())
            ]
        );
        append_entry(&mut p, GATEWAY_FRONTEND_OPT, "cgroup-parent", "/x");
        let e = solve(Call::Gateway, &framed(&p), &POLICY).unwrap_err();
        assert!(e.contains("cgroup-parent"), "{e}");
        assert_eq!(Call::of(GATEWAY_SOLVE), Some(Call::Gateway));
        assert_eq!(Call::of("/moby.buildkit.v1.Control/Status"), None);
    }

    #[test]
    fn what_would_reach_the_node_is_refused() {
        for (extra, says) in [
            (
                Box::new(|p: &mut Vec<u8>| string_field(p, ENTITLEMENTS, "network.host"))
                    as Box<dyn Fn(&mut Vec<u8>)>,
                "entitlement \"network.host\"",
            ),
            (
                Box::new(|p: &mut Vec<u8>| string_field(p, ENTITLEMENTS, "security.insecure")),
                "security.insecure",
            ),
            (
                Box::new(|p: &mut Vec<u8>| append_entry(p, FRONTEND_ATTRS, "cgroup-parent", "/")),
                "cgroup-parent",
            ),
            (
                Box::new(|p: &mut Vec<u8>| {
                    append_entry(p, FRONTEND_ATTRS, "label:io.nestdock.pod-uid", "other")
                }),
                "nestdock's labels",
            ),
        ] {
            let e = solve(Call::Control, &request(extra), &POLICY).unwrap_err();
            assert!(e.contains(says) && e.starts_with("nestdock guard: "), "{e}");
        }
    }

    #[test]
    fn what_cannot_be_read_is_refused() {
        let good = request(|_| {});
        let mut compressed = good.clone();
        compressed[0] = 1;
        let mut two = good.clone();
        two.extend_from_slice(&good);
        let truncated = framed(&good[5..good.len() - 1]);
        let mut group = Vec::new();
        put_varint(&mut group, (3 << 3) | 3);
        for (body, says) in [
            (vec![0, 0], "not one gRPC message"),
            (compressed, "compressed"),
            (two, "not one gRPC message"),
            (truncated, "cannot be read"),
            (framed(&group), "wire type 3"),
            (framed(&[0x80; 11]), "cannot be read"),
        ] {
            let e = solve(Call::Control, &body, &POLICY).unwrap_err();
            assert!(e.contains(says), "{body:?}: {e}");
        }
    }
}
