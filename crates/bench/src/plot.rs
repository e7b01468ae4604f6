//! The self-contained HTML report: the summary table, per user count a p95-latency and
//! a failure-rate chart comparing targets path by path, and per run a timeline of
//! every page (latency over time, failures marked) above what the database's
//! connections and the machine's CPU were doing. Plots are inline SVG (plotters), so
//! the file opens anywhere without network access.

use std::fmt::Write as _;

use anyhow::{anyhow, Result};
use plotters::coord::ranged1d::{AsRangedCoord, Ranged, ValueFormatter};
use plotters::prelude::*;

use crate::outcome::Outcome;
use crate::report::{Report, Row};
use crate::runner::RunResult;

const WIDTH: u32 = 960;

/// Colours for targets (bars) and paths (timeline points).
fn colour(i: usize) -> RGBColor {
    const C: [RGBColor; 10] = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
        RGBColor(127, 127, 127),
        RGBColor(188, 189, 34),
        RGBColor(23, 190, 207),
        RGBColor(214, 39, 40),
    ];
    C[i % C.len()]
}

fn err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("plot: {e}")
}

/// The series legend, boxed, where it hides the least.
fn legend<'a, X: Ranged, Y: Ranged>(
    chart: &mut ChartContext<'a, SVGBackend<'a>, Cartesian2d<X, Y>>,
    at: SeriesLabelPosition,
) -> Result<()> {
    chart
        .configure_series_labels()
        .position(at)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(err)
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A chart as its own SVG file, for documents that link plots.
pub struct Chart {
    /// File name: `p95-100-users.svg`, `timeline-sluice-100-users.svg`, ...
    pub file: String,
    pub svg: String,
}

/// The report as one HTML page, and each of its charts as a file.
pub fn html(report: &Report) -> Result<(String, Vec<Chart>)> {
    let mut charts = Vec::new();
    let mut chart = |h: &mut String, file: String, svg: String| {
        h.push_str(&svg);
        charts.push(Chart { file, svg });
    };
    let mut h = String::new();
    let title = format!("sluice-bench: {}", report.scenario);
    let _ = write!(
        h,
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{}</title><style>\
         body{{font-family:sans-serif;margin:2em;max-width:1000px}}\
         table{{border-collapse:collapse;font-size:13px}}td,th{{border:1px solid #ccc;padding:3px 6px;text-align:right}}\
         td:nth-child(-n+3),th{{text-align:left}}.bad{{background:#fdd}}pre{{background:#f6f6f6;padding:8px;overflow:auto}}\
         </style></head><body><h1>{}</h1>",
        esc(&title),
        esc(&title)
    );
    if let Some(d) = &report.description {
        let _ = write!(h, "<p>{}</p>", esc(d));
    }
    let m = &report.machine;
    let _ = write!(
        h,
        "<p>{} · {} cores, {} GiB, {} · {} protocol · {} s per run · request timeout {} s</p>\
         <p><b>Command:</b> <code>{}</code></p><p><b>Latency:</b> {}</p>",
        esc(&report.started_at),
        m.cores,
        m.memory_gib,
        esc(&format!("{} {}", m.os, m.cpu_model)),
        esc(&format!("{:?}", report.protocol).to_lowercase()),
        report.duration_s,
        report.request_timeout_s,
        esc(&report.command),
        esc(report.latency_measured)
    );
    if let Some(s) = &report.pooler_settings {
        let _ = write!(
            h,
            "<details><summary>Pooler settings (both poolers)</summary><pre>{}</pre></details>",
            esc(s)
        );
    }
    h.push_str("<h2>Summary</h2>");
    h.push_str(&summary_table(&report.rows()));
    let mut users: Vec<usize> = report.runs.iter().map(|r| r.users).collect();
    users.dedup();
    for u in users {
        let runs: Vec<&RunResult> = report.runs.iter().filter(|r| r.users == u).collect();
        let _ = write!(h, "<h2>{u} users</h2>");
        chart(
            &mut h,
            format!("p95-{u}-users.svg"),
            p95_chart(&report.paths, &runs, u)?,
        );
        chart(
            &mut h,
            format!("failures-{u}-users.svg"),
            failure_chart(&report.paths, &runs, u)?,
        );
        for r in runs {
            let _ = write!(
                h,
                "<h3>{} at {} users: every page over time</h3><p>CPU busy {:.0} % on average; load average {}</p>",
                esc(&r.target),
                r.users,
                r.cpu_busy_average,
                esc(&r.load_average)
            );
            let name = format!("{}-{}-users.svg", r.target, r.users);
            chart(
                &mut h,
                format!("timeline-{name}"),
                timeline(&report.paths, r, report.request_timeout_s)?,
            );
            chart(&mut h, format!("activity-{name}"), activity_chart(r)?);
        }
    }
    h.push_str("</body></html>\n");
    Ok((h, charts))
}

fn summary_table(rows: &[Row]) -> String {
    let mut t = String::from(
        "<table><tr><th>target</th><th>users</th><th>path</th><th>requests</th><th>ok</th><th>failed</th>\
         <th>failures by cause</th><th>p50 ms</th><th>p95 ms</th><th>p99 ms</th><th>max ms</th><th>req/s</th></tr>",
    );
    for r in rows {
        let mut causes: Vec<String> = r
            .failures
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(c, n)| format!("{c} {n}"))
            .collect();
        if r.unfinished > 0 {
            causes.push(format!("(unfinished at the end: {})", r.unfinished));
        }
        let _ = write!(
            t,
            "<tr{}><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td>{:.1}</td><td>{:.1}</td><td>{:.1}</td><td>{:.1}</td><td>{:.2}</td></tr>",
            if r.failed > 0 { " class=\"bad\"" } else { "" },
            esc(&r.target),
            r.users,
            esc(&r.path),
            r.requests,
            r.ok,
            r.failed,
            esc(&causes.join(", ")),
            r.p50_ms,
            r.p95_ms,
            r.p99_ms,
            r.max_ms,
            r.requests_per_s
        );
    }
    t.push_str("</table>");
    t
}

/// Per path, one bar per target.
fn p95_chart(paths: &[String], runs: &[&RunResult], users: usize) -> Result<String> {
    let values: Vec<Vec<Option<f64>>> = runs
        .iter()
        .map(|r| {
            paths
                .iter()
                .map(|p| {
                    r.rows
                        .iter()
                        .find(|row| &row.path == p && row.ok > 0)
                        .map(|row| row.p95_ms / 1000.0)
                })
                .collect()
        })
        .collect();
    let max = values.iter().flatten().flatten().fold(0.01f64, |a, b| a.max(*b));
    let y = (0.001f64..max * 8.0).log_scale();
    grouped_bars(
        &format!("p95 latency of successful pages, {users} users (log scale; no bar: nothing succeeded)"),
        "seconds",
        paths,
        runs,
        &values,
        y,
        0.001,
    )
}

fn failure_chart(paths: &[String], runs: &[&RunResult], users: usize) -> Result<String> {
    let values: Vec<Vec<Option<f64>>> = runs
        .iter()
        .map(|r| {
            paths
                .iter()
                .map(|p| {
                    r.rows
                        .iter()
                        .find(|row| &row.path == p && row.requests > 0)
                        .map(|row| row.failed as f64 * 100.0 / row.requests as f64)
                })
                .collect()
        })
        .collect();
    grouped_bars(
        &format!("failed pages, % of requests, {users} users"),
        "% failed",
        paths,
        runs,
        &values,
        0f64..100.0,
        0.0,
    )
}

fn grouped_bars<Y>(
    title: &str,
    y_desc: &str,
    paths: &[String],
    runs: &[&RunResult],
    values: &[Vec<Option<f64>>],
    y: Y,
    base: f64,
) -> Result<String>
where
    Y: AsRangedCoord<Value = f64>,
    Y::CoordDescType: ValueFormatter<f64>,
{
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, 340)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let n = paths.len().max(1);
        // Labels every half unit; the path names sit at the .5 ones, mid-group.
        let x = 0f64..n as f64;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 16))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(60)
            .build_cartesian_2d(x, y)
            .map_err(err)?;
        let label = |v: &f64| {
            if (v.fract() - 0.5).abs() < 0.01 {
                paths.get(v.floor() as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        };
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(2 * n + 1)
            .x_label_formatter(&label)
            .y_desc(y_desc)
            .draw()
            .map_err(err)?;
        let width = 0.8 / runs.len().max(1) as f64;
        for (t, (run, vals)) in runs.iter().zip(values).enumerate() {
            let c = colour(t);
            chart
                .draw_series(vals.iter().enumerate().filter_map(|(i, v)| {
                    let x0 = i as f64 + 0.1 + t as f64 * width;
                    v.map(|v| Rectangle::new([(x0, base), (x0 + width * 0.9, v.max(base))], c.filled()))
                }))
                .map_err(err)?
                .label(run.target.clone())
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], c.filled()));
        }
        legend(&mut chart, SeriesLabelPosition::UpperRight)?;
        root.present().map_err(err)?;
    }
    Ok(svg)
}

