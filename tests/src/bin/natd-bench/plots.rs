//! The report's plots: connections per second against the number of mappings, and each
//! path's warm program cost against the number of mappings.
use std::{collections::BTreeMap, path::Path};

use anyhow::{Context as _, Result};

use crate::{
    MODES, Plan,
    report::{Agg, Key},
};

pub fn plots(out: &Path, agg: &BTreeMap<Key, Agg>, plan: &Plan) -> Result<()> {
    use plotters::prelude::*;
    let font = std::fs::read("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")
        .context("fonts-dejavu-core is needed for plots")?;
    let font: &'static [u8] = Box::leak(font.into_boxed_slice());
    let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, font);
    let colors = [RED, MAGENTA, BLUE, CYAN, GREEN, BLACK];
    // CRR vs N.
    {
        let path = out.join("crr_vs_n.png");
        let root = BitMapBackend::new(&path, (900, 560)).into_drawing_area();
        root.fill(&WHITE)?;
        let max = agg
            .iter()
            .filter(|(k, _)| k.0 == "publish" && k.2 == "crr_per_s")
            .map(|(_, a)| a.median)
            .fold(1.0, f64::max);
        let xs: Vec<f64> = plan.scale.iter().map(|n| (*n as f64).log10()).collect();
        let mut chart = ChartBuilder::on(&root)
            .caption(
                "published port: connections/s vs mappings present",
                ("sans-serif", 22),
            )
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(-0.2f64..xs.last().copied().unwrap_or(1.0) + 0.2, 0f64..max * 1.15)?;
        chart
            .configure_mesh()
            .x_desc("log10(N)")
            .y_desc("CRR per second")
            .draw()?;
        for (i, mode) in MODES.iter().enumerate() {
            let points: Vec<(f64, f64)> = plan
                .scale
                .iter()
                .filter_map(|n| {
                    agg.get(&("publish".into(), *n, "crr_per_s".into(), None, mode.to_string()))
                        .map(|a| ((*n as f64).log10(), a.median))
                })
                .collect();
            let color = colors[i];
            chart
                .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
                .label(*mode)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
            chart.draw_series(points.into_iter().map(|p| Circle::new(p, 4, color.filled())))?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
        root.present()?;
    }
    // Program cost vs N.
    {
        let path = out.join("program_ns.png");
        let root = BitMapBackend::new(&path, (900, 560)).into_drawing_area();
        root.fill(&WHITE)?;
        let series: BTreeMap<String, Vec<(f64, f64)>> = agg
            .iter()
            .filter(|(k, _)| k.0 == "program" && k.2 == "ns_per_packet_warm" && k.4 == "ebpf")
            .fold(BTreeMap::new(), |mut m, (k, a)| {
                m.entry(k.3.clone().unwrap_or_default())
                    .or_insert_with(Vec::new)
                    .push(((k.1 as f64).log10(), a.median));
                m
            });
        let max = series.values().flatten().map(|p| p.1).fold(1.0, f64::max);
        let mut chart = ChartBuilder::on(&root)
            .caption(
                "eBPF program cost per packet (warm) vs mappings present",
                ("sans-serif", 22),
            )
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0.8f64..5.0, 0f64..max * 1.2)?;
        chart
            .configure_mesh()
            .x_desc("log10(N)")
            .y_desc("ns per packet")
            .draw()?;
        let palette = [RED, BLUE, GREEN, BLACK, MAGENTA, CYAN];
        for (i, (path_name, points)) in series.into_iter().enumerate() {
            let color = palette[i % palette.len()];
            chart
                .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
                .label(path_name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
            chart.draw_series(points.into_iter().map(|p| Circle::new(p, 4, color.filled())))?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
        root.present()?;
    }
    Ok(())
}
