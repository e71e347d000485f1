//! `run`: run a command (argv or `/bin/sh -c`) in its own process group, streaming its output.
//!
//! The command gets no stdin and a clean environment (`PATH` kept, plus the call's `env`). Its
//! stdout and stderr go to the call context as they are produced and into a bounded capture per
//! stream: the first and the last MiB, with the count of bytes kept in neither. A timeout or a
//! cancel stops the whole process group: SIGTERM, then SIGKILL after a grace period. When the
//! command exits but processes it started in its group keep its output open, they are stopped
//! the same way after a short wait (a daemon meant to outlive the call detaches: `setsid`, its
//! own output).

use std::collections::VecDeque;
use std::io::Read;
use std::os::fd::AsFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, ChildStderr, ChildStdout, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use qs_proto::{check_args, ArgInfo, CapabilityInfo, OutputStream};
use serde_json::{json, Value};

use crate::{CallContext, Capability, CapabilityError};

/// Bytes kept from the start and from the end of each stream.
const CAPTURE_LIMIT: usize = 1024 * 1024;
/// Seconds a command may run when the call gives no `timeout`.
const DEFAULT_TIMEOUT: u64 = 3600;
/// Between SIGTERM and SIGKILL.
const KILL_GRACE: Duration = Duration::from_secs(5);
/// How long processes left behind may keep the output open after the command exited.
const STRAY_GRACE: Duration = Duration::from_secs(2);
/// The longest the loop sleeps in poll, so cancel and timeout are seen promptly.
const TICK: Duration = Duration::from_millis(100);
/// `PATH` for a command when the agent has none.
const FALLBACK_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Runs a command on the machine and reports its exit status and output.
pub struct Run {
    shell: String,
    capture_limit: usize,
    kill_grace: Duration,
    stray_grace: Duration,
}

impl Default for Run {
    fn default() -> Self {
        Self::new()
    }
}

impl Run {
    /// The standard `run`: `/bin/sh` for `shell`, 1 MiB head and tail, 5 s kill grace.
    pub fn new() -> Self {
        Self {
            shell: "/bin/sh".into(),
            capture_limit: CAPTURE_LIMIT,
            kill_grace: KILL_GRACE,
            stray_grace: STRAY_GRACE,
        }
    }

    /// Waits `kill_grace` between SIGTERM and SIGKILL, and `stray_grace` for processes that
    /// keep the output open after the command exited (tests shorten them).
    pub fn with_graces(mut self, kill_grace: Duration, stray_grace: Duration) -> Self {
        self.kill_grace = kill_grace;
        self.stray_grace = stray_grace;
        self
    }
}

/// A checked `run` call.
#[derive(Debug, PartialEq)]
struct Request {
    argv: Vec<String>,
    env: Vec<(String, String)>,
    cwd: Option<String>,
    timeout: Duration,
}

fn bad(reason: impl Into<String>) -> CapabilityError {
    CapabilityError::BadArguments {
        capability: "run",
        reason: reason.into(),
    }
}

