//! How the binaries start: their logs and their tokio runtime.
//!
//! # Logs
//! To stderr, filtered by `WARMPOOL_LOG` (else `RUST_LOG`, else [`DEFAULT_LOG`]), in one of two
//! formats (`WARMPOOL_LOG_FORMAT`):
//! - `text`: for people; colours only when stderr is a terminal (a file or a pipe gets none).
//! - `json`: one object per line with the fields Cloud Logging reads: `severity`, `message`,
//!   `timestamp`, and `logging.googleapis.com/trace` (`projects/P/traces/T` with
//!   `WARMPOOL_LOG_PROJECT`, else `T`) when the line belongs to a span that carries a
//!   `trace_id`; then the event's fields and those of every span it is in (a request's
//!   `game_id`, an execution's `execution_id`), and `target`.
//!
//! # Guarantees
//! - A bad filter or format stops the process with one line naming the setting
//!   ([`LogSettings::validate`]), as any other setting does.

use std::fmt::Display;
use std::future::Future;
use std::io::{IsTerminal, Write};
use std::num::NonZeroUsize;
use std::process::ExitCode;

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::ConfigError;

/// The default log filter of the binaries.
pub const DEFAULT_LOG: &str = "warn,warmpool=info,warmpool_core=info,warmpool_agent=info";

/// How log lines are written (`WARMPOOL_LOG_FORMAT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// For people.
    #[default]
    Text,
    /// One JSON object per line, as Cloud Logging reads them.
    Json,
}

/// The log settings of every binary (flattened into each one's command line).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct LogSettings {
    /// Log filter, tracing `EnvFilter` syntax (default: warn, and info for warmpool's crates).
    #[arg(long = "log", env = "WARMPOOL_LOG", global = true)]
    pub filter: Option<String>,
    /// The same, read when WARMPOOL_LOG is unset.
    #[arg(long = "rust-log", env = "RUST_LOG", global = true, hide = true)]
    pub rust_log: Option<String>,
    /// `text` (for people) or `json` (Cloud Logging's fields).
    #[arg(long = "log-format", env = "WARMPOOL_LOG_FORMAT", global = true, value_enum, default_value_t = LogFormat::Text)]
    pub format: LogFormat,
    /// The Google Cloud project of the traces a JSON line links to
    /// (`logging.googleapis.com/trace` is `projects/PROJECT/traces/ID`).
    #[arg(long = "log-project", env = "WARMPOOL_LOG_PROJECT", global = true)]
    pub project: Option<String>,
}

impl LogSettings {
    fn filter_text(&self) -> (&'static str, &str) {
        match (&self.filter, &self.rust_log) {
            (Some(f), _) => ("WARMPOOL_LOG", f),
            (None, Some(f)) => ("RUST_LOG", f),
            (None, None) => ("WARMPOOL_LOG", DEFAULT_LOG),
        }
    }

    /// The filter, checked: a bad one names its variable.
    pub fn validate(&self) -> Result<EnvFilter, ConfigError> {
        let (name, text) = self.filter_text();
        EnvFilter::builder()
            .parse(text)
            .map_err(|e| ConfigError::new(name, format!("{text:?}: {e}")))
    }
}

/// Starts logging to stderr as `settings` say. A bad filter is an error naming it.
pub fn init_tracing(settings: &LogSettings) -> Result<(), ConfigError> {
    let filter = settings.validate()?;
    let _ = match settings.format {
        LogFormat::Text => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(std::io::stderr)
            .try_init()
            .map_err(|e| e.to_string()),
        LogFormat::Json => tracing_subscriber::registry()
            .with(filter)
            .with(CloudJson {
                project: settings.project.clone(),
            })
            .try_init()
            .map_err(|e| e.to_string()),
    };
    Ok(())
}

/// One JSON object per event, with Cloud Logging's field names (see the module doc).
pub struct CloudJson {
    pub project: Option<String>,
}

