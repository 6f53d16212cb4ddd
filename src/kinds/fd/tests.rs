//! The registry cannot drift from the schema: every record variant has exactly one kind, and
//! dump hands each kind of fd to the kind that records it.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use super::{FdSource, KINDS};
use crate::image::ImageDir;
use crate::image::proto::open_file::Kind as K;

/// One value of every variant of `OpenFile.kind`.
fn every_variant() -> Vec<K> {
    let all = vec![
        K::Regular(Default::default()),
        K::CharDevice(Default::default()),
        K::Pipe(Default::default()),
        K::Eventfd(Default::default()),
        K::Signalfd(Default::default()),
        K::Timerfd(Default::default()),
        K::Memfd(Default::default()),
        K::UnixSocket(Default::default()),
        K::Epoll(Default::default()),
        K::Inotify(Default::default()),
        K::Fifo(Default::default()),
        K::SharedMemory(Default::default()),
        K::Tty(Default::default()),
        K::InetSocket(Default::default()),
        K::NetlinkSocket(Default::default()),
        K::PacketSocket(Default::default()),
        K::Pidfd(Default::default()),
        K::NamespaceFile(Default::default()),
        K::Pty(Default::default()),
        K::Fanotify(Default::default()),
        K::ProcFile(Default::default()),
    ];
    // A variant added to the schema does not compile here until it is listed above as well.
    for kind in &all {
        match kind {
            K::Regular(_)
            | K::CharDevice(_)
            | K::Pipe(_)
            | K::Eventfd(_)
            | K::Signalfd(_)
            | K::Timerfd(_)
            | K::Memfd(_)
            | K::UnixSocket(_)
            | K::Epoll(_)
            | K::Inotify(_)
            | K::Fifo(_)
            | K::SharedMemory(_)
            | K::Tty(_)
            | K::InetSocket(_)
            | K::NetlinkSocket(_)
            | K::PacketSocket(_)
            | K::Pidfd(_)
            | K::NamespaceFile(_)
            | K::Pty(_)
            | K::Fanotify(_)
            | K::ProcFile(_) => {}
        }
    }
    all
}

#[test]
fn every_record_variant_has_exactly_one_registered_kind() {
    for variant in every_variant() {
        let owners: Vec<&str> = KINDS.iter().filter(|k| k.owns(&variant)).map(|k| k.name()).collect();
        assert_eq!(owners.len(), 1, "{variant:?} is owned by {owners:?}: register its kind once in fd::KINDS");
    }
}

#[test]
fn every_registered_kind_owns_a_variant_and_has_its_own_name() {
    let variants = every_variant();
    for (i, kind) in KINDS.iter().enumerate() {
        assert!(variants.iter().any(|v| kind.owns(v)), "{} owns no record variant", kind.name());
        assert!(!KINDS[..i].iter().any(|k| k.name() == kind.name()), "{} is registered twice", kind.name());
    }
}

/// The kind that dump hands the fd to, given the fd's link text.
fn recognised_as(fd: &OwnedFd, link: &str) -> Option<&'static str> {
    let meta = std::fs::metadata(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap();
    let image = ImageDir::open(&std::env::temp_dir()).unwrap();
    let src = FdSource {
        pid: std::process::id() as i32,
        fd: fd.as_raw_fd(),
        link,
        meta: &meta,
        copy: fd,
        fdinfo: "",
        image: &image,
        shell_job: false,
        permits: &Default::default(),
        inode_seen: false,
    };
    KINDS.iter().find(|k| k.recognises(&src)).map(|k| k.name())
}

fn recognised(fd: &OwnedFd) -> Option<&'static str> {
    let link = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap();
    recognised_as(fd, &link.to_string_lossy())
}

#[test]
fn dump_hands_each_fd_to_the_kind_that_records_it() {
    use nix::fcntl::OFlag;
    use nix::sys::stat::Mode;
    let dir = std::env::temp_dir().join(format!("crust-fd-kinds-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let open = |path: &std::path::Path, flags: OFlag| -> OwnedFd { nix::fcntl::open(path, flags, Mode::empty()).unwrap() };

    let file = dir.join("file");
    std::fs::write(&file, b"x").unwrap();
    assert_eq!(recognised(&open(&file, OFlag::O_RDONLY)), Some("regular file"));
    assert_eq!(recognised(&open(&dir, OFlag::O_RDONLY | OFlag::O_DIRECTORY)), Some("regular file"));
    assert_eq!(recognised(&open("/dev/null".as_ref(), OFlag::O_RDONLY)), Some("character device"));

    let master = nix::pty::posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY).unwrap();
    nix::pty::grantpt(&master).unwrap();
    nix::pty::unlockpt(&master).unwrap();
    let slave = nix::pty::ptsname_r(&master).unwrap();
    let master = master.as_fd().try_clone_to_owned().unwrap();
    assert_eq!(recognised(&master), Some("pseudo-terminal"));
    // A slave is a pseudo-terminal's until the whole tree is seen (its master may be outside:
    // then it is a shell job's terminal).
    assert_eq!(recognised(&open(slave.as_ref(), OFlag::O_RDWR | OFlag::O_NOCTTY)), Some("pseudo-terminal"));

    let (r, w) = nix::unistd::pipe().unwrap();
    assert_eq!(recognised(&r), Some("pipe"));
    assert_eq!(recognised(&w), Some("pipe"));
    let fifo = dir.join("fifo");
    nix::unistd::mkfifo(&fifo, Mode::S_IRWXU).unwrap();
    assert_eq!(recognised(&open(&fifo, OFlag::O_RDWR | OFlag::O_NONBLOCK)), Some("FIFO"));

    let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
    assert_eq!(recognised(&OwnedFd::from(a)), Some("UNIX socket"));

    let memfd = nix::sys::memfd::memfd_create(c"kinds", nix::sys::memfd::MFdFlags::MFD_CLOEXEC).unwrap();
    assert_eq!(recognised(&memfd), Some("memfd"));
    let pidfd = crate::sys::pidfd::pidfd_open(std::process::id() as i32).unwrap();
    assert_eq!(recognised(&pidfd), Some("pidfd"));
    let ns = open("/proc/self/ns/net".as_ref(), OFlag::O_RDONLY);
    assert_eq!(recognised(&ns), Some("namespace file"));

    let clock = nix::sys::timerfd::ClockId::CLOCK_MONOTONIC;
    let timer = nix::sys::timerfd::TimerFd::new(clock, nix::sys::timerfd::TimerFlags::empty()).unwrap();
    let timer = timer.as_fd().try_clone_to_owned().unwrap();
    assert_eq!(recognised(&timer), Some("timerfd"));
    let signals = nix::sys::signalfd::SignalFd::new(&nix::sys::signal::SigSet::empty()).unwrap();
    assert_eq!(recognised(&signals.as_fd().try_clone_to_owned().unwrap()), Some("signalfd"));
    // Every anonymous-inode file shares one inode: the link tells them apart.
    assert_eq!(recognised_as(&timer, "anon_inode:[eventfd]"), Some("eventfd"));
    assert_eq!(recognised_as(&timer, "anon_inode:[eventpoll]"), Some("epoll"));
    assert_eq!(recognised_as(&timer, "anon_inode:inotify"), Some("inotify"));
    assert_eq!(recognised_as(&timer, "anon_inode:[pidfd]"), Some("pidfd"));
    assert_eq!(recognised_as(&timer, "anon_inode:[io_uring]"), None);
    assert_eq!(recognised_as(&timer, "anon_inode:[fanotify]"), Some("fanotify"));
    std::fs::remove_dir_all(&dir).unwrap();
}
