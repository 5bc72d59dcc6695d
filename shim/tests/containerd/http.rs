//! A `wasi:http/incoming-handler` component (C, built here) served through real
//! containerd on the host network (`ctr run --net-host`), port from the env knob or the
//! pod annotation (`ctr run --annotation`, what CRI copies into the spec).

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use testbed::containerd::WASMTIME_RUNTIME;
use testbed::versions::DebPackage;

use crate::fixtures;
use crate::harness::{Bed, image_name, unique, wasm_image};

crate::on_every_containerd!(
    http_component_answers_many_requests,
    http_port_from_the_pod_annotation,
);

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// One `GET path` with `Connection: close`; the whole response as text.
pub fn get(port: u16, path: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    Ok(text)
}

/// Starts the imported `http` image on the host network (`ctr run --net-host`, plus
/// `flags`) as container `id`, and waits until it answers on `port`.
fn serve(bed: &Bed, flags: &[&str], id: &str, port: u16) -> Child {
    let mut args = vec!["--net-host"];
    args.extend(flags);
    let mut child = bed
        .run_cmd(WASMTIME_RUNTIME, &args, &image_name("http"), id, &[])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while get(port, "/ready").is_err() {
        if let Some(status) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            panic!(
                "{flags:?}: server exited {status}: {out:?}\n{}",
                bed.ctrd.log()
            );
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{flags:?}: never listened on {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

fn http_component_answers_many_requests(v: DebPackage) {
    let bed = Bed::start(v);
    bed.import(&wasm_image("http", &fixtures::http_component()));
    let port = free_port();
    let id = unique("http");
    let env = format!("WASMRUNTIME_HTTP_PORT={port}");
    let child = serve(&bed, &["--env", &env], &id, port);
    let threads: Vec<_> = (0..4)
        .map(|t| {
            std::thread::spawn(move || {
                for i in 0..100 {
                    let path = format!("/req/{t}/{i}?q=1");
                    let resp = get(port, &path).expect("request");
                    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
                    assert!(
                        resp.contains(&format!("hello from wasi:http {path}\n")),
                        "{resp}"
                    );
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("client thread");
    }
    bed.sigterm(&id);
    // (the 1 s bound is checked in `isolation::sigterm_exits_143_within_a_second`)
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(143), "{out:?}");
    assert!(
        get(port, "/after").is_err(),
        "still listening after SIGTERM"
    );
}

/// The pod annotation sets the port; the container env overrules it; a value that is not
/// a port stops the container with a reason naming the annotation (not a silent 8080).
fn http_port_from_the_pod_annotation(v: DebPackage) {
    let bed = Bed::start(v);
    bed.import(&wasm_image("http", &fixtures::http_component()));
    let (annotated, from_env) = (free_port(), free_port());
    let annotation = format!("wasmruntime.dev/http-port={annotated}");
    let env = format!("WASMRUNTIME_HTTP_PORT={from_env}");
    for (flags, port) in [
        (vec!["--annotation", &annotation], annotated),
        (vec!["--annotation", &annotation, "--env", &env], from_env),
    ] {
        let id = unique("http");
        let child = serve(&bed, &flags, &id, port);
        let resp = get(port, "/which").expect("request");
        assert!(resp.contains("hello from wasi:http /which"), "{resp}");
        if port == from_env {
            assert!(
                get(annotated, "/").is_err(),
                "{flags:?}: also listening on the annotation's port"
            );
        }
        bed.sigterm(&id);
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(143), "{out:?}");
    }
    let bad = bed.run_wasm(
        &[
            "--net-host",
            "--annotation",
            "wasmruntime.dev/http-port=web",
        ],
        &image_name("http"),
        &[],
    );
    assert_eq!(bad.code(), 126, "{}", bad.describe());
    assert!(
        bad.stderr()
            .contains("annotation wasmruntime.dev/http-port: \"web\" is not a TCP port number"),
        "{}",
        bad.describe()
    );
}
