//! `heartbeat scan --etcd`: the same verdicts over what publishers keep in
//! etcd, once or following its watch stream.

use std::collections::HashMap;
use std::io::{self, BufWriter, Write};
use std::process::ExitCode;

use heartbeat::etcd::{Client, EtcdEntry, EtcdEvent, EtcdScanner, IgnoredKey};
use heartbeat::{ScanStatus, format_timestamp};
use serde::Serialize;
use serde_json::{Value, json};

use super::{Format, ScanArgs, failed, outcome, say, write_row};

/// `scan --etcd URL[,URL]`.
pub(super) fn run(args: &ScanArgs, endpoints: &str) -> ExitCode {
    if args.cleanup {
        return failed(
            &"--cleanup does not apply to --etcd: etcd removes a key by itself when its publisher's lease \
              expires or is revoked",
        );
    }
    let client = match Client::from_list(endpoints) {
        Ok(c) => c,
        Err(e) => return failed(&e),
    };
    let scanner =
        match EtcdScanner::builder(client).prefix(&args.prefix).stale_after(args.stale_after).build() {
            Ok(s) => s,
            Err(e) => return failed(&e),
        };
    if args.watch { watch(&scanner, args.format) } else { list(&scanner, args.format) }
}

fn unreachable(e: &heartbeat::Error) -> ExitCode {
    failed(&format_args!("cannot read presence from etcd: {e}"))
}

fn list(scanner: &EtcdScanner, format: Format) -> ExitCode {
    let scan = match scanner.scan() {
        Ok(scan) => scan,
        Err(e) => return unreachable(&e),
    };
    let code = outcome(scan.fresh_count() > 0);
    let mut out = BufWriter::with_capacity(64 * 1024, io::stdout().lock());
    let printed = match format {
        Format::Table => print_table(&mut out, &scan.entries),
        Format::Json => scan.entries.iter().try_for_each(|e| {
            serde_json::to_writer(&mut out, &EntryJson::of(e))?;
            out.write_all(b"\n")
        }),
    };
    let _ = printed.and_then(|()| out.flush());
    drop(out);
    for ignored in &scan.ignored {
        report_ignored(ignored);
    }
    code
}

fn report_ignored(k: &IgnoredKey) {
    say(format_args!("ignored {}: {}", super::super::one_line(&k.key), super::super::one_line(&k.why)));
}

/// Follows the watch and prints each change until SIGINT or SIGTERM.
fn watch(scanner: &EtcdScanner, format: Format) -> ExitCode {
    let stop = match super::super::stop_on_signals(|sig| 128 + sig) {
        Ok(stop) => stop,
        Err(e) => return failed(&format_args!("cannot handle signals: {e}")),
    };
    // etcd unreachable at the start is an error, as without --watch; later
    // outages are events, and the watch goes on.
    if let Err(e) = scanner.scan() {
        return unreachable(&e);
    }
    let mut watch = match scanner.watch() {
        Ok(w) => w,
        Err(e) => return failed(&e),
    };
    let events = watch.events().clone();
    stop.up();
    super::follow(
        &events,
        stop.flag(),
        || watch.stop(),
        |out, picture, event| print_event(out, picture, event, format),
        update,
        "the watch thread",
    )
}

/// Applies an event to the key -> status picture.
fn update(picture: &mut HashMap<String, ScanStatus>, event: &EtcdEvent) {
    match event {
        EtcdEvent::Appeared(e) | EtcdEvent::Changed { entry: e, .. } => {
            picture.insert(e.key.clone(), e.status);
        }
        EtcdEvent::Gone(e) => {
            picture.remove(&e.key);
        }
        EtcdEvent::Ignored(_) | EtcdEvent::Down(_) | EtcdEvent::Up => {}
    }
}

