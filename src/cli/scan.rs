//! `heartbeat scan`: judge a directory of per-process heartbeat files, clean
//! it up, or watch it.

use std::collections::HashMap;
use std::fmt::Display;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::Duration;

use clap::{Args, ValueEnum};
use crossbeam_channel::RecvTimeoutError;
use heartbeat::{Cleanup, IgnoredFile, Scan, ScanEntry, ScanEvent, ScanStatus, Scanner, format_timestamp};
use serde::Serialize;
use serde_json::{Map, Value, json};

mod etcd;

/// List the heartbeat files in DIR (or the presence in etcd): exit 0 if one is FRESH, 1 if none is.
///
/// Judges every heartbeat-<pid>-<uuid>.json in DIR (as `heartbeat beat --dir`
/// writes them) as FRESH, STALE, ORPHAN, REMOTE or SKEWED and prints a table
/// sorted by file name, or JSON lines. Files it cannot judge (symlinks,
/// directories, unreadable files) are reported on stderr.
///
/// With --etcd instead of DIR, judges every key publishers keep under
/// --prefix in etcd: processes (hosts/<host>/<pid>-<uuid>, FRESH within 3 of
/// their intervals or --stale-after, else STALE, or SKEWED), and the sessions
/// and peers they publish (FRESH while alive and their process is FRESH).
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  heartbeat scan /run/myapp/wrappers
  heartbeat scan /run/myapp/wrappers --format json
  heartbeat scan /run/myapp/wrappers --cleanup --dry-run
  heartbeat scan /run/myapp/wrappers --watch --interval 5
  heartbeat scan /run/myapp/wrappers >/dev/null && echo 'someone is alive'
  heartbeat scan --etcd http://10.0.0.1:2379,http://10.0.0.2:2379
  heartbeat scan --etcd http://127.0.0.1:2379 --prefix myapp/ --watch --format json

Statuses: FRESH (beat within --stale-after, its process still runs), STALE
(no beat within --stale-after), ORPHAN (recent, but its process is gone,
was replaced, or ran before the last boot), REMOTE (recent, written on
another host), SKEWED (dated in the future). --cleanup removes STALE and
ORPHAN files, and only regular files directly in DIR.

Exit codes: 0 at least one entry is FRESH, 1 none is (also for an empty or
missing DIR; a missing one is said on stderr). With --cleanup, judged by a
new scan after the cleanup; with --watch, by the last picture when SIGINT
or SIGTERM stopped it. 2 is an error, never an outcome: bad arguments, or
DIR cannot be listed (not a directory, permission denied). 3: --cleanup
could not remove some STALE or ORPHAN file (each said on stderr).
With --etcd: 0 / 1 as above over every key; 2 also when etcd cannot be
read (with --watch: at the start; later outages are printed as `down` and
retried). --cleanup does not apply to --etcd: leases remove the keys.")]
pub struct ScanArgs {
    /// The directory of heartbeat-*.json files.
    #[arg(required_unless_present = "etcd", conflicts_with = "etcd")]
    dir: Option<PathBuf>,
    /// Read presence from etcd (comma-separated endpoints, http://host:port) instead of a directory.
    #[arg(long, value_name = "URL[,URL]")]
    etcd: Option<String>,
    /// With --etcd: the key prefix the publishers write under.
    #[arg(long, value_name = "P", visible_alias = "etcd-prefix", default_value = heartbeat::etcd::DEFAULT_PREFIX, requires = "etcd")]
    prefix: String,
    /// Beats older than this are STALE, in seconds.
    #[arg(long, value_name = "S", allow_negative_numbers = true, default_value = "90", value_parser = super::parse_seconds)]
    stale_after: Duration,
    /// What to print: an aligned table, or one JSON object per line.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
    /// Keep scanning and print changes as they happen, until SIGINT or SIGTERM.
    #[arg(long, conflicts_with = "cleanup")]
    watch: bool,
    /// Seconds between scans with --watch (a directory only: --etcd follows etcd's watch stream).
    #[arg(long, value_name = "S", allow_negative_numbers = true, default_value = "30", requires = "watch", value_parser = super::parse_positive_seconds)]
    interval: Duration,
    /// Remove the STALE and ORPHAN files, printing each one removed (kept ones on stderr).
    #[arg(long)]
    cleanup: bool,
    /// With --cleanup: list what would be removed, removing nothing.
    #[arg(long, requires = "cleanup")]
    dry_run: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    Table,
    Json,
}

