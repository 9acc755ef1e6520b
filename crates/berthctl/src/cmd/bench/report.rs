//! A bench's results: the terminal table, report.json and report.html
//! (inline SVG plots of each operation's latency distribution per target).

use super::stats::Series;
use anyhow::{Context, Result};
use serde_json::{json, Value};
use std::fmt::Write as _;
use std::path::PathBuf;

pub struct Target {
    pub name: String,
    /// Binary path or endpoint.
    pub what: String,
    pub version: String,
    pub skipped: Option<String>,
}

pub struct Op {
    pub name: String,
    pub unit: &'static str,
    /// (target name, samples) in target order.
    pub series: Vec<(String, Series)>,
}

pub struct Report {
    pub kind: &'static str,
    pub title: String,
    pub params: Value,
    pub baseline: Option<String>,
    pub targets: Vec<Target>,
    pub ops: Vec<Op>,
    /// Measurements that are not distributions (density, memory).
    pub extra: Value,
    pub out: PathBuf,
}

fn f(v: Option<f64>) -> String {
    v.map(|x| format!("{x:.2}")).unwrap_or_else(|| "-".into())
}

impl Report {
    /// The baseline's name: `--baseline`, else the first target that ran.
    pub fn baseline_name(&self) -> Option<String> {
        self.baseline.clone().or_else(|| {
            self.targets
                .iter()
                .find(|t| t.skipped.is_none())
                .map(|t| t.name.clone())
        })
    }

    fn ratio(&self, op: &Op, s: &Series) -> Option<f64> {
        let b = self.baseline_name()?;
        let base = op.series.iter().find(|(n, _)| *n == b)?.1.pct(50.0)?;
        Some(s.pct(50.0)? / base)
    }

    pub fn to_json(&self) -> Value {
        let ops: Vec<Value> = self
            .ops
            .iter()
            .map(|op| {
                let mut results = serde_json::Map::new();
                for (name, s) in &op.series {
                    let mut v = s.summary();
                    v["ratio_p50_to_baseline"] = json!(self.ratio(op, s));
                    results.insert(name.clone(), v);
                }
                json!({"name": op.name, "unit": op.unit, "results": results})
            })
            .collect();
        json!({
            "kind": self.kind,
            "title": self.title,
            "host": host_info(),
            "params": self.params,
            "baseline": self.baseline_name(),
            "targets": self.targets.iter().map(|t| json!({
                "name": t.name, "what": t.what, "version": t.version, "skipped": t.skipped,
            })).collect::<Vec<_>>(),
            "operations": ops,
            "extra": self.extra,
        })
    }

    pub fn print_table(&self) {
        println!("\n{}", self.title);
        for t in &self.targets {
            match &t.skipped {
                Some(why) => println!("  {:<12} skipped: {why}", t.name),
                None => println!("  {:<12} {} ({})", t.name, t.what, t.version),
            }
        }
        let base = self.baseline_name().unwrap_or_default();
        println!(
            "\n{:<30} {:<12} {:>5} {:>9} {:>9} {:>9} {:>9} {:>9} {:>5} {:>9}",
            "operation",
            "target",
            "n",
            "min",
            "p50",
            "p90",
            "p99",
            "max",
            "fail",
            format!("/{base}")
        );
        for op in &self.ops {
            for (name, s) in &op.series {
                println!(
                    "{:<30} {:<12} {:>5} {:>9} {:>9} {:>9} {:>9} {:>9} {:>5} {:>9}",
                    format!("{} ({})", op.name, op.unit),
                    name,
                    s.ms.len(),
                    f(s.pct(0.0)),
                    f(s.pct(50.0)),
                    f(s.pct(90.0)),
                    f(s.pct(99.0)),
                    f(s.pct(100.0)),
                    s.failures,
                    self.ratio(op, s)
                        .map(|r| format!("{r:.2}"))
                        .unwrap_or_else(|| "-".into())
                );
            }
        }
        if !self.extra.is_null() && self.extra != json!({}) {
            println!(
                "\n{}",
                serde_json::to_string_pretty(&self.extra).unwrap_or_default()
            );
        }
    }

