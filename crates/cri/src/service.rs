//! The gRPC services: each RPC validates, takes the pod's lock when it
//! changes a pod, and runs the work on a blocking thread.

use crate::daemon::Daemon;
use crate::error::{invalid, CriError, Result};
use crate::list_stream::{self, ResponseStream};
use crate::model::CtrState;
use crate::views;
use berth_cri_api::v1 as cri;
use berth_cri_api::v1::image_service_server::ImageService;
use berth_cri_api::v1::runtime_service_server::RuntimeService;
use std::pin::Pin;
use std::sync::Arc;
use tonic::{Request, Response, Status};

pub const RUNTIME_NAME: &str = "berth";
pub const RUNTIME_VERSION: &str = env!("CARGO_PKG_VERSION");

#[derive(Clone)]
pub struct Service {
    pub d: Arc<Daemon>,
}

impl Service {
    /// Runs `f` on a blocking thread, under `pod`'s lock if given (the
    /// server's layer meters every call, this one included).
    async fn run<T: Send + 'static>(
        &self,
        op: &'static str,
        pod: Option<String>,
        f: impl FnOnce(&Daemon) -> Result<T> + Send + 'static,
    ) -> std::result::Result<T, Status> {
        let lock = pod.filter(|p| !p.is_empty()).map(|p| self.d.pod_lock(&p));
        let _g = match &lock {
            Some(l) => Some(l.lock().await),
            None => None,
        };
        let d = self.d.clone();
        let r = tokio::task::spawn_blocking(move || f(&d))
            .await
            .unwrap_or_else(|e| Err(CriError::Internal(format!("{op}: {e}"))));
        // berthd's own failures are worth an operator's look; a client's
        // mistakes (bad argument, unknown id) are routine.
        match &r {
            Err(e @ CriError::Internal(_)) => tracing::warn!(op, "error: {e}"),
            Err(e) => tracing::info!(op, "error: {e}"),
            Ok(_) => {}
        }
        r.map_err(Status::from)
    }

    /// The pod a container belongs to, for locking (empty if unknown).
    fn pod_of(&self, container_id: &str) -> String {
        self.d
            .resolve_container(container_id)
            .ok()
            .flatten()
            .map(|c| c.pod_id)
            .unwrap_or_default()
    }

    fn pod_id(&self, id: &str) -> String {
        self.d
            .resolve_pod(id)
            .ok()
            .flatten()
            .map(|p| p.id)
            .unwrap_or_default()
    }
}

fn required(field: &str, v: &str) -> std::result::Result<(), Status> {
    if v.is_empty() {
        return Err(invalid(field, "is required").into());
    }
    Ok(())
}

type EventStream = Pin<
    Box<
        dyn tokio_stream::Stream<Item = std::result::Result<cri::ContainerEventResponse, Status>>
            + Send,
    >,
>;

#[tonic::async_trait]
impl RuntimeService for Service {
    async fn version(
        &self,
        _r: Request<cri::VersionRequest>,
    ) -> std::result::Result<Response<cri::VersionResponse>, Status> {
        Ok(Response::new(cri::VersionResponse {
            version: "0.1.0".into(),
            runtime_name: RUNTIME_NAME.into(),
            runtime_version: RUNTIME_VERSION.into(),
            runtime_api_version: "v1".into(),
        }))
    }

    async fn run_pod_sandbox(
        &self,
        r: Request<cri::RunPodSandboxRequest>,
    ) -> std::result::Result<Response<cri::RunPodSandboxResponse>, Status> {
        let r = r.into_inner();
        let cfg = r
            .config
            .ok_or_else(|| Status::from(invalid("config", "is required")))?;
        let handler = r.runtime_handler;
        let id = self
            .run("RunPodSandbox", None, move |d| d.run_pod(cfg, handler))
            .await?;
        Ok(Response::new(cri::RunPodSandboxResponse {
            pod_sandbox_id: id,
        }))
    }