/// --cleanup could not remove everything it should have.
const CLEANUP_FAILED: u8 = 3;

pub fn run(args: &ScanArgs) -> ExitCode {
    let dir = match (&args.dir, &args.etcd) {
        (_, Some(endpoints)) => return etcd::run(args, endpoints),
        (Some(dir), None) => dir,
        (None, None) => return failed(&"give a DIR or --etcd URL"),
    };
    // Still an empty scan (the directory may be made later), but a typo must
    // not pass for "nobody is alive" in silence.
    if matches!(dir.try_exists(), Ok(false)) {
        say(format_args!("{} does not exist{}", path_text(dir), if args.watch { " (yet)" } else { "" }));
    }
    let scanner = match Scanner::builder(dir).stale_after(args.stale_after).interval(args.interval).build() {
        Ok(s) => s,
        Err(e) => return failed(&e),
    };
    if args.watch {
        watch(&scanner, args.format)
    } else if args.cleanup {
        cleanup(&scanner, args.format, args.dry_run)
    } else {
        list(&scanner, args.format)
    }
}

/// An error, not an outcome: reported on stderr, exit 2.
fn failed(what: &dyn Display) -> ExitCode {
    say(format_args!("{}", super::one_line(&what.to_string())));
    ExitCode::from(2)
}

/// One line on stderr, prefixed; a closed stderr is ignored rather than a panic.
fn say(what: std::fmt::Arguments<'_>) {
    let _ = writeln!(io::stderr().lock(), "heartbeat scan: {what}");
}

/// 0 when some entry is FRESH, 1 when none is.
fn outcome(any_fresh: bool) -> ExitCode {
    if any_fresh { ExitCode::SUCCESS } else { ExitCode::from(1) }
}

/// One scan, printed as a table or JSON lines.
fn list(scanner: &Scanner, format: Format) -> ExitCode {
    let mut scan = match scanner.scan() {
        Ok(scan) => scan,
        Err(e) => return failed(&e),
    };
    // Every entry is in the same directory, so the bytes of the paths order
    // them as their file names do, without comparing path components.
    scan.entries.sort_unstable_by(|a, b| {
        a.path.as_os_str().as_encoded_bytes().cmp(b.path.as_os_str().as_encoded_bytes())
    });
    let code = outcome(scan.fresh_count() > 0);
    let mut out = BufWriter::with_capacity(64 * 1024, io::stdout().lock());
    let printed = match format {
        Format::Table => print_table(&mut out, &scan.entries),
        Format::Json => scan.entries.iter().try_for_each(|e| {
            serde_json::to_writer(&mut out, &EntryJson::of(e))?;
            out.write_all(b"\n")
        }),
    };
    // A closed stdout (`scan ... | head -1`) cuts the listing short, quietly:
    // the exit code still tells what the scan found.
    let _ = printed.and_then(|()| out.flush());
    drop(out);
    report_ignored(&scan);
    code
}

/// Removes (or, dry, lists) the STALE and ORPHAN files, then scans again for the exit code.
fn cleanup(scanner: &Scanner, format: Format, dry_run: bool) -> ExitCode {
    let result = if dry_run { scanner.cleanup_plan() } else { scanner.cleanup() };
    let Cleanup { mut removed, mut kept, failed: mut not_removed, .. } = match result {
        Ok(done) => done,
        Err(e) => return failed(&e),
    };
    removed.sort_by(|a, b| a.path.cmp(&b.path));
    kept.sort_by(|a, b| a.0.path.cmp(&b.0.path));
    not_removed.sort_by(|a, b| a.0.path.cmp(&b.0.path));
    let mut out = BufWriter::new(io::stdout().lock());
    let printed = match format {
        Format::Table => print_cleanup_table(&mut out, &removed, &kept, dry_run),
        Format::Json => print_cleanup_json(&mut out, &removed, &kept, &not_removed, dry_run),
    };
    let _ = printed.and_then(|()| out.flush());
    drop(out);
    for (e, why) in &not_removed {
        say(format_args!("could not remove {}: {}", path_text(&e.path), super::one_line(why)));
    }
    if !not_removed.is_empty() {
        return ExitCode::from(CLEANUP_FAILED);
    }
    // What is left decides the exit code; its ignored files explain what
    // cleanup left alone (symlinks, directories, unreadable files).
    match scanner.scan() {
        Ok(scan) => {
            report_ignored(&scan);
            outcome(scan.fresh_count() > 0)
        }
        Err(e) => failed(&e),
    }
}

