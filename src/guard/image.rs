//! Image tags owned per pod: which pod a tag belongs to, image references
//! as dockerd normalises them, and the tags an image archive (`docker load`)
//! would set, read from the archive as it streams past.
//!
//! A tag belongs to the pod whose uid labels the image it points at (the
//! guard labels every image a pod builds, imports or commits). All tags of
//! one image therefore share one owner. A tag whose image carries no pod
//! label is the node's (pulled, or loaded from an archive): shared for
//! reading, pulling and pushing, never moved or removed through a guard.

use std::collections::HashMap;

use super::body::Json;
use super::owner::POD_UID_LABEL;

/// The largest `manifest.json`, `repositories` or `index.json` read from an
/// image archive (docker save writes a few hundred bytes per image).
pub const MAX_INDEX_BYTES: usize = 1 << 20;

/// A reference as dockerd stores it: `docker.io/library/busybox:latest`,
/// `registry:5000/team/app:1`, or `name@sha256:…` for a digest. A name
/// without a tag gets `latest`.
pub fn normalise(reference: &str) -> Result<String, String> {
    let bad = |why: &str| {
        format!(
            "nestdock guard: image reference {} {why}",
            crate::validate::shown(reference)
        )
    };
    let (name, suffix) = match reference.split_once('@') {
        Some((name, digest)) => {
            if !digest.contains(':') || digest.contains('@') {
                return Err(bad("has a malformed digest"));
            }
            (name, format!("@{digest}"))
        }
        None => {
            let last_slash = reference.rfind('/').map_or(0, |i| i + 1);
            match reference[last_slash..].rfind(':') {
                Some(i) => {
                    let at = last_slash + i;
                    let tag = &reference[at + 1..];
                    let tag_ok = !tag.is_empty()
                        && tag.len() <= 128
                        && tag
                            .bytes()
                            .next()
                            .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
                        && tag
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
                    if !tag_ok {
                        return Err(bad("has a malformed tag"));
                    }
                    (&reference[..at], format!(":{tag}"))
                }
                None => (reference, ":latest".to_string()),
            }
        }
    };
    if name.is_empty() || name.len() > 255 {
        return Err(bad("has no name, or too long a name"));
    }
    let (domain, path) = match name.split_once('/') {
        Some((first, rest))
            if first.contains('.') || first.contains(':') || first == "localhost" =>
        {
            (first, rest.to_string())
        }
        _ => ("docker.io", name.to_string()),
    };
    let domain = if domain == "index.docker.io" {
        "docker.io"
    } else {
        domain
    };
    let path = if domain == "docker.io" && !path.contains('/') {
        format!("library/{path}")
    } else {
        path
    };
    let path_ok = !path.is_empty()
        && path.split('/').all(|c| {
            !c.is_empty()
                && c.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
                })
        });
    let domain_ok = domain
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':'));
    if !path_ok || !domain_ok {
        return Err(bad(
            "is not a valid name (lowercase letters, digits, '.', '_', '-', separated by '/')",
        ));
    }
    Ok(format!("{domain}/{path}{suffix}"))
}

/// The repository of a normalised tag (`docker.io/library/busybox`).
pub fn repository(normalised: &str) -> &str {
    let last_slash = normalised.rfind('/').map_or(0, |i| i + 1);
    match normalised[last_slash..].find([':', '@']) {
        Some(i) => &normalised[..last_slash + i],
        None => normalised,
    }
}

/// The tag that `repo` and `tag` query parameters name (import, commit,
/// tag, pull): `None` when `repo` is empty (no tag is set). A `repo` may
/// carry its tag itself when `tag` is empty.
pub fn repo_tag(repo: &str, tag: &str) -> Result<Option<String>, String> {
    if repo.is_empty() {
        return Ok(None);
    }
    let reference = if tag.is_empty() {
        repo.to_string()
    } else if tag.contains(':') {
        // A digest given as the tag (pull by digest).
        format!("{repo}@{tag}")
    } else {
        format!("{repo}:{tag}")
    };
    normalise(&reference).map(Some)
}

