//! [`Batcher`]: groups the lookups that wait at the same moment into one
//! round trip, for drivers whose backend can answer many keys at once (an
//! `IN (…)` or `= ANY($1)` statement, a pipeline).
//!
//! There is no timer. A lookup that finds no batch in flight goes out at
//! once, alone, so a lone request waits for nothing. Lookups that arrive
//! while a batch is in flight queue up; when it returns, everything queued
//! goes out together as the next batch, led by one of the queued callers,
//! with whatever queued until the moment it is sent. Under load the batch
//! size thus follows the round-trip time and the arrival rate by itself.
//!
//! Under load, lookups also arrive together: a server that reads several
//! requests off the network at once runs their handlers one after another
//! on the same scheduler tick. Once a batch has carried more than one
//! lookup, a caller that starts a new batch first yields to the scheduler
//! once (`tokio::task::yield_now`, not a sleep), so the lookups of the
//! tasks that are ready at that moment join it instead of each leading a
//! round trip of its own. A batch of one turns this off again, so while
//! requests come one at a time nothing ever yields.
//!
//! No task is spawned: the caller that leads a batch runs it on its own
//! task. If that caller is cancelled (its future dropped) mid-batch, the
//! batch's lookups are handed to another waiting caller and run again, so
//! nobody waits forever.
//!
//! When a grouped lookup fails, every caller in the batch gets the same
//! error, shared behind an [`Arc`].
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! use keepsake_core::batch::Batcher;
//!
//! let batcher: Batcher<u32, String, std::io::Error> = Batcher::new();
//! // One lookup alone: a batch of one, run at once.
//! let answer = batcher
//!     .run(7, |keys: Vec<u32>| async move {
//!         Ok(keys.iter().map(|k| format!("value {k}")).collect())
//!     })
//!     .await;
//! assert_eq!(answer.unwrap(), "value 7");
//! # });
//! ```

use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::oneshot;

/// Groups concurrent lookups of keys `K` answering `V`, failing with `E`.
/// See the [module documentation](self).
pub struct Batcher<K, V, E> {
    state: Mutex<State<K, V, E>>,
}

struct State<K, V, E> {
    /// Lookups waiting for the next batch.
    queue: Vec<Entry<K, V, E>>,
    /// True while a caller leads a batch (or holds the lead to start one).
    leading: bool,
    /// True when the last batch carried more than one lookup: lookups are
    /// arriving together, and a new lead yields once to gather them.
    shared: bool,
}

struct Entry<K, V, E> {
    key: K,
    reply: oneshot::Sender<Message<K, V, E>>,
}

enum Message<K, V, E> {
    /// The answer to this caller's lookup.
    Done(Result<V, Arc<E>>),
    /// This caller now leads: run these lookups (its own is not among
    /// them) and whatever it queued itself.
    Lead(Vec<Entry<K, V, E>>),
}

impl<K, V, E> Default for Batcher<K, V, E> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K, V, E> fmt::Debug for Batcher<K, V, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.lock();
        f.debug_struct("Batcher")
            .field("queued", &state.queue.len())
            .field("leading", &state.leading)
            .field("shared", &state.shared)
            .finish()
    }
}

