//! Times `thumbnails`, `decode_only` and `probe` on the fixture photos (median of N runs):
//! `cargo run --release -p mediamesh-imaging --example timing [RUNS] [OUT_DIR|-] [NAME_FILTER]`.
//! Writes the derivatives (JPEG and WebP) and the probe JSON when OUT_DIR is given; prints the
//! process's peak RSS at the end.

use std::path::PathBuf;
use std::time::Instant;

use mediamesh_imaging::{Limits, OutputFormat, ThumbOptions, decode_only, probe, thumbnails};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let runs: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(7);
    let out_dir = std::env::args().nth(2).filter(|s| s != "-").map(PathBuf::from);
    let filter = std::env::args().nth(3).unwrap_or_default();
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/media");
    let files = [
        "Kleiber_by_Lukas_Baubkus.jpg",
        "Elephants_5640x3172.jpg",
        "Dragonfly_by_Bolly.jpg",
        "friends_by_Aitzol_Berasategi_orient6.jpg",
        "Arc-Colors-Transparent-Wallpaper.png",
    ];
    let limits = Limits::default();
    let opts = ThumbOptions::default();
    for file in files.into_iter().filter(|f| f.contains(&filter)) {
        let data = std::fs::read(dir.join(file)).expect("fixture");
        let mut t_thumbs = Vec::new();
        let mut t_decode = Vec::new();
        let mut t_probe = Vec::new();
        let mut made = Vec::new();
        let mut decoded = (0, 0);
        for _ in 0..runs {
            let start = Instant::now();
            decoded = decode_only(&data, &opts, &limits).expect("decode");
            t_decode.push(start.elapsed().as_secs_f64() * 1000.0);
            let start = Instant::now();
            made = thumbnails(&data, &opts, &limits, &mut |_| {}).expect("thumbs");
            t_thumbs.push(start.elapsed().as_secs_f64() * 1000.0);
            let start = Instant::now();
            probe(&data, &limits).expect("probe");
            t_probe.push(start.elapsed().as_secs_f64() * 1000.0);
        }
        let sizes: Vec<String> = made
            .iter()
            .map(|d| format!("{}x{}:{}B", d.width, d.height, d.data.len()))
            .collect();
        println!(
            "{file}: thumbnails {:.1} ms, decode_only {:.1} ms at {}x{} (ratio {:.2}), probe {:.1} ms; {}",
            median(t_thumbs.clone()),
            median(t_decode.clone()),
            decoded.0,
            decoded.1,
            median(t_thumbs) / median(t_decode),
            median(t_probe),
            sizes.join(" ")
        );
        if let Some(out) = &out_dir {
            std::fs::create_dir_all(out).expect("out dir");
            let stem = file.rsplit_once('.').map(|(s, _)| s).unwrap_or(file);
            for d in &made {
                std::fs::write(out.join(format!("{stem}_{}.{}", d.name, d.format.extension())), &d.data)
                    .expect("write");
            }
            let webp = ThumbOptions {
                formats: vec![OutputFormat::Webp],
                ..ThumbOptions::default()
            };
            for d in thumbnails(&data, &webp, &limits, &mut |_| {}).expect("webp") {
                std::fs::write(out.join(format!("{stem}_{}.{}", d.name, d.format.extension())), &d.data)
                    .expect("write");
            }
            println!(
                "  probe: {}",
                serde_json::to_string(&probe(&data, &limits).expect("probe")).expect("json")
            );
        }
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    if let Some(line) = status.lines().find(|l| l.starts_with("VmHWM")) {
        println!("peak RSS: {}", line.trim_start_matches("VmHWM:").trim());
    }
}