/// A span's fields, kept in its extensions for the events inside it.
struct SpanFields(serde_json::Map<String, serde_json::Value>);

/// Collects fields as JSON values (numbers and booleans as such, the rest as text).
struct JsonFields<'a>(&'a mut serde_json::Map<String, serde_json::Value>);

impl Visit for JsonFields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_string(), value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_string(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_string(), value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().to_string(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().to_string(), value.into());
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.0
            .insert(field.name().to_string(), value.to_string().into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0
            .insert(field.name().to_string(), format!("{value:?}").into());
    }
}

impl<S> Layer<S> for CloudJson
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: Context<'_, S>,
    ) {
        let mut fields = serde_json::Map::new();
        attrs.record(&mut JsonFields(&mut fields));
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(SpanFields(fields));
        }
    }

    fn on_record(
        &self,
        id: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        ctx: Context<'_, S>,
    ) {
        if let Some(span) = ctx.span(id) {
            if let Some(fields) = span.extensions_mut().get_mut::<SpanFields>() {
                values.record(&mut JsonFields(&mut fields.0));
            }
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let line = self.line(event, &ctx);
        let mut err = std::io::stderr().lock();
        let _ = writeln!(err, "{line}");
    }
}

impl CloudJson {
    fn line<S>(&self, event: &Event<'_>, ctx: &Context<'_, S>) -> serde_json::Value
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
    {
        let mut out = serde_json::Map::new();
        if let Some(scope) = ctx.event_scope(event) {
            for span in scope.from_root() {
                if let Some(fields) = span.extensions().get::<SpanFields>() {
                    out.extend(fields.0.clone());
                }
            }
        }
        event.record(&mut JsonFields(&mut out));
        let meta = event.metadata();
        let severity = match *meta.level() {
            tracing::Level::ERROR => "ERROR",
            tracing::Level::WARN => "WARNING",
            tracing::Level::INFO => "INFO",
            tracing::Level::DEBUG | tracing::Level::TRACE => "DEBUG",
        };
        out.insert("severity".into(), severity.into());
        if !out.contains_key("message") {
            out.insert("message".into(), "".into());
        }
        let now = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        out.insert("timestamp".into(), now.into());
        out.insert("target".into(), meta.target().into());
        if let Some(trace) = out
            .remove("trace_id")
            .and_then(|t| t.as_str().map(String::from))
        {
            let linked = match &self.project {
                Some(p) => format!("projects/{p}/traces/{trace}"),
                None => trace,
            };
            out.insert("logging.googleapis.com/trace".into(), linked.into());
        }
        serde_json::Value::Object(out)
    }
}

/// The trace id of a request, from its `X-Cloud-Trace-Context` (`TRACE/SPAN;o=1`) or W3C
/// `traceparent` (`00-TRACE-SPAN-FLAGS`) header: 32 hex digits, or `None`.
pub fn trace_id(cloud_trace_context: Option<&str>, traceparent: Option<&str>) -> Option<String> {
    let valid = |t: &str| {
        (t.len() == 32 && t.bytes().all(|b| b.is_ascii_hexdigit()) && t.bytes().any(|b| b != b'0'))
            .then(|| t.to_ascii_lowercase())
    };
    cloud_trace_context
        .and_then(|h| valid(h.split('/').next()?))
        .or_else(|| traceparent.and_then(|h| valid(h.split('-').nth(1)?)))
}

/// A fresh trace id (32 hex digits) for work that arrived without one.
pub fn new_trace_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    // Two independently seeded SipHash outputs: unique enough to tell traces apart, with no
    // dependency on a random number crate.
    let half = || {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        h.finish()
    };
    format!("{:016x}{:016x}", half(), half())
}

/// A multi-threaded runtime with `worker_threads` workers (`None`: one per CPU). A replica on
/// one vCPU (Cloud Run's default) runs best with 1.
pub fn runtime(worker_threads: Option<NonZeroUsize>) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = worker_threads {
        builder.worker_threads(n.get());
    }
    builder.enable_all().build()
}