impl<K, V, E> Batcher<K, V, E> {
    /// A batcher with nothing in flight.
    #[must_use]
    pub const fn new() -> Self {
        Self {
            state: Mutex::new(State {
                queue: Vec::new(),
                leading: false,
                shared: false,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<K, V, E>> {
        // The state is consistent after every statement that changes it, so
        // a panic elsewhere while the lock was held leaves nothing half done.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<K: Clone, V, E> Batcher<K, V, E> {
    /// Looks `key` up, together with the lookups waiting at the same moment.
    ///
    /// `fetch` gets the keys of one batch and must answer with one value per
    /// key, in the same order (a key may appear more than once when two
    /// callers look it up at once). It is called by whichever caller leads
    /// the batch, so every caller of one batcher must pass an equivalent
    /// `fetch`.
    ///
    /// # Errors
    ///
    /// The error of the batch this lookup was part of, shared by every
    /// caller in it.
    pub async fn run<F, Fut>(&self, key: K, fetch: F) -> Result<V, Arc<E>>
    where
        F: Fn(Vec<K>) -> Fut,
        Fut: Future<Output = Result<Vec<V>, E>>,
    {
        loop {
            let (reply, receiver) = oneshot::channel();
            let entry = Entry {
                key: key.clone(),
                reply,
            };
            let batch = {
                let mut state = self.lock();
                if state.leading {
                    state.queue.push(entry);
                    None
                } else {
                    state.leading = true;
                    Some((vec![entry], state.shared))
                }
            };
            let mut waiting = Waiting {
                batcher: self,
                receiver: Some(receiver),
            };
            let (batch, gather) = match batch {
                Some(lead) => lead,
                None => match waiting.recv().await {
                    Some(Message::Done(answer)) => return answer,
                    Some(Message::Lead(mut batch)) => {
                        // Our own lookup joins the batch we now lead.
                        let (reply, receiver) = oneshot::channel();
                        batch.insert(
                            0,
                            Entry {
                                key: key.clone(),
                                reply,
                            },
                        );
                        waiting.receiver = Some(receiver);
                        (batch, false)
                    }
                    // Our entry was lost with a cancelled caller: queue again.
                    None => continue,
                },
            };
            self.lead(batch, gather, &fetch).await;
            match waiting.recv().await {
                Some(Message::Done(answer)) => return answer,
                // Unreachable: the batch we led answered our own entry. Kept
                // total rather than trusted: queue again.
                Some(Message::Lead(batch)) => self.hand_off(batch),
                None => {}
            }
        }
    }

    /// Runs `batch`, with the lookups queued up to the moment it goes out,
    /// and then hands everything queued meanwhile to one of the queued
    /// callers. With `gather`, it first yields to the scheduler once.
    async fn lead<F, Fut>(&self, batch: Vec<Entry<K, V, E>>, gather: bool, fetch: &F)
    where
        F: Fn(Vec<K>) -> Fut,
        Fut: Future<Output = Result<Vec<V>, E>>,
    {
        let mut leading = Leading {
            batcher: self,
            batch,
        };
        if gather {
            tokio::task::yield_now().await;
        }
        // Lookups that queued while this lead was handed over, or during
        // the yield, would otherwise wait a whole round trip for the next
        // batch.
        {
            let mut state = self.lock();
            leading.batch.append(&mut state.queue);
            state.shared = leading.batch.len() > 1;
        }
        let keys = leading.batch.iter().map(|e| e.key.clone()).collect();
        let answer = fetch(keys).await;
        let batch = std::mem::take(&mut leading.batch);
        match answer {
            Ok(values) => {
                // A short answer (a bug in `fetch`) leaves the last entries
                // unanswered: their callers queue again.
                for (entry, value) in batch.into_iter().zip(values) {
                    // A caller that went away needs no answer.
                    let _ = entry.reply.send(Message::Done(Ok(value)));
                }
            }
            Err(error) => {
                let error = Arc::new(error);
                for entry in batch {
                    let _ = entry.reply.send(Message::Done(Err(Arc::clone(&error))));
                }
            }
        }
        // `leading`'s drop hands the lead on.
    }

    /// Gives up the lead: `leftover` (lookups not answered) and everything
    /// queued go to the first queued caller still waiting, who leads the
    /// next batch; with nobody waiting, the next caller leads.
    fn hand_off(&self, leftover: Vec<Entry<K, V, E>>) {
        let mut state = self.lock();
        let mut batch = leftover;
        batch.append(&mut state.queue);
        while !batch.is_empty() {
            let next = batch.remove(0);
            match next.reply.send(Message::Lead(batch)) {
                Ok(()) => return,
                // That caller went away: try the next one.
                Err(Message::Lead(rest)) => batch = rest,
                Err(Message::Done(_)) => return,
            }
        }
        state.leading = false;
    }
}

/// The error of a batch, turned into the source of one caller's own error:
/// the error itself when this caller holds the last reference to it (always
/// so for a batch of one), else a [`Shared`] around it.
#[must_use]
pub fn unshare<E>(error: Arc<E>) -> crate::BoxError
where
    E: std::error::Error + Send + Sync + 'static,
{
    match Arc::try_unwrap(error) {
        Ok(error) => Box::new(error),
        Err(shared) => Box::new(Shared(shared)),
    }
}

/// An error that every lookup of one batch got; its
/// [`source`](std::error::Error::source) is that error.
#[derive(Debug)]
pub struct Shared<E>(pub Arc<E>);

impl<E> fmt::Display for Shared<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a grouped lookup failed")
    }
}

impl<E: std::error::Error + 'static> std::error::Error for Shared<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}

/// The lead of one batch; dropping it (after the batch, or when the leader
/// is cancelled mid-batch) hands the lead and any unanswered lookups on.
struct Leading<'a, K: Clone, V, E> {
    batcher: &'a Batcher<K, V, E>,
    batch: Vec<Entry<K, V, E>>,
}

impl<K: Clone, V, E> Drop for Leading<'_, K, V, E> {
    fn drop(&mut self) {
        self.batcher.hand_off(std::mem::take(&mut self.batch));
    }
}

/// A caller waiting for its answer or for the lead. Dropped while waiting
/// (the caller cancelled), it passes on a lead it was given meanwhile.
struct Waiting<'a, K: Clone, V, E> {
    batcher: &'a Batcher<K, V, E>,
    receiver: Option<oneshot::Receiver<Message<K, V, E>>>,
}

