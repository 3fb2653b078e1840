//! `tollgate._native`: the Rust library behind the Python package.
//!
//! Everything here is thin: the Python layer (`python/tollgate/*.py`) gives
//! the classes their Pythonic and llmratelimiter-compatible form, this module
//! runs the library on a tokio runtime of its own.
//!
//! Async calls do not touch the GIL on the runtime's threads: each one is a
//! tokio task that, when done, queues its outcome on the event loop's
//! [`Bridge`] and writes one byte to the bridge's socket (only when nothing
//! is queued yet). The event loop watches that socket (`loop.add_reader`)
//! and [`Bridge::drain`] hands every queued outcome to its asyncio future in
//! one go. Cancelling the asyncio side aborts the task ([`Task::cancel`]),
//! which drops the library's future: a waiting `acquire` then cancels its
//! reservation, as in Rust.

use std::future::Future;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use pyo3::exceptions::PyRuntimeError;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyList};
use pyo3::IntoPyObjectExt;

use tollgate::store::RedisOptions;
use tollgate::{
    AcquireOptions, Cost, Error, Limits, OutagePolicy, Permit, PriorityClass, RateLimiter,
    RetryConfig, Settlement, Source,
};

/// The runtime every limiter of the process runs on.
fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("tollgate")
            .build()
            .expect("start the tollgate runtime")
    })
}

