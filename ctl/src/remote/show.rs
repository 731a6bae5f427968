//! How answers are printed: aligned tables and `key value` lines for people, and with `--json`
//! the messages as JSON, with the .proto field names and enums as their lowercase names
//! (`SLOT_STATE_GOOD` is `"good"`; a value this build does not know is `"unspecified"`).

use std::fmt::Write as _;

use cairn_api::proto;
use serde_json::{json, Value};

/// An enum's value as its name without the type's prefix, lowercase.
fn lower(name: Option<&str>, prefix: &str) -> String {
    name.and_then(|n| n.strip_prefix(prefix))
        .unwrap_or("UNSPECIFIED")
        .to_ascii_lowercase()
}

pub fn slot(v: i32) -> String {
    lower(
        proto::Slot::try_from(v).ok().map(|e| e.as_str_name()),
        "SLOT_",
    )
}

fn slot_state(v: i32) -> String {
    lower(
        proto::SlotState::try_from(v).ok().map(|e| e.as_str_name()),
        "SLOT_STATE_",
    )
}

fn check_state(v: i32) -> String {
    lower(
        proto::CheckState::try_from(v).ok().map(|e| e.as_str_name()),
        "CHECK_STATE_",
    )
}

fn update_outcome(v: i32) -> String {
    lower(
        proto::UpdateOutcome::try_from(v)
            .ok()
            .map(|e| e.as_str_name()),
        "UPDATE_OUTCOME_",
    )
}

fn service_state(v: i32) -> String {
    lower(
        proto::ServiceState::try_from(v)
            .ok()
            .map(|e| e.as_str_name()),
        "SERVICE_STATE_",
    )
}

pub fn upgrade_phase(v: i32) -> String {
    lower(
        proto::UpgradePhase::try_from(v)
            .ok()
            .map(|e| e.as_str_name()),
        "UPGRADE_PHASE_",
    )
}

fn update_stage(v: i32) -> String {
    lower(
        proto::update_event::Stage::try_from(v)
            .ok()
            .map(|e| e.as_str_name()),
        "STAGE_",
    )
}

fn config_change(v: i32) -> String {
    lower(
        proto::config_event::Change::try_from(v)
            .ok()
            .map(|e| e.as_str_name()),
        "CHANGE_",
    )
}

fn storage_state(v: i32) -> String {
    lower(
        proto::storage_event::State::try_from(v)
            .ok()
            .map(|e| e.as_str_name()),
        "STATE_",
    )
}

/// A time in seconds since the epoch as `2024-05-01 12:00:00Z`.
pub fn time_s(secs: i64) -> String {
    match time::OffsetDateTime::from_unix_timestamp(secs) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        ),
        Err(_) => format!("@{secs}"),
    }
}

/// A `_unix_ms` field for people: `-` for 0 (unknown, never).
pub fn time_ms(ms: i64) -> String {
    if ms == 0 {
        return "-".to_string();
    }
    time_s(ms.div_euclid(1000))
}

