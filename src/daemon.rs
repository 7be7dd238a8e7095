//! The whole router as a library: [`Daemon`] runs exactly what `op25b run`
//! runs (the devices and workers, signals, reload on SIGHUP, the control
//! plane, events, capture, abuse handling, the service manager's notify),
//! with rules given in code besides the config's. `op25b run` is
//! `Daemon::new(config).run()`.
//!
//! A rule given in code sits first, last, or in the place of a config
//! placeholder (`[[rule]] name = "x" plugin = "x"`). It is the same object in
//! every policy: a reload re-attaches it to the new one, so whatever state
//! it keeps (behind its own lock or atomics) carries over, and its counters
//! carry over by name like a config rule's. See examples/custom_router.rs.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};

use crate::config::{Config, ConfigError};
use crate::control::notify::Notifier;
use crate::control::stream::EventStream;
use crate::control::{self, Control, Failures, Hooks, ReloadOutcome, ReloadRequest, WriterThread};
use crate::dataplane::capture::CaptureSink;
use crate::dataplane::events::{Event, EventSender};
use crate::dataplane::{self, Dataplane, Sinks};
use crate::policy::{AttachError, Policy, Rule};
use crate::reload::{self, ReloadError};
use crate::stats::{OutputFile, WriteErrors};

pub use crate::control::capture::CaptureError;
pub use crate::control::events::EventsError;
pub use crate::control::ControlError;
pub use crate::dataplane::DeviceError;
pub use crate::policy::Place;

/// How a router that ran stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Stopped {
    /// SIGINT or SIGTERM (`op25b run` exits 0).
    Signal,
    /// A device was lost (deleted, or its namespace gone); the one log line
    /// that names it was written (`op25b run` exits 1 so a supervisor restarts it).
    DeviceLost(String),
}

