//! Background tasks of a running balancer: the sticky table sweeper (which also syncs engine
//! saturation into node state and closes the tunnels of removed nodes past their drain
//! deadline) and the configuration file watcher.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::state::State;
use crate::upstream::NodeIdx;

/// Reloads when the configuration file changes. The folder is watched, not the file, since
/// editors and deploy tools replace files by rename; events are debounced.
pub async fn watch_config(state: Arc<State>, path: PathBuf) {
    use notify_debouncer_full::notify::RecursiveMode;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."))
        .to_path_buf();
    let file_name = path.file_name().map(|f| f.to_os_string());
    // Its thread looks for settled events once per debounce period (by default four times
    // per period: twenty wake-ups a second of an idle balancer).
    let debouncer = notify_debouncer_full::new_debouncer(
        Duration::from_millis(200),
        Some(Duration::from_millis(200)),
        move |res: notify_debouncer_full::DebounceEventResult| {
            if let Ok(events) = res {
                let hit = events
                    .iter()
                    .any(|e| touches_file(&e.event, file_name.as_deref()));
                if hit {
                    let _ = tx.send(());
                }
            }
        },
    );
    let mut debouncer = match debouncer {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(
                "cannot watch {}: {e}; reload with SIGHUP or the admin API",
                dir.display()
            );
            return;
        }
    };
    if let Err(e) = debouncer.watch(&dir, RecursiveMode::NonRecursive) {
        tracing::warn!(
            "cannot watch {}: {e}; reload with SIGHUP or the admin API",
            dir.display()
        );
        return;
    }
    let mut last = std::fs::read(&path).ok();
    loop {
        tokio::select! {
            _ = state.shutdown.cancelled() => return,
            ev = rx.recv() => if ev.is_none() { return },
        }
        // Only a change of content reloads (a touch or a rename of the same text does not),
        // and only once the content has settled: a file still being written is not applied.
        let Some(now) = settled(&path, &state).await else {
            continue;
        };
        if Some(&now) != last.as_ref() {
            tracing::info!("{} changed: reloading", path.display());
            let _ = state.reload_from_bytes(&path, &now);
            last = Some(now);
        }
    }
}

/// True when `event` may have changed the file named `file_name` in the watched folder. Opening
/// and reading it does not: the watcher's own reads would otherwise trigger the next read,
/// forever.
fn touches_file(
    event: &notify_debouncer_full::notify::Event,
    file_name: Option<&std::ffi::OsStr>,
) -> bool {
    use notify_debouncer_full::notify::event::{AccessKind, AccessMode, EventKind};
    let change = match event.kind {
        // Closed after writing: a change, though its writes were reported already.
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    };
    change && event.paths.iter().any(|p| p.file_name() == file_name)
}

/// How long a changed file must stay the same before it is applied.
const SETTLE: Duration = Duration::from_millis(500);
/// Reads of a file that keeps changing before the watcher waits for the next event.
const SETTLE_TRIES: usize = 20;

/// The file's content once two reads [`SETTLE`] apart agree (a writer that writes in pieces,
/// or truncates then writes, is waited for: a truncated file that happens to parse would
/// otherwise remove nodes). `None` when it cannot be read or does not settle.
async fn settled(path: &std::path::Path, state: &State) -> Option<Vec<u8>> {
    let mut prev = tokio::fs::read(path).await.ok()?;
    for _ in 0..SETTLE_TRIES {
        tokio::select! {
            _ = state.shutdown.cancelled() => return None,
            _ = tokio::time::sleep(SETTLE) => {}
        }
        let now = tokio::fs::read(path).await.ok()?;
        if now == prev {
            return Some(now);
        }
        prev = now;
    }
    tracing::warn!(
        "{} keeps changing: not reloaded until it settles",
        path.display()
    );
    None
}