impl Run {
    fn parse(&self, args: &Value) -> Result<Request, CapabilityError> {
        let args = check_args(&self.info(), args).map_err(|e| bad(e.to_string()))?;
        let string = |v: &Value, what: &str| {
            v.as_str()
                .map(str::to_owned)
                .ok_or_else(|| bad(format!("{what} must be a string")))
        };
        let argv = match (args.get("command"), args.get("shell")) {
            (Some(_), Some(_)) => return Err(bad("give `command` or `shell`, not both")),
            (None, None) => return Err(bad("give `command` (argv) or `shell` (a script)")),
            (Some(Value::Array(items)), None) => {
                if items.is_empty() {
                    return Err(bad("`command` is empty"));
                }
                items
                    .iter()
                    .map(|item| string(item, "every `command` item"))
                    .collect::<Result<Vec<_>, _>>()?
            }
            (Some(_), None) => return Err(bad("`command` must be a list of strings")),
            (None, Some(script)) => {
                vec![self.shell.clone(), "-c".into(), string(script, "`shell`")?]
            }
        };
        if argv.iter().any(|a| a.contains('\0')) {
            return Err(bad("`command` contains a NUL byte"));
        }
        let mut env = Vec::new();
        if let Some(Value::Object(vars)) = args.get("env") {
            for (name, value) in vars {
                if name.is_empty() || name.contains(['=', '\0']) {
                    return Err(bad(format!("`env` name {name:?} is not a variable name")));
                }
                let value = string(value, &format!("`env` value of {name}"))?;
                if value.contains('\0') {
                    return Err(bad(format!("`env` value of {name} contains a NUL byte")));
                }
                env.push((name.clone(), value));
            }
        }
        let cwd = args.get("cwd").map(|v| string(v, "`cwd`")).transpose()?;
        let timeout = match args.get("timeout").and_then(Value::as_u64) {
            Some(0) | None => return Err(bad("`timeout` must be a positive number of seconds")),
            Some(secs) => Duration::from_secs(secs),
        };
        Ok(Request {
            argv,
            env,
            cwd,
            timeout,
        })
    }
}

/// The first and last bytes of a stream, and how many it had.
struct Capture {
    limit: usize,
    head: Vec<u8>,
    tail: VecDeque<u8>,
    total: u64,
}

impl Capture {
    fn new(limit: usize) -> Self {
        Self {
            limit,
            head: Vec::new(),
            tail: VecDeque::new(),
            total: 0,
        }
    }

    fn push(&mut self, data: &[u8]) {
        self.total += data.len() as u64;
        let room = self.limit - self.head.len();
        let (head, rest) = data.split_at(room.min(data.len()));
        self.head.extend_from_slice(head);
        // Only the last `limit` bytes of a large chunk can stay.
        let rest = &rest[rest.len().saturating_sub(self.limit)..];
        let over = (self.tail.len() + rest.len()).saturating_sub(self.limit);
        self.tail.drain(..over);
        self.tail.extend(rest);
    }

    fn to_json(&self) -> Value {
        let (a, b) = self.tail.as_slices();
        let tail = [a, b].concat();
        let kept = (self.head.len() + tail.len()) as u64;
        json!({
            "head": String::from_utf8_lossy(&self.head),
            "tail": String::from_utf8_lossy(&tail),
            "total_bytes": self.total,
            "dropped_bytes": self.total - kept,
        })
    }
}

/// One output pipe of the command, until it closes.
struct Pipe<R> {
    stream: OutputStream,
    reader: Option<R>,
    capture: Capture,
}

impl<R: Read + AsFd> Pipe<R> {
    fn new(stream: OutputStream, reader: Option<R>, limit: usize) -> Self {
        Self {
            stream,
            reader,
            capture: Capture::new(limit),
        }
    }

    /// Reads what is there (the poll said so); closes the pipe at end of file or on error.
    fn read(&mut self, buf: &mut [u8], ctx: &CallContext) {
        let Some(reader) = &mut self.reader else {
            return;
        };
        match reader.read(buf) {
            Ok(0) => self.reader = None,
            Ok(n) => {
                self.capture.push(&buf[..n]);
                ctx.output(self.stream, &buf[..n]);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => self.reader = None,
        }
    }
}

/// Why the process group is being stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    TimedOut,
    Cancelled,
    /// The command exited; processes it left keep its output open.
    Strays,
}

/// The stop in progress: why, when SIGTERM went out, whether SIGKILL did.
struct Stopping {
    why: Stop,
    since: Instant,
    killed: bool,
}

/// Whether any process of the group is left (zombies not reaped yet count).
fn group_alive(pgid: Pid) -> bool {
    !matches!(killpg(pgid, None), Err(Errno::ESRCH))
}

/// Starts a command failed: the program cannot be run.
#[derive(Debug, thiserror::Error)]
#[error("cannot start {program:?}")]
struct SpawnError {
    program: String,
    #[source]
    source: std::io::Error,
}

