//! crust: checkpoint/restore of Linux processes.
//!
//! - [`sys`]: the system layer (ptrace, remote system calls, clone3, pidfd, pagemap); the only
//!   module with `unsafe`.
//! - [`image`]: the image directory, its framed records and the schema.
//! - [`kinds`]: one module per kind of kernel object, each with its dump and restore.
//! - [`dump`] and [`restore`]: the two pipelines that orchestrate the kinds.
//! - [`cli`]: the command line, with the reference tool's options.

pub mod bench;
pub mod check;
pub mod cli;
pub mod created_files;
pub mod demo;
pub mod dump;
pub mod fault;
pub mod image;
pub mod interrupt;
pub mod kinds;
pub mod lease_cmd;
pub mod network_lock;
pub mod permits;
pub mod progress;
pub mod restore;
pub mod show;
pub mod sys;
pub mod timing;
