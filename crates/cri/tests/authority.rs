//! gRPC clients that send the socket path as `:authority` (grpc-go: kubelet, crictl; grpc-core;
//! grpc-java) against a real tonic server on a unix socket, with and without `fix_authority`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use berth_cri::authority::fix_authority;
use berth_cri_api::v1::runtime_service_client::RuntimeServiceClient;
use berth_cri_api::v1::runtime_service_server::{RuntimeService, RuntimeServiceServer};
use berth_cri_api::v1::*;
use loona_hpack::Decoder;
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio_stream::wrappers::UnixListenerStream;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status};

/// Answers Version with the caller's uid (from the connection info `fix_authority` passes
/// through); everything else is unimplemented.
struct VersionOnly;

// async_trait must see the whole impl, so the macro writes it.
macro_rules! version_only_service {
    ($($name:ident($req:ident) -> $resp:ident;)* ; $($sname:ident($sreq:ident) -> $stype:ident($sresp:ident);)*) => {
        #[tonic::async_trait]
        impl RuntimeService for VersionOnly {
            type GetContainerEventsStream =
                tokio_stream::Pending<Result<ContainerEventResponse, Status>>;

            async fn version(
                &self,
                request: Request<VersionRequest>,
            ) -> Result<Response<VersionResponse>, Status> {
                let uid = request
                    .extensions()
                    .get::<tonic::transport::server::UdsConnectInfo>()
                    .and_then(|info| info.peer_cred)
                    .map(|cred| cred.uid().to_string())
                    .unwrap_or_default();
                Ok(Response::new(VersionResponse {
                    version: request.into_inner().version,
                    runtime_name: "berth-test".into(),
                    runtime_version: format!("uid={uid}"),
                    runtime_api_version: "v1".into(),
                }))
            }

            async fn get_container_events(
                &self,
                _: Request<GetEventsRequest>,
            ) -> Result<Response<Self::GetContainerEventsStream>, Status> {
                Err(Status::unimplemented("get_container_events"))
            }

            $(
                async fn $name(&self, _: Request<$req>) -> Result<Response<$resp>, Status> {
                    Err(Status::unimplemented(stringify!($name)))
                }
            )*
            $(
                type $stype = tokio_stream::Pending<Result<$sresp, Status>>;
                async fn $sname(&self, _: Request<$sreq>) -> Result<Response<Self::$stype>, Status> {
                    Err(Status::unimplemented(stringify!($sname)))
                }
            )*
        }
    };
}