/// Waiting for the command failed (should not happen: the child is ours).
#[derive(Debug, thiserror::Error)]
#[error("cannot wait for the command")]
struct WaitError(#[source] std::io::Error);

impl Run {
    fn spawn(&self, request: &Request) -> Result<Child, CapabilityError> {
        let (program, rest) = request
            .argv
            .split_first()
            .ok_or_else(|| bad("empty argv"))?;
        let mut command = Command::new(program);
        command
            .args(rest)
            .env_clear()
            .env(
                "PATH",
                std::env::var_os("PATH").unwrap_or_else(|| FALLBACK_PATH.into()),
            )
            .envs(request.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own group, so a stop reaches everything it starts (unless that detaches).
            .process_group(0);
        if let Some(cwd) = &request.cwd {
            command.current_dir(cwd);
        }
        command.spawn().map_err(|source| CapabilityError::Failed {
            capability: "run",
            source: Box::new(SpawnError {
                program: program.chars().take(256).collect(),
                source,
            }),
        })
    }

    /// Runs the command to its end: exit, timeout or cancel.
    fn execute(&self, request: &Request, ctx: &CallContext) -> Result<Value, CapabilityError> {
        let started = Instant::now();
        let deadline = started + request.timeout;
        let mut child = self.spawn(request)?;
        let pgid = Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));
        let mut stdout: Pipe<ChildStdout> = Pipe::new(
            OutputStream::Stdout,
            child.stdout.take(),
            self.capture_limit,
        );
        let mut stderr: Pipe<ChildStderr> = Pipe::new(
            OutputStream::Stderr,
            child.stderr.take(),
            self.capture_limit,
        );
        let mut buf = vec![0u8; 64 * 1024];
        let mut status: Option<(ExitStatus, Instant)> = None;
        let mut stopping: Option<Stopping> = None;
        loop {
            if status.is_none() {
                match child.try_wait() {
                    Ok(Some(exit)) => status = Some((exit, Instant::now())),
                    Ok(None) => {}
                    Err(error) => {
                        let _ = killpg(pgid, Signal::SIGKILL);
                        let _ = child.wait();
                        return Err(CapabilityError::Failed {
                            capability: "run",
                            source: Box::new(WaitError(error)),
                        });
                    }
                }
            }
            let open = stdout.reader.is_some() || stderr.reader.is_some();
            let now = Instant::now();
            if stopping.is_none() {
                let why = if ctx.is_cancelled() {
                    Some(Stop::Cancelled)
                } else if now >= deadline {
                    Some(Stop::TimedOut)
                } else {
                    match status {
                        Some((_, at)) if open && now >= at + self.stray_grace => Some(Stop::Strays),
                        _ => None,
                    }
                };
                if let Some(why) = why {
                    let _ = killpg(pgid, Signal::SIGTERM);
                    stopping = Some(Stopping {
                        why,
                        since: now,
                        killed: false,
                    });
                }
            }
            if let Some(stop) = &mut stopping {
                if !stop.killed && now >= stop.since + self.kill_grace && group_alive(pgid) {
                    let _ = killpg(pgid, Signal::SIGKILL);
                    stop.killed = true;
                }
            }
            if status.is_some() {
                // A stop is over once the group is gone or was sent SIGKILL (which it cannot
                // refuse) and the output closed; an exit without a stop leaves detached
                // processes alone. A detached process may hold the output open for ever: after
                // another grace it is abandoned.
                let done = match &stopping {
                    None => !open,
                    Some(stop) => {
                        (!open && (stop.killed || !group_alive(pgid)))
                            || (stop.killed && now >= stop.since + self.kill_grace * 2)
                    }
                };
                if done {
                    break;
                }
            }
            let wait = match (&stopping, status) {
                (Some(_), _) | (None, Some(_)) => Duration::from_millis(20),
                (None, None) => TICK.min(deadline.saturating_duration_since(now)),
            };
            poll_pipes(&mut stdout, &mut stderr, wait, &mut buf, ctx);
        }
        let (exit, _) = status.ok_or_else(|| bad("internal: no exit status"))?;
        let output = json!({
            "exit_code": exit.code(),
            "signal": exit.signal(),
            "duration_ms": u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            "stdout": stdout.capture.to_json(),
            "stderr": stderr.capture.to_json(),
        });
        match stopping.map(|s| s.why) {
            Some(Stop::TimedOut) => Err(CapabilityError::TimedOut {
                after: request.timeout,
                output,
            }),
            Some(Stop::Cancelled) => Err(CapabilityError::Cancelled { output }),
            Some(Stop::Strays) | None => match (exit.code(), exit.signal()) {
                (Some(0), _) => Ok(output),
                (Some(code), _) => Err(CapabilityError::Unsuccessful {
                    message: format!("command exited with status {code}"),
                    output,
                }),
                (None, signal) => Err(CapabilityError::Unsuccessful {
                    message: format!(
                        "command killed by signal {}",
                        signal.map_or_else(|| "?".to_string(), |s| s.to_string())
                    ),
                    output,
                }),
            },
        }
    }
}

