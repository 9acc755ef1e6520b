//! A SPDY/3.1 connection over the multiplexer: the reader task (frames ->
//! streams), the encoder used by the writer task, and stream opening for
//! clients.
//!
//! Flow control: Kubernetes' Go clients (spdystream) neither send
//! WINDOW_UPDATE nor honour windows, so windows only limit what we send once
//! the peer has shown it takes part (a SETTINGS or WINDOW_UPDATE frame). What
//! we receive is bounded either way: a flow-controlling peer that overruns a
//! window gets RST_STREAM FLOW_CONTROL_ERROR; a legacy peer is simply not read
//! from while one of its streams is full (the behaviour of kubelet's own
//! server).

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::task::JoinHandle;

use super::frame::{self, goaway, rst, Frame};
use super::zlib::{decode_block, encode_block, Deflater, Headers, Inflater};
use crate::mux::{run_writer, Chan, Encoder, Limits, Mux, MuxStream, State, TaskGuard};

/// Limits of a SPDY connection besides the multiplexer's.
#[derive(Debug, Clone, Copy)]
pub struct SpdyLimits {
    pub max_frame: usize,
    pub max_header_block: usize,
    pub max_headers: usize,
}

const MAX_WINDOW: i64 = 0x7fff_ffff;

struct SpdyEncoder {
    deflater: Deflater,
}

impl Encoder for SpdyEncoder {
    fn encode_conn(&mut self, st: &mut State, out: &mut BytesMut) {
        if st.conn_wu_pending && st.conn_recv_unacked > 0 {
            frame::put_window_update(out, 0, st.conn_recv_unacked);
            st.conn_recv_unacked = 0;
        }
        st.conn_wu_pending = false;
    }

    fn encode_chan(&mut self, st: &mut State, id: u32, out: &mut BytesMut, chunk: usize) -> bool {
        let (flow, conn_window) = (st.flow, st.conn_send_window);
        let Some(c) = st.chans.get_mut(&id) else {
            return false;
        };
        if let Some(h) = c.syn_pending.take() {
            let pairs: Vec<(&str, &str)> =
                h.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
            let block = self.deflater.deflate(&encode_block(&pairs));
            frame::put_syn_stream(out, id, 0, &block);
        }
        if c.reply_pending {
            c.reply_pending = false;
            let block = self.deflater.deflate(&encode_block(&[]));
            frame::put_syn_reply(out, id, false, &block);
        }
        if let Some(code) = c.rst_pending.take() {
            frame::put_rst(out, id, code);
            c.out_fin_sent = true;
            return false;
        }
        if c.wu_pending {
            c.wu_pending = false;
            if c.recv_unacked > 0 {
                frame::put_window_update(out, id, c.recv_unacked);
                c.recv_window += c.recv_unacked as i64;
                c.recv_unacked = 0;
            }
        }
        if c.out_reset || c.out_fin_sent {
            return false;
        }
        if c.out_len > 0 {
            let mut allowed = chunk as i64;
            if flow {
                allowed = allowed.min(c.send_window).min(conn_window);
                if allowed <= 0 {
                    // Woken again by the peer's WINDOW_UPDATE.
                    return false;
                }
            }
            let mut data = BytesMut::with_capacity(allowed as usize);
            while (data.len() as i64) < allowed {
                let Some(front) = c.out_buf.front_mut() else {
                    break;
                };
                let k = front.len().min(allowed as usize - data.len());
                data.extend_from_slice(&front.split_to(k));
                if front.is_empty() {
                    c.out_buf.pop_front();
                }
            }
            c.out_len -= data.len();
            let fin = c.out_fin && c.out_len == 0;
            frame::put_data(out, id, fin, &data);
            if fin {
                c.out_fin_sent = true;
            }
            if flow {
                c.send_window -= data.len() as i64;
                st.conn_send_window -= data.len() as i64;
            }
            let c = st.chans.get(&id).unwrap();
            return c.out_len > 0;
        }
        if c.out_fin {
            frame::put_data(out, id, true, &[]);
            c.out_fin_sent = true;
        }
        false
    }

