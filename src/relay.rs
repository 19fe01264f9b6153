//! After login: splice both directions with no per-message parsing until either side
//! closes (half-close is propagated), or the proxy cuts the session at the end of a drain.

use tokio::io::{copy_bidirectional_with_sizes, AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;

/// Per-direction copy buffer: one TLS record's worth of plaintext.
const BUF: usize = 16 * 1024;

/// Relays until both directions are done, an error occurs, or `cut` fires.
pub async fn splice<C, U>(client: &mut C, upstream: &mut U, cut: CancellationToken)
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    tokio::select! {
        result = copy_bidirectional_with_sizes(client, upstream, BUF, BUF) => match result {
            Ok((to_server, to_client)) => {
                tracing::debug!(to_server, to_client, "session closed");
            }
            Err(e) => tracing::debug!(error = %e, "session ended with an I/O error"),
        },
        () = cut.cancelled() => tracing::info!("session cut at the end of the shutdown drain"),
    }
}
