//! Server-side SVG charts: every mark carries its value in `data-*` attributes and a `<title>`
//! (a tooltip, and what tests and screen readers read), so the picture and the JSON agree.

use maud::{html, Markup};

use super::stats::Bin;

const W: f64 = 640.0;
const H: f64 = 240.0;
const LEFT: f64 = 48.0;
const RIGHT: f64 = 12.0;
const TOP: f64 = 12.0;
const BOTTOM: f64 = 36.0;
/// The series' colours (colour-blind safe: Okabe-Ito).
pub const PALETTE: [&str; 5] = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9"];
const PRUNED: &str = "#D55E00";
const KEPT: &str = "#9AA5B1";

fn plot_w() -> f64 {
    W - LEFT - RIGHT
}
fn plot_h() -> f64 {
    H - TOP - BOTTOM
}

fn fmt(v: f64) -> String {
    if v == 0.0 || (v.abs() >= 0.01 && v.abs() < 1e4) {
        format!("{:.3}", v)
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string()
    } else {
        format!("{v:.2e}")
    }
}

/// An axis maximum of 4 round steps (1, 2, 2.5 or 5 times a power of ten) at or above `max`.
fn nice_axis(max: f64) -> f64 {
    if !(max > 0.0 && max.is_finite()) {
        return 1.0;
    }
    let raw = max / 4.0;
    let power = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * power)
        .find(|&s| s >= raw * (1.0 - 1e-9))
        .unwrap_or(10.0 * power);
    4.0 * step
}

/// The y axis from 0 to `max` with 5 ticks, and the frame.
fn y_axis(max: f64, label: &str) -> Markup {
    html! {
        g class="axis" {
            line x1=(LEFT) y1=(TOP) x2=(LEFT) y2=(TOP + plot_h()) stroke="#333" {}
            line x1=(LEFT) y1=(TOP + plot_h()) x2=(W - RIGHT) y2=(TOP + plot_h()) stroke="#333" {}
            @for i in 0..=4 {
                @let v = max * i as f64 / 4.0;
                @let y = TOP + plot_h() * (1.0 - i as f64 / 4.0);
                line x1=(LEFT - 4.0) y1=(y) x2=(LEFT) y2=(y) stroke="#333" {}
                text x=(LEFT - 6.0) y=(y + 4.0) text-anchor="end" font-size="11" { (fmt(v)) }
            }
            text x="12" y=(TOP + plot_h() / 2.0) font-size="11" text-anchor="middle"
                transform={"rotate(-90 12 " (TOP + plot_h() / 2.0) ")"} { (label) }
        }
    }
}

/// One group of bars (e.g. a portion) holding one bar per series.
pub struct BarGroup {
    pub label: String,
    /// (series index, value, the bar's tooltip)
    pub bars: Vec<(usize, f64, String)>,
}

/// Grouped bars from 0 to `max`; `series` names the legend's entries.
pub fn grouped_bars(
    id: &str,
    title: &str,
    series: &[&str],
    groups: &[BarGroup],
    max: f64,
    y_label: &str,
) -> Markup {
    let max = nice_axis(max);
    let slot = plot_w() / groups.len().max(1) as f64;
    let bar = (slot * 0.8 / series.len().max(1) as f64).min(48.0);
    html! {
        figure {
            svg id=(id) class="chart" viewBox={"0 0 " (W) " " (H + 18.0)} role="img" aria-label=(title) {
                title { (title) }
                (y_axis(max, y_label))
                @for (g, group) in groups.iter().enumerate() {
                    @let x0 = LEFT + slot * g as f64 + (slot - bar * series.len() as f64) / 2.0;
                    @for (s, value, tip) in &group.bars {
                        @let h = plot_h() * (value / max).clamp(0.0, 1.0);
                        rect class="bar" x=(x0 + bar * *s as f64) y=(TOP + plot_h() - h) width=(bar * 0.92) height=(h)
                            fill=(PALETTE[s % PALETTE.len()]) data-group=(group.label)
                            data-series=(series.get(*s).copied().unwrap_or("")) data-value=(value) {
                            title { (tip) }
                        }
                    }
                    text x=(LEFT + slot * (g as f64 + 0.5)) y=(H - BOTTOM + 16.0) text-anchor="middle" font-size="11" { (group.label) }
                }
                @for (s, name) in series.iter().enumerate() {
                    rect x=(LEFT + 110.0 * s as f64) y=(H + 4.0) width="10" height="10" fill=(PALETTE[s % PALETTE.len()]) {}
                    text x=(LEFT + 14.0 + 110.0 * s as f64) y=(H + 13.0) font-size="11" { (name) }
                }
            }
        }
    }
}

