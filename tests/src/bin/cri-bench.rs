//! Time and bytes to a running pod, as kubelet gets one: for each image in
//! turn, `PullImage`, `RunPodSandbox`, `CreateContainer` and `StartContainer`
//! (a host-network pod running `sleep`), against the CRI endpoint SOCKET.
//! Bytes are what this network namespace's eth0 received meanwhile (run it in
//! the node's namespace; 0 where there is no eth0). The sandbox image is pulled
//! first, untimed, as a node already holds it. Used by scripts/bench-kubernetes.
//!
//!     cri-bench SOCKET SANDBOX_IMAGE IMAGE...
//!     cri-bench --push-sandbox REFERENCE    (builds and pushes the sandbox image)
//!
//! Prints one line per image: `IMAGE SECONDS BYTES`.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use d4c_tests::cri::Cri;

/// Bytes eth0 of this process's network namespace received (/proc/net/dev
/// is per namespace, unlike a sysfs mounted for another).
fn received() -> u64 {
    let dev = std::fs::read_to_string("/proc/net/dev").unwrap_or_default();
    dev.lines()
        .find_map(|l| l.trim_start().strip_prefix("eth0:"))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [flag, reference] = args.as_slice() {
        if flag == "--push-sandbox" {
            return d4c_tests::push_pause_image(reference);
        }
    }
    let [socket, sandbox, images @ ..] = args.as_slice() else {
        anyhow::bail!("usage: cri-bench SOCKET SANDBOX_IMAGE IMAGE...");
    };
    let mut cri = Cri::connect(Path::new(socket))?;
    cri.wait_ready(Duration::from_secs(30))?;
    cri.pull(sandbox).context("pulling the sandbox image")?;
    for (i, image) in images.iter().enumerate() {
        let (bytes, t) = (received(), Instant::now());
        cri.pull(image)?;
        let pod = cri.run_pod(&format!("bench-{i}"))?;
        cri.start_container(&pod, "app", image, &["sleep", "3600"])?;
        let secs = t.elapsed().as_secs_f64();
        println!("{image} {secs:.2} {}", received() - bytes);
        cri.remove_pod(&pod)?;
    }
    Ok(())
}
