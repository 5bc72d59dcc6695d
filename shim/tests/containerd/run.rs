//! Running guests: output, args/env, exit codes, image kinds, non-Wasm entrypoints.

use testbed::containerd::WASMTIME_RUNTIME;
use testbed::oci::{ArtifactKind, RootfsImage, VARIANT_ANNOTATION, WasmArtifact};
use testbed::reliability::record;
use testbed::versions::DebPackage;

use crate::fixtures;
use crate::harness::{Bed, image_name, wasm_image};

crate::on_every_containerd!(
    hello_with_args_and_env,
    exit_code_is_the_guests,
    p2_component_runs,
    classic_image_with_entrypoint_cmd_and_workdir,
    compat_smart_annotated_image,
    every_oci_artifact_media_type,
    non_wasm_entrypoint_is_a_clear_error,
    malformed_modules_fail_clearly,
);

fn hello_with_args_and_env(v: DebPackage) {
    let bed = Bed::start(v);
    bed.import(&wasm_image("hello", &fixtures::wat("hello")).env(&["FROM_IMAGE=yes"]));
    let run = bed.run_wasm(
        &["--env", "FROM_CTR=also"],
        &image_name("hello"),
        &["/app.wasm", "one", "two words"],
    );
    assert_eq!(run.code(), 0, "{}", run.describe());
    let out = run.stdout();
    assert!(out.starts_with("hello from wasm\n"), "{}", run.describe());
    for line in [
        "/app.wasm",
        "one",
        "two words",
        "FROM_IMAGE=yes",
        "FROM_CTR=also",
    ] {
        assert!(
            out.lines().any(|l| l == line),
            "{line:?} missing:\n{}",
            run.describe()
        );
    }
}

fn exit_code_is_the_guests(v: DebPackage) {
    let bed = Bed::start(v);
    bed.import(&wasm_image("exit3", &fixtures::wat("exit3")));
    let run = bed.run_wasm(&[], &image_name("exit3"), &[]);
    assert_eq!(run.code(), 3, "{}", run.describe());
    // a trap is 134, like a crashing native program
    let trap = wat::parse_str(
        "(module (memory (export \"memory\") 1) (func (export \"_start\") unreachable))",
    )
    .unwrap();
    bed.import(&wasm_image("trap", &trap));
    let run = bed.run_wasm(&[], &image_name("trap"), &[]);
    assert_eq!(run.code(), 134, "{}", run.describe());
    assert!(run.stderr().contains("trap"), "{}", run.describe());
}

fn p2_component_runs(v: DebPackage) {
    let bed = Bed::start(v);
    let component = fixtures::command_component(&fixtures::wat("hello"));
    bed.import(&wasm_image("p2", &component));
    let run = bed.run_wasm(&["--env", "K=V"], &image_name("p2"), &["/app.wasm", "arg"]);
    assert_eq!(run.code(), 0, "{}", run.describe());
    assert!(
        run.stdout().starts_with("hello from wasm\n"),
        "{}",
        run.describe()
    );
    assert!(
        run.stdout().lines().any(|l| l == "arg"),
        "{}",
        run.describe()
    );
    assert!(
        run.stdout().lines().any(|l| l == "K=V"),
        "{}",
        run.describe()
    );
}

/// The crun/WasmEdge style: entrypoint + cmd + working dir from the image config; the
/// module opens a file relative to the working dir.
fn classic_image_with_entrypoint_cmd_and_workdir(v: DebPackage) {
    let bed = Bed::start(v);
    let image = RootfsImage::new(&image_name("classic"))
        .file("/srv/app/fs.wasm", fixtures::fs_module(), 0o755)
        .file(
            "/srv/app/greeting.txt",
            b"hi from the rootfs\n".to_vec(),
            0o644,
        )
        .entrypoint(&["/srv/app/fs.wasm"])
        .cmd(&["read", "greeting.txt"])
        .working_dir("/srv/app");
    bed.import(&image);
    let run = bed.run_wasm(&[], &image_name("classic"), &[]);
    assert_eq!(run.code(), 0, "{}", run.describe());
    assert_eq!(run.stdout(), "hi from the rootfs\n", "{}", run.describe());
}

fn compat_smart_annotated_image(v: DebPackage) {
    let bed = Bed::start(v);
    let image =
        wasm_image("smart", &fixtures::wat("hello")).annotation(VARIANT_ANNOTATION, "compat-smart");
    bed.import(&image);
    let run = bed.run_wasm(&[], &image_name("smart"), &[]);
    assert_eq!(run.code(), 0, "{}", run.describe());
    assert!(
        run.stdout().starts_with("hello from wasm\n"),
        "{}",
        run.describe()
    );
}

