#!/usr/bin/env python3
"""Container images as OCI archives, built without a container engine and without pulling
anything: for the real node (hack/node/), where no registry and no Docker engine exist.

    hack/image/build.py operator [--out FILE] [--name inbox-operator:dev] [--binary PATH]
    hack/image/build.py busybox  --out FILE    # a shell image (Debian's busybox-static)
    hack/image/build.py pause    --out FILE    # the Pods' sandbox image, from the same busybox

Each prints the archive's path. Import one with `hack/node/node.sh import FILE` (ctr images
import).

The operator image is the Dockerfile's output, made here:
- the binary is built by the Dockerfile's own `cargo build` command, read from its build stage
  (the musl target, `--release --locked -p inbox-operator --bin inbox-operator`, and its ENV,
  CARGO_PROFILE_RELEASE_STRIP=symbols), with musl-gcc for the C parts as there;
- the final stage's LABELs (its ARGs from git as `make image` passes them), USER, EXPOSE,
  ENTRYPOINT and CMD are read from the Dockerfile too;
- the base, gcr.io/distroless/static-debian12:nonroot, cannot be pulled here: its files that
  the operator uses are made the way distroless makes them (GoogleContainerTools/distroless
  common/BUILD.bazel, static/static.bzl): /etc/passwd and /etc/group with root, nobody and
  nonroot (65532), /etc/nsswitch.conf, /etc/os-release, the CA bundle (Debian's
  ca-certificates, as distroless's cacerts rule), /tmp (1777), /root, /home, /home/nonroot
  (65532, 0700), and its config: WorkingDir /home/nonroot, PATH and SSL_CERT_FILE. Left out are
  the payloads of the Debian packages base-files, netbase, tzdata and media-types (licences and
  docs, /etc/services, zoneinfo, MIME types): a static binary that makes no service lookups,
  logs in UTC and serves no files reads none of them.
tests/node/image.rs checks the result against the Dockerfile.
"""

import argparse
import hashlib
import io
import json
import os
import re
import shlex
import subprocess
import sys
import tarfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TARGET = "x86_64-unknown-linux-musl"
NONROOT = 65532
# Every file gets this modification time: the same inputs make the same archive.
MTIME = 0
DISTROLESS_ENV = [
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt",
]
PASSWD = (
    "root:x:0:0:root:/root:/sbin/nologin\n"
    "nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n"
    "nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n"
)
GROUP = "root:x:0:\nnobody:x:65534:\ntty:x:5:\nstaff:x:50:\nnonroot:x:65532:\n"
NSSWITCH = (
    "passwd:         compat\ngroup:          compat\nshadow:         compat\n"
    "gshadow:        files\n\nhosts:          files dns\nnetworks:       files\n\n"
    "protocols:      db files\nservices:       db files\nethers:         db files\n"
    "rpc:            db files\n\nnetgroup:       nis\n"
)
OS_RELEASE = (
    'PRETTY_NAME="Distroless"\nNAME="Debian GNU/Linux"\nID="debian"\nVERSION_ID="12"\n'
    'VERSION="Debian GNU/Linux 12 (bookworm)"\n'
    'HOME_URL="https://github.com/GoogleContainerTools/distroless"\n'
    'SUPPORT_URL="https://github.com/GoogleContainerTools/distroless/blob/master/README.md"\n'
    'BUG_REPORT_URL="https://github.com/GoogleContainerTools/distroless/issues/new"\n'
)
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"


def log(msg):
    print(f"image: {msg}", file=sys.stderr)


# ---------------------------------------------------------------------------------------------
# The Dockerfile


def instructions(path):
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    out, current = [], ""
    with open(path) as f:
        for raw in f:
            line = raw.rstrip("\n")
            if not current and (not line.strip() or line.lstrip().startswith("#")):
                continue
            if current and line.lstrip().startswith("#"):
                continue
            if line.endswith("\\"):
                current += line[:-1] + " "
                continue
            current += line
            word, _, rest = current.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
            current = ""
    return out


def stages(path):
    """The Dockerfile's stages: [(FROM arguments, [(INSTRUCTION, arguments), ...]), ...]."""
    result = []
    for word, rest in instructions(path):
        if word == "FROM":
            result.append((rest, []))
        elif result:
            result[-1][1].append((word, rest))
    return result


def key_values(text):
    """KEY=VALUE pairs of a LABEL or ENV instruction (values may be double-quoted)."""
    return dict(
        (k, v[1:-1] if v.startswith('"') else v)
        for k, v in re.findall(r'([\w.\-]+)=("(?:[^"\\]|\\.)*"|\S+)', text)
    )