/// A heatmap of counts: one row per layer, one column per head.
pub fn heatmap(id: &str, title: &str, counts: &[Vec<usize>], col_label: &str) -> Markup {
    let rows = counts.len().max(1);
    let cols = counts.iter().map(Vec::len).max().unwrap_or(1).max(1);
    let max = counts.iter().flatten().copied().max().unwrap_or(0).max(1);
    let cell_h = (plot_h().max(14.0 * rows as f64) / rows as f64).min(18.0);
    let cell_w = (plot_w() / cols as f64).min(40.0);
    let height = TOP + cell_h * rows as f64 + BOTTOM;
    html! {
        figure {
            svg id=(id) class="chart heatmap" viewBox={"0 0 " (W) " " (height)} role="img" aria-label=(title) {
                title { (title) }
                @for (layer, row) in counts.iter().enumerate() {
                    @let y = TOP + cell_h * layer as f64;
                    @if layer % 2 == 0 || rows <= 16 {
                        text x=(LEFT - 6.0) y=(y + cell_h * 0.75) text-anchor="end" font-size="10" { "L" (layer) }
                    }
                    @for (head, &n) in row.iter().enumerate() {
                        @let shade = n as f64 / max as f64;
                        rect class="cell" x=(LEFT + cell_w * head as f64) y=(y) width=(cell_w - 1.0) height=(cell_h - 1.0)
                            fill=(heat(shade)) data-layer=(layer) data-head=(head) data-count=(n) {
                            title { "layer " (layer) ", " (col_label) " " (head) ": " (n) " pruned" }
                        }
                    }
                }
                text x=(LEFT) y=(height - 8.0) font-size="11" { (col_label) " (0 to " (cols - 1) "), layers top to bottom; darker: more pruned (max " (max) ")" }
            }
        }
    }
}

/// White to the pruned colour.
fn heat(t: f64) -> String {
    let (r, g, b) = (0xD5 as f64, 0x5E as f64, 0.0);
    let mix = |c: f64| (255.0 + (c - 255.0) * t.clamp(0.0, 1.0)).round() as u8;
    if t <= 0.0 {
        "#F4F6F8".into()
    } else {
        format!("#{:02X}{:02X}{:02X}", mix(r), mix(g), mix(b))
    }
}