/// Waits up to `wait` for output on the open pipes and reads what arrived; just sleeps when
/// both are closed.
fn poll_pipes(
    stdout: &mut Pipe<ChildStdout>,
    stderr: &mut Pipe<ChildStderr>,
    wait: Duration,
    buf: &mut [u8],
    ctx: &CallContext,
) {
    let timeout = PollTimeout::try_from(wait).unwrap_or(PollTimeout::MAX);
    let ready = {
        let mut which = Vec::with_capacity(2);
        let mut fds = Vec::with_capacity(2);
        if let Some(r) = &stdout.reader {
            which.push(0);
            fds.push(PollFd::new(r.as_fd(), PollFlags::POLLIN));
        }
        if let Some(r) = &stderr.reader {
            which.push(1);
            fds.push(PollFd::new(r.as_fd(), PollFlags::POLLIN));
        }
        if fds.is_empty() {
            // Nothing to wait on: a command that closed its output, or signalled processes
            // leaving the group, give no event (without a pidfd per process).
            #[allow(clippy::disallowed_methods)]
            std::thread::sleep(wait);
            return;
        }
        match nix::poll::poll(&mut fds, timeout) {
            Ok(n) if n > 0 => which
                .into_iter()
                .zip(&fds)
                .filter(|(_, fd)| fd.revents().is_some_and(|r| !r.is_empty()))
                .map(|(w, _)| w)
                .collect::<Vec<_>>(),
            // Nothing yet, or interrupted: the caller loops.
            _ => Vec::new(),
        }
    };
    for which in ready {
        match which {
            0 => stdout.read(buf, ctx),
            _ => stderr.read(buf, ctx),
        }
    }
}

impl Capability for Run {
    fn info(&self) -> CapabilityInfo {
        let arg = |name: &str, kind: &str, doc: &str| ArgInfo {
            name: name.into(),
            kind: kind.into(),
            required: false,
            doc: doc.into(),
            default: None,
            choices: None,
        };
        CapabilityInfo {
            name: "run".into(),
            doc: "Run a command (argv or /bin/sh -c) in its own process group; report exit code, stdout and stderr".into(),
            args: vec![
                arg("command", "array", "the program and its arguments (argv); or give `shell`"),
                arg("shell", "string", "a script for /bin/sh -c; or give `command`"),
                arg("env", "object", "environment variables added to PATH (strings)"),
                arg("cwd", "string", "working directory (default: the agent's)"),
                ArgInfo {
                    default: Some(Value::Bool(false)),
                    ..arg(
                        "exclusive",
                        "boolean",
                        "take the agent's exclusive lock: no exclusive call runs beside this one",
                    )
                },
                ArgInfo {
                    default: Some(Value::from(DEFAULT_TIMEOUT)),
                    ..arg(
                        "timeout",
                        "integer",
                        "seconds before the whole process group is stopped",
                    )
                },
            ],
            exclusive: false,
            destructive: true,
            default_timeout: DEFAULT_TIMEOUT,
        }
    }