version_only_service! {
    run_pod_sandbox(RunPodSandboxRequest) -> RunPodSandboxResponse;
    stop_pod_sandbox(StopPodSandboxRequest) -> StopPodSandboxResponse;
    remove_pod_sandbox(RemovePodSandboxRequest) -> RemovePodSandboxResponse;
    pod_sandbox_status(PodSandboxStatusRequest) -> PodSandboxStatusResponse;
    list_pod_sandbox(ListPodSandboxRequest) -> ListPodSandboxResponse;
    create_container(CreateContainerRequest) -> CreateContainerResponse;
    start_container(StartContainerRequest) -> StartContainerResponse;
    stop_container(StopContainerRequest) -> StopContainerResponse;
    remove_container(RemoveContainerRequest) -> RemoveContainerResponse;
    list_containers(ListContainersRequest) -> ListContainersResponse;
    container_status(ContainerStatusRequest) -> ContainerStatusResponse;
    update_container_resources(UpdateContainerResourcesRequest) -> UpdateContainerResourcesResponse;
    reopen_container_log(ReopenContainerLogRequest) -> ReopenContainerLogResponse;
    exec_sync(ExecSyncRequest) -> ExecSyncResponse;
    exec(ExecRequest) -> ExecResponse;
    attach(AttachRequest) -> AttachResponse;
    port_forward(PortForwardRequest) -> PortForwardResponse;
    container_stats(ContainerStatsRequest) -> ContainerStatsResponse;
    list_container_stats(ListContainerStatsRequest) -> ListContainerStatsResponse;
    pod_sandbox_stats(PodSandboxStatsRequest) -> PodSandboxStatsResponse;
    list_pod_sandbox_stats(ListPodSandboxStatsRequest) -> ListPodSandboxStatsResponse;
    update_runtime_config(UpdateRuntimeConfigRequest) -> UpdateRuntimeConfigResponse;
    status(StatusRequest) -> StatusResponse;
    checkpoint_container(CheckpointContainerRequest) -> CheckpointContainerResponse;
    list_metric_descriptors(ListMetricDescriptorsRequest) -> ListMetricDescriptorsResponse;
    list_pod_sandbox_metrics(ListPodSandboxMetricsRequest) -> ListPodSandboxMetricsResponse;
    runtime_config(RuntimeConfigRequest) -> RuntimeConfigResponse;
    update_pod_sandbox_resources(UpdatePodSandboxResourcesRequest) -> UpdatePodSandboxResourcesResponse;
    ;
    stream_pod_sandboxes(StreamPodSandboxesRequest) -> StreamPodSandboxesStream(StreamPodSandboxesResponse);
    stream_containers(StreamContainersRequest) -> StreamContainersStream(StreamContainersResponse);
    stream_container_stats(StreamContainerStatsRequest) -> StreamContainerStatsStream(StreamContainerStatsResponse);
    stream_pod_sandbox_stats(StreamPodSandboxStatsRequest) -> StreamPodSandboxStatsStream(StreamPodSandboxStatsResponse);
    stream_pod_sandbox_metrics(StreamPodSandboxMetricsRequest) -> StreamPodSandboxMetricsStream(StreamPodSandboxMetricsResponse);
}

