//! The operator image built here (`hack/image/build.py operator`, what the node runs) holds
//! what the Dockerfile's output holds: its final stage's config (USER, ENTRYPOINT, CMD,
//! EXPOSE, every LABEL with the values `make image` gives its ARGs), the distroless
//! `static-debian12:nonroot` base's config (WorkingDir, PATH, SSL_CERT_FILE) and files the
//! operator relies on (users and groups with nonroot 65532, the CA bundle, /tmp, the home
//! directories), and a static binary at /inbox-operator — nothing else. The Dockerfile is read
//! here independently of the builder, so a change to either shows up as a difference.

use std::collections::BTreeMap;
use std::process::Command;

use serde_json::Value;

use crate::node::{operator_image, repo};

/// The files of the image: (path, kind, mode, uid, gid). distroless static-debian12:nonroot's
/// own, as its rules make them (GoogleContainerTools/distroless common/BUILD.bazel: passwd,
/// group, home, tmp, nsswitch, os_release, cacerts), and the Dockerfile's `COPY
/// --from=build /inbox-operator /inbox-operator`. Left out of the base: the payloads of the
/// Debian packages base-files, netbase, tzdata and media-types (docs, /etc/services,
/// zoneinfo, MIME types), which a static binary with no service lookups and UTC logs never
/// reads.
const FILES: &[(&str, char, u32, u32, u32)] = &[
    ("etc", 'd', 0o755, 0, 0),
    ("etc/group", 'f', 0o644, 0, 0),
    ("etc/nsswitch.conf", 'f', 0o644, 0, 0),
    ("etc/os-release", 'f', 0o644, 0, 0),
    ("etc/passwd", 'f', 0o644, 0, 0),
    ("etc/ssl", 'd', 0o755, 0, 0),
    ("etc/ssl/certs", 'd', 0o755, 0, 0),
    ("etc/ssl/certs/ca-certificates.crt", 'f', 0o644, 0, 0),
    ("home", 'd', 0o755, 0, 0),
    ("home/nonroot", 'd', 0o700, 65532, 65532),
    ("inbox-operator", 'f', 0o755, 0, 0),
    ("root", 'd', 0o700, 0, 0),
    ("tmp", 'd', 0o1777, 0, 0),
];

/// One entry of a tar: its kind (`f`, `d`, `l`), mode, owner and contents.
struct Entry {
    kind: char,
    mode: u32,
    uid: u32,
    gid: u32,
    data: Vec<u8>,
}

fn octal(field: &[u8]) -> u64 {
    let text = String::from_utf8_lossy(field);
    u64::from_str_radix(text.trim_matches(|c: char| c == '\0' || c == ' '), 8).unwrap_or(0)
}

fn cstr(field: &[u8]) -> String {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    String::from_utf8_lossy(&field[..end]).into_owned()
}

/// The entries of an uncompressed tar (ustar, with PAX `path` records), by path.
fn untar(bytes: &[u8]) -> BTreeMap<String, Entry> {
    let mut entries = BTreeMap::new();
    let mut at = 0;
    let mut pax_path: Option<String> = None;
    while at + 512 <= bytes.len() {
        let h = &bytes[at..at + 512];
        if h.iter().all(|&b| b == 0) {
            break;
        }
        let size = octal(&h[124..136]) as usize;
        let data = bytes[at + 512..at + 512 + size].to_vec();
        at += 512 + size.div_ceil(512) * 512;
        let flag = h[156];
        if flag == b'x' {
            // "LEN path=VALUE\n" records; only the path matters here.
            for record in String::from_utf8_lossy(&data).lines() {
                if let Some((_, kv)) = record.split_once(' ')
                    && let Some(path) = kv.strip_prefix("path=")
                {
                    pax_path = Some(path.to_string());
                }
            }
            continue;
        }
        let prefix = cstr(&h[345..500]);
        let name = pax_path.take().unwrap_or_else(|| {
            let name = cstr(&h[0..100]);
            if prefix.is_empty() {
                name
            } else {
                format!("{prefix}/{name}")
            }
        });
        let kind = match flag {
            b'5' => 'd',
            b'2' => 'l',
            _ => 'f',
        };
        entries.insert(
            name.trim_start_matches("./")
                .trim_end_matches('/')
                .to_string(),
            Entry {
                kind,
                mode: octal(&h[100..108]) as u32,
                uid: octal(&h[108..116]) as u32,
                gid: octal(&h[116..124]) as u32,
                data,
            },
        );
    }
    entries
}

