//! Bounded fuzzing of the SPDY and WebSocket parsers (and of a live server):
//! a seeded mutator over valid frames for a fixed time, so it runs in CI on
//! stable. `FUZZ_SECS` (default 1) sets each target's budget, `FUZZ_SEED`
//! the seed (printed, to replay a failure).

mod common;

use std::time::{Duration, Instant};

use berth_streaming::client::{upgrade, Transport};
use berth_streaming::spdy::frame::{self, Frame};
use berth_streaming::spdy::zlib::{decode_block, encode_block, Deflater, Inflater};
use berth_streaming::ws::frame as wsf;
use berth_streaming::{protocol, Config, Request};
use bytes::BytesMut;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn budget() -> Duration {
    Duration::from_secs_f64(
        std::env::var("FUZZ_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(1.0),
    )
}

fn seed() -> u64 {
    let s = std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x9e37_79b9_7f4a_7c15);
    eprintln!("FUZZ_SEED={s}");
    s | 1
}

fn mutate(rng: &mut Rng, input: &[u8]) -> Vec<u8> {
    let mut v = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        if v.is_empty() {
            v.push(rng.next() as u8);
        }
        let i = rng.below(v.len());
        match rng.below(7) {
            0 => v[i] ^= 1 << rng.below(8),
            1 => v[i] = rng.next() as u8,
            2 => v.truncate(i),
            3 => {
                let b = rng.next() as u8;
                v.insert(i, b)
            }
            4 => {
                v.remove(i);
            }
            5 => {
                // Large lengths are where parsers go wrong.
                for k in 0..3.min(v.len() - i) {
                    v[i + k] = 0xff;
                }
            }
            _ => {
                let j = rng.below(v.len());
                let (a, b) = (i.min(j), i.max(j));
                let chunk = v[a..b].to_vec();
                v.splice(b..b, chunk);
            }
        }
    }
    v
}

fn spdy_corpus() -> Vec<Vec<u8>> {
    let mut d = Deflater::new();
    let mut all = Vec::new();
    let mut one = |f: &dyn Fn(&mut BytesMut, &mut Deflater)| {
        let mut b = BytesMut::new();
        f(&mut b, &mut d);
        all.push(b.to_vec());
    };
    one(&|b, d| {
        frame::put_syn_stream(
            b,
            1,
            0,
            &d.deflate(&encode_block(&[("streamtype", "error")])),
        )
    });
    one(&|b, d| {
        frame::put_syn_stream(
            b,
            3,
            frame::FLAG_FIN,
            &d.deflate(&encode_block(&[
                ("streamtype", "data"),
                ("port", "80"),
                ("requestid", "0"),
            ])),
        )
    });
    one(&|b, d| frame::put_syn_reply(b, 1, false, &d.deflate(&encode_block(&[]))));
    one(&|b, d| frame::put_headers(b, 1, true, &d.deflate(&encode_block(&[("a", "b\0c")]))));
    one(&|b, _| frame::put_data(b, 1, true, b"hello world"));
    one(&|b, _| frame::put_rst(b, 1, 5));
    one(&|b, _| frame::put_settings(b, &[(0, 7, 65536), (1, 4, 100)]));
    one(&|b, _| frame::put_ping(b, 1));
    one(&|b, _| frame::put_goaway(b, 1, 0));
    one(&|b, _| frame::put_window_update(b, 0, 1000));
    // A whole session's worth, in order (shares the zlib stream).
    let session: Vec<u8> = all.concat();
    all.push(session);
    all
}

fn ws_corpus() -> Vec<(Vec<u8>, bool)> {
    let mut all = Vec::new();
    for masked in [false, true] {
        let m = masked.then_some([1, 2, 3, 4]);
        let mut s = BytesMut::new();
        for (fin, op, p) in [
            (true, wsf::OP_BINARY, &b"\x00stdin data"[..]),
            (false, wsf::OP_TEXT, b"1aGVs"),
            (true, wsf::OP_CONTINUATION, b"bG8="),
            (true, wsf::OP_PING, b"p"),
            (true, wsf::OP_CLOSE, b"\x03\xe8bye"),
            (true, wsf::OP_BINARY, &[7u8; 300][..]),
        ] {
            let mut b = BytesMut::new();
            wsf::put_frame(&mut b, fin, op, p, m);
            s.extend_from_slice(&b);
            all.push((b.to_vec(), masked));
        }
        all.push((s.to_vec(), masked));
    }
    all
}