/// A tonic server on `dir/berth.sock`, the way berthd serves CRI: through `fix_authority` or not.
fn serve(dir: &Path, fix: bool) -> PathBuf {
    let path = dir.join("berth.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let incoming = UnixListenerStream::new(listener);
    let server =
        tonic::transport::Server::builder().add_service(RuntimeServiceServer::new(VersionOnly));
    if fix {
        tokio::spawn(server.serve_with_incoming(incoming.map(|conn| conn.map(fix_authority))));
    } else {
        tokio::spawn(server.serve_with_incoming(incoming));
    }
    path
}

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PROTOCOL_ERROR: u32 = 0x1;
/// RFC 7541 Appendix B Huffman code of "/run/berth/berth.sock".
const SOCK_HUFFMAN: &[u8] = &[
    0x62, 0xcb, 0x6a, 0x62, 0x32, 0xd8, 0x99, 0xd8, 0x8c, 0xb6, 0x26, 0x75, 0xd0, 0x72, 0x75,
];

fn frame(ty: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    out.extend([ty, flags]);
    out.extend(stream.to_be_bytes());
    out.extend(payload);
    out
}

/// HPACK string literal without Huffman coding (lengths below 127 only).
fn lit(s: &[u8]) -> Vec<u8> {
    assert!(s.len() < 127);
    let mut out = vec![s.len() as u8];
    out.extend(s);
    out
}

/// A gRPC Version request header block as grpc-go writes it, with the given `:authority`
/// representation in the middle.
fn request_block(authority: &[u8]) -> Vec<u8> {
    let mut block = vec![0x83, 0x86]; // :method POST, :scheme http (static table)
    block.push(0x04); // :path, literal without indexing, indexed name
    block.extend(lit(b"/runtime.v1.RuntimeService/Version"));
    block.extend(authority);
    block.push(0x0f);
    block.push(0x10); // content-type (31), literal without indexing
    block.extend(lit(b"application/grpc"));
    block.push(0x00);
    block.extend(lit(b"te"));
    block.extend(lit(b"trailers"));
    block
}

/// `:authority` as a literal without indexing (name from the static table).
fn authority_literal(value: &[u8]) -> Vec<u8> {
    let mut out = vec![0x01];
    out.extend(lit(value));
    out
}

#[derive(Debug)]
enum Outcome {
    Response {
        headers: Vec<(String, String)>,
        trailers: Vec<(String, String)>,
        data: Vec<u8>,
    },
    Reset(u32),
    Closed,
}

/// A hand-written HTTP/2 client: frames exactly as given, nothing normalized.
struct RawClient {
    sock: UnixStream,
    /// Decodes the server's header blocks (the server→client HPACK context).
    decoder: Decoder<'static>,
}

impl RawClient {
    async fn connect(path: &Path) -> RawClient {
        let mut sock = UnixStream::connect(path).await.unwrap();
        sock.write_all(PREFACE).await.unwrap();
        sock.write_all(&frame(SETTINGS, 0, 0, &[])).await.unwrap();
        RawClient {
            sock,
            decoder: Decoder::new(),
        }
    }

    async fn read_frame(&mut self) -> Option<(u8, u8, u32, Vec<u8>)> {
        let mut head = [0u8; 9];
        self.sock.read_exact(&mut head).await.ok()?;
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        let mut payload = vec![0; len];
        self.sock.read_exact(&mut payload).await.ok()?;
        Some((head[3], head[4], stream, payload))
    }

    /// Sends a unary Version call on `stream` with the given request header block and waits for
    /// the outcome.
    async fn version(&mut self, stream: u32, block: &[u8]) -> Outcome {
        let msg = VersionRequest {
            version: "v1".into(),
        }
        .encode_to_vec();
        let mut grpc = vec![0];
        grpc.extend((msg.len() as u32).to_be_bytes());
        grpc.extend(msg);
        let mut out = frame(HEADERS, END_HEADERS, stream, block);
        out.extend(frame(DATA, END_STREAM, stream, &grpc));
        if self.sock.write_all(&out).await.is_err() {
            return Outcome::Closed;
        }
        tokio::time::timeout(Duration::from_secs(30), self.wait(stream))
            .await
            .expect("the server neither answered nor closed the connection")
    }

    async fn wait(&mut self, stream: u32) -> Outcome {
        let mut headers = Vec::new();
        let mut trailers = Vec::new();
        let mut data = Vec::new();
        loop {
            let Some((ty, flags, id, payload)) = self.read_frame().await else {
                return Outcome::Closed;
            };
            match ty {
                SETTINGS if flags & 0x1 == 0 => {
                    let _ = self.sock.write_all(&frame(SETTINGS, 0x1, 0, &[])).await;
                }
                PING if flags & 0x1 == 0 => {
                    let _ = self.sock.write_all(&frame(PING, 0x1, 0, &payload)).await;
                }
                GOAWAY => return Outcome::Closed,
                RST_STREAM if id == stream => {
                    return Outcome::Reset(u32::from_be_bytes(payload[..4].try_into().unwrap()));
                }
                HEADERS | CONTINUATION => {
                    assert_ne!(ty, CONTINUATION, "server headers fit one frame");
                    assert_ne!(flags & END_HEADERS, 0);
                    let fields: Vec<(String, String)> = self
                        .decoder
                        .decode(&payload)
                        .unwrap()
                        .into_iter()
                        .map(|(n, v)| {
                            (String::from_utf8(n).unwrap(), String::from_utf8(v).unwrap())
                        })
                        .collect();
                    if id == stream {
                        if headers.is_empty() {
                            headers = fields;
                        } else {
                            trailers = fields;
                        }
                    }
                }
                DATA if id == stream => data.extend(payload),
                _ => {}
            }
            if id == stream && flags & END_STREAM != 0 && (ty == DATA || ty == HEADERS) {
                return Outcome::Response {
                    headers,
                    trailers,
                    data,
                };
            }
        }
    }
}

fn get<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// Checks a successful Version answer and returns it.
fn version_ok(outcome: Outcome) -> VersionResponse {
    let Outcome::Response {
        headers,
        trailers,
        data,
    } = outcome
    else {
        panic!("expected a gRPC response, got {outcome:?}");
    };
    assert_eq!(get(&headers, ":status"), Some("200"), "{headers:?}");
    assert_eq!(get(&trailers, "grpc-status"), Some("0"), "{trailers:?}");
    assert_eq!(data[0], 0, "uncompressed message");
    let len = u32::from_be_bytes(data[1..5].try_into().unwrap()) as usize;
    assert_eq!(data.len(), 5 + len);
    let resp = VersionResponse::decode(&data[5..]).unwrap();
    assert_eq!(resp.version, "v1");
    assert_eq!(resp.runtime_name, "berth-test");
    assert_eq!(resp.runtime_api_version, "v1");
    assert_eq!(
        resp.runtime_version,
        format!("uid={}", unsafe { libc::getuid() })
    );
    resp
}

#[tokio::test]
async fn without_the_adapter_a_path_authority_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = serve(dir.path(), false);
    let mut client = RawClient::connect(&path).await;
    // What the test exercises: h2 refuses the socket path...
    let outcome = client
        .version(
            1,
            &request_block(&authority_literal(b"/run/berth/berth.sock")),
        )
        .await;
    assert!(
        matches!(outcome, Outcome::Reset(PROTOCOL_ERROR)),
        "{outcome:?}"
    );
    // So is grpc-core's %-encoded path...
    let outcome = client
        .version(
            3,
            &request_block(&authority_literal(b"%2Frun%2Fberth%2Fberth.sock")),
        )
        .await;
    assert!(
        matches!(outcome, Outcome::Reset(PROTOCOL_ERROR)),
        "{outcome:?}"
    );
    // ...while the same request with a host name is served.
    version_ok(
        client
            .version(5, &request_block(&authority_literal(b"localhost")))
            .await,
    );
}

