//! glibc's malloc, tuned for the data path.
//!
//! glibc gives the free memory at the top of each thread's heap back to
//! the kernel as soon as it exceeds 128 KiB (its trim threshold), and the
//! next burst of frames faults those pages in again: in a bulk transfer a
//! sixth of the tunnel's CPU went to page faults and `madvise`. With a
//! 64 MiB threshold the pages stay (docs/benchmarks.md: CPU per GB 1.9 ->
//! 1.5, bulk throughput about +35 %, memory per idle channel and per agent
//! unchanged).
//!
//! glibc takes the setting from `GLIBC_TUNABLES` when a process starts,
//! and setting it later (`mallopt`) needs unsafe code, which this
//! workspace forbids. So the control plane and the agent execute
//! themselves again, once, with the variable set, before they do anything
//! else (same process id, arguments and environment). A `GLIBC_TUNABLES`
//! that is already set, the operator's or ours, is left as it is; other C
//! libraries ignore the variable.

/// The tunable the binaries run with.
pub const TUNABLES: &str = "glibc.malloc.trim_threshold=67108864";

/// Executes this program again with [`TUNABLES`] unless `GLIBC_TUNABLES`
/// is set; returns only if it is set or the execution failed (then the
/// program runs on glibc's defaults, which is slower but correct).
pub fn tune() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::os::unix::process::CommandExt;

        if std::env::var_os("GLIBC_TUNABLES").is_some() {
            return;
        }
        let Ok(exe) = std::env::current_exe() else {
            return;
        };
        let mut args = std::env::args_os();
        let mut command = std::process::Command::new(exe);
        if let Some(arg0) = args.next() {
            command.arg0(arg0);
        }
        let error = command.args(args).env("GLIBC_TUNABLES", TUNABLES).exec();
        // Logging is not set up yet; say it once on stderr and go on.
        eprintln!(
            "note: running with glibc's default malloc settings (could not re-execute: {error})"
        );
    }
}
