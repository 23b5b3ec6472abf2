//! PNG plots for the reports, drawn with `plotters`: training curves, ROC curves and the
//! accuracy-against-bootstraps Pareto front.
//!
//! Plots are written by CI and on machines without any system font, so the text font
//! (DejaVu Sans, see `trainer/assets/README.md`) is compiled into the binary and registered
//! with plotters' `ab_glyph` renderer, which needs no font-config. Every chart is 900 × 600
//! pixels, and its axes are fitted to the data so that the same code serves a two-epoch smoke
//! run and a full training.

use std::ops::Range;
use std::path::Path;
use std::sync::Once;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::FontStyle;

/// A plot that could not be drawn or written.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    /// Plotters failed, while drawing or while writing the PNG (e.g. a missing folder).
    #[error("cannot draw {path}: {message}")]
    Draw { path: String, message: String },
}

/// One named line.
pub struct Series {
    /// Shown in the legend.
    pub name: String,
    /// (x, y) points, joined in this order; non-finite points are skipped.
    pub points: Vec<(f64, f64)>,
}

/// A model's ROC curve, as [`roc_chart`] takes it: its name, its AUC and its
/// (false positive rate, true positive rate) points.
pub type RocCurve = (String, f64, Vec<(f64, f64)>);

/// Width and height of every chart, in pixels.
const SIZE: (u32, u32) = (900, 600);

/// The embedded font's family name; every text style below uses it.
const FONT_FAMILY: &str = "sans-serif";

/// DejaVu Sans, compiled in so that text renders without system fonts.
const FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");

/// Registers the embedded font with plotters, the first time a chart is drawn.
fn register_font() {
    static REGISTER: Once = Once::new();
    REGISTER.call_once(|| {
        // Fails only for bytes that are not a font, which the tests would catch; if it ever
        // did, drawing text would then fail and report that as a `PlotError`.
        let _ = plotters::style::register_font(FONT_FAMILY, FontStyle::Normal, FONT);
    });
}

/// Turns any plotters error into a [`PlotError`] naming the file.
fn draw_error(path: &Path, error: impl std::fmt::Display) -> PlotError {
    PlotError::Draw {
        path: path.display().to_string(),
        message: error.to_string(),
    }
}

/// An axis range covering `values` with 5% padding on each side.
///
/// Never empty, so that plotters can always build the axis: a single value gets a band
/// around it, and no (finite) value at all gives 0..1.
fn padded_range(values: impl Iterator<Item = f64>) -> Range<f64> {
    let (low, high) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(low, high), v| {
            (low.min(v), high.max(v))
        });
    if low > high {
        return 0.0..1.0;
    }
    let span = high - low;
    let pad = if span > 0.0 {
        span * 0.05
    } else {
        (low.abs() * 0.05).max(0.5)
    };
    low - pad..high + pad
}

/// The colour of the `i`-th series, cycling through a few that are easy to tell apart.
fn colour(i: usize) -> RGBColor {
    const PALETTE: [RGBColor; 6] = [
        RGBColor(31, 119, 180),
        RGBColor(214, 39, 40),
        RGBColor(44, 160, 44),
        RGBColor(148, 103, 189),
        RGBColor(255, 127, 14),
        RGBColor(0, 0, 0),
    ];
    PALETTE[i % PALETTE.len()]
}

/// A short line, the legend's sample of a series drawn in `style`.
fn legend_line(style: ShapeStyle) -> impl Fn((i32, i32)) -> PathElement<(i32, i32)> {
    move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style)
}

/// The chart area: a white canvas with the font registered.
fn canvas(path: &Path) -> Result<DrawingArea<BitMapBackend<'_>, Shift>, PlotError> {
    register_font();
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(|e| draw_error(path, e))?;
    Ok(root)
}

/// Draws `series` as lines on axes `x_range` × `y_range`, with a legend, and writes the PNG.
fn draw_lines(
    path: &Path,
    title: &str,
    (x_label, y_label): (&str, &str),
    (x_range, y_range): (Range<f64>, Range<f64>),
    series: &[Series],
    legend_position: SeriesLabelPosition,
) -> Result<(), PlotError> {
    let root = canvas(path)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, (FONT_FAMILY, 24))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(x_range, y_range)
        .map_err(|e| draw_error(path, e))?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .label_style((FONT_FAMILY, 14))
        .draw()
        .map_err(|e| draw_error(path, e))?;
    for (i, line) in series.iter().enumerate() {
        let style = colour(i).stroke_width(2);
        let points = line
            .points
            .iter()
            .copied()
            .filter(|(x, y)| x.is_finite() && y.is_finite());
        chart
            .draw_series(LineSeries::new(points, style))
            .map_err(|e| draw_error(path, e))?
            .label(line.name.as_str())
            .legend(legend_line(style));
    }
    chart
        .configure_series_labels()
        .label_font((FONT_FAMILY, 15))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(legend_position)
        .draw()
        .map_err(|e| draw_error(path, e))?;
    root.present().map_err(|e| draw_error(path, e))
}

