//! What `nestdock guard` reads from a request line: the path
//! (`guard::path::normalise`, then the allow list) and the query string
//! (`guard::query::parse`). None may panic; a normalised path has no empty,
//! `.` or `..` segment and no `/` inside a segment; what the guard forwards
//! normalises to the same path again, with the same allow-list decision (so
//! dockerd routes what was checked); a query written back reads the same;
//! every refusal is the guard's and says so.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nestdock::guard::{path, query};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (raw_path, raw_query) = text.split_once('?').unwrap_or((&text, ""));
    match path::normalise(raw_path) {
        Ok(p) => {
            for s in &p.segments {
                assert!(!s.is_empty() && s != "." && s != ".." && !s.contains('/'), "{p:?}");
            }
            let forwarded = p.upstream();
            let again = path::normalise(&forwarded)
                .unwrap_or_else(|e| panic!("{forwarded:?} does not normalise: {e}"));
            assert_eq!(again, p, "{forwarded:?}");
            assert_eq!(
                path::refused_endpoint(&again).is_some(),
                path::refused_endpoint(&p).is_some()
            );
        }
        Err(e) => assert!(e.to_string().starts_with("nestdock guard: "), "{e}"),
    }
    match query::parse(Some(raw_query)) {
        Ok(q) => assert_eq!(query::parse(Some(&q.encode())).unwrap(), q),
        Err(e) => assert!(e.starts_with("nestdock guard: "), "{e}"),
    }
});
