//! The raw syscalls that neither `std` nor `rustix` wrap safely: the
//! re-exec's `pre_exec` hook (unshare, id maps, propagation, fork and wait),
//! the in-process user-namespace probe, `close_range`, `mount_setattr`,
//! the loopback ioctl and the signal mask of the command line's cleanup.
//!
//! This is the only module of the crate that may contain `unsafe` code.
//! Everything that runs between `fork` and `exec` lives here, so the
//! async-signal-safety rules are checked in one place: no allocation, no
//! locks, no panics, and a forked child only ever `_exit`s on error.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, ExitStatus};

/// Room for `"0 4294967295 1"` with some slack.
const MAP_CAPACITY: usize = 32;

/// A uid or gid map line, formatted before the fork so the hook never
/// allocates.
#[derive(Clone, Copy, Debug)]
struct MapLine {
    bytes: [u8; MAP_CAPACITY],
    len: usize,
}

impl MapLine {
    /// `0 <id> 1`: root inside the namespace is `id` outside.
    fn root_to(id: u32) -> Self {
        let mut bytes = [0u8; MAP_CAPACITY];
        let text = format!("0 {id} 1");
        bytes[..text.len()].copy_from_slice(text.as_bytes());
        Self {
            bytes,
            len: text.len(),
        }
    }

    fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// What the child must do between `fork` and `exec` to enter its
/// namespaces. Built before the fork; plain data, so the hook only reads it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct NamespacePlan {
    flags: libc::c_int,
    maps: Option<(MapLine, MapLine)>,
    /// A user namespace whose maps a helper outside it writes as the
    /// identity: root stays root, with a private binfmt_misc instance.
    identity_userns: bool,
    signal_as_exit_code: bool,
}

impl NamespacePlan {
    /// Mount, PID, UTS and IPC namespaces; plus a user namespace that maps
    /// root to the caller's effective ids when `rootless`; plus a network
    /// namespace when `disable_network`. The waiting parent re-raises the
    /// child's fatal signal, or with `signal_as_exit_code` exits 128+N.
    pub(crate) fn new(rootless: bool, disable_network: bool, signal_as_exit_code: bool) -> Self {
        let mut flags =
            libc::CLONE_NEWNS | libc::CLONE_NEWPID | libc::CLONE_NEWUTS | libc::CLONE_NEWIPC;
        if disable_network {
            flags |= libc::CLONE_NEWNET;
        }
        let maps = rootless.then(|| {
            flags |= libc::CLONE_NEWUSER;
            let uid = rustix::process::geteuid().as_raw();
            let gid = rustix::process::getegid().as_raw();
            (MapLine::root_to(uid), MapLine::root_to(gid))
        });
        Self {
            flags,
            maps,
            identity_userns: false,
            signal_as_exit_code,
        }
    }

    /// Adds a user namespace with every id mapped to itself, for the
    /// privileged backend. The run keeps root's identity and its
    /// capabilities over everything the namespace owns, and gets its own
    /// binfmt_misc instance (Linux 6.7 and later), so a foreign-arch rule
    /// never reaches the host's and dies with the run however it ends.
    /// No effect on a plan that already has a user namespace.
    pub(crate) fn with_identity_user_namespace(mut self) -> Self {
        if self.maps.is_none() {
            self.flags |= libc::CLONE_NEWUSER;
            self.identity_userns = true;
        }
        self
    }
}

fn last_error() -> io::Error {
    // `last_os_error` reads errno into a plain integer: no allocation.
    io::Error::last_os_error()
}

/// Writes `data` to a procfs file with open/write/close only.
/// Async-signal-safe.
fn write_proc_file(path: &CStr, data: &[u8]) -> io::Result<()> {
    // SAFETY: `path` is NUL-terminated; open has no memory-safety preconditions.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(last_error());
    }
    // SAFETY: `data` is a valid slice for `data.len()` bytes and `fd` is open.
    let written = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
    let result = if written == data.len() as isize {
        Ok(())
    } else if written < 0 {
        Err(last_error())
    } else {
        Err(io::Error::from_raw_os_error(libc::EIO))
    };
    // SAFETY: `fd` was opened above and is closed exactly once.
    unsafe { libc::close(fd) };
    result
}