/// Why the router could not start (or stopped with an error).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// A device, or the privileges to make one.
    #[error(transparent)]
    Device(#[from] DeviceError),
    /// The events file.
    #[error(transparent)]
    Events(#[from] control::events::EventsError),
    /// The capture file.
    #[error(transparent)]
    Capture(#[from] control::capture::CaptureError),
    /// The control socket or the metrics listener.
    #[error(transparent)]
    Control(#[from] ControlError),
    /// The signal handlers.
    #[error("installing signal handlers: {0}")]
    Signals(std::io::Error),
    /// The abuse handling thread.
    #[error("starting abuse handling: {0}")]
    Abuse(std::io::Error),
    /// The service manager's notify thread.
    #[error("starting the notify thread: {0}")]
    Notify(std::io::Error),
    /// The rules given in code do not fit the config.
    #[error("{file}: {error}")]
    Rules {
        /// The config file.
        file: String,
        /// What does not fit.
        #[source]
        error: AttachError,
    },
}

impl RunError {
    /// Whether restarting cannot help: a missing capability, a TUN device
    /// op25b may not open, rules given in code that do not fit the config
    /// (`op25b run` exits 2 for these, like for a bad config).
    pub fn is_deployment_error(&self) -> bool {
        matches!(
            self,
            RunError::Device(
                DeviceError::Capability { .. } | DeviceError::TunAccess { .. } | DeviceError::Uplink { .. }
            ) | RunError::Rules { .. }
        )
    }
}

/// The router: a config, rules given in code, and where to write the
/// counters when it stops.
pub struct Daemon {
    config: Config,
    rules: Vec<(Place, Arc<dyn Rule>)>,
    stats_file: Option<PathBuf>,
}

impl Daemon {
    /// Reads and validates the config file.
    pub fn load(path: &Path) -> Result<Daemon, ConfigError> {
        Ok(Daemon::new(Config::load(path)?))
    }

    /// A router for a config already loaded.
    pub fn new(config: Config) -> Daemon {
        Daemon { config, rules: Vec::new(), stats_file: None }
    }

    /// Adds a rule given in code at `place`.
    pub fn rule(mut self, place: Place, rule: impl Rule + 'static) -> Daemon {
        self.rules.push((place, Arc::new(rule)));
        self
    }

    /// Writes the counters as JSON to `path` on SIGUSR1 and when stopping.
    pub fn stats_file(mut self, path: impl Into<PathBuf>) -> Daemon {
        self.stats_file = Some(path.into());
        self
    }

    /// Runs the router until SIGINT or SIGTERM, or until a device is lost
    /// (SIGHUP reloads the config file, SIGUSR1 logs and writes the counters).
    pub fn run(self) -> Result<Stopped, RunError> {
        let Daemon { mut config, rules, stats_file } = self;
        let file = config.path.display().to_string();
        config.policy.attach(&rules).map_err(|error| RunError::Rules { file, error })?;
        run(config, &rules, stats_file.as_deref())
    }
}

fn run(config: Config, rules: &[(Place, Arc<dyn Rule>)], stats_file: Option<&Path>) -> Result<Stopped, RunError> {
    // Before anything is created: a missing capability is one line, exit 2.
    dataplane::privileges::check(&config)?;
    // Register before the devices exist so an early SIGTERM still cleans up.
    let signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP, SIGUSR1]).map_err(RunError::Signals)?;
    let write_errors = Arc::new(WriteErrors::default());
    let (outputs, Feeds { events, stream, capture: capture_sink }) = start_outputs(&config, &write_errors)?;
    // Abuse handling: a bounded queue of blocked attempts from the workers.
    let (attempts_tx, attempts_rx) = std::sync::mpsc::sync_channel(dataplane::events::ATTEMPT_QUEUE);
    // A lost device ends the wait for signals below.
    let handle = signals.handle();
    let sinks = Sinks {
        events: events.clone(),
        capture: capture_sink,
        abuse: config.abuse.as_ref().map(|_| attempts_tx),
        write_errors: Arc::clone(&write_errors),
        on_fault: Some(Arc::new(move || handle.close())),
        restore_abuse: Some(Arc::new(|a: &crate::state::abuse::Abuse| {
            if let Some(path) = a.settings().state_file {
                control::abuse_state::load(&path, a);
            }
        })),
    };
    let dp = Dataplane::start(&config, sinks)?;
    let mut stats_out =
        stats_file.map(|p| (p, Failures::new(OutputFile::Stats, p.to_path_buf(), Arc::clone(&write_errors))));
    let abuse = dp.abuse().map(|a| control::abuse::start(Arc::clone(a), attempts_rx, events.clone(), write_errors));
    let abuse = match abuse {
        Some(Err(e)) => {
            dp.stop();
            return Err(RunError::Abuse(e));
        }
        Some(Ok(t)) => Some(t),
        None => None,
    };
    // Reloads asked for on the control socket, run here like SIGHUP's.
    let (reload_tx, reload_rx) = crossbeam_channel::unbounded::<ReloadRequest>();
    // (reload_tx stays here too: the loop below never sees the channel closed.)
    let hooks = Hooks { events: events.clone(), reloads: Some(reload_tx.clone()), stream };
    let control = match Control::start(&config.control, &config.path, dp.stats_reader(), hooks) {
        Ok(c) => c,
        Err(e) => {
            dp.stop();
            return Err(e.into());
        }
    };
    // Both devices are up and the workers run: tell the service manager.
    let notifier = match control::notify::Notifier::start(dp.stats_reader()) {
        Ok(n) => n,
        Err(e) => {
            if let Some(c) = control {
                c.stop();
            }
            dp.stop();
            return Err(RunError::Notify(e));
        }
    };
    if let Some(n) = &notifier {
        n.ready();
    }
    log_running(&config, &dp);
    let reloader = Reloader {
        dp: &dp,
        rules,
        outputs: &outputs,
        notifier: notifier.as_ref(),
        control: control.as_ref(),
        events: events.as_ref(),
    };
    let signal = match serve(signals, &reload_rx, &reloader, config, stats_out.as_mut()) {
        Ok(s) => s,
        Err(e) => {
            if let Some(c) = control {
                c.stop();
            }
            dp.stop();
            return Err(RunError::Signals(e));
        }
    };
    let fault = dp.fault();
    match (&fault, signal) {
        // The one line a lost device gets.
        (Some(f), _) => tracing::error!(target: "op25b", "{f}; op25b stops"),
        (None, Some(signal)) => tracing::info!(target: "op25b", signal, "stopping"),
        (None, None) => tracing::info!(target: "op25b", "stopping: the signal handlers are gone"),
    }
    let stats = stop_all(dp, outputs, notifier, control, abuse, events);
    tracing::info!(target: "op25b", "counters: {}", stats.summary());
    write_stats(stats_out.as_mut(), &stats);
    Ok(match fault {
        Some(f) => Stopped::DeviceLost(f.to_string()),
        None => Stopped::Signal,
    })
}

/// The output threads: events (to their file and the control socket's
/// followers) and capture, with the senders the workers get.
fn start_outputs(config: &Config, write_errors: &Arc<WriteErrors>) -> Result<(Outputs, Feeds), RunError> {
    // Events: a bounded queue from the workers (and reloads) to the writer,
    // which writes the file and feeds the control socket's followers.
    let (events_tx, events_rx) = std::sync::mpsc::sync_channel(dataplane::events::QUEUE);
    let stream = config.control.socket.as_ref().map(|_| EventStream::new());
    let writer = control::events::start(&config.events, events_rx, Arc::clone(write_errors), stream.clone())?;
    let events = writer.as_ref().map(|_| events_tx);
    // Capture: a fixed pool of buffers, only when asked for.
    let (capture, capture_sink) = match config.capture.dropped {
        Some(_) => {
            let (sink, source) = dataplane::capture::pool();
            (control::capture::start(&config.capture, source, Arc::clone(write_errors))?, Some(sink))
        }
        None => (None, None),
    };
    Ok((Outputs { events: writer, capture }, Feeds { events, stream, capture: capture_sink }))
}

/// The one line that says op25b runs, with its devices and the policy's sizes.
fn log_running(config: &Config, dp: &Dataplane) {
    let ns = |n: &Option<String>| n.clone().unwrap_or_else(|| "<current>".into());
    tracing::info!(target: "op25b",
        subscriber = %config.subscriber.tun,
        subscriber_netns = %ns(&config.subscriber.netns),
        upstream = %config.upstream.tun,
        upstream_netns = %ns(&config.upstream.netns),
        offload = dp.offload(),
        "op25b running: {}",
        PolicySizes(&config.policy)
    );
}

/// What feeds the output threads: the workers' events and capture, the
/// control socket's followers.
struct Feeds {
    events: Option<EventSender>,
    stream: Option<EventStream>,
    capture: Option<CaptureSink>,
}

/// Stops everything in order and returns the last counters.
fn stop_all(
    dp: Dataplane,
    outputs: Outputs,
    notifier: Option<Notifier>,
    control: Option<Control>,
    abuse: Option<WriterThread>,
    events: Option<EventSender>,
) -> crate::Stats {
    let Outputs { events: writer, capture } = outputs;
    if let Some(n) = notifier {
        n.stopping();
    }
    if let Some(c) = control {
        c.stop();
    }
    let stats = dp.stop();
    // The workers are gone with their senders: abuse handling ends, then ours
    // goes, and the writer ends.
    if let Some(t) = abuse {
        t.join();
    }
    drop(events);
    if let Some(w) = writer {
        w.join();
    }
    if let Some(c) = capture {
        c.join();
    }
    stats
}

/// Takes the signals (through a thread of their own) and the control
/// socket's reload requests in turn, until a signal stops op25b (returned)
/// or the handlers are closed (`None`: a lost device).
fn serve(
    mut signals: signal_hook::iterator::Signals,
    reloads: &crossbeam_channel::Receiver<ReloadRequest>,
    reloader: &Reloader<'_>,
    mut running: Config,
    mut stats_out: Option<&mut (&Path, Failures)>,
) -> std::io::Result<Option<i32>> {
    let (signal_tx, signal_rx) = crossbeam_channel::bounded::<Option<i32>>(1);
    let handle = signals.handle();
    let forward = std::thread::Builder::new().name("op25b-signals".into()).spawn(move || {
        for s in signals.forever() {
            if signal_tx.send(Some(s)).is_err() {
                return;
            }
        }
        // Closed: a lost device, or op25b stops.
        let _ = signal_tx.send(None);
    })?;
    let signal = loop {
        crossbeam_channel::select! {
            recv(signal_rx) -> s => match s.ok().flatten() {
                Some(SIGHUP) => running = reloader.reload(running).0,
                Some(SIGUSR1) => {
                    let stats = reloader.dp.stats();
                    tracing::info!(target: "op25b", "counters: {}", stats.summary());
                    write_stats(stats_out.as_deref_mut(), &stats);
                }
                Some(signal) => break Some(signal),
                None => break None,
            },
            recv(reloads) -> r => if let Ok(request) = r {
                let (config, outcome) = reloader.reload(running);
                running = config;
                request.answer(outcome);
            },
        }
    };
    // The signal thread ends: its iterator closes, and a send of a signal
    // that came meanwhile fails once nobody receives.
    handle.close();
    drop(signal_rx);
    if forward.join().is_err() {
        tracing::error!("the signal thread panicked");
    }
    Ok(signal)
}

/// Writes the counters as JSON to `path` (if given): to a temporary file
/// beside it, then renamed, so a reader never sees half a file. A failure is
/// counted (and logged the first time); a half-written temporary file is removed.
fn write_stats(out: Option<&mut (&Path, Failures)>, stats: &crate::Stats) {
    let Some((path, failures)) = out else { return };
    let name = path.file_name().map_or_else(|| "stats".into(), |n| n.to_string_lossy().into_owned());
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    let text = format!("{}\n", stats.to_json());
    if let Err(e) = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, path)) {
        failures.failed(&e);
        let _ = std::fs::remove_file(&tmp); // may not exist
    }
}

