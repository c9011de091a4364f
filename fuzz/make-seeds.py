#!/usr/bin/env python3
"""Writes seed corpora for the fuzz targets from real d4c files:

    python3 fuzz/make-seeds.py DIR_WITH_CDIMGS [LAYER.tar ...]

With D4C_SEED_LAYOUTS=DIR[:DIR...] (OCI layouts) and D4C_SEED_REGISTRY=DATA_DIR (a
docker-registry storage root d4c pushed to), also seeds oci_layout (index.json,
manifest and config with their digest links as @MANIFEST@ / @CONFIG@) and
pull_protocol (d4c manifests and indexes as stored, auth challenges, references).

DIR_WITH_CDIMGS holds cdimg files (e.g. target/test-data/image-tests after the
tests ran: v1..v3 and the deltas d12, d23). Seeds: small cdimg files whole, every
header's JSON, each codec delta blob (as codec_patch input: a cut byte of 0, no
old file, the delta; pairs of bsdiff deltas for bsdiff_merge), and layer tars.
"""
import json, os, struct, subprocess, sys, hashlib

out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "seeds")

def put(target, data):
    d = os.path.join(out, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, hashlib.sha256(data).hexdigest()[:16]), "wb") as f:
        f.write(data)

def header(data):
    off, hlen = struct.unpack_from("<QQ", data, len(data) - 64)
    raw = data[off:off + hlen]
    js = subprocess.run(["zstd", "-dc"], input=raw, capture_output=True, check=True).stdout
    return json.loads(js), js

bsdiff = []
for name in sorted(os.listdir(sys.argv[1])):
    if not name.endswith(".cdimg"):
        continue
    data = open(os.path.join(sys.argv[1], name), "rb").read()
    if len(data) < 64 or data[:8] != b"D4CIMG01":
        continue
    try:
        h, js = header(data)
    except (subprocess.CalledProcessError, ValueError, struct.error):
        continue  # a test's deliberately broken file
    put("cdimg_header", js)
    if len(data) <= 256 * 1024:
        put("cdimg_header", data)
    for e in h["entries"]:
        d = e.get("data") or {}
        for step in d.get("steps", []):
            blob = data[step["offset"]:step["offset"] + step["length"]]
            if len(blob) > 64 * 1024:
                continue
            put("codec_patch", b"\x00" + blob)
            if h["codecs"][step["codec"]]["name"] == "bsdiff":
                bsdiff.append(blob)
for a, b in zip(bsdiff, bsdiff[1:]):
    cut = len(a)
    if cut < 65536:
        put("bsdiff_merge", struct.pack("<H", cut) + b"\x10" + a + b)
for tar in sys.argv[2:]:
    put("layer_tar", open(tar, "rb").read())

for layout in filter(None, os.environ.get("D4C_SEED_LAYOUTS", "").split(":")):
    index = open(os.path.join(layout, "index.json"), "rb").read()
    md = json.loads(index)["manifests"][0]["digest"]
    blob = lambda d: open(os.path.join(layout, "blobs", "sha256", d.split(":")[1]), "rb").read()
    manifest = blob(md)
    cd = json.loads(manifest)["config"]["digest"]
    put("oci_layout", index.replace(md.encode(), b"@MANIFEST@") + b"\xff"
        + manifest.replace(cd.encode(), b"@CONFIG@") + b"\xff" + blob(cd))

reg = os.environ.get("D4C_SEED_REGISTRY")
if reg:
    blobs = os.path.join(reg, "docker", "registry", "v2", "blobs", "sha256")
    for root, _, files in os.walk(blobs):
        for f in files:
            path = os.path.join(root, f)
            if os.path.getsize(path) > 64 * 1024:
                continue
            data = open(path, "rb").read()
            if b"dev.d4c" in data or b'"images"' in data:
                put("pull_protocol", data)
for text in [
    'Bearer realm="https://auth.example.com/token",service="registry.example.com",scope="repository:a/b:pull,push"',
    'Basic realm="Registry Realm"',
    "127.0.0.1:5000/d4c/debian:v4",
    "https://registry.example.com/team/app:v1",
]:
    put("pull_protocol", text.encode())
