//! Unit tests: lab file validation (every kind of problem, all of them at once), the seed
//! files, VM states from the state directory, and `down` on labs that run nothing.

use std::path::{Path, PathBuf};

use crate::state::{LabDir, VmState};
use crate::validate::{parse, Problem};

/// A scratch directory with a fake kernel and disk, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Self {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("labs-unit-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        std::fs::write(p.join("vmlinux"), b"kernel").unwrap();
        std::fs::write(p.join("base.img"), b"disk").unwrap();
        Self(p)
    }

    fn lab(&self) -> PathBuf {
        self.0.join("t.toml")
    }

    fn check(&self, text: &str) -> Result<crate::Lab, Vec<Problem>> {
        parse(text, &self.lab())
    }

    /// The problems of `text`, as (key, message) pairs.
    fn problems(&self, text: &str) -> Vec<(String, String)> {
        match self.check(text) {
            Ok(_) => panic!("no problem found in:\n{text}"),
            Err(list) => list.into_iter().map(|p| (p.key, p.message)).collect(),
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const NET: &str = r#"
[[network]]
name = "labbr0"
cidr = "10.30.0.0/24"
host = "10.30.0.1"
"#;

fn vm(name: &str, addr: &str) -> String {
    format!(
        r#"
[[vm]]
name = "{name}"
kernel = "vmlinux"
disk = "base.img"
nics = [{{ network = "labbr0", address = "{addr}" }}]
"#
    )
}

#[test]
fn a_good_lab_is_resolved() {
    let s = Scratch::new("good");
    std::fs::write(s.0.join("motd"), b"hello\n").unwrap();
    let text = format!(
        "{NET}{}\ncpus = 2\nmemory = \"1G\"\nlab_key = true\nuser_data = \"#cloud-config\\nruncmd: [true]\\n\"\n\
         [[vm.disks]]\nname = \"data\"\nsize = \"64M\"\nformat = \"ext4\"\nmount = \"/srv/data\"\n\
         [[vm.files]]\npath = \"/etc/motd\"\nsource = \"motd\"\nmode = \"0644\"\n{}",
        vm("a", "10.30.0.10"),
        vm("b", "10.30.0.11")
    );
    let lab = s.check(&text).unwrap();
    assert_eq!(lab.name, "t");
    assert_eq!(lab.user, "student");
    assert_eq!(lab.networks.len(), 1);
    assert_eq!(lab.networks[0].host, Some("10.30.0.1".parse().unwrap()));
    let a = &lab.vms[0];
    assert_eq!((a.cpus, a.memory), (2, 1 << 30));
    assert_eq!(a.kernel, s.0.join("vmlinux"));
    assert_eq!(a.base_disk, Some(s.0.join("base.img")));
    assert_eq!(a.nics[0].prefix, 24);
    assert!(a.lab_key);
    assert_eq!(a.disks[0].size, 64 << 20);
    assert!(a.disks[0].ext4);
    assert_eq!(a.files[0].content, b"hello\n");
    assert_eq!(a.files[0].mode, Some(0o644));
    // Derived MACs: locally administered, different per VM, stable.
    let b = &lab.vms[1];
    assert_ne!(a.nics[0].mac, b.nics[0].mac);
    assert_eq!(a.nics[0].mac[0] & 0x03, 0x02);
    assert_eq!(s.check(&text).unwrap().vms[0].nics[0].mac, a.nics[0].mac);
}

#[test]
fn unknown_keys_and_bad_toml_are_one_line_with_a_position() {
    let s = Scratch::new("toml");
    let p = s.problems(&format!(
        "{NET}{}\nmemroy = \"1G\"\n",
        vm("a", "10.30.0.10")
    ));
    assert_eq!(p.len(), 1);
    assert!(p[0].1.contains("unknown field `memroy`"), "{p:?}");
    assert!(p[0].0.starts_with("line 13, column 1"), "{p:?}");
    let p = s.problems("name = \n");
    assert_eq!(p.len(), 1);
    assert!(p[0].0.starts_with("line 1"), "{p:?}");
    assert!(!p[0].1.contains('\n'));
}

#[test]
fn name_clashes() {
    let s = Scratch::new("names");
    let text = format!(
        "{NET}{NET}{}{}",
        vm("a", "10.30.0.10"),
        vm("a", "10.30.0.11")
    );
    let p = s.problems(&text);
    assert!(p.contains(&(
        "network[1].name".into(),
        "a second network named 'labbr0'".into()
    )));
    assert!(p.contains(&("vm[1].name".into(), "a second VM named 'a'".into())));
    // Bad names.
    let text = format!(
        "name = \"Bad_Lab\"\nuser = \"root\"\n{NET}{}",
        vm("VM-1", "10.30.0.10")
    );
    let keys: Vec<String> = s.problems(&text).into_iter().map(|p| p.0).collect();
    assert_eq!(keys, ["name", "user", "vm[0].name"]);
    let p = s.problems(&format!(
        "[[network]]\nname = \"a-very-long-bridge\"\ncidr = \"10.1.0.0/16\"\n{}",
        vm("a", "10.1.0.5").replace("labbr0", "a-very-long-bridge")
    ));
    assert_eq!(p[0].0, "network[0].name", "{p:?}");
}

#[test]
fn address_clashes_and_addresses_outside_their_network() {
    let s = Scratch::new("addr");
    let text = format!(
        "{NET}{}{}{}{}{}{}",
        vm("a", "10.30.0.10"),
        vm("b", "10.30.0.10"),
        vm("c", "10.30.0.1"),
        vm("d", "10.30.1.5"),
        vm("e", "10.30.0.255"),
        vm("f", "10.30.0.300"),
    );
    let p = s.problems(&text);
    let expect = [
        (
            "vm[1].nics[0].address",
            "10.30.0.10 is already used by a (vm[0].nics[0])",
        ),
        (
            "vm[2].nics[0].address",
            "10.30.0.1 is already the host on 'labbr0'",
        ),
        (
            "vm[3].nics[0].address",
            "10.30.1.5 is outside network 'labbr0' (10.30.0.0/24)",
        ),
        (
            "vm[4].nics[0].address",
            "10.30.0.255 is the network's own or broadcast address",
        ),
        (
            "vm[5].nics[0].address",
            "'10.30.0.300' is not an IPv4 address",
        ),
    ];
    let p: Vec<(&str, &str)> = p.iter().map(|(k, m)| (k.as_str(), m.as_str())).collect();
    assert_eq!(p, expect);
}

#[test]
fn bad_networks() {
    let s = Scratch::new("nets");
    let text = format!(
        "{NET}[[network]]\nname = \"b\"\ncidr = \"10.30.0.128/25\"\n\
         [[network]]\nname = \"c\"\ncidr = \"10.40.0.5/24\"\n\
         [[network]]\nname = \"d\"\ncidr = \"10.50.0.0/24\"\nhost = \"10.51.0.1\"\n\
         [[network]]\nname = \"e\"\ncidr = \"10.60.0.0\"\n{}\nnics = [{{ network = \"nope\", address = \"1.2.3.4\" }}]\n",
        r#"
[[vm]]
name = "a"
kernel = "vmlinux"
"#
    );
    let p = s.problems(&text);
    let keys: Vec<&str> = p.iter().map(|x| x.0.as_str()).collect();
    assert_eq!(
        keys,
        [
            "network[1].cidr",
            "network[2].cidr",
            "network[3].host",
            "network[4].cidr",
            "vm[0].nics[0].network"
        ],
        "{p:?}"
    );
    assert!(p[0].1.contains("overlaps network 'labbr0'"), "{p:?}");
    assert!(p[1].1.contains("host bits set"), "{p:?}");
    assert!(p[2].1.contains("outside the network"), "{p:?}");
    assert!(p[4].1.contains("no [[network]] named 'nope'"), "{p:?}");
}

#[test]
fn missing_files_each_named() {
    let s = Scratch::new("files");
    let text = format!(
        "{NET}{}\ninitrd = \"no-initrd\"\nuser_data_file = \"no-user-data.yaml\"\n\
         [[vm.files]]\npath = \"/etc/x\"\nsource = \"no-source\"\n\
         [[vm]]\nname = \"b\"\nkernel = \"no-kernel\"\n\
         [[vm]]\nname = \"c\"\nimage = \"./no-image-dir\"\n",
        vm("a", "10.30.0.10")
    );
    let p = s.problems(&text);
    let keys: Vec<&str> = p.iter().map(|x| x.0.as_str()).collect();
    assert_eq!(
        keys,
        [
            "vm[0].initrd",
            "vm[0].user_data_file",
            "vm[0].files[0].source",
            "vm[1].kernel",
            "vm[2].image"
        ],
        "{p:?}"
    );
    for (k, m) in &p[..4] {
        assert!(m.contains("No such file"), "{k}: {m}");
        assert!(m.contains(&s.0.display().to_string()), "{k}: {m}");
    }
}

#[test]
fn bad_values() {
    let s = Scratch::new("values");
    let text = format!(
        "{NET}{}\ncpus = 0\nmemory = \"12M\"\nuser_data = \"runcmd: []\"\n\
         [[vm.disks]]\nname = \"d\"\nsize = \"lots\"\nformat = \"xfs\"\nmount = \"srv\"\n\
         [[vm.files]]\npath = \"etc/x\"\ncontent = \"x\"\nmode = \"999\"\nowner = \"a:b:c\"\n\
         [[vm.files]]\npath = \"/etc/y\"\n",
        vm("a", "10.30.0.10")
    );
    let p = s.problems(&text);
    let keys: Vec<&str> = p.iter().map(|x| x.0.as_str()).collect();
    assert_eq!(
        keys,
        [
            "vm[0].cpus",
            "vm[0].memory",
            "vm[0].disks[0].size",
            "vm[0].disks[0].format",
            "vm[0].disks[0].mount",
            "vm[0].disks[0].mount",
            "vm[0].user_data",
            "vm[0].files[0].path",
            "vm[0].files[0].mode",
            "vm[0].files[0].owner",
            "vm[0].files[1]",
        ],
        "{p:?}"
    );
}

#[test]
fn macs_and_device_counts() {
    let s = Scratch::new("macs");
    let mut text = format!(
        "{NET}[[network]]\nname = \"br2\"\ncidr = \"10.31.0.0/24\"\n{}",
        vm("a", "10.30.0.10")
    );
    text = text.replace(
        "nics = [{ network = \"labbr0\", address = \"10.30.0.10\" }]",
        "nics = [{ network = \"labbr0\", address = \"10.30.0.10\", mac = \"02:00:00:00:00:01\" }, \
         { network = \"labbr0\", address = \"10.30.0.11\", mac = \"02:00:00:00:00:01\" }, \
         { network = \"br2\", address = \"10.31.0.2\", mac = \"01:00:00:00:00:01\" }]",
    );
    for i in 0..15 {
        text.push_str(&format!("[[vm.disks]]\nname = \"d{i}\"\nsize = \"1M\"\n"));
    }
    let p = s.problems(&text);
    let keys: Vec<&str> = p.iter().map(|x| x.0.as_str()).collect();
    assert_eq!(
        keys,
        [
            "vm[0].nics[1].network",
            "vm[0].nics[1].mac",
            "vm[0].nics[2].mac",
            "vm[0]"
        ],
        "{p:?}"
    );
    assert!(p[3].1.contains("at most 18"), "{p:?}");
}

#[test]
fn images_and_kernels() {
    let s = Scratch::new("images");
    let p = s.problems("[[vm]]\nname = \"a\"\n");
    assert_eq!(p[0].0, "vm[0]");
    assert!(p[0].1.contains("no image and no kernel"));
    let p = s.problems("[[vm]]\nname = \"a\"\nimage = \"windows\"\n");
    assert!(p[0].1.contains("unknown image 'windows'"), "{p:?}");
    let p = s.problems("[[vm]]\nname = \"a\"\nimage = \"./img\"\nkernel = \"vmlinux\"\n");
    assert!(p[0].1.contains("not both"), "{p:?}");
    // An image directory.
    std::fs::create_dir(s.0.join("img")).unwrap();
    let p = s.problems("image = \"./img\"\n[[vm]]\nname = \"a\"\n");
    assert_eq!(p[0].0, "image");
    assert!(p[0].1.contains("no vmlinux"), "{p:?}");
    std::fs::write(s.0.join("img/vmlinux"), b"k").unwrap();
    std::fs::write(s.0.join("img/disk.img"), b"d").unwrap();
    let lab = s
        .check("image = \"./img\"\n[[vm]]\nname = \"a\"\n")
        .unwrap();
    assert_eq!(lab.vms[0].base_disk, Some(s.0.join("img/disk.img")));
    assert_eq!(lab.vms[0].cmdline, None);
    // The image's own command line comes first, the VM's after it.
    std::fs::write(s.0.join("img/cmdline"), b"init=/sbin/x\n  quiet\n").unwrap();
    let lab = s
        .check("image = \"./img\"\n[[vm]]\nname = \"a\"\ncmdline = \"debug\"\n")
        .unwrap();
    assert_eq!(
        lab.vms[0].cmdline.as_deref(),
        Some("init=/sbin/x quiet debug")
    );
    // No VM at all.
    assert_eq!(
        s.problems("description = \"x\"\n")[0].1,
        "the lab has no [[vm]]"
    );
}

#[test]
fn problems_print_one_line_each_with_the_file() {
    let s = Scratch::new("display");
    let text = format!("{NET}{}{}", vm("a", "10.30.0.10"), vm("a", "10.30.9.10"));
    let list = s.check(&text).unwrap_err();
    let p = crate::Problems {
        file: PathBuf::from("labs/t.toml"),
        list,
    };
    let out = p.to_string();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        [
            "labs/t.toml: vm[1].name: a second VM named 'a'",
            "labs/t.toml: vm[1].nics[0].address: 10.30.9.10 is outside network 'labbr0' \
             (10.30.0.0/24)"
        ]
    );
}

#[test]
fn seeds() {
    let s = Scratch::new("seed");
    let text = format!(
        "{NET}{}\nuser_data = \"#!/bin/sh\\necho hi\\n\"\ncertificate = true\n\
         certificate_group = \"mysql\"\n{}",
        vm("a", "10.30.0.10"),
        vm("b", "10.30.0.11")
    );
    let lab = s.check(&text).unwrap();
    let a = &lab.vms[0];
    let net: serde_json::Value = serde_json::from_str(&crate::seed::network_config(a)).unwrap();
    assert_eq!(net["version"], 2);
    assert_eq!(net["ethernets"]["eth0"]["addresses"][0], "10.30.0.10/24");
    assert_eq!(
        net["ethernets"]["eth0"]["match"]["macaddress"],
        crate::validate::format_mac(&a.nics[0].mac)
    );
    let secrets = crate::seed::Secrets {
        lab_public: "ssh-ed25519 AAAAlab lab\n".into(),
        lab_private: "PRIVATE".into(),
        known_hosts: "a,10.30.0.10 ssh-ed25519 AAAAa\n".into(),
        ca_cert: Some("CA".into()),
    };
    let hk = crate::seed::HostKey {
        private: "HOSTPRIV".into(),
        public: "ssh-ed25519 AAAAa root@a\n".into(),
    };
    let cert = crate::seed::ServerCert {
        cert: "CERT".into(),
        key: "KEY".into(),
    };
    let part = crate::seed::lab_cloud_config(&lab, a, &secrets, &hk, Some(&cert));
    let doc: serde_json::Value =
        serde_json::from_str(part.strip_prefix("#cloud-config\n").unwrap()).unwrap();
    assert_eq!(doc["users"][0]["name"], "student");
    assert_eq!(
        doc["users"][0]["ssh_authorized_keys"][0],
        "ssh-ed25519 AAAAlab lab"
    );
    assert_eq!(doc["ssh_keys"]["ed25519_private"], "HOSTPRIV");
    assert_eq!(doc["final_message"], "minivmm-lab: ready a after $UPTIME s");
    let paths: Vec<&str> = doc["write_files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        paths,
        [
            "/etc/ssh/ssh_known_hosts",
            "/etc/hosts",
            "/etc/lab-tls/ca.crt",
            "/etc/lab-tls/server.crt",
            "/etc/lab-tls/server.key"
        ]
    );
    let key = &doc["write_files"][4];
    assert_eq!(key["owner"], "root:mysql");
    assert_eq!(key["permissions"], "0640");
    assert!(key.get("defer").is_none(), "root's files are written early");
    let ud = crate::seed::user_data(&part, a.user_data.as_deref());
    assert!(ud.starts_with("Content-Type: multipart/mixed;"));
    assert!(ud.contains("Content-Type: text/x-shellscript"));
    assert!(ud.contains("Merge-Type: list(append)+dict(no_replace,recurse_array)+str()"));
    assert!(ud.trim_end().ends_with("--==minivmm-lab-part==--"));
    // Without user-data of the lab file's own, the lab's part alone.
    assert_eq!(crate::seed::user_data(&part, None), part);
    assert_eq!(
        crate::seed::meta_data(&lab, a),
        "instance-id: iid-t-a\nlocal-hostname: a\n"
    );
}

fn touch(p: &Path, text: &str) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

#[test]
fn vm_states_from_the_state_directory() {
    let s = Scratch::new("state");
    let ld = LabDir::new(&s.0, "lab");
    let vd = ld.vm("a");
    std::fs::create_dir_all(&vd.path).unwrap();
    assert_eq!(vd.state(), VmState::Created);
    let boot = crate::state::boot_id();
    touch(&vd.file("started"), &format!("{boot}\n1.0\n0\n"));
    // Our own pid is not a minivmm serving this socket: never taken for the VM.
    touch(&vd.file("pid"), &std::process::id().to_string());
    assert_eq!(vd.pid(), None);
    assert_eq!(vd.state(), VmState::Crashed("vanished".into()));
    touch(&vd.file("started"), "another-boot\n1.0\n0\n");
    assert_eq!(vd.state(), VmState::Crashed("host rebooted".into()));
    touch(&vd.file("exit"), "code 3\n");
    assert_eq!(vd.state(), VmState::Crashed("code 3".into()));
    touch(&vd.file("stopping"), "down\n");
    assert_eq!(vd.state(), VmState::Stopped);
    std::fs::remove_file(vd.file("stopping")).unwrap();
    touch(&vd.file("exit"), "code 0\n");
    assert_eq!(vd.state(), VmState::Stopped);
}

#[test]
fn down_of_a_lab_that_runs_nothing_twice() {
    let s = Scratch::new("down");
    let opts = crate::down::DownOptions {
        state_dir: s.0.clone(),
        timeout: std::time::Duration::from_secs(1),
        purge: false,
    };
    // Never up: nothing to do, no error.
    let r = crate::down::down("nolab", &opts).unwrap();
    assert!(!r.existed);
    assert!(r.summary().contains("not up"));
    // Up once, all VMs ended (as after a host reboot), bridges already gone.
    let ld = LabDir::new(&s.0, "lab");
    touch(&ld.file("lab.toml"), "");
    touch(&ld.vm("a").file("started"), "x\n1\n0\n");
    touch(&ld.vm("b").file("started"), "x\n1\n0\n");
    touch(&ld.vm("b").file("exit"), "signal 9\n");
    ld.add_bridge("mvmgone0").unwrap();
    for _ in 0..2 {
        let r = crate::down::down("lab", &opts).unwrap();
        assert!(r.existed);
        assert!(r.bridges.is_empty());
        assert_eq!(r.vms.len(), 2);
        let how: Vec<&str> = r.vms.iter().map(|v| v.how.as_str()).collect();
        assert_eq!(
            how,
            [
                "was not running (crashed (host rebooted))",
                "was not running (crashed (signal 9))"
            ]
        );
        assert!(ld.bridges().is_empty());
    }
    let purge = crate::down::DownOptions {
        purge: true,
        ..opts
    };
    assert!(crate::down::down("lab", &purge).unwrap().purged);
    assert!(!ld.path.exists());
    assert!(!crate::down::down("lab", &purge).unwrap().existed);
}

#[test]
fn certificate_group_needs_a_certificate() {
    let s = Scratch::new("certgroup");
    let p = s.problems(&format!(
        "{NET}{}certificate_group = \"mysql\"\n{}certificate = true\ncertificate_group = \"Bad Group\"\n",
        vm("a", "10.30.0.10"),
        vm("b", "10.30.0.11")
    ));
    assert_eq!(
        p,
        [
            (
                "vm[0].certificate_group".to_string(),
                "certificate_group needs certificate = true".to_string()
            ),
            (
                "vm[1].certificate_group".to_string(),
                "'Bad Group' is not a group name".to_string()
            )
        ]
    );
}

#[test]
fn the_shipped_labs_are_valid() {
    let s = Scratch::new("shipped");
    std::fs::rename(s.0.join("base.img"), s.0.join("debian.img")).unwrap();
    // The only test that reads the variable (find_debian): no other test races with it.
    std::env::set_var("MINIVMM_DEBIAN_DIR", &s.0);
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    for (name, vms) in [
        ("ssh-pair", 2),
        ("mysql-tls-backup", 3),
        ("web-data-clients", 4),
    ] {
        let lab = crate::validate::load(&dir.join(format!("{name}.toml")))
            .unwrap_or_else(|p| panic!("{p}"));
        assert_eq!(lab.name, name);
        assert_eq!(lab.vms.len(), vms);
        assert!(lab
            .vms
            .iter()
            .all(|v| v.base_disk == Some(s.0.join("debian.img"))));
        // Every VM reachable from the host, for `minivmm ssh` and the tests.
        for vm in &lab.vms {
            let net = lab.network(&vm.nics[0].network).unwrap();
            assert!(net.host.is_some(), "{name}/{}", vm.name);
        }
        // The lab's own user-data is something cloud-init takes.
        for vm in &lab.vms {
            if let Some(u) = &vm.user_data {
                assert_eq!(crate::seed::part_type(u), Some("text/cloud-config"));
            }
        }
    }
}
