//! PNG plots with plotters' bitmap backend. Text goes through plotters' `ab_glyph` feature with
//! a TrueType font registered at run time (no system font library is linked), so a missing font
//! is a clear error instead of a panic deep in the backend.

use plotters::coord::ranged1d::{Ranged, ValueFormatter};
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::Path;
use std::sync::OnceLock;

/// Debian's fonts-dejavu-core.
pub const DEFAULT_FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
const FONT: &str = "sans-serif";
const WIDTH: u32 = 1000;
const HEIGHT: u32 = 560;
const CAPTION_LINE: u32 = 17;
/// Characters of caption text that fit on one line of the plot's width.
const CAPTION_CHARS: usize = 150;
const CAPTION_MAX_LINES: usize = 5;

/// Breaks each line at spaces into lines of at most `width` characters; at most `max` lines,
/// the last ending in "…" when text was left out.
pub fn wrap(lines: &[String], width: usize, max: usize) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for line in lines {
        let mut cur = String::new();
        for word in line.split(' ') {
            if !cur.is_empty() && cur.chars().count() + 1 + word.chars().count() > width {
                out.push(std::mem::take(&mut cur));
            }
            if !cur.is_empty() {
                cur.push(' ');
            }
            cur.push_str(word);
        }
        out.push(cur);
    }
    let max = max.max(1);
    if out.len() > max {
        // Keep the last line (the machine) and cut the cells.
        let last = out.pop().unwrap_or_default();
        out.truncate(max - 1);
        if let Some(l) = out.last_mut() {
            l.push_str(" …");
        }
        out.push(last);
    }
    out
}

/// A line per series over N.
#[derive(Debug, Clone, PartialEq)]
pub struct Lines {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub log_x: bool,
    pub log_y: bool,
    pub series: Vec<Series>,
    /// Lines of small text under the plot (what produced it, on which machine).
    pub caption: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    pub dashed: bool,
}

/// Grouped bars: `values[group][bar]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Bars {
    pub title: String,
    pub y_label: String,
    pub groups: Vec<String>,
    pub bars: Vec<String>,
    pub values: Vec<Vec<Option<f64>>>,
    pub caption: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum PlotSpec {
    Lines(Lines),
    Bars(Bars),
    /// Two plots side by side with one caption.
    Pair(Box<PlotSpec>, Box<PlotSpec>, Vec<String>),
}

static REGISTERED: OnceLock<Result<(), String>> = OnceLock::new();

/// Registers the TrueType font at `path` as plotters' sans-serif (once per process).
pub fn register_font(path: &Path) -> anyhow::Result<()> {
    let r = REGISTERED.get_or_init(|| {
        let bytes = std::fs::read(path).map_err(|e| {
            format!(
                "cannot read the plots' font {}: {e}; install it with `apt-get install \
                 fonts-dejavu-core` (scripts/install-bench-deps.sh does) or pass --font PATH.ttf",
                path.display()
            )
        })?;
        // plotters keeps registered fonts for the life of the process.
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font(FONT, FontStyle::Normal, bytes)
            .map_err(|_| format!("{} is not a TrueType/OpenType font", path.display()))
    });
    r.clone().map_err(anyhow::Error::msg)
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

fn color(i: usize) -> RGBColor {
    COLORS[i % COLORS.len()]
}

/// `1,000`, `2.5k`, `0.12` – short tick labels.
pub fn tick(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        "0".into()
    } else if a >= 1e6 {
        let s = format!("{:.3}", v / 1e6);
        format!("{}M", s.trim_end_matches('0').trim_end_matches('.'))
    } else if a >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 1.0 {
        let s = format!("{v:.1}");
        s.trim_end_matches(".0").to_owned()
    } else {
        format!("{v:.2}")
    }
}