/// The pod uid an image's labels name (an inspect answer's
/// `Config.Labels`, or a list entry's `Labels`).
pub fn owner_of(labels: Option<&Json>) -> Option<String> {
    labels
        .and_then(|l| l.entry(POD_UID_LABEL))
        .and_then(Json::as_str)
        .map(str::to_string)
}

/// A tag on the node that this pod may not move or remove: the image it
/// points at, and the pod that owns it (`None`: the node's own).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub image: String,
    pub owner: Option<String>,
}

/// Every tag on the node that is not the pod's, from `GET /images/json`.
pub fn held_tags(list: &Json, uid: &str) -> HashMap<String, Held> {
    let mut held = HashMap::new();
    let Json::Array(images) = list else {
        return held;
    };
    for image in images {
        let owner = owner_of(image.field("Labels"));
        if owner.as_deref() == Some(uid) {
            continue;
        }
        let id = image.field("Id").and_then(Json::as_str).unwrap_or("");
        let Some(Json::Array(tags)) = image.field("RepoTags") else {
            continue;
        };
        for tag in tags.iter().filter_map(Json::as_str) {
            if let Ok(tag) = normalise(tag) {
                held.insert(
                    tag,
                    Held {
                        image: id.to_string(),
                        owner: owner.clone(),
                    },
                );
            }
        }
    }
    held
}

/// Why the pod may not point `tag` (normalised) at a new image, given who
/// holds it now; `None` when it may.
pub fn refuse_write(tag: &str, held: Option<&Held>) -> Option<String> {
    let held = held?;
    Some(match &held.owner {
        Some(_) => format!(
            "nestdock guard: image tag {tag} belongs to another pod on this node; it is not \
             overwritten (use a tag of this pod's own, e.g. with the job's id in it)"
        ),
        None => format!(
            "nestdock guard: image tag {tag} is the node's (no pod built it): images are shared \
             for reading and pulling, their tags are not moved through the guard (use a tag of \
             this pod's own)"
        ),
    })
}

/// Why the pod may not remove the image `name`, whose owner is `owner`.
pub fn refuse_remove(name: &str, owner: Option<&str>, uid: &str) -> Option<String> {
    match owner {
        Some(o) if o == uid => None,
        Some(_) => Some(format!(
            "nestdock guard: image {} belongs to another pod on this node; it is not removed",
            crate::validate::shown(name)
        )),
        None => Some(format!(
            "nestdock guard: image {} is the node's shared image cache (no pod built it); it is \
             not removed through the guard",
            crate::validate::shown(name)
        )),
    }
}

/// Why the pod may not push `tag`: it belongs to another pod.
pub fn refuse_push(tag: &str, held: Option<&Held>) -> Option<String> {
    held.filter(|h| h.owner.is_some()).map(|_| {
        format!(
            "nestdock guard: image tag {tag} belongs to another pod on this node; it is not pushed"
        )
    })
}

/// A tag an image archive sets, and the image id it points the tag at
/// where the archive says so in the form dockerd's image store uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveTag {
    pub tag: String,
    /// `sha256:<config digest>`, from docker's `manifest.json` (`Config` is
    /// `blobs/sha256/<hex>` or `<hex>.json`): the id dockerd gives the image.
    pub image: Option<String>,
}

impl ArchiveTag {
    /// Whether loading it leaves the tag where it is: it already points at
    /// the same image. Two jobs that `docker load` the same cached archive
    /// set the same tag on the same image; that moves nothing.
    pub fn keeps(&self, held: &Held) -> bool {
        self.image.as_deref() == Some(held.image.as_str())
    }
}