/// The exception classes, defined in `tollgate._errors`.
fn errors(py: Python<'_>) -> PyResult<&Bound<'_, PyModule>> {
    static ERRORS: PyOnceLock<Py<PyModule>> = PyOnceLock::new();
    ERRORS
        .get_or_try_init(py, || {
            PyModule::import(py, "tollgate._errors").map(Bound::unbind)
        })
        .map(|m| m.bind(py))
}

/// An instance of the exception class `name` with the message and attributes.
fn raise(py: Python<'_>, name: &str, message: String, attrs: &[(&str, Py<PyAny>)]) -> PyErr {
    let make = || -> PyResult<PyErr> {
        let class = errors(py)?.getattr(name)?;
        let kwargs = PyDict::new(py);
        for (k, v) in attrs {
            kwargs.set_item(k, v)?;
        }
        let exc = class.call((message.clone(),), Some(&kwargs))?;
        Ok(PyErr::from_value(exc))
    };
    make().unwrap_or_else(|e| e)
}

/// A `ConfigError` (a `ValueError`) with this message.
fn config_err(message: String) -> PyErr {
    Python::attach(|py| raise(py, "ConfigError", message, &[]))
}

/// The Python exception for a library error.
fn to_py(py: Python<'_>, e: Error) -> PyErr {
    let message = e.to_string();
    let f = |v: f64| v.into_pyobject(py).expect("a float").into_any().unbind();
    match e {
        Error::RateLimited {
            retry_after,
            max_wait,
            ..
        } => raise(
            py,
            "RateLimited",
            message,
            &[
                ("retry_after", f(retry_after.as_secs_f64())),
                ("max_wait", f(max_wait.as_secs_f64())),
            ],
        ),
        Error::QueueFull { retry_after, .. } => raise(
            py,
            "QueueFull",
            message,
            &[("retry_after", f(retry_after.as_secs_f64()))],
        ),
        Error::TooLarge(_) => raise(py, "TooLarge", message, &[]),
        Error::StoreUnavailable { policy, .. } => {
            let policy = policy
                .into_pyobject(py)
                .expect("a str or None")
                .into_any()
                .unbind();
            raise(py, "StoreUnavailable", message, &[("policy", policy)])
        }
        Error::LimitsConflict { .. } => raise(py, "LimitsConflict", message, &[]),
        Error::Token(_) => raise(py, "TokenError", message, &[]),
        Error::Store(_) => raise(py, "StoreError", message, &[]),
        _ => raise(py, "ConfigError", message, &[]),
    }
}

/// Makes a task's Python value (or exception) under the GIL.
type MakeValue = Box<dyn FnOnce(Python<'_>) -> PyResult<Py<PyAny>> + Send>;

/// What a finished task hands to its asyncio future.
// A permit is what most tasks end with: not boxed, to spare an allocation.
#[allow(clippy::large_enum_variant)]
enum Done {
    /// A granted permit; released again if nobody waits for it any more.
    Permit(RateLimiter, Permit),
    /// Any other value (or error), made under the GIL.
    Value(MakeValue),
}

impl Done {
    fn value<T>(r: Result<T, Error>) -> Done
    where
        T: for<'py> IntoPyObject<'py> + Send + 'static,
    {
        Done::Value(Box::new(move |py| match r {
            Ok(v) => v.into_py_any(py),
            Err(e) => Err(to_py(py, e)),
        }))
    }
}

struct Shared {
    queue: Mutex<Vec<(Py<PyAny>, Done)>>,
    signaled: AtomicBool,
    writer: UnixStream,
}

impl Shared {
    fn push(&self, fut: Py<PyAny>, done: Done) {
        self.queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((fut, done));
        if !self.signaled.swap(true, Ordering::SeqCst) {
            // A full socket already holds a wake-up: nothing is lost.
            let _ = (&self.writer).write(&[1]);
        }
    }
}

/// Hands outcomes of tokio tasks to one event loop's futures (see the module
/// docs). One per event loop, made by the Python layer.
#[pyclass(module = "tollgate._native")]
struct Bridge {
    shared: Arc<Shared>,
    reader: UnixStream,
}

#[pymethods]
impl Bridge {
    #[new]
    fn new() -> PyResult<Self> {
        let (reader, writer) =
            UnixStream::pair().map_err(|e| PyRuntimeError::new_err(format!("socketpair: {e}")))?;
        reader.set_nonblocking(true)?;
        writer.set_nonblocking(true)?;
        Ok(Bridge {
            shared: Arc::new(Shared {
                queue: Mutex::new(Vec::new()),
                signaled: AtomicBool::new(false),
                writer,
            }),
            reader,
        })
    }

    /// The socket the event loop watches.
    fn fileno(&self) -> i32 {
        self.reader.as_raw_fd()
    }

    /// Gives every finished outcome to its future (the loop's reader callback).
    fn drain(&self, py: Python<'_>) -> PyResult<()> {
        let mut buf = [0u8; 256];
        loop {
            match (&self.reader).read(&mut buf) {
                Ok(0) => break,
                Ok(_) => continue,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        self.shared.signaled.store(false, Ordering::SeqCst);
        let items =
            std::mem::take(&mut *self.shared.queue.lock().unwrap_or_else(|p| p.into_inner()));
        for (fut, done) in items {
            let fut = fut.bind(py);
            if fut.call_method0(intern!(py, "done"))?.is_truthy()? {
                // Cancelled while the outcome was on its way: give it back.
                if let Done::Permit(limiter, permit) = done {
                    runtime().spawn(async move {
                        let _ = limiter.cancel(permit).await;
                    });
                }
                continue;
            }
            let outcome = match done {
                Done::Permit(_, permit) => Py::new(py, NativePermit::new(permit)).map(Py::into_any),
                Done::Value(make) => make(py),
            };
            match outcome {
                Ok(v) => fut.call_method1(intern!(py, "set_result"), (v,))?,
                Err(e) => fut.call_method1(intern!(py, "set_exception"), (e.value(py),))?,
            };
        }
        Ok(())
    }
}

/// A running tokio task behind an asyncio future.
#[pyclass(module = "tollgate._native", frozen)]
struct Task {
    abort: tokio::task::AbortHandle,
}

#[pymethods]
impl Task {
    /// Stops the task; what it was waiting for is given back (a queued
    /// reservation is cancelled).
    fn cancel(&self) {
        self.abort.abort();
    }
}

fn spawn<F>(bridge: &Bridge, fut: Py<PyAny>, work: F) -> Task
where
    F: Future<Output = Done> + Send + 'static,
{
    let shared = bridge.shared.clone();
    let handle = runtime().spawn(async move {
        let done = work.await;
        shared.push(fut, done);
    });
    Task {
        abort: handle.abort_handle(),
    }
}

/// Runs a future to its end on the runtime with the GIL released, checking
/// for KeyboardInterrupt every 100 ms (which drops the future: a waiting
/// acquire cancels its reservation).
fn block<F>(py: Python<'_>, fut: F) -> PyResult<F::Output>
where
    F: Future + Send,
    F::Output: Send,
{
    let mut fut = Box::pin(fut);
    loop {
        let step = py.detach(|| {
            runtime().block_on(async {
                tokio::time::timeout(Duration::from_millis(100), &mut fut).await
            })
        });
        match step {
            Ok(v) => return Ok(v),
            Err(_) => py.check_signals()?,
        }
    }
}

/// A granted permit (see `tollgate.Permit`, which wraps it).
#[pyclass(module = "tollgate._native", frozen)]
struct NativePermit {
    permit: Arc<Mutex<Option<Permit>>>,
    #[pyo3(get)]
    id: u64,
    #[pyo3(get)]
    slot: f64,
    #[pyo3(get)]
    waited: f64,
    #[pyo3(get)]
    queue_position: u64,
    #[pyo3(get)]
    source: &'static str,
    #[pyo3(get)]
    class_: u8,
    #[pyo3(get)]
    estimate: [f64; 4],
}

impl NativePermit {
    fn new(p: Permit) -> Self {
        NativePermit {
            id: p.id(),
            slot: p.slot(),
            waited: p.waited().as_secs_f64(),
            queue_position: p.queue_position(),
            source: match p.source() {
                Source::Store => "store",
                Source::Open => "open",
                Source::Local => "local",
            },
            class_: p.class(),
            estimate: p.estimate(),
            permit: Arc::new(Mutex::new(Some(p))),
        }
    }

    fn take(&self) -> PyResult<Permit> {
        self.permit
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .ok_or_else(|| {
                Python::attach(|py| {
                    raise(
                        py,
                        "TokenError",
                        format!(
                            "permit {} was settled, cancelled or turned into a token already; \
                             a permit is settled at most once",
                            self.id
                        ),
                        &[],
                    )
                })
            })
    }
}

#[pymethods]
impl NativePermit {
    /// Whether the shared store decided (not the outage policy).
    #[getter]
    fn store_reachable(&self) -> bool {
        self.source == "store"
    }

    /// Whether it is still unsettled (and not a token yet).
    #[getter]
    fn open(&self) -> bool {
        self.permit
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    /// The permit as a token (consumes it).
    fn token(&self) -> PyResult<String> {
        Ok(self.take()?.into_token())
    }
}

/// A cost from the Python arguments: `tokens` alone, or input and output.
fn cost(tokens: Option<u64>, input: Option<u64>, output: Option<u64>) -> PyResult<Cost> {
    match (tokens, input, output) {
        (Some(t), None, None) => Ok(Cost::tokens(t)),
        (None, None, None) => Ok(Cost::request_only()),
        (None, i, o) => Ok(Cost::split(i.unwrap_or(0), o.unwrap_or(0))),
        (Some(_), _, _) => Err(config_err(
            "give either tokens=… or input_tokens=…/output_tokens=…, not both".into(),
        )),
    }
}

/// Charged and refunded units per dimension.
type Settled = ([f64; 4], [f64; 4]);

fn settlement(s: Settlement) -> Settled {
    (s.charged, s.refunded)
}

type DimRow = (&'static str, u64, f64, f64, f64, f64);
type StatusRow = (String, u64, Vec<DimRow>);

fn status_row(s: tollgate::Status) -> StatusRow {
    let dims = s
        .dimensions
        .iter()
        .map(|d| {
            let name = match d.dimension {
                tollgate::Dimension::Requests => "requests",
                tollgate::Dimension::Tokens => "tokens",
                tollgate::Dimension::InputTokens => "input_tokens",
                tollgate::Dimension::OutputTokens => "output_tokens",
            };
            (
                name,
                d.limit,
                d.capacity,
                d.in_use,
                d.available,
                d.full_in.as_secs_f64(),
            )
        })
        .collect();
    (s.key, s.queue_depth, dims)
}

fn secs(what: &str, v: f64) -> PyResult<Duration> {
    if (0.0..1e9).contains(&v) {
        Ok(Duration::from_secs_f64(v))
    } else {
        Err(config_err(format!(
            "{what} = {v}: a number of seconds >= 0"
        )))
    }
}

/// One limiter of one key (see `tollgate.RateLimiter`, which wraps it).
#[pyclass(module = "tollgate._native", frozen)]
struct Limiter {
    inner: RateLimiter,
}

#[pymethods]
impl Limiter {
    /// Builds a limiter and connects to its store (blocking, GIL released).
    #[staticmethod]
    #[pyo3(signature = (
        url, key, *, rpm=0, tpm=0, input_tpm=0, output_tpm=0, window=60.0, burst=1.0,
        burndown=1.0, max_wait=None, max_queue=None, outage="open", local_share=1.0,
        classes=None, retry=None, lease=2.0, margin=0.0, ca_cert=None, client_cert=None,
        client_key=None, insecure=false, key_prefix=None, connect_timeout=None,
        response_timeout=None, replace_stored_limits=false
    ))]
    #[allow(clippy::too_many_arguments)]
    fn connect(
        py: Python<'_>,
        url: String,
        key: String,
        rpm: u64,
        tpm: u64,
        input_tpm: u64,
        output_tpm: u64,
        window: f64,
        burst: f64,
        burndown: f64,
        max_wait: Option<f64>,
        max_queue: Option<u64>,
        outage: &str,
        local_share: f64,
        classes: Option<Vec<(f64, Option<f64>)>>,
        retry: Option<(u32, f64, f64, f64, f64)>,
        lease: f64,
        margin: f64,
        ca_cert: Option<String>,
        client_cert: Option<String>,
        client_key: Option<String>,
        insecure: bool,
        key_prefix: Option<String>,
        connect_timeout: Option<f64>,
        response_timeout: Option<f64>,
        replace_stored_limits: bool,
    ) -> PyResult<Limiter> {
        let mut limits = Limits::new()
            .window_secs(window)
            .burst(burst)
            .burndown(burndown);
        for (n, set) in [
            (rpm, Limits::rpm as fn(Limits, u64) -> Limits),
            (tpm, Limits::tpm),
            (input_tpm, Limits::input_tpm),
            (output_tpm, Limits::output_tpm),
        ] {
            if n > 0 {
                limits = set(limits, n);
            }
        }
        let outage = match outage {
            "open" => OutagePolicy::Open,
            "closed" => OutagePolicy::Closed,
            "local" => OutagePolicy::Local { share: local_share },
            other => {
                return Err(config_err(format!(
                    "outage = {other:?}: one of \"open\", \"closed\", \"local\""
                )))
            }
        };
        let mut options = RedisOptions::default();
        if let Some(t) = connect_timeout {
            options.connect_timeout = secs("connect_timeout", t)?;
        }
        if let Some(t) = response_timeout {
            options.response_timeout = secs("response_timeout", t)?;
        }
        if let Some(p) = key_prefix {
            options.key_prefix = p;
        }
        options.tls.ca_cert = ca_cert.map(Into::into);
        options.tls.client_cert = client_cert.map(Into::into);
        options.tls.client_key = client_key.map(Into::into);
        options.tls.insecure_skip_verify = insecure;
        let mut builder = RateLimiter::builder(&key)
            .url(&url)
            .limits(limits)
            .outage(outage)
            .margin(secs("margin", margin)?)
            .lease(if lease > 0.0 {
                Some(secs("lease", lease)?)
            } else {
                None
            })
            .replace_stored_limits(replace_stored_limits);
        if let Some(w) = max_wait {
            builder = builder.max_wait(secs("max_wait", w)?);
        }
        if let Some(q) = max_queue {
            builder = builder.max_queue(q);
        }
        if let Some(classes) = classes {
            let classes = classes
                .into_iter()
                .map(|(headroom, max_wait)| {
                    Ok(PriorityClass {
                        headroom,
                        max_wait: max_wait.map(|w| secs("classes.max_wait", w)).transpose()?,
                    })
                })
                .collect::<PyResult<Vec<_>>>()?;
            builder = builder.priority_classes(classes);
        }
        if let Some((max_retries, base, max, exp, jitter)) = retry {
            builder = builder.retry(RetryConfig {
                max_retries,
                base_delay: secs("retry.base_delay", base)?,
                max_delay: secs("retry.max_delay", max)?,
                exponential_base: exp,
                jitter,
                ..RetryConfig::default()
            });
        }
        let standalone = url.starts_with("redis://") || url.starts_with("rediss://");
        let built = block(py, async {
            match builder.clone().redis_options(options.clone()).build().await {
                // Redis is down now: connect on first use, so that the
                // outage policy decides the calls until it is back.
                Err(Error::Store(e)) if standalone && e.is_transient() => {
                    builder.redis_options(options.lazy(true)).build().await
                }
                other => other,
            }
        })?;
        built
            .map(|inner| Limiter { inner })
            .map_err(|e| to_py(py, e))
    }

    /// The key.
    #[getter]
    fn key(&self) -> &str {
        self.inner.key()
    }

    /// Starts `acquire` (or `try_acquire` with `max_wait=0`); `fut` gets the
    /// permit.
    #[pyo3(signature = (bridge, fut, tokens=None, input_tokens=None, output_tokens=None, priority=0, max_wait=None))]
    #[allow(clippy::too_many_arguments)]
    fn acquire(
        &self,
        bridge: &Bridge,
        fut: Py<PyAny>,
        tokens: Option<u64>,
        input_tokens: Option<u64>,
        output_tokens: Option<u64>,
        priority: u8,
        max_wait: Option<f64>,
    ) -> PyResult<Task> {
        let (cost, options) =
            self.request(tokens, input_tokens, output_tokens, priority, max_wait)?;
        let limiter = self.inner.clone();
        Ok(spawn(bridge, fut, async move {
            match limiter.acquire_with(cost, options).await {
                Ok(permit) => Done::Permit(limiter, permit),
                Err(e) => Done::value::<()>(Err(e)),
            }
        }))
    }

    /// `acquire` for synchronous code: blocks (GIL released).
    #[pyo3(signature = (tokens=None, input_tokens=None, output_tokens=None, priority=0, max_wait=None))]
    fn acquire_blocking(
        &self,
        py: Python<'_>,
        tokens: Option<u64>,
        input_tokens: Option<u64>,
        output_tokens: Option<u64>,
        priority: u8,
        max_wait: Option<f64>,
    ) -> PyResult<NativePermit> {
        let (cost, options) =
            self.request(tokens, input_tokens, output_tokens, priority, max_wait)?;
        match block(py, self.inner.acquire_with(cost, options))? {
            Ok(p) => Ok(NativePermit::new(p)),
            Err(e) => Err(to_py(py, e)),
        }
    }

    /// Starts settling `permit` with the usage (or cancelling it, `cancel`).
    #[pyo3(signature = (bridge, fut, permit, tokens=None, input_tokens=None, output_tokens=None, cancel=false))]
    #[allow(clippy::too_many_arguments)]
    fn settle(
        &self,
        bridge: &Bridge,
        fut: Py<PyAny>,
        permit: &NativePermit,
        tokens: Option<u64>,
        input_tokens: Option<u64>,
        output_tokens: Option<u64>,
        cancel: bool,
    ) -> PyResult<Task> {
        let work = self.settling(permit, tokens, input_tokens, output_tokens, cancel)?;
        Ok(spawn(bridge, fut, async move { Done::value(work.await) }))
    }

    /// `settle` for synchronous code.
    #[pyo3(signature = (permit, tokens=None, input_tokens=None, output_tokens=None, cancel=false))]
    fn settle_blocking(
        &self,
        py: Python<'_>,
        permit: &NativePermit,
        tokens: Option<u64>,
        input_tokens: Option<u64>,
        output_tokens: Option<u64>,
        cancel: bool,
    ) -> PyResult<Settled> {
        let work = self.settling(permit, tokens, input_tokens, output_tokens, cancel)?;
        block(py, work)?.map_err(|e| to_py(py, e))
    }

    /// Starts settling a permit token (`cancel`: cancelling it).
    #[pyo3(signature = (bridge, fut, token, tokens=None, input_tokens=None, output_tokens=None, cancel=false))]
    #[allow(clippy::too_many_arguments)]
    fn settle_token(
        &self,
        bridge: &Bridge,
        fut: Py<PyAny>,
        token: String,
        tokens: Option<u64>,
        input_tokens: Option<u64>,
        output_tokens: Option<u64>,
        cancel: bool,
    ) -> PyResult<Task> {
        let usage = cost(tokens, input_tokens, output_tokens)?;
        let limiter = self.inner.clone();
        Ok(spawn(bridge, fut, async move {
            Done::value(token_settling(limiter, token, usage, cancel).await)
        }))
    }

    /// `settle_token` for synchronous code.
    #[pyo3(signature = (token, tokens=None, input_tokens=None, output_tokens=None, cancel=false))]
    fn settle_token_blocking(
        &self,
        py: Python<'_>,
        token: String,
        tokens: Option<u64>,
        input_tokens: Option<u64>,
        output_tokens: Option<u64>,
        cancel: bool,
    ) -> PyResult<Settled> {
        let usage = cost(tokens, input_tokens, output_tokens)?;
        block(py, token_settling(self.inner.clone(), token, usage, cancel))?
            .map_err(|e| to_py(py, e))
    }

    /// Starts reading the key's status from the store.
    fn status(&self, bridge: &Bridge, fut: Py<PyAny>) -> Task {
        let limiter = self.inner.clone();
        spawn(bridge, fut, async move {
            Done::value(limiter.status().await.map(status_row))
        })
    }

    /// `status` for synchronous code.
    fn status_blocking(&self, py: Python<'_>) -> PyResult<StatusRow> {
        block(py, self.inner.status())?
            .map(status_row)
            .map_err(|e| to_py(py, e))
    }

    /// The limiter's counters.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = self.inner.stats();
        let d = PyDict::new(py);
        for (k, v) in [
            ("granted", s.granted),
            ("waited", s.waited),
            ("refused", s.refused),
            ("store_errors", s.store_errors),
            ("outages", s.outages),
            ("outage_open", s.outage_open),
            ("outage_local", s.outage_local),
            ("outage_closed", s.outage_closed),
            ("cancelled", s.cancelled),
            ("advanced", s.advanced),
            ("leases_lost", s.leases_lost),
            ("store_resets", s.store_resets),
        ] {
            d.set_item(k, v)?;
        }
        Ok(d)
    }

    /// The Redis keys of the limiter's state and top-class queue, `None` on
    /// a memory store.
    fn redis_keys<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyList>>> {
        match self.inner.store() {
            tollgate::Store::Redis(r) => {
                let (state, queue) = r.key_names(self.inner.key());
                Ok(Some(PyList::new(py, [state, queue])?))
            }
            _ => Ok(None),
        }
    }
}

impl Limiter {
    fn request(
        &self,
        tokens: Option<u64>,
        input: Option<u64>,
        output: Option<u64>,
        priority: u8,
        max_wait: Option<f64>,
    ) -> PyResult<(Cost, AcquireOptions)> {
        let mut options = AcquireOptions::class(priority);
        if let Some(w) = max_wait {
            options = options.max_wait(secs("max_wait", w)?);
        }
        Ok((cost(tokens, input, output)?, options))
    }

    fn settling(
        &self,
        permit: &NativePermit,
        tokens: Option<u64>,
        input: Option<u64>,
        output: Option<u64>,
        cancel: bool,
    ) -> PyResult<impl Future<Output = Result<Settled, Error>> + Send + 'static> {
        let usage = cost(tokens, input, output)?;
        let p = permit.take()?;
        let slot = permit.permit.clone();
        let limiter = self.inner.clone();
        Ok(async move {
            let r = if cancel {
                limiter.cancel(p).await
            } else {
                limiter.settle(p, usage).await
            };
            match r {
                // Refused before anything was settled: the permit goes back.
                Err(Error::BadUsage { permit, source }) => {
                    *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(*permit);
                    Err(Error::Cost(source))
                }
                Err(Error::ForeignPermit { permit, limiter: l }) => {
                    let key = permit.key().to_string();
                    *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(*permit);
                    Err(Error::Config {
                        field: "permit",
                        value: format!("a permit of key {key:?}, given to the limiter of {l:?}"),
                        reason: "the permit of a limiter of the same key",
                    })
                }
                other => other.map(settlement),
            }
        })
    }
}

async fn token_settling(
    limiter: RateLimiter,
    token: String,
    usage: Cost,
    cancel: bool,
) -> Result<Settled, Error> {
    if cancel {
        limiter.cancel_token(&token).await.map(settlement)
    } else {
        limiter.settle_token(&token, usage).await.map(settlement)
    }
}

/// The native module.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Bridge>()?;
    m.add_class::<Task>()?;
    m.add_class::<NativePermit>()?;
    m.add_class::<Limiter>()?;
    m.add("TOKEN_LIFETIME", tollgate::TOKEN_LIFETIME.as_secs_f64())?;
    Ok(())
}
