//! The engine's threads for one forward pass: helpers that spin between the many short
//! parallel steps of a forward pass (as ONNX Runtime's intra-op pool does), so that a step
//! of 100 µs does not wait on a sleeping thread.
//!
//! rayon parks idle workers and wakes them with a futex: measured on a 2-core KVM guest
//! (Zen 3), 40-250 µs lost per parallel step, against 3-13 µs here; DeiT-Tiny runs about 150
//! such steps per image. Helpers spin for [`SPIN`] after their last task, then sleep until the
//! next one. The thread count is rayon's (`--threads` sets it), so both pools agree.

use std::mem::MaybeUninit;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long an idle helper spins before it sleeps.
const SPIN: Duration = Duration::from_millis(2);

/// One parallel step: `tasks` calls of `run`, claimed one at a time.
struct Job {
    /// The caller's closure, valid until every task is done (the caller waits for that, and
    /// no task is claimed after the last one).
    run: *const (dyn Fn(usize) + Sync),
    tasks: usize,
    next: AtomicUsize,
    done: AtomicUsize,
    panicked: AtomicBool,
}

// SAFETY: `run` points at a `Sync` closure that outlives every call made through it.
unsafe impl Send for Job {}
unsafe impl Sync for Job {}

impl Job {
    /// Claims and runs tasks until none is left.
    fn work(&self) {
        loop {
            let task = self.next.fetch_add(1, Ordering::Relaxed);
            if task >= self.tasks {
                return;
            }
            // SAFETY: a task below `tasks` is claimed before its caller returns (it waits
            // for `done` to reach `tasks`), so the closure is alive.
            let run = unsafe { &*self.run };
            if catch_unwind(AssertUnwindSafe(|| run(task))).is_err() {
                self.panicked.store(true, Ordering::Relaxed);
            }
            self.done.fetch_add(1, Ordering::Release);
        }
    }
}

struct Pool {
    helpers: usize,
    /// Counts published jobs; a helper works when it sees a new value.
    generation: AtomicU64,
    job: Mutex<Option<Arc<Job>>>,
    wake: Condvar,
    /// Set while a job runs: a second caller (another thread, or a task) runs serially.
    busy: AtomicBool,
}

impl Pool {
    fn helper(&self) {
        let mut seen = 0;
        loop {
            let since = Instant::now();
            let mut spins = 0u32;
            while self.generation.load(Ordering::Acquire) == seen {
                std::hint::spin_loop();
                spins = spins.wrapping_add(1);
                if spins.is_multiple_of(1024) && since.elapsed() > SPIN {
                    let mut slot = self.job.lock().unwrap_or_else(|e| e.into_inner());
                    while self.generation.load(Ordering::Acquire) == seen {
                        slot = self.wake.wait(slot).unwrap_or_else(|e| e.into_inner());
                    }
                }
            }
            let job = {
                let slot = self.job.lock().unwrap_or_else(|e| e.into_inner());
                seen = self.generation.load(Ordering::Acquire);
                slot.clone()
            };
            if let Some(job) = job {
                job.work();
            }
        }
    }
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<&'static Pool> = OnceLock::new();
    POOL.get_or_init(|| {
        let pool: &'static Pool = Box::leak(Box::new(Pool {
            helpers: rayon::current_num_threads().saturating_sub(1),
            generation: AtomicU64::new(0),
            job: Mutex::new(None),
            wake: Condvar::new(),
            busy: AtomicBool::new(false),
        }));
        for index in 0..pool.helpers {
            let spawned = std::thread::Builder::new()
                .name(format!("vit-engine-{index}"))
                .spawn(move || pool.helper());
            if spawned.is_err() {
                // Fewer helpers only means less parallelism: the caller runs every task
                // that no helper claims.
                break;
            }
        }
        pool
    })
}