/// `range` raised at the top so that a legend of `rows` entries in the upper corner stays
/// clear of the data below it.
///
/// The legend takes about 20 pixels a row plus 20 of frame, out of about 480 pixels of plot
/// height; the range grows so that this fraction of it lies above the data.
fn with_room_for_legend(range: Range<f64>, rows: usize) -> Range<f64> {
    let fraction = ((20.0 * rows as f64 + 20.0) / 480.0).min(0.5);
    let span = range.end - range.start;
    range.start..range.end + span * fraction / (1.0 - fraction)
}

/// A line chart with a legend, axes from the data (with a little padding), 900 × 600.
///
/// A single point or an empty series still draws (around that point, or on 0..1 axes).
pub fn line_chart(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
) -> Result<(), PlotError> {
    let points = || series.iter().flat_map(|s| s.points.iter());
    let ranges = (
        padded_range(points().map(|p| p.0)),
        with_room_for_legend(padded_range(points().map(|p| p.1)), series.len()),
    );
    let labels = (x_label, y_label);
    draw_lines(
        path,
        title,
        labels,
        ranges,
        series,
        SeriesLabelPosition::UpperRight,
    )
}

/// The ROC curve(s) with the chance diagonal, each legend entry showing the curve's AUC;
/// both axes span [0, 1].
pub fn roc_chart(path: &Path, title: &str, curves: &[RocCurve]) -> Result<(), PlotError> {
    let mut series: Vec<Series> = curves
        .iter()
        .map(|(name, auc, points)| Series {
            name: format!("{name} (AUC {auc:.3})"),
            points: points.clone(),
        })
        .collect();
    series.push(Series {
        name: "chance (AUC 0.5)".into(),
        points: vec![(0.0, 0.0), (1.0, 1.0)],
    });
    draw_lines(
        path,
        title,
        ("false positive rate", "true positive rate"),
        (0.0..1.0, 0.0..1.0),
        &series,
        // Curves above the diagonal leave the lower right empty.
        SeriesLabelPosition::LowerRight,
    )
}

/// The indices of the non-dominated points among `points` = (bootstraps, accuracy), sorted by
/// bootstraps (then by index, for equal bootstraps).
///
/// A point is dominated when another one needs no more bootstraps and is at least as
/// accurate, and is strictly better on one of the two: nobody should pick it. Equal points do
/// not dominate each other, so both stay. Quadratic, which is fine for the few candidates of
/// an ablation.
pub fn pareto_front(points: &[(f64, f64)]) -> Vec<usize> {
    let dominated = |&(bootstraps, accuracy): &(f64, f64)| {
        points
            .iter()
            .any(|&(b, a)| b <= bootstraps && a >= accuracy && (b < bootstraps || a > accuracy))
    };
    let mut front: Vec<usize> = (0..points.len())
        .filter(|&i| !dominated(&points[i]))
        .collect();
    // A stable sort keeps the index order among equal bootstrap counts.
    front.sort_by(|&i, &j| points[i].0.total_cmp(&points[j].0));
    front
}

