//! A kubelet's view of containerd: the CRI image and runtime services over
//! gRPC (the vendored `runtime.v1` API, tests/proto), called the way kubelet
//! calls them, synchronously for tests.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use tonic::transport::Channel;

/// The generated CRI API.
#[allow(missing_docs, clippy::all, rustdoc::all)]
pub mod api {
    tonic::include_proto!("runtime.v1");
}

use api::image_service_client::ImageServiceClient;
use api::runtime_service_client::RuntimeServiceClient;

/// A connection to a CRI endpoint (containerd's socket).
pub struct Cri {
    rt: tokio::runtime::Runtime,
    images: ImageServiceClient<Channel>,
    runtime: RuntimeServiceClient<Channel>,
}

/// A pod sandbox kubelet started, and its config (containers need it).
pub struct Pod {
    /// The sandbox id.
    pub id: String,
    /// Its config.
    pub config: api::PodSandboxConfig,
}

impl Cri {
    /// Connects to the CRI endpoint at `socket`.
    pub fn connect(socket: &Path) -> Result<Cri> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let channel = rt
            .block_on(containerd_client::connect(socket))
            .with_context(|| format!("connecting to {}", socket.display()))?;
        Ok(Cri {
            rt,
            images: ImageServiceClient::new(channel.clone()),
            runtime: RuntimeServiceClient::new(channel),
        })
    }

    /// `PullImage`: returns the image's reference (its config digest).
    pub fn pull(&mut self, image: &str) -> Result<String> {
        let req = api::PullImageRequest {
            image: Some(spec(image)),
            ..Default::default()
        };
        let resp = self
            .rt
            .block_on(self.images.pull_image(req))
            .with_context(|| format!("PullImage {image}"))?;
        Ok(resp.into_inner().image_ref)
    }

    /// `ImageStatus`: the image, if the node has it.
    pub fn image(&mut self, image: &str) -> Result<Option<api::Image>> {
        let req = api::ImageStatusRequest {
            image: Some(spec(image)),
            verbose: false,
        };
        let resp = self.rt.block_on(self.images.image_status(req))?;
        Ok(resp.into_inner().image)
    }

    /// `RemoveImage`, as kubelet's image garbage collection does.
    pub fn remove_image(&mut self, image: &str) -> Result<()> {
        let req = api::RemoveImageRequest {
            image: Some(spec(image)),
        };
        self.rt.block_on(self.images.remove_image(req))?;
        Ok(())
    }

    /// `RunPodSandbox` of a host-network pod named `name`.
    pub fn run_pod(&mut self, name: &str) -> Result<Pod> {
        let config = api::PodSandboxConfig {
            metadata: Some(api::PodSandboxMetadata {
                name: name.to_string(),
                uid: format!("{name}-uid"),
                namespace: "d4c-test".to_string(),
                attempt: 0,
            }),
            linux: Some(api::LinuxPodSandboxConfig {
                security_context: Some(api::LinuxSandboxSecurityContext {
                    namespace_options: host_network(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let req = api::RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: String::new(),
        };
        let resp = self
            .rt
            .block_on(self.runtime.run_pod_sandbox(req))
            .with_context(|| format!("RunPodSandbox {name}"))?;
        Ok(Pod {
            id: resp.into_inner().pod_sandbox_id,
            config,
        })
    }

    /// `CreateContainer` and `StartContainer`: `command` from `image` in `pod`.
    pub fn start_container(
        &mut self,
        pod: &Pod,
        name: &str,
        image: &str,
        command: &[&str],
    ) -> Result<String> {
        let config = api::ContainerConfig {
            metadata: Some(api::ContainerMetadata {
                name: name.to_string(),
                attempt: 0,
            }),
            image: Some(spec(image)),
            command: command.iter().map(|s| s.to_string()).collect(),
            linux: Some(api::LinuxContainerConfig {
                security_context: Some(api::LinuxContainerSecurityContext {
                    namespace_options: host_network(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let req = api::CreateContainerRequest {
            pod_sandbox_id: pod.id.clone(),
            config: Some(config),
            sandbox_config: Some(pod.config.clone()),
        };
        let id = self
            .rt
            .block_on(self.runtime.create_container(req))
            .with_context(|| format!("CreateContainer {name} from {image}"))?
            .into_inner()
            .container_id;
        let req = api::StartContainerRequest {
            container_id: id.clone(),
        };
        self.rt
            .block_on(self.runtime.start_container(req))
            .with_context(|| format!("StartContainer {name}"))?;
        Ok(id)
    }

    /// `ExecSync`: runs `command` in the container; (exit code, stdout, stderr).
    pub fn exec(&mut self, container: &str, command: &[&str]) -> Result<(i32, String, String)> {
        let req = api::ExecSyncRequest {
            container_id: container.to_string(),
            cmd: command.iter().map(|s| s.to_string()).collect(),
            timeout: 60,
        };
        let r = self
            .rt
            .block_on(self.runtime.exec_sync(req))
            .with_context(|| format!("ExecSync {command:?}"))?
            .into_inner();
        Ok((
            r.exit_code,
            String::from_utf8_lossy(&r.stdout).into_owned(),
            String::from_utf8_lossy(&r.stderr).into_owned(),
        ))
    }

    /// `StopPodSandbox` and `RemovePodSandbox` (its containers go with it).
    pub fn remove_pod(&mut self, pod: &Pod) -> Result<()> {
        let stop = api::StopPodSandboxRequest {
            pod_sandbox_id: pod.id.clone(),
        };
        self.rt.block_on(self.runtime.stop_pod_sandbox(stop))?;
        let rm = api::RemovePodSandboxRequest {
            pod_sandbox_id: pod.id.clone(),
        };
        self.rt.block_on(self.runtime.remove_pod_sandbox(rm))?;
        Ok(())
    }

    /// Waits until `check` passes (the CRI plugin answers `Status` first).
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let start = std::time::Instant::now();
        loop {
            let req = api::StatusRequest { verbose: false };
            match self.rt.block_on(self.runtime.status(req)) {
                Ok(_) => return Ok(()),
                Err(e) if start.elapsed() > timeout => {
                    return Err(e).context("the CRI plugin does not answer")
                }
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }
}

/// The node's network namespace: pods need no CNI.
fn host_network() -> Option<api::NamespaceOption> {
    Some(api::NamespaceOption {
        network: api::NamespaceMode::Node as i32,
        ..Default::default()
    })
}

fn spec(image: &str) -> api::ImageSpec {
    api::ImageSpec {
        image: image.to_string(),
        annotations: HashMap::new(),
        ..Default::default()
    }
}
