//! The stream multiplexer under both SPDY and WebSocket connections.
//!
//! One mutex holds every stream's state: a bounded inbound buffer (what the
//! peer sent, waiting for the application) and a bounded outbound buffer
//! (what the application wrote, waiting for the writer task). The socket
//! reader task of a protocol pushes into the inbound buffers and waits
//! (without reading the socket) while a stream is over its cap; the writer
//! task turns pending outbound work into frames, round-robin over streams,
//! so one busy stream cannot starve the others. Memory is therefore bounded
//! by (streams x caps) plus one frame.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::Notify;

use crate::spdy::zlib::Headers;

#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Bytes buffered per stream in each direction.
    pub stream_buf: usize,
    /// Largest data chunk put in one frame.
    pub chunk: usize,
    /// Control frames the reader may queue before it stops reading.
    pub ctrl_cap: usize,
    pub max_streams: usize,
    pub idle_timeout: Duration,
}

#[derive(Default)]
pub(crate) struct Chan {
    pub headers: Headers,
    pub in_buf: VecDeque<Bytes>,
    pub in_len: usize,
    pub in_eof: bool,
    pub in_reset: Option<u32>,
    pub reader_waker: Option<Waker>,
    pub reader_open: bool,
    pub writer_open: bool,
    pub out_buf: VecDeque<Bytes>,
    pub out_len: usize,
    pub out_fin: bool,
    pub out_fin_sent: bool,
    pub out_reset: bool,
    pub writer_waker: Option<Waker>,
    /// SPDY flow control (ignored by WebSocket).
    pub send_window: i64,
    pub recv_window: i64,
    pub recv_unacked: u32,
    pub wu_pending: bool,
    pub reply_pending: bool,
    pub syn_pending: Option<Headers>,
    pub rst_pending: Option<u32>,
    pub replied: bool,
    pub dirty: bool,
}

impl Chan {
    fn closed(&self) -> bool {
        (self.in_eof || self.in_reset.is_some())
            && (self.out_fin_sent || self.out_reset)
            && !self.reader_open
            && !self.writer_open
            && self.rst_pending.is_none()
            && !self.reply_pending
    }
}

#[derive(Default)]
pub(crate) struct State {
    pub chans: HashMap<u32, Chan>,
    pub dirty: VecDeque<u32>,
    pub ctrl: VecDeque<Bytes>,
    /// The connection is gone: reads see EOF, writes fail.
    pub dead: bool,
    /// The local side is done: drain, send the closing frame, shut down.
    pub finishing: bool,
    /// Stop at once after writing the control queue (protocol error).
    pub abort: bool,
    pub last_activity: Option<Instant>,
    pub accept_q: VecDeque<u32>,
    pub accept_waker: Option<Waker>,
    /// SPDY: the peer takes part in flow control (it sent SETTINGS or WINDOW_UPDATE).
    pub flow: bool,
    pub conn_send_window: i64,
    pub conn_recv_unacked: u32,
    pub conn_wu_pending: bool,
    pub initial_send_window: i64,
    pub next_local_id: u32,
    /// The newest stream the peer opened (GOAWAY's last-good id).
    pub last_remote_id: u32,
    pub goaway_received: bool,
    pub error: Option<String>,
}

impl State {
    pub fn mark_dirty(&mut self, id: u32) {
        if let Some(c) = self.chans.get_mut(&id) {
            if !c.dirty {
                c.dirty = true;
                self.dirty.push_back(id);
            }
        }
    }

    pub fn maybe_remove(&mut self, id: u32) {
        if self.chans.get(&id).is_some_and(|c| c.closed()) {
            self.chans.remove(&id);
        }
    }

    /// Marks the connection dead and wakes everyone.
    pub fn kill(&mut self, why: Option<String>) {
        self.dead = true;
        if self.error.is_none() {
            self.error = why;
        }
        for c in self.chans.values_mut() {
            if let Some(w) = c.reader_waker.take() {
                w.wake();
            }
            if let Some(w) = c.writer_waker.take() {
                w.wake();
            }
        }
        if let Some(w) = self.accept_waker.take() {
            w.wake();
        }
    }
}

