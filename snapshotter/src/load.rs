//! `d4c load`: makes an image chain (a full cdimg and deltas) runnable by
//! containerd with the d4c snapshotter, through containerd's own API:
//!
//! 1. a committed snapshot in the d4c snapshotter, prepared with
//!    [`CHAIN_LABEL`] naming the cdimg files (the snapshotter copies each file
//!    into its image store once: loading v2 as v1 + delta stores only the delta);
//! 2. the image config and manifest in the content store: for an image that
//!    keeps its origin, the original ones (the snapshot named by the chain id
//!    of the original diff_ids); else a config whose rootfs is one layer with
//!    the d4c image id as diff id (so the chain id is that too) — labelled so
//!    containerd's garbage collector keeps the snapshot as long as the image;
//! 3. the image record `NAME:TAG` pointing at the manifest.
//!
//! Everything is written under a lease, so nothing is collected halfway. The
//! layer blob the manifest names is not in the content store: containerd needs
//! it only to unpack, and the snapshot it would unpack to already exists.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use containerd_client::services::v1::snapshots::{
    CommitSnapshotRequest, PrepareSnapshotRequest, RemoveSnapshotRequest, StatSnapshotRequest,
};
use containerd_client::services::v1::{
    content_client::ContentClient, images_client::ImagesClient, leases_client::LeasesClient,
    CreateImageRequest, CreateRequest, DeleteRequest, Image, Info, UpdateImageRequest,
    UpdateRequest, WriteAction, WriteContentRequest,
};
use containerd_client::types::Descriptor;
use d4c_host::digest::Digest;
use d4c_host::image::chain::Chain;
use d4c_host::image::export::{self, CONFIG_MEDIA_TYPE, MANIFEST_MEDIA_TYPE};
use serde_json::json;
use tonic::transport::Channel;
use tonic::{Code, Request};

use crate::snapshotter::CHAIN_LABEL;

/// The layer media type the manifest names (the blob itself is not stored).
const LAYER_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar";

/// Where and how to load.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// containerd's socket.
    pub address: PathBuf,
    /// containerd namespace.
    pub namespace: String,
    /// The snapshotter's name in containerd's config (`[proxy_plugins.NAME]`).
    pub snapshotter: String,
}

/// What [`load`] did.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The image name.
    pub name: String,
    /// The d4c image id, which is also the snapshot's chain id.
    pub image_id: Digest,
    /// The manifest digest.
    pub manifest: Digest,
    /// Whether the snapshot already existed (the same image loaded before).
    pub snapshot_existed: bool,
}

/// Adds containerd's namespace (and lease) headers to a request.
fn req<T>(msg: T, ns: &str, lease: Option<&str>) -> Request<T> {
    let mut r = Request::new(msg);
    let md = r.metadata_mut();
    md.insert(
        "containerd-namespace",
        ns.parse().expect("namespace is ASCII (checked)"),
    );
    if let Some(l) = lease {
        md.insert("containerd-lease", l.parse().expect("lease id is ASCII"));
    }
    r
}

/// Loads the chain `images` as the containerd image `name`.
pub async fn load(name: &str, images: &[PathBuf], opts: &LoadOptions) -> Result<Loaded> {
    anyhow::ensure!(
        !name.is_empty() && name.is_ascii() && !name.contains(char::is_whitespace),
        "bad image name {name:?}"
    );
    anyhow::ensure!(
        opts.namespace
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)),
        "bad namespace {:?}",
        opts.namespace
    );
    let paths: Vec<PathBuf> = images
        .iter()
        .map(|p| std::path::absolute(p).with_context(|| format!("{}", p.display())))
        .collect::<Result<_>>()?;
    let chain = Chain::open(&paths)?;
    let image_id = chain.top().image_id;
    let r = registration(chain.top())?;
    drop(chain);
    let (config, manifest, chain_id) = (r.config, r.manifest, r.chain_id.oci());
    let config_digest = Digest::of(&config);
    let manifest_digest = Digest::of(&manifest);

    let channel = containerd_client::connect(&opts.address)
        .await
        .with_context(|| format!("connecting to containerd at {}", opts.address.display()))?;
    let ns = opts.namespace.as_str();
    let mut leases = LeasesClient::new(channel.clone());
    let lease = leases
        .create(req(
            CreateRequest {
                id: format!("d4c-load-{}-{}", std::process::id(), image_id.short()),
                labels: HashMap::from([(
                    "containerd.io/gc.expire".to_string(),
                    expire_in_an_hour(),
                )]),
            },
            ns,
            None,
        ))
        .await
        .context("creating a lease")?
        .into_inner()
        .lease
        .context("containerd returned no lease")?
        .id;
    let result = load_under_lease(
        channel,
        opts,
        &lease,
        &paths,
        &chain_id,
        (&config, config_digest),
        (&manifest, manifest_digest, &r.media_type),
        name,
    )
    .await;
    // The image now holds what it needs; the lease only protected the writes.
    let _ = leases
        .delete(req(
            DeleteRequest {
                id: lease,
                sync: false,
            },
            ns,
            None,
        ))
        .await;
    let snapshot_existed = result?;
    Ok(Loaded {
        name: name.to_string(),
        image_id,
        manifest: manifest_digest,
        snapshot_existed,
    })
}

