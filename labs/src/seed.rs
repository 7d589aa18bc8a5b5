//! Each VM's cloud-init seed (`vms/VM/seed/`, given to minivmm as `--cloud-init DIR`):
//!
//! * `meta-data`: `instance-id: iid-LAB-VM` (stable: a VM started again by a later `up`
//!   keeps its users and keys) and the host name.
//! * `network-config` (version 2): each NIC matched by its MAC address, with its static
//!   address; no DHCP, no default route.
//! * `user-data`: the lab's part, made here, and the lab file's own `user_data` after it.
//!   The lab's part creates the user with the lab's public key, installs the host key made
//!   on the host (so that `known_hosts`, written before the VM boots, is right and `ssh`
//!   never asks), `/etc/ssh/ssh_known_hosts` and `/etc/hosts` entries for every VM of the
//!   lab, the lab's private key (`lab_key`), the CA and the VM's certificate
//!   (`certificate`), the `files`, the extra disks' mounts (`bootcmd`), and a
//!   `final_message` that
//!   `up` waits for on the console ([`READY_MARKER`]; on minivmm's Debian image, whose
//!   cloud-init writes its output to a log file, `up` waits for the init's "boot
//!   finished" line instead).
//!
//! With a `user_data` of the lab file's, `user-data` is a MIME multipart message, the
//! lab's part first; the second part's `Merge-Type`
//! (`list(append)+dict(no_replace,recurse_array)+str()`) makes cloud-init append its
//! lists (`runcmd`, `write_files`, `users`, ...) to the lab's instead of replacing them.
//!
//! The cloud-config documents are written as JSON, which is YAML too: no quoting rules to
//! get wrong for keys and certificates.

use std::fmt::Write as _;

use base64::Engine;
use serde_json::{json, Value};

use crate::validate::{format_mac, Lab, Vm};

/// What `final_message` prints on the console when cloud-init has finished; followed by the
/// VM's name and its uptime.
pub const READY_MARKER: &str = "minivmm-lab: ready";

/// Where a VM's TLS files go (with `certificate = true`; `ca.crt` in every VM of a lab
/// that has a CA).
pub const TLS_DIR: &str = "/etc/lab-tls";

/// The MIME type cloud-init gives a user-data part, by its first line; None if it is none
/// of the kinds a lab may use.
pub fn part_type(text: &str) -> Option<&'static str> {
    let first = text
        .trim_start_matches('\u{feff}')
        .lines()
        .next()?
        .trim_end();
    if first == "#cloud-config" {
        Some("text/cloud-config")
    } else if first.starts_with("#!") {
        Some("text/x-shellscript")
    } else if first == "#cloud-boothook" {
        Some("text/cloud-boothook")
    } else {
        None
    }
}

/// Keys and certificates of the lab, as text, for the seeds.
pub struct Secrets {
    /// The lab's public key (`key.pub`).
    pub lab_public: String,
    /// The lab's private key (`key`).
    pub lab_private: String,
    /// `known_hosts` of the lab.
    pub known_hosts: String,
    /// The CA certificate, when the lab has one.
    pub ca_cert: Option<String>,
}

/// The host key pair of one VM.
pub struct HostKey {
    /// `ssh_host_ed25519_key`.
    pub private: String,
    /// `ssh_host_ed25519_key.pub`.
    pub public: String,
}

/// A VM's certificate and key.
pub struct ServerCert {
    /// PEM certificate.
    pub cert: String,
    /// PEM private key.
    pub key: String,
}

/// `meta-data`.
pub fn meta_data(lab: &Lab, vm: &Vm) -> String {
    format!(
        "instance-id: iid-{}-{}\nlocal-hostname: {}\n",
        lab.name, vm.name, vm.name
    )
}

/// `network-config` (version 2).
pub fn network_config(vm: &Vm) -> String {
    let mut eths = serde_json::Map::new();
    for (i, nic) in vm.nics.iter().enumerate() {
        eths.insert(
            format!("eth{i}"),
            json!({
                "match": {"macaddress": format_mac(&nic.mac)},
                "set-name": format!("eth{i}"),
                "addresses": [format!("{}/{}", nic.address, nic.prefix)],
                "dhcp4": false,
                "dhcp6": false,
            }),
        );
    }
    let doc = json!({"version": 2, "ethernets": eths});
    serde_json::to_string_pretty(&doc).unwrap_or_default() + "\n"
}

fn file_entry(path: &str, content: &[u8], owner: Option<&str>, mode: Option<u32>) -> Value {
    let mut e = json!({
        "path": path,
        "encoding": "b64",
        "content": base64::engine::general_purpose::STANDARD.encode(content),
    });
    if let Some(m) = mode {
        e["permissions"] = json!(format!("{m:04o}"));
    }
    if let Some(o) = owner {
        let o = if o.contains(':') {
            o.to_string()
        } else {
            format!("{o}:{o}")
        };
        // Owned by someone cloud-init makes later in the same boot (the lab user): written
        // in the final stage, after the users exist.
        if !o.starts_with("root:") {
            e["defer"] = json!(true);
        }
        e["owner"] = json!(o);
    }
    e
}

