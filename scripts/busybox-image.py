#!/usr/bin/env python3
"""Writes an OCI image archive of Debian's busybox-static (no network):
   busybox-image.py OUT.tar [CMD...]   (default CMD: sh)."""
import gzip, hashlib, io, json, os, subprocess, sys, tarfile, time

out = sys.argv[1]
cmd = sys.argv[2:] or ["sh"]
busybox = "/bin/busybox"
applets = subprocess.run([busybox, "--list"], capture_output=True, text=True, check=True).stdout.split()

def add(t, name, data=None, mode=0o644, kind=tarfile.REGTYPE, link=""):
    ti = tarfile.TarInfo(name)
    ti.mode, ti.type, ti.linkname, ti.mtime = mode, kind, link, 0
    if data is not None:
        ti.size = len(data)
        t.addfile(ti, io.BytesIO(data))
    else:
        t.addfile(ti)

raw = io.BytesIO()
with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as t:
    for d in ["bin", "etc", "tmp", "root", "home", "var", "dev", "proc", "sys"]:
        add(t, d, mode=0o1777 if d == "tmp" else 0o755, kind=tarfile.DIRTYPE)
    add(t, "bin/busybox", open(busybox, "rb").read(), mode=0o755)
    for a in applets:
        if a != "busybox":
            add(t, "bin/" + a, kind=tarfile.SYMTYPE, link="busybox")
    add(t, "etc/passwd", b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n")
    add(t, "etc/group", b"root:x:0:\nnobody:x:65534:\n")
layer_tar = raw.getvalue()
layer = gzip.compress(layer_tar, mtime=0)
sha = lambda b: "sha256:" + hashlib.sha256(b).hexdigest()
config = json.dumps({
    "architecture": {"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine, os.uname().machine),
    "os": "linux",
    "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"], "Cmd": cmd},
    "rootfs": {"type": "layers", "diff_ids": [sha(layer_tar)]},
    "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(0)),
}).encode()
manifest = json.dumps({
    "schemaVersion": 2,
    "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha(config), "size": len(config)},
    "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": sha(layer), "size": len(layer)}],
}).encode()
index = json.dumps({
    "schemaVersion": 2,
    "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": sha(manifest),
                   "size": len(manifest), "annotations": {"org.opencontainers.image.ref.name": "latest"}}],
}).encode()
with tarfile.open(out, "w") as t:
    add(t, "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
    add(t, "index.json", index)
    add(t, "blobs", kind=tarfile.DIRTYPE, mode=0o755)
    add(t, "blobs/sha256", kind=tarfile.DIRTYPE, mode=0o755)
    for b in (layer, config, manifest):
        add(t, "blobs/sha256/" + sha(b)[7:], b)