    fn encode_close(&mut self, st: &mut State, out: &mut BytesMut) {
        frame::put_goaway(out, st.last_remote_id, goaway::OK);
    }
}

/// A running SPDY connection.
pub struct SpdyConn {
    pub(crate) mux: Arc<Mux>,
    pub(crate) reader: JoinHandle<()>,
    pub(crate) writer: JoinHandle<()>,
    _guard: TaskGuard,
}

impl SpdyConn {
    /// Starts the reader and writer tasks over `io`. Clients open odd stream
    /// ids, servers accept them.
    pub(crate) fn start<IO>(io: IO, server: bool, limits: Limits, spdy: SpdyLimits) -> SpdyConn
    where
        IO: AsyncRead + AsyncWrite + Send + 'static,
    {
        let mux = Mux::new(limits);
        {
            let mut st = mux.lock();
            st.next_local_id = if server { 2 } else { 1 };
            // Announce our per-stream window and open the session window wide:
            // memory is bounded per stream, not per session.
            let mut b = BytesMut::new();
            frame::put_settings(
                &mut b,
                &[(
                    0,
                    frame::SETTINGS_INITIAL_WINDOW_SIZE,
                    limits.stream_buf as u32,
                )],
            );
            frame::put_window_update(&mut b, 0, (MAX_WINDOW - 65536) as u32);
            st.ctrl.push_back(b.freeze());
        }
        let (r, w) = tokio::io::split(io);
        let writer = tokio::spawn(run_writer(
            mux.clone(),
            w,
            SpdyEncoder {
                deflater: Deflater::new(),
            },
        ));
        let reader = tokio::spawn(run_reader(
            mux.clone(),
            tokio::io::BufReader::with_capacity(64 << 10, r),
            server,
            spdy,
        ));
        let tasks = vec![reader.abort_handle(), writer.abort_handle()];
        let guard = TaskGuard {
            mux: mux.clone(),
            tasks,
        };
        SpdyConn {
            _guard: guard,
            mux,
            reader,
            writer,
        }
    }

    pub(crate) fn mux(&self) -> &Arc<Mux> {
        &self.mux
    }

    pub async fn accept(&self) -> Option<MuxStream> {
        self.mux.accept().await
    }

    /// Opens a stream with `headers` and waits for the peer's SYN_REPLY.
    pub async fn open(&self, headers: &[(&str, &str)], timeout: Duration) -> io::Result<MuxStream> {
        let (id, stream) = {
            let h: Headers = headers
                .iter()
                .map(|(n, v)| (n.to_ascii_lowercase(), v.to_string()))
                .collect();
            let mut st = self.mux.lock();
            if st.dead || st.goaway_received {
                return Err(io::Error::new(
                    io::ErrorKind::NotConnected,
                    "connection closed",
                ));
            }
            // Ids must reach the wire in increasing order: allocate and queue
            // the SYN_STREAM in one critical section.
            let id = st.next_local_id;
            st.next_local_id += 2;
            let chan = Chan {
                syn_pending: Some(h.clone()),
                headers: h,
                ..Default::default()
            };
            let s = self.mux.insert_locked(&mut st, id, chan);
            st.mark_dirty(id);
            drop(st);
            self.mux.kick();
            (id, s)
        };
        let mux = self.mux.clone();
        let replied = mux.wait_until(|st| {
            st.dead
                || st
                    .chans
                    .get(&id)
                    .is_none_or(|c| c.replied || c.in_reset.is_some())
        });
        if tokio::time::timeout(timeout, replied).await.is_err() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no SYN_REPLY for the new stream",
            ));
        }
        let st = self.mux.lock();
        match st.chans.get(&id) {
            Some(c) if c.replied && c.in_reset.is_none() => Ok(stream),
            Some(c) if c.in_reset.is_some() => Err(io::Error::new(
                io::ErrorKind::ConnectionRefused,
                format!("stream refused (status {})", c.in_reset.unwrap()),
            )),
            _ => Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                st.error
                    .clone()
                    .unwrap_or_else(|| "connection closed".into()),
            )),
        }
    }

    /// Drains what was written, sends GOAWAY and closes; waits up to `linger`
    /// for the peer to close its side.
    pub async fn close(self, linger: Duration) {
        self.mux.finish();
        let _ = self.writer.await;
        let mut reader = self.reader;
        if tokio::time::timeout(linger, &mut reader).await.is_err() {
            reader.abort();
        }
        self.mux.lock().kill(None);
        self.mux.progress.notify_waiters();
    }
}