/// The steps of entering the namespaces, in order, so a failure can say
/// which one the kernel refused. The discriminant is what the probe child
/// reports through its pipe.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
#[repr(i32)]
pub(crate) enum NamespaceStep {
    Unshare = 1,
    DenySetgroups = 2,
    UidMap = 3,
    GidMap = 4,
    MakeRootPrivate = 5,
}

impl NamespaceStep {
    const ALL: [NamespaceStep; 5] = [
        NamespaceStep::Unshare,
        NamespaceStep::DenySetgroups,
        NamespaceStep::UidMap,
        NamespaceStep::GidMap,
        NamespaceStep::MakeRootPrivate,
    ];

    fn from_code(code: i32) -> Option<Self> {
        Self::ALL.into_iter().find(|step| *step as i32 == code)
    }

    /// The operation, as a message names it.
    fn operation(self) -> &'static str {
        match self {
            NamespaceStep::Unshare => "unshare the namespaces",
            NamespaceStep::DenySetgroups => "write deny to /proc/self/setgroups",
            NamespaceStep::UidMap => "write /proc/self/uid_map",
            NamespaceStep::GidMap => "write /proc/self/gid_map",
            NamespaceStep::MakeRootPrivate => "make / recursively private",
        }
    }
}

/// unshare(2) the planned namespaces, write the id maps, and make every
/// mount below `/` private, so nothing mounted later propagates to the
/// host. On failure, the step that failed and its error.
/// Async-signal-safe.
fn enter_namespaces(plan: &NamespacePlan) -> Result<(), (NamespaceStep, io::Error)> {
    let at = |step: NamespaceStep| move |err: io::Error| (step, err);
    let mapper = match plan.identity_userns {
        true => Some(IdentityMapper::fork().map_err(at(NamespaceStep::Unshare))?),
        false => None,
    };
    // SAFETY: unshare only changes this process's namespace membership.
    if unsafe { libc::unshare(plan.flags) } != 0 {
        let err = last_error();
        if let Some(mapper) = mapper {
            let _ = mapper.finish(false);
        }
        return Err((NamespaceStep::Unshare, err));
    }
    if let Some(mapper) = mapper {
        mapper.finish(true).map_err(at(NamespaceStep::UidMap))?;
    }
    if let Some((uid_map, gid_map)) = &plan.maps {
        // The kernel refuses a gid map from an unprivileged writer until
        // setgroups is denied; util-linux's --map-root-user does the same.
        write_proc_file(c"/proc/self/setgroups", b"deny")
            .map_err(at(NamespaceStep::DenySetgroups))?;
        write_proc_file(c"/proc/self/uid_map", uid_map.as_bytes())
            .map_err(at(NamespaceStep::UidMap))?;
        write_proc_file(c"/proc/self/gid_map", gid_map.as_bytes())
            .map_err(at(NamespaceStep::GidMap))?;
    }
    // SAFETY: all pointers are NULL or NUL-terminated static strings.
    let rc = unsafe {
        libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err((NamespaceStep::MakeRootPrivate, last_error()));
    }
    Ok(())
}

/// Every id mapped to itself (the kernel's limit is 2^32 - 1 ids).
const IDENTITY_MAP: &[u8] = b"0 0 4294967295";

/// A child forked before `unshare(CLONE_NEWUSER)` that writes the identity
/// maps of its parent's new user namespace. Only a process with
/// CAP_SETUID/CAP_SETGID in the parent namespace may map more than its own
/// id, and the process inside has those only in the new one.
struct IdentityMapper {
    pid: libc::pid_t,
    /// Write end of the go-ahead pipe; its only reader is the mapper.
    go: libc::c_int,
}