/// Runs a binary's work on [`runtime`] and turns its end into the process's exit status: an
/// error is printed as one line `error: …` (with its causes, for an `anyhow::Error`).
pub fn block_on<E: Display>(
    worker_threads: Option<NonZeroUsize>,
    work: impl Future<Output = Result<ExitCode, E>>,
) -> ExitCode {
    let runtime = match runtime(worker_threads) {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("error: starting the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(work) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_ids_come_from_either_header_and_nothing_else() {
        let t = "105445aa7843bc8bf206b12000100000";
        assert_eq!(
            trace_id(Some(&format!("{t}/1;o=1")), None).as_deref(),
            Some(t)
        );
        assert_eq!(
            trace_id(
                None,
                Some(&format!("00-{}-00f067aa0ba902b7-01", t.to_uppercase()))
            )
            .as_deref(),
            Some(t)
        );
        for bad in [
            "",
            "xyz/1",
            "0000000000000000000000000000000/1",
            &"0".repeat(32),
        ] {
            assert_eq!(trace_id(Some(bad), None), None, "{bad:?}");
        }
        let fresh = new_trace_id();
        assert_eq!(fresh.len(), 32);
        assert_ne!(fresh, new_trace_id());
    }

    #[test]
    fn a_bad_filter_names_its_variable() {
        let bad = LogSettings {
            filter: Some("warmpool=loud".into()),
            ..LogSettings::default()
        };
        assert_eq!(
            bad.validate().map_err(|e| e.name).err(),
            Some("WARMPOOL_LOG")
        );
        let rust = LogSettings {
            rust_log: Some("=[".into()),
            ..LogSettings::default()
        };
        assert_eq!(rust.validate().map_err(|e| e.name).err(), Some("RUST_LOG"));
        assert!(LogSettings::default().validate().is_ok());
    }

    #[test]
    fn a_json_line_carries_cloud_loggings_fields_and_its_spans_fields() {
        use std::sync::{Arc, Mutex};
        #[derive(Clone, Default)]
        struct Lines(Arc<Mutex<Vec<serde_json::Value>>>);
        struct Capture(CloudJson, Lines);
        impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Capture {
            fn on_new_span(
                &self,
                a: &tracing::span::Attributes<'_>,
                id: &tracing::span::Id,
                cx: Context<'_, S>,
            ) {
                self.0.on_new_span(a, id, cx)
            }
            fn on_record(
                &self,
                id: &tracing::span::Id,
                v: &tracing::span::Record<'_>,
                cx: Context<'_, S>,
            ) {
                self.0.on_record(id, v, cx)
            }
            fn on_event(&self, e: &Event<'_>, cx: Context<'_, S>) {
                let line = self.0.line(e, &cx);
                self.1 .0.lock().unwrap().push(line);
            }
        }
        let lines = Lines::default();
        let subscriber = tracing_subscriber::registry().with(Capture(
            CloudJson {
                project: Some("proj".into()),
            },
            lines.clone(),
        ));
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!(
                "request",
                trace_id = "105445aa7843bc8bf206b12000100000",
                game_id = tracing::field::Empty
            );
            let _in = span.enter();
            span.record("game_id", "g-1");
            tracing::warn!(attempt = 2, "the agent stops");
        });
        let lines = lines.0.lock().unwrap();
        let line = &lines[0];
        assert_eq!(line["severity"], "WARNING");
        assert_eq!(line["message"], "the agent stops");
        assert_eq!(line["attempt"], 2);
        assert_eq!(line["game_id"], "g-1");
        assert_eq!(
            line["logging.googleapis.com/trace"],
            "projects/proj/traces/105445aa7843bc8bf206b12000100000"
        );
        assert!(line.get("trace_id").is_none());
    }
}
