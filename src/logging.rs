//! Logging: structured fields to journald when stderr is the journal, readable lines on
//! stderr otherwise. The level can change on reload.
//!
//! The lines an HTTP request logs carry its id, method and path, as the fields of a span
//! named `request` (`request{request_id=… method=GET path=/v1/…}` on stderr,
//! `F_REQUEST_ID`, `F_METHOD`, `F_PATH` in the journal). That span is made only for a line
//! that is written: the edge puts the request's [`RequestTag`] in a task-local
//! ([`in_request`]), and [`RequestScoped`], wrapped around the subscriber, opens the span
//! around each event logged within it. A span per request would cost every request its
//! creation, its fields' formatting and an enter and exit per poll (bench/run measured
//! about a fifth of a `GET /v1/jobs/{id}`), for the few requests that log a line.

use std::future::Future;
use std::os::fd::AsRawFd;

use axum::http::{HeaderValue, Method, Uri};
use tracing_core::callsite::DefaultCallsite;
use tracing_core::field::{display, FieldSet, Value};
use tracing_core::span::{Attributes, Current, Id, Record};
use tracing_core::subscriber::Interest;
use tracing_core::{Dispatch, Event, Kind, Level, LevelFilter, Metadata, Subscriber};

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry};

/// Changes the level of a running process (SIGHUP).
#[derive(Clone)]
pub struct LogControl {
    filter: reload::Handle<EnvFilter, Registry>,
}

impl LogControl {
    pub fn set_level(&self, level: &str) -> Result<(), String> {
        let filter = EnvFilter::try_new(level).map_err(|e| format!("log.level `{level}`: {e}"))?;
        self.filter.reload(filter).map_err(|e| e.to_string())
    }
}

/// Installs the global subscriber. Call once.
pub fn init(level: &str) -> LogControl {
    let filter = EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    let journald = if stderr_is_journal() {
        tracing_journald::layer().ok()
    } else {
        None
    };
    let fmt = journald.is_none().then(|| {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_target(false)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
    });
    RequestScoped::new(
        tracing_subscriber::registry()
            .with(filter)
            .with(journald)
            .with(fmt),
    )
    .init();
    LogControl { filter: handle }
}

/// What the log lines of one request carry.
pub struct RequestTag {
    pub id: HeaderValue,
    pub method: Method,
    pub uri: Uri,
}

tokio::task_local! {
    static REQUEST: RequestTag;
}

/// Runs `request` with `tag` as its request: what it logs (in this task) carries the tag.
/// Gives the tag back with the output.
pub async fn in_request<F: Future>(tag: RequestTag, request: F) -> (F::Output, RequestTag) {
    let scoped = REQUEST.scope(tag, request);
    tokio::pin!(scoped);
    let output = (&mut scoped).await;
    let tag = scoped.take_value().expect("the tag is taken once, here");
    (output, tag)
}

static REQUEST_FIELDS: &[&str] = &["request_id", "method", "path"];
static REQUEST_SPAN: Metadata<'static> = Metadata::new(
    "request",
    "shiftd::http",
    Level::INFO,
    None,
    None,
    None,
    FieldSet::new(
        REQUEST_FIELDS,
        tracing_core::identify_callsite!(&REQUEST_CALLSITE),
    ),
    Kind::SPAN,
);
static REQUEST_CALLSITE: DefaultCallsite = DefaultCallsite::new(&REQUEST_SPAN);

/// A subscriber that, for each event logged within [`in_request`], opens the request's
/// span around it in the subscriber it wraps (see the module's docs). Everything else is
/// passed through unchanged.
pub struct RequestScoped<S> {
    inner: S,
}

impl<S: Subscriber> RequestScoped<S> {
    pub fn new(inner: S) -> Self {
        // Known to every dispatcher, as a span made by the macros would be.
        REQUEST_CALLSITE.register();
        Self { inner }
    }

    /// Writes `event` inside a fresh `request` span made from `tag`.
    fn event_in(&self, tag: &RequestTag, event: &Event<'_>) {
        let fields = REQUEST_SPAN.fields();
        let mut names = fields.iter();
        let (Some(id_field), Some(method_field), Some(path_field)) =
            (names.next(), names.next(), names.next())
        else {
            return self.inner.event(event);
        };
        let id = display(tag.id.to_str().unwrap_or("-"));
        let method = display(&tag.method);
        let path = display(tag.uri.path());
        let values: [(&_, Option<&dyn Value>); 3] = [
            (&id_field, Some(&id)),
            (&method_field, Some(&method)),
            (&path_field, Some(&path)),
        ];
        let values = fields.value_set(&values);
        let span = self
            .inner
            .new_span(&Attributes::new(&REQUEST_SPAN, &values));
        self.inner.enter(&span);
        self.inner.event(event);
        self.inner.exit(&span);
        self.inner.try_close(span);
    }
}

impl<S: Subscriber> Subscriber for RequestScoped<S> {
    fn event(&self, event: &Event<'_>) {
        let in_request = event.is_contextual()
            && self.inner.current_span().id().is_none()
            && self.inner.enabled(&REQUEST_SPAN);
        if in_request && REQUEST.try_with(|tag| self.event_in(tag, event)).is_ok() {
            return;
        }
        self.inner.event(event);
    }

    fn register_callsite(&self, metadata: &'static Metadata<'static>) -> Interest {
        self.inner.register_callsite(metadata)
    }
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        self.inner.enabled(metadata)
    }
    fn max_level_hint(&self) -> Option<LevelFilter> {
        self.inner.max_level_hint()
    }
    fn new_span(&self, span: &Attributes<'_>) -> Id {
        self.inner.new_span(span)
    }
    fn record(&self, span: &Id, values: &Record<'_>) {
        self.inner.record(span, values)
    }
    fn record_follows_from(&self, span: &Id, follows: &Id) {
        self.inner.record_follows_from(span, follows)
    }
    fn event_enabled(&self, event: &Event<'_>) -> bool {
        self.inner.event_enabled(event)
    }
    fn enter(&self, span: &Id) {
        self.inner.enter(span)
    }
    fn exit(&self, span: &Id) {
        self.inner.exit(span)
    }
    fn clone_span(&self, id: &Id) -> Id {
        self.inner.clone_span(id)
    }
    fn try_close(&self, id: Id) -> bool {
        self.inner.try_close(id)
    }
    fn current_span(&self) -> Current {
        self.inner.current_span()
    }
    fn on_register_dispatch(&self, subscriber: &Dispatch) {
        self.inner.on_register_dispatch(subscriber)
    }
    unsafe fn downcast_raw(&self, id: std::any::TypeId) -> Option<*const ()> {
        if id == std::any::TypeId::of::<Self>() {
            return Some(self as *const Self as *const ());
        }
        // SAFETY: passed on unchanged; the inner subscriber answers for its own types.
        unsafe { self.inner.downcast_raw(id) }
    }
}

/// systemd sets `JOURNAL_STREAM=<dev>:<inode>` of the stream it connected stderr to.
fn stderr_is_journal() -> bool {
    let Ok(expected) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(stat) = nix::sys::stat::fstat(std::io::stderr().as_raw_fd()) else {
        return false;
    };
    expected == format!("{}:{}", stat.st_dev, stat.st_ino)
}
