//! What the server parses from a request's head before the body: the query
//! string's `timeout=` (`server::review_deadline`, `duration::parse_duration`),
//! the `Content-Type` (`server::content_type_problem`), and the review's
//! namespace name (`namespaces::check_name`, run before any lookup). None
//! may panic (a panic there was an HTTP 500: `?timeout=` with two huge
//! parts overflowed a sum); the deadline never exceeds the configured one;
//! every refusal names what is accepted.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use nestdock::namespaces::{check_name, MAX_NAME_LEN};
use nestdock::duration::parse_duration;
use nestdock::server::{content_type_problem_of, review_deadline};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let configured = Duration::from_secs(9);
    for query in [text.as_ref(), &format!("timeout={text}")] {
        let deadline = review_deadline(configured, Some(query));
        assert!(deadline <= configured, "{query:?} gave {deadline:?}");
    }
    if let Err(e) = parse_duration(&text) {
        assert!(e.contains("expected"), "{e}");
    }
    if let Some(problem) = content_type_problem_of(data) {
        assert!(problem.contains("application/json"), "{problem}");
    }
    match check_name(&text) {
        Ok(()) => {
            assert!(!text.is_empty() && text.len() <= MAX_NAME_LEN);
            assert!(text
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'));
        }
        Err(e) => assert!(e.contains("DNS-1123"), "{e}"),
    }
});