#[tokio::test]
async fn socket_path_authority_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let path = serve(dir.path(), true);
    let mut client = RawClient::connect(&path).await;
    version_ok(
        client
            .version(
                1,
                &request_block(&authority_literal(b"/run/berth/berth.sock")),
            )
            .await,
    );
    // grpc-core's %-encoded path.
    version_ok(
        client
            .version(
                3,
                &request_block(&authority_literal(b"%2Frun%2Fberth%2Fberth.sock")),
            )
            .await,
    );
    // Huffman-coded path.
    let mut huffman = vec![0x01, 0x80 | SOCK_HUFFMAN.len() as u8];
    huffman.extend(SOCK_HUFFMAN);
    assert_eq!(
        Decoder::new()
            .decode(&request_block(&huffman))
            .unwrap()
            .iter()
            .find(|(n, _)| n == b":authority")
            .unwrap()
            .1,
        b"/run/berth/berth.sock"
    );
    version_ok(client.version(5, &request_block(&huffman)).await);
    // A valid authority is kept working too.
    version_ok(
        client
            .version(7, &request_block(&authority_literal(b"localhost:1234")))
            .await,
    );
}

#[tokio::test]
async fn authority_from_the_clients_dynamic_table_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let path = serve(dir.path(), true);
    let mut client = RawClient::connect(&path).await;
    // Literal with incremental indexing: the client's encoder now has it at index 62...
    let mut indexed = vec![0x41];
    indexed.extend(lit(b"/run/berth/berth.sock"));
    version_ok(client.version(1, &request_block(&indexed)).await);
    // ...and the next requests on the connection only refer to it.
    version_ok(client.version(3, &request_block(&[0xbe])).await);
    version_ok(client.version(5, &request_block(&[0xbe])).await);
}

