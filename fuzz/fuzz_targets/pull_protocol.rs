//! What a registry or update server sends a pulling client, from hostile bytes:
//! manifests, the repository index, the server's pull answer, auth challenges,
//! and references. Parsers must refuse or accept without panicking, and the
//! planner over any accepted index must end (no loops on cycles) with a path
//! that is consistent, or an error.
#![no_main]

use std::collections::HashSet;

use d4c_host::digest::Digest;
use d4c_host::image::format::ImageKind;
use d4c_host::registry::artifact::{Manifest, RepoIndex, CDIMG_TYPE};
use d4c_host::registry::{auth, Reference};
use d4c_host::update::plan::{self, Holdings};
use d4c_host::update::protocol::PullResponse;
use libfuzzer_sys::fuzz_target;

fn check_plan(index: &RepoIndex, target: Digest, have: &Holdings) {
    if let Ok(p) = plan::plan(index, target, have) {
        let mut at = p.start;
        for s in &p.steps {
            assert!(s.kind == ImageKind::Image || s.base_id == at, "broken path");
            for c in &s.codecs {
                assert!(
                    have.codecs.contains(c) || p.fetch.iter().any(|f| f.digest == *c),
                    "a delta in a codec neither held nor fetched"
                );
            }
            at = Some(s.image_id);
        }
        assert_eq!(at, Some(target), "the path ends elsewhere");
        if !have.fetch_codecs {
            assert!(p.fetch.is_empty());
        }
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Manifest::parse(data) {
        let _ = m.image_id();
        let _ = m.d4c_layer(CDIMG_TYPE).map(|l| l.sha256());
        let _ = Manifest::parse(&m.to_bytes()).expect("round trip");
    }
    if let Ok(idx) = RepoIndex::parse(data) {
        let ids: Vec<Digest> = idx.images.iter().map(|i| i.image_id).collect();
        let codecs: HashSet<Digest> = idx
            .images
            .iter()
            .flat_map(|i| i.codecs.iter().copied())
            .take(1)
            .collect();
        for (k, target) in ids.iter().enumerate().take(4) {
            for fetch in [false, true] {
                let have = Holdings {
                    images: ids.iter().skip(k + 1).take(2).copied().collect(),
                    codecs: codecs.clone(),
                    fetch_codecs: fetch,
                };
                check_plan(&idx, *target, &have);
            }
        }
    }
    if let Ok(resp) = serde_json::from_slice::<PullResponse>(data) {
        let _ = resp.plan.codecs();
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = auth::parse_challenge(text);
        if let Ok(r) = Reference::parse(text) {
            let _ = r.api_base();
            let _ = r.to_string();
        }
    }
});
