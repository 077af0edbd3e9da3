//! Background prefetch: bring tensors up into a tier on a thread of its own while the caller
//! computes. Each call gets one thread (file reads block; compute threads stay free).

use super::{Reason, Store};
use crate::{CoreError, Result};
use parking_lot::{Condvar, Mutex};
use std::sync::Arc;
use std::time::Duration;

/// A prefetch in flight: `wait` for it, or ask whether it is `done`.
#[derive(Clone)]
pub struct Prefetch {
    slot: Arc<(Mutex<Option<Result<usize, String>>>, Condvar)>,
    error_kind: Arc<Mutex<Option<CoreError>>>,
}

impl Prefetch {
    pub fn done(&self) -> bool {
        self.slot.0.lock().is_some()
    }

    /// Wait up to `timeout` (forever when `None`); `Ok(Some(n))`: n tensors moved;
    /// `Ok(None)`: timed out; `Err`: the first error the prefetch met.
    pub fn wait(&self, timeout: Option<Duration>) -> Result<Option<usize>> {
        let (m, cv) = &*self.slot;
        let mut g = m.lock();
        let deadline = timeout.map(|t| std::time::Instant::now() + t);
        while g.is_none() {
            match deadline {
                None => cv.wait(&mut g),
                Some(d) => {
                    if cv.wait_until(&mut g, d).timed_out() && g.is_none() {
                        return Ok(None);
                    }
                }
            }
        }
        match g.as_ref().expect("set") {
            Ok(n) => Ok(Some(*n)),
            Err(_) => Err(self
                .error_kind
                .lock()
                .take()
                .unwrap_or_else(|| CoreError::Internal("prefetch failed".into()))),
        }
    }
}

impl Store {
    /// Bring `names` up into `tier`, in order, on a background thread. Tensors already in
    /// `tier` or a faster one are left where they are; when all are, the prefetch is done at
    /// once, without a thread.
    pub fn prefetch(&self, names: Vec<String>, tier: usize) -> Result<Prefetch> {
        {
            let st = self.lock();
            Self::check_open(&st)?;
            if tier >= st.tiers.len() {
                return Err(CoreError::Value(format!("no tier number {tier}")));
            }
            let mut all_there = true;
            for n in &names {
                match st.entries.get(n) {
                    None => return Err(Self::not_found(&st, n)),
                    Some(e) => all_there &= e.tier <= tier,
                }
            }
            if all_there {
                // Nothing to move (a resident model's per-layer prefetch): done, no thread.
                return Ok(Prefetch {
                    slot: Arc::new((Mutex::new(Some(Ok(0))), Condvar::new())),
                    error_kind: Arc::new(Mutex::new(None)),
                });
            }
        }
        let p = Prefetch {
            slot: Arc::new((Mutex::new(None), Condvar::new())),
            error_kind: Arc::new(Mutex::new(None)),
        };
        let store = self.clone();
        let p2 = p.clone();
        let spawn = std::thread::Builder::new().name("tierflow-prefetch".into()).spawn(move || {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| -> Result<usize> {
                let mut moved = 0;
                for n in &names {
                    let cur = match store.meta(n) {
                        Ok(m) => m.tier_index,
                        Err(CoreError::NotFound(_)) => continue, // deleted meanwhile
                        Err(e) => return Err(e),
                    };
                    if cur > tier {
                        store.move_inner(n, tier, Reason::Prefetch)?;
                        moved += 1;
                    }
                }
                Ok(moved)
            }));
            let r = match r {
                Ok(r) => r,
                Err(_) => Err(CoreError::Internal("prefetch thread panicked".into())),
            };
            let (m, cv) = &*p2.slot;
            let mut g = m.lock();
            *g = Some(match r {
                Ok(n) => Ok(n),
                Err(e) => {
                    let s = e.to_string();
                    *p2.error_kind.lock() = Some(e);
                    Err(s)
                }
            });
            cv.notify_all();
        });
        spawn.map_err(|e| CoreError::Internal(format!("cannot start a prefetch thread: {e}")))?;
        Ok(p)
    }
}
