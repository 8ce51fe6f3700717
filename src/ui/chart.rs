//! The overview's chart, drawn on the server: jobs finished per minute over the last hour,
//! one bar per minute stacked by state. A string of SVG, no script; colours come from the
//! page's stylesheet through the classes `s-succeeded`, `s-failed`, `s-cancelled` (the
//! Content-Security-Policy allows no inline style).

use std::fmt::Write;

use crate::jobs::store::{FinishedInMinute, JobState};

/// Bars in the chart: one per minute of the last hour.
pub const MINUTES: i64 = 60;

/// Room for the y axis' labels on the left, the x axis' below, the legend above.
const LEFT: i64 = 44;
const BOTTOM: i64 = 22;
const TOP: i64 = 24;
const RIGHT: i64 = 8;
/// One minute's width, a pixel of it the gap to the next.
const BAR: i64 = 10;
const WIDTH: i64 = LEFT + MINUTES * BAR + RIGHT;
const HEIGHT: i64 = 180;

/// The states stacked, from the bottom up.
const STACK: [JobState; 3] = [JobState::Succeeded, JobState::Failed, JobState::Cancelled];

/// A state's colour as an SVG presentation attribute: the stylesheet's `.s-<state>` rule
/// overrides it, and without one the chart still reads (an attribute, not a `style`, so
/// the Content-Security-Policy allows it).
fn fill(state: JobState) -> &'static str {
    match state {
        JobState::Succeeded => "#1a7f37",
        JobState::Failed => "#d93025",
        _ => "#8c959f",
    }
}

/// Escapes text for SVG (XML) content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Counts per minute and state for the 60 minutes ending with the one holding `now`
/// (unix seconds): index 0 is the oldest minute.
fn per_minute(rows: &[FinishedInMinute], now: i64) -> Vec<[i64; 3]> {
    let last = now - now.rem_euclid(60);
    let first = last - (MINUTES - 1) * 60;
    let mut bars = vec![[0i64; 3]; MINUTES as usize];
    for r in rows {
        if r.minute < first || r.minute > last {
            continue;
        }
        let Some(slot) = STACK.iter().position(|s| *s == r.state) else {
            continue;
        };
        bars[((r.minute - first) / 60) as usize][slot] += r.count;
    }
    bars
}

/// The smallest of 1, 2, 5 × 10ⁿ at or above `n` (at least 1): the y axis' top.
fn nice_max(n: i64) -> i64 {
    let mut scale = 1;
    loop {
        for step in [1, 2, 5] {
            if step * scale >= n.max(1) {
                return step * scale;
            }
        }
        scale *= 10;
    }
}

/// "HH:MM" (UTC) of a unix time.
fn clock(unix: i64) -> String {
    chrono::DateTime::from_timestamp(unix, 0)
        .map(|t| t.format("%H:%M").to_string())
        .unwrap_or_default()
}

/// The chart for `rows` (from `Store::finished_per_minute`), the last minute the one
/// holding `now` (unix seconds).
pub fn finished_chart(rows: &[FinishedInMinute], now: i64) -> String {
    let bars = per_minute(rows, now);
    let top = nice_max(bars.iter().map(|b| b.iter().sum()).max().unwrap_or(0));
    let plot_h = HEIGHT - TOP - BOTTOM;
    let base = HEIGHT - BOTTOM;
    let mut svg = format!(
        r#"<svg id="finished-chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" role="img" aria-label="jobs finished per minute over the last hour, by state">"#
    );
    axes(&mut svg, top, now);
    let first = now - now.rem_euclid(60) - (MINUTES - 1) * 60;
    for (i, counts) in bars.iter().enumerate() {
        let x = LEFT + i as i64 * BAR;
        let (mut y, mut sum) = (base, 0);
        let mut tip = clock(first + i as i64 * 60);
        for (state, n) in STACK.iter().zip(counts) {
            let _ = write!(tip, ", {n} {}", state.as_str());
            // Heights from the running sum, rounded: the stack ends exactly at its total.
            sum += n;
            let top_y = base - (sum * plot_h * 2 + top) / (top * 2);
            let h = y - top_y;
            if h == 0 {
                continue;
            }
            y = top_y;
            let _ = write!(
                svg,
                r#"<rect class="s-{}" fill="{}" x="{x}" y="{y}" width="{}" height="{h}"/>"#,
                state.as_str(),
                fill(*state),
                BAR - 1
            );
        }
        let _ = write!(
            svg,
            r#"<rect class="bar-hit" x="{x}" y="{TOP}" width="{BAR}" height="{plot_h}" fill-opacity="0"><title>{}</title></rect>"#,
            escape(&tip)
        );
    }
    legend(&mut svg);
    svg.push_str("</svg>");
    svg
}