/// Accuracy against bootstrap count, to choose a model: every candidate `points` =
/// (name, bootstraps, accuracy) as a labelled point, the Pareto front (the fewest bootstraps
/// for the accuracy, see [`pareto_front`]) as a line, and, if given, a horizontal `target`
/// accuracy line. The bootstrap axis starts at 0, to show how far from free each model is.
pub fn pareto_chart(
    path: &Path,
    title: &str,
    points: &[(String, f64, f64)],
    target: Option<f64>,
) -> Result<(), PlotError> {
    let xy: Vec<(f64, f64)> = points.iter().map(|&(_, b, a)| (b, a)).collect();
    let x_range = 0.0..padded_range(xy.iter().map(|p| p.0).chain([0.0])).end;
    let y_range = padded_range(xy.iter().map(|p| p.1).chain(target));

    let root = canvas(path)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, (FONT_FAMILY, 22))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(x_range.clone(), y_range)
        .map_err(|e| draw_error(path, e))?;
    chart
        .configure_mesh()
        .x_desc("bootstraps (PBS) per image")
        .y_desc("accuracy")
        .label_style((FONT_FAMILY, 14))
        .draw()
        .map_err(|e| draw_error(path, e))?;

    if let Some(target) = target.filter(|t| t.is_finite()) {
        let style = colour(1).stroke_width(1);
        chart
            .draw_series(LineSeries::new(
                [(x_range.start, target), (x_range.end, target)],
                style,
            ))
            .map_err(|e| draw_error(path, e))?
            .label(format!("target {target:.2}"))
            .legend(legend_line(style));
    }

    let front_style = colour(0).stroke_width(2);
    let front: Vec<(f64, f64)> = pareto_front(&xy).into_iter().map(|i| xy[i]).collect();
    chart
        .draw_series(LineSeries::new(front, front_style))
        .map_err(|e| draw_error(path, e))?
        .label("Pareto front")
        .legend(legend_line(front_style));

    // Each candidate: a dot with its name just above and to the right.
    let candidates = points
        .iter()
        .filter(|(_, b, a)| b.is_finite() && a.is_finite())
        .map(|(name, b, a)| {
            EmptyElement::at((*b, *a))
                + Circle::new((0, 0), 5, BLACK.filled())
                + Text::new(name.clone(), (7, -16), (FONT_FAMILY, 14))
        });
    chart
        .draw_series(candidates)
        .map_err(|e| draw_error(path, e))?;

    chart
        .configure_series_labels()
        .label_font((FONT_FAMILY, 15))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        // Accuracy grows with bootstraps, so few candidates are cheap and inaccurate.
        .position(SeriesLabelPosition::LowerRight)
        .draw()
        .map_err(|e| draw_error(path, e))?;
    root.present().map_err(|e| draw_error(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Asserts that `path` is a PNG that `image` reads back at the charts' size.
    fn assert_readable_png(path: &Path) {
        assert!(std::fs::metadata(path).unwrap().len() > 0);
        let image = image::open(path).unwrap();
        assert_eq!((image.width(), image.height()), SIZE);
    }

    #[test]
    fn pareto_front_keeps_only_undominated_points() {
        let points = [
            (100.0, 0.80), // 0: front
            (150.0, 0.86), // 1: front
            (160.0, 0.85), // 2: dominated by 1 (fewer bootstraps, more accurate)
            (320.0, 0.88), // 3: front, the most accurate
            (90.0, 0.70),  // 4: front, the cheapest
            (320.0, 0.87), // 5: dominated by 3 (same bootstraps, less accurate)
            (150.0, 0.86), // 6: equal to 1, so neither dominates the other
        ];
        assert_eq!(pareto_front(&points), vec![4, 0, 1, 6, 3]);
        assert!(pareto_front(&[]).is_empty());
    }

    #[test]
    fn padded_ranges_are_never_empty() {
        assert_eq!(padded_range([].into_iter()), 0.0..1.0);
        assert_eq!(padded_range([f64::NAN].into_iter()), 0.0..1.0);
        let single = padded_range([3.0].into_iter());
        assert!(single.start < 3.0 && single.end > 3.0);
        let pair = padded_range([0.0, 10.0].into_iter());
        assert!((pair.start + 0.5).abs() < 1e-12 && (pair.end - 10.5).abs() < 1e-12);
    }

    #[test]
    fn line_chart_writes_a_png_even_for_a_single_point_and_an_empty_series() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("line.png");
        let series = [
            Series {
                name: "one point".into(),
                points: vec![(1.0, 2.0)],
            },
            Series {
                name: "empty".into(),
                points: vec![],
            },
        ];
        line_chart(&path, "single point", "epoch", "loss", &series).unwrap();
        assert_readable_png(&path);

        let curve = Series {
            name: "loss".into(),
            points: (0..20)
                .map(|e| (e as f64, 1.0 / (1.0 + e as f64)))
                .collect(),
        };
        line_chart(&path, "training", "epoch", "loss", &[curve]).unwrap();
        assert_readable_png(&path);
    }

    #[test]
    fn roc_chart_writes_a_png() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("roc.png");
        let curves = [
            (
                "teacher".into(),
                0.9,
                vec![(0.0, 0.0), (0.1, 0.8), (1.0, 1.0)],
            ),
            (
                "student".into(),
                0.8,
                vec![(0.0, 0.0), (0.3, 0.7), (1.0, 1.0)],
            ),
        ];
        roc_chart(&path, "ROC", &curves).unwrap();
        assert_readable_png(&path);
    }

    #[test]
    fn pareto_chart_writes_a_png() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pareto.png");
        let points = [
            ("a".into(), 320.0, 0.84),
            ("b".into(), 160.0, 0.87),
            ("c".into(), 90.0, 0.80),
        ];
        pareto_chart(&path, "Pareto", &points, Some(0.86)).unwrap();
        assert_readable_png(&path);
        let empty = dir.path().join("pareto-empty.png");
        pareto_chart(&empty, "no candidates", &[], None).unwrap();
        assert_readable_png(&empty);
    }

    #[test]
    fn a_missing_folder_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing").join("line.png");
        let error = line_chart(&path, "t", "x", "y", &[]).unwrap_err();
        assert!(error.to_string().contains("line.png"), "{error}");
    }
}