pub(crate) struct Mux {
    st: Mutex<State>,
    pub limits: Limits,
    pub wake_writer: Notify,
    /// The socket reader waits here for buffer space or control queue room.
    pub wake_reader: Notify,
    /// Notified (to all waiters) whenever the writer made progress or state changed.
    pub progress: Notify,
}

impl Mux {
    pub fn new(limits: Limits) -> Arc<Mux> {
        let st = State {
            last_activity: Some(Instant::now()),
            conn_send_window: 65536,
            initial_send_window: 65536,
            ..Default::default()
        };
        Arc::new(Mux {
            st: Mutex::new(st),
            limits,
            wake_writer: Notify::new(),
            wake_reader: Notify::new(),
            progress: Notify::new(),
        })
    }

    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.st.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn kick(&self) {
        self.wake_writer.notify_one();
        self.progress.notify_waiters();
    }

    pub fn touch(&self) {
        self.lock().last_activity = Some(Instant::now());
    }

    /// Adds a channel known to both sides (WebSocket channels, accepted or
    /// opened SPDY streams). Returns a handle with both halves open.
    pub fn insert(self: &Arc<Self>, id: u32, chan: Chan) -> MuxStream {
        self.insert_chan(id, chan);
        MuxStream {
            mux: self.clone(),
            id,
            read: true,
            write: true,
        }
    }

    /// Adds a channel whose handle is created later (by `accept`).
    pub fn insert_chan(&self, id: u32, chan: Chan) {
        let mut st = self.lock();
        Self::add(&mut st, id, chan, self.limits.stream_buf);
    }

    pub fn insert_locked(self: &Arc<Self>, st: &mut State, id: u32, chan: Chan) -> MuxStream {
        Self::add(st, id, chan, self.limits.stream_buf);
        MuxStream {
            mux: self.clone(),
            id,
            read: true,
            write: true,
        }
    }

    fn add(st: &mut State, id: u32, mut chan: Chan, stream_buf: usize) {
        chan.reader_open = true;
        chan.writer_open = true;
        if chan.recv_window == 0 {
            chan.recv_window = stream_buf as i64;
        }
        if chan.send_window == 0 {
            chan.send_window = st.initial_send_window;
        }
        st.chans.insert(id, chan);
    }

