//! Keys and certificates made on the host at `up`: the lab's SSH key pair, each VM's SSH
//! host key (so that `known_hosts` is complete before any VM boots, and no guest spends
//! minutes of emulated kernel time making keys), and, for labs with `certificate = true`
//! VMs, a lab CA and a server certificate per such VM (its name and addresses as subject
//! alternative names). `ssh-keygen` and `openssl` do the work; every file is written under
//! a temporary name and renamed, so that a killed `up` never leaves half a key.

use std::path::Path;
use std::process::{Command, Stdio};

use crate::validate::Vm;
use crate::Error;

fn run(cmd: &mut Command, what: &str) -> Result<(), Error> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error::Tool(format!("{what}: cannot run {:?}: {e}", cmd.get_program())))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(Error::Tool(format!(
            "{what}: {}",
            err.lines().last().unwrap_or("failed").trim()
        )));
    }
    Ok(())
}

/// `PATH.pub`: where ssh-keygen puts the public half of the key at `PATH`.
pub fn pub_path(path: &Path) -> std::path::PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".pub");
    s.into()
}

/// Make an ed25519 key pair at `path` and `path.pub` unless it exists.
pub fn ssh_key(path: &Path, comment: &str) -> Result<(), Error> {
    let public = pub_path(path);
    if path.is_file() && public.is_file() {
        return Ok(());
    }
    let tmp = path.with_file_name(format!(
        ".{}.tmp",
        path.file_name().unwrap_or_default().to_string_lossy()
    ));
    let tmp_pub = pub_path(&tmp);
    let _ = std::fs::remove_file(&tmp);
    let _ = std::fs::remove_file(&tmp_pub);
    run(
        Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
            .arg(&tmp),
        &format!("making the key {}", path.display()),
    )?;
    std::fs::rename(&tmp_pub, &public).map_err(Error::io(&public))?;
    std::fs::rename(&tmp, path).map_err(Error::io(path))?;
    Ok(())
}

/// Make the lab's CA (`ca.key`, `ca.crt` in `dir`) unless it exists.
pub fn ca(dir: &Path, lab: &str) -> Result<(), Error> {
    let (key, crt) = (dir.join("ca.key"), dir.join("ca.crt"));
    if key.is_file() && crt.is_file() {
        return Ok(());
    }
    let (tkey, tcrt) = (dir.join(".ca.key.tmp"), dir.join(".ca.crt.tmp"));
    run(
        Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-days",
                "3650",
                "-subj",
            ])
            .arg(format!("/CN={lab} lab CA"))
            .args(["-addext", "basicConstraints=critical,CA:TRUE"])
            .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"])
            .arg("-keyout")
            .arg(&tkey)
            .arg("-out")
            .arg(&tcrt),
        "making the lab CA",
    )?;
    std::fs::rename(&tkey, &key).map_err(Error::io(&key))?;
    std::fs::rename(&tcrt, &crt).map_err(Error::io(&crt))?;
    Ok(())
}

/// Make `vm`'s server certificate (`server.key`, `server.crt` in `vm_dir`), signed by the
/// CA in `lab_dir`, unless it exists.
pub fn server_cert(lab_dir: &Path, vm_dir: &Path, vm: &Vm) -> Result<(), Error> {
    let (key, crt) = (vm_dir.join("server.key"), vm_dir.join("server.crt"));
    if key.is_file() && crt.is_file() {
        return Ok(());
    }
    let (tkey, tcsr, tcrt, ext) = (
        vm_dir.join(".server.key.tmp"),
        vm_dir.join(".server.csr.tmp"),
        vm_dir.join(".server.crt.tmp"),
        vm_dir.join(".server.ext.tmp"),
    );
    let mut san = format!("DNS:{}", vm.name);
    for n in &vm.nics {
        san.push_str(&format!(",IP:{}", n.address));
    }
    std::fs::write(
        &ext,
        format!(
            "subjectAltName={san}\nbasicConstraints=critical,CA:FALSE\n\
             keyUsage=critical,digitalSignature,keyEncipherment\n\
             extendedKeyUsage=serverAuth,clientAuth\n"
        ),
    )
    .map_err(Error::io(&ext))?;
    let what = format!("making the certificate of {}", vm.name);
    run(
        Command::new("openssl")
            .args([
                "req",
                "-new",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-subj",
            ])
            .arg(format!("/CN={}", vm.name))
            .arg("-keyout")
            .arg(&tkey)
            .arg("-out")
            .arg(&tcsr),
        &what,
    )?;
    run(
        Command::new("openssl")
            .args(["x509", "-req", "-days", "3650", "-CAcreateserial", "-in"])
            .arg(&tcsr)
            .arg("-CA")
            .arg(lab_dir.join("ca.crt"))
            .arg("-CAkey")
            .arg(lab_dir.join("ca.key"))
            .arg("-extfile")
            .arg(&ext)
            .arg("-out")
            .arg(&tcrt),
        &what,
    )?;
    let _ = std::fs::remove_file(&tcsr);
    let _ = std::fs::remove_file(&ext);
    std::fs::rename(&tkey, &key).map_err(Error::io(&key))?;
    std::fs::rename(&tcrt, &crt).map_err(Error::io(&crt))?;
    Ok(())
}
