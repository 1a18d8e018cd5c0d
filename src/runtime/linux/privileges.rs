//! Narrowing what the payload may do (`RunOptions::restrict_privileges`):
//! the bounding and inheritable capability sets cut down to Docker's
//! default set, the ambient set cleared, and no_new_privs set, so the
//! payload can gain nothing more through setuid binaries or file
//! capabilities. Upstream does none of this.

use std::collections::HashSet;

use anyhow::{Context, Result};

/// Docker's default capability set; everything else leaves the bounding set.
fn docker_default_caps() -> HashSet<caps::Capability> {
    use caps::Capability::*;
    [
        CAP_CHOWN,
        CAP_DAC_OVERRIDE,
        CAP_FSETID,
        CAP_FOWNER,
        CAP_MKNOD,
        CAP_NET_RAW,
        CAP_SETGID,
        CAP_SETUID,
        CAP_SETFCAP,
        CAP_SETPCAP,
        CAP_NET_BIND_SERVICE,
        CAP_SYS_CHROOT,
        CAP_KILL,
        CAP_AUDIT_WRITE,
    ]
    .into_iter()
    .collect()
}

/// Narrows what the payload can gain at exec to Docker's default set, and
/// forbids gaining more through setuid binaries or file capabilities.
pub(crate) fn restrict_privileges() -> Result<()> {
    use caps::CapSet;
    let keep = docker_default_caps();
    let bounding = caps::read(None, CapSet::Bounding).context("failed to read the bounding set")?;
    for cap in bounding.difference(&keep) {
        caps::drop(None, CapSet::Bounding, *cap)
            .with_context(|| format!("failed to drop {cap} from the bounding set"))?;
    }
    let inheritable =
        caps::read(None, CapSet::Inheritable).context("failed to read the inheritable set")?;
    let inheritable: HashSet<_> = inheritable.intersection(&keep).copied().collect();
    caps::set(None, CapSet::Inheritable, &inheritable)
        .context("failed to narrow the inheritable set")?;
    caps::clear(None, CapSet::Ambient).context("failed to clear the ambient set")?;
    rustix::thread::set_no_new_privs(true).context("failed to set no_new_privs")?;
    Ok(())
}