/// The axes with their labels: 0 and `top` on the y axis, the hour's first minute, its
/// middle and "now" on the x axis.
fn axes(svg: &mut String, top: i64, now: i64) {
    let base = HEIGHT - BOTTOM;
    let right = WIDTH - RIGHT;
    let last = now - now.rem_euclid(60);
    let _ = write!(
        svg,
        r##"<g class="axis" stroke="#888" font-size="11" fill="#555"><line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{base}"/><line x1="{LEFT}" y1="{base}" x2="{right}" y2="{base}"/>"##
    );
    let _ = write!(
        svg,
        r#"<text class="y-label" stroke="none" x="{}" y="{}" text-anchor="end">{top}</text><text class="y-label" stroke="none" x="{}" y="{base}" text-anchor="end">0</text>"#,
        LEFT - 4,
        TOP + 4,
        LEFT - 4
    );
    let label_y = HEIGHT - 6;
    for (i, anchor, text) in [
        (0, "start", clock(last - (MINUTES - 1) * 60)),
        (MINUTES / 2, "middle", clock(last - (MINUTES / 2 - 1) * 60)),
        (MINUTES, "end", format!("{} UTC", clock(last))),
    ] {
        let _ = write!(
            svg,
            r#"<text class="x-label" stroke="none" x="{}" y="{label_y}" text-anchor="{anchor}">{}</text>"#,
            LEFT + i * BAR,
            escape(&text)
        );
    }
    svg.push_str("</g>");
}

/// One swatch and name per state, above the plot on the right.
fn legend(svg: &mut String) {
    svg.push_str(r#"<g class="legend" font-size="11">"#);
    let mut x = WIDTH - RIGHT - 3 * 90;
    for state in STACK {
        let name = state.as_str();
        let _ = write!(
            svg,
            r#"<rect class="s-{name}" fill="{}" x="{x}" y="6" width="10" height="10"/><text x="{}" y="15">{}</text>"#,
            fill(state),
            x + 14,
            escape(name)
        );
        x += 90;
    }
    svg.push_str("</g>");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(minute: i64, state: JobState, count: i64) -> FinishedInMinute {
        FinishedInMinute {
            minute,
            state,
            count,
        }
    }

    #[test]
    fn sixty_bars_stacked_by_state_with_axes_and_a_legend() {
        let now = 1_700_000_000 - 1_700_000_000 % 60 + 30;
        let last = now - 30;
        let svg = finished_chart(
            &[
                row(last, JobState::Succeeded, 8),
                row(last, JobState::Failed, 2),
                row(last - 59 * 60, JobState::Cancelled, 1),
                // Outside the hour: not drawn.
                row(last - 60 * 60, JobState::Succeeded, 1000),
                row(last + 60, JobState::Succeeded, 1000),
            ],
            now,
        );
        assert!(svg.starts_with(r#"<svg id="finished-chart""#), "{svg}");
        assert!(svg.ends_with("</svg>"));
        assert_eq!(svg.matches(r#"class="bar-hit""#).count(), 60);
        // Two swatches in the legend, plus the bars.
        assert_eq!(svg.matches(r#"<rect class="s-succeeded""#).count(), 2);
        assert_eq!(svg.matches(r#"<rect class="s-failed""#).count(), 2);
        assert_eq!(svg.matches(r#"<rect class="s-cancelled""#).count(), 2);
        // The y axis is scaled to the tallest bar (10 → 10), not to what fell outside.
        assert!(svg.contains(r#"text-anchor="end">10</text>"#), "{svg}");
        assert!(svg.contains("UTC</text>"));
        assert!(svg.contains(", 8 succeeded, 2 failed, 0 cancelled</title>"));
        assert!(!svg.contains("style"), "the CSP allows no inline style");
        // The last bar: succeeded at the bottom, failed on top of it, up to the plot's top.
        // 8 of 10 of the plot's 134 px: 107.2 → 107.
        let x = LEFT + 59 * BAR;
        assert_eq!(HEIGHT - TOP - BOTTOM, 134);
        assert!(svg.contains(&format!(
            r#"<rect class="s-succeeded" fill="{}" x="{x}" y="{}" width="{}" height="107"/>"#,
            fill(JobState::Succeeded),
            HEIGHT - BOTTOM - 107,
            BAR - 1,
        )));
        assert!(svg.contains(&format!(
            r#"<rect class="s-failed" fill="{}" x="{x}" y="{TOP}" width="{}" height="27"/>"#,
            fill(JobState::Failed),
            BAR - 1
        )));
    }

    #[test]
    fn an_empty_hour_is_sixty_empty_bars() {
        let svg = finished_chart(&[], 1_700_000_000);
        assert_eq!(svg.matches(r#"class="bar-hit""#).count(), 60);
        assert_eq!(
            svg.matches("<rect class=\"s-").count(),
            3,
            "only the legend"
        );
        assert!(svg.contains(r#"text-anchor="end">1</text>"#));
    }

    #[test]
    fn text_is_escaped() {
        assert_eq!(
            escape(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }

    #[test]
    fn the_scale_is_a_round_number() {
        let tops: Vec<i64> = [0, 1, 3, 7, 10, 11, 450].map(nice_max).to_vec();
        assert_eq!(tops, [1, 1, 5, 10, 10, 20, 500]);
    }
}