/// Runs `run(0..tasks)` on the engine's threads, the caller among them; returns when all
/// are done. Runs serially for one task, one thread, or while another step is running
/// (from another thread or from inside a task). A panic in a task is raised here.
pub fn for_each(tasks: usize, run: impl Fn(usize) + Sync) {
    if tasks <= 1 || rayon::current_num_threads() <= 1 {
        (0..tasks).for_each(run);
        return;
    }
    let pool = pool();
    if pool.helpers == 0
        || pool
            .busy
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
    {
        (0..tasks).for_each(run);
        return;
    }
    let run: &(dyn Fn(usize) + Sync) = &run;
    // SAFETY (of the lifetime erasure): this function returns only after `done` reaches
    // `tasks`, and a helper holding the job afterwards claims no task, so it never calls
    // `run` once it is gone.
    let run: *const (dyn Fn(usize) + Sync + 'static) = unsafe { std::mem::transmute(run) };
    let job = Arc::new(Job {
        run,
        tasks,
        next: AtomicUsize::new(0),
        done: AtomicUsize::new(0),
        panicked: AtomicBool::new(false),
    });
    {
        let mut slot = pool.job.lock().unwrap_or_else(|e| e.into_inner());
        *slot = Some(job.clone());
        pool.generation.fetch_add(1, Ordering::Release);
    }
    pool.wake.notify_all();
    job.work();
    while job.done.load(Ordering::Acquire) < tasks {
        std::hint::spin_loop();
    }
    *pool.job.lock().unwrap_or_else(|e| e.into_inner()) = None;
    pool.busy.store(false, Ordering::Release);
    if job.panicked.load(Ordering::Relaxed) {
        panic!("a task of the CPU engine panicked");
    }
}

/// A buffer of `len` values built by `run(i, chunk)` for its chunks of `chunk_len` values (the
/// last may be shorter), in parallel as [`for_each`]: `run` must write every value of its
/// chunk. The buffer is never zeroed first (a memset of every layer's activations, a
/// twentieth of DeiT-Tiny's batch-8 forward pass on Zen 5 with the page clearing it brings).
pub fn fill(
    len: usize,
    chunk_len: usize,
    run: impl Fn(usize, &mut [MaybeUninit<f32>]) + Sync,
) -> Vec<f32> {
    let chunk_len = chunk_len.max(1);
    let mut values = Vec::with_capacity(len);
    let base: super::SendPtr = super::SendPtr(values.spare_capacity_mut().as_mut_ptr().cast());
    for_each(len.div_ceil(chunk_len), |i| {
        let start = i * chunk_len;
        // SAFETY: chunk i is `start..start + chunk_len` clipped to the capacity, disjoint
        // from every other chunk.
        let chunk = unsafe {
            std::slice::from_raw_parts_mut(base.at(start).cast(), chunk_len.min(len - start))
        };
        run(i, chunk)
    });
    // SAFETY: every chunk's values were written (the contract of `run`; a panic in a task
    // is raised by for_each before this line).
    unsafe { values.set_len(len) };
    values
}

/// Runs `run(i, chunk)` on each chunk of `chunk_len` values of `data` (the last may be
/// shorter), in parallel as [`for_each`].
pub fn for_each_chunk_mut(
    data: &mut [f32],
    chunk_len: usize,
    run: impl Fn(usize, &mut [f32]) + Sync,
) {
    let (len, chunk_len) = (data.len(), chunk_len.max(1));
    let base = super::SendPtr(data.as_mut_ptr());
    for_each(len.div_ceil(chunk_len), |i| {
        let start = i * chunk_len;
        // SAFETY: chunk i is `start..start + chunk_len` clipped to `data`, which this call
        // borrows mutably, and disjoint from every other chunk.
        let chunk =
            unsafe { std::slice::from_raw_parts_mut(base.at(start), chunk_len.min(len - start)) };
        run(i, chunk)
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_task_runs_once() {
        for tasks in [0, 1, 2, 7, 100] {
            let counts: Vec<AtomicUsize> = (0..tasks).map(|_| AtomicUsize::new(0)).collect();
            for_each(tasks, |t| {
                counts[t].fetch_add(1, Ordering::Relaxed);
            });
            assert!(counts.iter().all(|c| c.load(Ordering::Relaxed) == 1));
        }
    }

    #[test]
    fn filled_buffers_hold_what_every_chunk_wrote() {
        let values = fill(1000, 64, |i, chunk| {
            for (j, v) in chunk.iter_mut().enumerate() {
                v.write((i * 64 + j) as f32);
            }
        });
        assert_eq!(values.len(), 1000);
        assert!(values.iter().enumerate().all(|(j, v)| *v == j as f32));
        assert!(fill(0, 64, |_, _| unreachable!("no chunk")).is_empty());
    }

    #[test]
    fn callers_on_many_threads_and_nested_steps_all_finish() {
        let total = AtomicUsize::new(0);
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    for _ in 0..200 {
                        for_each(3, |_| {
                            for_each(2, |_| {
                                total.fetch_add(1, Ordering::Relaxed);
                            });
                        });
                    }
                });
            }
        });
        assert_eq!(total.load(Ordering::Relaxed), 4 * 200 * 3 * 2);
    }

    #[test]
    fn a_panicking_task_panics_the_caller_and_the_pool_still_works() {
        let caught = catch_unwind(|| {
            for_each(4, |t| {
                if t == 2 {
                    panic!("task 2");
                }
            })
        });
        assert!(caught.is_err());
        let ran = AtomicUsize::new(0);
        for_each(5, |_| {
            ran.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(ran.load(Ordering::Relaxed), 5);
    }
}