/// Every page of one run: a dot per success, a cross per failure, by path.
fn timeline(paths: &[String], run: &RunResult, request_timeout: f64) -> Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, 380)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let max = run
            .samples
            .iter()
            .map(|s| s.latency_ms / 1000.0)
            .fold(request_timeout, f64::max);
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!(
                    "{} at {} users: latency of each page by start time (● ok, × failed)",
                    run.target, run.users
                ),
                ("sans-serif", 16),
            )
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..run.seconds.max(1.0), (0.001f64..max * 1.5).log_scale())
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("seconds into the run")
            .y_desc("latency, s")
            .draw()
            .map_err(err)?;
        for (i, name) in paths.iter().enumerate() {
            let c = colour(i);
            let mine = run.samples.iter().filter(|s| s.path == i);
            chart
                .draw_series(
                    mine.clone()
                        .filter(|s| s.outcome == Outcome::Ok)
                        .map(|s| Circle::new((s.start_s, (s.latency_ms / 1000.0).max(0.001)), 2, c.filled())),
                )
                .map_err(err)?
                .label(name.clone())
                .legend(move |(x, y)| Circle::new((x + 5, y), 4, c.filled()));
            chart
                .draw_series(
                    mine.filter(|s| matches!(s.outcome, Outcome::Failed(_)))
                        .map(|s| Cross::new((s.start_s, (s.latency_ms / 1000.0).max(0.001)), 4, c.stroke_width(2))),
                )
                .map_err(err)?;
        }
        legend(&mut chart, SeriesLabelPosition::UpperLeft)?;
        root.present().map_err(err)?;
    }
    Ok(svg)
}