/// Expires idle learned sessions and keeps the table within its bound.
pub async fn sweeper(state: Arc<State>) {
    let size = metrics::gauge!("lb_sticky_sessions");
    let evictions = metrics::counter!("lb_sticky_evictions_total");
    let expirations = metrics::counter!("lb_sticky_expirations_total");
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let mut last_full = tokio::time::Instant::now();
    let mut last_pools = tokio::time::Instant::now();
    // Nodes removed by a reload whose tunnels were closed at their drain deadline.
    let mut retired = HashSet::new();
    loop {
        tokio::select! {
            _ = state.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        // Bound checks are cheap and run often; idle expiry scans the table every 10 s.
        if state.sticky.over_limit() || last_full.elapsed() >= Duration::from_secs(10) {
            last_full = tokio::time::Instant::now();
            let (expired, evicted) = state.sticky.sweep();
            expirations.increment(expired);
            evictions.increment(evicted);
            state.tickets.sweep();
        }
        size.set(state.sticky.len() as f64);
        if last_pools.elapsed() >= Duration::from_millis(950) {
            last_pools = tokio::time::Instant::now();
            sweep_pools(&state);
            state.ws_meters.shrink();
        }
        close_retired_tunnels(&state, &mut retired);
        sync_saturation(&state);
        state.metrics.run_upkeep();
    }
}

/// Each node pool's idle connections: closed by the node, too old, or not needed (see
/// [`Pool::sweep`](crate::upstream::pool::Pool::sweep)).
fn sweep_pools(state: &State) {
    let snap = state.snapshot.load();
    for n in &snap.nodes {
        n.pool.sweep();
        for p in &n.ports {
            p.sweep();
        }
    }
}

/// Copies engine saturation from telemetry into node state (the selection gate).
fn sync_saturation(state: &State) {
    let snap = state.snapshot.load();
    let policy = state.telemetry.policy();
    for n in &snap.nodes {
        if n.engine.is_none() {
            continue;
        }
        let saturated = state
            .telemetry
            .fresh_sample(&n.id)
            .is_some_and(|(sample, cpu)| policy.is_saturated(&sample, cpu));
        if saturated != n.state.saturated() {
            tracing::info!(node = %n.id, saturated, "engine saturation changed");
            n.state.set_saturated(saturated);
        }
    }
}

/// Closes the tunnels of nodes removed by a reload once their drain deadline has passed
/// (clients get close code 1001); their later requests are redispatched.
fn close_retired_tunnels(state: &State, retired: &mut HashSet<NodeIdx>) {
    let snap = state.snapshot.load();
    let now = crate::clock::now_ms();
    for n in &snap.nodes {
        match n.retiring_until_ms {
            Some(t) if t <= now => {
                if retired.insert(n.state.idx) {
                    tracing::info!(node = %n.id, "drain deadline of a removed node: closing its websockets");
                    n.state.close_tunnels();
                }
            }
            _ => {
                retired.remove(&n.state.idx);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::touches_file;
    use notify_debouncer_full::notify::event::{AccessKind, CreateKind, ModifyKind, RenameMode};
    use notify_debouncer_full::notify::{Event, EventKind};
    use std::ffi::OsStr;

    fn ev(kind: EventKind, path: &str) -> Event {
        Event::new(kind).add_path(path.into())
    }

    #[test]
    fn only_changes_of_the_config_file_count() {
        let name = Some(OsStr::new("lb.toml"));
        for kind in [
            EventKind::Modify(ModifyKind::Any),
            EventKind::Create(CreateKind::File),
            EventKind::Modify(ModifyKind::Name(RenameMode::To)),
            EventKind::Remove(notify_debouncer_full::notify::event::RemoveKind::File),
            EventKind::Access(AccessKind::Close(
                notify_debouncer_full::notify::event::AccessMode::Write,
            )),
        ] {
            assert!(touches_file(&ev(kind, "/etc/lb/lb.toml"), name), "{kind:?}");
        }
        // Reading the file (what the watcher itself does) and other files are no reason.
        for kind in [
            EventKind::Access(AccessKind::Any),
            EventKind::Access(AccessKind::Open(
                notify_debouncer_full::notify::event::AccessMode::Any,
            )),
            EventKind::Access(AccessKind::Close(
                notify_debouncer_full::notify::event::AccessMode::Read,
            )),
        ] {
            assert!(
                !touches_file(&ev(kind, "/etc/lb/lb.toml"), name),
                "{kind:?}"
            );
        }
        let m = EventKind::Modify(ModifyKind::Any);
        assert!(!touches_file(&ev(m, "/etc/lb/access.log"), name));
    }
}