/// A histogram, each bin's pruned part stacked under its kept part; `threshold` draws the
/// pruning cut (attribution: the largest pruned score).
pub fn histogram(id: &str, title: &str, bins: &[Bin], threshold: Option<f64>) -> Markup {
    let max = nice_axis(
        bins.iter()
            .map(|b| b.pruned + b.kept)
            .max()
            .unwrap_or(0)
            .max(1) as f64,
    );
    let (lo, hi) = match (bins.first(), bins.last()) {
        (Some(a), Some(b)) => (a.lo, b.hi),
        _ => (0.0, 1.0),
    };
    let x_of = |v: f64| LEFT + plot_w() * ((v - lo) / (hi - lo)).clamp(0.0, 1.0);
    let w = plot_w() / bins.len().max(1) as f64;
    html! {
        figure {
            svg id=(id) class="chart" viewBox={"0 0 " (W) " " (H + 18.0)} role="img" aria-label=(title) {
                title { (title) }
                (y_axis(max, "singular values"))
                @for (i, b) in bins.iter().enumerate() {
                    @let x = LEFT + w * i as f64;
                    @let hp = plot_h() * b.pruned as f64 / max;
                    @let hk = plot_h() * b.kept as f64 / max;
                    g class="bin" data-lo=(b.lo) data-hi=(b.hi) data-pruned=(b.pruned) data-kept=(b.kept) {
                        title { (fmt(b.lo)) " to " (fmt(b.hi)) ": " (b.pruned) " pruned, " (b.kept) " kept" }
                        rect x=(x) y=(TOP + plot_h() - hp) width=(w - 1.0) height=(hp) fill=(PRUNED) {}
                        rect x=(x) y=(TOP + plot_h() - hp - hk) width=(w - 1.0) height=(hk) fill=(KEPT) {}
                    }
                }
                text x=(LEFT) y=(H - BOTTOM + 16.0) font-size="11" { (fmt(lo)) }
                text x=(W - RIGHT) y=(H - BOTTOM + 16.0) font-size="11" text-anchor="end" { (fmt(hi)) }
                text x=(LEFT + plot_w() / 2.0) y=(H - BOTTOM + 16.0) font-size="11" text-anchor="middle" { "score (tails folded into the edge bins)" }
                @if let Some(t) = threshold {
                    line class="threshold" x1=(x_of(t)) y1=(TOP) x2=(x_of(t)) y2=(TOP + plot_h())
                        stroke="#111" stroke-dasharray="4 3" data-value=(t) {
                        title { "pruned at or below " (fmt(t)) }
                    }
                }
                rect x=(LEFT) y=(H + 4.0) width="10" height="10" fill=(PRUNED) {}
                text x=(LEFT + 14.0) y=(H + 13.0) font-size="11" { "pruned" }
                rect x=(LEFT + 110.0) y=(H + 4.0) width="10" height="10" fill=(KEPT) {}
                text x=(LEFT + 124.0) y=(H + 13.0) font-size="11" { "kept" }
            }
        }
    }
}

/// A spectrum: singular values by index, the pruned ones marked.
pub fn spectrum(id: &str, title: &str, values: &[f32], pruned: &[bool]) -> Markup {
    let max = nice_axis(values.iter().copied().fold(0.0f32, f32::max).max(1e-12) as f64);
    let n = values.len().max(2);
    let x_of = |i: usize| LEFT + plot_w() * i as f64 / (n - 1) as f64;
    let y_of = |v: f32| TOP + plot_h() * (1.0 - v as f64 / max);
    let path: String = values
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            format!(
                "{}{:.1},{:.1}",
                if i == 0 { 'M' } else { 'L' },
                x_of(i),
                y_of(v)
            )
        })
        .collect();
    html! {
        figure {
            svg id=(id) class="chart" viewBox={"0 0 " (W) " " (H)} role="img" aria-label=(title) {
                title { (title) }
                (y_axis(max, "singular value"))
                path d=(path) fill="none" stroke=(PALETTE[0]) stroke-width="1.5" {}
                @for (i, &v) in values.iter().enumerate() {
                    @let cut = pruned.get(i).copied().unwrap_or(false);
                    circle class=(if cut { "sv pruned" } else { "sv" }) cx=(x_of(i)) cy=(y_of(v)) r=(if cut { 4.0 } else { 2.0 })
                        fill=(if cut { PRUNED } else { PALETTE[0] }) data-index=(i) data-value=(v) data-pruned=(cut) {
                        title { "σ" (i) " = " (fmt(v as f64)) @if cut { " (pruned)" } }
                    }
                }
                text x=(LEFT + plot_w() / 2.0) y=(H - BOTTOM + 16.0) font-size="11" text-anchor="middle" { "index (largest first); pruned in orange" }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::nice_axis;

    #[test]
    fn axes_end_on_round_steps() {
        assert_eq!(nice_axis(62.0), 80.0);
        assert_eq!(nice_axis(1.0), 1.0);
        assert_eq!(nice_axis(3.0), 4.0);
        assert!((nice_axis(0.37) - 0.4).abs() < 1e-12);
        assert_eq!(nice_axis(0.0), 1.0);
    }
}
