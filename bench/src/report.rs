//! The markdown report of one run of `bench/thumbs.sh`: every `*.jsonl` file of the run
//! directory (ours, the peers', peak RSS, SSIM) in one table, then the goals, pass or fail.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde_json::Value;

/// SSIM(ours, ref) may be at most this much below SSIM(libvips, ref).
const SSIM_TOLERANCE: f64 = 0.005;
const GOAL_VS_SHARP_REFERENCE: f64 = 3.0;
const GOAL_VS_SHARP_ONCE: f64 = 1.5;
const GOAL_FLOOR_RATIO: f64 = 1.5;

/// What a peer is, whatever its exact tool name (`sharp-c1`, `sharp-once-c1`, …).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Role {
    Ours,
    SharpReference,
    SharpOnce,
    Vips,
    Other,
}

impl Role {
    fn of(tool: &str) -> Self {
        if tool == "mediamesh" {
            Self::Ours
        } else if tool.starts_with("sharp-once") {
            Self::SharpOnce
        } else if tool == "sharp-reference" || (tool.starts_with("sharp-c") && !tool.contains("par")) {
            Self::SharpReference
        } else if tool.starts_with("vips") {
            Self::Vips
        } else {
            Self::Other
        }
    }

    fn label(self) -> &'static str {
        match self {
            Self::Ours => "mediamesh",
            Self::SharpReference => "sharp, reference design",
            Self::SharpOnce => "sharp, one decode",
            Self::Vips => "vipsthumbnail",
            Self::Other => "other",
        }
    }
}

/// SSIM against libvips' output and against the reference.
type SsimPair = (Option<f64>, Option<f64>);

#[derive(Default)]
struct Run {
    /// (role, file) → the latency line.
    latency: HashMap<(Role, String), Value>,
    /// role → tool name as printed.
    tools: BTreeMap<Role, String>,
    /// Photos in the order measured.
    files: Vec<String>,
    /// (role, file) → MiB.
    rss: HashMap<(Role, String), f64>,
    /// role → images/s with 2 workers.
    throughput: HashMap<Role, f64>,
    /// (role, file, size) → (vs libvips, vs reference).
    ssim: HashMap<(Role, String, String), SsimPair>,
}

fn load(dir: &Path) -> Result<Run> {
    let mut paths: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    paths.sort();
    // Ours first, so the photo order is the one we measured in.
    paths.sort_by_key(|p| p.file_name().is_none_or(|n| n != "ours.jsonl"));
    let mut run = Run::default();
    for path in paths {
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        for line in text.lines().map(str::trim).filter(|l| l.starts_with('{')) {
            let Ok(value) = serde_json::from_str::<Value>(line) else {
                continue;
            };
            add(&mut run, value);
        }
    }
    if run.files.is_empty() {
        bail!(
            "no latency lines (with \"file\" and \"median_ms\") in {}",
            dir.display()
        );
    }
    Ok(run)
}

fn add(run: &mut Run, value: Value) {
    let Some(tool) = value["tool"].as_str().map(str::to_owned) else {
        return;
    };
    let role = Role::of(&tool);
    let file = value["file"].as_str().map(str::to_owned);
    if let Some(img_per_s) = value["img_per_s"].as_f64() {
        run.throughput.insert(role, img_per_s);
        return;
    }
    let Some(file) = file else {
        return;
    };
    if let Some(size) = value["size"].as_str() {
        run.ssim.insert(
            (role, file, size.to_owned()),
            (value["vs_vips"].as_f64(), value["vs_ref"].as_f64()),
        );
        return;
    }
    if let Some(rss) = value["peak_rss_mib"].as_f64() {
        run.rss.insert((role, file.clone()), rss);
    }
    if value.get("median_ms").is_some() {
        if !run.files.contains(&file) {
            run.files.push(file.clone());
        }
        run.tools.entry(role).or_insert(tool);
        run.latency.insert((role, file), value);
    }
}

fn ms(x: f64) -> String {
    if x >= 100.0 {
        format!("{x:.0}")
    } else {
        format!("{x:.1}")
    }
}

fn opt<T>(x: Option<T>, f: impl Fn(T) -> String) -> String {
    x.map(f).unwrap_or_else(|| "–".to_owned())
}

fn pass(ok: bool) -> &'static str {
    if ok { "PASS" } else { "**FAIL**" }
}

/// `[w, h, bytes]` of one derivative of a latency line.
fn output(line: &Value, name: &str) -> Option<(u64, u64, u64)> {
    let o = &line["outputs"][name];
    Some((o[0].as_u64()?, o[1].as_u64()?, o[2].as_u64()?))
}