/// Reads exactly `buf.len()` bytes, giving up after the idle timeout without
/// traffic in either direction.
pub(crate) async fn read_full<R: AsyncRead + Unpin>(
    mux: &Mux,
    r: &mut R,
    buf: &mut [u8],
) -> io::Result<()> {
    let mut off = 0;
    while off < buf.len() {
        let idle = mux.limits.idle_timeout;
        let last = mux.lock().last_activity.unwrap_or_else(Instant::now);
        tokio::select! {
            n = r.read(&mut buf[off..]) => {
                let n = n?;
                if n == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                off += n;
                mux.touch();
            }
            _ = tokio::time::sleep_until((last + idle).into()) => {
                let last = mux.lock().last_activity.unwrap_or_else(Instant::now);
                if last.elapsed() >= idle {
                    return Err(io::Error::new(io::ErrorKind::TimedOut, "idle timeout"));
                }
            }
        }
    }
    Ok(())
}

/// Waits until `cond` is false (the reader's backpressure), honouring the idle timeout.
pub(crate) async fn wait_room(
    mux: &Mux,
    mut blocked: impl FnMut(&State) -> bool,
) -> io::Result<()> {
    loop {
        let n = mux.wake_reader.notified();
        tokio::pin!(n);
        n.as_mut().enable();
        let (b, last, dead) = {
            let st = mux.lock();
            (
                blocked(&st),
                st.last_activity.unwrap_or_else(Instant::now),
                st.dead,
            )
        };
        if !b || dead {
            return Ok(());
        }
        let idle = mux.limits.idle_timeout;
        tokio::select! {
            _ = &mut n => {}
            _ = tokio::time::sleep_until((last + idle).into()) => {
                let last = mux.lock().last_activity.unwrap_or_else(Instant::now);
                if last.elapsed() >= idle {
                    return Err(io::Error::new(io::ErrorKind::TimedOut, "idle timeout"));
                }
            }
        }
    }
}

fn fatal(mux: &Mux, last_good: u32, status: u32, why: String) {
    let mut st = mux.lock();
    let mut b = BytesMut::new();
    frame::put_goaway(&mut b, last_good, status);
    st.ctrl.push_back(b.freeze());
    st.abort = true;
    if st.error.is_none() {
        st.error = Some(why);
    }
    drop(st);
    mux.kick();
}

async fn run_reader<R: AsyncRead + Unpin>(mux: Arc<Mux>, mut r: R, server: bool, lim: SpdyLimits) {
    let why = reader_loop(&mux, &mut r, server, lim).await;
    tracing::debug!(error = %why, "spdy connection reader stopped");
    let mut st = mux.lock();
    if !st.abort {
        st.kill(Some(why));
    } else if st.error.is_none() {
        st.error = Some(why);
    }
    drop(st);
    mux.progress.notify_waiters();
    mux.wake_writer.notify_one();
}