/// What containerd is told about an image: config and manifest blobs, the
/// manifest's media type, and the chain id its snapshot is committed under.
struct Registration {
    config: Vec<u8>,
    manifest: Vec<u8>,
    media_type: String,
    chain_id: Digest,
}

/// An image that keeps its origin is registered as the original: its own
/// config and manifest, verbatim, so its digests are the publisher's and a
/// digest-pinned reference matches; the snapshot is the chain id of its
/// diff_ids, as containerd computes it. Any other image gets a config with
/// one layer whose diff id is the d4c image id, and a manifest naming it.
fn registration(top: &d4c_host::image::format::Header) -> Result<Registration> {
    if let Some(o) = &top.origin {
        let d = o.describe(&top.config)?;
        return Ok(Registration {
            config: top.config.as_bytes().to_vec(),
            manifest: o.manifest.as_bytes().to_vec(),
            media_type: d.media_type.clone(),
            chain_id: d.chain_id().context("the image has no layers")?,
        });
    }
    let config: serde_json::Value =
        serde_json::from_str(&top.config).context("the image config is not JSON")?;
    let config = serde_json::to_vec(&export::rewrite_config(config, &top.image_id)?)?;
    let chain_id = top.image_id.oci();
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": {"mediaType": CONFIG_MEDIA_TYPE, "digest": Digest::of(&config).oci(), "size": config.len()},
        "layers": [{"mediaType": LAYER_MEDIA_TYPE, "digest": chain_id, "size": 0}],
        "annotations": {export::IMAGE_ID_ANNOTATION: chain_id},
    }))?;
    Ok(Registration {
        config,
        manifest,
        media_type: MANIFEST_MEDIA_TYPE.to_string(),
        chain_id: top.image_id,
    })
}