    async fn stop_pod_sandbox(
        &self,
        r: Request<cri::StopPodSandboxRequest>,
    ) -> std::result::Result<Response<cri::StopPodSandboxResponse>, Status> {
        let id = r.into_inner().pod_sandbox_id;
        required("pod_sandbox_id", &id)?;
        let pod = self.pod_id(&id);
        self.run("StopPodSandbox", Some(pod), move |d| d.stop_pod(&id))
            .await?;
        Ok(Response::new(cri::StopPodSandboxResponse {}))
    }

    async fn remove_pod_sandbox(
        &self,
        r: Request<cri::RemovePodSandboxRequest>,
    ) -> std::result::Result<Response<cri::RemovePodSandboxResponse>, Status> {
        let id = r.into_inner().pod_sandbox_id;
        required("pod_sandbox_id", &id)?;
        let pod = self.pod_id(&id);
        let p2 = pod.clone();
        self.run("RemovePodSandbox", Some(pod), move |d| d.remove_pod(&id))
            .await?;
        self.d.forget_lock(&p2);
        Ok(Response::new(cri::RemovePodSandboxResponse {}))
    }

    async fn pod_sandbox_status(
        &self,
        r: Request<cri::PodSandboxStatusRequest>,
    ) -> std::result::Result<Response<cri::PodSandboxStatusResponse>, Status> {
        let r = r.into_inner();
        required("pod_sandbox_id", &r.pod_sandbox_id)?;
        let verbose = r.verbose;
        let resp = self
            .run("PodSandboxStatus", None, move |d| {
                let p = d.find_pod(&r.pod_sandbox_id)?;
                let mut info = std::collections::HashMap::new();
                if verbose {
                    let v = serde_json::json!({
                        "netns": p.netns, "ipcns": p.ipcns, "utsns": p.utsns,
                        "cgroupParent": p.cgroup_parent, "dir": p.dir, "config": p.config,
                    });
                    info.insert("info".to_string(), v.to_string());
                }
                let containers_statuses = d
                    .containers()?
                    .into_iter()
                    .filter(|c| c.pod_id == p.id && c.state != CtrState::Creating)
                    .map(|c| d.refresh(&c).map(|c| views::container_status(&c)))
                    .collect::<Result<Vec<_>>>()?;
                Ok(cri::PodSandboxStatusResponse {
                    status: Some(views::pod_status(&p)),
                    info,
                    containers_statuses,
                    timestamp: crate::model::now_ns(),
                })
            })
            .await?;
        Ok(Response::new(resp))
    }

    async fn list_pod_sandbox(
        &self,
        r: Request<cri::ListPodSandboxRequest>,
    ) -> std::result::Result<Response<cri::ListPodSandboxResponse>, Status> {
        let f = r.into_inner().filter;
        let items = self
            .run("ListPodSandbox", None, move |d| d.list_pods(f))
            .await?;
        Ok(Response::new(cri::ListPodSandboxResponse { items }))
    }

    async fn create_container(
        &self,
        r: Request<cri::CreateContainerRequest>,
    ) -> std::result::Result<Response<cri::CreateContainerResponse>, Status> {
        let r = r.into_inner();
        required("pod_sandbox_id", &r.pod_sandbox_id)?;
        let cfg = r
            .config
            .ok_or_else(|| Status::from(invalid("config", "is required")))?;
        let pod = self.pod_id(&r.pod_sandbox_id);
        let sb = r.sandbox_config;
        let pid = r.pod_sandbox_id;
        let id = self
            .run("CreateContainer", Some(pod), move |d| {
                d.create_container(&pid, cfg, sb)
            })
            .await?;
        Ok(Response::new(cri::CreateContainerResponse {
            container_id: id,
        }))
    }

    async fn start_container(
        &self,
        r: Request<cri::StartContainerRequest>,
    ) -> std::result::Result<Response<cri::StartContainerResponse>, Status> {
        let id = r.into_inner().container_id;
        required("container_id", &id)?;
        let pod = self.pod_of(&id);
        self.run("StartContainer", Some(pod), move |d| d.start_container(&id))
            .await?;
        Ok(Response::new(cri::StartContainerResponse {}))
    }