impl IdentityMapper {
    /// Forks the mapper, which waits for [`IdentityMapper::finish`].
    /// Async-signal-safe.
    fn fork() -> io::Result<Self> {
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: `fds` is a valid out-array of two descriptors.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(last_error());
        }
        // SAFETY: getpid has no preconditions.
        let target = unsafe { libc::getpid() };
        // SAFETY: the child only makes async-signal-safe calls and
        // `_exit`s; it never returns into Rust code.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: closes the child's copy of the write end, once.
            unsafe { libc::close(fds[1]) };
            let code = identity_mapper_main(fds[0], target);
            // SAFETY: _exit ends the child without running Rust code.
            unsafe { libc::_exit(code) };
        }
        let err = last_error();
        // SAFETY: the read end belongs to the mapper alone from now on.
        unsafe { libc::close(fds[0]) };
        if pid < 0 {
            // SAFETY: the write end was opened above and is closed once.
            unsafe { libc::close(fds[1]) };
            return Err(err);
        }
        Ok(Self { pid, go: fds[1] })
    }

    /// Tells the mapper to write the maps (`go`) or to give up, and waits
    /// for it. Async-signal-safe.
    fn finish(self, go: bool) -> io::Result<()> {
        if go {
            // SAFETY: writes one byte from a static to the open pipe.
            unsafe { libc::write(self.go, b"1".as_ptr().cast(), 1) };
        }
        // SAFETY: `go` is closed exactly once; a mapper told nothing reads
        // end-of-file and exits.
        unsafe { libc::close(self.go) };
        let status = wait_for(self.pid)?;
        match libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
            true => Ok(()),
            false if libc::WIFEXITED(status) => {
                Err(io::Error::from_raw_os_error(libc::WEXITSTATUS(status)))
            }
            false => Err(io::Error::from_raw_os_error(libc::ECHILD)),
        }
    }
}

/// The mapper's body: on the go-ahead, writes `0 0 4294967295` to the
/// target's uid_map and gid_map. Returns 0, or the errno as exit code.
/// Async-signal-safe.
fn identity_mapper_main(go: libc::c_int, target: libc::pid_t) -> libc::c_int {
    let mut byte = 0u8;
    // SAFETY: reads at most one byte into a live stack variable.
    if unsafe { libc::read(go, (&mut byte as *mut u8).cast(), 1) } != 1 {
        return 0;
    }
    for file in [&b"uid_map"[..], &b"gid_map"[..]] {
        let mut path = [0u8; 48];
        let Some(path) = proc_pid_path(&mut path, target, file) else {
            return libc::ENAMETOOLONG;
        };
        if let Err(err) = write_proc_file(path, IDENTITY_MAP) {
            return err.raw_os_error().unwrap_or(libc::EIO);
        }
    }
    0
}

/// `/proc/<pid>/<file>` as a C string in `buf`, without allocating.
fn proc_pid_path<'a>(buf: &'a mut [u8], pid: libc::pid_t, file: &[u8]) -> Option<&'a CStr> {
    let mut digits = [0u8; 10];
    let mut n = pid.unsigned_abs();
    let mut len = 0;
    loop {
        digits[len] = b'0' + (n % 10) as u8;
        n /= 10;
        len += 1;
        if n == 0 {
            break;
        }
    }
    let mut at = 0;
    let mut put = |bytes: &[u8]| -> Option<()> {
        let end = at + bytes.len();
        buf.get_mut(at..end)?.copy_from_slice(bytes);
        at = end;
        Some(())
    };
    put(b"/proc/")?;
    for i in (0..len).rev() {
        put(&digits[i..=i])?;
    }
    put(b"/")?;
    put(file)?;
    put(b"\0")?;
    CStr::from_bytes_with_nul(&buf[..at]).ok()
}

/// Waits for `pid`, retrying on EINTR. Returns the raw wait status.
/// Async-signal-safe.
fn wait_for(pid: libc::pid_t) -> io::Result<libc::c_int> {
    let mut status: libc::c_int = 0;
    loop {
        // SAFETY: `status` is a valid out-pointer for the duration of the call.
        let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
        if rc == pid {
            return Ok(status);
        }
        let err = last_error();
        if err.raw_os_error() != Some(libc::EINTR) {
            return Err(err);
        }
    }
}