fn expire_in_an_hour() -> String {
    // RFC 3339 in UTC, without a date library.
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
        + 3600;
    let (days, secs) = (t / 86400, t % 86400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[allow(clippy::too_many_arguments)]
async fn load_under_lease(
    channel: Channel,
    opts: &LoadOptions,
    lease: &str,
    paths: &[PathBuf],
    chain_id: &str,
    config: (&[u8], Digest),
    manifest: (&[u8], Digest, &str),
    name: &str,
) -> Result<bool> {
    let ns = opts.namespace.as_str();
    let l = Some(lease);
    // 1. The snapshot.
    let mut snapshots = SnapshotsClient::new(channel.clone());
    let stat = snapshots
        .stat(req(
            StatSnapshotRequest {
                snapshotter: opts.snapshotter.clone(),
                key: chain_id.to_string(),
            },
            ns,
            l,
        ))
        .await;
    let existed = match stat {
        Ok(_) => true,
        Err(s) if s.code() == Code::NotFound => false,
        Err(s) => bail!(
            "asking containerd for snapshot {chain_id} in snapshotter {:?}: {}",
            opts.snapshotter,
            s.message()
        ),
    };
    if !existed {
        let key = format!("d4c-load-{}-{chain_id}", std::process::id());
        let label = serde_json::to_string(&paths)?;
        snapshots
            .prepare(req(
                PrepareSnapshotRequest {
                    snapshotter: opts.snapshotter.clone(),
                    key: key.clone(),
                    parent: String::new(),
                    labels: HashMap::from([(CHAIN_LABEL.to_string(), label)]),
                },
                ns,
                l,
            ))
            .await
            .map_err(|s| anyhow::anyhow!("preparing the image snapshot: {}", s.message()))?;
        let commit = snapshots
            .commit(req(
                CommitSnapshotRequest {
                    snapshotter: opts.snapshotter.clone(),
                    name: chain_id.to_string(),
                    key: key.clone(),
                    labels: HashMap::new(),
                },
                ns,
                l,
            ))
            .await;
        if let Err(s) = commit {
            let _ = snapshots
                .remove(req(
                    RemoveSnapshotRequest {
                        snapshotter: opts.snapshotter.clone(),
                        key,
                    },
                    ns,
                    l,
                ))
                .await;
            bail!("committing the image snapshot: {}", s.message());
        }
    }

    // 2. Config and manifest, with the labels that keep what they refer to.
    let mut content = ContentClient::new(channel.clone());
    let gc_snapshot = format!("containerd.io/gc.ref.snapshot.{}", opts.snapshotter);
    put_blob(
        &mut content,
        ns,
        lease,
        config,
        HashMap::from([(gc_snapshot, chain_id.to_string())]),
    )
    .await?;
    put_blob(
        &mut content,
        ns,
        lease,
        (manifest.0, manifest.1),
        HashMap::from([(
            "containerd.io/gc.ref.content.config".to_string(),
            config.1.oci(),
        )]),
    )
    .await?;

    // 3. The image record.
    let image = Image {
        name: name.to_string(),
        labels: HashMap::new(),
        target: Some(Descriptor {
            media_type: manifest.2.to_string(),
            digest: manifest.1.oci(),
            size: manifest.0.len() as i64,
            annotations: HashMap::new(),
        }),
        created_at: None,
        updated_at: None,
    };
    let mut images = ImagesClient::new(channel);
    let created = images
        .create(req(
            CreateImageRequest {
                image: Some(image.clone()),
                source_date_epoch: None,
            },
            ns,
            l,
        ))
        .await;
    match created {
        Ok(_) => {}
        Err(s) if s.code() == Code::AlreadyExists => {
            images
                .update(req(
                    UpdateImageRequest {
                        image: Some(image),
                        update_mask: None,
                        source_date_epoch: None,
                    },
                    ns,
                    l,
                ))
                .await
                .map_err(|s| anyhow::anyhow!("updating image {name}: {}", s.message()))?;
        }
        Err(s) => bail!("creating image {name}: {}", s.message()),
    }
    Ok(existed)
}

/// Writes a small blob into containerd's content store (nothing if it is there)
/// and sets `labels` on it.
async fn put_blob(
    content: &mut ContentClient<Channel>,
    ns: &str,
    lease: &str,
    (data, digest): (&[u8], Digest),
    labels: HashMap<String, String>,
) -> Result<()> {
    let write = WriteContentRequest {
        action: WriteAction::Commit as i32,
        r#ref: format!("d4c-load-{}", digest.hex()),
        total: data.len() as i64,
        expected: digest.oci(),
        offset: 0,
        data: data.to_vec(),
        labels: labels.clone(),
    };
    let outcome = async {
        let mut stream = content
            .write(req(tokio_stream::iter(vec![write]), ns, Some(lease)))
            .await?
            .into_inner();
        while stream.message().await?.is_some() {}
        Ok::<_, tonic::Status>(())
    }
    .await;
    match outcome {
        Ok(()) => {}
        Err(s) if s.code() == Code::AlreadyExists => {}
        Err(s) => bail!("writing {} to containerd: {}", digest.oci(), s.message()),
    }
    let paths = labels.keys().map(|k| format!("labels.{k}")).collect();
    content
        .update(req(
            UpdateRequest {
                info: Some(Info {
                    digest: digest.oci(),
                    size: data.len() as i64,
                    created_at: None,
                    updated_at: None,
                    labels,
                }),
                update_mask: Some(prost_types::FieldMask { paths }),
            },
            ns,
            Some(lease),
        ))
        .await
        .map_err(|s| anyhow::anyhow!("labelling {}: {}", digest.oci(), s.message()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn civil_dates() {
        assert_eq!(super::civil_from_days(0), (1970, 1, 1));
        assert_eq!(super::civil_from_days(20_786), (2026, 11, 29));
        assert_eq!(super::civil_from_days(11_016), (2000, 2, 29));
    }
}