/// The image id a `manifest.json` entry's `Config` path names.
fn config_id(config: Option<&serde_json::Value>) -> Option<String> {
    let path = config?.as_str()?;
    let hex = path
        .strip_prefix("blobs/sha256/")
        .or_else(|| path.strip_suffix(".json"))?;
    (hex.len() == 64
        && hex
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()))
    .then(|| format!("sha256:{hex}"))
}

/// The tags an index file of an image archive names: docker's
/// `manifest.json` (`[{"RepoTags": [...]}]`), the legacy `repositories`
/// (`{"repo": {"tag": "id"}}`) or an OCI `index.json` (the image name
/// annotations).
pub fn archive_tags(file: &str, bytes: &[u8]) -> Result<Vec<ArchiveTag>, String> {
    let bad = || format!("nestdock guard: the image archive's {file} cannot be read");
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|_| bad())?;
    let mut tags = Vec::new();
    match file {
        "manifest.json" => {
            for entry in value.as_array().ok_or_else(bad)? {
                let image = config_id(entry.get("Config"));
                for tag in entry
                    .get("RepoTags")
                    .and_then(|t| t.as_array())
                    .into_iter()
                    .flatten()
                {
                    tags.push(ArchiveTag {
                        tag: normalise(tag.as_str().ok_or_else(bad)?)?,
                        image: image.clone(),
                    });
                }
            }
        }
        "repositories" => {
            for (repo, entries) in value.as_object().ok_or_else(bad)? {
                for tag in entries.as_object().ok_or_else(bad)?.keys() {
                    tags.push(ArchiveTag {
                        tag: normalise(&format!("{repo}:{tag}"))?,
                        image: None,
                    });
                }
            }
        }
        _ => {
            for manifest in value
                .get("manifests")
                .and_then(|m| m.as_array())
                .into_iter()
                .flatten()
            {
                let notes = manifest.get("annotations");
                for key in [
                    "io.containerd.image.name",
                    "org.opencontainers.image.ref.name",
                ] {
                    // A bare tag in ref.name names no repository: nothing to
                    // check (dockerd needs the full name to tag).
                    if let Some(name) = notes.and_then(|n| n.get(key)).and_then(|n| n.as_str()) {
                        if name.contains('/') || name.contains(':') {
                            tags.push(ArchiveTag {
                                tag: normalise(name)?,
                                image: None,
                            });
                        }
                    }
                }
            }
        }
    }
    Ok(tags)
}

/// Reads an uncompressed tar stream as Go's `archive/tar` and dockerd's
/// untar read it, just enough to find the archive's index files (at its
/// root, whatever path spelling leads there) and hand their content to the
/// caller. Anything it cannot follow exactly (compression, sparse files,
/// entries below a symbolic link, an index file that is a link) is refused:
/// the load would otherwise set tags the guard did not see.
#[derive(Debug, Default)]
pub struct TarScan {
    block: Vec<u8>,
    /// Bytes of the current entry's data still to come, then its padding.
    data_left: u64,
    pad_left: u64,
    /// The current entry's data, kept: an index file, or a pax/GNU header.
    keep: Option<(Keep, Vec<u8>)>,
    /// Overrides from pax (`path`, `size`) and GNU long-name headers, for
    /// the next entry.
    next_path: Option<String>,
    next_size: Option<u64>,
    /// Cleaned paths of the symbolic and hard links seen so far.
    links: Vec<String>,
    started: bool,
    ended: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Keep {
    Index(&'static str),
    Pax,
    LongName,
}

fn scan_error(why: &str) -> String {
    format!(
        "nestdock guard: the image archive cannot be checked for the tags it sets: {why} \
         (send an uncompressed archive as docker save writes it)"
    )
}

/// A tar path as dockerd's untar places it below its directory: `.` and
/// empty parts dropped, `..` applied. `None` when it climbs out.
fn clean_path(path: &str) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            p => parts.push(p),
        }
    }
    Some(parts.join("/"))
}

