//! Checkout for one client: a permit, then an idle connection or a new one. A new one is
//! opened in a task of its own holding the permit, so a client that leaves mid-open costs
//! nothing: the open finishes and the connection joins the idle list (or, if it fails, the
//! permit is freed). A connector that panics frees its slot too.

use std::sync::Arc;

use tokio::sync::{oneshot, OwnedSemaphorePermit};
use tokio::time::Instant;

use super::pool_core::{Core, Entry, Taken, WaitFailed};
use super::{Checkout, Conn, Connector, PoolError};

type Delivery<C> = Result<Checkout<<C as Connector>::Conn>, <C as Connector>::Error>;

/// A connection being opened: counted as opening and holding a permit until it becomes a
/// checkout or is dropped (failure, panic).
pub(crate) struct Opening<T: Conn> {
    core: Arc<Core<T>>,
    permit: Option<OwnedSemaphorePermit>,
}

impl<T: Conn> Opening<T> {
    fn into_checkout(mut self, conn: T) -> Option<Checkout<T>> {
        let permit = self.permit.take()?;
        self.core.opened(true);
        let entry = Box::new(Entry {
            conn,
            created: Instant::now(),
        });
        Some(Checkout::new(self.core.clone(), entry, permit, false))
    }
}

impl<T: Conn> Drop for Opening<T> {
    fn drop(&mut self) {
        if let Some(permit) = self.permit.take() {
            self.core.opened(false);
            drop(permit);
        }
    }
}

/// A connection of `core` for one client.
pub(super) async fn checkout<C: Connector>(
    core: Arc<Core<C::Conn>>,
    connector: &C,
) -> Result<Checkout<C::Conn>, PoolError<C::Error>> {
    let permit = match core.permit().await {
        Ok(permit) => permit,
        Err(WaitFailed::Closed) => return Err(PoolError::Closed),
        Err(WaitFailed::TimedOut(waited)) => {
            return Err(PoolError::Timeout {
                user: core.key.user.clone(),
                database: core.key.database.clone(),
                waited,
                size: core.settings.size,
            })
        }
    };
    match core.take(Instant::now()) {
        Taken::Idle(entry) => {
            core.series.reuses.inc();
            Ok(Checkout::new(core, entry, permit, true))
        }
        Taken::Open => open(core, connector.clone(), permit).await,
    }
}

async fn open<C: Connector>(
    core: Arc<Core<C::Conn>>,
    connector: C,
    permit: OwnedSemaphorePermit,
) -> Result<Checkout<C::Conn>, PoolError<C::Error>> {
    let (tx, rx) = oneshot::channel::<Delivery<C>>();
    let opening = Opening {
        core,
        permit: Some(permit),
    };
    tokio::spawn(async move {
        let result = connector.open(&opening.core.key).await;
        deliver::<C>(opening, result, tx);
    });
    match rx.await {
        Ok(Ok(checkout)) => Ok(checkout),
        Ok(Err(e)) => Err(PoolError::Open(e)),
        Err(_) => Err(PoolError::Closed),
    }
}

fn deliver<C: Connector>(
    opening: Opening<C::Conn>,
    result: Result<C::Conn, C::Error>,
    tx: oneshot::Sender<Delivery<C>>,
) {
    let series = opening.core.series.clone();
    match result {
        Ok(conn) => {
            series.logins.inc();
            let Some(checkout) = opening.into_checkout(conn) else {
                return;
            };
            if let Err(Ok(checkout)) = tx.send(Ok(checkout)) {
                tracing::debug!("client left while its server connection opened; kept idle");
                checkout.park();
            }
        }
        Err(e) => {
            series.login_failures.inc();
            drop(opening);
            if let Err(Err(e)) = tx.send(Err(e)) {
                tracing::debug!(error = %e, "opening a server connection failed after its client left");
            }
        }
    }
}
