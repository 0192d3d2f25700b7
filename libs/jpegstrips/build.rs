//! Compiles the row-by-row JPEG decoder (csrc/jpeg_strips.c) against the libjpeg-turbo that
//! turbojpeg-sys builds: its headers come from that build (`DEP_TURBOJPEG_INCLUDE`), and the
//! functions from the static library it links.

fn main() {
    println!("cargo:rerun-if-changed=csrc/jpeg_strips.c");
    let mut build = cc::Build::new();
    build.file("csrc/jpeg_strips.c").warnings(true).opt_level(2);
    if let Ok(include) = std::env::var("DEP_TURBOJPEG_INCLUDE") {
        for path in include.split(',') {
            build.include(path);
        }
    }
    build.compile("mm_jpeg_strips");
}
