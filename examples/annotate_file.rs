//! Captions one image file the way the server does: decode, add the caption bar, encode a PNG.
//! `scripts/load.sh` times it against ImageMagick's `convert` under hyperfine.
//!
//! ```sh
//! cargo run --release --example annotate_file -- in.png caption.txt out.png
//! ```

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [input, caption, output] = args.as_slice() else {
        eprintln!("usage: annotate_file <in.png> <caption.txt> <out.png>");
        return ExitCode::from(2);
    };
    let run = || -> Result<(), String> {
        let image = std::fs::read(input).map_err(|e| format!("{input}: {e}"))?;
        let caption = std::fs::read_to_string(caption).map_err(|e| format!("{caption}: {e}"))?;
        let png = dalleserver::annotate::annotate_png(&image, caption.trim_end())
            .map_err(|e| e.to_string())?;
        std::fs::write(output, png).map_err(|e| format!("{output}: {e}"))
    };
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("annotate_file: {err}");
            ExitCode::FAILURE
        }
    }
}