fn print_cleanup_table(
    out: &mut impl Write,
    removed: &[ScanEntry],
    kept: &[(ScanEntry, String)],
    dry_run: bool,
) -> io::Result<()> {
    let verb = if dry_run { "would remove" } else { "removed" };
    for e in removed {
        writeln!(out, "{verb} {} ({}: {})", path_text(&e.path), e.status, why_text(e))?;
    }
    for (e, why) in kept {
        say(format_args!("kept {}: {}", path_text(&e.path), super::one_line(why)));
    }
    Ok(())
}

fn print_cleanup_json(
    out: &mut impl Write,
    removed: &[ScanEntry],
    kept: &[(ScanEntry, String)],
    failed: &[(ScanEntry, String)],
    dry_run: bool,
) -> io::Result<()> {
    let action = if dry_run { "would_remove" } else { "removed" };
    for e in removed {
        let mut obj = entry_json(e);
        obj.insert("action".into(), action.into());
        writeln!(out, "{}", Value::from(obj))?;
    }
    for (e, why) in kept {
        let mut obj = entry_json(e);
        obj.insert("action".into(), "kept".into());
        obj.insert("kept_because".into(), why.as_str().into());
        writeln!(out, "{}", Value::from(obj))?;
    }
    for (e, why) in failed {
        let mut obj = entry_json(e);
        obj.insert("action".into(), "failed".into());
        obj.insert("error".into(), why.as_str().into());
        writeln!(out, "{}", Value::from(obj))?;
    }
    Ok(())
}

fn report_ignored(scan: &Scan) {
    let mut ignored: Vec<&IgnoredFile> = scan.ignored.iter().collect();
    ignored.sort_by(|a, b| a.path.cmp(&b.path));
    for f in ignored {
        say(format_args!("ignored {}: {}", path_text(&f.path), super::one_line(&f.why)));
    }
}

/// Scans every interval and prints the changes until SIGINT or SIGTERM.
fn watch(scanner: &Scanner, format: Format) -> ExitCode {
    let stop = match super::stop_on_signals(|sig| 128 + sig) {
        Ok(stop) => stop,
        Err(e) => return failed(&format_args!("cannot handle signals: {e}")),
    };
    // A directory that cannot be listed at the start is an error, as without
    // --watch; later failures are events, and the watch goes on.
    match scanner.scan() {
        Ok(scan) => report_ignored(&scan),
        Err(e) => return failed(&e),
    }
    let mut watch = match scanner.watch() {
        Ok(w) => w,
        Err(e) => return failed(&e),
    };
    let events = watch.events().clone();
    stop.up();
    follow(
        &events,
        stop.flag(),
        || watch.stop(),
        |out, picture, event| print_event(out, picture, event, format),
        update,
        "the scanning thread",
    )
}

/// Prints each event of a watch until SIGINT or SIGTERM sets `stop` (or
/// stdout closes), then stops the watch with `halt`; the events it had
/// already sent complete the picture. Exit 0 when the picture holds a FRESH
/// entry, as `scan` (1 when none does).
pub(super) fn follow<E, K: std::hash::Hash + Eq>(
    events: &crossbeam_channel::Receiver<E>,
    stop: &std::sync::atomic::AtomicBool,
    halt: impl FnOnce(),
    mut print: impl FnMut(&mut io::Stdout, &mut HashMap<K, ScanStatus>, &E) -> io::Result<()>,
    update: impl Fn(&mut HashMap<K, ScanStatus>, &E),
    thread: &str,
) -> ExitCode {
    let mut picture = HashMap::new();
    let mut stdout = io::stdout();
    let mut open = true;
    while open && !stop.load(Ordering::Relaxed) {
        match events.recv_timeout(Duration::from_millis(200)) {
            Ok(event) => open = print(&mut stdout, &mut picture, &event).is_ok(),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                return failed(&format_args!("{thread} stopped unexpectedly"));
            }
        }
    }
    halt();
    for event in events.try_iter() {
        if open {
            open = print(&mut stdout, &mut picture, &event).is_ok();
        } else {
            update(&mut picture, &event);
        }
    }
    outcome(picture.values().any(|s| *s == ScanStatus::Fresh))
}

/// Applies an event to the path -> status picture.
fn update(picture: &mut HashMap<PathBuf, ScanStatus>, event: &ScanEvent) {
    match event {
        ScanEvent::Appeared(e) | ScanEvent::Changed { entry: e, .. } => {
            picture.insert(e.path.clone(), e.status);
        }
        ScanEvent::Disappeared(e) => {
            picture.remove(&e.path);
        }
        ScanEvent::Failed(_) => {}
    }
}

