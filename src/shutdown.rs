//! Shutdown as one small explicit type: triggered once, observed anywhere.

use std::sync::Arc;
use tokio::sync::watch;

#[derive(Clone)]
pub struct Shutdown {
    tx: Arc<watch::Sender<bool>>,
}

impl Shutdown {
    pub fn new() -> Self {
        Shutdown {
            tx: Arc::new(watch::channel(false).0),
        }
    }

    pub fn trigger(&self) {
        self.tx.send_replace(true);
    }

    pub fn is_triggered(&self) -> bool {
        *self.tx.borrow()
    }

    /// Resolves once [`trigger`](Self::trigger) has been called.
    pub async fn wait(&self) {
        let mut rx = self.tx.subscribe();
        // An error means the sender is gone, which can't happen while we
        // hold it; either way there is nothing left to wait for.
        let _ = rx.wait_for(|v| *v).await;
    }
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}