/// Prints one event, flushed; an error means stdout is closed. Ignored
/// keys go to stderr, as without --watch.
fn print_event(
    out: &mut impl Write,
    picture: &mut HashMap<String, ScanStatus>,
    event: &EtcdEvent,
    format: Format,
) -> io::Result<()> {
    update(picture, event);
    if let (EtcdEvent::Ignored(k), Format::Table) = (event, format) {
        report_ignored(k);
        return Ok(());
    }
    let line = match format {
        Format::Table => event_line(event),
        Format::Json => event_json(event).to_string(),
    };
    writeln!(out, "{line}")?;
    out.flush()
}

fn event_line(event: &EtcdEvent) -> String {
    let (label, entry) = match event {
        EtcdEvent::Appeared(e) => ("appeared".to_owned(), e),
        EtcdEvent::Changed { from, entry } => (format!("changed {from}->{}", entry.status), entry),
        EtcdEvent::Gone(e) => ("gone".to_owned(), e),
        EtcdEvent::Down(why) => return format!("down  {}", super::super::one_line(why)),
        EtcdEvent::Up => return "up".to_owned(),
        EtcdEvent::Ignored(k) => {
            return format!(
                "ignored  {}  {}",
                super::super::one_line(&k.key),
                super::super::one_line(&k.why)
            );
        }
    };
    format!("{label}  {}", cells(entry).join("  "))
}

fn event_json(event: &EtcdEvent) -> Value {
    let (name, entry, from) = match event {
        EtcdEvent::Appeared(e) => ("appeared", e, None),
        EtcdEvent::Changed { from, entry } => ("changed", entry, Some(*from)),
        EtcdEvent::Gone(e) => ("gone", e, None),
        EtcdEvent::Down(why) => return json!({ "event": "down", "error": why }),
        EtcdEvent::Up => return json!({ "event": "up" }),
        EtcdEvent::Ignored(k) => return json!({ "event": "ignored", "key": k.key, "why": k.why }),
    };
    let mut v = serde_json::to_value(EntryJson::of(entry)).expect("an entry serializes");
    v["event"] = name.into();
    if let Some(from) = from {
        v["from"] = lower(from).into();
    }
    v
}

const COLUMNS: usize = 8;
const HEADER: [&str; COLUMNS] = ["STATUS", "KIND", "HOST", "PID", "UUID", "ID", "AGE", "WHY"];

fn print_table(out: &mut impl Write, entries: &[EtcdEntry]) -> io::Result<()> {
    let rows: Vec<[String; COLUMNS]> = entries.iter().map(cells).collect();
    let mut widths = HEADER.map(|h| h.chars().count());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    write_row(out, &HEADER.map(str::to_owned), &widths)?;
    for row in &rows {
        write_row(out, row, &widths)?;
    }
    Ok(())
}

/// An entry's cells; what came from etcd is escaped.
fn cells(e: &EtcdEntry) -> [String; COLUMNS] {
    let one_line = super::super::one_line;
    [
        e.status.as_str().to_owned(),
        e.kind.as_str().to_owned(),
        one_line(&e.host),
        e.pid.to_string(),
        one_line(&e.uuid),
        e.id.as_deref().map_or_else(|| "-".to_owned(), one_line),
        match (e.age, e.last_beat) {
            (Some(a), _) => format!("{:.1}s", a.as_secs_f64()),
            (None, Some(_)) => "future".to_owned(),
            (None, None) => "-".to_owned(),
        },
        one_line(&e.why),
    ]
}

fn lower(status: ScanStatus) -> String {
    status.as_str().to_ascii_lowercase()
}

/// An entry as `scan --etcd --format json` prints it.
#[derive(Serialize)]
struct EntryJson<'a> {
    age_sec: Option<f64>,
    host: &'a str,
    id: Option<&'a str>,
    key: &'a str,
    kind: &'static str,
    last_beat: Option<String>,
    lease: i64,
    owner: &'a str,
    pid: u32,
    since: Option<String>,
    state: Option<&'a str>,
    status: String,
    uuid: &'a str,
    why: &'a str,
}

