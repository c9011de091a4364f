#!/usr/bin/env python3
"""Writes seed corpora for the fuzz targets from real d4c files:

    python3 fuzz/make-seeds.py DIR_WITH_CDIMGS [LAYER.tar ...]

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
