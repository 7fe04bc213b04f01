//! Responses sent while they are produced, so the memory a request holds stays bounded
//! however large its result.
//!
//! A handler writes the `data` of its reply into an [`Output`]. The first [`FIRST_PART`]
//! bytes are kept back: a reply that ends within them (every small result, and every error
//! found early) is sent whole, with its real status and a `Content-Length`, exactly as a
//! buffered reply would be. A longer one commits to `200` and leaves in pieces of about
//! [`CHUNK`] bytes as rows arrive. The writer waits while the client has not taken the last
//! piece, so a slow reader slows the database reads instead of filling memory.
//!
//! The envelope's keys are written in the order serde_json sorts them (`data`, `message`,
//! `status`), so a reply has the same bytes streamed or not, and `"status":"success"` comes
//! last, only once everything worked.
//!
//! A streamed reply that fails after its start cannot change its status any more, so it is
//! not finished: sluice appends a line with the error envelope and cuts the response
//! without its final chunk. The body is not valid JSON and HTTP clients report an
//! incomplete response, so the failure cannot pass for success; the last line says why.
//!
//! The work runs inside the response (first in the handler, then in the body hyper polls),
//! not in a task of its own: when the client goes away, or its connection is cut for not
//! reading, dropping the response drops the work and the database connection it holds.

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes};
use axum::http::header::CONTENT_TYPE;
use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};
use http_body::Frame;
use serde::Serialize;
use tokio::sync::mpsc;

use super::envelope::{document, ApiError};

/// Bytes kept back before a reply starts: replies up to this size get their real status.
pub const FIRST_PART: usize = 256 * 1024;
/// Bytes per piece once a reply is streaming.
pub const CHUNK: usize = 64 * 1024;

/// The work that writes a reply's `data`, borrowing the [`Output`] it writes to.
pub type Writing<'a> = Pin<Box<dyn Future<Output = Result<(), ApiError>> + Send + 'a>>;

type Work = Pin<Box<dyn Future<Output = ()> + Send>>;

/// What the work hands the response, in order.
enum Piece {
    /// The whole reply, when it ended within the first part.
    Whole(Response),
    /// The next bytes of a streaming reply.
    Chunk(Bytes),
    /// The streaming reply is complete.
    End,
}

/// Where a handler writes its reply's `data` (one JSON value).
pub struct Output {
    buf: Vec<u8>,
    tx: mpsc::Sender<Piece>,
    streaming: bool,
}

impl Output {
    /// Appends raw JSON text.
    pub async fn write(&mut self, text: &[u8]) {
        self.buf.extend_from_slice(text);
        self.ship_when_full().await;
    }

    /// Appends `value` as JSON.
    pub async fn json(&mut self, value: &impl Serialize) {
        // Serializing into a Vec fails only for maps with non-string keys, which sluice
        // does not build.
        let _ = serde_json::to_writer(&mut self.buf, value);
        self.ship_when_full().await;
    }

    async fn ship_when_full(&mut self) {
        let limit = if self.streaming { CHUNK } else { FIRST_PART };
        if self.buf.len() >= limit {
            self.streaming = true;
            let piece = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK + CHUNK / 4));
            self.send(Piece::Chunk(piece.into())).await;
        }
    }

    async fn send(&self, piece: Piece) {
        // The receiver lives in the same response as this work and is dropped with it, so
        // the channel is open whenever this runs.
        let _ = self.tx.send(piece).await;
    }

    /// Ends the reply: the success envelope around what was written, or the error.
    async fn finish(mut self, message: &str, result: Result<(), ApiError>) {
        match result {
            Ok(()) => {
                self.buf.extend_from_slice(b",\"message\":");
                self.json(&message).await;
                self.buf.extend_from_slice(b",\"status\":\"success\"}");
                let text = std::mem::take(&mut self.buf);
                if self.streaming {
                    self.send(Piece::Chunk(text.into())).await;
                    self.send(Piece::End).await;
                } else {
                    let json = HeaderValue::from_static("application/json");
                    self.send(Piece::Whole(([(CONTENT_TYPE, json)], text).into_response()))
                        .await;
                }
            }
            Err(err) if self.streaming => {
                // Counted as a 200 by the request metrics: the log is where it shows.
                tracing::info!(
                    status = err.status.word(),
                    message = %err.message,
                    "Data API reply failed after it had started; cut short"
                );
                self.buf.push(b'\n');
                let envelope = document(err.status, &err.message, err.data);
                let _ = serde_json::to_writer(&mut self.buf, &envelope);
                self.buf.push(b'\n');
                let text = std::mem::take(&mut self.buf);
                // No `End`: the body cuts the response after this line.
                self.send(Piece::Chunk(text.into())).await;
            }
            Err(err) => self.send(Piece::Whole(err.into_response())).await,
        }
    }
}

/// Runs `work`, which writes the `data` of a reply whose envelope says `message` on
/// success, and answers with what it writes: whole when it fits in [`FIRST_PART`],
/// streaming otherwise.
pub async fn respond<W>(message: &'static str, work: W) -> Response
where
    W: for<'a> FnOnce(&'a mut Output) -> Writing<'a> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(1);
    let work: Work = Box::pin(async move {
        let mut out = Output {
            buf: b"{\"data\":".to_vec(),
            tx,
            streaming: false,
        };
        let result = work(&mut out).await;
        out.finish(message, result).await;
    });
    let mut reply = Streamed {
        rx,
        work: Some(work),
        first: None,
        cut: false,
    };
    match poll_fn(|cx| reply.poll_piece(cx)).await {
        Some(Piece::Whole(response)) => response,
        first => {
            reply.first = first;
            let json = HeaderValue::from_static("application/json");
            ([(CONTENT_TYPE, json)], Body::new(reply)).into_response()
        }
    }
}

/// The body of a streaming reply; it drives the work that writes it.
struct Streamed {
    rx: mpsc::Receiver<Piece>,
    work: Option<Work>,
    /// The piece that decided the reply would stream, still to be sent.
    first: Option<Piece>,
    /// The reply failed; its error line has been handed to hyper.
    cut: bool,
}

/// A streaming reply failed after it had started.
#[derive(Debug, thiserror::Error)]
#[error("the response failed after it had started; its last line says why")]
pub struct Cut;

impl Streamed {
    /// The next piece: lets the work run until it hands one over; `None` once the work is
    /// done and everything was taken.
    fn poll_piece(&mut self, cx: &mut Context<'_>) -> Poll<Option<Piece>> {
        if let Some(work) = &mut self.work {
            if work.as_mut().poll(cx).is_ready() {
                self.work = None;
            }
        }
        self.rx.poll_recv(cx)
    }
}

impl http_body::Body for Streamed {
    type Data = Bytes;
    type Error = Cut;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Cut>>> {
        let this = self.get_mut();
        if this.cut {
            return Poll::Ready(Some(Err(Cut)));
        }
        let piece = match this.first.take() {
            Some(piece) => Some(piece),
            None => std::task::ready!(this.poll_piece(cx)),
        };
        match piece {
            Some(Piece::Chunk(bytes)) => Poll::Ready(Some(Ok(Frame::data(bytes)))),
            Some(Piece::End) => Poll::Ready(None),
            // The work ended without `End`: it failed, and its error line went out last.
            // hyper drops what it has not written when a body fails, so give it one turn
            // to flush that line before the cut.
            Some(Piece::Whole(_)) | None => {
                this.cut = true;
                cx.waker().wake_by_ref();
                Poll::Pending
            }
        }
    }
}