/// The intermediate process after the fork: wait for the child (PID 1 of
/// the new PID namespace), then leave the same way it did, or with 128+N
/// for signal N when `signal_as_exit_code`. Never returns.
fn wait_and_mirror(child: libc::pid_t, signal_as_exit_code: bool) -> ! {
    // The std spawn machinery keeps an error-report pipe open until every
    // holder execs or exits. This process does neither until the container
    // ends, so drop every inherited descriptor above stdio, or `spawn()`
    // would block for the container's whole lifetime.
    // SAFETY: close_range only closes descriptors of this process, which
    // owns no Rust objects any more (it never returns to Rust code).
    unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    let status = match wait_for(child) {
        Ok(status) => status,
        // SAFETY: _exit ends the process without running Rust code.
        Err(_) => unsafe { libc::_exit(127) },
    };
    if libc::WIFEXITED(status) {
        // SAFETY: as above.
        unsafe { libc::_exit(libc::WEXITSTATUS(status)) };
    }
    if libc::WIFSIGNALED(status) && signal_as_exit_code {
        // SAFETY: as above.
        unsafe { libc::_exit(128 + libc::WTERMSIG(status)) };
    }
    if libc::WIFSIGNALED(status) {
        let signal = libc::WTERMSIG(status);
        // SAFETY: signal, sigprocmask and kill on this process with a
        // stack-allocated set are async-signal-safe and touch no Rust state.
        unsafe {
            libc::signal(signal, libc::SIG_DFL);
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, signal);
            libc::sigprocmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
            libc::kill(libc::getpid(), signal);
            libc::_exit(128 + signal);
        }
    }
    // SAFETY: as above.
    unsafe { libc::_exit(127) }
}

/// The body of the re-exec's `pre_exec` hook: enter the namespaces, then
/// fork so the exec'd program is PID 1 of the new PID namespace, while this
/// process waits and mirrors its exit. Async-signal-safe; runs between
/// `fork` and `exec` in the child of `Command::spawn`, or in the caller
/// itself under `Command::exec`, which then becomes the waiting process.
fn namespace_hook(plan: &NamespacePlan) -> io::Result<()> {
    // std carries only the errno back to `spawn`/`exec`; the step is lost.
    enter_namespaces(plan).map_err(|(_, err)| err)?;
    // A pidfd of this process, inherited by the child, tells it whether
    // its parent died before PR_SET_PDEATHSIG took effect: getppid() is 0
    // for PID 1 of a new namespace and a pid cannot be probed across it.
    // SAFETY: pidfd_open on our own pid only creates a descriptor.
    let parent = unsafe {
        libc::syscall(libc::SYS_pidfd_open, libc::getpid(), 0 as libc::c_uint) as libc::c_int
    };
    // SAFETY: both sides only make async-signal-safe calls before
    // exec/_exit, which is all a fork of a possibly multithreaded process
    // allows. (Under `Command::spawn` this is the single-threaded child of
    // std's fork; under `Command::exec` it is the caller, which
    // `ReexecOptions::signal_as_exit_code` documents must be single-threaded.)
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        let err = last_error();
        if parent >= 0 {
            // SAFETY: `parent` was opened above and is closed exactly once.
            unsafe { libc::close(parent) };
        }
        return Err(err);
    }
    if pid > 0 {
        wait_and_mirror(pid, plan.signal_as_exit_code);
    }
    // The container must not outlive the process its caller holds: when the
    // caller kills that process, the kernel kills this one, and with it
    // the whole PID namespace.
    // SAFETY: prctl and poll on a stack pollfd only affect this process;
    // `parent` is closed exactly once.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
        if parent >= 0 {
            let mut poll = libc::pollfd {
                fd: parent,
                events: libc::POLLIN,
                revents: 0,
            };
            if libc::poll(&mut poll, 1, 0) > 0 {
                libc::_exit(1);
            }
            libc::close(parent);
        }
    }
    Ok(())
}

