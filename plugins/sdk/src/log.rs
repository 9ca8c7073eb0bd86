//! Logging for plugins: one hclog-style JSON object per line on stderr.
//!
//! go-plugin forwards a plugin's stderr into SPIRE's log. A JSON line with `@level`,
//! `@message` and a Go-layout `@timestamp` keeps its level; any other line is logged at
//! DEBUG and vanishes at SPIRE's default INFO level. stdout stays untouched: it carries
//! only the handshake line.

use std::fmt;
use std::io::Write;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::prelude::*;
use tracing_subscriber::EnvFilter;

/// Environment variable holding a `tracing` filter for the plugin's own log (default `info`).
pub const LOG_FILTER_ENV: &str = "KEYGRID_PLUGIN_LOG";

/// hclog's level names.
fn hclog_level(level: &Level) -> &'static str {
    match *level {
        Level::TRACE => "trace",
        Level::DEBUG => "debug",
        Level::INFO => "info",
        Level::WARN => "warn",
        Level::ERROR => "error",
    }
}

/// A timestamp in Go's `2006-01-02T15:04:05.000000Z07:00` layout, which the host parses
/// strictly (exactly six fractional digits).
pub fn hclog_timestamp(t: time::OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.microsecond()
    )
}

/// Renders one log entry as an hclog JSON line (without the newline).
pub fn hclog_line(
    level: &Level,
    message: &str,
    module: &str,
    at: time::OffsetDateTime,
    fields: Map<String, Value>,
) -> String {
    let mut obj = Map::new();
    obj.insert("@level".into(), Value::from(hclog_level(level)));
    obj.insert("@message".into(), Value::from(message));
    obj.insert("@timestamp".into(), Value::from(hclog_timestamp(at)));
    obj.insert("@module".into(), Value::from(module));
    for (k, v) in fields {
        // Our fields never shadow the hclog keys the host interprets.
        if !k.starts_with('@') {
            obj.insert(k, v);
        }
    }
    Value::Object(obj).to_string()
}

#[derive(Default)]
struct Fields {
    message: String,
    rest: Map<String, Value>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_string();
        } else {
            self.rest.insert(field.name().into(), Value::from(value));
        }
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.rest.insert(field.name().into(), Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.rest.insert(field.name().into(), Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.rest.insert(field.name().into(), Value::from(value));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let text = format!("{value:?}");
        if field.name() == "message" {
            self.message = text;
        } else {
            self.rest.insert(field.name().into(), Value::from(text));
        }
    }
}

/// A `tracing` layer that writes hclog JSON lines to stderr.
#[derive(Debug, Default)]
pub struct HclogLayer;

impl<S: Subscriber> Layer<S> for HclogLayer {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let meta = event.metadata();
        let line = hclog_line(
            meta.level(),
            &fields.message,
            meta.target(),
            time::OffsetDateTime::now_utc(),
            fields.rest,
        );
        let mut err = std::io::stderr().lock();
        // A closed stderr means the host is gone; there is nobody left to tell.
        let _ = writeln!(err, "{line}");
    }
}

/// Installs the hclog layer as the global subscriber, filtered by [`LOG_FILTER_ENV`].
/// Calling it twice is harmless (the second call changes nothing).
pub fn init() {
    let filter = EnvFilter::try_from_env(LOG_FILTER_ENV).unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(HclogLayer)
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64, nanos: i64) -> time::OffsetDateTime {
        time::OffsetDateTime::from_unix_timestamp_nanos(
            secs as i128 * 1_000_000_000 + nanos as i128,
        )
        .unwrap()
    }

    #[test]
    fn timestamp_matches_go_layout() {
        assert_eq!(
            hclog_timestamp(at(1_748_779_200, 500_000_000)),
            "2025-06-01T12:00:00.500000Z"
        );
        let t = at(1_767_218_399, 1_000).to_offset(time::UtcOffset::from_hms(2, 0, 0).unwrap());
        assert_eq!(hclog_timestamp(t), "2025-12-31T21:59:59.000001Z");
    }

    #[test]
    fn line_carries_hclog_keys_and_fields() {
        let mut fields = Map::new();
        fields.insert("trust_domain".into(), Value::from("example.org"));
        fields.insert("@level".into(), Value::from("error"));
        let line = hclog_line(
            &Level::WARN,
            "core unreachable",
            "keygrid_upstream_authority",
            at(1_748_779_200, 0),
            fields,
        );
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["@level"], "warn", "a field cannot override the level");
        assert_eq!(v["@message"], "core unreachable");
        assert_eq!(v["@timestamp"], "2025-06-01T12:00:00.000000Z");
        assert_eq!(v["trust_domain"], "example.org");
        assert!(!line.contains('\n'));
    }
}