/// The files op25b writes besides its log, reopened on every reload.
struct Outputs {
    events: Option<control::events::EventsWriter>,
    capture: Option<control::capture::CaptureWriter>,
}

/// The files of a config, opened again.
struct Reopened {
    events: Option<control::events::EventsOutput>,
    capture: Option<control::capture::CaptureOutput>,
}

impl Outputs {
    /// Opens the files of `config` again (its paths may be new); those that
    /// op25b writes, that is: turning one on or off takes a restart.
    fn open(&self, config: &Config) -> Result<Reopened, String> {
        let events = match self.events {
            Some(_) => control::events::EventsOutput::open(&config.events).map_err(|e| e.to_string())?,
            None => None,
        };
        let capture = match self.capture {
            Some(_) => control::capture::CaptureOutput::reopen(&config.capture).map_err(|e| e.to_string())?,
            None => None,
        };
        Ok(Reopened { events, capture })
    }

    /// The writers write to `files` from now on: the capture's has flushed
    /// its old file when this returns; the events writer takes its new file
    /// before its next event (wait for it with the switch returned).
    fn switch(&self, files: Reopened) -> Option<control::events::PendingSwitch> {
        if let (Some(w), Some(f)) = (&self.capture, files.capture) {
            w.switch(f);
        }
        match (&self.events, files.events) {
            (Some(w), Some(f)) => w.request(f),
            _ => None,
        }
    }
}