#[tokio::test]
async fn tonic_client_runs_concurrent_calls_through_the_adapter() {
    let dir = tempfile::tempdir().unwrap();
    let path = serve(dir.path(), true);
    let connect_path = path.clone();
    let channel = tonic::transport::Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_| {
            let path = connect_path.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    UnixStream::connect(path).await?,
                ))
            }
        }))
        .await
        .unwrap();
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..16 {
        let mut client = RuntimeServiceClient::new(channel.clone());
        calls.spawn(async move {
            let resp = client
                .version(VersionRequest {
                    version: format!("v{i}"),
                })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(resp.version, format!("v{i}"));
            assert_eq!(resp.runtime_name, "berth-test");
        });
    }
    while let Some(done) = calls.join_next().await {
        done.unwrap();
    }
    // An unimplemented method still answers with its gRPC status.
    let err = RuntimeServiceClient::new(channel)
        .status(StatusRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unimplemented);
}

#[tokio::test]
async fn malformed_header_blocks_close_the_connection() {
    let dir = tempfile::tempdir().unwrap();
    let path = serve(dir.path(), true);
    let mut huge_int = request_block(&[]);
    huge_int.extend([0x0f, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]);
    let mut bad_huffman = request_block(&[]);
    // 30 one bits: the EOS symbol, which must not appear in a string.
    bad_huffman.extend([0x01, 0x84, 0xff, 0xff, 0xff, 0xff]);
    let mut truncated = request_block(&authority_literal(b"/run/berth/berth.sock"));
    truncated.truncate(truncated.len() - 3);
    let mut cases: Vec<(&str, Vec<u8>)> = vec![
        ("truncated", frame(HEADERS, END_HEADERS, 1, &truncated)),
        ("bad huffman", frame(HEADERS, END_HEADERS, 1, &bad_huffman)),
        ("huge integer", frame(HEADERS, END_HEADERS, 1, &huge_int)),
        (
            "continuation without headers",
            frame(CONTINUATION, END_HEADERS, 1, &[0x82]),
        ),
    ];
    // Over the bound: a valid start, then CONTINUATIONs past 1 MiB.
    let mut over = frame(HEADERS, 0, 1, &request_block(&[]));
    for _ in 0..70 {
        over.extend(frame(CONTINUATION, 0, 1, &[0u8; 16_000]));
    }
    cases.push(("over the bound", over));
    for (what, bytes) in cases {
        let mut client = RawClient::connect(&path).await;
        // The adapter may close while we still write: that is the expected outcome too.
        let _ = client.sock.write_all(&bytes).await;
        let outcome = tokio::time::timeout(Duration::from_secs(30), client.wait(1))
            .await
            .expect("connection neither closed nor answered");
        assert!(matches!(outcome, Outcome::Closed), "{what}: {outcome:?}");
    }
    // The server survived all of that.
    let mut client = RawClient::connect(&path).await;
    version_ok(
        client
            .version(
                1,
                &request_block(&authority_literal(b"/run/berth/berth.sock")),
            )
            .await,
    );
}

/// grpc-core (here through Python's grpcio) sends the %-encoded socket path as `:authority`.
const GRPCIO_VERSION: &str = r#"
import sys, grpc
channel = grpc.insecure_channel("unix:" + sys.argv[1])
version = channel.unary_unary("/runtime.v1.RuntimeService/Version")
try:
    sys.stdout.write(version(bytes.fromhex(sys.argv[2]), timeout=20).hex())
except grpc.RpcError as e:
    sys.stderr.write(f"{e.code()}: {e.details()}")
    sys.exit(3)
"#;

