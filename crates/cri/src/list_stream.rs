//! CRI list streaming (KEP-5825): the Stream* calls return the same items
//! as their List counterparts, split over several messages so that a node
//! with many pods never hits gRPC's 16 MiB message limit. Each item is sent
//! exactly once; the stream ends after the last message (none for an empty
//! list, as every message must carry at least one item).

use crate::daemon::Daemon;
use std::pin::Pin;
use std::sync::Arc;
use tonic::Status;

/// A server stream of responses.
pub type ResponseStream<R> =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<R, Status>> + Send + 'static>>;

/// The encoded size one message aims to stay under: a quarter of gRPC's
/// default limit leaves room for whatever an item holds.
pub const CHUNK_BYTES: usize = 4 << 20;
/// And at most this many items per message.
pub const CHUNK_ITEMS: usize = 1000;

/// Splits `items` into runs of at most [`CHUNK_ITEMS`] whose encoded size
/// stays under [`CHUNK_BYTES`] (an item larger than that travels alone).
pub fn chunks<T: prost::Message>(items: Vec<T>) -> Vec<Vec<T>> {
    let mut out = Vec::new();
    let mut cur = Vec::new();
    let mut bytes = 0;
    for item in items {
        // The item's field tag and length prefix cost a few bytes more.
        let n = item.encoded_len() + 10;
        if !cur.is_empty() && (bytes + n > CHUNK_BYTES || cur.len() >= CHUNK_ITEMS) {
            out.push(std::mem::take(&mut cur));
            bytes = 0;
        }
        bytes += n;
        cur.push(item);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// A stream fed from a blocking thread: `produce` hands each message to
/// its `send` (false once the client is gone: stop) through a channel that
/// holds two, so however long the list, only a page of it is in memory.
pub fn from_blocking<R, F>(d: Arc<Daemon>, produce: F) -> ResponseStream<R>
where
    R: Send + 'static,
    F: FnOnce(&Daemon, &mut dyn FnMut(R) -> bool) -> crate::error::Result<()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    tokio::task::spawn_blocking(move || {
        let r = produce(&d, &mut |m| tx.blocking_send(Ok(m)).is_ok());
        if let Err(e) = r {
            tracing::warn!("list stream: {e}");
            let _ = tx.blocking_send(Err(Status::from(e)));
        }
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

/// The stream of `wrap(chunk)` responses for `items`.
pub fn stream<T, R>(items: Vec<T>, wrap: fn(Vec<T>) -> R) -> ResponseStream<R>
where
    T: prost::Message + Send + 'static,
    R: Send + 'static,
{
    let msgs: Vec<Result<R, Status>> = chunks(items).into_iter().map(|c| Ok(wrap(c))).collect();
    Box::pin(tokio_stream::iter(msgs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_cri_api::v1 as cri;
    use prost::Message;

    fn container(i: usize, label_bytes: usize) -> cri::Container {
        cri::Container {
            id: format!("{i:064x}"),
            labels: [("l".to_string(), "x".repeat(label_bytes))].into(),
            ..Default::default()
        }
    }

    #[test]
    fn every_item_once_in_order_and_no_message_over_the_limit() {
        // 20,000 containers with 2 KiB of labels each: 40 MiB as one list.
        let items: Vec<_> = (0..20_000).map(|i| container(i, 2048)).collect();
        let whole = cri::ListContainersResponse {
            containers: items.clone(),
        }
        .encoded_len();
        assert!(whole > 16 << 20, "{whole}");
        let parts = chunks(items);
        assert!(parts.len() > 1);
        let mut next = 0;
        for p in &parts {
            assert!(!p.is_empty());
            let len = cri::StreamContainersResponse {
                containers: p.clone(),
            }
            .encoded_len();
            assert!(len <= CHUNK_BYTES + 64, "{len}");
            for c in p {
                assert_eq!(c.id, format!("{next:064x}"));
                next += 1;
            }
        }
        assert_eq!(next, 20_000);
    }

    #[test]
    fn small_items_are_capped_by_count_and_an_empty_list_sends_nothing() {
        let parts = chunks((0..2500).map(|i| container(i, 0)).collect());
        assert_eq!(
            parts.iter().map(Vec::len).collect::<Vec<_>>(),
            [1000, 1000, 500]
        );
        assert!(chunks(Vec::<cri::Container>::new()).is_empty());
        // One huge item still goes, alone.
        let parts = chunks(vec![
            container(0, 10),
            container(1, 5 << 20),
            container(2, 10),
        ]);
        assert_eq!(parts.iter().map(Vec::len).collect::<Vec<_>>(), [1, 1, 1]);
    }
}