/// What a reload touches besides the config: the one reload path, whoever
/// asks for it.
struct Reloader<'a> {
    dp: &'a Dataplane,
    rules: &'a [(Place, Arc<dyn Rule>)],
    outputs: &'a Outputs,
    notifier: Option<&'a control::notify::Notifier>,
    control: Option<&'a Control>,
    events: Option<&'a dataplane::events::EventSender>,
}

impl Reloader<'_> {
    /// One reload, on SIGHUP or asked for on the control socket (they run
    /// one at a time, on the daemon's thread): reads the config file again
    /// and puts it in force, or refuses it and keeps `running`; reopens the
    /// events and capture files either way (so a log rotation's reload works
    /// even while the file is being edited); tells the service manager, the
    /// control plane and the events. The config in force afterwards and the
    /// outcome.
    fn reload(&self, running: Config) -> (Config, ReloadOutcome) {
        if let Some(n) = self.notifier {
            n.reloading();
        }
        let (config, outcome, events_file) = reload(self.dp, running, self.rules, self.outputs);
        let (ok, detail) = match &outcome {
            ReloadOutcome::Accepted { file, .. } => (true, file.clone()),
            ReloadOutcome::Refused { reason } => (false, reason.clone()),
        };
        if let Some(n) = self.notifier {
            n.reloaded(if ok { Ok(()) } else { Err(detail.clone()) });
        }
        if let Some(c) = self.control {
            c.reloaded(ok);
        }
        if let Some(tx) = self.events {
            // The writer may be behind; a reload event is worth a short wait.
            // It also wakes the writer to take its reopened file first.
            let _ = tx.send(Event::Reload { ok, detail });
        }
        // Nothing goes to the old events file once the reload is over.
        if let Some(p) = events_file {
            p.wait();
        }
        (config, outcome)
    }
}

