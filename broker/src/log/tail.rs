//! `tail(from)`: every record from a seq, stored ones first, then live ones as they commit.

use super::store::{LogError, LogStore};
use futures_core::Stream;
use pairbus_schemas::Record;
use std::collections::VecDeque;
use std::sync::Arc;
use tokio::sync::watch;

/// How many records a tail reads from the store at a time.
pub const TAIL_CHUNK: u64 = 1024;

/// A catch-up subscription: yields every durable record from `from`, in order, with no gap
/// and no duplicate, waiting for new commits once it has caught up.
///
/// It never skips: it reads seqs `next, next+1, …` from the store and only waits when `next`
/// is beyond the durable head, whose changes it watches (a commit between the check and the
/// wait still wakes it, since the watch remembers the unseen value). Store reads are short
/// and synchronous (sled's cache); they run on the calling task.
pub struct Tail<S: LogStore + ?Sized> {
    store: Arc<S>,
    next: u64,
    head: watch::Receiver<u64>,
    buf: VecDeque<Record>,
}

impl<S: LogStore + ?Sized> Tail<S> {
    /// Starts at `from` (seq 0 is treated as 1).
    pub fn new(store: Arc<S>, from: u64) -> Self {
        let head = store.subscribe();
        Tail {
            store,
            next: from.max(1),
            head,
            buf: VecDeque::new(),
        }
    }

    /// The seq the next yielded record will have.
    pub fn position(&self) -> u64 {
        self.buf.front().map(|r| r.seq).unwrap_or(self.next)
    }

    /// The next record; `None` only if the store is gone. A read error is yielded once and
    /// the tail can be polled again (it retries from the same seq).
    pub async fn next(&mut self) -> Option<Result<Record, LogError>> {
        loop {
            if let Some(r) = self.buf.pop_front() {
                return Some(Ok(r));
            }
            let durable = *self.head.borrow_and_update();
            if self.next <= durable {
                let to = durable.min(self.next + TAIL_CHUNK - 1) + 1;
                match self.store.range(self.next..to) {
                    Ok(records) => {
                        for r in records {
                            // Defensive: never yield out of order, never yield twice.
                            if r.seq == self.next {
                                self.next += 1;
                                self.buf.push_back(r);
                            }
                        }
                        if self.buf.is_empty() {
                            return Some(Err(LogError::Corrupt {
                                at: format!("seq {}", self.next),
                                detail: "durable record not found".into(),
                            }));
                        }
                    }
                    Err(e) => return Some(Err(e)),
                }
                continue;
            }
            if self.head.changed().await.is_err() {
                return None;
            }
        }
    }

    /// The tail as a [`Stream`].
    pub fn into_stream(self) -> impl Stream<Item = Result<Record, LogError>> + Send
    where
        S: 'static,
    {
        futures_util::stream::unfold(self, |mut t| async move {
            let item = t.next().await?;
            Some((item, t))
        })
    }
}

/// `tail(from)`: see [`Tail`].
pub fn tail<S: LogStore + ?Sized>(store: Arc<S>, from: u64) -> Tail<S> {
    Tail::new(store, from)
}