/// Installs the namespace-entering `pre_exec` hook on `command`.
pub(crate) fn install_namespace_hook(command: &mut Command, plan: NamespacePlan) {
    // SAFETY: the closure only reads `plan` (plain data moved in) and makes
    // async-signal-safe syscalls; it neither allocates nor takes locks, and
    // the forked intermediate process `_exit`s instead of returning.
    unsafe {
        command.pre_exec(move || namespace_hook(&plan));
    }
}

/// The outcome of [`probe_namespaces`]: the child's exit status, or why it
/// could not run, plus a description of the step that failed.
pub(crate) struct ProbeOutcome {
    pub(crate) status: Option<ExitStatus>,
    pub(crate) stderr: String,
}

/// Forks a child that enters the planned namespaces and exits 0; reports
/// how it went. On failure the child sends `[step, errno]` through a pipe
/// (the [`NamespaceStep`] code and the error), and the outcome's `stderr`
/// names that step.
pub(crate) fn probe_namespaces(plan: NamespacePlan) -> ProbeOutcome {
    let (reader, writer) = match rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC) {
        Ok(pair) => pair,
        Err(err) => {
            return ProbeOutcome {
                status: None,
                stderr: format!("failed to create the probe pipe: {err}"),
            }
        }
    };
    let write_fd = writer.as_raw_fd();
    // SAFETY: the child only makes async-signal-safe calls and `_exit`s;
    // it never returns into Rust code of this (possibly multithreaded)
    // process.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return ProbeOutcome {
            status: None,
            stderr: format!("failed to fork the probe: {}", last_error()),
        };
    }
    if pid == 0 {
        let code = match enter_namespaces(&plan) {
            Ok(()) => 0,
            Err((step, err)) => {
                let report = [step as i32, err.raw_os_error().unwrap_or(0)];
                // SAFETY: `report` is a live stack array; write_fd is open.
                unsafe {
                    libc::write(
                        write_fd,
                        report.as_ptr().cast(),
                        std::mem::size_of_val(&report),
                    )
                };
                1
            }
        };
        // SAFETY: _exit ends the child without running Rust code.
        unsafe { libc::_exit(code) };
    }
    drop(writer);
    let mut buf = [0u8; 8];
    let got = rustix::io::read(&reader, &mut buf).unwrap_or(0);
    let status = wait_for(pid).ok().map(ExitStatus::from_raw);
    let stderr = if got == buf.len() {
        describe_probe_failure(&buf)
    } else {
        String::new()
    };
    ProbeOutcome { status, stderr }
}

/// The probe child's `[step, errno]` report as a message.
fn describe_probe_failure(report: &[u8; 8]) -> String {
    let step = i32::from_ne_bytes([report[0], report[1], report[2], report[3]]);
    let errno = i32::from_ne_bytes([report[4], report[5], report[6], report[7]]);
    let error = io::Error::from_raw_os_error(errno);
    match NamespaceStep::from_code(step) {
        Some(step) => format!(
            "entering the namespaces failed: {}: {error}",
            step.operation()
        ),
        None => format!("entering the namespaces failed at unknown step {step}: {error}"),
    }
}

/// Marks every descriptor above stderr close-on-exec, so the payload
/// inherits only stdio whatever the caller leaked to us.
pub(crate) fn cloexec_above_stderr() -> io::Result<()> {
    const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC closes nothing; it only
    // sets a flag on descriptors of this process.
    let rc = unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, CLOSE_RANGE_CLOEXEC) };
    if rc != 0 {
        return Err(last_error());
    }
    Ok(())
}

/// `struct mount_attr` from `<linux/mount.h>`.
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// Makes the (detached or attached) mount behind `fd` read-only. Unlike a
/// `MS_REMOUNT|MS_BIND|MS_RDONLY`, this keeps the locked flags a user
/// namespace inherits, so it works for the rootless backend too.
pub(crate) fn mount_set_readonly(fd: BorrowedFd<'_>) -> io::Result<()> {
    const MOUNT_ATTR_RDONLY: u64 = 0x0000_0001;
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_RDONLY,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: `attr` is a live, correctly laid out struct whose size is
    // passed along; the path is an empty NUL-terminated string.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH as libc::c_uint,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc != 0 {
        return Err(last_error());
    }
    Ok(())
}