/// Rows in aligned columns: each as wide as its widest cell, the last one not padded.
#[derive(Default)]
pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Table {
        Table {
            rows: vec![header.iter().map(|h| h.to_string()).collect()],
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let width = |c: usize| {
            self.rows
                .iter()
                .filter_map(|r| r.get(c))
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or(0)
        };
        let widths: Vec<usize> = (0..columns).map(width).collect();
        let mut out = String::new();
        for row in &self.rows {
            let mut line = String::new();
            for (c, cell) in row.iter().enumerate() {
                if c + 1 == row.len() {
                    line.push_str(cell);
                } else {
                    let _ = write!(line, "{cell:<w$}  ", w = widths[c]);
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// `key value` lines, the values aligned.
fn fields(pairs: &[(&str, String)]) -> String {
    let mut table = Table::default();
    for (k, v) in pairs {
        table.row(vec![k.to_string(), v.clone()]);
    }
    table.render()
}

pub fn version_json(v: &proto::VersionResponse) -> Value {
    json!({
        "os_version": v.os_version,
        "security_version": v.security_version,
        "security_floor": v.security_floor,
        "board": v.board,
        "arch": v.arch,
        "running_slot": slot(v.running_slot),
        "hostname": v.hostname,
        "booted_unix_ms": v.booted_unix_ms,
        "api_version": v.api_version,
    })
}

pub fn version_text(v: &proto::VersionResponse) -> String {
    fields(&[
        ("hostname", v.hostname.clone()),
        ("os version", v.os_version.clone()),
        (
            "security",
            format!("version {}, floor {}", v.security_version, v.security_floor),
        ),
        ("board", format!("{} ({})", v.board, v.arch)),
        ("running slot", slot(v.running_slot)),
        ("booted", time_ms(v.booted_unix_ms)),
        ("api version", v.api_version.clone()),
    ])
}

pub fn health_json(h: &proto::HealthResponse) -> Value {
    json!({
        "healthy": h.healthy,
        "checks": h.checks.iter().map(|c| json!({
            "name": c.name,
            "state": check_state(c.state),
            "detail": c.detail,
            "checked_unix_ms": c.checked_unix_ms,
            "streak": c.streak,
        })).collect::<Vec<_>>(),
        "trial": h.trial,
        "trial_deadline_unix_ms": h.trial_deadline_unix_ms,
        "secure_boot": h.secure_boot,
    })
}

pub fn health_text(h: &proto::HealthResponse) -> String {
    let failing = h
        .checks
        .iter()
        .filter(|c| c.state != proto::CheckState::Passing as i32)
        .count();
    let mut out = if h.healthy {
        format!("healthy: all {} checks pass\n", h.checks.len())
    } else {
        format!(
            "unhealthy: {failing} of {} checks do not pass\n",
            h.checks.len()
        )
    };
    if !h.secure_boot.is_empty() {
        let _ = writeln!(out, "secure_boot={}", h.secure_boot);
    }
    if h.trial {
        let _ = writeln!(
            out,
            "trial boot: committed if healthy, else rolled back, at {}",
            time_ms(h.trial_deadline_unix_ms)
        );
    }
    let mut table = Table::new(&["CHECK", "STATE", "STREAK", "CHECKED", "DETAIL"]);
    for c in &h.checks {
        table.row(vec![
            c.name.clone(),
            check_state(c.state),
            c.streak.to_string(),
            time_ms(c.checked_unix_ms),
            c.detail.clone(),
        ]);
    }
    out.push_str(&table.render());
    out
}

pub fn slots_json(s: &proto::SlotStatusResponse) -> Value {
    json!({
        "slots": s.slots.iter().map(|i| json!({
            "slot": slot(i.slot),
            "state": slot_state(i.state),
            "os_version": i.os_version,
            "security_version": i.security_version,
            "tries_left": i.tries_left,
            "installed_unix_ms": i.installed_unix_ms,
        })).collect::<Vec<_>>(),
        "running": slot(s.running),
        "next_boot": slot(s.next_boot),
        "last_update": update_outcome(s.last_update),
        "last_update_detail": s.last_update_detail,
    })
}

pub fn slots_text(s: &proto::SlotStatusResponse) -> String {
    let mut table = Table::new(&[
        "SLOT",
        "STATE",
        "VERSION",
        "SECURITY",
        "TRIES LEFT",
        "INSTALLED",
        "",
    ]);
    for i in &s.slots {
        let mut marks = Vec::new();
        if i.slot == s.running {
            marks.push("running");
        }
        if i.slot == s.next_boot {
            marks.push("next boot");
        }
        let dash = |s: String| if s.is_empty() { "-".to_string() } else { s };
        table.row(vec![
            slot(i.slot),
            slot_state(i.state),
            dash(i.os_version.clone()),
            i.security_version.to_string(),
            if i.state == proto::SlotState::Trial as i32 {
                i.tries_left.to_string()
            } else {
                "-".to_string()
            },
            time_ms(i.installed_unix_ms),
            marks.join(", "),
        ]);
    }
    let mut out = table.render();
    let _ = write!(
        out,
        "running {}, next boot {}\nlast update: {}",
        slot(s.running),
        slot(s.next_boot),
        update_outcome(s.last_update)
    );
    if !s.last_update_detail.is_empty() {
        let _ = write!(out, " ({})", s.last_update_detail);
    }
    out.push('\n');
    out
}

pub fn services_json(s: &proto::ServiceListResponse) -> Value {
    json!({
        "services": s.services.iter().map(|i| json!({
            "name": i.name,
            "state": service_state(i.state),
            "pid": i.pid,
            "restarts": i.restarts,
            "since_unix_ms": i.since_unix_ms,
            "last_exit": i.last_exit,
            "rss_bytes": i.rss_bytes,
            "open_fds": i.open_fds,
        })).collect::<Vec<_>>(),
    })
}

pub fn services_text(s: &proto::ServiceListResponse) -> String {
    let mut table = Table::new(&[
        "NAME",
        "STATE",
        "PID",
        "MEMORY",
        "FDS",
        "RESTARTS",
        "SINCE",
        "LAST EXIT",
    ]);
    for i in &s.services {
        table.row(vec![
            i.name.clone(),
            service_state(i.state),
            if i.pid == 0 {
                "-".to_string()
            } else {
                i.pid.to_string()
            },
            if i.rss_bytes == 0 {
                "-".to_string()
            } else {
                format!("{:.1} MiB", i.rss_bytes as f64 / (1 << 20) as f64)
            },
            if i.open_fds == 0 {
                "-".to_string()
            } else {
                i.open_fds.to_string()
            },
            i.restarts.to_string(),
            time_ms(i.since_unix_ms),
            i.last_exit.clone(),
        ]);
    }
    table.render()
}

pub fn log_json(l: &proto::LogsResponse) -> Value {
    json!({
        "time_unix_ms": l.time_unix_ms,
        "line": l.line,
        "dropped": l.dropped,
        "priority": l.priority,
    })
}

pub fn log_text(l: &proto::LogsResponse) -> String {
    format!("{}  {}", time_ms(l.time_unix_ms), l.line)
}

pub fn upgrade_done_json(d: &proto::UpgradeDone) -> Value {
    json!({
        "slot": slot(d.slot),
        "os_version": d.os_version,
        "security_version": d.security_version,
        "rebooting": d.rebooting,
    })
}

pub fn apply_config_json(r: &proto::ApplyConfigResponse) -> Value {
    json!({
        "changes": r.changes,
        "generation": r.generation,
        "revert_unix_ms": r.revert_unix_ms,
    })
}

pub fn event_json(e: &proto::EventsResponse) -> Value {
    use proto::events_response::Event;
    let mut v = json!({ "seq": e.seq, "time_unix_ms": e.time_unix_ms });
    let (key, body) = match &e.event {
        Some(Event::Boot(b)) => (
            "boot",
            json!({"slot": slot(b.slot), "os_version": b.os_version, "trial": b.trial}),
        ),
        Some(Event::Health(h)) => (
            "health",
            json!({
                "healthy": h.healthy,
                "detail": h.detail,
                "first_round": h.first_round,
                "last_round": h.last_round,
            }),
        ),
        Some(Event::Update(u)) => (
            "update",
            json!({"stage": update_stage(u.stage), "os_version": u.os_version, "detail": u.detail}),
        ),
        Some(Event::Rollback(r)) => (
            "rollback",
            json!({"from_slot": slot(r.from_slot), "to_slot": slot(r.to_slot), "reason": r.reason}),
        ),
        Some(Event::Config(c)) => (
            "config",
            json!({"change": config_change(c.change), "generation": c.generation}),
        ),
        Some(Event::Service(s)) => (
            "service",
            json!({"name": s.name, "state": service_state(s.state), "detail": s.detail}),
        ),
        Some(Event::Storage(s)) => (
            "storage",
            json!({"state": storage_state(s.state), "detail": s.detail}),
        ),
        None => return v,
    };
    v[key] = body;
    v
}

pub fn event_text(e: &proto::EventsResponse) -> String {
    use proto::events_response::Event;
    let with = |text: String, detail: &str| {
        if detail.is_empty() {
            text
        } else {
            format!("{text}: {detail}")
        }
    };
    let (kind, what) = match &e.event {
        Some(Event::Boot(b)) => (
            "boot",
            format!(
                "slot {}, {}{}",
                slot(b.slot),
                b.os_version,
                if b.trial { " (trial)" } else { "" }
            ),
        ),
        Some(Event::Health(h)) => (
            "health",
            with(
                (if h.healthy { "healthy" } else { "unhealthy" }).to_string(),
                &h.detail,
            ),
        ),
        Some(Event::Update(u)) => (
            "update",
            with(
                format!("{} {}", update_stage(u.stage), u.os_version)
                    .trim_end()
                    .to_string(),
                &u.detail,
            ),
        ),
        Some(Event::Rollback(r)) => (
            "rollback",
            with(
                format!("slot {} to slot {}", slot(r.from_slot), slot(r.to_slot)),
                &r.reason,
            ),
        ),
        Some(Event::Config(c)) => (
            "config",
            format!("{} generation {}", config_change(c.change), c.generation),
        ),
        Some(Event::Service(s)) => (
            "service",
            with(format!("{} {}", s.name, service_state(s.state)), &s.detail),
        ),
        Some(Event::Storage(s)) => ("storage", with(storage_state(s.state), &s.detail)),
        None => (
            "unknown",
            "(an event this cairnctl does not know)".to_string(),
        ),
    };
    format!(
        "{}  #{:<5} {kind:<8}  {what}",
        time_ms(e.time_unix_ms),
        e.seq
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enums_are_lowercase_names() {
        assert_eq!(slot(proto::Slot::B as i32), "b");
        assert_eq!(slot_state(proto::SlotState::Good as i32), "good");
        assert_eq!(
            update_outcome(proto::UpdateOutcome::RolledBack as i32),
            "rolled_back"
        );
        assert_eq!(slot(0), "unspecified");
        assert_eq!(slot(99), "unspecified");
    }

    #[test]
    fn times() {
        assert_eq!(time_ms(0), "-");
        assert_eq!(time_ms(1_700_000_000_999), "2023-11-14 22:13:20Z");
        assert_eq!(time_s(0), "1970-01-01 00:00:00Z");
    }

    #[test]
    fn tables_align_and_do_not_pad_the_last_column() {
        let mut t = Table::new(&["NAME", "STATE", "NOTE"]);
        t.row(vec!["containerd".into(), "running".into(), "".into()]);
        t.row(vec!["x".into(), "stopped".into(), "exit status 1".into()]);
        assert_eq!(
            t.render(),
            "NAME        STATE    NOTE\ncontainerd  running\nx           stopped  exit status 1\n"
        );
    }
}
