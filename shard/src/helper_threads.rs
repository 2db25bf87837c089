//! Where a shard's helper threads run. A shard's executor is pinned to its CPU, and a thread it
//! spawns inherits that pin, so the log's fsync thread, the checkpoint writer and the journal
//! merge would all queue behind the executor on one CPU while the node's other CPUs sit idle
//! (measured at 1 M keys: the owning CPU saturated with its executor at 63%, the other CPU at
//! ~20%). Helpers share no state with the executor but channels, so they run on every CPU the
//! process may use and the kernel puts them where there is room (decision D20).

use std::io;
use std::thread::JoinHandle;

/// The CPUs the process may run on: the mask of its main thread (whose id is the process id),
/// which the executors' pins do not change. Respects `taskset` and cgroup limits.
pub fn process_cpus() -> io::Result<Vec<usize>> {
    // SAFETY: `cpu_set_t` is plain data; an all-zero value is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: the pointer and size describe `set`, which outlives the call.
    let rc =
        unsafe { libc::sched_getaffinity(libc::getpid(), std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `set` was filled in by the kernel; CPU_ISSET only reads it.
    Ok((0..libc::CPU_SETSIZE as usize).filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) }).collect())
}

/// Pin the calling thread to `cpus` (every CPU in the list, not one of them).
pub fn run_on(cpus: &[usize]) -> io::Result<()> {
    // SAFETY: as in `process_cpus`.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &cpu in cpus.iter().filter(|&&cpu| cpu < libc::CPU_SETSIZE as usize) {
        // SAFETY: `cpu` is below CPU_SETSIZE, so the bit lies inside `set`.
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
    // SAFETY: the pointer and size describe `set`; 0 names the calling thread.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Spawn a named helper thread that runs on all of the process's CPUs. If the mask cannot be
/// read or set the thread keeps the inherited one: it still works, only on the shard's CPU.
pub fn spawn_helper<F, T>(name: &str, work: F) -> io::Result<JoinHandle<T>>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let cpus = process_cpus();
    std::thread::Builder::new().name(name.to_string()).spawn(move || {
        match cpus.and_then(|cpus| run_on(&cpus)) {
            Ok(()) => {}
            Err(e) => crate::event!(warn, "helper_thread_unpin_failed", error = %e),
        }
        work()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn own_cpus() -> Vec<usize> {
        // SAFETY: as in `process_cpus`, for the calling thread (0).
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        // SAFETY: the pointer and size describe `set`, which outlives the call.
        let rc = unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
        assert_eq!(rc, 0);
        // SAFETY: `set` was filled in by the kernel; CPU_ISSET only reads it.
        (0..libc::CPU_SETSIZE as usize).filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) }).collect()
    }

    /// A helper spawned from a thread pinned to one CPU runs on all the process's CPUs, while
    /// a plain thread spawned there inherits the pin.
    #[test]
    fn t01_helpers_escape_their_spawners_pin() {
        let all = process_cpus().expect("process mask");
        assert!(!all.is_empty());
        let pinned_to = all[all.len() - 1];
        let (helper, plain) = std::thread::spawn(move || {
            run_on(&[pinned_to]).expect("pin");
            assert_eq!(own_cpus(), vec![pinned_to]);
            let helper = spawn_helper("t01-helper", own_cpus).expect("spawn").join().expect("join");
            let plain = std::thread::spawn(own_cpus).join().expect("join");
            (helper, plain)
        })
        .join()
        .expect("join");
        assert_eq!(helper, all);
        assert_eq!(plain, vec![pinned_to]);
    }
}