/// What the database's client connections were doing, and the CPU, per second.
fn activity_chart(run: &RunResult) -> Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, 260)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let top = run
            .activity
            .iter()
            .map(|a| (a.active + a.idle_in_transaction + a.idle) as f64)
            .fold(100.0, f64::max);
        let mut chart = ChartBuilder::on(&root)
            .caption(
                "database client backends by state (pg_stat_activity) and machine CPU busy %",
                ("sans-serif", 14),
            )
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..run.seconds.max(1.0), 0f64..top)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("seconds into the run")
            .y_desc("backends / CPU %")
            .draw()
            .map_err(err)?;
        type Pick = fn(&crate::system::Activity) -> u32;
        let lines: [(&str, Pick, RGBColor); 3] = [
            ("active", |a| a.active, colour(0)),
            ("idle in transaction", |a| a.idle_in_transaction, colour(9)),
            ("idle", |a| a.idle, colour(6)),
        ];
        for (name, pick, c) in lines {
            chart
                .draw_series(LineSeries::new(
                    run.activity.iter().map(|a| (a.second, pick(a) as f64)),
                    c.stroke_width(2),
                ))
                .map_err(err)?
                .label(name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 12, y)], c.stroke_width(2)));
        }
        let cpu = colour(1);
        chart
            .draw_series(LineSeries::new(
                run.cpu_busy_percent
                    .iter()
                    .enumerate()
                    .map(|(i, v)| ((i + 1) as f64, *v)),
                cpu.stroke_width(1),
            ))
            .map_err(err)?
            .label("CPU busy %")
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 12, y)], cpu.stroke_width(1)));
        legend(&mut chart, SeriesLabelPosition::UpperRight)?;
        root.present().map_err(err)?;
    }
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup() {
        assert_eq!(
            esc("<a href=\"x\">&</a>"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&lt;/a&gt;"
        );
    }
}
