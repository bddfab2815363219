//! A named background thread that runs until it is told to stop: the shape shared by the
//! broker's link workers (presence mirror, replay service).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

/// A running worker thread and its stop flag.
#[derive(Debug)]
pub struct Worker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    /// Starts `body` on a thread called `name`; `body` is handed the stop flag and should
    /// return soon after it turns true.
    pub fn spawn(
        name: &str,
        body: impl FnOnce(Arc<AtomicBool>) + Send + 'static,
    ) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || body(flag))?;
        Ok(Worker {
            stop,
            thread: Some(thread),
        })
    }

    /// Raises the stop flag and waits for the thread to end.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn stop_raises_the_flag_and_joins_the_thread() {
        let (tx, rx) = std::sync::mpsc::channel();
        let w = Worker::spawn("pairbus-test-worker", move |stop| {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(1));
            }
            tx.send(std::thread::current().name().map(str::to_owned))
                .unwrap();
        })
        .unwrap();
        w.stop();
        assert_eq!(
            rx.try_recv().unwrap().as_deref(),
            Some("pairbus-test-worker"),
            "the body ended (with the thread's name) before stop returned"
        );
    }
}
