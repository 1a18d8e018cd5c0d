//! The rootless user-namespace probe (upstream-api.md,
//! `probe_rootless_userns`), done in-process: a
//! forked child enters the same namespaces the rootless re-exec would and
//! exits. Results are memoised per `disable_network`, failures included.

use std::sync::Mutex;

use super::{LinuxNamespaceBackend, LinuxNamespaceProbe};
use crate::sys;

static PROBES: Mutex<[Option<LinuxNamespaceProbe>; 2]> = Mutex::new([None, None]);

/// Whether this process can enter a user namespace (root mapped to the
/// caller) with PID, mount, UTS and IPC namespaces, and a network namespace
/// when `disable_network`. Runs once per `disable_network` value.
pub fn probe_rootless_userns(disable_network: bool) -> LinuxNamespaceProbe {
    let mut probes = PROBES.lock().expect("rootless probe cache poisoned");
    let slot = &mut probes[usize::from(disable_network)];
    if let Some(probe) = slot {
        return probe.clone();
    }
    let outcome = sys::probe_namespaces(sys::NamespacePlan::new(true, disable_network, false));
    let probe = LinuxNamespaceProbe {
        backend: LinuxNamespaceBackend::RootlessUser,
        disable_network,
        ok: outcome.status.is_some_and(|s| s.success()),
        status: outcome.status,
        stderr: outcome.stderr,
    };
    *slot = Some(probe.clone());
    probe
}