fn photo_label(file: &str, ours: Option<&Value>) -> String {
    let short = file.strip_suffix(".jpg").unwrap_or(file);
    let Some(line) = ours else {
        return short.to_owned();
    };
    let (Some(w), Some(h), Some(bytes)) = (
        line["source"][0].as_f64(),
        line["source"][1].as_f64(),
        line["source_bytes"].as_f64(),
    ) else {
        return short.to_owned();
    };
    let mut label = format!("{short} {:.1} MP ({:.1} MiB)", w * h / 1e6, bytes / (1024.0 * 1024.0));
    if let Some(o) = line["orientation"].as_u64().filter(|&o| o > 1) {
        let _ = write!(label, ", EXIF {o}");
    }
    label
}

pub fn render(dir: &Path) -> Result<String> {
    let run = load(dir)?;
    let mut md = String::new();
    if let Ok(env) = std::fs::read_to_string(dir.join("env.md")) {
        md.push_str(&env);
        if !env.ends_with('\n') {
            md.push('\n');
        }
        md.push('\n');
    }
    main_table(&run, &mut md);
    md.push('\n');
    goals(&run, &mut md);
    Ok(md)
}

fn main_table(run: &Run, md: &mut String) {
    md.push_str(
        "| photo | tool | wall ms median (min–max) | CPU ms | peak RSS MiB | img/s, 2 workers (all photos) \
         | SSIM medium / large vs libvips | SSIM medium / large vs Lanczos ref | large bytes (÷ libvips) \
         | time ÷ decode floor |\n|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for file in &run.files {
        let label = photo_label(file, run.latency.get(&(Role::Ours, file.clone())));
        let vips_large = run
            .latency
            .get(&(Role::Vips, file.clone()))
            .and_then(|l| output(l, "large"))
            .map(|o| o.2);
        for (&role, tool) in &run.tools {
            let Some(line) = run.latency.get(&(role, file.clone())) else {
                continue;
            };
            let name = if role == Role::Ours {
                format!("**{tool}**")
            } else {
                format!("{tool}: {}", role.label())
            };
            let wall = format!(
                "**{}** ({}–{})",
                opt(line["median_ms"].as_f64(), ms),
                opt(line["min_ms"].as_f64(), ms),
                opt(line["max_ms"].as_f64(), ms)
            );
            let cpu = opt(line["cpu_median_ms"].as_f64(), ms);
            let rss = opt(run.rss.get(&(role, file.clone())).copied(), |x| format!("{x:.0}"));
            let tput = opt(run.throughput.get(&role).copied(), |x| format!("{x:.1}"));
            // SSIM of this tool's medium / large output: against libvips (libvips against itself
            // is 1 by definition) or against the reference.
            let ssim_pair = |against_vips: bool| {
                let get = |size: &str| {
                    if against_vips && role == Role::Vips {
                        return "1".to_owned();
                    }
                    let pair = run.ssim.get(&(role, file.clone(), size.to_owned()));
                    let value = pair.and_then(|s| if against_vips { s.0 } else { s.1 });
                    opt(value, |x| format!("{x:.4}"))
                };
                format!("{} / {}", get("medium"), get("large"))
            };
            let vs_vips = ssim_pair(true);
            let vs_ref = ssim_pair(false);
            let large = opt(output(line, "large").map(|o| o.2), |bytes| match vips_large {
                Some(v) if v > 0 && role != Role::Vips => format!("{bytes} ({:.2})", bytes as f64 / v as f64),
                _ => bytes.to_string(),
            });
            let floor = if role == Role::Ours {
                opt(line["floor_ratio"].as_f64(), |r| {
                    format!(
                        "{r:.2} (floor {} ms at {}×{})",
                        opt(line["decode_floor_ms"].as_f64(), ms),
                        line["decoded_at"][0],
                        line["decoded_at"][1]
                    )
                })
            } else {
                "–".to_owned()
            };
            let _ = writeln!(
                md,
                "| {label} | {name} | {wall} | {cpu} | {rss} | {tput} | {vs_vips} | {vs_ref} | {large} | {floor} |"
            );
        }
    }
}

