//! `d4c-snapshotter`: the containerd proxy snapshotter. Not built yet; it will
//! serve the host library's mount over containerd's snapshots API.

fn main() {
    eprintln!("d4c-snapshotter: not implemented yet");
    std::process::exit(2);
}
