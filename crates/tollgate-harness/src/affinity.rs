//! Which cores a process or thread may run on (Linux `sched_setaffinity`).
//!
//! The speed run uses it to put one caller and `redis-server` on the same
//! core: a single caller waits for every reply, and on this VM waking a
//! sleeping core for each one costs more than the work on both sides (see
//! "Speed side by side" in `docs/BENCHMARKS.md`).

use anyhow::{bail, Context};

/// The cores this process may run on now.
pub fn allowed() -> anyhow::Result<Vec<usize>> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set, and the call writes at
    // most `size_of::<cpu_set_t>()` bytes into it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let rc =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("sched_getaffinity");
    }
    let cpus: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
        // SAFETY: `cpu` is below CPU_SETSIZE, the size of the set.
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect();
    if cpus.is_empty() {
        bail!("sched_getaffinity returned no core");
    }
    Ok(cpus)
}

/// Lets `pid` (0: the calling thread) run only on `cpus`.
pub fn set(pid: u32, cpus: &[usize]) -> anyhow::Result<()> {
    // SAFETY: as in `allowed`; CPU_SET is given indices below CPU_SETSIZE.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &cpu in cpus {
        if cpu >= libc::CPU_SETSIZE as usize {
            bail!("core {cpu} is beyond CPU_SETSIZE");
        }
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
    let pid = libc::pid_t::try_from(pid).context("pid out of range")?;
    // SAFETY: `set` is initialised and its size is passed with it.
    let rc = unsafe { libc::sched_setaffinity(pid, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("sched_setaffinity({pid}, {cpus:?})"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_pinned_to_one_core_reports_only_that_core() {
        let all = allowed().unwrap();
        let last = *all.last().unwrap();
        std::thread::spawn(move || {
            set(0, &[last]).unwrap();
            assert_eq!(allowed().unwrap(), vec![last]);
        })
        .join()
        .unwrap();
        // The process (this thread) keeps every core it had.
        assert_eq!(allowed().unwrap(), all);
    }

    #[test]
    fn a_core_beyond_the_set_size_is_refused() {
        let err = set(0, &[libc::CPU_SETSIZE as usize]).unwrap_err();
        assert!(err.to_string().contains("beyond CPU_SETSIZE"), "{err}");
    }
}