async fn reader_loop<R: AsyncRead + Unpin>(
    mux: &Arc<Mux>,
    r: &mut R,
    server: bool,
    lim: SpdyLimits,
) -> String {
    let mut inflater = Inflater::new();
    let mut last_remote: u32 = 0;
    let remote_parity = if server { 1 } else { 0 };
    loop {
        let mut hdr = [0u8; frame::FRAME_HEADER_LEN];
        if let Err(e) = read_full(mux, r, &mut hdr).await {
            return format!("read: {e}");
        }
        let len = frame::payload_len(&hdr);
        if len > lim.max_frame {
            let why = format!(
                "frame of {len} bytes exceeds the limit of {}",
                lim.max_frame
            );
            fatal(mux, last_remote, goaway::PROTOCOL_ERROR, why.clone());
            return why;
        }
        let mut payload = vec![0u8; len];
        if let Err(e) = read_full(mux, r, &mut payload).await {
            return format!("read: {e}");
        }
        let f = match frame::parse_body(&hdr, hdr[4], &payload) {
            Ok(f) => f,
            Err(e) => {
                fatal(mux, last_remote, goaway::PROTOCOL_ERROR, e.to_string());
                return e.to_string();
            }
        };
        drop(payload);
        // Header blocks are inflated even for refused streams: the zlib
        // context is shared by the whole connection.
        let mut inflate = |block: &[u8]| -> Result<Headers, String> {
            let plain = inflater
                .inflate(block, lim.max_header_block)
                .map_err(|e| e.to_string())?;
            decode_block(&plain, lim.max_headers).map_err(|e| e.to_string())
        };
        let mut ctrl = BytesMut::new();
        match f {
            Frame::SynStream {
                stream_id,
                flags,
                block,
                ..
            } => {
                let headers = match inflate(&block) {
                    Ok(h) => h,
                    Err(e) => {
                        fatal(mux, last_remote, goaway::PROTOCOL_ERROR, e.clone());
                        return e;
                    }
                };
                if stream_id % 2 != remote_parity || stream_id <= last_remote {
                    let why = format!(
                        "SYN_STREAM with stream id {stream_id} out of order or of the wrong parity"
                    );
                    fatal(mux, last_remote, goaway::PROTOCOL_ERROR, why.clone());
                    return why;
                }
                last_remote = stream_id;
                let mut st = mux.lock();
                st.last_remote_id = stream_id;
                if !server || st.finishing || st.dead {
                    frame::put_rst(&mut ctrl, stream_id, rst::REFUSED_STREAM);
                } else if st.chans.len() >= mux.limits.max_streams {
                    tracing::debug!(
                        stream_id,
                        "stream refused: limit of {} streams",
                        mux.limits.max_streams
                    );
                    frame::put_rst(&mut ctrl, stream_id, rst::REFUSED_STREAM);
                } else {
                    drop(st);
                    let chan = Chan {
                        headers,
                        reply_pending: true,
                        in_eof: flags & frame::FLAG_FIN != 0,
                        out_fin_sent: false,
                        ..Default::default()
                    };
                    mux.insert_chan(stream_id, chan);
                    st = mux.lock();
                    if flags & frame::FLAG_UNIDIRECTIONAL != 0 {
                        if let Some(c) = st.chans.get_mut(&stream_id) {
                            c.out_fin = true;
                        }
                    }
                    st.mark_dirty(stream_id);
                    st.accept_q.push_back(stream_id);
                    if let Some(w) = st.accept_waker.take() {
                        w.wake();
                    }
                    drop(st);
                    mux.kick();
                }
            }
            Frame::SynReply {
                stream_id,
                fin,
                block,
            } => {
                if let Err(e) = inflate(&block) {
                    fatal(mux, last_remote, goaway::PROTOCOL_ERROR, e.clone());
                    return e;
                }
                let mut st = mux.lock();
                match st.chans.get_mut(&stream_id) {
                    Some(c) if !c.replied => {
                        c.replied = true;
                        if fin {
                            mux.remote_fin(&mut st, stream_id);
                        }
                    }
                    Some(_) => frame::put_rst(&mut ctrl, stream_id, rst::STREAM_IN_USE),
                    None => {}
                }
                drop(st);
                mux.progress.notify_waiters();
            }
            Frame::Headers {
                stream_id,
                fin,
                block,
            } => {
                if let Err(e) = inflate(&block) {
                    fatal(mux, last_remote, goaway::PROTOCOL_ERROR, e.clone());
                    return e;
                }
                if fin {
                    let mut st = mux.lock();
                    mux.remote_fin(&mut st, stream_id);
                }
            }
            Frame::Data {
                stream_id,
                fin,
                data,
            } => {
                on_data(
                    mux,
                    stream_id,
                    fin,
                    data,
                    remote_parity,
                    last_remote,
                    &mut ctrl,
                );
                mux.kick();
                if let Err(e) = wait_room(mux, |st| mux.over_cap(st, stream_id)).await {
                    return e.to_string();
                }
            }
            Frame::RstStream { stream_id, status } => {
                let mut st = mux.lock();
                mux.remote_reset(&mut st, stream_id, status);
                drop(st);
                mux.progress.notify_waiters();
            }
            Frame::Settings { entries } => {
                let mut st = mux.lock();
                st.flow = true;
                for (_, id, value) in entries {
                    if id == frame::SETTINGS_INITIAL_WINDOW_SIZE && (value as i64) <= MAX_WINDOW {
                        let delta = value as i64 - st.initial_send_window;
                        st.initial_send_window = value as i64;
                        let ids: Vec<u32> = st.chans.keys().copied().collect();
                        for id in ids {
                            st.chans.get_mut(&id).unwrap().send_window += delta;
                            st.mark_dirty(id);
                        }
                    }
                }
                drop(st);
                mux.kick();
            }
            Frame::Ping { id } => {
                // Echo the peer's pings; ours come back with our parity.
                if id % 2 == remote_parity {
                    frame::put_ping(&mut ctrl, id);
                }
            }
            Frame::GoAway { .. } => {
                mux.lock().goaway_received = true;
                mux.progress.notify_waiters();
            }
            Frame::WindowUpdate { stream_id, delta } => {
                let mut st = mux.lock();
                st.flow = true;
                if stream_id == 0 {
                    st.conn_send_window += delta as i64;
                    if st.conn_send_window > MAX_WINDOW {
                        drop(st);
                        let why = "session window overflow".to_string();
                        fatal(mux, last_remote, goaway::PROTOCOL_ERROR, why.clone());
                        return why;
                    }
                    let ids: Vec<u32> = st
                        .chans
                        .iter()
                        .filter(|(_, c)| c.out_len > 0)
                        .map(|(id, _)| *id)
                        .collect();
                    for id in ids {
                        st.mark_dirty(id);
                    }
                } else if let Some(c) = st.chans.get_mut(&stream_id) {
                    c.send_window += delta as i64;
                    if c.send_window > MAX_WINDOW {
                        drop(st);
                        mux.reset(stream_id, rst::FLOW_CONTROL_ERROR);
                        st = mux.lock();
                    } else {
                        st.mark_dirty(stream_id);
                    }
                }
                drop(st);
                mux.kick();
            }
            Frame::Unknown { .. } => {}
        }
        if !ctrl.is_empty() {
            mux.lock().ctrl.push_back(ctrl.freeze());
            mux.kick();
            let cap = mux.limits.ctrl_cap;
            if let Err(e) = wait_room(mux, |st| st.ctrl.len() > cap).await {
                return e.to_string();
            }
        }
    }
}