/// Each artifact kind, once with a core module and once with a component. The image has
/// no rootfs at all: the Wasm comes from the layer (containerd-shim-wasm's OCI path).
///
/// Where containerd itself cannot handle an artifact, the test pins containerd's own
/// error, so a containerd that starts accepting it shows up here:
/// - 1.6 cannot unpack an image whose layers are not tars ("mismatched image rootfs and
///   manifest layers"), for every kind;
/// - `ctr run` (1.7, 2.x) refuses the CNCF config media type before any shim runs.
fn every_oci_artifact_media_type(v: DebPackage) {
    let bed = Bed::start(v);
    let module = fixtures::wat("hello");
    let component = fixtures::command_component(&module);
    let old_containerd = v.dir == testbed::versions::CONTAINERD_1_6.dir;
    for kind in ArtifactKind::ALL {
        for (what, wasm) in [("module", &module), ("component", &component)] {
            let name = image_name(&format!("art-{kind:?}-{what}").to_lowercase());
            let artifact = WasmArtifact::new(&name, kind, wasm.clone());
            if old_containerd {
                let err = bed.try_import_artifact(&artifact).unwrap_err().to_string();
                assert!(
                    err.contains("mismatched image rootfs and manifest layers"),
                    "{err}"
                );
                continue;
            }
            bed.import_artifact(&artifact);
            let run = bed.run_wasm(
                &["--platform", testbed::oci::WASM_PLATFORM],
                &name,
                &["app.wasm", "from-artifact"],
            );
            if kind == ArtifactKind::Cncf {
                assert!(
                    run.stderr().contains(
                        "unknown image config media type application/vnd.wasm.config.v0+json"
                    ),
                    "{}",
                    run.describe()
                );
                continue;
            }
            assert_eq!(run.code(), 0, "{kind:?} {what}: {}", run.describe());
            assert!(
                run.stdout().starts_with("hello from wasm\n")
                    && run.stdout().lines().any(|l| l == "from-artifact"),
                "{kind:?} {what}: {}",
                run.describe()
            );
        }
    }
}

/// Plain text behind a `.wasm` name: the container fails, and its log says which file and
/// what was expected.
fn non_wasm_entrypoint_is_a_clear_error(v: DebPackage) {
    let bed = Bed::start(v);
    bed.import(&wasm_image("script", b"just some text\n"));
    let run = bed.run(WASMTIME_RUNTIME, &[], &image_name("script"), &[]);
    assert_ne!(run.code(), 0, "{}", run.describe());
    let all = format!("{}{}{}", run.stdout(), run.stderr(), bed.ctrd.log());
    assert!(
        all.contains("/app.wasm is not a WebAssembly module or component")
            && all.contains("00 61 73 6d"),
        "{}\n--- containerd log\n{}",
        run.describe(),
        bed.ctrd.log()
    );
    record(
        "input",
        &format!(
            "image whose entrypoint `/app.wasm` is plain text ({})",
            v.dir
        ),
        "the container fails naming the file and the magic bytes expected",
        &format!(
            "exit {}: \"/app.wasm is not a WebAssembly module or component\" (expects 00 61 73 6d)",
            run.code()
        ),
    );
}

/// Hostile or broken modules end with a clear reason on the container's stderr and an exit
/// code of their own; nothing else is disturbed (the next container runs).
fn malformed_modules_fail_clearly(v: DebPackage) {
    let bed = Bed::start(v);
    let hello = fixtures::wat("hello");
    bed.import(&wasm_image("truncated", &hello[..hello.len() / 2]));
    bed.import(&wasm_image("bad-import", &fixtures::wat("bad_import")));
    bed.import(&wasm_image("huge-memory", &fixtures::wat("huge_memory")));
    bed.import(&wasm_image("hello", &hello));
    let cases: [(&str, &[&str], i32, &str); 3] = [
        ("truncated", &[], 126, "compiling /app.wasm"),
        ("bad-import", &[], 126, "launch_missiles"),
        // 4 GiB asked for by the memory section, against a 32 MiB container limit
        (
            "huge-memory",
            &["--memory-limit", "33554432"],
            137,
            "above the container limit",
        ),
    ];
    let mut seen = Vec::new();
    for (image, flags, code, reason) in cases {
        let run = bed.run(WASMTIME_RUNTIME, flags, &image_name(image), &[]);
        assert_eq!(run.code(), code, "{image}: {}", run.describe());
        assert!(run.stderr().contains(reason), "{image}: {}", run.describe());
        seen.push(format!("{image}: exit {} \"{reason}\"", run.code()));
    }
    let after = bed.run(WASMTIME_RUNTIME, &[], &image_name("hello"), &[]);
    assert_eq!(after.code(), 0, "{}", after.describe());
    record(
        "input",
        &format!(
            "malformed images: truncated module, component importing an unknown function, a 4 GiB memory section under a 32 MiB limit ({})",
            v.dir
        ),
        "each container fails with its reason on stderr and its own exit code; the next container runs",
        &format!("{}; next hello: exit {}", seen.join(", "), after.code()),
    );
}