/// Reads the config file again and puts its policy in force, its files
/// opened; on any error logs one line (`file:line: key: message`) and keeps
/// the running one, its files opened again. The config in force afterwards,
/// the outcome, and the events file's switch to wait for.
fn reload(
    dp: &Dataplane,
    running: Config,
    rules: &[(Place, Arc<dyn Rule>)],
    outputs: &Outputs,
) -> (Config, ReloadOutcome, Option<control::events::PendingSwitch>) {
    let state = dp.state();
    let prepared = Config::load(&running.path)
        .map_err(|e| ReloadError::from(e).to_string())
        .and_then(|mut new| {
            let file = new.path.display().to_string();
            new.policy.attach(rules).map_err(|error| ReloadError::Rules { file, error }.to_string())?;
            reload::prepare(&running, &state, new).map_err(|e| e.to_string())
        })
        .and_then(|r| Ok((outputs.open(&r.config)?, r)));
    match prepared {
        Ok((files, r)) => {
            // Every batch a worker starts after the log line uses the new policy.
            dp.set_policy(r.config.policy.clone(), r.state);
            if let (Some(a), Some(settings)) = (dp.abuse(), &r.config.abuse) {
                a.reconfigure(settings.clone());
            }
            let events_file = outputs.switch(files);
            tracing::info!(target: "op25b",
                file = %r.config.path.display(),
                kept_reply_buckets = r.kept.reply_buckets,
                kept_flows = r.kept.flows,
                kept_sessions = r.kept.sessions,
                kept_rule_buckets = r.kept.rule_buckets,
                kept_programs = r.kept.programs,
                "config reloaded: {}",
                PolicySizes(&r.config.policy)
            );
            dp.reloads().accepted((&r.kept).into());
            let file = r.config.path.display().to_string();
            (r.config, ReloadOutcome::Accepted { file, kept: r.kept }, events_file)
        }
        Err(e) => {
            tracing::error!(target: "op25b", "config reload failed, the running config stays in force: {e}");
            dp.reloads().refused();
            let events_file = match outputs.open(&running) {
                Ok(files) => outputs.switch(files),
                Err(e) => {
                    tracing::error!(target: "op25b", "cannot reopen a file; writing on to the one open: {e}");
                    None
                }
            };
            (running, ReloadOutcome::Refused { reason: e }, events_file)
        }
    }
}

/// The policy's sizes and action, as the start and reload log lines show them.
struct PolicySizes<'a>(&'a Policy);

impl std::fmt::Display for PolicySizes<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let p = self.0;
        write!(
            f,
            "subscriber_prefixes={} dynamic={} exempt_sources={} relays={} action={} rules={}",
            p.subscriber_prefixes.len(),
            p.op25b.dynamic.len(),
            p.op25b.exempt_sources.len(),
            p.op25b.relays.len(),
            p.op25b.action,
            p.rules.len()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::PacketView;
    use crate::policy::{RuleContext, RuleVerdict};
    use crate::testing::PolicyBuilder;

    struct Named(&'static str);

    impl Rule for Named {
        fn name(&self) -> &str {
            self.0
        }
        fn evaluate(&self, _p: &PacketView, _cx: &RuleContext) -> RuleVerdict {
            RuleVerdict::NoMatch
        }
    }

    const CONFIG_RULES: &str = "[[rule]]\nname = \"a\"\naction = \"count\"\n\n[[rule]]\nname = \"slot\"\nplugin = \"p\"\n\n[[rule]]\nname = \"b\"\naction = \"count\"\n";

    fn names(rules: &[(Place, Arc<dyn Rule>)]) -> Result<Vec<String>, String> {
        let mut policy = PolicyBuilder::lab().rules(CONFIG_RULES).config().policy;
        policy.attach(rules).map_err(|e| e.to_string())?;
        Ok(policy.rules.rules().iter().map(|r| r.name().to_string()).collect())
    }

    fn given(place: Place, name: &'static str) -> (Place, Arc<dyn Rule>) {
        (place, Arc::new(Named(name)))
    }

    #[test]
    fn code_rules_sit_first_last_and_in_their_placeholder() {
        let rules = [given(Place::Last, "z"), given(Place::Plugin("p".into()), "p"), given(Place::First, "f")];
        assert_eq!(names(&rules).unwrap(), ["f", "a", "p", "b", "z"]);
    }

    #[test]
    fn a_placeholder_without_its_rule_and_a_rule_without_its_placeholder_are_refused() {
        let e = names(&[given(Place::Last, "z")]).unwrap_err();
        assert_eq!(e, "rule \"slot\": plugin \"p\" is not given in code");
        let e = names(&[given(Place::Plugin("p".into()), "p"), given(Place::Plugin("q".into()), "q")]).unwrap_err();
        assert!(e.contains("no [[rule]] has plugin = \"q\""), "{e}");
        let e = names(&[given(Place::Plugin("p".into()), "p"), given(Place::Last, "a")]).unwrap_err();
        assert!(e.contains("two rules are named \"a\""), "{e}");
    }

    #[test]
    fn the_same_rule_object_goes_into_every_policy() {
        let rule: Arc<dyn Rule> = Arc::new(Named("p"));
        let rules = [(Place::Plugin("p".into()), Arc::clone(&rule))];
        let (mut one, mut two) = (
            PolicyBuilder::lab().rules(CONFIG_RULES).config().policy,
            PolicyBuilder::lab().rules(CONFIG_RULES).config().policy,
        );
        one.attach(&rules).unwrap();
        two.attach(&rules).unwrap();
        assert_eq!(Arc::strong_count(&rule), 4, "the test's, the list's and one per policy");
        assert!(one.rules.rules()[1].describe().ends_with("(given in code)"));
    }
}