/// Draws `spec` into a PNG at `path`.
pub fn draw(spec: &PlotSpec, path: &Path) -> Result<(), String> {
    let root = BitMapBackend::new(path, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let caption = wrap(
        match spec {
            PlotSpec::Lines(l) => &l.caption,
            PlotSpec::Bars(b) => &b.caption,
            PlotSpec::Pair(_, _, c) => c,
        },
        CAPTION_CHARS,
        CAPTION_MAX_LINES,
    );
    let foot_h = CAPTION_LINE * caption.len() as u32 + if caption.is_empty() { 0 } else { 8 };
    let (body, foot) = root.split_vertically(HEIGHT - foot_h);
    match spec {
        PlotSpec::Pair(a, b, _) => {
            let (left, right) = body.split_horizontally(WIDTH / 2);
            draw_one(&left, a)?;
            draw_one(&right, b)?;
        }
        other => draw_one(&body, other)?,
    }
    let style = TextStyle::from((FONT, 13).into_font()).color(&RGBColor(90, 90, 90));
    for (i, line) in caption.iter().enumerate() {
        foot.draw(&Text::new(
            line.clone(),
            (10, 2 + (CAPTION_LINE * i as u32) as i32),
            style.clone(),
        ))
        .map_err(err)?;
    }
    root.present().map_err(err)
}

fn draw_one(area: &DrawingArea<BitMapBackend<'_>, Shift>, spec: &PlotSpec) -> Result<(), String> {
    match spec {
        PlotSpec::Lines(l) => lines(area, l),
        PlotSpec::Bars(b) => bars(area, b),
        PlotSpec::Pair(a, b, _) => {
            let (left, right) = area.split_horizontally(area.dim_in_pixel().0 / 2);
            draw_one(&left, a)?;
            draw_one(&right, b)
        }
    }
}

/// The range covering `vals` with some room, positive for a log axis.
fn span(vals: impl Iterator<Item = f64>, log: bool) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in vals.filter(|v| v.is_finite() && (!log || *v > 0.0)) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if !lo.is_finite() {
        return if log { (1.0, 10.0) } else { (0.0, 1.0) };
    }
    if log {
        // Whole decades, so a log axis always has labelled ticks.
        (
            10f64.powf((lo / 1.3).log10().floor()),
            10f64.powf((hi * 1.3).log10().ceil()),
        )
    } else {
        (0f64.min(lo), if hi > 0.0 { hi * 1.15 } else { 1.0 })
    }
}

fn lines(area: &DrawingArea<BitMapBackend<'_>, Shift>, l: &Lines) -> Result<(), String> {
    let (x0, x1) = span(
        l.series.iter().flat_map(|s| s.points.iter().map(|p| p.0)),
        l.log_x,
    );
    let (y0, y1) = span(
        l.series.iter().flat_map(|s| s.points.iter().map(|p| p.1)),
        l.log_y,
    );
    let mut builder = ChartBuilder::on(area);
    builder
        .caption(&l.title, (FONT, 20))
        .margin(12)
        .x_label_area_size(42)
        .y_label_area_size(64);
    match (l.log_x, l.log_y) {
        (true, true) => fill_lines(
            builder
                .build_cartesian_2d((x0..x1).log_scale(), (y0..y1).log_scale())
                .map_err(err)?,
            l,
        ),
        (true, false) => fill_lines(
            builder
                .build_cartesian_2d((x0..x1).log_scale(), y0..y1)
                .map_err(err)?,
            l,
        ),
        (false, true) => fill_lines(
            builder
                .build_cartesian_2d(x0..x1, (y0..y1).log_scale())
                .map_err(err)?,
            l,
        ),
        (false, false) => fill_lines(builder.build_cartesian_2d(x0..x1, y0..y1).map_err(err)?, l),
    }
}

fn fill_lines<'a, X, Y>(
    mut chart: ChartContext<'a, BitMapBackend<'a>, Cartesian2d<X, Y>>,
    l: &Lines,
) -> Result<(), String>
where
    X: Ranged<ValueType = f64> + ValueFormatter<f64>,
    Y: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    chart
        .configure_mesh()
        .x_desc(l.x_label.as_str())
        .y_desc(l.y_label.as_str())
        .x_label_formatter(&|v| tick(*v))
        .y_label_formatter(&|v| tick(*v))
        .label_style((FONT, 13))
        .axis_desc_style((FONT, 15))
        .light_line_style(RGBColor(235, 235, 235))
        .draw()
        .map_err(err)?;
    let keep = |p: &&(f64, f64)| (!l.log_x || p.0 > 0.0) && (!l.log_y || p.1 > 0.0);
    for (i, s) in l.series.iter().enumerate() {
        let c = color(i);
        let style = c.stroke_width(2);
        let pts: Vec<(f64, f64)> = s.points.iter().filter(keep).copied().collect();
        let anno = if s.dashed {
            chart
                .draw_series(DashedLineSeries::new(pts.clone(), 8, 5, style))
                .map_err(err)?
        } else {
            chart
                .draw_series(LineSeries::new(pts.clone(), style))
                .map_err(err)?
        };
        anno.label(s.name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2)));
        chart
            .draw_series(pts.iter().map(|p| Circle::new(*p, 3, c.filled())))
            .map_err(err)?;
    }
    if !l.series.is_empty() {
        chart
            .configure_series_labels()
            .label_font((FONT, 13))
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(180, 180, 180))
            .position(SeriesLabelPosition::UpperLeft)
            .draw()
            .map_err(err)?;
    }
    Ok(())
}