    async fn stop_container(
        &self,
        r: Request<cri::StopContainerRequest>,
    ) -> std::result::Result<Response<cri::StopContainerResponse>, Status> {
        let r = r.into_inner();
        required("container_id", &r.container_id)?;
        if r.timeout < 0 {
            return Err(invalid("timeout", "must not be negative").into());
        }
        let pod = self.pod_of(&r.container_id);
        self.run("StopContainer", Some(pod), move |d| {
            d.stop_container(&r.container_id, r.timeout)
        })
        .await?;
        Ok(Response::new(cri::StopContainerResponse {}))
    }

    async fn remove_container(
        &self,
        r: Request<cri::RemoveContainerRequest>,
    ) -> std::result::Result<Response<cri::RemoveContainerResponse>, Status> {
        let id = r.into_inner().container_id;
        required("container_id", &id)?;
        let pod = self.pod_of(&id);
        self.run("RemoveContainer", Some(pod), move |d| {
            d.remove_container(&id)
        })
        .await?;
        Ok(Response::new(cri::RemoveContainerResponse {}))
    }

    async fn list_containers(
        &self,
        r: Request<cri::ListContainersRequest>,
    ) -> std::result::Result<Response<cri::ListContainersResponse>, Status> {
        let f = r.into_inner().filter;
        let containers = self
            .run("ListContainers", None, move |d| d.list_containers(f))
            .await?;
        Ok(Response::new(cri::ListContainersResponse { containers }))
    }

    async fn container_status(
        &self,
        r: Request<cri::ContainerStatusRequest>,
    ) -> std::result::Result<Response<cri::ContainerStatusResponse>, Status> {
        let r = r.into_inner();
        required("container_id", &r.container_id)?;
        let verbose = r.verbose;
        let resp = self
            .run("ContainerStatus", None, move |d| {
                let c = d.find_container(&r.container_id)?;
                let c = d.refresh(&c)?;
                let mut info = std::collections::HashMap::new();
                if verbose {
                    let pid = d.oci.load(&c.id).map(|s| s.pid).unwrap_or(0);
                    let v = serde_json::json!({"pid": pid, "bundle": c.bundle, "sandboxID": c.pod_id, "config": c.config});
                    info.insert("info".to_string(), v.to_string());
                }
                Ok(cri::ContainerStatusResponse {
                    status: Some(views::container_status(&c)),
                    info,
                })
            })
            .await?;
        Ok(Response::new(resp))
    }

    async fn update_container_resources(
        &self,
        r: Request<cri::UpdateContainerResourcesRequest>,
    ) -> std::result::Result<Response<cri::UpdateContainerResourcesResponse>, Status> {
        let r = r.into_inner();
        required("container_id", &r.container_id)?;
        let pod = self.pod_of(&r.container_id);
        self.run("UpdateContainerResources", Some(pod), move |d| {
            let c = d.find_container(&r.container_id)?;
            let l = r.linux.ok_or_else(|| invalid("linux", "is required"))?;
            let old = c.config.linux.as_ref().and_then(|x| x.resources.as_ref());
            // Checked whole before anything is written: a bad value leaves
            // the old limits in place.
            crate::resources::validate(
                &l,
                old,
                berth_cgroups::detect_mode(std::path::Path::new("/sys/fs/cgroup")),
                std::path::Path::new("/sys/kernel/mm/hugepages"),
            )?;
            let res = crate::resources::to_oci(&l).map_err(|m| invalid("linux", m))?;
            d.handler_of_pod(&c.pod_id)
                .update(d, &c.id, &res)
                .map_err(CriError::Precondition)?;
            let merged = crate::resources::merge(old, &l);
            // On the stored record: an exit folded in meanwhile is kept.
            d.store.update(
                crate::store::Kind::Container,
                &c.id,
                |mut cur: crate::model::ContainerRecord| {
                    cur.config
                        .linux
                        .get_or_insert_with(Default::default)
                        .resources = Some(merged);
                    Some(cur)
                },
            )?;
            Ok(())
        })
        .await?;
        Ok(Response::new(cri::UpdateContainerResourcesResponse {}))
    }