#[test]
fn fuzz_spdy_frame_parser_and_header_blocks() {
    let corpus = spdy_corpus();
    let mut rng = Rng(seed());
    let end = Instant::now() + budget();
    let mut runs = 0u64;
    while Instant::now() < end {
        let input = {
            let k = rng.below(corpus.len());
            mutate(&mut rng, &corpus[k])
        };
        let mut inflater = Inflater::new();
        let mut off = 0;
        while let Ok(Some((f, n))) = frame::parse(&input[off..], 1 << 16) {
            assert!(n >= 8 && off + n <= input.len());
            off += n;
            if let Frame::SynStream { block, .. }
            | Frame::SynReply { block, .. }
            | Frame::Headers { block, .. } = f
            {
                // After a bad block the zlib context is unusable: the
                // connection would end there too.
                let Ok(plain) = inflater.inflate(&block, 4096) else {
                    break;
                };
                assert!(plain.len() <= 4096);
                let _ = decode_block(&plain, 64);
            }
        }
        runs += 1;
    }
    eprintln!("{runs} SPDY inputs");
}

#[test]
fn fuzz_websocket_frame_parser() {
    let corpus = ws_corpus();
    let mut rng = Rng(seed());
    let end = Instant::now() + budget();
    let mut runs = 0u64;
    while Instant::now() < end {
        let (seed_input, masked) = &corpus[rng.below(corpus.len())];
        let input = mutate(&mut rng, seed_input);
        for m in [*masked, !*masked] {
            let mut off = 0;
            while let Ok(Some((f, n))) = wsf::parse(&input[off..], 1 << 12, m) {
                assert!(n >= 2 && off + n <= input.len());
                assert!(f.payload.len() <= 1 << 12);
                off += n;
            }
        }
        runs += 1;
    }
    eprintln!("{runs} WebSocket inputs");
}

/// Mutated byte streams against a running server: every connection must end
/// (the server refuses or finishes; nothing hangs or panics) and the server
/// keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fuzz_live_server() {
    let (_b, srv) = start(Config {
        max_frame: 1 << 16,
        stream_creation_timeout: Duration::from_secs(2),
        ..Default::default()
    })
    .await;
    let spdy = spdy_corpus();
    let ws: Vec<Vec<u8>> = ws_corpus()
        .into_iter()
        .filter(|(_, m)| *m)
        .map(|(b, _)| b)
        .collect();
    let mut rng = Rng(seed());
    let end = Instant::now() + budget();
    let mut runs = 0;
    while Instant::now() < end || runs < 20 {
        let url = srv
            .url_for(Request::Exec {
                container_id: "c".into(),
                cmd: vec!["true".into()],
                tty: false,
                stdin: true,
                stdout: true,
                stderr: true,
            })
            .unwrap();
        let (t, input, p) = if rng.below(2) == 0 {
            (
                Transport::Spdy,
                {
                    let k = rng.below(spdy.len());
                    mutate(&mut rng, &spdy[k])
                },
                protocol::V4,
            )
        } else {
            (
                Transport::WebSocket,
                {
                    let k = rng.below(ws.len());
                    mutate(&mut rng, &ws[k])
                },
                protocol::V5,
            )
        };
        let (mut io, _) = upgrade(&url, t, &[p]).await.unwrap();
        let _ = io.write_all(&input).await;
        let _ = io.shutdown().await;
        let mut sink = Vec::new();
        tokio::time::timeout(Duration::from_secs(20), io.read_to_end(&mut sink))
            .await
            .unwrap_or_else(|_| panic!("{t:?}: connection not closed after input {input:?}"))
            .ok();
        runs += 1;
    }
    eprintln!("{runs} live connections");
    let url = srv
        .url_for(Request::Exec {
            container_id: "c".into(),
            cmd: vec!["true".into()],
            tty: false,
            stdin: false,
            stdout: true,
            stderr: true,
        })
        .unwrap();
    let rc = berth_streaming::client::remote_command(
        &url,
        Transport::Spdy,
        &[protocol::V4],
        berth_streaming::client::ExecOptions {
            stdout: true,
            stderr: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(
        rc.wait().await.unwrap(),
        berth_streaming::status::Outcome::Success
    );
}