fn bars(area: &DrawingArea<BitMapBackend<'_>, Shift>, b: &Bars) -> Result<(), String> {
    let (_, y1) = span(b.values.iter().flatten().filter_map(|v| *v), false);
    let y1 = y1 * 1.1;
    let ng = b.groups.len().max(1);
    let mut chart = ChartBuilder::on(area)
        .caption(&b.title, (FONT, 20))
        .margin(12)
        .x_label_area_size(46)
        .y_label_area_size(64)
        .build_cartesian_2d(0f64..ng as f64, 0f64..y1)
        .map_err(err)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_desc(b.y_label.as_str())
        .y_label_formatter(&|v| tick(*v))
        .label_style((FONT, 13))
        .axis_desc_style((FONT, 15))
        .light_line_style(RGBColor(235, 235, 235))
        .draw()
        .map_err(err)?;
    let nb = b.bars.len().max(1);
    let w = 0.8 / nb as f64;
    for (j, name) in b.bars.iter().enumerate() {
        let c = color(j);
        let rects: Vec<Rectangle<(f64, f64)>> = b
            .values
            .iter()
            .enumerate()
            .filter_map(|(g, vals)| {
                let v = vals.get(j).copied().flatten()?;
                let x = g as f64 + 0.1 + j as f64 * w;
                Some(Rectangle::new([(x, 0.0), (x + w * 0.92, v)], c.filled()))
            })
            .collect();
        chart
            .draw_series(rects)
            .map_err(err)?
            .label(name.clone())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], c.filled()));
        let labels: Vec<Text<(f64, f64), String>> = b
            .values
            .iter()
            .enumerate()
            .filter_map(|(g, vals)| {
                let v = vals.get(j).copied().flatten()?;
                let x = g as f64 + 0.1 + j as f64 * w;
                Some(Text::new(
                    tick(v),
                    (x, v + y1 * 0.035),
                    (FONT, 11).into_font(),
                ))
            })
            .collect();
        chart.draw_series(labels).map_err(err)?;
    }
    chart
        .configure_series_labels()
        .label_font((FONT, 13))
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(180, 180, 180))
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(err)?;
    // Group names under the axis, in pixels: the chart's area starts where `area` does.
    let style =
        TextStyle::from((FONT, 13).into_font()).pos(plotters::style::text_anchor::Pos::new(
            plotters::style::text_anchor::HPos::Center,
            plotters::style::text_anchor::VPos::Top,
        ));
    let origin = area.get_base_pixel();
    for (g, name) in b.groups.iter().enumerate() {
        let (px, py) = chart.backend_coord(&(g as f64 + 0.5, 0.0));
        area.draw(&Text::new(
            name.clone(),
            (px - origin.0, py - origin.1 + 8),
            style.clone(),
        ))
        .map_err(err)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks() {
        let caption = vec!["cells: a, bb, cc, dd".to_owned(), "machine".to_owned()];
        assert_eq!(
            wrap(&caption, 9, 5),
            ["cells: a,", "bb, cc,", "dd", "machine"]
        );
        assert_eq!(wrap(&caption, 9, 3), ["cells: a,", "bb, cc, …", "machine"]);
        assert_eq!(wrap(&caption, 100, 3), caption);
        assert_eq!(tick(0.0), "0");
        assert_eq!(tick(0.123), "0.12");
        assert_eq!(tick(3.0), "3");
        assert_eq!(tick(2.5), "2.5");
        assert_eq!(tick(1000.0), "1000");
        assert_eq!(tick(10_000.0), "10k");
        assert_eq!(tick(2_500_000.0), "2.5M");
        assert_eq!(span([1.0, 10.0].into_iter(), false), (0.0, 11.5));
        assert_eq!(span(std::iter::empty(), true), (1.0, 10.0));
        assert_eq!(span([20.0, 200.0].into_iter(), true), (10.0, 1000.0));
        assert_eq!(span([0.0, 100.0, -1.0].into_iter(), true), (10.0, 1000.0));
    }
}