fn goals(run: &Run, md: &mut String) {
    let mut summary: Vec<(String, String, String, Option<bool>)> = Vec::new();
    let ours_tp = run.throughput.get(&Role::Ours).copied();
    for (role, goal) in [
        (Role::SharpReference, GOAL_VS_SHARP_REFERENCE),
        (Role::SharpOnce, GOAL_VS_SHARP_ONCE),
    ] {
        let peer = run.throughput.get(&role).copied();
        let (measured, ok) = match (ours_tp, peer) {
            (Some(o), Some(p)) if p > 0.0 => (
                format!("{o:.1} ÷ {p:.1} img/s = **{:.2}×**", o / p),
                Some(o / p >= goal),
            ),
            _ => ("not measured".to_owned(), None),
        };
        summary.push((
            format!("throughput, 2 workers: ours ÷ {}", role.label()),
            measured,
            format!("≥ {goal}×"),
            ok,
        ));
    }

    // Latency: ours against every peer, per photo.
    let mut latency_rows = String::new();
    let mut worst_latency: Option<(f64, String)> = None;
    let peers = [Role::SharpReference, Role::SharpOnce, Role::Vips];
    for file in &run.files {
        let Some(ours) = run
            .latency
            .get(&(Role::Ours, file.clone()))
            .and_then(|l| l["median_ms"].as_f64())
        else {
            continue;
        };
        let mut cells = Vec::new();
        let mut all_ok = true;
        for role in peers {
            let Some(peer) = run
                .latency
                .get(&(role, file.clone()))
                .and_then(|l| l["median_ms"].as_f64())
            else {
                cells.push("–".to_owned());
                continue;
            };
            let ratio = ours / peer;
            all_ok &= ratio <= 1.0;
            if worst_latency.as_ref().is_none_or(|w| ratio > w.0) {
                worst_latency = Some((
                    ratio,
                    format!("{file}: {} ms vs {} {} ms", ms(ours), role.label(), ms(peer)),
                ));
            }
            cells.push(format!("{} ({:.2}× faster)", ms(peer), peer / ours));
        }
        let _ = writeln!(
            latency_rows,
            "| {} | {} | {} | {} |",
            file,
            ms(ours),
            cells.join(" | "),
            pass(all_ok)
        );
    }
    summary.push((
        "latency: no photo slower than any peer".to_owned(),
        opt(worst_latency.as_ref(), |w| {
            format!("worst ours ÷ peer = **{:.2}** ({})", w.0, w.1)
        }),
        "≤ 1.00 everywhere".to_owned(),
        worst_latency.as_ref().map(|w| w.0 <= 1.0),
    ));

    // Decode floor.
    let mut floor_rows = String::new();
    let mut worst_floor: Option<(f64, String)> = None;
    for file in &run.files {
        let Some(line) = run.latency.get(&(Role::Ours, file.clone())) else {
            continue;
        };
        let (Some(wall), Some(floor), Some(ratio)) = (
            line["median_ms"].as_f64(),
            line["decode_floor_ms"].as_f64(),
            line["floor_ratio"].as_f64(),
        ) else {
            continue;
        };
        if worst_floor.as_ref().is_none_or(|w| ratio > w.0) {
            worst_floor = Some((ratio, file.clone()));
        }
        let stages = line["stages_ms"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| format!("{k} {}", opt(v.as_f64(), ms)))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_else(|| "–".to_owned());
        let _ = writeln!(
            floor_rows,
            "| {file} | {}×{} | {} | {} | {} | {stages} | {ratio:.2} | {} |",
            line["decoded_at"][0],
            line["decoded_at"][1],
            ms(floor),
            ms(wall),
            ms(wall - floor),
            pass(ratio <= GOAL_FLOOR_RATIO)
        );
    }
    summary.push((
        "latency within 1.5× of the decode floor".to_owned(),
        opt(worst_floor.as_ref(), |w| format!("worst **{:.2}×** ({})", w.0, w.1)),
        format!("≤ {GOAL_FLOOR_RATIO}×"),
        worst_floor.as_ref().map(|w| w.0 <= GOAL_FLOOR_RATIO),
    ));

    // SSIM against the independent Lanczos reference.
    let mut ssim_rows = String::new();
    let mut worst_ssim: Option<(f64, String)> = None;
    for file in &run.files {
        for size in ["medium", "large"] {
            let get = |role: Role| run.ssim.get(&(role, file.clone(), size.to_owned())).and_then(|s| s.1);
            let (Some(ours), Some(vips)) = (get(Role::Ours), get(Role::Vips)) else {
                continue;
            };
            let diff = ours - vips;
            if worst_ssim.as_ref().is_none_or(|w| diff < w.0) {
                worst_ssim = Some((diff, format!("{file} {size}")));
            }
            let ours_vs_vips = run
                .ssim
                .get(&(Role::Ours, file.clone(), size.to_owned()))
                .and_then(|s| s.0);
            let _ = writeln!(
                ssim_rows,
                "| {file} | {size} | {ours:.4} | {vips:.4} | {} | {} | {} | {diff:+.4} | {} |",
                opt(get(Role::SharpReference), |x| format!("{x:.4}")),
                opt(get(Role::SharpOnce), |x| format!("{x:.4}")),
                opt(ours_vs_vips, |x| format!("{x:.4}")),
                pass(diff >= -SSIM_TOLERANCE)
            );
        }
    }
    summary.push((
        "SSIM(ours, ref) ≥ SSIM(libvips, ref) − 0.005".to_owned(),
        opt(worst_ssim.as_ref(), |w| {
            format!("worst difference **{:+.4}** ({})", w.0, w.1)
        }),
        format!("≥ −{SSIM_TOLERANCE}"),
        worst_ssim.as_ref().map(|w| w.0 >= -SSIM_TOLERANCE),
    ));

    // File sizes and dimensions against vipsthumbnail at q85.
    let mut size_rows = String::new();
    let mut worst_size: Option<(f64, String)> = None;
    let mut dims_ok = true;
    for file in &run.files {
        let (Some(ours), Some(vips)) = (
            run.latency.get(&(Role::Ours, file.clone())),
            run.latency.get(&(Role::Vips, file.clone())),
        ) else {
            continue;
        };
        for name in ["thumb", "medium", "large"] {
            let (Some(o), Some(v)) = (output(ours, name), output(vips, name)) else {
                continue;
            };
            let ratio = o.2 as f64 / v.2.max(1) as f64;
            let same_dims = (o.0, o.1) == (v.0, v.1);
            dims_ok &= same_dims;
            if worst_size.as_ref().is_none_or(|w| ratio > w.0) {
                worst_size = Some((ratio, format!("{file} {name}")));
            }
            let sharp = run
                .latency
                .get(&(Role::SharpReference, file.clone()))
                .and_then(|l| output(l, name))
                .map(|s| s.2);
            let _ = writeln!(
                size_rows,
                "| {file} | {name} | {}×{}{} | {} | {} | {} | {ratio:.3} | {} |",
                o.0,
                o.1,
                if same_dims {
                    String::new()
                } else {
                    format!(" (libvips {}×{})", v.0, v.1)
                },
                o.2,
                v.2,
                opt(sharp, |s| s.to_string()),
                pass(ratio <= 1.0)
            );
        }
    }
    summary.push((
        "file size ≤ libvips (vipsthumbnail) at q85".to_owned(),
        opt(worst_size.as_ref(), |w| {
            format!("worst ours ÷ libvips = **{:.3}** ({})", w.0, w.1)
        }),
        "≤ 1.00".to_owned(),
        worst_size.as_ref().map(|w| w.0 <= 1.0),
    ));
    summary.push((
        "same output dimensions as libvips".to_owned(),
        if dims_ok {
            "all equal"
        } else {
            "some differ (see sizes)"
        }
        .to_owned(),
        "equal".to_owned(),
        Some(dims_ok),
    ));

    md.push_str("### Goals\n\n| goal | measured | target | result |\n|---|---|---|---|\n");
    for (goal, measured, target, ok) in &summary {
        let result = ok.map(pass).unwrap_or("not measured");
        let _ = writeln!(md, "| {goal} | {measured} | {target} | {result} |");
    }
    md.push_str(
        "\n#### Latency per photo (median wall ms, one thread; ours ≤ every peer)\n\n\
         | photo | mediamesh | sharp (reference) | sharp, one decode | vipsthumbnail | result |\n\
         |---|---|---|---|---|---|\n",
    );
    md.push_str(&latency_rows);
    md.push_str(
        "\n#### Decode floor (decode_only at the scale thumbnails() picks; ratio ≤ 1.5)\n\n\
         | photo | decoded at | floor ms | thumbnails ms | after decode ms | stages ms (decode with the two largest \
         derivatives' resizes beside it, then the rest) | ratio | result |\n\
         |---|---|---|---|---|---|---|---|\n",
    );
    md.push_str(&floor_rows);
    md.push_str(
        "\n#### SSIM against an independent reference (ffmpeg Lanczos of the full decode, upright)\n\n\
         | photo | size | ours vs ref | libvips vs ref | sharp (reference) vs ref | sharp, one decode vs ref \
         | ours vs libvips | ours − libvips (vs ref) | result |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    md.push_str(&ssim_rows);
    md.push_str(
        "\n#### Output sizes, bytes at q85 (ours ≤ vipsthumbnail)\n\n\
         | photo | derivative | ours (dims) | ours bytes | libvips bytes | sharp (mozjpeg) bytes | ours ÷ libvips | result |\n\
         |---|---|---|---|---|---|---|---|\n",
    );
    md.push_str(&size_rows);
}