    async fn reopen_container_log(
        &self,
        r: Request<cri::ReopenContainerLogRequest>,
    ) -> std::result::Result<Response<cri::ReopenContainerLogResponse>, Status> {
        let id = r.into_inner().container_id;
        required("container_id", &id)?;
        self.run("ReopenContainerLog", None, move |d| d.reopen_log(&id))
            .await?;
        Ok(Response::new(cri::ReopenContainerLogResponse {}))
    }

    async fn exec_sync(
        &self,
        r: Request<cri::ExecSyncRequest>,
    ) -> std::result::Result<Response<cri::ExecSyncResponse>, Status> {
        let r = r.into_inner();
        required("container_id", &r.container_id)?;
        let out = self
            .run("ExecSync", None, move |d| {
                d.exec_sync(&r.container_id, r.cmd, r.timeout)?
                    .map_err(|t| CriError::DeadlineExceeded(t.to_string()))
            })
            .await?;
        Ok(Response::new(cri::ExecSyncResponse {
            stdout: out.stdout,
            stderr: out.stderr,
            exit_code: out.exit_code,
        }))
    }

    async fn exec(
        &self,
        r: Request<cri::ExecRequest>,
    ) -> std::result::Result<Response<cri::ExecResponse>, Status> {
        let r = r.into_inner();
        required("container_id", &r.container_id)?;
        if r.cmd.is_empty() {
            return Err(invalid("cmd", "is required").into());
        }
        crate::exec_sync::check_streams(r.tty, r.stdin, r.stdout, r.stderr)?;
        let c = self.d.find_container(&r.container_id)?;
        let url = self.stream_url(crate::StreamRequest::Exec {
            container_id: c.id,
            cmd: r.cmd,
            tty: r.tty,
            stdin: r.stdin,
            stdout: r.stdout,
            stderr: r.stderr,
        })?;
        Ok(Response::new(cri::ExecResponse { url }))
    }

    async fn attach(
        &self,
        r: Request<cri::AttachRequest>,
    ) -> std::result::Result<Response<cri::AttachResponse>, Status> {
        let r = r.into_inner();
        required("container_id", &r.container_id)?;
        crate::exec_sync::check_streams(r.tty, r.stdin, r.stdout, r.stderr)?;
        let c = self.d.find_container(&r.container_id)?;
        if r.stdin && !c.config.stdin {
            return Err(invalid("stdin", "the container was created without stdin").into());
        }
        let url = self.stream_url(crate::StreamRequest::Attach {
            container_id: c.id,
            tty: r.tty,
            stdin: r.stdin,
            stdout: r.stdout,
            stderr: r.stderr,
        })?;
        Ok(Response::new(cri::AttachResponse { url }))
    }

    async fn port_forward(
        &self,
        r: Request<cri::PortForwardRequest>,
    ) -> std::result::Result<Response<cri::PortForwardResponse>, Status> {
        let r = r.into_inner();
        required("pod_sandbox_id", &r.pod_sandbox_id)?;
        let p = self.d.find_pod(&r.pod_sandbox_id)?;
        for (i, port) in r.port.iter().enumerate() {
            if !(1..=65535).contains(port) {
                return Err(invalid(format!("port[{i}]"), "must be 1-65535").into());
            }
        }
        let url = self.stream_url(crate::StreamRequest::PortForward {
            pod_id: p.id,
            ports: r.port.iter().map(|p| *p as u16).collect(),
        })?;
        Ok(Response::new(cri::PortForwardResponse { url }))
    }