/// Brings the loopback interface of the current network namespace up, as
/// `ip link set lo up` would.
pub(crate) fn loopback_up() -> io::Result<()> {
    // SAFETY: socket has no memory-safety preconditions.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(last_error());
    }
    // SAFETY: `raw` is a fresh descriptor that nothing else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in request.ifr_name.iter_mut().zip(b"lo") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: `request` is a live ifreq naming "lo"; the ioctl fills its
    // flags union member.
    if unsafe {
        libc::ioctl(
            socket.as_raw_fd(),
            libc::SIOCGIFFLAGS as libc::Ioctl,
            &mut request,
        )
    } != 0
    {
        return Err(last_error());
    }
    // SAFETY: SIOCGIFFLAGS just initialised the flags member of the union.
    unsafe { request.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short };
    // SAFETY: as for SIOCGIFFLAGS; the kernel only reads the request.
    if unsafe {
        libc::ioctl(
            socket.as_raw_fd(),
            libc::SIOCSIFFLAGS as libc::Ioctl,
            &request,
        )
    } != 0
    {
        return Err(last_error());
    }
    Ok(())
}

/// The signals a command line turns into a cleanup and a 128+N exit.
const TERMINATION_SIGNALS: [libc::c_int; 2] = [libc::SIGINT, libc::SIGTERM];

fn termination_set() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it and
    // sigaddset only sets bits of valid signal numbers in it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for signal in TERMINATION_SIGNALS {
            libc::sigaddset(&mut set, signal);
        }
        set
    }
}