/// Go's tar number: octal text (spaces and NULs trimmed) or base-256.
fn tar_number(field: &[u8]) -> Option<u64> {
    if field.first().is_some_and(|b| b & 0x80 != 0) {
        let mut n: u64 = u64::from(field[0] & 0x7f);
        if field[0] & 0x40 != 0 {
            return None; // negative
        }
        for &b in &field[1..] {
            n = n.checked_mul(256)?.checked_add(u64::from(b))?;
        }
        return Some(n);
    }
    let text = std::str::from_utf8(field).ok()?;
    let text = text.trim_matches(|c| c == ' ' || c == '\0');
    if text.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(text, 8).ok()
}

fn tar_string(field: &[u8]) -> String {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    String::from_utf8_lossy(&field[..end]).into_owned()
}

impl TarScan {
    /// Reads the next bytes of the stream; returns the index files completed
    /// in them (their root name and content).
    pub fn feed(&mut self, mut data: &[u8]) -> Result<Vec<(&'static str, Vec<u8>)>, String> {
        let mut found = Vec::new();
        if !self.started && !data.is_empty() {
            self.started = true;
            let magic: &[&[u8]] = &[b"\x1f\x8b", b"BZh", b"\xfd7zXZ", b"\x28\xb5\x2f\xfd"];
            if magic.iter().any(|m| data.starts_with(m)) {
                return Err(scan_error("it is compressed"));
            }
        }
        while !data.is_empty() && !self.ended {
            if self.data_left > 0 {
                let n = data
                    .len()
                    .min(usize::try_from(self.data_left).unwrap_or(usize::MAX));
                if let Some((_, buf)) = &mut self.keep {
                    if buf.len() + n > MAX_INDEX_BYTES {
                        return Err(scan_error("an index file or header is too large"));
                    }
                    buf.extend_from_slice(&data[..n]);
                }
                self.data_left -= n as u64;
                data = &data[n..];
                if self.data_left == 0 {
                    self.entry_done(&mut found)?;
                }
                continue;
            }
            if self.pad_left > 0 {
                let n = data
                    .len()
                    .min(usize::try_from(self.pad_left).unwrap_or(usize::MAX));
                self.pad_left -= n as u64;
                data = &data[n..];
                continue;
            }
            let n = data.len().min(512 - self.block.len());
            self.block.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.block.len() == 512 {
                let block = std::mem::take(&mut self.block);
                self.header(&block, &mut found)?;
            }
        }
        Ok(found)
    }

    /// Whether the archive's end has been read: Go's reader (and so
    /// dockerd) stops there and acts on what it read.
    pub fn ended(&self) -> bool {
        self.ended
    }