    async fn container_stats(
        &self,
        r: Request<cri::ContainerStatsRequest>,
    ) -> std::result::Result<Response<cri::ContainerStatsResponse>, Status> {
        let id = r.into_inner().container_id;
        required("container_id", &id)?;
        let stats = self
            .run("ContainerStats", None, move |d| {
                let c = d.find_container(&id)?;
                Ok(d.container_stats(&c))
            })
            .await?;
        Ok(Response::new(cri::ContainerStatsResponse {
            stats: Some(stats),
        }))
    }

    async fn list_container_stats(
        &self,
        r: Request<cri::ListContainerStatsRequest>,
    ) -> std::result::Result<Response<cri::ListContainerStatsResponse>, Status> {
        let f = r.into_inner().filter.unwrap_or_default();
        let stats = self
            .run("ListContainerStats", None, move |d| {
                running_container_stats(d, f)
            })
            .await?;
        Ok(Response::new(cri::ListContainerStatsResponse { stats }))
    }

    async fn pod_sandbox_stats(
        &self,
        r: Request<cri::PodSandboxStatsRequest>,
    ) -> std::result::Result<Response<cri::PodSandboxStatsResponse>, Status> {
        let id = r.into_inner().pod_sandbox_id;
        required("pod_sandbox_id", &id)?;
        let stats = self
            .run("PodSandboxStats", None, move |d| {
                let p = d.find_pod(&id)?;
                d.pod_stats(&p)
            })
            .await?;
        Ok(Response::new(cri::PodSandboxStatsResponse {
            stats: Some(stats),
        }))
    }

    async fn list_pod_sandbox_stats(
        &self,
        r: Request<cri::ListPodSandboxStatsRequest>,
    ) -> std::result::Result<Response<cri::ListPodSandboxStatsResponse>, Status> {
        let f = r.into_inner().filter.unwrap_or_default();
        let stats = self
            .run("ListPodSandboxStats", None, move |d| ready_pod_stats(d, f))
            .await?;
        Ok(Response::new(cri::ListPodSandboxStatsResponse { stats }))
    }

    async fn update_runtime_config(
        &self,
        r: Request<cri::UpdateRuntimeConfigRequest>,
    ) -> std::result::Result<Response<cri::UpdateRuntimeConfigResponse>, Status> {
        // The pod CIDR is the CNI config's business here; accepted and logged.
        if let Some(cidr) = r
            .into_inner()
            .runtime_config
            .and_then(|c| c.network_config)
            .map(|n| n.pod_cidr)
        {
            tracing::info!(pod_cidr = %cidr, "UpdateRuntimeConfig");
        }
        Ok(Response::new(cri::UpdateRuntimeConfigResponse {}))
    }

    async fn status(
        &self,
        r: Request<cri::StatusRequest>,
    ) -> std::result::Result<Response<cri::StatusResponse>, Status> {
        let verbose = r.into_inner().verbose;
        let d = self.d.clone();
        let net = tokio::task::spawn_blocking(move || d.cni.status())
            .await
            .unwrap_or_else(|e| Err(e.to_string()));
        let (net_ok, reason, message) = match net {
            Ok(()) => (true, String::new(), String::new()),
            Err(m) => (false, "NetworkPluginNotReady".to_string(), m),
        };
        let conditions = vec![
            cri::RuntimeCondition {
                r#type: "RuntimeReady".into(),
                status: true,
                reason: String::new(),
                message: String::new(),
            },
            cri::RuntimeCondition {
                r#type: "NetworkReady".into(),
                status: net_ok,
                reason,
                message,
            },
        ];
        let d = &self.d;
        let handler_entry = |name: &str, h: &str| cri::RuntimeHandler {
            name: name.to_string(),
            features: Some(d.handler(h).features()),
        };
        let mut runtime_handlers = vec![
            handler_entry("", &d.cfg.runtime.default_handler),
            handler_entry("berth", "berth"),
        ];
        for name in self.d.cfg.runtime.handlers.keys() {
            runtime_handlers.push(handler_entry(name, name));
        }
        let mut info = std::collections::HashMap::new();
        // Accepted in requests, not enforced: there is no AppArmor or
        // SELinux on the nodes berth targets yet.
        info.insert(
            "unsupported".to_string(),
            r#"{"apparmor":"profiles are accepted and ignored","selinux":"options are accepted and ignored"}"#.to_string(),
        );
        if verbose {
            info.insert(
                "config".to_string(),
                serde_json::to_string(&self.d.cfg).unwrap_or_default(),
            );
        }
        Ok(Response::new(cri::StatusResponse {
            status: Some(cri::RuntimeStatus { conditions }),
            info,
            runtime_handlers,
            features: Some(cri::RuntimeFeatures {
                supplemental_groups_policy: true,
                // A pod in its own user namespace cannot use the node's network.
                user_namespaces_host_network: false,
            }),
        }))
    }