def final_stage_config(path, args):
    """What the Dockerfile's final stage sets in the image config, its ARGs substituted."""
    _, final = stages(path)[-1]
    values, labels, config = {}, {}, {}
    for word, rest in final:
        if word == "ARG":
            name, _, default = rest.partition("=")
            values[name] = args.get(name, default.strip('"'))
        elif word == "LABEL":
            for k, v in key_values(rest).items():
                labels[k] = re.sub(r"\$\{(\w+)\}", lambda m: values.get(m.group(1), ""), v)
        elif word == "USER":
            config["User"] = rest
        elif word == "EXPOSE":
            config["ExposedPorts"] = {
                (p if "/" in p else p + "/tcp"): {} for p in rest.split()
            }
        elif word == "ENTRYPOINT":
            config["Entrypoint"] = json.loads(rest)
        elif word == "CMD":
            config["Cmd"] = json.loads(rest)
    config["Labels"] = labels
    return config


def build_stage_cargo(path):
    """The build stage's `cargo build` command (for TARGET) and its ENV."""
    _, build = stages(path)[0]
    env, command = {}, None
    for word, rest in build:
        if word == "ENV":
            env.update(key_values(rest))
        elif word == "RUN" and "cargo build" in rest:
            found = re.search(r"cargo build[^&;|]*", rest)
            command = [
                TARGET if w == "$target" else w for w in shlex.split(found.group(0).strip())
            ]
    if command is None:
        sys.exit("image: no `cargo build` in the Dockerfile's build stage")
    return command, env


# ---------------------------------------------------------------------------------------------
# Layers and archives


class Layer:
    """A deterministic single-layer root filesystem (an uncompressed tar)."""

    def __init__(self):
        self.buf = io.BytesIO()
        self.tar = tarfile.open(fileobj=self.buf, mode="w", format=tarfile.PAX_FORMAT)
        self.dirs = set()

    def _info(self, path, kind, mode, uid, gid):
        info = tarfile.TarInfo(path.lstrip("/") or ".")
        info.type, info.mode, info.uid, info.gid, info.mtime = kind, mode, uid, gid, MTIME
        info.uname = info.gname = ""
        return info

    def dir(self, path, mode=0o755, uid=0, gid=0):
        self._parents(path)
        if path not in self.dirs:
            self.dirs.add(path)
            self.tar.addfile(self._info(path, tarfile.DIRTYPE, mode, uid, gid))

    def _parents(self, path):
        parent = os.path.dirname(path.rstrip("/"))
        if parent not in ("", "/") and parent not in self.dirs:
            self.dir(parent)

    def file(self, path, data, mode=0o644, uid=0, gid=0):
        self._parents(path)
        info = self._info(path, tarfile.REGTYPE, mode, uid, gid)
        info.size = len(data)
        self.tar.addfile(info, io.BytesIO(data))

    def symlink(self, path, target):
        self._parents(path)
        info = self._info(path, tarfile.SYMTYPE, 0o777, 0, 0)
        info.linkname = target
        self.tar.addfile(info)

    def bytes(self):
        self.tar.close()
        return self.buf.getvalue()


def normalize(name):
    """A reference as containerd and the kubelet spell it: `inbox-operator:dev` is
    `docker.io/library/inbox-operator:dev`."""
    first, _, rest = name.partition("/")
    if not rest:
        name = "docker.io/library/" + name
    elif "." not in first and ":" not in first and first != "localhost":
        name = "docker.io/" + name
    if ":" not in name.rsplit("/", 1)[1]:
        sys.exit(f"image: {name}: give a tag (never :latest, which the kubelet always pulls)")
    return name