/// Blocks SIGINT and SIGTERM in the calling thread and so in every thread
/// it starts afterwards, leaving them pending for
/// [`wait_termination_signal`]. Children inherit the mask across exec, so
/// a process that blocks them must not start programs.
pub(crate) fn block_termination_signals() -> io::Result<()> {
    let set = termination_set();
    // SAFETY: `set` is a live sigset; the old mask is not asked for.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

/// Waits until SIGINT or SIGTERM is pending (they must be blocked in every
/// thread) and returns its number.
pub(crate) fn wait_termination_signal() -> io::Result<libc::c_int> {
    let set = termination_set();
    let mut signal: libc::c_int = 0;
    // SAFETY: `set` and `signal` are live for the call's duration.
    let rc = unsafe { libc::sigwait(&set, &mut signal) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(signal)
}

/// ISA-L's gzip inflate (the `isal` feature) behind a safe interface.
///
/// ISA-L keeps the 32 KiB history and any partial header or block inside
/// its state at the end of every call, so each call is handed fresh input
/// and output slices and no pointer into a caller's buffer survives it.
#[cfg(feature = "isal")]
pub(crate) mod isal {
    use isal_sys::igzip_lib as ffi;

    /// What one call did.
    pub(crate) struct Step {
        /// Input bytes consumed.
        pub consumed: usize,
        /// Output bytes written.
        pub produced: usize,
        /// The member's trailer was read and its CRC32 and ISIZE matched.
        pub finished: bool,
    }

    /// The inflate state of one gzip member at a time. Boxed: it is 87 KiB.
    pub(crate) struct GzipInflate {
        state: Box<ffi::inflate_state>,
    }

    impl GzipInflate {
        /// A state that parses a gzip header, inflates, and checks the
        /// CRC32 and ISIZE trailer.
        pub(crate) fn new() -> Self {
            // SAFETY: inflate_state is plain C data (integers, arrays, raw
            // pointers), for which all-zero bytes are a valid value.
            let mut state: Box<ffi::inflate_state> = Box::new(unsafe { std::mem::zeroed() });
            // SAFETY: `state` is a live inflate_state we borrow exclusively.
            unsafe { ffi::isal_inflate_init(&mut *state) };
            state.crc_flag = ffi::ISAL_GZIP;
            GzipInflate { state }
        }

        /// Readies the state for the next member.
        pub(crate) fn reset(&mut self) {
            // SAFETY: as in `new`.
            unsafe { ffi::isal_inflate_reset(&mut *self.state) };
            self.state.crc_flag = ffi::ISAL_GZIP;
        }

        /// Inflates from `input` into `output`; the error is ISA-L's
        /// negative return code.
        pub(crate) fn inflate(&mut self, input: &[u8], output: &mut [u8]) -> Result<Step, i32> {
            let avail_in = u32::try_from(input.len()).unwrap_or(u32::MAX);
            let avail_out = u32::try_from(output.len()).unwrap_or(u32::MAX);
            let state = &mut *self.state;
            state.next_in = input.as_ptr().cast_mut();
            state.avail_in = avail_in;
            state.next_out = output.as_mut_ptr();
            state.avail_out = avail_out;
            // SAFETY: next_in/avail_in describe `input`, which ISA-L only
            // reads, and next_out/avail_out describe `output`, which we
            // borrow exclusively; both live through the call, and the
            // pointers are cleared right after it.
            let ret = unsafe { ffi::isal_inflate(state) };
            let consumed = (avail_in - state.avail_in) as usize;
            let produced = (avail_out - state.avail_out) as usize;
            state.next_in = std::ptr::null_mut();
            state.avail_in = 0;
            state.next_out = std::ptr::null_mut();
            state.avail_out = 0;
            if ret < 0 {
                return Err(ret);
            }
            Ok(Step {
                consumed,
                produced,
                finished: state.block_state == ffi::isal_block_state_ISAL_BLOCK_FINISH,
            })
        }
    }

    /// What an ISA-L inflate error code means.
    pub(crate) fn describe(code: i32) -> &'static str {
        match code {
            ffi::ISAL_INVALID_BLOCK => "invalid deflate block",
            ffi::ISAL_INVALID_SYMBOL => "invalid deflate symbol",
            ffi::ISAL_INVALID_LOOKBACK => "invalid lookback distance",
            ffi::ISAL_INVALID_WRAPPER => "invalid gzip header",
            ffi::ISAL_UNSUPPORTED_METHOD => "compression method is not deflate",
            ffi::ISAL_INCORRECT_CHECKSUM => "CRC32 or length trailer mismatch",
            _ => "inflate failed",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_reports_the_step_that_failed() {
        // An id map whose range wraps around is refused by the kernel when
        // the map is written, after unshare and setgroups succeeded.
        let mut plan = NamespacePlan::new(true, false, false);
        plan.maps = Some((MapLine::root_to(u32::MAX), MapLine::root_to(0)));
        let outcome = probe_namespaces(plan);
        assert!(
            outcome.status.is_some_and(|s| !s.success()),
            "{:?}",
            outcome.status
        );
        assert!(
            outcome
                .stderr
                .starts_with("entering the namespaces failed: write /proc/self/uid_map: "),
            "{}",
            outcome.stderr
        );
    }

    #[test]
    fn proc_paths_are_built_without_allocation() {
        let mut buf = [0u8; 48];
        let path = proc_pid_path(&mut buf, 4_194_304, b"uid_map").unwrap();
        assert_eq!(path.to_bytes(), b"/proc/4194304/uid_map");
        let mut small = [0u8; 12];
        assert!(proc_pid_path(&mut small, 7, b"gid_map").is_none());
    }

    #[test]
    fn probe_reports_name_each_step() {
        let report = |step: i32| {
            let mut bytes = [0u8; 8];
            bytes[..4].copy_from_slice(&step.to_ne_bytes());
            bytes[4..].copy_from_slice(&libc::EPERM.to_ne_bytes());
            describe_probe_failure(&bytes)
        };
        assert!(report(1).starts_with("entering the namespaces failed: unshare the namespaces: "));
        assert!(report(5).contains(": make / recursively private: "));
        assert!(report(9).starts_with("entering the namespaces failed at unknown step 9: "));
    }
}
