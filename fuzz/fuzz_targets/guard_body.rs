//! What `nestdock guard` reads from a request body (`guard::body::parse`,
//! Go's `encoding/json` field matching) and what it decides on it (the
//! create, exec, update, network and volume rules), and a `filters` query
//! value (`guard::owner::with_pod_filter`). None may panic; a body that is
//! read writes out to a body that reads back the same (what is forwarded is
//! what was checked); every refusal is the guard's and says so; an accepted
//! container create carries the pod's label; a merged filter always
//! contains the pod's label. A BuildKit Solve request (`guard::grpc::solve`)
//! read from the same bytes never panics, and one it lets through carries
//! the pod's label, so that reading it again is refused.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nestdock::guard::body::{self, Json};
use nestdock::guard::create::{self, Scope};
use nestdock::guard::owner::{self, POD_UID_LABEL};
use nestdock::guard::ports::{HostPorts, PortRange};
use nestdock::guard::{grpc, subpath};

const ROOT: &str = "/var/lib/kubelet/pods/u1/volumes/kubernetes.io~empty-dir";

fuzz_target!(|data: &[u8]| {
    match body::parse(data) {
        Ok(value) => {
            let again = body::parse(&value.to_bytes()).expect("a checked body reads back");
            assert_eq!(again, value);
            let ranges = HostPorts(vec![PortRange {
                first: 8000,
                last: 8999,
            }]);
            let scope = Scope {
                uid: "u1",
                kubelet_root: "/var/lib/kubelet",
                host_ports: &ranges,
            };
            let mut c = value.clone();
            match create::container_create(&mut c, &scope) {
                Ok(_) => {
                    let label = c
                        .field("Labels")
                        .and_then(|l| l.entry(POD_UID_LABEL))
                        .and_then(Json::as_str);
                    assert_eq!(label, Some("u1"), "{c:?}");
                    body::parse(&c.to_bytes()).expect("a labelled body reads back");
                    // Binds below an emptyDir's root: subpath mounts on a
                    // daemon that has them, refused on one that has not.
                    let binding = subpath::Binding {
                        uid: "u1",
                        empty_dir_root: ROOT,
                        socket: Some((
                            format!("{ROOT}/nestdock-docker-sock/docker.sock"),
                            format!("{ROOT}/nestdock-guard-socket/docker.sock"),
                        )),
                        daemon_api: Some((1, 40 + (data.len() % 10) as u32)),
                    };
                    match subpath::rewrite(&mut c, &binding) {
                        Ok(_) => {
                            let out = c.to_bytes();
                            body::parse(&out).expect("a rewritten body reads back");
                        }
                        Err(d) => {
                            assert!(d.status == 400 || d.status == 403, "{d:?}");
                            assert!(d.message.starts_with("nestdock guard: "), "{d:?}");
                        }
                    }
                }
                Err(d) => {
                    assert!(d.status == 400 || d.status == 403, "{d:?}");
                    assert!(d.message.starts_with("nestdock guard: "), "{d:?}");
                }
            }
            for result in [
                create::exec_create(&value),
                create::container_update(&value),
                create::network_create(&mut value.clone(), "u1"),
                create::volume_create(&mut value.clone(), "u1"),
                create::network_connect(&value).map(|_| ()),
            ] {
                if let Err(d) = result {
                    assert!(d.message.starts_with("nestdock guard: "), "{d:?}");
                }
            }
        }
        Err(e) => assert!(e.to_string().starts_with("nestdock guard: "), "{e}"),
    }
    let policy = grpc::Policy {
        uid: "u1",
        cgroup_parent: None,
    };
    for call in [grpc::Call::Control, grpc::Call::Gateway] {
        match grpc::solve(call, data, &policy) {
            Ok(s) => {
                let again =
                    grpc::solve(call, &s.body, &policy).expect_err("the pod's label is the guard's");
                assert!(again.contains("nestdock's labels"), "{again}");
            }
            Err(e) => assert!(e.starts_with("nestdock guard: "), "{e}"),
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        match owner::with_pod_filter(Some(text), "u1") {
            Ok(filters) => {
                let v: serde_json::Value =
                    serde_json::from_str(&filters).expect("filters are JSON");
                assert_eq!(
                    v["label"]["io.nestdock.pod-uid=u1"],
                    serde_json::json!(true)
                );
            }
            Err(e) => assert!(e.starts_with("nestdock guard: "), "{e}"),
        }
    }
});
