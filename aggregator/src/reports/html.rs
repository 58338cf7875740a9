//! The daily report as one self-contained HTML page: an SVG chart of the day and the report's tables, no external scripts, fonts or styles, readable when printed.

// Chart geometry is pixels, not money: floats are the right tool here.
#![allow(clippy::float_arithmetic)]

use std::fmt::Write;

use chrono::SecondsFormat;

use crate::reports::DailyReport;

/// Escapes text for HTML.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:2em;color:#222}h1{font-size:1.4em}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}
th{background:#f3f3f3}td.l,th.l{text-align:left}.prov{background:#fff3cd;padding:.5em;border:1px solid #e0c060}
.total{fill:none;stroke:#1f5fbf;stroke-width:2}.lic{stroke:#2a8a2a;stroke-width:2;stroke-dasharray:6 3}
.cap{stroke:#b03030;stroke-width:1.5;stroke-dasharray:2 3}.excess{fill:#e8a0a0;opacity:.6}.bridged{fill:#f0b000}
.axis{stroke:#888}.grid{stroke:#eee}svg text{font-size:11px;fill:#444}
@media print{body{margin:0}.prov{border:1px solid #000}}";

/// The page. Chart geometry: one column per hour, cores on the y axis.
pub fn render_html(r: &DailyReport) -> String {
    let f = &r.figures;
    let (w, h, left, bottom, top) = (960.0_f64, 320.0_f64, 60.0_f64, 40.0_f64, 20.0_f64);
    let n = r.hours.len().max(1);
    let cap_line: Vec<u64> = r
        .hours
        .iter()
        .map(|x| x.licensed_cores + u64::from(f.cap_cores))
        .collect();
    let max = r
        .hours
        .iter()
        .map(|x| x.total_cores.max(x.licensed_cores))
        .chain(cap_line.iter().copied())
        .max()
        .unwrap_or(1)
        .max(1);
    let plot_w = w - left - 20.0;
    let plot_h = h - top - bottom;
    let col = plot_w / n as f64;
    let x = |i: usize| left + col * i as f64;
    let y = |v: u64| top + plot_h - plot_h * (v as f64) / (max as f64);
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg id="chart" width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img" aria-label="cores by hour">"#
    );
    for k in 0..=4u64 {
        let v = max * k / 4;
        let _ = write!(
            svg,
            r#"<line class="grid" x1="{left}" x2="{}" y1="{y:.1}" y2="{y:.1}"/><text x="{}" y="{:.1}" text-anchor="end">{v}</text>"#,
            w - 20.0,
            left - 6.0,
            y(v) + 4.0,
            y = y(v)
        );
    }
    // The excess, shaded between the licence and the total where the total is above it.
    for (i, hour) in r.hours.iter().enumerate() {
        if hour.total_cores > hour.licensed_cores {
            let _ = write!(
                svg,
                r#"<rect class="excess" data-hour="{i}" x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}"/>"#,
                x(i),
                y(hour.total_cores),
                col,
                y(hour.licensed_cores) - y(hour.total_cores)
            );
        }
        if !hour.bridged.is_empty() {
            let _ = write!(
                svg,
                r#"<rect class="bridged" data-hour="{i}" x="{:.1}" y="{:.1}" width="{:.1}" height="6"><title>bridged: {}</title></rect>"#,
                x(i),
                h - bottom + 4.0,
                col,
                esc(&hour.bridged.join(", "))
            );
        }
    }
    let steps = |values: &dyn Fn(usize) -> u64| -> String {
        let mut p = String::new();
        for i in 0..r.hours.len() {
            let _ = write!(
                p,
                "{:.1},{:.1} {:.1},{:.1} ",
                x(i),
                y(values(i)),
                x(i + 1),
                y(values(i))
            );
        }
        p
    };
    let _ = write!(
        svg,
        r#"<polyline class="total" points="{}"/>"#,
        steps(&|i| r.hours[i].total_cores)
    );
    let _ = write!(
        svg,
        r#"<polyline class="lic" fill="none" points="{}"/>"#,
        steps(&|i| r.hours[i].licensed_cores)
    );
    let _ = write!(
        svg,
        r#"<polyline class="cap" fill="none" points="{}"/>"#,
        steps(&|i| cap_line[i])
    );
    let _ = write!(
        svg,
        r#"<line class="axis" x1="{left}" x2="{}" y1="{:.1}" y2="{:.1}"/>"#,
        w - 20.0,
        h - bottom,
        h - bottom
    );
    for (i, hour) in r.hours.iter().enumerate().step_by(3) {
        let label = hour.start.get(11..16).unwrap_or("");
        let _ = write!(
            svg,
            r#"<text x="{:.1}" y="{:.1}">{label}</text>"#,
            x(i),
            h - 8.0
        );
    }
    svg.push_str("</svg>");

    let mut page = String::new();
    let _ = write!(page, "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Daily overage {} {}</title><style>{STYLE}</style></head><body>", esc(&r.account), r.day);
    let _ = write!(
        page,
        "<h1>Daily overage: account {}, {} ({})</h1>",
        esc(&r.account),
        r.day,
        esc(&r.timezone)
    );
    if r.provisional {
        page.push_str("<p class=\"prov\" id=\"provisional\"><strong>Provisional:</strong> this day is not billed yet; the figures preview the coming 02:00 bill.</p>");
    }
    let _ = write!(page, "<table id=\"figures\"><tr><th class=l>excess core-hours</th><th>hours</th><th>average excess cores</th><th>cap</th><th>billable cores</th><th>amount</th></tr><tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td id=\"amount\">{} {}</td></tr></table>", f.excess_core_hours, f.hours, f.average_excess_cores, f.cap_cores, f.billable_cores, f.amount, esc(&f.currency));
    page.push_str("<p>Blue: total cores. Green, dashed: licensed cores. Red, dotted: licensed cores plus the cap. Shaded: excess. Yellow marks under the axis: hours with bridged nodes.</p>");
    page.push_str(&svg);
    page.push_str("<h2>Bill lines</h2><table id=\"lines\"><tr><th class=l>kind</th><th>amount</th><th class=l>issued</th><th class=l>idempotency key</th></tr>");
    for l in &r.lines {
        let _ = write!(
            page,
            "<tr><td class=l>{}</td><td>{} {}</td><td class=l>{}</td><td class=l>{}</td></tr>",
            l.kind.as_str(),
            l.amount,
            esc(&l.currency),
            l.issued_at.to_rfc3339_opts(SecondsFormat::Secs, true),
            esc(&l.idempotency_key)
        );
    }
    page.push_str("</table><h2>Hours</h2><table id=\"hours\"><tr><th class=l>hour</th><th>total</th><th>licensed</th><th>excess</th><th class=l>bridged nodes</th></tr>");
    for hour in &r.hours {
        let _ = write!(
            page,
            "<tr><td class=l>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=l>{}</td></tr>",
            esc(&hour.start),
            hour.total_cores,
            hour.licensed_cores,
            hour.excess_cores,
            esc(&hour.bridged.join(", "))
        );
    }
    page.push_str("</table><h2>Clusters</h2><table id=\"clusters\"><tr><th class=l>cluster</th><th>share of excess core-hours</th></tr>");
    for c in &r.clusters {
        let _ = write!(
            page,
            "<tr><td class=l>{}</td><td>{}</td></tr>",
            esc(&c.cluster),
            c.excess_core_hours
        );
    }
    page.push_str("</table><h2>Nodes and data completeness</h2><table id=\"nodes\"><tr><th class=l>cluster</th><th class=l>node</th><th>hours seen</th><th>bridged</th><th>gap hours</th><th>missing seqs</th><th>excess core-hours</th><th class=l>silent since</th></tr>");
    for nl in &r.nodes {
        let silent = nl
            .silent_since
            .map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true))
            .unwrap_or_default();
        let _ = write!(page, "<tr><td class=l>{}</td><td class=l>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=l>{}</td></tr>", esc(&nl.cluster), esc(&nl.node), nl.hours_observed, nl.hours_bridged, nl.gap_hours, nl.missing_seqs, nl.excess_core_hours, silent);
    }
    page.push_str("</table>");
    if !r.rejected.is_empty() {
        page.push_str("<h2>Rejected samples</h2><table id=\"rejected\"><tr><th class=l>reason</th><th>samples</th></tr>");
        for (reason, n) in &r.rejected {
            let _ = write!(
                page,
                "<tr><td class=l>{}</td><td>{n}</td></tr>",
                esc(reason)
            );
        }
        page.push_str("</table>");
    }
    let _ = write!(
        page,
        "<p id=\"short\">Licence short in {} of {} hours.</p>",
        r.licence_short_hours, f.hours
    );
    if let Some(s) = r.surplus_cores {
        let _ = write!(
            page,
            "<p id=\"refund\">Refund hint: at least {s} licensed cores stayed unused all day.</p>"
        );
    }
    let i = &r.images;
    let _ = write!(
        page,
        "<h2>Images</h2><table id=\"images\"><tr><th>seen</th><th>new</th><th>authorized</th><th>unauthorized</th><th>consumed</th><th>refused</th></tr><tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr></table>",
        i.seen, i.new, i.authorized, i.unauthorized, i.consumed, i.refused
    );
    let l = &r.log_storage;
    let _ = write!(
        page,
        "<h2>Log storage</h2><table id=\"log-storage\"><tr><th>state</th><th>quota (bytes)</th><th>used (bytes)</th><th>purges</th><th>purged (bytes)</th></tr><tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr></table>",
        l.state.map_or("never ordered", |s| s.as_str()),
        l.quota_bytes,
        l.used_bytes.map_or_else(|| "no report".to_string(), |u| u.to_string()),
        l.purges,
        l.purged_bytes
    );
    let _ = write!(
        page,
        "<p>Generated {}.</p></body></html>",
        r.generated_at.to_rfc3339_opts(SecondsFormat::Secs, true)
    );
    page
}
