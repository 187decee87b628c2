//! `max_body_bytes`: a request body that grows past the token's limit is
//! cut while it streams, without buffering it.
//!
//! A `Content-Length` over the limit is refused before anything is sent
//! (`http.rs`). A body without one (chunked upload) passes through
//! [`LimitedBody`], which fails as soon as the count passes the limit; the
//! upstream request then fails, and the shared flag tells the request path
//! to answer `payload_too_large` (413) instead of an upstream error.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use crate::proxy::BoxError;

#[derive(Debug, thiserror::Error)]
#[error("request body larger than the token's max_body_bytes")]
pub struct BodyTooLarge;

pin_project_lite::pin_project! {
    pub struct LimitedBody<B> {
        #[pin]
        inner: B,
        seen: u64,
        limit: u64,
        exceeded: Arc<AtomicBool>,
    }
}

impl<B> LimitedBody<B> {
    /// Wraps `inner`; `exceeded` is set when the limit is passed.
    pub fn new(inner: B, limit: u64, exceeded: Arc<AtomicBool>) -> Self {
        LimitedBody {
            inner,
            seen: 0,
            limit,
            exceeded,
        }
    }
}

impl<B> Body for LimitedBody<B>
where
    B: Body<Data = Bytes, Error = BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                *this.seen = this.seen.saturating_add(data.len() as u64);
                if *this.seen > *this.limit {
                    this.exceeded.store(true, Ordering::Release);
                    return Poll::Ready(Some(Err(Box::new(BodyTooLarge))));
                }
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use http_body_util::{BodyExt, StreamBody};

    fn body(chunks: &[&'static [u8]]) -> impl Body<Data = Bytes, Error = BoxError> {
        let frames: Vec<Result<Frame<Bytes>, BoxError>> = chunks
            .iter()
            .map(|c| Ok(Frame::data(Bytes::from_static(c))))
            .collect();
        StreamBody::new(futures_util::stream::iter(frames))
    }

    #[tokio::test]
    async fn passes_up_to_the_limit_and_cuts_after() {
        let flag = Arc::new(AtomicBool::new(false));
        let ok = LimitedBody::new(body(&[b"12345", b"67890"]), 10, flag.clone());
        assert_eq!(ok.collect().await.unwrap().to_bytes().len(), 10);
        assert!(!flag.load(Ordering::Acquire));

        let mut big = LimitedBody::new(body(&[b"12345", b"67890", b"x"]), 10, flag.clone());
        assert!(big.frame().await.unwrap().is_ok());
        assert!(big.frame().await.unwrap().is_ok());
        assert!(big.frame().await.unwrap().is_err());
        assert!(flag.load(Ordering::Acquire));
    }
}
