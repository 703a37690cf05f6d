//! The day as an SVG line chart, written by hand (a few polylines need no plotting crate).
//!
//! Two y axes share one scale: games on the left, VMs on the right at X games per VM, so the
//! active-games line is also the lower bound in VMs (before rounding up) and the gap between it
//! and the VM lines is the cost of the warm buffer.

use std::fmt::Write as _;

use super::engine::Sample;

/// A vertical marker (a burst), at `t_s` with a short label.
pub struct Marker {
    pub t_s: f64,
    pub label: String,
    pub announced: bool,
}

const W: f64 = 1000.0;
const H: f64 = 440.0;
const LEFT: f64 = 60.0;
const RIGHT: f64 = 60.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 50.0;

pub fn svg(samples: &[Sample], games_per_vm: u32, markers: &[Marker], title: &str) -> String {
    let x_per_vm = f64::from(games_per_vm.max(1));
    let end_s = samples.last().map(|s| s.t_s).unwrap_or(0.0).max(1.0);
    let top_games = samples
        .iter()
        .map(|s| f64::from(s.active_games).max(f64::from(s.billed_vms.max(s.desired)) * x_per_vm))
        .fold(1.0, f64::max);
    // A round top for the VM axis, so both axes get round ticks.
    let vm_step = nice_step(top_games / x_per_vm / 5.0);
    let top_vms = (top_games / x_per_vm / vm_step).ceil() * vm_step;
    let top_games = top_vms * x_per_vm;
    let px = |t: f64| LEFT + (W - LEFT - RIGHT) * t / end_s;
    let py = |games: f64| H - BOTTOM - (H - TOP - BOTTOM) * games / top_games;

    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(out, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(
        out,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="15">{}</text>"#,
        W / 2.0,
        escape(title)
    );

    // Grid and axes.
    let mut vms = 0.0;
    while vms <= top_vms + 1e-9 {
        let y = py(vms * x_per_vm);
        let _ = writeln!(
            out,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#e5e5e5"/>"##,
            W - RIGHT
        );
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            LEFT - 6.0,
            y + 4.0,
            vms * x_per_vm
        );
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{:.1}">{}</text>"#,
            W - RIGHT + 6.0,
            y + 4.0,
            vms
        );
        vms += vm_step;
    }
    let hours = (end_s / 3600.0).ceil() as u32;
    let every = if hours > 12 { 2 } else { 1 };
    for h in (0..=hours).step_by(every) {
        let t = f64::from(h) * 3600.0;
        if t > end_s {
            break;
        }
        let x = px(t);
        let _ = writeln!(
            out,
            r##"<line x1="{x:.1}" y1="{:.1}" x2="{x:.1}" y2="{:.1}" stroke="#999"/>"##,
            H - BOTTOM,
            H - BOTTOM + 5.0
        );
        let _ = writeln!(
            out,
            r#"<text x="{x:.1}" y="{:.1}" text-anchor="middle">{h}</text>"#,
            H - BOTTOM + 18.0
        );
    }
    let _ = writeln!(
        out,
        r#"<text x="{}" y="{}" text-anchor="middle">hours since the trace's start</text>"#,
        LEFT + (W - LEFT - RIGHT) / 2.0,
        H - 12.0
    );
    let _ = writeln!(
        out,
        r#"<text transform="translate(16 {0}) rotate(-90)" text-anchor="middle">games</text>"#,
        TOP + (H - TOP - BOTTOM) / 2.0
    );
    let _ = writeln!(
        out,
        r#"<text transform="translate({0} {1}) rotate(90)" text-anchor="middle">VMs ({games_per_vm} games each)</text>"#,
        W - 14.0,
        TOP + (H - TOP - BOTTOM) / 2.0
    );

    for m in markers {
        let x = px(m.t_s);
        let colour = if m.announced { "#2ca02c" } else { "#d62728" };
        let _ = writeln!(
            out,
            r#"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{:.1}" stroke="{colour}" stroke-dasharray="3 3"/>"#,
            H - BOTTOM
        );
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{:.1}" fill="{colour}" font-size="10">{}</text>"#,
            x + 3.0,
            TOP + 10.0,
            escape(&m.label)
        );
    }

    let line = |out: &mut String, colour: &str, width: f64, value: &dyn Fn(&Sample) -> f64| {
        let mut points = String::with_capacity(samples.len() * 14);
        for s in samples {
            let _ = write!(points, "{:.1},{:.1} ", px(s.t_s), py(value(s)));
        }
        let _ = writeln!(
            out,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="{width}" stroke-linejoin="round" points="{}"/>"#,
            points.trim_end()
        );
    };
    line(&mut out, "#9e9e9e", 1.2, &|s| f64::from(s.active_games));
    line(&mut out, "#ff7f0e", 1.2, &|s| {
        f64::from(s.billed_vms) * x_per_vm
    });
    line(&mut out, "#1f77b4", 1.2, &|s| {
        f64::from(s.ready_vms) * x_per_vm
    });
    line(&mut out, "#000000", 0.8, &|s| {
        f64::from(s.desired) * x_per_vm
    });

    let legend = [
        ("#9e9e9e", "active games (left); ÷ X = lower bound (right)"),
        ("#000000", "desired VMs (formula)"),
        ("#1f77b4", "Ready VMs"),
        ("#ff7f0e", "billed VMs (booting + Ready + draining)"),
        ("#2ca02c", "announced burst"),
        ("#d62728", "unannounced burst"),
    ];
    // Below the burst labels, on a white card that hides the marker lines behind it.
    let legend_top = TOP + 22.0;
    let _ = writeln!(
        out,
        r#"<rect x="{}" y="{}" width="330" height="{}" fill="white" fill-opacity="0.9"/>"#,
        LEFT + 8.0,
        legend_top - 10.0,
        16.0 * legend.len() as f64 + 6.0
    );
    for (i, (colour, text)) in legend.iter().enumerate() {
        let y = legend_top + 16.0 * i as f64;
        let x = LEFT + 16.0;
        let _ = writeln!(
            out,
            r#"<line x1="{x}" y1="{y}" x2="{}" y2="{y}" stroke="{colour}" stroke-width="2"/>"#,
            x + 18.0
        );
        let _ = writeln!(
            out,
            r#"<text x="{}" y="{}">{}</text>"#,
            x + 24.0,
            y + 4.0,
            escape(text)
        );
    }
    out.push_str("</svg>\n");
    out
}

/// 1, 2, 5, 10, 20, 50 … at least `raw`.
fn nice_step(raw: f64) -> f64 {
    let raw = raw.max(1.0);
    let magnitude = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|&s| s >= raw)
        .unwrap_or(10.0 * magnitude)
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plot_is_an_svg_with_one_line_per_series() {
        let samples: Vec<Sample> = (0..10)
            .map(|i| Sample {
                t_s: f64::from(i) * 600.0,
                active_games: i * 10,
                pending_games: 0,
                desired: i + 1,
                ready_vms: i,
                billed_vms: i + 1,
            })
            .collect();
        let markers = [Marker {
            t_s: 1200.0,
            label: "cup <1>".into(),
            announced: true,
        }];
        let svg = svg(&samples, 8, &markers, "a day");
        assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 4);
        assert!(svg.contains("cup &lt;1&gt;"));
    }

    #[test]
    fn axis_steps_are_round() {
        assert_eq!(nice_step(0.3), 1.0);
        assert_eq!(nice_step(3.0), 5.0);
        assert_eq!(nice_step(11.0), 20.0);
        assert_eq!(nice_step(60.0), 100.0);
    }
}
