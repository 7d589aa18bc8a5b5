//! `minivmm ssh VM [-- CMD]` and the lookup `minivmm console VM` shares: a VM is named
//! `VM` (when one lab has a VM of that name) or `LAB/VM`. `ssh` runs the host's OpenSSH
//! client with the lab's key, its `known_hosts` and strict host key checking (the keys
//! were made before the VM booted, so there is never a question to answer), as the lab's
//! user, at the VM's address on a network the host is on.

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;

use crate::ls::lab_copy;
use crate::state::{lab_names, LabDir, VmDir};
use crate::Error;

/// Find the VM `target` (`VM` or `LAB/VM`) in the state directory.
pub fn find_vm(state: &Path, target: &str) -> Result<(LabDir, VmDir), Error> {
    let (lab, vm) = match target.split_once('/') {
        Some((l, v)) => (Some(l), v),
        None => (None, target),
    };
    let labs: Vec<String> = match lab {
        Some(l) => vec![l.to_string()],
        None => lab_names(state),
    };
    let found: Vec<LabDir> = labs
        .iter()
        .map(|l| LabDir::new(state, l))
        .filter(|ld| ld.vm(vm).path.is_dir())
        .collect();
    match found.len() {
        0 => Err(Error::BadInput(format!(
            "no lab VM named '{target}' in {} (see `minivmm ls`)",
            state.display()
        ))),
        1 => {
            let ld = found.into_iter().next().expect("one lab");
            let vd = ld.vm(vm);
            Ok((ld, vd))
        }
        _ => Err(Error::BadInput(format!(
            "'{vm}' is a VM of several labs ({}): say LAB/{vm}",
            found
                .iter()
                .map(|l| l.name.clone())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// The `ssh` command for `target`, running `cmd` (a login shell when empty).
pub fn command(state: &Path, target: &str, cmd: &[String]) -> Result<Command, Error> {
    let (ld, vd) = find_vm(state, target)?;
    let lab = lab_copy(&ld).ok_or_else(|| {
        Error::BadInput(format!(
            "{}: cannot read the lab's copy of its lab file",
            ld.file("lab.toml").display()
        ))
    })?;
    let vm = lab
        .vms
        .iter()
        .find(|v| v.name == vd.name)
        .ok_or_else(|| Error::BadInput(format!("{target}: not in the lab file any more")))?;
    // The first address on a network the host has an address on.
    let addr = vm
        .nics
        .iter()
        .find(|n| {
            lab.networks
                .iter()
                .any(|net| net.name == n.network && net.host.is_some())
        })
        .and_then(|n| n.address.parse::<Ipv4Addr>().ok())
        .ok_or_else(|| {
            Error::BadInput(format!(
                "{target} is on no network the host has an address on (give a [[network]] a \
                 host address)"
            ))
        })?;
    if vd.pid().is_none() {
        return Err(Error::BadInput(format!(
            "{target} is {} (start it with `minivmm up {}`)",
            vd.state(),
            ld.name
        )));
    }
    let user = lab
        .user
        .clone()
        .unwrap_or_else(|| crate::validate::DEFAULT_USER.into());
    Ok(client(
        &ld.file("key"),
        &ld.file("known_hosts"),
        &format!("{user}@{addr}"),
        cmd,
    ))
}

/// OpenSSH's client for `dest` (`USER@ADDRESS`) with the lab's `key` and `known_hosts`
/// and nothing else of the user's, running `cmd` (a login shell when empty).
fn client(key: &Path, known_hosts: &Path, dest: &str, cmd: &[String]) -> Command {
    let mut c = Command::new("ssh");
    c.arg("-i")
        .arg(key)
        .args(["-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes"])
        .arg("-o")
        .arg(format!("UserKnownHostsFile={}", known_hosts.display()))
        .args([
            "-o",
            "GlobalKnownHostsFile=/dev/null",
            "-o",
            "StrictHostKeyChecking=yes",
            // The timeout covers sshd's banner, which a guest sends only after sshd has
            // forked and re-executed itself: on a busy PVM host (kernel code emulated)
            // that alone has taken over 20 s. A VM that is not there fails sooner: no
            // route (ARP) or refused.
            "-o",
            "ConnectTimeout=90",
            // A VM that ends or stops answering while a session is open: ssh gives up
            // after 10 keepalives unanswered for 30 s each (5 minutes: a busy PVM guest
            // can take tens of seconds to answer one), instead of waiting for TCP.
            "-o",
            "ServerAliveInterval=30",
            "-o",
            "ServerAliveCountMax=10",
            "-o",
            "LogLevel=ERROR",
        ])
        .arg(dest);
    if !cmd.is_empty() {
        c.arg("--").args(cmd);
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_trusts_only_the_lab_and_gives_up_on_a_silent_vm() {
        let c = client(
            Path::new("/s/key"),
            Path::new("/s/known_hosts"),
            "student@10.0.0.2",
            &["hostname".to_string()],
        );
        let args: Vec<String> = c
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let opt = |o: &str| args.windows(2).any(|w| w[0] == "-o" && w[1] == o);
        assert!(opt("UserKnownHostsFile=/s/known_hosts"));
        assert!(opt("GlobalKnownHostsFile=/dev/null"));
        assert!(opt("StrictHostKeyChecking=yes"));
        assert!(opt("BatchMode=yes"));
        // 10 keepalives 30 s apart: a session whose VM stops answering ends in 5 minutes.
        assert!(opt("ServerAliveInterval=30"));
        assert!(opt("ServerAliveCountMax=10"));
        assert_eq!(args[..2], ["-i", "/s/key"]);
        assert_eq!(
            args[args.len() - 3..],
            ["student@10.0.0.2", "--", "hostname"]
        );
    }
}
