//! `logs`: reads the CRI log file the runtime writes (there is no CRI call
//! for logs): lines of `<RFC3339Nano> <stream> <P|F> <text>`.

use super::container_id;
use crate::client::Cri;
use anyhow::{Context, Result};
use berth_cri_api::v1 as cri;
use std::io::{Read, Seek, SeekFrom, Write};
use std::time::Duration;

#[derive(clap::Args)]
pub struct LogsArgs {
    /// Container id (unique prefix) or name
    pub id: String,
    /// Keep printing new lines until the container exits
    #[arg(short, long)]
    pub follow: bool,
    /// Only the last N lines
    #[arg(long)]
    pub tail: Option<usize>,
    /// Only lines newer than a duration (10s, 5m, 2h) or an RFC 3339 time
    #[arg(long)]
    pub since: Option<String>,
    /// Prefix each line with its timestamp
    #[arg(long)]
    pub timestamps: bool,
}

/// One parsed log line.
pub struct Line<'a> {
    pub ts: &'a str,
    pub nanos: i64,
    pub stream: &'a str,
    pub partial: bool,
    pub text: &'a str,
}

pub fn parse_line(l: &str) -> Option<Line<'_>> {
    let mut it = l.splitn(4, ' ');
    let ts = it.next()?;
    let stream = it.next()?;
    let tag = it.next()?;
    let text = it.next().unwrap_or("");
    Some(Line {
        ts,
        nanos: parse_rfc3339(ts)?,
        stream,
        partial: tag.starts_with('P'),
        text,
    })
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719468;
    let era = if z >= 0 { z } else { z - 146096 } / 146097;
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Unix nanoseconds of `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)`.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, se) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let mut i = 19;
    let mut frac = 0i64;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        let digits = &s[start..i];
        let mut padded = digits.chars().take(9).collect::<String>();
        while padded.len() < 9 {
            padded.push('0');
        }
        frac = padded.parse().ok()?;
    }
    let off = match b.get(i)? {
        b'Z' | b'z' => 0,
        b'+' | b'-' => {
            let sign = if b[i] == b'-' { -1 } else { 1 };
            sign * (num(i + 1..i + 3)? * 3600 + num(i + 4..i + 6)? * 60)
        }
        _ => return None,
    };
    let secs = days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + se - off;
    Some(secs * 1_000_000_000 + frac)
}

/// RFC 3339 with nanoseconds, UTC.
pub fn format_ts(nanos: i64) -> String {
    let secs = nanos.div_euclid(1_000_000_000);
    let frac = nanos.rem_euclid(1_000_000_000);
    let (y, m, d) = civil_from_days(secs.div_euclid(86400));
    let r = secs.rem_euclid(86400);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{frac:09}Z",
        r / 3600,
        r / 60 % 60,
        r % 60
    )
}

fn now_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// `--since`: a duration back from now, or an absolute time.
pub fn parse_since(s: &str) -> Result<i64> {
    if let Some(t) = parse_rfc3339(s) {
        return Ok(t);
    }
    let d = parse_duration(s).ok_or_else(|| {
        crate::coded(
            crate::EXIT_USAGE,
            format!("--since {s:?}: use a duration like 30s, 5m, 2h or an RFC 3339 time"),
        )
    })?;
    Ok(now_nanos() - d.as_nanos() as i64)
}

pub fn parse_duration(s: &str) -> Option<Duration> {
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit() && c != '.')?);
    let n: f64 = n.parse().ok()?;
    let mult = match unit {
        "ms" => 0.001,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return None,
    };
    Some(Duration::from_secs_f64(n * mult))
}

/// Writes complete log lines from `buf` per the options; returns how many
/// bytes were consumed (a trailing partial line is left for later).
struct Printer {
    since: Option<i64>,
    timestamps: bool,
}

impl Printer {
    fn print(&self, lines: &[&str]) -> Result<()> {
        let mut out = std::io::stdout().lock();
        let mut err = std::io::stderr().lock();
        for l in lines {
            let Some(p) = parse_line(l) else { continue };
            if self.since.is_some_and(|s| p.nanos < s) {
                continue;
            }
            let w: &mut dyn Write = if p.stream == "stderr" {
                &mut err
            } else {
                &mut out
            };
            if self.timestamps {
                write!(w, "{} ", p.ts)?;
            }
            w.write_all(p.text.as_bytes())?;
            if !p.partial {
                w.write_all(b"\n")?;
            }
        }
        out.flush()?;
        Ok(())
    }
}

pub async fn logs(c: &mut Cri, a: LogsArgs) -> Result<()> {
    let id = container_id(c, &a.id).await?;
    let st = super::containers::status(c, &id).await?;
    let path = st
        .status
        .as_ref()
        .map(|s| s.log_path.clone())
        .unwrap_or_default();
    if path.is_empty() {
        return Err(crate::coded(
            crate::EXIT_ERROR,
            format!("container {id} has no log file (its pod config needs log_directory and the container a log_path)"),
        ));
    }
    let printer = Printer {
        since: a.since.as_deref().map(parse_since).transpose()?,
        timestamps: a.timestamps,
    };
    follow_file(c, &id, &path, a.tail, a.follow, &printer).await
}

async fn follow_file(
    c: &mut Cri,
    id: &str,
    path: &str,
    tail: Option<usize>,
    follow: bool,
    printer: &Printer,
) -> Result<()> {
    let mut f = std::fs::File::open(path).with_context(|| format!("opening log file {path}"))?;
    let mut buf = String::new();
    f.read_to_string(&mut buf)?;
    let mut pos = buf.len() as u64;
    let complete = buf.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let lines: Vec<&str> = buf[..complete].lines().collect();
    let skip = tail.map(|n| lines.len().saturating_sub(n)).unwrap_or(0);
    printer.print(&lines[skip..])?;
    let mut rest = buf[complete..].to_string();
    if !follow {
        return Ok(());
    }
    loop {
        let running = super::containers::status(c, id)
            .await
            .ok()
            .and_then(|s| s.status)
            .is_some_and(|s| s.state != cri::ContainerState::ContainerExited as i32);
        let len = std::fs::metadata(path).map(|m| m.len()).unwrap_or(pos);
        if len < pos {
            // Rotated or truncated: start over.
            f = std::fs::File::open(path)?;
            pos = 0;
        }
        f.seek(SeekFrom::Start(pos))?;
        let mut more = String::new();
        f.read_to_string(&mut more)?;
        pos += more.len() as u64;
        rest.push_str(&more);
        if let Some(i) = rest.rfind('\n') {
            let done: String = rest.drain(..=i).collect();
            printer.print(&done.lines().collect::<Vec<_>>())?;
        }
        if !running {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trip() {
        let t = parse_rfc3339("2016-10-06T00:17:09.669794202Z").unwrap();
        assert_eq!(t, 1_475_713_029_669_794_202);
        assert_eq!(format_ts(t), "2016-10-06T00:17:09.669794202Z");
        assert_eq!(
            parse_rfc3339("2016-10-06T02:17:09+02:00").unwrap(),
            1_475_713_029_000_000_000
        );
        assert!(parse_rfc3339("yesterday").is_none());
    }

    #[test]
    fn lines_and_durations() {
        let l = parse_line("2016-10-06T00:17:09.669794202Z stderr P part").unwrap();
        assert!(l.partial);
        assert_eq!((l.stream, l.text), ("stderr", "part"));
        assert_eq!(parse_duration("5m"), Some(Duration::from_secs(300)));
        assert_eq!(parse_duration("5x"), None);
    }
}