/// Prints one event, flushed; an error means stdout is closed.
fn print_event(
    out: &mut impl Write,
    picture: &mut HashMap<PathBuf, ScanStatus>,
    event: &ScanEvent,
    format: Format,
) -> io::Result<()> {
    update(picture, event);
    let line = match format {
        Format::Table => event_line(event),
        Format::Json => event_json(event).to_string(),
    };
    writeln!(out, "{line}")?;
    out.flush()
}

fn event_line(event: &ScanEvent) -> String {
    let (label, entry) = match event {
        ScanEvent::Appeared(e) => ("appeared".to_owned(), e),
        ScanEvent::Changed { from, entry } => (format!("changed {from}->{}", entry.status), entry),
        ScanEvent::Disappeared(e) => ("gone".to_owned(), e),
        ScanEvent::Failed(why) => return format!("failed  {}", super::one_line(why)),
    };
    format!("{label}  {}", cells(entry).join("  "))
}

fn event_json(event: &ScanEvent) -> Value {
    let (name, mut obj) = match event {
        ScanEvent::Appeared(e) => ("appeared", entry_json(e)),
        ScanEvent::Changed { from, entry } => {
            let mut obj = entry_json(entry);
            obj.insert("from".into(), lower(*from).into());
            ("changed", obj)
        }
        ScanEvent::Disappeared(e) => ("gone", entry_json(e)),
        ScanEvent::Failed(why) => return json!({ "event": "failed", "error": why }),
    };
    obj.insert("event".into(), name.into());
    Value::from(obj)
}

const COLUMNS: usize = 6;
const HEADER: [&str; COLUMNS] = ["STATUS", "PID", "UUID", "HOST", "AGE", "WHY"];

/// The table: a header, then one row per entry, columns aligned.
fn print_table(out: &mut impl Write, entries: &[ScanEntry]) -> io::Result<()> {
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

/// One line: cells separated by two spaces, each padded to its width but the last.
fn write_row(out: &mut impl Write, cells: &[String], widths: &[usize]) -> io::Result<()> {
    const SPACES: [u8; 64] = [b' '; 64];
    for (i, (cell, width)) in cells.iter().zip(widths).enumerate() {
        out.write_all(cell.as_bytes())?;
        if i + 1 < cells.len() {
            let mut pad = width.saturating_sub(cell.chars().count()) + 2;
            while pad > 0 {
                let n = pad.min(SPACES.len());
                out.write_all(&SPACES[..n])?;
                pad -= n;
            }
        }
    }
    out.write_all(b"\n")
}

/// An entry's table cells, with anything taken from the file escaped.
fn cells(e: &ScanEntry) -> [String; COLUMNS] {
    [
        e.status.as_str().to_owned(),
        e.pid.to_string(),
        if e.uuid.is_empty() { "-".to_owned() } else { super::one_line(&e.uuid) },
        e.hostname.as_deref().map_or_else(|| "-".to_owned(), super::one_line),
        e.age.map_or_else(|| "future".to_owned(), |a| format!("{:.1}s", a.as_secs_f64())),
        why_text(e),
    ]
}

/// Why the entry has its status, and whether its contents were usable; escaped.
fn why_text(e: &ScanEntry) -> String {
    let why = match &e.fallback {
        Some(fallback) => format!("{}; contents unusable ({fallback}), used name and mtime", e.why),
        None => e.why.to_string(),
    };
    super::one_line(&why)
}

fn path_text(path: &Path) -> String {
    super::one_line(&path.display().to_string())
}

fn lower(status: ScanStatus) -> String {
    status.as_str().to_ascii_lowercase()
}

/// An entry as `scan --format json` prints it: the fields of [`entry_json`]
/// in the same (alphabetical) order, serialized straight from the entry
/// with no map built on the way.
#[derive(Serialize)]
struct EntryJson<'a> {
    age_sec: Option<f64>,
    fallback: &'a Option<String>,
    host: &'a Option<String>,
    last_beat: String,
    path: std::borrow::Cow<'a, str>,
    pid: i64,
    status: &'static str,
    uuid: &'a str,
    why: String,
}