impl<'a> EntryJson<'a> {
    fn of(e: &'a EtcdEntry) -> Self {
        EntryJson {
            age_sec: e.age.map(|a| a.as_secs_f64()),
            host: &e.host,
            id: e.id.as_deref(),
            key: &e.key,
            kind: e.kind.as_str(),
            last_beat: e.last_beat.map(format_timestamp),
            lease: e.lease,
            owner: &e.owner,
            pid: e.pid,
            since: e.since.map(format_timestamp),
            state: e.state.as_deref(),
            status: lower(e.status),
            uuid: &e.uuid,
            why: &e.why,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use heartbeat::etcd::EntryKind;
    use std::time::{Duration, SystemTime};

    fn entry(status: ScanStatus, kind: EntryKind, id: Option<&str>) -> EtcdEntry {
        EtcdEntry {
            key: "heartbeat/hosts/web\n1/7-u".into(),
            kind,
            host: "web\n1".into(),
            pid: 7,
            uuid: "u".into(),
            id: id.map(str::to_owned),
            owner: "web\n1/7-u".into(),
            state: id.map(|_| "alive".to_owned()),
            last_beat: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)),
            since: None,
            age: Some(Duration::from_millis(1500)),
            status,
            why: "last beat 1.5s ago".into(),
            lease: 5,
            mod_revision: 9,
        }
    }

    #[test]
    fn table_and_events_escape_and_align() {
        let entries = [
            entry(ScanStatus::Fresh, EntryKind::Process, None),
            entry(ScanStatus::Stale, EntryKind::Session, Some("s1")),
        ];
        let mut out = Vec::new();
        print_table(&mut out, &entries).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "STATUS  KIND     HOST    PID  UUID  ID  AGE   WHY");
        assert_eq!(lines[1], "FRESH   process  web\\n1  7    u     -   1.5s  last beat 1.5s ago");
        assert_eq!(lines[2], "STALE   session  web\\n1  7    u     s1  1.5s  last beat 1.5s ago");

        let mut picture = HashMap::new();
        let mut out = Vec::new();
        let events = [
            EtcdEvent::Appeared(entries[0].clone()),
            EtcdEvent::Changed {
                from: ScanStatus::Fresh,
                entry: entry(ScanStatus::Stale, EntryKind::Process, None),
            },
            EtcdEvent::Down("etcd at http://x: refused".into()),
            EtcdEvent::Up,
            EtcdEvent::Gone(entries[0].clone()),
        ];
        for e in &events {
            print_event(&mut out, &mut picture, e, Format::Table).unwrap();
        }
        assert!(picture.is_empty());
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("appeared  FRESH  process  web\\n1  7  u  -  1.5s"), "{text}");
        assert!(lines[1].starts_with("changed FRESH->STALE  STALE  process"), "{text}");
        assert_eq!(lines[2], "down  etcd at http://x: refused");
        assert_eq!(lines[3], "up");
        assert!(lines[4].starts_with("gone  FRESH  process"), "{text}");

        let v = event_json(&events[1]);
        assert_eq!(
            (v["event"].as_str(), v["from"].as_str(), v["status"].as_str()),
            (Some("changed"), Some("fresh"), Some("stale"))
        );
        assert_eq!(v["key"], "heartbeat/hosts/web\n1/7-u");
        assert_eq!(v["last_beat"], "2023-11-14T22:13:20.000000+00:00");
        assert_eq!(v["age_sec"], 1.5);
        assert!(v["id"].is_null() && v["state"].is_null() && v["since"].is_null());
        let v = event_json(&EtcdEvent::Appeared(entries[1].clone()));
        assert_eq!(
            (v["kind"].as_str(), v["id"].as_str(), v["state"].as_str()),
            (Some("session"), Some("s1"), Some("alive"))
        );
        assert_eq!(event_json(&events[2])["event"], "down");
    }
}