impl<K: Clone, V, E> Waiting<'_, K, V, E> {
    /// The next message; `None` when the entry was dropped unanswered.
    async fn recv(&mut self) -> Option<Message<K, V, E>> {
        let receiver = self.receiver.as_mut()?;
        let message = receiver.await.ok();
        self.receiver = None;
        message
    }
}

impl<K: Clone, V, E> Drop for Waiting<'_, K, V, E> {
    fn drop(&mut self) {
        let Some(mut receiver) = self.receiver.take() else {
            return;
        };
        receiver.close();
        if let Ok(Message::Lead(batch)) = receiver.try_recv() {
            self.batcher.hand_off(batch);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::sync::Notify;

    use super::*;

    type TestBatcher = Batcher<u32, u32, String>;

    /// A fetch that records each batch's keys and doubles them.
    fn doubling(
        batches: &Mutex<Vec<Vec<u32>>>,
    ) -> impl Fn(Vec<u32>) -> std::future::Ready<Result<Vec<u32>, String>> {
        move |keys: Vec<u32>| {
            batches.lock().unwrap().push(keys.clone());
            std::future::ready(Ok(keys.iter().map(|k| k * 2).collect()))
        }
    }

    #[test]
    fn an_unshared_error_is_itself_and_a_shared_one_is_its_source() {
        let only = Arc::new(std::io::Error::other("gone"));
        assert!(unshare(only).downcast_ref::<std::io::Error>().is_some());
        let error = Arc::new(std::io::Error::other("gone"));
        let shared = unshare(Arc::clone(&error));
        let wrapper = shared
            .downcast_ref::<Shared<std::io::Error>>()
            .expect("a wrapper while another caller holds the error");
        let source = std::error::Error::source(wrapper).unwrap();
        assert_eq!(source.to_string(), "gone");
        assert_eq!(wrapper.to_string(), "a grouped lookup failed");
    }

    #[tokio::test]
    async fn a_single_lookup_goes_straight_through() {
        let batcher = TestBatcher::new();
        let batches = Mutex::new(Vec::new());
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        for key in [21, 5] {
            // Answered in its first poll: it neither waits nor yields.
            let lookup = std::pin::pin!(batcher.run(key, doubling(&batches)));
            assert_eq!(lookup.poll(&mut cx), std::task::Poll::Ready(Ok(key * 2)));
        }
        assert_eq!(*batches.lock().unwrap(), [vec![21], vec![5]]);
        assert!(!batcher.lock().leading);
    }

    /// Lookups that are ready at the same moment (here: joined in one
    /// task) are each a batch of their own while lookups come alone. Once a
    /// batch carried several, a new lead yields once and takes those that
    /// queued meanwhile; a batch of one turns that off again.
    #[tokio::test]
    async fn after_a_shared_batch_lookups_ready_together_go_in_one() {
        let batcher = TestBatcher::new();
        let batches = Mutex::new(Vec::new());
        let run = |key| batcher.run(key, doubling(&batches));
        assert_eq!(tokio::join!(run(1), run(2)), (Ok(2), Ok(4)));
        assert_eq!(*batches.lock().unwrap(), [vec![1], vec![2]]);
        assert!(!batcher.lock().shared);

        batcher.lock().shared = true;
        assert_eq!(tokio::join!(run(3), run(4), run(5)), (Ok(6), Ok(8), Ok(10)));
        assert_eq!(batches.lock().unwrap()[2..], [vec![3, 4, 5]]);
        assert!(batcher.lock().shared);

        assert_eq!(run(6).await, Ok(12));
        assert!(!batcher.lock().shared, "a batch of one stops the gathering");
        assert!(!batcher.lock().leading);
    }

    /// A fetch that holds the first batch until `release` is notified.
    async fn gated(
        keys: Vec<u32>,
        batches: &Mutex<Vec<Vec<u32>>>,
        started: &Notify,
        release: &Notify,
        fail: bool,
    ) -> Result<Vec<u32>, String> {
        let first = {
            let mut b = batches.lock().unwrap();
            b.push(keys.clone());
            b.len() == 1
        };
        if first {
            started.notify_one();
            release.notified().await;
        }
        if fail {
            return Err(format!("batch of {}", keys.len()));
        }
        Ok(keys.iter().map(|k| k * 2).collect())
    }

    #[tokio::test]
    async fn lookups_arriving_during_a_batch_go_together() {
        let batcher = TestBatcher::new();
        let batches = Mutex::new(Vec::new());
        let (started, release) = (Notify::new(), Notify::new());
        let fetch = |keys| gated(keys, &batches, &started, &release, false);
        let first = batcher.run(1, fetch);
        let others = async {
            started.notified().await;
            // Three lookups queue while the first batch is in flight…
            let queued = futures_join3(
                batcher.run(2, fetch),
                batcher.run(3, fetch),
                batcher.run(2, fetch),
                || release.notify_one(),
            );
            queued.await
        };
        let (a, (b, c, d)) = tokio::join!(first, others);
        assert_eq!((a, b, c, d), (Ok(2), Ok(4), Ok(6), Ok(4)));
        // …and go out as one batch after it.
        assert_eq!(*batches.lock().unwrap(), [vec![1], vec![2, 3, 2]]);
        assert!(!batcher.lock().leading);
    }

    /// Polls three lookups until all three are queued, calls `then`, and
    /// waits for all three.
    async fn futures_join3<A, B, C>(
        a: A,
        b: B,
        c: C,
        then: impl FnOnce(),
    ) -> (A::Output, B::Output, C::Output)
    where
        A: Future,
        B: Future,
        C: Future,
    {
        let mut a = std::pin::pin!(a);
        let mut b = std::pin::pin!(b);
        let mut c = std::pin::pin!(c);
        // One poll each queues them (the batch in flight holds the lead).
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        assert!(a.as_mut().poll(&mut cx).is_pending());
        assert!(b.as_mut().poll(&mut cx).is_pending());
        assert!(c.as_mut().poll(&mut cx).is_pending());
        then();
        tokio::join!(a, b, c)
    }

    #[tokio::test]
    async fn an_error_reaches_every_lookup_of_its_batch() {
        let batcher = TestBatcher::new();
        let batches = Mutex::new(Vec::new());
        let (started, release) = (Notify::new(), Notify::new());
        let fetch = |keys| gated(keys, &batches, &started, &release, true);
        let first = batcher.run(1, fetch);
        let others = async {
            started.notified().await;
            futures_join3(
                batcher.run(2, fetch),
                batcher.run(3, fetch),
                batcher.run(4, fetch),
                || release.notify_one(),
            )
            .await
        };
        let (a, (b, c, d)) = tokio::join!(first, others);
        assert_eq!(a.unwrap_err().as_str(), "batch of 1");
        for answer in [b, c, d] {
            assert_eq!(answer.unwrap_err().as_str(), "batch of 3");
        }
    }

    /// Polls a new leader (which first yields once) until its fetch has
    /// started and holds the first batch.
    fn poll_until_fetching<F: Future>(
        mut leader: std::pin::Pin<&mut F>,
        cx: &mut std::task::Context<'_>,
        batches: &Mutex<Vec<Vec<u32>>>,
    ) {
        for _ in 0..10 {
            assert!(leader.as_mut().poll(cx).is_pending());
            if !batches.lock().unwrap().is_empty() {
                return;
            }
        }
        panic!("the leader never started its fetch");
    }

    #[tokio::test]
    async fn a_cancelled_leader_hands_its_batch_on() {
        let batcher = TestBatcher::new();
        let calls = AtomicUsize::new(0);
        let (started, release) = (Notify::new(), Notify::new());
        let batches = Mutex::new(Vec::new());
        let gate = |keys| gated(keys, &batches, &started, &release, false);
        let fetch = |keys: Vec<u32>| {
            calls.fetch_add(1, Ordering::SeqCst);
            gate(keys)
        };
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        // The leader starts its batch and is then dropped (cancelled).
        let mut leader = Box::pin(batcher.run(1, fetch));
        poll_until_fetching(leader.as_mut(), &mut cx, &batches);
        let mut waiter = Box::pin(batcher.run(2, fetch));
        assert!(waiter.as_mut().poll(&mut cx).is_pending());
        drop(leader);
        // The waiter now leads a batch of its own lookup and is answered.
        assert_eq!(waiter.await, Ok(4));
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        assert!(!batcher.lock().leading);
        // And the batcher still works.
        assert_eq!(batcher.run(3, fetch).await, Ok(6));
    }

    #[tokio::test]
    async fn a_cancelled_waiter_is_skipped() {
        let batcher = TestBatcher::new();
        let batches = Mutex::new(Vec::new());
        let (started, release) = (Notify::new(), Notify::new());
        let fetch = |keys| gated(keys, &batches, &started, &release, false);
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        let mut leader = Box::pin(batcher.run(1, fetch));
        poll_until_fetching(leader.as_mut(), &mut cx, &batches);
        let mut gone = Box::pin(batcher.run(2, fetch));
        assert!(gone.as_mut().poll(&mut cx).is_pending());
        let mut kept = Box::pin(batcher.run(3, fetch));
        assert!(kept.as_mut().poll(&mut cx).is_pending());
        drop(gone);
        release.notify_one();
        assert_eq!(leader.await, Ok(2));
        assert_eq!(kept.await, Ok(6));
        assert_eq!(*batches.lock().unwrap(), [vec![1], vec![3]]);
        assert!(!batcher.lock().leading);
    }
}