    fn header(&mut self, h: &[u8], found: &mut Vec<(&'static str, Vec<u8>)>) -> Result<(), String> {
        if h.iter().all(|&b| b == 0) {
            // Go's reader ends the archive here (or fails on what follows).
            self.ended = true;
            return Ok(());
        }
        let stored = tar_number(&h[148..156]).ok_or_else(|| scan_error("a bad header checksum"))?;
        // Go accepts the sum of the bytes read unsigned or signed, with the
        // checksum field counted as spaces.
        let (mut unsigned, mut signed) = (0u64, 0i64);
        for (i, &b) in h.iter().enumerate() {
            let (u, s) = if (148..156).contains(&i) {
                (32, 32)
            } else {
                (u64::from(b), i64::from(b as i8))
            };
            unsigned += u;
            signed += s;
        }
        if stored != unsigned && i64::try_from(stored).ok() != Some(signed) {
            return Err(scan_error("a bad header checksum"));
        }
        let kind = h[156];
        let meta = matches!(kind, b'x' | b'L' | b'g' | b'K');
        let mut size = tar_number(&h[124..136]).ok_or_else(|| scan_error("a bad entry size"))?;
        if !meta {
            if let Some(s) = self.next_size.take() {
                size = s;
            }
        }
        let ustar = &h[257..263] == b"ustar\0";
        let mut name = tar_string(&h[0..100]);
        if ustar {
            // star archives end the header with "tar\0" and keep a shorter
            // prefix, as Go reads them.
            let end = if &h[508..512] == b"tar\0" { 476 } else { 500 };
            let prefix = tar_string(&h[345..end]);
            if !prefix.is_empty() {
                name = format!("{prefix}/{name}");
            }
        }
        self.data_left = size;
        self.pad_left = (512 - size % 512) % 512;
        self.keep = None;
        match kind {
            b'x' => {
                self.keep = Some((Keep::Pax, Vec::new()));
            }
            b'L' => {
                self.keep = Some((Keep::LongName, Vec::new()));
            }
            // A global pax header and a long link name change no path.
            b'g' | b'K' => {}
            b'S' => return Err(scan_error("it has a sparse file")),
            _ => {
                let name = self.next_path.take().unwrap_or(name);
                let path = clean_path(&name).ok_or_else(|| scan_error("a path climbs out"))?;
                if self
                    .links
                    .iter()
                    .any(|l| path.starts_with(&format!("{l}/")))
                {
                    return Err(scan_error("an entry lies below a link"));
                }
                let index = ["manifest.json", "repositories", "index.json"]
                    .into_iter()
                    .find(|f| *f == path);
                match kind {
                    b'1' | b'2' => {
                        if index.is_some() {
                            return Err(scan_error("an index file is a link"));
                        }
                        self.links.push(path);
                    }
                    b'0' | b'\0' | b'7' => {
                        if let Some(file) = index {
                            self.keep = Some((Keep::Index(file), Vec::new()));
                        }
                    }
                    _ => {}
                }
            }
        }
        if self.data_left == 0 {
            self.entry_done(found)?;
        }
        Ok(())
    }

    fn entry_done(&mut self, found: &mut Vec<(&'static str, Vec<u8>)>) -> Result<(), String> {
        match self.keep.take() {
            Some((Keep::Index(file), bytes)) => found.push((file, bytes)),
            Some((Keep::LongName, bytes)) => self.next_path = Some(tar_string(&bytes)),
            Some((Keep::Pax, bytes)) => self.pax(&bytes)?,
            None => {}
        }
        Ok(())
    }

    /// pax records: `<length> <key>=<value>\n`.
    fn pax(&mut self, mut bytes: &[u8]) -> Result<(), String> {
        let bad = || scan_error("a bad pax header");
        while !bytes.is_empty() {
            let space = bytes.iter().position(|&b| b == b' ').ok_or_else(bad)?;
            let len: usize = std::str::from_utf8(&bytes[..space])
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(bad)?;
            if len <= space + 1 || len > bytes.len() || bytes[len - 1] != b'\n' {
                return Err(bad());
            }
            let record = &bytes[space + 1..len - 1];
            let eq = record.iter().position(|&b| b == b'=').ok_or_else(bad)?;
            let (key, value) = (&record[..eq], &record[eq + 1..]);
            match key {
                b"path" => self.next_path = Some(String::from_utf8_lossy(value).into_owned()),
                b"size" => {
                    self.next_size = Some(
                        std::str::from_utf8(value)
                            .ok()
                            .and_then(|s| s.parse().ok())
                            .ok_or_else(bad)?,
                    )
                }
                k if k.starts_with(b"GNU.sparse.") => {
                    return Err(scan_error("it has a sparse file"))
                }
                _ => {}
            }
            bytes = &bytes[len..];
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_are_normalised_as_dockerd_stores_them() {
        for (given, stored) in [
            ("busybox", "docker.io/library/busybox:latest"),
            ("busybox:1", "docker.io/library/busybox:1"),
            ("library/busybox:1", "docker.io/library/busybox:1"),
            ("docker.io/library/busybox:1", "docker.io/library/busybox:1"),
            (
                "index.docker.io/busybox",
                "docker.io/library/busybox:latest",
            ),
            ("team/app:v2", "docker.io/team/app:v2"),
            ("localhost/app", "localhost/app:latest"),
            ("reg.example:5000/a/b:c", "reg.example:5000/a/b:c"),
            ("reg:5000/app", "reg:5000/app:latest"),
            ("app@sha256:abc", "docker.io/library/app@sha256:abc"),
        ] {
            assert_eq!(normalise(given).unwrap(), stored, "{given}");
        }
        for bad in ["", "Busybox", "a//b", "a:", "a:b:c", "a@b", ":x", "a/:b"] {
            assert!(
                normalise(bad).unwrap_err().contains("image reference"),
                "{bad}"
            );
        }
        assert_eq!(
            repository("docker.io/library/busybox:1"),
            "docker.io/library/busybox"
        );
        assert_eq!(repository("reg:5000/app:1"), "reg:5000/app");
        assert_eq!(repo_tag("", "x").unwrap(), None);
        assert_eq!(
            repo_tag("app", "").unwrap().as_deref(),
            Some("docker.io/library/app:latest")
        );
        assert_eq!(
            repo_tag("app:2", "").unwrap().as_deref(),
            Some("docker.io/library/app:2")
        );
        assert_eq!(
            repo_tag("reg:5000/app", "3").unwrap().as_deref(),
            Some("reg:5000/app:3")
        );
    }

    #[test]
    fn tags_held_by_others_are_neither_moved_removed_nor_pushed() {
        let list: Json = serde_json::from_str(
            r#"[{"Id":"sha256:a","RepoTags":["app:1","app:2"],"Labels":{"io.nestdock.pod-uid":"other"}},
                {"Id":"sha256:b","RepoTags":["mine:1"],"Labels":{"io.nestdock.pod-uid":"me"}},
                {"Id":"sha256:c","RepoTags":["busybox:latest"],"Labels":null}]"#,
        )
        .unwrap();
        let held = held_tags(&list, "me");
        assert_eq!(held.len(), 3);
        let app = held.get("docker.io/library/app:1");
        assert!(refuse_write("app:1", app).unwrap().contains("another pod"));
        assert!(refuse_push("app:1", app).unwrap().contains("not pushed"));
        let node = held.get("docker.io/library/busybox:latest");
        assert!(refuse_write("busybox", node).unwrap().contains("node's"));
        assert_eq!(refuse_push("busybox", node), None);
        assert_eq!(
            refuse_write("mine:1", held.get("docker.io/library/mine:1")),
            None
        );
        assert_eq!(refuse_remove("mine:1", Some("me"), "me"), None);
        assert!(refuse_remove("app:1", Some("other"), "me")
            .unwrap()
            .contains("another pod"));
        assert!(refuse_remove("busybox", None, "me")
            .unwrap()
            .contains("shared"));
    }

    #[test]
    fn loading_the_image_a_tag_already_has_moves_nothing() {
        let hex = "a".repeat(64);
        let held = Held {
            image: format!("sha256:{hex}"),
            owner: None,
        };
        for config in [format!("blobs/sha256/{hex}"), format!("{hex}.json")] {
            let manifest = format!(r#"[{{"Config":"{config}","RepoTags":["app:1"]}}]"#);
            let tags = archive_tags("manifest.json", manifest.as_bytes()).unwrap();
            assert_eq!(tags[0].image.as_deref(), Some(held.image.as_str()));
            assert!(tags[0].keeps(&held), "{config}");
        }
        // Another image, an id that is not a digest, or an index file that
        // does not say which image: the tag would move.
        for (file, body) in [
            (
                "manifest.json",
                format!(
                    r#"[{{"Config":"{}.json","RepoTags":["app:1"]}}]"#,
                    "b".repeat(64)
                ),
            ),
            (
                "manifest.json",
                r#"[{"Config":"../x.json","RepoTags":["app:1"]}]"#.to_string(),
            ),
            ("repositories", r#"{"app":{"1":"abc"}}"#.to_string()),
        ] {
            let tags = archive_tags(file, body.as_bytes()).unwrap();
            assert!(!tags[0].keeps(&held), "{body}");
        }
    }

    /// A tar entry header as Go writes one (ustar).
    fn header(name: &str, size: usize, kind: u8) -> Vec<u8> {
        let mut h = vec![0u8; 512];
        h[..name.len()].copy_from_slice(name.as_bytes());
        h[100..108].copy_from_slice(b"0000644\0");
        h[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
        h[156] = kind;
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
        h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        h
    }

    fn entry(name: &str, data: &[u8], kind: u8) -> Vec<u8> {
        let mut out = header(name, data.len(), kind);
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
        out
    }

    fn scan_all(tar: &[u8], chunk: usize) -> Result<Vec<String>, String> {
        let mut scan = TarScan::default();
        let mut tags = Vec::new();
        for part in tar.chunks(chunk) {
            for (file, bytes) in scan.feed(part)? {
                tags.extend(archive_tags(file, &bytes)?.into_iter().map(|t| t.tag));
            }
        }
        Ok(tags)
    }

    #[test]
    fn an_archives_tags_are_found_however_it_spells_its_index() {
        let manifest = br#"[{"Config":"c.json","RepoTags":["app:1"],"Layers":[]}]"#;
        let record = "path=./x/../manifest.json\n";
        let pax_path = format!("{} {record}", record.len() + 3);
        let pax_path = pax_path.as_bytes();
        let long = b"manifest.json\0";
        for tar in [
            [
                entry("c.json", b"{}", b'0'),
                entry("manifest.json", manifest, b'0'),
            ]
            .concat(),
            [entry("./manifest.json", manifest, b'0')].concat(),
            [
                entry("PaxHeaders/x", pax_path, b'x'),
                entry("decoy", manifest, b'0'),
            ]
            .concat(),
            [
                entry("././@LongLink", long, b'L'),
                entry("decoy", manifest, b'0'),
            ]
            .concat(),
            [entry("repositories", br#"{"app":{"1":"abc"}}"#, b'0')].concat(),
            [entry(
                "index.json",
                br#"{"manifests":[{"annotations":{"io.containerd.image.name":"app:1"}}]}"#,
                b'0',
            )]
            .concat(),
        ] {
            for chunk in [1, 7, 512, 100_000] {
                assert_eq!(
                    scan_all(&tar, chunk).unwrap(),
                    vec!["docker.io/library/app:1".to_string()],
                    "chunk {chunk}"
                );
            }
        }
        // What ends the archive ends the scan: nothing after is read.
        let ended = [vec![0u8; 1024], entry("manifest.json", manifest, b'0')].concat();
        assert_eq!(scan_all(&ended, 512).unwrap(), Vec::<String>::new());
    }

    #[test]
    fn archives_the_scan_cannot_follow_are_refused() {
        let manifest = br#"[{"RepoTags":["app:1"]}]"#;
        for (tar, why) in [
            (b"\x1f\x8b\x08\x00rest".to_vec(), "compressed"),
            (entry("manifest.json", b"other.json", b'2'), "is a link"),
            (entry("manifest.json", b"", b'1'), "is a link"),
            (
                [
                    entry("d", b".", b'2'),
                    entry("d/manifest.json", manifest, b'0'),
                ]
                .concat(),
                "below a link",
            ),
            (entry("../manifest.json", manifest, b'0'), "climbs out"),
            (entry("s", b"", b'S'), "sparse"),
            (
                {
                    let mut h = entry("manifest.json", manifest, b'0');
                    h[0] = b'n';
                    h
                },
                "checksum",
            ),
            (entry("manifest.json", b"not json", b'0'), "cannot be read"),
        ] {
            let err = scan_all(&tar, 512).unwrap_err();
            assert!(err.contains(why), "{why}: {err}");
        }
    }
}