/// The lab's part of `user-data` for `vm`, a `#cloud-config` document.
pub fn lab_cloud_config(
    lab: &Lab,
    vm: &Vm,
    secrets: &Secrets,
    host_key: &HostKey,
    cert: Option<&ServerCert>,
) -> String {
    let user = &lab.user;
    let home = format!("/home/{user}");
    let mut files = Vec::new();
    files.push(file_entry(
        "/etc/ssh/ssh_known_hosts",
        secrets.known_hosts.as_bytes(),
        None,
        Some(0o644),
    ));
    let mut hosts = String::from("# minivmm lab ");
    hosts.push_str(&lab.name);
    hosts.push('\n');
    for other in &lab.vms {
        if let Some(n) = other.nics.first() {
            let _ = writeln!(hosts, "{} {}", n.address, other.name);
        }
    }
    let mut hosts_entry = file_entry("/etc/hosts", hosts.as_bytes(), None, None);
    hosts_entry["append"] = json!(true);
    files.push(hosts_entry);
    if vm.lab_key {
        files.push(file_entry(
            &format!("{home}/.ssh/id_ed25519"),
            secrets.lab_private.as_bytes(),
            Some(user),
            Some(0o600),
        ));
        files.push(file_entry(
            &format!("{home}/.ssh/id_ed25519.pub"),
            secrets.lab_public.as_bytes(),
            Some(user),
            Some(0o644),
        ));
    }
    if let Some(ca) = &secrets.ca_cert {
        files.push(file_entry(
            &format!("{TLS_DIR}/ca.crt"),
            ca.as_bytes(),
            None,
            Some(0o644),
        ));
    }
    if let Some(c) = cert {
        files.push(file_entry(
            &format!("{TLS_DIR}/server.crt"),
            c.cert.as_bytes(),
            None,
            Some(0o644),
        ));
        // Readable by root, and by certificate_group (a service's group, e.g. mysql).
        let owner = vm.certificate_group.as_ref().map(|g| format!("root:{g}"));
        files.push(file_entry(
            &format!("{TLS_DIR}/server.key"),
            c.key.as_bytes(),
            owner.as_deref(),
            Some(0o640),
        ));
    }
    for f in &vm.files {
        files.push(file_entry(&f.path, &f.content, f.owner.as_deref(), f.mode));
    }
    // Extra disks by file system label (mount(8) resolves LABEL=; cloud-init's mounts
    // module does not), in /etc/fstab once and mounted at every boot.
    let bootcmd: Vec<Value> = vm
        .disks
        .iter()
        .filter_map(|d| {
            d.mount.as_ref().map(|m| {
                let line = format!("LABEL={} {m} ext4 defaults,nofail 0 2", d.name);
                json!([
                    "sh",
                    "-c",
                    format!(
                        "mkdir -p {m} && (grep -q '^LABEL={} ' /etc/fstab || echo '{line}' \
                         >> /etc/fstab) && mount {m} 2>/dev/null; mountpoint -q {m}",
                        d.name
                    )
                ])
            })
        })
        .collect();
    let mut doc = json!({
        "hostname": vm.name,
        "manage_etc_hosts": false,
        "users": [{
            "name": user,
            "gecos": format!("{} lab user", lab.name),
            "shell": "/bin/bash",
            "lock_passwd": true,
            "sudo": "ALL=(ALL) NOPASSWD:ALL",
            "ssh_authorized_keys": [secrets.lab_public.trim()],
        }],
        "disable_root": true,
        // No locale to generate (locale-gen takes minutes of emulated kernel time on PVM
        // hosts); the C locale is every program's default.
        "locale": "false",
        // The host key made on the host: no key generation in the guest (slow under
        // emulation), and a known_hosts that is right before the first boot.
        "ssh_deletekeys": true,
        "ssh_keys": {
            "ed25519_private": host_key.private,
            "ed25519_public": host_key.public.trim(),
        },
        "write_files": files,
        "final_message": format!("{READY_MARKER} {} after $UPTIME s", vm.name),
    });
    if !bootcmd.is_empty() {
        doc["bootcmd"] = json!(bootcmd);
    }
    format!(
        "#cloud-config\n{}\n",
        serde_json::to_string_pretty(&doc).unwrap_or_default()
    )
}

/// The complete `user-data`: the lab's part alone, or a MIME multipart message with the
/// lab file's own user-data after it.
pub fn user_data(lab_part: &str, own: Option<&str>) -> String {
    let Some(own) = own else {
        return lab_part.to_string();
    };
    let boundary = "==minivmm-lab-part==";
    let b64 = |s: &str| {
        let enc = base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
        // 76-character lines, as MIME wants.
        enc.as_bytes()
            .chunks(76)
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect::<Vec<_>>()
            .join("\n")
    };
    let mut out = String::new();
    let _ = write!(
        out,
        "Content-Type: multipart/mixed; boundary=\"{boundary}\"\nMIME-Version: 1.0\n\n"
    );
    let _ = write!(
        out,
        "--{boundary}\nContent-Type: text/cloud-config; charset=\"utf-8\"\n\
         Content-Transfer-Encoding: base64\nContent-Disposition: attachment; \
         filename=\"lab.cfg\"\n\n{}\n",
        b64(lab_part)
    );
    let kind = part_type(own).unwrap_or("text/cloud-config");
    let _ = write!(
        out,
        "--{boundary}\nContent-Type: {kind}; charset=\"utf-8\"\n\
         Merge-Type: list(append)+dict(no_replace,recurse_array)+str()\n\
         Content-Transfer-Encoding: base64\nContent-Disposition: attachment; \
         filename=\"own.cfg\"\n\n{}\n",
        b64(own)
    );
    let _ = writeln!(out, "--{boundary}--");
    out
}