fn on_data(
    mux: &Mux,
    stream_id: u32,
    fin: bool,
    data: bytes::Bytes,
    remote_parity: u32,
    last_remote: u32,
    ctrl: &mut BytesMut,
) {
    let n = data.len();
    let mut st = mux.lock();
    let flow = st.flow;
    let known = st
        .chans
        .get(&stream_id)
        .map(|c| (c.in_eof, c.in_reset.is_some(), c.recv_window));
    match known {
        None => {
            // Late data for a stream we closed is expected; data for a
            // stream never opened is a stream error.
            if stream_id % 2 == remote_parity && stream_id > last_remote {
                frame::put_rst(ctrl, stream_id, rst::INVALID_STREAM);
            }
        }
        Some((_, true, _)) => {}
        Some((true, _, _)) => {
            drop(st);
            mux.reset(stream_id, rst::STREAM_ALREADY_CLOSED);
        }
        Some((false, false, window)) => {
            if flow && (n as i64) > window {
                drop(st);
                mux.reset(stream_id, rst::FLOW_CONTROL_ERROR);
            } else {
                if let Some(c) = st.chans.get_mut(&stream_id) {
                    c.recv_window -= n as i64;
                }
                mux.push_data(&mut st, stream_id, data);
                if fin {
                    mux.remote_fin(&mut st, stream_id);
                }
            }
        }
    }
}