    async fn checkpoint_container(
        &self,
        _r: Request<cri::CheckpointContainerRequest>,
    ) -> std::result::Result<Response<cri::CheckpointContainerResponse>, Status> {
        Err(Status::unimplemented(
            "CheckpointContainer is not supported by berth",
        ))
    }

    type GetContainerEventsStream = EventStream;

    async fn get_container_events(
        &self,
        _r: Request<cri::GetEventsRequest>,
    ) -> std::result::Result<Response<Self::GetContainerEventsStream>, Status> {
        let rx = self.d.events.subscribe();
        let s = tokio_stream::wrappers::BroadcastStream::new(rx);
        let s = tokio_stream::StreamExt::filter_map(s, |e| e.ok().map(Ok));
        Ok(Response::new(Box::pin(s)))
    }

    async fn list_metric_descriptors(
        &self,
        _r: Request<cri::ListMetricDescriptorsRequest>,
    ) -> std::result::Result<Response<cri::ListMetricDescriptorsResponse>, Status> {
        Ok(Response::new(cri::ListMetricDescriptorsResponse {
            descriptors: crate::pod_metrics::descriptors(),
        }))
    }

    async fn list_pod_sandbox_metrics(
        &self,
        _r: Request<cri::ListPodSandboxMetricsRequest>,
    ) -> std::result::Result<Response<cri::ListPodSandboxMetricsResponse>, Status> {
        let pod_metrics = self
            .run("ListPodSandboxMetrics", None, ready_pod_metrics)
            .await?;
        Ok(Response::new(cri::ListPodSandboxMetricsResponse {
            pod_metrics,
        }))
    }

    async fn runtime_config(
        &self,
        _r: Request<cri::RuntimeConfigRequest>,
    ) -> std::result::Result<Response<cri::RuntimeConfigResponse>, Status> {
        Ok(Response::new(cri::RuntimeConfigResponse {
            linux: Some(cri::LinuxRuntimeConfiguration {
                cgroup_driver: cri::CgroupDriver::Cgroupfs as i32,
            }),
        }))
    }

    async fn update_pod_sandbox_resources(
        &self,
        r: Request<cri::UpdatePodSandboxResourcesRequest>,
    ) -> std::result::Result<Response<cri::UpdatePodSandboxResourcesResponse>, Status> {
        let r = r.into_inner();
        required("pod_sandbox_id", &r.pod_sandbox_id)?;
        let pod = self.pod_id(&r.pod_sandbox_id);
        self.run("UpdatePodSandboxResources", Some(pod), move |d| {
            d.update_pod_resources(&r.pod_sandbox_id, r.overhead, r.resources)
        })
        .await?;
        Ok(Response::new(cri::UpdatePodSandboxResourcesResponse {}))
    }