#[tokio::test]
async fn grpcio_client_is_served() {
    let has_grpcio = std::process::Command::new("python3")
        .args(["-c", "import grpc"])
        .output()
        .is_ok_and(|out| out.status.success());
    if !has_grpcio {
        eprintln!("skipped: python3 has no grpc module (pip install grpcio)");
        return;
    }
    let request = hex::encode(
        VersionRequest {
            version: "v1".into(),
        }
        .encode_to_vec(),
    );
    for fix in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let path = serve(dir.path(), fix);
        let out = tokio::process::Command::new("python3")
            .args(["-c", GRPCIO_VERSION])
            .arg(&path)
            .arg(&request)
            .output()
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !fix {
            // Without the adapter h2 resets the stream: the call fails.
            assert_eq!(out.status.code(), Some(3), "{stderr}");
            assert!(stderr.contains("RST_STREAM"), "{stderr}");
            continue;
        }
        assert!(out.status.success(), "{stderr}");
        let body = hex::decode(String::from_utf8(out.stdout).unwrap().trim()).unwrap();
        let resp = VersionResponse::decode(body.as_slice()).unwrap();
        assert_eq!(resp.version, "v1");
        assert_eq!(resp.runtime_name, "berth-test");
    }
}

/// A grpc-go client dialing as kubelet and crictl do: the socket path is the
/// target (passthrough), a unix dialer, so `:authority` is the path.
const GRPC_GO_VERSION: &str = r#"package main

import (
	"context"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"time"

	"google.golang.org/grpc"
)

// raw passes the request and response bytes through unchanged.
type raw struct{}

func (raw) Marshal(v interface{}) ([]byte, error) { return *(v.(*[]byte)), nil }
func (raw) Unmarshal(b []byte, v interface{}) error {
	*(v.(*[]byte)) = append([]byte(nil), b...)
	return nil
}
func (raw) Name() string { return "proto" }

func main() {
	sock, reqHex := os.Args[1], os.Args[2]
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := grpc.DialContext(ctx, sock, grpc.WithInsecure(), grpc.WithBlock(),
		grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", addr)
		}))
	if err != nil {
		fmt.Fprintln(os.Stderr, "dial:", err)
		os.Exit(2)
	}
	defer conn.Close()
	req, _ := hex.DecodeString(reqHex)
	var resp []byte
	err = conn.Invoke(ctx, "/runtime.v1.RuntimeService/Version", &req, &resp, grpc.ForceCodec(raw{}))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(3)
	}
	fmt.Println(hex.EncodeToString(resp))
}
"#;

/// Debian's grpc-go sources (golang-google-grpc-dev), built in GOPATH mode:
/// no module proxy needed.
const GOPATH: &str = "/usr/share/gocode";

#[tokio::test]
async fn grpc_go_client_is_served() {
    let has_go = std::process::Command::new("go")
        .arg("version")
        .output()
        .is_ok_and(|out| out.status.success());
    if !has_go
        || !Path::new(GOPATH)
            .join("src/google.golang.org/grpc")
            .is_dir()
    {
        eprintln!("skipped: needs Debian's golang-go and golang-google-grpc-dev");
        return;
    }
    let build = tempfile::tempdir().unwrap();
    std::fs::write(build.path().join("main.go"), GRPC_GO_VERSION).unwrap();
    let client = build.path().join("client");
    let out = tokio::process::Command::new("go")
        .args(["build", "-o"])
        .arg(&client)
        .arg("main.go")
        .current_dir(build.path())
        .env("GO111MODULE", "off")
        .env("GOPATH", GOPATH)
        .env("GOCACHE", build.path().join("cache"))
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "go build: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let request = hex::encode(
        VersionRequest {
            version: "v1".into(),
        }
        .encode_to_vec(),
    );
    for fix in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let path = serve(dir.path(), fix);
        let out = tokio::process::Command::new(&client)
            .arg(&path)
            .arg(&request)
            .output()
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !fix {
            // The client really sends the path: unadapted, h2 refuses it.
            assert_eq!(out.status.code(), Some(3), "{stderr}");
            continue;
        }
        assert!(out.status.success(), "{stderr}");
        let body = hex::decode(String::from_utf8(out.stdout).unwrap().trim()).unwrap();
        let resp = VersionResponse::decode(body.as_slice()).unwrap();
        assert_eq!(resp.version, "v1");
        assert_eq!(resp.runtime_name, "berth-test");
    }
}
