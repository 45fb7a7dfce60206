//! Golden tests: every `fixtures/<case>/input/` folder is resolved by the real binary with
//! `weft-controller --manifests <input> --once`; its stdout (every status, as YAML) and the
//! summary it prints on stderr must equal `fixtures/<case>/expected/`.
//!
//! After an intended change, `WEFT_BLESS=1 cargo test -p mesh-controller --test golden`
//! rewrites the expectations; review the diff like any other code.

use std::path::{Path, PathBuf};
use std::process::Command;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn run_once(input: &Path) -> (String, String, bool) {
    let output = Command::new(env!("CARGO_BIN_EXE_weft-controller"))
        .arg("--manifests")
        .arg(input)
        .arg("--once")
        .env("RUST_LOG", "off")
        .output()
        .expect("run weft-controller");
    (
        String::from_utf8(output.stdout).expect("utf-8 stdout"),
        String::from_utf8(output.stderr).expect("utf-8 stderr"),
        output.status.success(),
    )
}

#[test]
fn every_fixture_resolves_to_its_expected_statuses() {
    let bless = std::env::var_os("WEFT_BLESS").is_some();
    let mut cases: Vec<PathBuf> = std::fs::read_dir(fixtures())
        .expect("fixtures folder")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.join("input").is_dir())
        .collect();
    cases.sort();
    assert!(cases.len() >= 6, "fixtures went missing: {cases:?}");
    let mut failures = Vec::new();
    for case in &cases {
        let (status, summary, ok) = run_once(&case.join("input"));
        assert!(ok, "{}: weft-controller failed: {summary}", case.display());
        let expected = case.join("expected");
        if bless {
            std::fs::create_dir_all(&expected).expect("mkdir expected");
            std::fs::write(expected.join("status.yaml"), &status).expect("write");
            std::fs::write(expected.join("summary.txt"), &summary).expect("write");
            continue;
        }
        for (file, actual) in [("status.yaml", &status), ("summary.txt", &summary)] {
            let want = std::fs::read_to_string(expected.join(file)).unwrap_or_default();
            if &want != actual {
                failures.push(format!(
                    "{}/{file} differs:\n--- expected\n{want}\n--- actual\n{actual}",
                    case.display()
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn unparseable_yaml_fails_with_file_and_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("ok.yaml"), "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n")
        .expect("write");
    std::fs::write(
        dir.path().join("bad.yaml"),
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: x\n  labels: [oops\n",
    )
    .expect("write");
    let (stdout, stderr, ok) = run_once(dir.path());
    assert!(!ok, "must exit non-zero");
    assert!(stdout.is_empty(), "no partial output on error: {stdout}");
    assert!(stderr.contains("bad.yaml:5") || stderr.contains("bad.yaml:6"), "names file and line: {stderr}");
}