    type StreamPodSandboxesStream = ResponseStream<cri::StreamPodSandboxesResponse>;
    async fn stream_pod_sandboxes(
        &self,
        r: Request<cri::StreamPodSandboxesRequest>,
    ) -> std::result::Result<Response<Self::StreamPodSandboxesStream>, Status> {
        let f = r.into_inner().filter;
        let items = self
            .run("StreamPodSandboxes", None, move |d| d.list_pods(f))
            .await?;
        Ok(Response::new(list_stream::stream(items, |pod_sandboxes| {
            cri::StreamPodSandboxesResponse { pod_sandboxes }
        })))
    }

    type StreamContainersStream = ResponseStream<cri::StreamContainersResponse>;
    async fn stream_containers(
        &self,
        r: Request<cri::StreamContainersRequest>,
    ) -> std::result::Result<Response<Self::StreamContainersStream>, Status> {
        // A page of the store at a time: 20,000 containers never sit in
        // memory at once.
        let f = r.into_inner().filter;
        Ok(Response::new(list_stream::from_blocking(
            self.d.clone(),
            move |d, send| {
                d.each_container_page(f, |page| {
                    let items = page.iter().map(views::cri_container).collect();
                    list_stream::chunks(items)
                        .into_iter()
                        .all(|containers| send(cri::StreamContainersResponse { containers }))
                })
            },
        )))
    }

    type StreamContainerStatsStream = ResponseStream<cri::StreamContainerStatsResponse>;
    async fn stream_container_stats(
        &self,
        r: Request<cri::StreamContainerStatsRequest>,
    ) -> std::result::Result<Response<Self::StreamContainerStatsStream>, Status> {
        let f = r.into_inner().filter.unwrap_or_default();
        Ok(Response::new(list_stream::from_blocking(
            self.d.clone(),
            move |d, send| {
                d.each_container_page(Some(running(f)), |page| {
                    let items = page.iter().map(|c| d.container_stats(c)).collect();
                    list_stream::chunks(items)
                        .into_iter()
                        .all(|container_stats| {
                            send(cri::StreamContainerStatsResponse { container_stats })
                        })
                })
            },
        )))
    }

    type StreamPodSandboxStatsStream = ResponseStream<cri::StreamPodSandboxStatsResponse>;
    async fn stream_pod_sandbox_stats(
        &self,
        r: Request<cri::StreamPodSandboxStatsRequest>,
    ) -> std::result::Result<Response<Self::StreamPodSandboxStatsStream>, Status> {
        let f = r.into_inner().filter.unwrap_or_default();
        let items = self
            .run("StreamPodSandboxStats", None, move |d| {
                ready_pod_stats(d, f)
            })
            .await?;
        Ok(Response::new(list_stream::stream(
            items,
            |pod_sandbox_stats| cri::StreamPodSandboxStatsResponse { pod_sandbox_stats },
        )))
    }

    type StreamPodSandboxMetricsStream = ResponseStream<cri::StreamPodSandboxMetricsResponse>;
    async fn stream_pod_sandbox_metrics(
        &self,
        _r: Request<cri::StreamPodSandboxMetricsRequest>,
    ) -> std::result::Result<Response<Self::StreamPodSandboxMetricsStream>, Status> {
        let items = self
            .run("StreamPodSandboxMetrics", None, ready_pod_metrics)
            .await?;
        Ok(Response::new(list_stream::stream(
            items,
            |pod_sandbox_metrics| cri::StreamPodSandboxMetricsResponse {
                pod_sandbox_metrics,
            },
        )))
    }
}

/// Stats of the running containers that `f` selects (ListContainerStats).
fn running_container_stats(
    d: &Daemon,
    f: cri::ContainerStatsFilter,
) -> Result<Vec<cri::ContainerStats>> {
    Ok(d.filter_containers(Some(running(f)))?
        .iter()
        .map(|c| d.container_stats(c))
        .collect())
}

/// The ListContainers filter of a stats filter: running containers only.
fn running(f: cri::ContainerStatsFilter) -> cri::ContainerFilter {
    cri::ContainerFilter {
        id: f.id,
        pod_sandbox_id: f.pod_sandbox_id,
        label_selector: f.label_selector,
        state: Some(cri::ContainerStateValue {
            state: cri::ContainerState::ContainerRunning as i32,
        }),
    }
}