/// The Dockerfile's instructions (continuations joined, comments dropped), by stage.
fn dockerfile_stages() -> Vec<Vec<(String, String)>> {
    let text = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    let mut stages: Vec<Vec<(String, String)>> = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with('#') || (current.is_empty() && trimmed.is_empty()) {
            continue;
        }
        if let Some(cont) = line.strip_suffix('\\') {
            current.push_str(cont);
            current.push(' ');
            continue;
        }
        current.push_str(line);
        let (word, rest) = current
            .trim()
            .split_once(' ')
            .unwrap_or((current.trim(), ""));
        let (word, rest) = (word.to_uppercase(), rest.trim().to_string());
        if word == "FROM" {
            stages.push(Vec::new());
        } else if let Some(stage) = stages.last_mut() {
            stage.push((word, rest));
        }
        current.clear();
    }
    stages
}

fn git(args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(repo())
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// What the Dockerfile's final stage puts in the image config, with `make_args` for its ARGs
/// (the ones `make image` passes), and the paths its COPY instructions write.
fn expected_config(make_args: &BTreeMap<String, String>) -> (Value, Vec<String>) {
    let stages = dockerfile_stages();
    let final_stage = stages.last().expect("a final stage");
    let mut args = BTreeMap::new();
    let mut labels = serde_json::Map::new();
    let mut config = serde_json::Map::new();
    let mut copied = Vec::new();
    for (word, rest) in final_stage {
        match word.as_str() {
            "ARG" => {
                let (name, default) = rest.split_once('=').unwrap_or((rest, ""));
                let value = make_args
                    .get(name)
                    .cloned()
                    .unwrap_or_else(|| default.trim_matches('"').to_string());
                args.insert(name.to_string(), value);
            }
            "LABEL" => {
                // key="value" pairs, values may name ARGs as ${NAME}.
                let mut s = rest.as_str();
                while let Some((key, tail)) = s.trim_start().split_once("=\"") {
                    let (value, tail) = tail.split_once('"').unwrap();
                    let mut value = value.to_string();
                    for (name, v) in &args {
                        value = value.replace(&format!("${{{name}}}"), v);
                    }
                    labels.insert(key.trim().to_string(), Value::String(value));
                    s = tail;
                }
            }
            "USER" => {
                config.insert("User".into(), Value::String(rest.clone()));
            }
            "EXPOSE" => {
                let ports: serde_json::Map<String, Value> = rest
                    .split_whitespace()
                    .map(|p| {
                        (
                            if p.contains('/') {
                                p.to_string()
                            } else {
                                format!("{p}/tcp")
                            },
                            serde_json::json!({}),
                        )
                    })
                    .collect();
                config.insert("ExposedPorts".into(), Value::Object(ports));
            }
            "ENTRYPOINT" => {
                config.insert("Entrypoint".into(), serde_json::from_str(rest).unwrap());
            }
            "CMD" => {
                config.insert("Cmd".into(), serde_json::from_str(rest).unwrap());
            }
            "COPY" => {
                let dest = rest.split_whitespace().last().unwrap();
                copied.push(dest.trim_start_matches('/').to_string());
            }
            other => panic!("the final stage has a {other} this test does not know: teach it"),
        }
    }
    config.insert("Labels".into(), Value::Object(labels));
    (Value::Object(config), copied)
}

#[test]
#[ignore = "needs the operator's musl release build (hack/test.sh makes it with the node), or cargo test --test node -- --ignored"]
fn the_image_built_here_holds_what_the_dockerfile_builds() {
    let archive = std::fs::read(operator_image()).unwrap();
    let layout = untar(&archive);
    let blob = |digest: &str| {
        &layout[&format!("blobs/sha256/{}", digest.trim_start_matches("sha256:"))].data
    };
    let index: Value = serde_json::from_slice(&layout["index.json"].data).unwrap();
    let descriptor = &index["manifests"][0];
    assert_eq!(
        descriptor["annotations"]["io.containerd.image.name"],
        "docker.io/library/inbox-operator:dev",
        "named as docs/local-cluster.md names it"
    );
    let manifest: Value =
        serde_json::from_slice(blob(descriptor["digest"].as_str().unwrap())).unwrap();
    let image: Value =
        serde_json::from_slice(blob(manifest["config"]["digest"].as_str().unwrap())).unwrap();
    assert_eq!(image["os"], "linux");
    assert_eq!(image["architecture"], "amd64");
    let config = &image["config"];

    // `make image`'s ARGs, from git when the image was built: a commit of this repository, and
    // its description (`-dirty` if the tree had changes).
    let label = |key: &str| {
        config["Labels"][format!("org.opencontainers.image.{key}")]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    let revision = label("revision");
    assert!(
        Command::new("git")
            .arg("-C")
            .arg(repo())
            .args(["cat-file", "-e", &format!("{revision}^{{commit}}")])
            .status()
            .is_ok_and(|s| s.success()),
        "the revision label {revision:?} is a commit of this repository"
    );
    let described = git(&["describe", "--tags", "--always", &revision]);
    let version = label("version");
    assert!(
        version == described || version == format!("{described}-dirty"),
        "the version label {version:?} describes {revision} ({described})"
    );
    let make_args = BTreeMap::from([
        ("VERSION".to_string(), version),
        ("REVISION".to_string(), revision),
    ]);
    // The Dockerfile's final stage, key by key.
    let (expected, copied) = expected_config(&make_args);
    for (key, want) in expected.as_object().unwrap() {
        assert_eq!(
            &config[key], want,
            "config {key}: the image vs the Dockerfile"
        );
    }
    assert_eq!(config["User"], "65532:65532", "the distroless nonroot user");
    // distroless static-debian12:nonroot's own config, under the Dockerfile's.
    assert_eq!(config["WorkingDir"], "/home/nonroot");
    assert_eq!(
        config["Env"],
        serde_json::json!([
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"
        ])
    );
    let config_keys: Vec<&String> = config.as_object().unwrap().keys().collect();
    let mut allowed: Vec<&str> = expected
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    allowed.extend(["WorkingDir", "Env"]);
    for key in &config_keys {
        assert!(
            allowed.contains(&key.as_str()),
            "config {key}: set by neither the Dockerfile nor its base"
        );
    }

    // One layer, exactly these files.
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1);
    let files = untar(blob(layers[0]["digest"].as_str().unwrap()));
    let got: Vec<(String, char, u32, u32, u32)> = files
        .iter()
        .filter(|(path, _)| !path.is_empty() && *path != ".")
        .map(|(path, e)| (path.clone(), e.kind, e.mode, e.uid, e.gid))
        .collect();
    let want: Vec<(String, char, u32, u32, u32)> = FILES
        .iter()
        .map(|(p, k, m, u, g)| (p.to_string(), *k, *m, *u, *g))
        .collect();
    assert_eq!(got, want, "the image's files");
    for path in &copied {
        assert!(files.contains_key(path), "the Dockerfile copies /{path}");
    }
    let text = |path: &str| String::from_utf8_lossy(&files[path].data).into_owned();
    assert!(
        text("etc/passwd").contains("nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin")
    );
    assert!(text("etc/group").contains("nonroot:x:65532:"));
    assert!(
        text("etc/ssl/certs/ca-certificates.crt")
            .matches("BEGIN CERTIFICATE")
            .count()
            > 100
    );

    // A static executable: an ELF with no interpreter (PT_INTERP) to load shared libraries.
    let elf = &files["inbox-operator"].data;
    assert_eq!(&elf[..4], b"\x7fELF", "an ELF executable");
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(elf[32..40].try_into().unwrap()) as usize;
    let (phentsize, phnum) = (u16_at(54), u16_at(56));
    let interp = (0..phnum).any(|i| {
        let at = phoff + i * phentsize;
        u32::from_le_bytes(elf[at..at + 4].try_into().unwrap()) == 3
    });
    assert!(!interp, "/inbox-operator is statically linked");
}
