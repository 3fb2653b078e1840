//! Work that must outlive the caller who started it: cancelling a dropped
//! waiter's reservation, undoing what a call that came back too late wrote,
//! finishing a settlement the caller stopped waiting for.
//!
//! Such work runs on the caller's runtime when there is one. When there is
//! none, or when that runtime shuts down before the work has finished (its
//! tasks are then dropped unrun), it moves to one small runtime of the
//! library's own, on a thread of its own that lives as long as the process.

use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;

/// Where a job runs: the connections of the caller's runtime may have died
/// with it, so on the library's own runtime a job uses connections of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Place {
    /// On the runtime of the caller who handed the job over.
    Caller,
    /// On the library's own runtime.
    Own,
}

/// Work not yet started: a function that makes the future, told where it runs.
pub(crate) type Job = Box<dyn FnOnce(Place) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

/// The library's own runtime (one thread, started on first use).
fn own_runtime() -> &'static tokio::runtime::Handle {
    static HANDLE: OnceLock<tokio::runtime::Handle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .thread_name("tollgate-background")
            .build()
            .expect("a one-thread tokio runtime builds");
        let handle = runtime.handle().clone();
        std::thread::Builder::new()
            .name("tollgate-background".into())
            .spawn(move || runtime.block_on(std::future::pending::<()>()))
            .expect("the background thread starts");
        handle
    })
}

/// Runs `job` on the caller's runtime, or on the library's own when there is
/// none or the caller's drops it before it has finished.
pub(crate) fn run(job: Job) {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => {
            let mut holder = Holder(Some(job));
            handle.spawn(async move {
                // Once started, a job is not started again: what it sent may
                // already have been applied.
                if let Some(job) = holder.0.take() {
                    job(Place::Caller).await;
                }
            });
        }
        Err(_) => {
            own_runtime().spawn(async move { job(Place::Own).await });
        }
    }
}

/// Runs a future that cannot be started again (it is already on its way) on
/// the caller's runtime, or on the library's own when there is none.
pub(crate) fn finish<F: Future<Output = ()> + Send + 'static>(fut: F) {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => drop(handle.spawn(fut)),
        Err(_) => drop(own_runtime().spawn(fut)),
    }
}

/// Runs `fut` on the library's own runtime, away from the caller's threads
/// (however busy they are).
pub(crate) fn on_own_runtime<F: Future<Output = ()> + Send + 'static>(fut: F) {
    drop(own_runtime().spawn(fut));
}

/// Holds a job until its task has started it; a task dropped before that (its
/// runtime shut down) hands the job to the library's own runtime.
struct Holder(Option<Job>);

impl Drop for Holder {
    fn drop(&mut self) {
        if let Some(job) = self.0.take() {
            own_runtime().spawn(async move { job(Place::Own).await });
        }
    }
}