impl<'a> EntryJson<'a> {
    fn of(e: &'a ScanEntry) -> Self {
        EntryJson {
            age_sec: e.age.map(|a| a.as_secs_f64()),
            fallback: &e.fallback,
            host: &e.hostname,
            last_beat: format_timestamp(e.last_beat),
            path: e.path.to_string_lossy(),
            pid: e.pid,
            status: match e.status {
                ScanStatus::Fresh => "fresh",
                ScanStatus::Stale => "stale",
                ScanStatus::Orphan => "orphan",
                ScanStatus::Remote => "remote",
                ScanStatus::Skewed => "skewed",
            },
            uuid: &e.uuid,
            why: e.why.to_string(),
        }
    }
}

/// An entry as a JSON object; serde_json escapes what the file said.
fn entry_json(e: &ScanEntry) -> Map<String, Value> {
    let v = json!({
        "status": lower(e.status),
        "pid": e.pid,
        "uuid": e.uuid,
        "host": e.hostname,
        "age_sec": e.age.map(|a| a.as_secs_f64()),
        "last_beat": format_timestamp(e.last_beat),
        "why": e.why.to_string(),
        "path": e.path.to_string_lossy(),
        "fallback": e.fallback,
    });
    match v {
        Value::Object(obj) => obj,
        _ => unreachable!("json!({{...}}) is an object"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    use heartbeat::ScanReason;

    fn entry(status: ScanStatus, uuid: &str, host: Option<&str>, age: Option<f64>) -> ScanEntry {
        ScanEntry {
            path: PathBuf::from(format!("/d/heartbeat-7-{uuid}.json")),
            pid: 7,
            uuid: uuid.to_owned(),
            hostname: host.map(str::to_owned),
            last_beat: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            age: age.map(Duration::from_secs_f64),
            status,
            why: ScanReason::NotRunning,
            fallback: None,
        }
    }

    #[test]
    fn defaults_match_the_library() {
        use clap::Parser;
        #[derive(Parser)]
        struct Wrap {
            #[command(flatten)]
            scan: ScanArgs,
        }
        let args = Wrap::parse_from(["x", "/d"]).scan;
        assert_eq!(args.stale_after, heartbeat::DEFAULT_STALE_AFTER);
        assert_eq!(args.interval, heartbeat::DEFAULT_SCAN_INTERVAL);
        assert_eq!(args.format, Format::Table);
    }

    #[test]
    fn table_aligns_columns_and_escapes_what_files_say() {
        let mut a = entry(ScanStatus::Orphan, "a\nFRESH 1 x", Some("h\tost"), Some(12.34));
        a.fallback = Some("not a heartbeat object: expected `:`\n".into());
        let b = entry(ScanStatus::Skewed, "", None, None);
        let mut out = Vec::new();
        print_table(&mut out, &[a, b]).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].starts_with("STATUS  PID  UUID"), "{text}");
        assert!(lines[1].starts_with("ORPHAN  7    a\\nFRESH 1 x  h\\tost  12.3s   pid not running; contents unusable (not a heartbeat object: expected `:`\\n), used name and mtime"), "{text}");
        assert!(lines[2].starts_with("SKEWED  7    -"), "{text}");
        assert!(lines[2].ends_with("  -       future  pid not running"), "{text}");
        let why_at = lines[0].find("WHY").unwrap();
        assert_eq!(lines[1].find("pid not"), Some(why_at), "{text}");
    }

    /// `scan --format json` prints each entry straight from the entry; the
    /// bytes are the ones the map-building printer wrote, for every status,
    /// a fallback, no age, and text that needs escaping.
    #[test]
    fn the_direct_json_is_byte_for_byte_the_map_json() {
        let mut fallback = entry(ScanStatus::Orphan, "a\"b\\c\u{1}é", Some("h\tost"), Some(12.345_678_9));
        fallback.fallback = Some("not a heartbeat object: expected `:`\n".into());
        fallback.why = ScanReason::PidReused { recorded: 5, found: 6 };
        let mut entries = vec![fallback, entry(ScanStatus::Skewed, "", None, None)];
        for status in [ScanStatus::Fresh, ScanStatus::Stale, ScanStatus::Orphan, ScanStatus::Remote] {
            entries.push(entry(status, "0123-abcd", Some("web-1"), Some(0.1 + 0.2)));
        }
        entries.push(entry(ScanStatus::Fresh, "u", None, Some(1e-7)));
        entries[2].path = PathBuf::from("/d/heartbeat-\u{fffd}7-x.json");
        for e in &entries {
            let direct = serde_json::to_string(&EntryJson::of(e)).unwrap();
            assert_eq!(direct, Value::from(entry_json(e)).to_string());
        }
    }

    /// The table written cell by cell is byte for byte the table the
    /// line-building printer wrote (`format!` padding by characters).
    #[test]
    fn the_table_is_byte_for_byte_the_line_built_table() {
        let mut odd = entry(ScanStatus::Orphan, "é\u{202e}x\n", Some("h\tost"), Some(12.345));
        odd.fallback = Some("torn".into());
        let mut entries = vec![odd, entry(ScanStatus::Skewed, "", None, None)];
        for status in [ScanStatus::Fresh, ScanStatus::Stale, ScanStatus::Orphan, ScanStatus::Remote] {
            entries.push(entry(status, &"u".repeat(70), Some("web-1"), Some(1234.5)));
        }
        let rows: Vec<[String; COLUMNS]> =
            std::iter::once(HEADER.map(str::to_owned)).chain(entries.iter().map(cells)).collect();
        let mut widths = [0; COLUMNS];
        for row in &rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut expected = String::new();
        for row in &rows {
            for (i, (cell, width)) in row.iter().zip(&widths).enumerate() {
                if i + 1 == COLUMNS {
                    expected.push_str(cell);
                } else {
                    expected.push_str(&format!("{cell:<width$}  "));
                }
            }
            expected.push('\n');
        }
        let mut out = Vec::new();
        print_table(&mut out, &entries).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), expected);
    }

    #[test]
    fn json_has_the_documented_fields() {
        let v = Value::from(entry_json(&entry(ScanStatus::Fresh, "u", None, Some(1.5))));
        assert_eq!(v["status"], "fresh");
        assert_eq!(v["pid"], 7);
        assert_eq!(v["uuid"], "u");
        assert!(v["host"].is_null() && v["fallback"].is_null());
        assert_eq!(v["age_sec"], 1.5);
        assert_eq!(v["last_beat"], "2023-11-14T22:13:20.000000+00:00");
        assert_eq!(v["why"], "pid not running");
        assert_eq!(v["path"], "/d/heartbeat-7-u.json");
        assert!(Value::from(entry_json(&entry(ScanStatus::Skewed, "u", None, None)))["age_sec"].is_null());
    }

    #[test]
    fn events_print_as_prefixed_lines_or_objects_and_keep_the_picture() {
        let mut picture = HashMap::new();
        let fresh = entry(ScanStatus::Fresh, "u", Some("h"), Some(1.0));
        let stale = entry(ScanStatus::Stale, "u", Some("h"), Some(100.0));
        let events = [
            ScanEvent::Appeared(fresh.clone()),
            ScanEvent::Changed { from: ScanStatus::Fresh, entry: stale.clone() },
            ScanEvent::Failed("cannot read heartbeat directory /d\nx: denied".into()),
            ScanEvent::Disappeared(stale),
        ];
        let mut out = Vec::new();
        let mut fresh_after = Vec::new();
        for event in &events {
            print_event(&mut out, &mut picture, event, Format::Table).unwrap();
            fresh_after.push(picture.values().any(|s| *s == ScanStatus::Fresh));
        }
        assert_eq!(fresh_after, [true, false, false, false]);
        assert!(picture.is_empty());
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert!(lines[0].starts_with("appeared  FRESH  7  u  h  1.0s  "), "{text}");
        assert!(lines[1].starts_with("changed FRESH->STALE  STALE  7"), "{text}");
        assert_eq!(lines[2], "failed  cannot read heartbeat directory /d\\nx: denied");
        assert!(lines[3].starts_with("gone  STALE  7"), "{text}");

        let v = event_json(&events[1]);
        assert_eq!(
            (v["event"].as_str(), v["from"].as_str(), v["status"].as_str()),
            (Some("changed"), Some("fresh"), Some("stale"))
        );
        assert_eq!(event_json(&events[2])["event"], "failed");
        assert_eq!(event_json(&events[3])["event"], "gone");
    }

    #[test]
    fn a_closed_stdout_is_an_error_not_a_panic() {
        struct Closed;
        impl Write for Closed {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let e = entry(ScanStatus::Fresh, "u", None, Some(1.0));
        assert!(print_table(&mut Closed, std::slice::from_ref(&e)).is_err());
        let mut picture = HashMap::new();
        assert!(print_event(&mut Closed, &mut picture, &ScanEvent::Appeared(e), Format::Json).is_err());
        assert_eq!(picture.len(), 1, "the picture is kept even when printing fails");
    }
}