    /// Waits for the next stream the peer opened (SPDY), or None once the connection is gone.
    pub async fn accept(self: &Arc<Self>) -> Option<MuxStream> {
        std::future::poll_fn(|cx| {
            let mut st = self.lock();
            if let Some(id) = st.accept_q.pop_front() {
                return Poll::Ready(Some(MuxStream {
                    mux: self.clone(),
                    id,
                    read: true,
                    write: true,
                }));
            }
            if st.dead || st.finishing {
                return Poll::Ready(None);
            }
            st.accept_waker = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    /// Waits until `cond` holds, re-checking after every state change.
    pub async fn wait_until(&self, mut cond: impl FnMut(&State) -> bool) {
        loop {
            let n = self.progress.notified();
            tokio::pin!(n);
            n.as_mut().enable();
            if cond(&self.lock()) {
                return;
            }
            n.await;
        }
    }

    /// Asks the writer to drain, send the protocol's closing frame and shut
    /// the socket's write side.
    pub fn finish(&self) {
        self.lock().finishing = true;
        self.kick();
        if let Some(w) = self.lock().accept_waker.take() {
            w.wake();
        }
    }

    pub fn error(&self) -> Option<String> {
        self.lock().error.clone()
    }

    /// Queues data the peer sent on `id`. Returns false if the stream is unknown.
    pub fn push_data(&self, st: &mut State, id: u32, data: Bytes) -> bool {
        let Some(c) = st.chans.get_mut(&id) else {
            return false;
        };
        if c.in_eof || c.in_reset.is_some() {
            return false;
        }
        if !c.reader_open {
            // Nobody will read it: drop it, but give the window back.
            let n = data.len() as u32;
            c.recv_unacked += n;
            st.conn_recv_unacked += n;
            self.credit(st, id);
            return true;
        }
        if !data.is_empty() {
            c.in_len += data.len();
            c.in_buf.push_back(data);
            if let Some(w) = c.reader_waker.take() {
                w.wake();
            }
        }
        true
    }

    pub fn over_cap(&self, st: &State, id: u32) -> bool {
        st.chans
            .get(&id)
            .is_some_and(|c| c.reader_open && c.in_len > self.limits.stream_buf)
    }

    pub fn remote_fin(&self, st: &mut State, id: u32) {
        if let Some(c) = st.chans.get_mut(&id) {
            c.in_eof = true;
            if let Some(w) = c.reader_waker.take() {
                w.wake();
            }
        }
        st.maybe_remove(id);
    }

    pub fn remote_reset(&self, st: &mut State, id: u32, code: u32) {
        if let Some(c) = st.chans.get_mut(&id) {
            c.in_reset = Some(code);
            c.out_reset = true;
            // What arrived before the reset is still the reader's: peers
            // (containerd) reset streams as they close a session, right
            // after the last output and the exit status.
            c.out_buf.clear();
            c.out_len = 0;
            if let Some(w) = c.reader_waker.take() {
                w.wake();
            }
            if let Some(w) = c.writer_waker.take() {
                w.wake();
            }
        }
        st.maybe_remove(id);
    }

    /// Window bookkeeping after the application consumed data.
    fn credit(&self, st: &mut State, id: u32) {
        let half = (self.limits.stream_buf / 2) as u32;
        if let Some(c) = st.chans.get_mut(&id) {
            if c.recv_unacked >= half.max(1) && !c.in_eof && c.in_reset.is_none() {
                c.wu_pending = true;
                st.mark_dirty(id);
            }
        }
        if st.conn_recv_unacked >= half.max(1) {
            st.conn_wu_pending = true;
        }
    }

    /// Local reset of a stream (SPDY RST_STREAM).
    pub fn reset(&self, id: u32, code: u32) {
        let mut st = self.lock();
        if let Some(c) = st.chans.get_mut(&id) {
            if c.in_reset.is_none() {
                c.rst_pending = Some(code);
                c.in_reset = Some(code);
                c.out_reset = true;
                c.in_buf.clear();
                c.in_len = 0;
                c.out_buf.clear();
                c.out_len = 0;
            }
            st.mark_dirty(id);
        }
        drop(st);
        self.kick();
        self.wake_reader.notify_one();
    }
}

/// One stream or channel: read what the peer sent, write to the peer.
/// `shutdown` (or dropping the write half) sends a FIN.
pub struct MuxStream {
    mux: Arc<Mux>,
    id: u32,
    read: bool,
    write: bool,
}

pub struct RecvHalf(MuxStream);
pub struct SendHalf(MuxStream);

impl MuxStream {
    pub fn id(&self) -> u32 {
        self.id
    }

    pub fn headers(&self) -> Headers {
        self.mux
            .lock()
            .chans
            .get(&self.id)
            .map(|c| c.headers.clone())
            .unwrap_or_default()
    }

    pub fn header(&self, name: &str) -> Option<String> {
        crate::spdy::zlib::header(&self.headers(), name).map(str::to_string)
    }

    pub fn into_split(mut self) -> (RecvHalf, SendHalf) {
        let (r, w) = (self.read, self.write);
        self.read = false;
        self.write = false;
        let mux = self.mux.clone();
        let id = self.id;
        (
            RecvHalf(MuxStream {
                mux: mux.clone(),
                id,
                read: r,
                write: false,
            }),
            SendHalf(MuxStream {
                mux,
                id,
                read: false,
                write: w,
            }),
        )
    }

    /// Keeps only the inbound side; the outbound side ends now (a FIN).
    pub fn recv_only(self) -> RecvHalf {
        let (r, _) = self.into_split();
        r
    }

    /// Keeps only the inbound side without putting anything on the wire for
    /// the outbound one (WebSocket channels the peer never reads).
    pub fn recv_only_silent(mut self) -> RecvHalf {
        {
            let mut st = self.mux.lock();
            if let Some(c) = st.chans.get_mut(&self.id) {
                c.writer_open = false;
                c.out_fin = true;
                c.out_fin_sent = true;
            }
        }
        self.write = false;
        let (r, _) = self.into_split();
        r
    }

    /// Keeps only the outbound side; what the peer sends is discarded.
    pub fn send_only(self) -> SendHalf {
        let (_, w) = self.into_split();
        w
    }

    /// Sends RST_STREAM (SPDY) and drops both directions.
    pub fn reset(self, code: u32) {
        self.mux.reset(self.id, code);
    }

    /// Waits until everything written so far left through the socket
    /// (including the FIN after a shutdown).
    pub async fn sent(&self) {
        let id = self.id;
        self.mux
            .wait_until(|st| {
                st.dead
                    || st
                        .chans
                        .get(&id)
                        .is_none_or(|c| c.out_len == 0 && (!c.out_fin || c.out_fin_sent))
            })
            .await
    }

    /// Marks the outbound side finished (a FIN follows the buffered data).
    pub fn close_write(&mut self) {
        if !self.write {
            return;
        }
        let mut st = self.mux.lock();
        if let Some(c) = st.chans.get_mut(&self.id) {
            if !c.out_fin && !c.out_reset {
                c.out_fin = true;
            }
            st.mark_dirty(self.id);
        }
        drop(st);
        self.mux.kick();
    }

    fn release(&mut self) {
        if !self.read && !self.write {
            return;
        }
        let mut st = self.mux.lock();
        let id = self.id;
        if let Some(c) = st.chans.get_mut(&id) {
            if self.read {
                c.reader_open = false;
                // Give back the window of what will never be read.
                let n = c.in_len as u32;
                c.in_buf.clear();
                c.in_len = 0;
                c.recv_unacked += n;
                st.conn_recv_unacked += n;
                self.mux.credit(&mut st, id);
            }
            if self.write {
                let c = st.chans.get_mut(&id).unwrap();
                c.writer_open = false;
                if !c.out_fin && !c.out_reset {
                    c.out_fin = true;
                }
                st.mark_dirty(id);
            }
            st.maybe_remove(id);
        }
        drop(st);
        self.read = false;
        self.write = false;
        self.mux.kick();
        self.mux.wake_reader.notify_one();
    }

    fn poll_read_inner(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut st = self.mux.lock();
        let id = self.id;
        let dead = st.dead;
        let Some(c) = st.chans.get_mut(&id) else {
            return Poll::Ready(Ok(()));
        };
        if c.in_len > 0 {
            let mut n = 0;
            while buf.remaining() > 0 {
                let Some(front) = c.in_buf.front_mut() else {
                    break;
                };
                let k = front.len().min(buf.remaining());
                buf.put_slice(&front[..k]);
                front.advance(k);
                if front.is_empty() {
                    c.in_buf.pop_front();
                }
                n += k;
            }
            c.in_len -= n;
            c.recv_unacked += n as u32;
            st.conn_recv_unacked += n as u32;
            self.mux.credit(&mut st, id);
            drop(st);
            self.mux.kick();
            self.mux.wake_reader.notify_one();
            return Poll::Ready(Ok(()));
        }
        // A reset ends the stream like Go's spdystream does: the reader sees
        // EOF once the data before it is consumed.
        if c.in_reset.is_some() {
            return Poll::Ready(Ok(()));
        }
        if c.in_eof || dead {
            return Poll::Ready(Ok(()));
        }
        c.reader_waker = Some(cx.waker().clone());
        Poll::Pending
    }

    fn poll_write_inner(&mut self, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let cap = self.mux.limits.stream_buf;
        let mut st = self.mux.lock();
        let id = self.id;
        let dead = st.dead;
        let Some(c) = st.chans.get_mut(&id) else {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        };
        if dead || c.out_reset || c.out_fin {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "stream closed",
            )));
        }
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if c.out_len >= cap {
            c.writer_waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let n = data.len().min(cap - c.out_len);
        c.out_buf.push_back(Bytes::copy_from_slice(&data[..n]));
        c.out_len += n;
        st.mark_dirty(id);
        drop(st);
        self.mux.kick();
        Poll::Ready(Ok(n))
    }

    fn poll_flush_inner(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut st = self.mux.lock();
        let dead = st.dead;
        let Some(c) = st.chans.get_mut(&self.id) else {
            return Poll::Ready(Ok(()));
        };
        if c.out_len == 0 || c.out_reset {
            return Poll::Ready(Ok(()));
        }
        if dead {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        c.writer_waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for MuxStream {
    fn drop(&mut self) {
        self.release();
    }
}

impl AsyncRead for MuxStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.get_mut().poll_read_inner(cx, buf)
    }
}

impl AsyncWrite for MuxStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_write_inner(cx, data)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_flush_inner(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match this.poll_flush_inner(cx) {
            Poll::Ready(Ok(())) => {}
            other => return other,
        }
        this.close_write();
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for RecvHalf {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.get_mut().0.poll_read_inner(cx, buf)
    }
}

impl AsyncWrite for SendHalf {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().0.poll_write_inner(cx, data)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().0.poll_flush_inner(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

impl SendHalf {
    pub async fn sent(&self) {
        self.0.sent().await
    }
    pub fn id(&self) -> u32 {
        self.0.id
    }
}

impl RecvHalf {
    pub fn id(&self) -> u32 {
        self.0.id
    }
}

/// How a protocol turns pending stream work into frames.
pub(crate) trait Encoder: Send + 'static {
    /// Connection-level frames (e.g. a SPDY session WINDOW_UPDATE).
    fn encode_conn(&mut self, st: &mut State, out: &mut BytesMut);
    /// Encodes what is pending on stream `id`; returns true if more can be sent now.
    fn encode_chan(&mut self, st: &mut State, id: u32, out: &mut BytesMut, chunk: usize) -> bool;
    /// The closing frame after a clean finish (GOAWAY, WebSocket close).
    fn encode_close(&mut self, st: &mut State, out: &mut BytesMut);
}

const BATCH: usize = 64 << 10;

/// The writer task: runs until the connection finished or died.
pub(crate) async fn run_writer<W: AsyncWrite + Unpin, E: Encoder>(
    mux: Arc<Mux>,
    mut w: W,
    mut enc: E,
) {
    let mut closed = false;
    loop {
        let notified = mux.wake_writer.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let mut out = BytesMut::new();
        let mut stop = false;
        {
            let mut st = mux.lock();
            if st.dead {
                break;
            }
            while out.len() < BATCH {
                let Some(c) = st.ctrl.pop_front() else { break };
                out.extend_from_slice(&c);
            }
            if st.abort {
                stop = true;
            } else {
                enc.encode_conn(&mut st, &mut out);
                let n = st.dirty.len();
                for _ in 0..n {
                    if out.len() >= BATCH {
                        break;
                    }
                    let Some(id) = st.dirty.pop_front() else {
                        break;
                    };
                    if let Some(c) = st.chans.get_mut(&id) {
                        c.dirty = false;
                    } else {
                        continue;
                    }
                    let more = enc.encode_chan(&mut st, id, &mut out, mux.limits.chunk);
                    // Wake a writer blocked on a full buffer.
                    if let Some(c) = st.chans.get_mut(&id) {
                        if let Some(wk) = c.writer_waker.take() {
                            wk.wake();
                        }
                    }
                    if more {
                        st.mark_dirty(id);
                    }
                    st.maybe_remove(id);
                }
                if out.is_empty()
                    && st.finishing
                    && st.dirty.is_empty()
                    && st.ctrl.is_empty()
                    && !closed
                {
                    enc.encode_close(&mut st, &mut out);
                    closed = true;
                    stop = true;
                }
            }
            if !out.is_empty() {
                st.last_activity = Some(Instant::now());
            }
        }
        mux.wake_reader.notify_one();
        if !out.is_empty() {
            if let Err(e) = w.write_all(&out).await {
                mux.lock().kill(Some(format!("write: {e}")));
                mux.progress.notify_waiters();
                break;
            }
            mux.progress.notify_waiters();
        }
        if stop {
            let _ = w.flush().await;
            let _ = w.shutdown().await;
            let mut st = mux.lock();
            if st.abort {
                // A protocol error: the session is over.
                st.kill(None);
            }
            // Nothing more can be sent: outbound halves fail from now on.
            for c in st.chans.values_mut() {
                c.out_reset = true;
                if let Some(wk) = c.writer_waker.take() {
                    wk.wake();
                }
            }
            drop(st);
            mux.progress.notify_waiters();
            break;
        }
        if out.is_empty() {
            notified.await;
        }
    }
}

/// Stops a connection's tasks when its owner drops it without closing, so
/// the socket closes and the peer learns it at once.
pub(crate) struct TaskGuard {
    pub mux: Arc<Mux>,
    pub tasks: Vec<tokio::task::AbortHandle>,
}

impl Drop for TaskGuard {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        self.mux.lock().kill(None);
        self.mux.progress.notify_waiters();
    }
}