    /// Writes DIR/report.json and DIR/report.html.
    pub fn write(&self) -> Result<(PathBuf, PathBuf)> {
        std::fs::create_dir_all(&self.out)
            .with_context(|| format!("creating {}", self.out.display()))?;
        let j = self.out.join("report.json");
        std::fs::write(&j, serde_json::to_vec_pretty(&self.to_json())?)
            .with_context(|| format!("writing {}", j.display()))?;
        let h = self.out.join("report.html");
        std::fs::write(&h, self.html()).with_context(|| format!("writing {}", h.display()))?;
        Ok((j, h))
    }

    pub fn html(&self) -> String {
        let mut s = String::new();
        let _ = write!(
            s,
            "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{t}</title>\n<style>\
             body{{font-family:sans-serif;margin:2em;color:#222}}table{{border-collapse:collapse;margin:1em 0}}\
             td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}th{{background:#eee}}\
             td:first-child,th:first-child{{text-align:left}}pre{{background:#f6f6f6;padding:1em}}</style>\
             </head><body>\n<h1>{t}</h1>\n",
            t = esc(&self.title)
        );
        let _ = write!(s, "<h2>Targets</h2><table><tr><th>name</th><th>what</th><th>version</th><th>status</th></tr>");
        for t in &self.targets {
            let _ = write!(
                s,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&t.name),
                esc(&t.what),
                esc(&t.version),
                esc(t.skipped.as_deref().unwrap_or("ran"))
            );
        }
        let _ = writeln!(
            s,
            "</table><p>Parameters: <code>{}</code>; host: <code>{}</code>; baseline: {}</p>",
            esc(&self.params.to_string()),
            esc(&host_info().to_string()),
            esc(&self.baseline_name().unwrap_or_default())
        );
        for op in &self.ops {
            let _ = writeln!(s, "<h2>{} ({})</h2>", esc(&op.name), op.unit);
            s.push_str(&svg_plot(op));
            s.push_str("<table><tr><th>target</th><th>n</th><th>min</th><th>p50</th><th>p90</th><th>p99</th><th>max</th><th>failures</th><th>p50 / baseline</th></tr>");
            for (name, ser) in &op.series {
                let _ = write!(
                    s,
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    esc(name),
                    ser.ms.len(),
                    f(ser.pct(0.0)),
                    f(ser.pct(50.0)),
                    f(ser.pct(90.0)),
                    f(ser.pct(99.0)),
                    f(ser.pct(100.0)),
                    ser.failures,
                    self.ratio(op, ser).map(|r| format!("{r:.2}")).unwrap_or_else(|| "-".into())
                );
            }
            s.push_str("</table>\n");
        }
        if !self.extra.is_null() {
            let _ = writeln!(
                s,
                "<h2>Other measurements</h2><pre>{}</pre>",
                esc(&serde_json::to_string_pretty(&self.extra).unwrap_or_default())
            );
        }
        s.push_str("</body></html>\n");
        s
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

const COLORS: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
];

