//! `[telemetry]`: OpenTelemetry traces over OTLP/HTTP (JSON), off when `otlp_endpoint` is
//! absent. See docs/operations.md for what is traced.

use std::time::Duration;

use serde::Deserialize;

use crate::config::{bad, dur, positive, ConfigError};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTelemetry {
    /// `http://host:4318` (the collector's OTLP/HTTP port) or a full `…/v1/traces` URL.
    pub otlp_endpoint: Option<String>,
    pub service_name: Option<String>,
    pub sample_ratio: Option<f64>,
    pub queue_size: Option<usize>,
    pub export_interval: Option<String>,
    pub export_timeout: Option<String>,
}

/// `[telemetry]` resolved; the replica's instance name is added when it starts.
#[derive(Debug, Clone)]
pub struct TelemetrySpec {
    pub endpoint: http::Uri,
    pub service_name: String,
    pub sample_ratio: f64,
    pub queue_size: usize,
    pub export_interval: Duration,
    pub export_timeout: Duration,
}

/// `None` when traces are off (no table, or no `otlp_endpoint`).
pub(crate) fn resolve(raw: Option<&RawTelemetry>) -> Result<Option<TelemetrySpec>, ConfigError> {
    let Some(t) = raw else {
        return Ok(None);
    };
    let Some(endpoint) = &t.otlp_endpoint else {
        return Ok(None);
    };
    let endpoint = corral_telemetry::traces_url(endpoint)
        .map_err(|why| bad("telemetry.otlp_endpoint", endpoint, &why))?;
    let sample_ratio = t.sample_ratio.unwrap_or(1.0);
    if !(0.0..=1.0).contains(&sample_ratio) {
        return Err(bad(
            "telemetry.sample_ratio",
            sample_ratio,
            "expected a number from 0 (no new traces) to 1 (every request)",
        ));
    }
    let service_name = t.service_name.clone().unwrap_or_else(|| "corral".into());
    if service_name.trim().is_empty() || service_name.len() > 256 {
        return Err(bad(
            "telemetry.service_name",
            &service_name,
            "expected a non-empty name of at most 256 bytes",
        ));
    }
    let queue_size = positive("telemetry.queue_size", t.queue_size.unwrap_or(8192))?;
    if queue_size > 1_000_000 {
        return Err(bad(
            "telemetry.queue_size",
            queue_size,
            "at most 1000000 spans",
        ));
    }
    let export_interval = dur(
        "telemetry.export_interval",
        t.export_interval.as_deref(),
        Duration::from_secs(1),
    )?;
    let export_timeout = dur(
        "telemetry.export_timeout",
        t.export_timeout.as_deref(),
        Duration::from_secs(10),
    )?;
    for (key, d) in [
        ("telemetry.export_interval", export_interval),
        ("telemetry.export_timeout", export_timeout),
    ] {
        if d.is_zero() {
            return Err(bad(key, "0s", "must be longer than zero"));
        }
    }
    Ok(Some(TelemetrySpec {
        endpoint,
        service_name,
        sample_ratio,
        queue_size,
        export_interval,
        export_timeout,
    }))
}

/// Turns traces on for this process (within the runtime), registering the exporter's metrics.
pub(crate) fn start(
    spec: &TelemetrySpec,
    instance: &str,
    registry: &mut prometheus_client::registry::Registry,
) -> Result<(), String> {
    let config = corral_telemetry::Config {
        endpoint: spec.endpoint.clone(),
        service_name: spec.service_name.clone(),
        instance: instance.to_string(),
        sample_ratio: spec.sample_ratio,
        queue_size: spec.queue_size,
        export_interval: spec.export_interval,
        export_timeout: spec.export_timeout,
    };
    tracing::info!(endpoint = %spec.endpoint, sample_ratio = spec.sample_ratio, "exporting traces over OTLP/HTTP");
    corral_telemetry::install(config, registry)
}