def write_archive(out, name, layer, config):
    """An OCI image layout in a tar, named NAME for containerd (`ctr images import`)."""
    blobs = {}

    def blob(data):
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        blobs[digest] = data
        return {"digest": digest, "size": len(data)}

    diff_id = "sha256:" + hashlib.sha256(layer).hexdigest()
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created_by": "hack/image/build.py"}],
    }
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   **blob(json.dumps(config, sort_keys=True).encode())},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", **blob(layer)}],
    }
    full = normalize(name)
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            **blob(json.dumps(manifest, sort_keys=True).encode()),
            "platform": {"architecture": "amd64", "os": "linux"},
            "annotations": {
                "io.containerd.image.name": full,
                "org.opencontainers.image.ref.name": full.rsplit(":", 1)[1],
            },
        }],
    }
    tmp = out + ".tmp"
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as t:
        def add(path, data):
            info = tarfile.TarInfo(path)
            info.size, info.mode, info.mtime = len(data), 0o644, MTIME
            t.addfile(info, io.BytesIO(data))
        add("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        add("index.json", json.dumps(index, sort_keys=True).encode())
        for digest, data in sorted(blobs.items()):
            add("blobs/sha256/" + digest.split(":")[1], data)
    os.replace(tmp, out)
    log(f"{full}: {out} ({len(layer) / 1048576:.1f} MiB layer)")


# ---------------------------------------------------------------------------------------------
# The images


def git(*args, default):
    try:
        return subprocess.run(["git", "-C", ROOT, *args], capture_output=True, text=True,
                              check=True).stdout.strip() or default
    except (OSError, subprocess.CalledProcessError):
        return default


def target_dir():
    """Cargo's target directory (CARGO_TARGET_DIR, a config's build.target-dir, or target/)."""
    out = subprocess.run(["cargo", "metadata", "--format-version", "1", "--no-deps"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)["target_directory"]


def build_operator_binary():
    command, env = build_stage_cargo(os.path.join(ROOT, "Dockerfile"))
    # Not what Cargo sets for a running test (this may run inside `cargo test`): a build
    # script that reads CARGO_MANIFEST_DIR would see it change and rebuild everything.
    inherited = {k: v for k, v in os.environ.items()
                 if not re.match(r"CARGO_(MANIFEST_|PKG_|CRATE_|BIN_|TARGET_TMPDIR|PRIMARY_"
                                 r"|RUSTC_CURRENT_DIR)|OUT_DIR$", k)}
    env = {**inherited, **env, f"CC_{TARGET.replace('-', '_')}": "musl-gcc"}
    log("building the operator as the Dockerfile does: " + " ".join(command))
    subprocess.run(command, cwd=ROOT, env=env, check=True, stdout=sys.stderr)
    return os.path.join(target_dir(), TARGET, "release", "inbox-operator")


def operator(opts):
    binary = opts.binary or build_operator_binary()
    # As `make image`: the version (tag or describe) and the commit, from git.
    args = {
        "VERSION": opts.version or git("describe", "--tags", "--always", "--dirty", default="dev"),
        "REVISION": opts.revision or git("rev-parse", "HEAD", default="unknown"),
    }
    dockerfile = final_stage_config(os.path.join(ROOT, "Dockerfile"), args)
    layer = Layer()
    layer.dir("/")
    layer.file("/etc/passwd", PASSWD.encode())
    layer.file("/etc/group", GROUP.encode())
    layer.file("/etc/nsswitch.conf", NSSWITCH.encode())
    layer.file("/etc/os-release", OS_RELEASE.encode())
    with open(CA_BUNDLE, "rb") as f:
        layer.file(CA_BUNDLE, f.read())
    layer.dir("/home")
    layer.dir("/home/nonroot", mode=0o700, uid=NONROOT, gid=NONROOT)
    layer.dir("/root", mode=0o700)
    layer.dir("/tmp", mode=0o1777)
    with open(binary, "rb") as f:
        layer.file("/inbox-operator", f.read(), mode=0o755)
    config = {"Env": DISTROLESS_ENV, "WorkingDir": "/home/nonroot", **dockerfile}
    write_archive(opts.out, opts.name, layer.bytes(), config)


def busybox_layer():
    layer = Layer()
    layer.dir("/")
    with open("/bin/busybox", "rb") as f:
        layer.file("/bin/busybox", f.read(), mode=0o755)
    applets = subprocess.run(["/bin/busybox", "--list"], capture_output=True, text=True,
                             check=True).stdout.split()
    for applet in sorted(set(applets) - {"busybox"}):
        layer.symlink("/bin/" + applet, "busybox")
    layer.dir("/tmp", mode=0o1777)
    return layer.bytes()


def busybox(opts):
    config = {"Env": ["PATH=/bin"], "Entrypoint": ["/bin/sh"]}
    write_archive(opts.out, opts.name or "localhost/inbox-node/shell:busybox",
                  busybox_layer(), config)


def pause(opts):
    # The sandbox only holds the Pod's namespaces; it is stopped with SIGKILL.
    config = {"Env": ["PATH=/bin"], "Entrypoint": ["/bin/busybox", "sleep", "infinity"]}
    write_archive(opts.out, opts.name or "registry.k8s.io/pause:3.10", busybox_layer(), config)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("image", choices=["operator", "busybox", "pause"])
    parser.add_argument("--out", help="the OCI archive to write (operator: default "
                        "TARGET_DIR/node-images/operator.tar); its path is printed")
    parser.add_argument("--name", help="the image's name (operator: inbox-operator:dev)")
    parser.add_argument("--binary", help="operator: use this binary instead of building it")
    parser.add_argument("--version", help="operator: VERSION label (default: git describe)")
    parser.add_argument("--revision", help="operator: REVISION label (default: git rev-parse HEAD)")
    opts = parser.parse_args()
    if opts.image == "operator":
        opts.name = opts.name or "inbox-operator:dev"
        opts.out = opts.out or os.path.join(target_dir(), "node-images", "operator.tar")
    elif not opts.out:
        parser.error("--out is required")
    opts.out = os.path.abspath(opts.out)
    os.makedirs(os.path.dirname(opts.out), exist_ok=True)
    {"operator": operator, "busybox": busybox, "pause": pause}[opts.image](opts)
    print(opts.out)


if __name__ == "__main__":
    main()