/// One row per target: every sample as a dot, a box from p25 to p75, a
/// tick at p50, whiskers to p1 and p99; a linear axis from 0.
fn svg_plot(op: &Op) -> String {
    let (w, left, right, row) = (760.0, 110.0, 20.0, 34.0);
    let max = op
        .series
        .iter()
        .filter_map(|(_, s)| s.pct(100.0))
        .fold(0.0f64, f64::max);
    let max = if max > 0.0 { nice(max) } else { 1.0 };
    let h = 30.0 + row * op.series.len() as f64 + 30.0;
    let x = |v: f64| left + (w - left - right) * v / max;
    let mut s = String::new();
    let _ = write!(
        s,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-size=\"12\">"
    );
    for (i, (name, ser)) in op.series.iter().enumerate() {
        let y = 30.0 + row * i as f64 + row / 2.0;
        let c = COLORS[i % COLORS.len()];
        let _ = write!(
            s,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>",
            left - 8.0,
            y + 4.0,
            esc(name)
        );
        for (k, v) in ser.ms.iter().enumerate() {
            // Deterministic jitter so overlapping samples stay visible.
            let jy = ((k * 7919) % 13) as f64 - 6.0;
            let _ = write!(
                s,
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"2\" fill=\"{c}\" fill-opacity=\"0.35\"/>",
                x(*v),
                y + jy
            );
        }
        if let (Some(p1), Some(p25), Some(p50), Some(p75), Some(p99)) = (
            ser.pct(1.0),
            ser.pct(25.0),
            ser.pct(50.0),
            ser.pct(75.0),
            ser.pct(99.0),
        ) {
            let _ = write!(
                s,
                "<line x1=\"{:.1}\" x2=\"{:.1}\" y1=\"{y}\" y2=\"{y}\" stroke=\"{c}\"/>\
                 <rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"16\" fill=\"none\" stroke=\"{c}\" stroke-width=\"1.5\"/>\
                 <line x1=\"{:.1}\" x2=\"{:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"{c}\" stroke-width=\"3\"/>",
                x(p1),
                x(p99),
                x(p25),
                y - 8.0,
                (x(p75) - x(p25)).max(1.0),
                x(p50),
                x(p50),
                y - 10.0,
                y + 10.0
            );
        }
    }
    let axis_y = h - 25.0;
    let _ = write!(
        s,
        "<line x1=\"{left}\" x2=\"{}\" y1=\"{axis_y}\" y2=\"{axis_y}\" stroke=\"#444\"/>",
        w - right
    );
    for t in 0..=5 {
        let v = max * t as f64 / 5.0;
        let _ = write!(
            s,
            "<line x1=\"{0:.1}\" x2=\"{0:.1}\" y1=\"{axis_y}\" y2=\"{1}\" stroke=\"#444\"/>\
             <text x=\"{0:.1}\" y=\"{2}\" text-anchor=\"middle\">{3}</text>",
            x(v),
            axis_y + 5.0,
            axis_y + 18.0,
            trim_num(v)
        );
    }
    let _ = writeln!(
        s,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text></svg>",
        w - right,
        15.0,
        op.unit
    );
    s
}

/// A round axis maximum at or above `v` (1, 2, 2.5 or 5 times a power of 10).
fn nice(v: f64) -> f64 {
    let p = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if m * p >= v {
            return m * p;
        }
    }
    10.0 * p
}

fn trim_num(v: f64) -> String {
    if v == v.trunc() {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

pub fn host_info() -> Value {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let cgroup = if std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        "v2"
    } else {
        "v1"
    };
    json!({"kernel": kernel.trim(), "cpus": cpus, "cgroup": cgroup})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_axis() {
        assert_eq!(nice(7.3), 10.0);
        assert_eq!(nice(23.0), 25.0);
        assert_eq!(nice(0.4), 0.5);
    }

    #[test]
    fn html_and_json_are_well_formed() {
        let mut a = Series::default();
        let mut b = Series::default();
        for i in 1..=10 {
            a.ms.push(i as f64);
            b.ms.push(2.0 * i as f64);
        }
        let r = Report {
            kind: "oci",
            title: "t <x>".into(),
            params: json!({"n": 10}),
            baseline: Some("b".into()),
            targets: vec![],
            ops: vec![Op {
                name: "create".into(),
                unit: "ms",
                series: vec![("a".into(), a), ("b".into(), b)],
            }],
            extra: Value::Null,
            out: PathBuf::new(),
        };
        let j = r.to_json();
        assert_eq!(
            j["operations"][0]["results"]["a"]["ratio_p50_to_baseline"],
            json!(0.5)
        );
        let h = r.html();
        assert!(h.contains("t &lt;x&gt;") && h.contains("<svg") && h.ends_with("</html>\n"));
        assert_eq!(h.matches("<svg").count(), h.matches("</svg>").count());
    }
}
