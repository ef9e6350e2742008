//! The Helm chart (`deploy/helm/corral`), rendered by Helm itself (Helm v4's Go SDK, which
//! PyPI's helm-python-sdk ships compiled; `deploy/validate.sh` installs it) with each of its
//! `ci/` values files, and every rendering validated strictly against the Kubernetes schemas
//! and Corral's own rules, the embedded corral.toml accepted by this build's `check-config`.

use std::path::{Path, PathBuf};
use std::process::Command;

fn deploy() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy")
}

fn validate(chart: &Path) -> (bool, String) {
    let out = Command::new("bash")
        .arg(deploy().join("validate.sh"))
        .arg(chart)
        .env("CORRAL_BIN", env!("CARGO_BIN_EXE_corral"))
        .output()
        .expect("bash runs deploy/validate.sh");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// A copy of the chart whose only ci/ values file is `values`.
fn chart_with(values: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let src = deploy().join("helm/corral");
    let dst = dir.path().join("corral");
    for sub in ["", "templates", "ci"] {
        std::fs::create_dir_all(dst.join(sub)).unwrap();
    }
    for sub in ["", "templates"] {
        for e in std::fs::read_dir(src.join(sub)).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_file() {
                std::fs::copy(e.path(), dst.join(sub).join(e.file_name())).unwrap();
            }
        }
    }
    std::fs::write(dst.join("ci/test-values.yaml"), values).unwrap();
    dir
}

#[test]
fn the_chart_renders_valid_manifests_in_gateway_and_sidecar_modes() {
    let (ok, out) = validate(&deploy().join("helm/corral"));
    assert!(ok, "deploy/validate.sh deploy/helm/corral failed:\n{out}");
    for expected in [
        "ci/gateway-values.yaml",
        "ci/gateway-dns-values.yaml",
        "ci/sidecar-values.yaml",
        "renders as release 'catalog'",
        "ServiceMonitor corral: scrapes corral-headless /metrics",
        "Role corral-endpointslice-reader: only get/list/watch on endpointslices",
        "Deployment catalog-corral container corral",
        "corral-corral.toml: ok",
    ] {
        assert!(out.contains(expected), "missing {expected:?} in:\n{out}");
    }
    assert!(!out.contains("FAIL"), "{out}");
}

#[test]
fn a_broken_chart_or_values_fail_validation_with_the_reason() {
    let cases = [
        // No Secret named: Helm's `required` stops the render.
        ("mode: gateway\n", "secrets.existingSecret"),
        // A memory limit below the cache's bound: Corral's own pod rules catch it.
        (
            "secrets: {existingSecret: s}\nresources: {requests: {memory: 128Mi}, limits: {memory: 128Mi}}\n",
            "memory limit 128Mi should be at least 1.5 x cache.max_size",
        ),
        // A sidecar without its app.
        ("mode: sidecar\nsecrets: {existingSecret: s}\n", "sidecar.app.image"),
        // A value corral itself refuses (check-config).
        (
            "secrets: {existingSecret: s}\ntelemetry: {otlpEndpoint: \"https://otel:4318\"}\n",
            "telemetry.otlp_endpoint",
        ),
    ];
    for (values, reason) in cases {
        let dir = chart_with(values);
        let (ok, out) = validate(&dir.path().join("corral"));
        assert!(!ok, "values {values:?} should fail validation:\n{out}");
        assert!(
            out.contains(reason),
            "values {values:?}: expected {reason:?} in:\n{out}"
        );
    }
}