/// Stats of the ready pods that `f` selects.
fn ready_pod_stats(d: &Daemon, f: cri::PodSandboxStatsFilter) -> Result<Vec<cri::PodSandboxStats>> {
    let filter = cri::PodSandboxFilter {
        id: f.id,
        label_selector: f.label_selector,
        state: Some(cri::PodSandboxStateValue {
            state: cri::PodSandboxState::SandboxReady as i32,
        }),
    };
    let all = d.containers()?;
    d.filter_pods(Some(filter))?
        .iter()
        .map(|p| d.pod_stats_among(p, &all))
        .collect()
}

/// Metrics of every ready pod.
fn ready_pod_metrics(d: &Daemon) -> Result<Vec<cri::PodSandboxMetrics>> {
    let ready = cri::PodSandboxFilter {
        state: Some(cri::PodSandboxStateValue {
            state: cri::PodSandboxState::SandboxReady as i32,
        }),
        ..Default::default()
    };
    let all = d.containers()?;
    d.filter_pods(Some(ready))?
        .iter()
        .map(|p| d.pod_metrics(p, &all))
        .collect()
}

impl Service {
    fn stream_url(&self, req: crate::StreamRequest) -> std::result::Result<String, Status> {
        let f = self
            .d
            .stream_url
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        match f.and_then(|f| f(req)) {
            Some(u) => Ok(u),
            None => Err(Status::unavailable("the streaming server is not running")),
        }
    }
}

#[tonic::async_trait]
impl ImageService for Service {
    async fn list_images(
        &self,
        r: Request<cri::ListImagesRequest>,
    ) -> std::result::Result<Response<cri::ListImagesResponse>, Status> {
        let f = r.into_inner().filter;
        let images = self
            .run("ListImages", None, move |d| d.list_images(f))
            .await?;
        Ok(Response::new(cri::ListImagesResponse { images }))
    }

    async fn image_status(
        &self,
        r: Request<cri::ImageStatusRequest>,
    ) -> std::result::Result<Response<cri::ImageStatusResponse>, Status> {
        let r = r.into_inner();
        let resp = self
            .run("ImageStatus", None, move |d| {
                d.image_status(r.image, r.verbose)
            })
            .await?;
        Ok(Response::new(resp))
    }

    async fn pull_image(
        &self,
        r: Request<cri::PullImageRequest>,
    ) -> std::result::Result<Response<cri::PullImageResponse>, Status> {
        let r = r.into_inner();
        let image_ref = self
            .run("PullImage", None, move |d| d.pull_image(r.image, r.auth))
            .await?;
        Ok(Response::new(cri::PullImageResponse { image_ref }))
    }

    async fn remove_image(
        &self,
        r: Request<cri::RemoveImageRequest>,
    ) -> std::result::Result<Response<cri::RemoveImageResponse>, Status> {
        let r = r.into_inner();
        self.run("RemoveImage", None, move |d| d.remove_image(r.image))
            .await?;
        Ok(Response::new(cri::RemoveImageResponse {}))
    }

    async fn image_fs_info(
        &self,
        _r: Request<cri::ImageFsInfoRequest>,
    ) -> std::result::Result<Response<cri::ImageFsInfoResponse>, Status> {
        let resp = self.run("ImageFsInfo", None, |d| d.image_fs_info()).await?;
        Ok(Response::new(resp))
    }

    type StreamImagesStream = ResponseStream<cri::StreamImagesResponse>;
    async fn stream_images(
        &self,
        r: Request<cri::StreamImagesRequest>,
    ) -> std::result::Result<Response<Self::StreamImagesStream>, Status> {
        let f = r.into_inner().filter;
        let items = self
            .run("StreamImages", None, move |d| d.list_images(f))
            .await?;
        Ok(Response::new(list_stream::stream(items, |images| {
            cri::StreamImagesResponse { images }
        })))
    }
}