    fn call(&self, args: &Value, ctx: &CallContext) -> Result<Value, CapabilityError> {
        let request = self.parse(args)?;
        if ctx.is_cancelled() {
            return Err(CapabilityError::Cancelled {
                output: Value::Null,
            });
        }
        self.execute(&request, ctx)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::CancelSignal;
    use std::sync::{Arc, Mutex};

    /// Runs `args` with a context that records streamed output.
    type Streamed = Vec<(OutputStream, Vec<u8>)>;

    fn run_with(
        run: &Run,
        args: Value,
        cancel: CancelSignal,
    ) -> (Result<Value, CapabilityError>, Streamed) {
        let streamed = Arc::new(Mutex::new(Vec::new()));
        let sink = streamed.clone();
        let ctx = CallContext::new()
            .with_output(move |s, d| sink.lock().unwrap().push((s, d.to_vec())))
            .with_cancel(cancel);
        let result = run.call(&args, &ctx);
        let streamed = streamed.lock().unwrap().clone();
        (result, streamed)
    }

    fn joined(streamed: &[(OutputStream, Vec<u8>)], stream: OutputStream) -> Vec<u8> {
        streamed
            .iter()
            .filter(|(s, _)| *s == stream)
            .flat_map(|(_, d)| d.clone())
            .collect()
    }

    /// Whether process `pid` is gone (or a zombie nobody reaped yet: it runs no more).
    fn dead(pid: i32) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => true,
            Ok(stat) => stat
                .rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('Z') || rest.starts_with('X')),
        }
    }

    /// Whether `pid` dies within 5 s: a process dying elsewhere (reaped by init) sends no event
    /// this test could wait on, so it looks every 20 ms.
    fn wait_dead(pid: i32) -> bool {
        let until = Instant::now() + Duration::from_secs(5);
        while Instant::now() < until {
            if dead(pid) {
                return true;
            }
            #[allow(clippy::disallowed_methods)]
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    fn first_line_pid(output: &Value) -> i32 {
        output["stdout"]["head"]
            .as_str()
            .unwrap()
            .lines()
            .next()
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    #[test]
    fn argv_runs_and_streams_both_outputs() {
        let (result, streamed) = run_with(
            &Run::new(),
            json!({"command": ["sh", "-c", "echo out; echo err >&2; printf tail"]}),
            CancelSignal::new(),
        );
        let output = result.unwrap();
        assert_eq!(output["exit_code"], 0);
        assert_eq!(output["signal"], Value::Null);
        assert_eq!(output["stdout"]["head"], "out\ntail");
        assert_eq!(output["stdout"]["total_bytes"], 8);
        assert_eq!(output["stdout"]["dropped_bytes"], 0);
        assert_eq!(output["stderr"]["head"], "err\n");
        assert!(output["duration_ms"].is_u64());
        assert_eq!(joined(&streamed, OutputStream::Stdout), b"out\ntail");
        assert_eq!(joined(&streamed, OutputStream::Stderr), b"err\n");
    }

    #[test]
    fn env_is_clean_but_keeps_path_and_cwd_applies() {
        let dir = std::env::temp_dir();
        let (result, _) = run_with(
            &Run::new(),
            json!({"shell": "echo \"$FOO|${HOME:-none}|$(pwd)\"; command -v sh >/dev/null && echo path-ok",
                   "env": {"FOO": "bar baz"}, "cwd": dir.to_str().unwrap()}),
            CancelSignal::new(),
        );
        let output = result.unwrap();
        let dir = dir.canonicalize().unwrap();
        assert_eq!(
            output["stdout"]["head"],
            format!("bar baz|none|{}\npath-ok\n", dir.display())
        );
    }

    #[test]
    fn nonzero_exit_fails_with_the_output() {
        let (result, _) = run_with(
            &Run::new(),
            json!({"shell": "echo bad >&2; exit 3"}),
            CancelSignal::new(),
        );
        let Err(CapabilityError::Unsuccessful { message, output }) = result else {
            panic!("{result:?}")
        };
        assert_eq!(message, "command exited with status 3");
        assert_eq!(output["exit_code"], 3);
        assert_eq!(output["stderr"]["head"], "bad\n");
    }

    #[test]
    fn death_by_signal_is_reported() {
        let (result, _) = run_with(
            &Run::new(),
            json!({"shell": "kill -9 $$"}),
            CancelSignal::new(),
        );
        let Err(CapabilityError::Unsuccessful { message, output }) = result else {
            panic!("{result:?}")
        };
        assert_eq!(message, "command killed by signal 9");
        assert_eq!(
            (output["exit_code"].clone(), output["signal"].clone()),
            (Value::Null, json!(9))
        );
    }

    #[test]
    fn large_output_keeps_the_first_and_last_mib_and_counts_the_rest() {
        // 3 MiB of "y\n" then a marker: the head is all y, the tail ends with the marker.
        let (result, streamed) = run_with(
            &Run::new(),
            json!({"shell": "yes | head -c 3145728; echo END"}),
            CancelSignal::new(),
        );
        let output = result.unwrap();
        let out = &output["stdout"];
        assert_eq!(out["total_bytes"], 3 * 1024 * 1024 + 4);
        assert_eq!(out["dropped_bytes"], 1024 * 1024 + 4);
        let head = out["head"].as_str().unwrap();
        let tail = out["tail"].as_str().unwrap();
        assert_eq!(head.len(), 1024 * 1024);
        assert!(head.starts_with("y\ny\n"));
        assert_eq!(tail.len(), 1024 * 1024);
        assert!(tail.ends_with("y\nEND\n"), "{}", &tail[tail.len() - 10..]);
        // Everything was streamed, in order.
        let all = joined(&streamed, OutputStream::Stdout);
        assert_eq!(all.len(), 3 * 1024 * 1024 + 4);
        assert!(all.ends_with(b"y\nEND\n"));
    }

    #[test]
    fn capture_between_one_and_two_limits_drops_nothing() {
        let mut capture = Capture::new(4);
        capture.push(b"abc");
        capture.push(b"defg");
        capture.push(b"h");
        let json = capture.to_json();
        assert_eq!(
            (json["head"].clone(), json["tail"].clone()),
            (json!("abcd"), json!("efgh"))
        );
        assert_eq!(json["dropped_bytes"], 0);
        capture.push(b"0123456789");
        let json = capture.to_json();
        assert_eq!(
            (json["head"].clone(), json["tail"].clone()),
            (json!("abcd"), json!("6789"))
        );
        assert_eq!(
            (json["total_bytes"].clone(), json["dropped_bytes"].clone()),
            (json!(18), json!(10))
        );
    }

    #[test]
    fn timeout_kills_the_whole_group_including_a_grandchild() {
        let started = Instant::now();
        let (result, _) = run_with(
            &Run::new(),
            json!({"shell": "sleep 300 & echo $!; wait", "timeout": 1}),
            CancelSignal::new(),
        );
        let Err(CapabilityError::TimedOut { after, output }) = result else {
            panic!("{result:?}")
        };
        assert_eq!(after, Duration::from_secs(1));
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(output["signal"], 15);
        assert!(
            wait_dead(first_line_pid(&output)),
            "the grandchild sleep survived"
        );
    }

    #[test]
    fn a_group_that_ignores_sigterm_gets_sigkill_after_the_grace() {
        let run = Run::new().with_graces(Duration::from_millis(500), STRAY_GRACE);
        let started = Instant::now();
        let (result, _) = run_with(
            &run,
            json!({"shell": "trap '' TERM; sleep 300 & echo $!; wait; wait", "timeout": 1}),
            CancelSignal::new(),
        );
        let Err(CapabilityError::TimedOut { output, .. }) = result else {
            panic!("{result:?}")
        };
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(1400), "{took:?}");
        assert!(took < Duration::from_secs(5), "{took:?}");
        assert_eq!(output["signal"], 9);
        assert!(
            wait_dead(first_line_pid(&output)),
            "the grandchild sleep survived"
        );
    }

    #[test]
    fn cancel_stops_the_group() {
        // Cancelled as soon as the command has printed its pid, i.e. while it runs.
        let cancel = CancelSignal::new();
        let trigger = cancel.clone();
        let ctx = CallContext::new()
            .with_output(move |_, _| trigger.cancel())
            .with_cancel(cancel);
        let started = Instant::now();
        let result = Run::new().call(
            &json!({"command": ["sh", "-c", "echo $$; exec sleep 300"]}),
            &ctx,
        );
        let Err(CapabilityError::Cancelled { output }) = result else {
            panic!("{result:?}")
        };
        assert!(started.elapsed() < Duration::from_secs(3));
        assert_eq!(output["signal"], 15);
        assert!(wait_dead(first_line_pid(&output)));
    }

    #[test]
    fn processes_left_holding_the_output_are_stopped_after_the_command_exits() {
        let run = Run::new().with_graces(KILL_GRACE, Duration::from_millis(300));
        let started = Instant::now();
        let (result, _) = run_with(
            &run,
            json!({"shell": "sleep 300 & echo $!"}),
            CancelSignal::new(),
        );
        let output = result.unwrap();
        assert!(started.elapsed() < Duration::from_secs(3));
        assert_eq!(output["exit_code"], 0);
        assert!(wait_dead(first_line_pid(&output)));
    }

    #[test]
    fn a_program_that_cannot_start_is_a_failure_naming_it() {
        let (result, _) = run_with(
            &Run::new(),
            json!({"command": ["/nonexistent/program", "x"]}),
            CancelSignal::new(),
        );
        let Err(error @ CapabilityError::Failed { .. }) = result else {
            panic!("{result:?}")
        };
        let report = qs_proto::ErrorReport::from_error(&error);
        assert!(
            report
                .to_string()
                .contains("cannot start \"/nonexistent/program\""),
            "{report}"
        );
    }

    #[test]
    fn bad_arguments_are_refused_before_anything_runs() {
        let run = Run::new();
        for args in [
            json!({}),
            json!({"command": ["true"], "shell": "true"}),
            json!({"command": []}),
            json!({"command": "true"}),
            json!({"command": ["true", 1]}),
            json!({"shell": 3}),
            json!({"shell": "true", "env": {"A": 1}}),
            json!({"shell": "true", "env": {"A=B": "1"}}),
            json!({"shell": "true", "timeout": 0}),
            json!({"shell": "true", "timeout": -1}),
            json!({"shell": "true", "colour": "red"}),
            json!({"command": ["a\u{0}b"]}),
            json!({"shell": "true", "exclusive": "yes"}),
        ] {
            assert!(
                matches!(run.parse(&args), Err(CapabilityError::BadArguments { .. })),
                "{args}"
            );
        }
        assert!(run
            .parse(&json!({"shell": "true", "exclusive": true}))
            .is_ok());
        assert!(run.info().takes_exclusive_lock(&json!({"exclusive": true})));
        assert!(!run.info().takes_exclusive_lock(&json!({})));
        let request = run.parse(&json!({"shell": "true"})).unwrap();
        assert_eq!(request.argv, vec!["/bin/sh", "-c", "true"]);
        assert_eq!(request.timeout, Duration::from_secs(3600));
    }

    #[test]
    fn a_call_cancelled_before_it_starts_runs_nothing() {
        let cancel = CancelSignal::new();
        cancel.cancel();
        let marker = std::env::temp_dir().join(format!("qs-run-never-{}", std::process::id()));
        let (result, _) = run_with(
            &Run::new(),
            json!({"command": ["touch", marker.to_str().unwrap()]}),
            cancel,
        );
        assert!(matches!(result, Err(CapabilityError::Cancelled { .. })));
        assert!(!marker.exists());
    }
}
