//! One low-priority glommio task queue per kind of background job and core (the background
//! integrity check, the GC), so that job yields to requests: each gets `shares` against the
//! default queue's 1000.

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;

thread_local! {
    static QUEUES: RefCell<HashMap<&'static str, glommio::TaskQueueHandle>> = RefCell::new(HashMap::new());
}

/// Spawns `task` (detached) into this core's queue named `name`, created on first use.
pub fn spawn(name: &'static str, shares: usize, task: impl Future<Output = ()> + 'static) {
    let queue = QUEUES.with(|queues| {
        *queues.borrow_mut().entry(name).or_insert_with(|| {
            glommio::executor().create_task_queue(
                glommio::Shares::Static(shares),
                glommio::Latency::NotImportant,
                name,
            )
        })
    });
    match glommio::spawn_local_into(task, queue) {
        Ok(task) => {
            task.detach();
        }
        Err(e) => tracing::warn!(queue = name, error = %e, "background job not started"),
    }
}
