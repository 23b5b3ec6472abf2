//! PNG plots for the reports (plotters): training curves, ROC curves and the accuracy/bootstrap
//! Pareto front. The font is embedded, so plots render the same on machines without fonts.

use std::path::Path;
use std::sync::Once;

use plotters::prelude::*;
use plotters::style::FontStyle;

/// A plot that could not be drawn or written.
#[derive(Debug, thiserror::Error)]
#[error("cannot draw {path}: {message}")]
pub struct PlotError {
    pub path: String,
    pub message: String,
}

/// A model's ROC curve: its name, its AUC and its (false, true positive rate) points.
pub type RocCurve = (String, f64, Vec<(f64, f64)>);

/// One named line.
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

const SIZE: (u32, u32) = (900, 600);
const FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The font is compiled in and valid; a failure here would only lose the text.
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

fn error(path: &Path, e: impl std::fmt::Display) -> PlotError {
    PlotError {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

/// The data's range, padded by 5% and never empty.
fn range(values: impl Iterator<Item = f64>) -> std::ops::Range<f64> {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    if lo > hi {
        return 0.0..1.0;
    }
    let pad = ((hi - lo) * 0.05).max(1e-3);
    lo - pad..hi + pad
}

fn colour(i: usize) -> RGBColor {
    [BLUE, RED, GREEN, MAGENTA, CYAN, BLACK][i % 6]
}

/// Draws named lines on one chart with a legend.
fn lines(
    path: &Path,
    title: &str,
    (x_label, y_label): (&str, &str),
    (x_range, y_range): (std::ops::Range<f64>, std::ops::Range<f64>),
    series: &[Series],
) -> Result<(), PlotError> {
    register_font();
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(|e| error(path, e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 24))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(x_range, y_range)
        .map_err(|e| error(path, e))?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .draw()
        .map_err(|e| error(path, e))?;
    for (i, s) in series.iter().enumerate() {
        let c = colour(i);
        chart
            .draw_series(LineSeries::new(s.points.iter().copied(), c.stroke_width(2)))
            .map_err(|e| error(path, e))?
            .label(s.name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .draw()
        .map_err(|e| error(path, e))?;
    root.present().map_err(|e| error(path, e))
}

/// A line chart with a legend, its axes fitted to the data.
pub fn line_chart(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
) -> Result<(), PlotError> {
    let points = || series.iter().flat_map(|s| s.points.iter());
    let ranges = (range(points().map(|p| p.0)), range(points().map(|p| p.1)));
    lines(path, title, (x_label, y_label), ranges, series)
}

/// ROC curves with the chance diagonal, each legend entry with its AUC.
pub fn roc_chart(path: &Path, title: &str, curves: &[RocCurve]) -> Result<(), PlotError> {
    let mut series: Vec<Series> = curves
        .iter()
        .map(|(name, auc, points)| Series {
            name: format!("{name} (AUC {auc:.3})"),
            points: points.clone(),
        })
        .collect();
    series.push(Series {
        name: "chance".into(),
        points: vec![(0.0, 0.0), (1.0, 1.0)],
    });
    let ranges = (0.0..1.0, 0.0..1.0);
    lines(
        path,
        title,
        ("false positive rate", "true positive rate"),
        ranges,
        &series,
    )
}

/// Indices of the points (bootstraps, accuracy) that no other point dominates (as few or fewer
/// bootstraps and as high or higher accuracy, one strictly better), sorted by bootstraps.
pub fn pareto_front(points: &[(f64, f64)]) -> Vec<usize> {
    let dominated = |i: usize| {
        let (b, a) = points[i];
        points
            .iter()
            .any(|&(b2, a2)| b2 <= b && a2 >= a && (b2 < b || a2 > a))
    };
    let mut front: Vec<usize> = (0..points.len()).filter(|&i| !dominated(i)).collect();
    front.sort_by(|&i, &j| points[i].0.total_cmp(&points[j].0));
    front
}

/// Accuracy against bootstraps: every candidate labelled, the Pareto front as a line, and an
/// optional accuracy target.
pub fn pareto_chart(
    path: &Path,
    title: &str,
    points: &[(String, f64, f64)],
    target: Option<f64>,
) -> Result<(), PlotError> {
    register_font();
    let xy: Vec<(f64, f64)> = points.iter().map(|p| (p.1, p.2)).collect();
    let x = range(xy.iter().map(|p| p.0).chain([0.0]));
    let y = range(xy.iter().map(|p| p.1).chain(target));
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(|e| error(path, e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(x.clone(), y)
        .map_err(|e| error(path, e))?;
    chart
        .configure_mesh()
        .x_desc("bootstraps (PBS) per image")
        .y_desc("accuracy")
        .draw()
        .map_err(|e| error(path, e))?;
    if let Some(t) = target {
        chart
            .draw_series(LineSeries::new(
                [(x.start, t), (x.end, t)],
                RED.stroke_width(1),
            ))
            .map_err(|e| error(path, e))?
            .label(format!("target {t:.2}"))
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
    }
    let front: Vec<(f64, f64)> = pareto_front(&xy).into_iter().map(|i| xy[i]).collect();
    chart
        .draw_series(LineSeries::new(front, BLUE.stroke_width(2)))
        .map_err(|e| error(path, e))?
        .label("Pareto front")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE.stroke_width(2)));
    chart
        .draw_series(points.iter().map(|(name, b, a)| {
            EmptyElement::at((*b, *a))
                + Circle::new((0, 0), 5, BLACK.filled())
                + Text::new(name.clone(), (7, -14), ("sans-serif", 15))
        }))
        .map_err(|e| error(path, e))?;
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .draw()
        .map_err(|e| error(path, e))?;
    root.present().map_err(|e| error(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_front_keeps_only_undominated_points() {
        let points = [
            (100.0, 0.80),
            (150.0, 0.86),
            (160.0, 0.85),
            (320.0, 0.88),
            (90.0, 0.70),
        ];
        assert_eq!(pareto_front(&points), vec![4, 0, 1, 3]);
    }

    #[test]
    fn every_chart_writes_a_readable_png() {
        let dir = tempfile::tempdir().unwrap();
        let line = dir.path().join("line.png");
        line_chart(
            &line,
            "t",
            "x",
            "y",
            &[
                Series {
                    name: "one point".into(),
                    points: vec![(1.0, 2.0)],
                },
                Series {
                    name: "empty".into(),
                    points: vec![],
                },
            ],
        )
        .unwrap();
        let roc = dir.path().join("roc.png");
        roc_chart(
            &roc,
            "roc",
            &[("m".into(), 0.9, vec![(0.0, 0.0), (0.1, 0.8), (1.0, 1.0)])],
        )
        .unwrap();
        let pareto = dir.path().join("pareto.png");
        pareto_chart(
            &pareto,
            "p",
            &[("a".into(), 320.0, 0.84), ("c".into(), 160.0, 0.87)],
            Some(0.86),
        )
        .unwrap();
        for path in [line, roc, pareto] {
            let image = image::open(&path).unwrap();
            assert_eq!((image.width(), image.height()), SIZE);
        }
    }
}
